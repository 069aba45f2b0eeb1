//! Kubernetes NetworkPolicy (networking.k8s.io/v1) → dataplane [`PolicyRule`], with Kubernetes'
//! semantics: the policy selects pods of its own namespace, `policyTypes` says which directions it
//! isolates, and a rule without peers allows every peer.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshpath_dataplane::policy::{
    EgressRule, Entity, IngressRule, LabelSelector, Operator, Peer, PolicyRule, PortRule, Protocol,
};

use super::error::{Subject, TranslateError};
use super::model::NAMESPACE_LABEL;
use super::{ports, selector};

/// The label Kubernetes puts on every namespace with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub(crate) fn translate(
    policy: &NetworkPolicy,
    namespace: &str,
    subject: &Subject,
) -> Result<Vec<PolicyRule>, TranslateError> {
    let Some(spec) = &policy.spec else {
        return Err(subject.error("spec", "missing"));
    };
    let pods = spec.pod_selector.clone().unwrap_or_default();
    let pods = selector::translate(&pods, subject, "spec.podSelector")?;
    let (isolate_ingress, isolate_egress) = match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.is_some()),
    };
    let ingress = isolate_ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| {
                let field = format!("spec.ingress[{i}]");
                Ok(IngressRule {
                    from: peers(
                        rule.from.as_deref(),
                        namespace,
                        subject,
                        &format!("{field}.from"),
                    )?,
                    to_ports: port_rules(
                        rule.ports.as_deref(),
                        subject,
                        &format!("{field}.ports"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, TranslateError>>()
    });
    let egress = isolate_egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| {
                let field = format!("spec.egress[{i}]");
                Ok(EgressRule {
                    to: peers(
                        rule.to.as_deref(),
                        namespace,
                        subject,
                        &format!("{field}.to"),
                    )?,
                    to_ports: port_rules(
                        rule.ports.as_deref(),
                        subject,
                        &format!("{field}.ports"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, TranslateError>>()
    });
    Ok(vec![PolicyRule {
        endpoint_selector: selector::confine_to_namespace(pods, namespace),
        ingress: ingress.transpose()?,
        egress: egress.transpose()?,
    }])
}

/// No peers (absent or empty) means every peer, in Kubernetes; the dataplane says that with `All`.
fn peers(
    peers: Option<&[NetworkPolicyPeer]>,
    ns: &str,
    subject: &Subject,
    field: &str,
) -> Result<Vec<Peer>, TranslateError> {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return Ok(vec![Peer::Entity(Entity::All)]);
    }
    peers
        .iter()
        .enumerate()
        .map(|(i, p)| peer(p, ns, subject, &format!("{field}[{i}]")))
        .collect()
}

fn peer(
    peer: &NetworkPolicyPeer,
    ns: &str,
    subject: &Subject,
    field: &str,
) -> Result<Peer, TranslateError> {
    if peer.ip_block.is_some() {
        return Err(subject.error(format!("{field}.ipBlock"), "ipBlock is not supported yet"));
    }
    let pods = match &peer.pod_selector {
        Some(sel) => selector::translate(sel, subject, &format!("{field}.podSelector"))?,
        None => LabelSelector::all(),
    };
    let selected = match &peer.namespace_selector {
        None => selector::confine_to_namespace(pods, ns),
        Some(namespaces) => namespace_selector(
            namespaces,
            pods,
            subject,
            &format!("{field}.namespaceSelector"),
        )?,
    };
    Ok(Peer::Endpoints(selected))
}

/// Namespaces can only be selected by name: endpoints carry their namespace's name, not its labels.
fn namespace_selector(
    namespaces: &K8sSelector,
    mut pods: LabelSelector,
    subject: &Subject,
    field: &str,
) -> Result<LabelSelector, TranslateError> {
    let unsupported = |key: &str, field: String| {
        subject.error(
            field,
            format!("selecting namespaces by `{key}` is not supported, only by `{NAMESPACE_NAME_LABEL}`"),
        )
    };
    for (key, value) in namespaces.match_labels.iter().flatten() {
        if key != NAMESPACE_NAME_LABEL {
            return Err(unsupported(key, format!("{field}.matchLabels")));
        }
        pods = selector::confine_to_namespace(pods, value);
    }
    for (i, expr) in namespaces.match_expressions.iter().flatten().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        if expr.key != NAMESPACE_NAME_LABEL {
            return Err(unsupported(&expr.key, field));
        }
        let values = expr.values.clone().unwrap_or_default();
        let operator = match expr.operator.as_str() {
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(subject.error(field, format!("unknown operator `{other}`"))),
        };
        pods = pods.with_expression(NAMESPACE_LABEL, operator);
    }
    Ok(pods)
}

fn port_rules(
    list: Option<&[NetworkPolicyPort]>,
    subject: &Subject,
    field: &str,
) -> Result<Vec<PortRule>, TranslateError> {
    let list = list.unwrap_or_default();
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("{field}[{i}]");
            let protocol = ports::protocol(p.protocol.as_deref(), Protocol::Tcp, subject, &field)?;
            let port = match &p.port {
                None => 0,
                Some(IntOrString::Int(n)) => i64::from(*n),
                Some(IntOrString::String(name)) => {
                    return Err(subject.error(
                        format!("{field}.port"),
                        format!("named port `{name}` is not supported"),
                    ))
                }
            };
            ports::port_rule(protocol, port, p.end_port.map(i64::from), subject, &field)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::object::LocalObject;
    use super::super::yaml::parse_objects;
    use super::*;

    /// The policy's rule, or why it is refused (its rules then only deny what it covers).
    fn policy(spec: &str) -> Result<PolicyRule, String> {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: shop\n  resourceVersion: \"3\"\nspec:\n{spec}"
        );
        let object = parse_objects(&yaml).unwrap().remove(0).object;
        match object.translate().unwrap().1 {
            Some(LocalObject::Policy(mut p)) => match p.refused {
                None => Ok(p.rules.remove(0)),
                Some(why) => {
                    let denies = p.rules.iter().all(|r| {
                        r.ingress.as_ref().is_none_or(Vec::is_empty)
                            && r.egress.as_ref().is_none_or(Vec::is_empty)
                    });
                    assert!(denies, "a refused policy grants nothing: {:?}", p.rules);
                    Err(why)
                }
            },
            other => panic!("policy expected, got {other:?}"),
        }
    }

    fn peer_selector(peer: &Peer) -> &LabelSelector {
        match peer {
            Peer::Endpoints(s) => s,
            other => panic!("endpoint peer expected, got {other:?}"),
        }
    }

    #[test]
    fn default_policy_types_follow_the_rules_present() {
        let ingress_only = policy("  podSelector:\n    matchLabels: {app: db}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: api}}\n").unwrap();
        assert_eq!(
            ingress_only
                .endpoint_selector
                .match_labels
                .get(NAMESPACE_LABEL)
                .unwrap(),
            "shop"
        );
        assert!(ingress_only.egress.is_none());
        let from = &ingress_only.ingress.as_ref().unwrap()[0].from;
        assert_eq!(
            peer_selector(&from[0])
                .match_labels
                .get(NAMESPACE_LABEL)
                .unwrap(),
            "shop"
        );

        let deny_all_ingress = policy("  podSelector: {}\n").unwrap();
        assert_eq!(deny_all_ingress.ingress, Some(vec![]));
        assert!(deny_all_ingress.egress.is_none());

        let both = policy(
            "  podSelector: {}\n  egress:\n  - ports:\n    - port: 53\n      protocol: UDP\n",
        )
        .unwrap();
        assert_eq!(both.ingress, Some(vec![]));
        let egress = both.egress.unwrap();
        assert_eq!(
            egress[0].to,
            [Peer::Entity(Entity::All)],
            "no peers: every peer"
        );
        assert_eq!(egress[0].to_ports, [PortRule::new(Protocol::Udp, 53)]);

        let egress_only =
            policy("  podSelector: {}\n  policyTypes: [Egress]\n  ingress:\n  - {}\n").unwrap();
        assert!(
            egress_only.ingress.is_none(),
            "policyTypes decides, not the rules present"
        );
        assert_eq!(egress_only.egress, Some(vec![]));
    }

    #[test]
    fn namespace_selectors_by_name_or_all() {
        let rule = policy(concat!(
            "  podSelector: {}\n  ingress:\n  - from:\n",
            "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}\n",
            "      podSelector: {matchLabels: {app: prometheus}}\n",
            "    - namespaceSelector: {}\n",
            "    ports:\n    - port: 9090\n      endPort: 9099\n",
        ))
        .unwrap();
        let rule = &rule.ingress.as_ref().unwrap()[0];
        let prom = peer_selector(&rule.from[0]);
        assert_eq!(
            prom.match_labels.get(NAMESPACE_LABEL).unwrap(),
            "monitoring"
        );
        assert_eq!(prom.match_labels.get("app").unwrap(), "prometheus");
        assert_eq!(
            peer_selector(&rule.from[1]),
            &LabelSelector::all(),
            "every namespace"
        );
        assert_eq!(
            rule.to_ports,
            [PortRule {
                protocol: Protocol::Tcp,
                port: 9090,
                end_port: Some(9099)
            }]
        );
    }

    #[test]
    fn what_cannot_be_expressed_refuses_the_policy_naming_the_field() {
        let why = policy("  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: a}}\n").unwrap_err();
        assert!(
            why.starts_with(
                "NetworkPolicy shop/np: `spec.ingress[0].from[0].namespaceSelector.matchLabels`"
            ),
            "{why}"
        );
        let why =
            policy("  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/8}\n")
                .unwrap_err();
        assert!(why.contains("`spec.egress[0].to[0].ipBlock`"), "{why}");
        let why =
            policy("  podSelector: {}\n  ingress:\n  - ports:\n    - port: http\n").unwrap_err();
        assert!(why.contains("`spec.ingress[0].ports[0].port`"), "{why}");
    }
}
