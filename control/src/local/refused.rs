//! A policy that cannot be enforced as written — a field meshpath does not support, a value it cannot
//! translate — still says whom it selects and which directions it covers. Ignoring it would leave
//! those endpoints open; keeping its previous version would enforce what the operator replaced. So it
//! becomes a [`LocalPolicy`] marked refused, whose rules select the same endpoints in the same
//! directions with no grants: the compiler denies them there (see `meshpath_dataplane::policy`).
//!
//! A selector that cannot be read either widens to the policy's whole namespace (to every endpoint,
//! for a cluster-wide policy).

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector as K8sSelector, ObjectMeta};
use meshpath_dataplane::policy::{LabelSelector, PolicyRule};
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::cilium::CiliumNetworkPolicy;
use super::error::Subject;
use super::model::{LocalPolicy, PolicyKind, PolicyRef};
use super::selector::{self, Scope};

/// What one rule of a policy covers: the endpoints it selects (`None`: unreadable, so all of the
/// namespace's) and its directions.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    pub selector: Option<K8sSelector>,
    pub ingress: bool,
    pub egress: bool,
}

/// The refused form of `policy`: deny-only rules for what `coverage` says, and why.
pub(crate) fn refused_policy(policy: PolicyRef, why: String, coverage: &[Coverage]) -> LocalPolicy {
    let namespace = policy.policy.namespace.clone();
    let scope = match policy.kind.namespaced() {
        true => Scope::Namespace(&namespace),
        false => Scope::Cluster,
    };
    let subject = Subject {
        kind: "policy",
        namespace: Some(&namespace),
        name: &policy.policy.name,
    };
    let rules = coverage
        .iter()
        .filter(|c| c.ingress || c.egress)
        .map(|c| {
            let selected = c
                .selector
                .as_ref()
                .and_then(|s| selector::translate(s, &subject, "").ok())
                .unwrap_or_else(LabelSelector::all);
            PolicyRule {
                endpoint_selector: scope.confine(selected),
                ingress: c.ingress.then(Vec::new),
                egress: c.egress.then(Vec::new),
            }
        })
        .collect();
    LocalPolicy {
        policy,
        rules,
        refused: Some(why),
    }
}

/// Every rule of a CiliumNetworkPolicy that parsed but did not translate.
pub(crate) fn cilium_coverage(policy: &CiliumNetworkPolicy) -> Vec<Coverage> {
    let rules = policy.spec.iter().chain(policy.specs.iter().flatten());
    rules
        .map(|r| Coverage {
            selector: Some(r.endpoint_selector.clone()),
            ingress: r.ingress.is_some(),
            egress: r.egress.is_some(),
        })
        .collect()
}

/// A NetworkPolicy that parsed but did not translate: its `podSelector` and `policyTypes`.
pub(crate) fn netpol_coverage(policy: &NetworkPolicy) -> Vec<Coverage> {
    let Some(spec) = &policy.spec else {
        return Vec::new();
    };
    let (ingress, egress) = directions(spec.policy_types.as_deref(), spec.egress.is_some());
    vec![Coverage {
        selector: Some(spec.pod_selector.clone().unwrap_or_default()),
        ingress,
        egress,
    }]
}

/// Kubernetes' rule: `policyTypes` if given, else ingress always and egress if the policy has rules.
fn directions(policy_types: Option<&[String]>, has_egress: bool) -> (bool, bool) {
    match policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, has_egress),
    }
}

/// A policy document that does not parse as its kind (a field meshpath does not know, such as
/// `fromCIDR` or `ingressDeny`), read leniently for its name and what it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct UnsupportedPolicy {
    pub kind: PolicyKind,
    pub metadata: ObjectMeta,
    /// Why it did not parse, as the parser said it.
    pub problem: String,
    pub coverage: Vec<Coverage>,
}

/// A policy document's general shape, unknown fields ignored.
#[derive(Deserialize)]
pub(crate) struct Lenient {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<LenientRule>,
    specs: Option<Vec<LenientRule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LenientRule {
    endpoint_selector: Option<serde_json::Value>,
    pod_selector: Option<serde_json::Value>,
    ingress: Option<IgnoredAny>,
    ingress_deny: Option<IgnoredAny>,
    egress: Option<IgnoredAny>,
    egress_deny: Option<IgnoredAny>,
    policy_types: Option<Vec<String>>,
}

impl UnsupportedPolicy {
    /// What a policy document read leniently covers.
    pub(crate) fn new(kind: PolicyKind, problem: String, lenient: Lenient) -> UnsupportedPolicy {
        let rules = lenient
            .spec
            .into_iter()
            .chain(lenient.specs.into_iter().flatten());
        let coverage = rules
            .map(|r| {
                let selector = match kind {
                    PolicyKind::NetworkPolicy => r.pod_selector.or(Some(serde_json::Value::Null)),
                    _ => r.endpoint_selector,
                };
                let selector = selector.and_then(|v| match v {
                    serde_json::Value::Null => Some(K8sSelector::default()),
                    v => serde_json::from_value(v).ok(),
                });
                let (ingress, egress) = match kind {
                    PolicyKind::NetworkPolicy => {
                        directions(r.policy_types.as_deref(), r.egress.is_some())
                    }
                    _ => (
                        r.ingress.is_some() || r.ingress_deny.is_some(),
                        r.egress.is_some() || r.egress_deny.is_some(),
                    ),
                };
                Coverage {
                    selector,
                    ingress,
                    egress,
                }
            })
            .collect();
        UnsupportedPolicy {
            kind,
            metadata: lenient.metadata,
            problem,
            coverage,
        }
    }
}
