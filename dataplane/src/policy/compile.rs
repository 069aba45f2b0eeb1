//! Compiles rules against the identity table into per-endpoint lookup tables. Runs in the control
//! plane when rules or identities change; the result goes into the next snapshot.
//!
//! Compilation fails closed and never as a whole: a rule that cannot be compiled (a bad port range,
//! more rules than the bound), a policy the control plane could not translate, and an endpoint whose
//! merged policy passes the entry bound all deny the endpoints concerned in the directions concerned,
//! whatever other rules allow them. Each such refusal is recorded in the table
//! ([`PolicyTable::refusals`]) with the policy's name, why, and the endpoints it denies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::{ClusterId, Identity};

use super::rule::{DirectionRule, Entity, Peer, PolicyRule};
use super::selector::Labels;
use super::table::{
    DirectionPolicy, EndpointPolicy, EnforcedPolicy, PeerGrant, PolicyRefusal, PolicyTable,
};

/// Every identity the mesh knows, of all clusters, with its labels.
pub type IdentityLabels = BTreeMap<Identity, Labels>;

/// Bounds on what one compilation may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyLimits {
    pub max_rules: usize,
    /// Per-peer entries in one direction of one endpoint's policy.
    pub max_entries: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            max_rules: 16_384,
            max_entries: 65_536,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{count} policy rules, at most {max}")]
    TooManyRules { count: usize, max: usize },
    #[error("policy rule {rule}: port range {port}-{end_port} ends before it starts")]
    InvalidPortRange {
        rule: usize,
        port: u16,
        end_port: u16,
    },
    #[error("endpoint identity {endpoint}: {entries} policy entries, at most {max}")]
    TooManyEntries {
        endpoint: Identity,
        entries: usize,
        max: usize,
    },
}

/// One policy as the compiler reads it: a name for its refusals, and its rules. A policy the control
/// plane refused (`refused`: why) keeps only what its rules select and the directions they cover:
/// those endpoints are denied there.
#[derive(Clone, Copy, Debug)]
pub struct PolicySource<'a> {
    pub name: &'a str,
    pub rules: &'a [PolicyRule],
    pub refused: Option<&'a str>,
}

/// What one rule contributes to each direction of the endpoints it selects.
struct Compiled {
    ingress: Option<EnforcedPolicy>,
    egress: Option<EnforcedPolicy>,
}

/// One rule, and what became of it.
struct Flat<'a> {
    policy: usize,
    rule: &'a PolicyRule,
    /// `Err`: the rule denies what it selects, for this reason (index into the refusal reasons).
    compiled: Result<Compiled, usize>,
}

/// The policy of every local endpoint identity (those `local` allocated) under `rules`.
pub fn compile(
    rules: &[PolicyRule],
    identities: &IdentityLabels,
    local: ClusterId,
    limits: &PolicyLimits,
) -> PolicyTable {
    let source = PolicySource {
        name: "rules",
        rules,
        refused: None,
    };
    compile_policies(&[source], identities, local, limits)
}

/// The policy of every local endpoint identity under `policies`, failing closed (see the module).
pub fn compile_policies(
    policies: &[PolicySource<'_>],
    identities: &IdentityLabels,
    local: ClusterId,
    limits: &PolicyLimits,
) -> PolicyTable {
    let resolver = Resolver::new(identities, local);
    let mut refusals = Refusals::default();
    let count: usize = policies.iter().map(|p| p.rules.len()).sum();
    let too_many = (count > limits.max_rules).then(|| {
        let why = PolicyError::TooManyRules {
            count,
            max: limits.max_rules,
        };
        why.to_string()
    });
    let mut flat = Vec::with_capacity(count);
    for (policy, source) in policies.iter().enumerate() {
        for rule in source.rules {
            let index = flat.len();
            let compiled = match (source.refused, too_many.as_deref()) {
                (Some(why), _) | (None, Some(why)) => Err(refusals.reason(policy, why)),
                (None, None) => resolver
                    .rule(index, rule)
                    .map_err(|e| refusals.reason(policy, &e.to_string())),
            };
            flat.push(Flat {
                policy,
                rule,
                compiled,
            });
        }
    }
    let mut shared: FxHashMap<Vec<usize>, Merged> = FxHashMap::default();
    let mut table = PolicyTable::default();
    let local_ids = identities
        .iter()
        .filter(|(id, _)| id.cluster() == Some(local));
    for (endpoint, labels) in local_ids {
        let selecting: Vec<usize> = (0..flat.len())
            .filter(|i| flat[*i].rule.endpoint_selector.matches(labels))
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let merged = shared
            .entry(selecting.clone())
            .or_insert_with(|| merge(&selecting, &flat, limits, policies));
        for too_big in &merged.too_big {
            refusals.too_big(too_big, *endpoint);
        }
        refusals.deny(*endpoint, &selecting, &flat);
        table.by_endpoint.insert(*endpoint, merged.policy.clone());
    }
    table.refusals = Arc::from(refusals.into_records(policies));
    table
}

/// A direction of a rule: its compiled grants, and whether the rule covers it at all.
type Part = fn(&Compiled) -> Option<&EnforcedPolicy>;

/// A direction whose merged policy passed the entry bound: the policies merged, why, which direction.
struct TooBig {
    policies: String,
    why: String,
    ingress: bool,
}

/// The policy endpoints selected by the same rules share, and what passed the bound in it.
struct Merged {
    policy: Arc<EndpointPolicy>,
    too_big: Vec<TooBig>,
}

fn merge(
    selecting: &[usize],
    flat: &[Flat<'_>],
    limits: &PolicyLimits,
    policies: &[PolicySource<'_>],
) -> Merged {
    let mut too_big = Vec::new();
    let mut direction = |covers: fn(&PolicyRule) -> bool, part: Part, ingress: bool| {
        let rules = || selecting.iter().map(|i| &flat[*i]);
        let covering = || rules().filter(|f| covers(f.rule));
        if covering().next().is_none() {
            return DirectionPolicy::AllowAll;
        }
        if covering().any(|f| f.compiled.is_err()) {
            return DirectionPolicy::Enforced(EnforcedPolicy::default());
        }
        let mut merged = EnforcedPolicy::default();
        for grant in rules().filter_map(|f| f.compiled.as_ref().ok().and_then(part)) {
            merged.union(grant);
        }
        if merged.entries() > limits.max_entries {
            let names: BTreeSet<&str> = covering().map(|f| policies[f.policy].name).collect();
            too_big.push(TooBig {
                policies: names.into_iter().collect::<Vec<_>>().join(", "),
                why: format!(
                    "{} policy entries for one endpoint, at most {}",
                    merged.entries(),
                    limits.max_entries
                ),
                ingress,
            });
            return DirectionPolicy::Enforced(EnforcedPolicy::default());
        }
        DirectionPolicy::Enforced(merged)
    };
    let policy = EndpointPolicy {
        ingress: direction(|r| r.ingress.is_some(), |c| c.ingress.as_ref(), true),
        egress: direction(|r| r.egress.is_some(), |c| c.egress.as_ref(), false),
    };
    Merged {
        policy: Arc::new(policy),
        too_big,
    }
}

/// The refusals of one compilation, gathered as endpoints are compiled.
#[derive(Default)]
struct Refusals {
    /// (policy, why) of each refused rule's reason, by index.
    reasons: Vec<(usize, String)>,
    /// Per reason: the endpoints denied and the directions.
    denied: BTreeMap<usize, (BTreeSet<Identity>, bool, bool)>,
    /// Endpoints whose merged policy passed the bound: by (policies, why).
    too_big: BTreeMap<(String, String), (BTreeSet<Identity>, bool, bool)>,
}

impl Refusals {
    fn reason(&mut self, policy: usize, why: &str) -> usize {
        let found = self
            .reasons
            .iter()
            .position(|(p, w)| *p == policy && w == why);
        found.unwrap_or_else(|| {
            self.reasons.push((policy, why.to_owned()));
            self.reasons.len() - 1
        })
    }

    /// Notes the endpoint under every refused rule selecting it.
    fn deny(&mut self, endpoint: Identity, selecting: &[usize], flat: &[Flat<'_>]) {
        for f in selecting.iter().map(|i| &flat[*i]) {
            if let Err(reason) = f.compiled {
                let entry = self.denied.entry(reason).or_default();
                entry.0.insert(endpoint);
                entry.1 |= f.rule.ingress.is_some();
                entry.2 |= f.rule.egress.is_some();
            }
        }
    }

    fn too_big(&mut self, too_big: &TooBig, endpoint: Identity) {
        let key = (too_big.policies.clone(), too_big.why.clone());
        let entry = self.too_big.entry(key).or_default();
        entry.0.insert(endpoint);
        if too_big.ingress {
            entry.1 = true;
        } else {
            entry.2 = true;
        }
    }

    fn into_records(mut self, policies: &[PolicySource<'_>]) -> Vec<PolicyRefusal> {
        let mut out: Vec<PolicyRefusal> = Vec::new();
        for (index, (policy, why)) in self.reasons.iter().enumerate() {
            let (endpoints, ingress, egress) = self.denied.remove(&index).unwrap_or_default();
            out.push(PolicyRefusal {
                policy: policies[*policy].name.to_owned(),
                why: why.clone(),
                endpoints: endpoints.into_iter().collect(),
                ingress,
                egress,
            });
        }
        for ((policy, why), (endpoints, ingress, egress)) in self.too_big {
            out.push(PolicyRefusal {
                policy,
                why,
                endpoints: endpoints.into_iter().collect(),
                ingress,
                egress,
            });
        }
        out
    }
}

/// Turns peer sets into identity sets.
struct Resolver<'a> {
    identities: &'a IdentityLabels,
    local: ClusterId,
}

/// A resolved peer set: every peer, or these identities.
enum Peers {
    Any,
    Some(Vec<Identity>),
}

impl<'a> Resolver<'a> {
    fn new(identities: &'a IdentityLabels, local: ClusterId) -> Self {
        Resolver { identities, local }
    }

    fn peers(&self, peer: &Peer) -> Peers {
        let reserved = |ids: &[Identity]| Peers::Some(ids.to_vec());
        match peer {
            Peer::Entity(Entity::All) => Peers::Any,
            Peer::Entity(Entity::World) => reserved(&[Identity::WORLD]),
            Peer::Entity(Entity::Host) => reserved(&[Identity::HOST]),
            Peer::Entity(Entity::RemoteNode) => reserved(&[Identity::REMOTE_NODE]),
            Peer::Entity(Entity::Cluster) => {
                let local = self
                    .identities
                    .keys()
                    .filter(|id| id.cluster() == Some(self.local));
                Peers::Some(
                    [Identity::HOST, Identity::REMOTE_NODE]
                        .into_iter()
                        .chain(local.copied())
                        .collect(),
                )
            }
            Peer::Endpoints(selector) => Peers::Some(
                self.identities
                    .iter()
                    .filter(|(_, l)| selector.matches(l))
                    .map(|(id, _)| *id)
                    .collect(),
            ),
        }
    }

    /// Both directions of rule `index`.
    fn rule(&self, index: usize, rule: &PolicyRule) -> Result<Compiled, PolicyError> {
        Ok(Compiled {
            ingress: rule
                .ingress
                .as_deref()
                .map(|r| self.direction(index, r))
                .transpose()?,
            egress: rule
                .egress
                .as_deref()
                .map(|r| self.direction(index, r))
                .transpose()?,
        })
    }

    /// The grants of one direction of rule `index`.
    fn direction<R: DirectionRule>(
        &self,
        index: usize,
        rules: &[R],
    ) -> Result<EnforcedPolicy, PolicyError> {
        let mut policy = EnforcedPolicy::default();
        for rule in rules {
            let Some(grant) = grant(index, rule)? else {
                continue;
            };
            if rule.peers().is_empty() {
                policy.any_peer.union(&grant);
            }
            for peer in rule.peers() {
                match self.peers(peer) {
                    Peers::Any => policy.any_peer.union(&grant),
                    Peers::Some(ids) => {
                        for id in ids {
                            policy.by_peer.entry(id).or_default().union(&grant);
                        }
                    }
                }
            }
        }
        Ok(policy)
    }
}

/// What a rule grants each of its peers; `None` for a rule that grants nothing (no peers, no ports).
fn grant<R: DirectionRule>(index: usize, rule: &R) -> Result<Option<PeerGrant>, PolicyError> {
    let mut grant = PeerGrant::default();
    if rule.to_ports().is_empty() {
        grant.all = true;
        return Ok((!rule.peers().is_empty()).then_some(grant));
    }
    for port in rule.to_ports() {
        let (lo, hi) = port.range().ok_or(PolicyError::InvalidPortRange {
            rule: index,
            port: port.port,
            end_port: port.end_port.unwrap_or(port.port),
        })?;
        use super::rule::Protocol;
        if matches!(port.protocol, Protocol::Tcp | Protocol::Any) {
            grant.tcp.insert(lo, hi);
        }
        if matches!(port.protocol, Protocol::Udp | Protocol::Any) {
            grant.udp.insert(lo, hi);
        }
    }
    Ok(Some(grant))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto::{ICMP, TCP, UDP};
    use crate::policy::rule::{EgressRule, IngressRule, PortRule, Protocol};
    use crate::policy::selector::{LabelSelector, Operator, CLUSTER_LABEL};
    use proptest::prelude::*;

    fn c(n: u8) -> ClusterId {
        ClusterId::new(n).unwrap()
    }

    /// The `index`-th endpoint identity of cluster `cluster`.
    fn id(cluster: u8, index: u32) -> Identity {
        Identity::new((u32::from(cluster) << 16) | (256 + index)).unwrap()
    }

    fn pod(cluster: u8, name: &str) -> Labels {
        Labels::new()
            .with("name", name)
            .with(CLUSTER_LABEL, &format!("cluster{cluster}"))
    }

    fn name(n: &str) -> LabelSelector {
        LabelSelector::all().with_label("name", n)
    }

    fn ingress(from: Vec<Peer>, to_ports: Vec<PortRule>) -> PolicyRule {
        PolicyRule {
            endpoint_selector: name("db"),
            ingress: Some(vec![IngressRule { from, to_ports }]),
            egress: None,
        }
    }

    fn identities() -> IdentityLabels {
        [
            (id(1, 0), pod(1, "x-wing")),
            (id(1, 1), pod(1, "rebel-base")),
            (id(1, 2), pod(1, "db")),
            (id(1, 3), pod(1, "web")),
            (id(2, 0), pod(2, "rebel-base")),
            (id(2, 1), pod(2, "web")),
        ]
        .into_iter()
        .collect()
    }

    fn build(rules: &[PolicyRule]) -> PolicyTable {
        compile(rules, &identities(), c(1), &PolicyLimits::default())
    }

    #[test]
    fn x_wing_reaches_only_the_cluster2_rebel_base() {
        let rule = PolicyRule {
            endpoint_selector: name("x-wing"),
            ingress: None,
            egress: Some(vec![EgressRule {
                to: vec![Peer::Endpoints(
                    name("rebel-base").with_label(CLUSTER_LABEL, "cluster2"),
                )],
                to_ports: vec![],
            }]),
        };
        let table = build(&[rule]);
        let x_wing = id(1, 0);
        assert!(table.allows_egress(x_wing, id(2, 0), TCP, 80));
        assert!(table.allows_egress(x_wing, id(2, 0), ICMP, 0));
        assert!(!table.allows_egress(x_wing, id(1, 1), TCP, 80));
        assert!(!table.allows_egress(x_wing, Identity::WORLD, TCP, 80));
        assert!(
            table.allows_ingress(x_wing, Identity::WORLD, TCP, 80),
            "ingress not mentioned"
        );
        // The rebel bases are not selected: they allow everything.
        assert!(table.allows_ingress(id(1, 1), id(1, 3), TCP, 80));
    }

    #[test]
    fn default_allow_and_default_deny_per_direction() {
        let deny_ingress = PolicyRule {
            endpoint_selector: name("db"),
            ingress: Some(vec![]),
            egress: None,
        };
        let table = build(std::slice::from_ref(&deny_ingress));
        let db = id(1, 2);
        assert!(!table.allows_ingress(db, id(1, 3), TCP, 5432));
        assert!(!table.allows_ingress(db, Identity::HOST, ICMP, 0));
        assert!(table.allows_egress(db, Identity::WORLD, TCP, 443));
        assert!(
            table.allows_ingress(id(1, 3), id(1, 2), TCP, 80),
            "web is not selected"
        );
        // An empty ingress rule grants nothing either.
        let empty = ingress(vec![], vec![]);
        assert!(!build(&[empty]).allows_ingress(db, id(1, 3), TCP, 5432));
        // A second rule adds to the first.
        let allow_web = ingress(
            vec![Peer::Endpoints(name("web"))],
            vec![PortRule::new(Protocol::Tcp, 5432)],
        );
        let table = build(&[deny_ingress, allow_web]);
        assert!(table.allows_ingress(db, id(1, 3), TCP, 5432));
        assert!(
            table.allows_ingress(db, id(2, 1), TCP, 5432),
            "web of cluster2 too: no cluster label"
        );
        assert!(!table.allows_ingress(db, id(1, 3), TCP, 5433));
        assert!(!table.allows_ingress(db, id(1, 0), TCP, 5432));
    }

    #[test]
    fn port_ranges_protocols_and_icmp() {
        let web = || vec![Peer::Endpoints(name("web"))];
        let range = PortRule {
            protocol: Protocol::Tcp,
            port: 8000,
            end_port: Some(8080),
        };
        let table = build(&[ingress(
            web(),
            vec![range, PortRule::new(Protocol::Any, 53)],
        )]);
        let (db, w) = (id(1, 2), id(1, 3));
        assert!(table.allows_ingress(db, w, TCP, 8000) && table.allows_ingress(db, w, TCP, 8080));
        assert!(!table.allows_ingress(db, w, TCP, 7999) && !table.allows_ingress(db, w, TCP, 8081));
        assert!(!table.allows_ingress(db, w, UDP, 8000));
        assert!(table.allows_ingress(db, w, UDP, 53) && table.allows_ingress(db, w, TCP, 53));
        assert!(
            !table.allows_ingress(db, w, ICMP, 0),
            "port rules never allow ICMP"
        );
        let all_udp = build(&[ingress(web(), vec![PortRule::new(Protocol::Udp, 0)])]);
        assert!(
            all_udp.allows_ingress(db, w, UDP, 65535) && !all_udp.allows_ingress(db, w, TCP, 1)
        );
        let l3 = build(&[ingress(web(), vec![])]);
        assert!(l3.allows_ingress(db, w, ICMP, 0) && l3.allows_ingress(db, w, 132, 9));
    }

    /// A rule that cannot be compiled denies what it selects, in the directions it covers, whatever
    /// other rules allow; everything else compiles as before.
    #[test]
    fn a_rule_that_cannot_be_compiled_denies_what_it_selects() {
        let (db, web) = (id(1, 2), id(1, 3));
        let bad = PortRule {
            protocol: Protocol::Tcp,
            port: 90,
            end_port: Some(80),
        };
        let allow_web = ingress(
            vec![Peer::Endpoints(name("web"))],
            vec![PortRule::new(Protocol::Tcp, 5432)],
        );
        let broken = ingress(vec![Peer::Endpoints(name("web"))], vec![bad]);
        let web_policy = PolicyRule {
            endpoint_selector: name("web"),
            ingress: Some(vec![IngressRule {
                from: vec![],
                to_ports: vec![PortRule::new(Protocol::Tcp, 80)],
            }]),
            egress: None,
        };
        let table = build(&[allow_web, broken, web_policy]);
        assert!(
            !table.allows_ingress(db, web, TCP, 5432),
            "db's ingress is denied, even what another rule allows"
        );
        assert!(
            table.allows_egress(db, web, TCP, 80),
            "egress is not covered"
        );
        assert!(
            table.allows_ingress(web, db, TCP, 80),
            "web is not selected"
        );
        assert_eq!(
            table.refusals(),
            [PolicyRefusal {
                policy: "rules".into(),
                why: "policy rule 1: port range 90-80 ends before it starts".into(),
                endpoints: vec![db],
                ingress: true,
                egress: false,
            }]
        );
        assert_eq!(table.refusals_of(db).count(), 1);
        assert_eq!(table.refusals_of(web).count(), 0);
    }

    /// A policy the control plane could not translate denies what it selects.
    #[test]
    fn a_refused_policy_denies_what_it_selects_whatever_else_allows() {
        let (db, web) = (id(1, 2), id(1, 3));
        let allow_all = [ingress(vec![Peer::Entity(Entity::All)], vec![])];
        let refused = [PolicyRule {
            endpoint_selector: name("db"),
            ingress: None,
            egress: Some(vec![]),
        }];
        let sources = [
            PolicySource {
                name: "CiliumNetworkPolicy default/open",
                rules: &allow_all,
                refused: None,
            },
            PolicySource {
                name: "CiliumNetworkPolicy default/cidr",
                rules: &refused,
                refused: Some("`fromCIDR` is not supported"),
            },
        ];
        let table = compile_policies(&sources, &identities(), c(1), &PolicyLimits::default());
        assert!(
            table.allows_ingress(db, web, TCP, 1),
            "ingress is not covered"
        );
        assert!(!table.allows_egress(db, web, TCP, 1), "egress is denied");
        assert!(!table.allows_egress(db, Identity::WORLD, ICMP, 0));
        assert!(table.allows_egress(web, db, TCP, 1));
        let refusal = &table.refusals()[0];
        assert_eq!(
            (refusal.policy.as_str(), refusal.why.as_str()),
            (
                "CiliumNetworkPolicy default/cidr",
                "`fromCIDR` is not supported"
            )
        );
        assert_eq!(refusal.endpoints, [db]);
        assert!(refusal.egress && !refusal.ingress);
    }

    #[test]
    fn entities() {
        let db = id(1, 2);
        let with = |e| build(&[ingress(vec![Peer::Entity(e)], vec![])]);
        let world = with(Entity::World);
        assert!(
            world.allows_ingress(db, Identity::WORLD, TCP, 1)
                && !world.allows_ingress(db, Identity::HOST, TCP, 1)
        );
        assert!(with(Entity::Host).allows_ingress(db, Identity::HOST, TCP, 1));
        let remote = with(Entity::RemoteNode);
        assert!(
            remote.allows_ingress(db, Identity::REMOTE_NODE, UDP, 1)
                && !remote.allows_ingress(db, id(1, 3), UDP, 1)
        );
        let cluster = with(Entity::Cluster);
        for peer in [Identity::HOST, Identity::REMOTE_NODE, id(1, 3), id(1, 0)] {
            assert!(cluster.allows_ingress(db, peer, TCP, 1), "{peer}");
        }
        for peer in [Identity::WORLD, id(2, 1), Identity::UNKNOWN] {
            assert!(!cluster.allows_ingress(db, peer, TCP, 1), "{peer}");
        }
        let all = with(Entity::All);
        assert!([Identity::UNKNOWN, Identity::WORLD, id(2, 1)]
            .iter()
            .all(|p| all.allows_ingress(db, *p, ICMP, 0)));
        // toPorts with no peers: anyone on those ports.
        let ports_only = build(&[ingress(vec![], vec![PortRule::new(Protocol::Tcp, 443)])]);
        assert!(
            ports_only.allows_ingress(db, Identity::WORLD, TCP, 443)
                && !ports_only.allows_ingress(db, Identity::WORLD, TCP, 80)
        );
    }

    #[test]
    fn bounds_and_sharing() {
        let rule = ingress(vec![Peer::Endpoints(LabelSelector::all())], vec![]);
        let limits = PolicyLimits {
            max_rules: 1,
            max_entries: 3,
        };
        // Past the rule bound, every rule is refused: every endpoint a rule selects is denied.
        let too_many = compile(&[rule.clone(), rule.clone()], &identities(), c(1), &limits);
        let (db, web) = (id(1, 2), id(1, 3));
        assert!(!too_many.allows_ingress(db, web, TCP, 1));
        assert!(too_many.allows_egress(db, web, TCP, 1));
        assert_eq!(too_many.refusals()[0].why, "2 policy rules, at most 1");
        assert_eq!(too_many.refusals()[0].endpoints, [db]);
        // Past the entry bound, the endpoint's direction is denied rather than cut short.
        let entries = compile(std::slice::from_ref(&rule), &identities(), c(1), &limits);
        assert!(!entries.allows_ingress(db, web, TCP, 1));
        assert_eq!(
            entries.refusals(),
            [PolicyRefusal {
                policy: "rules".into(),
                why: "6 policy entries for one endpoint, at most 3".into(),
                endpoints: vec![db],
                ingress: true,
                egress: false,
            }]
        );
        let mut ids = identities();
        ids.insert(id(1, 9), pod(1, "db"));
        let table = compile(&[rule], &ids, c(1), &PolicyLimits::default());
        assert_eq!((table.len(), table.distinct_policies()), (2, 1));
        assert!(table.refusals().is_empty());
        let sel = LabelSelector::all()
            .with_expression("name", Operator::In(vec!["db".into(), "web".into()]));
        let deny = PolicyRule {
            endpoint_selector: sel,
            ingress: Some(vec![]),
            egress: None,
        };
        assert_eq!(
            compile(&[deny], &ids, c(1), &PolicyLimits::default()).len(),
            3
        );
    }

    // Property tests: random rules over a small label universe, compared with a direct reading of the rules.

    const NAMES: [&str; 3] = ["a", "b", "c"];

    fn arb_selector() -> impl Strategy<Value = LabelSelector> {
        let label = prop_oneof![
            (0..3usize).prop_map(|n| ("name", NAMES[n].to_string())),
            (1..3u8).prop_map(|n| (CLUSTER_LABEL, format!("cluster{n}"))),
        ];
        let op = prop_oneof![
            prop::collection::vec(0..3usize, 0..3)
                .prop_map(|v| Operator::In(v.iter().map(|n| NAMES[*n].into()).collect())),
            prop::collection::vec(0..3usize, 0..3)
                .prop_map(|v| Operator::NotIn(v.iter().map(|n| NAMES[*n].into()).collect())),
            Just(Operator::Exists),
            Just(Operator::DoesNotExist),
        ];
        let key = prop_oneof![Just("name"), Just("tier")];
        (
            prop::collection::vec(label, 0..2),
            prop::collection::vec((key, op), 0..2),
        )
            .prop_map(|(labels, exprs)| {
                let mut sel = LabelSelector::all();
                for (k, v) in labels {
                    sel = sel.with_label(k, &v);
                }
                for (k, op) in exprs {
                    sel = sel.with_expression(k, op);
                }
                sel
            })
    }

    fn arb_peer() -> impl Strategy<Value = Peer> {
        prop_oneof![
            3 => arb_selector().prop_map(Peer::Endpoints),
            1 => prop::sample::select(vec![Entity::All, Entity::World, Entity::Host, Entity::RemoteNode, Entity::Cluster])
                .prop_map(Peer::Entity),
        ]
    }

    fn arb_port() -> impl Strategy<Value = PortRule> {
        let protocol = prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Any]);
        let port = prop::sample::select(vec![0u16, 53, 80, 443, 8080]);
        (protocol, port, prop::option::of(0u16..400)).prop_map(|(protocol, port, width)| PortRule {
            protocol,
            port,
            end_port: width.map(|w| port.saturating_add(w)),
        })
    }

    fn arb_parts() -> impl Strategy<Value = (Vec<Peer>, Vec<PortRule>)> {
        (
            prop::collection::vec(arb_peer(), 0..3),
            prop::collection::vec(arb_port(), 0..3),
        )
    }

    fn arb_rule() -> impl Strategy<Value = PolicyRule> {
        let ingress = prop::collection::vec(
            arb_parts().prop_map(|(from, to_ports)| IngressRule { from, to_ports }),
            0..3,
        );
        let egress = prop::collection::vec(
            arb_parts().prop_map(|(to, to_ports)| EgressRule { to, to_ports }),
            0..3,
        );
        (
            arb_selector(),
            prop::option::of(ingress),
            prop::option::of(egress),
        )
            .prop_map(|(endpoint_selector, ingress, egress)| PolicyRule {
                endpoint_selector,
                ingress,
                egress,
            })
    }

    fn arb_identities() -> impl Strategy<Value = IdentityLabels> {
        prop::collection::vec((1..3u8, 0..3usize, any::<bool>()), 1..8).prop_map(|pods| {
            pods.iter()
                .enumerate()
                .map(|(i, (cluster, n, tier))| {
                    let mut labels = pod(*cluster, NAMES[*n]);
                    if *tier {
                        labels.insert("tier", "x");
                    }
                    (id(*cluster, i as u32), labels)
                })
                .collect()
        })
    }

    /// The rules read directly: (enforced, allowed) for one endpoint, direction and packet.
    fn naive<R: DirectionRule>(
        rules: &[PolicyRule],
        direction: fn(&PolicyRule) -> Option<&[R]>,
        endpoint: &Labels,
        peer: (Identity, Option<&Labels>),
        packet: (u8, u16),
    ) -> (bool, bool) {
        let selecting = rules
            .iter()
            .filter(|r| r.endpoint_selector.matches(endpoint));
        let dirs: Vec<&[R]> = selecting.filter_map(direction).collect();
        let allowed = dirs
            .iter()
            .flat_map(|d| d.iter())
            .any(|r| r.allows(peer.0, peer.1, c(1), packet.0, packet.1));
        (!dirs.is_empty(), dirs.is_empty() || allowed)
    }

    type Probe = (Identity, Identity, u8, u16);

    fn probes(ids: &IdentityLabels) -> Vec<Probe> {
        let endpoints = ids.keys().filter(|i| i.cluster() == Some(c(1)));
        let peers: Vec<Identity> = ids
            .keys()
            .copied()
            .chain([
                Identity::UNKNOWN,
                Identity::HOST,
                Identity::WORLD,
                Identity::REMOTE_NODE,
            ])
            .collect();
        let packets = [
            (TCP, 0),
            (TCP, 53),
            (TCP, 80),
            (TCP, 81),
            (TCP, 479),
            (UDP, 53),
            (UDP, 443),
            (UDP, 65535),
            (ICMP, 0),
        ];
        let mut out = Vec::new();
        for e in endpoints {
            for p in &peers {
                out.extend(packets.iter().map(|(pr, po)| (*e, *p, *pr, *po)));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn compiled_agrees_with_the_rules(rules in prop::collection::vec(arb_rule(), 0..5), ids in arb_identities()) {
            let table = compile(&rules, &ids, c(1), &PolicyLimits::default());
            for (e, p, pr, po) in probes(&ids) {
                let (el, pl) = (&ids[&e], ids.get(&p));
                let want_in = naive(&rules, |r| r.ingress.as_deref(), el, (p, pl), (pr, po));
                let want_out = naive(&rules, |r| r.egress.as_deref(), el, (p, pl), (pr, po));
                let policy = table.policy(e);
                prop_assert_eq!((policy.ingress.is_enforced(), policy.ingress.allows(p, pr, po)), want_in);
                prop_assert_eq!((policy.egress.is_enforced(), policy.egress.allows(p, pr, po)), want_out);
            }
        }

        #[test]
        fn adding_a_rule_never_takes_an_allow_away(
            rules in prop::collection::vec(arb_rule(), 0..4),
            extra in arb_rule(),
            ids in arb_identities(),
        ) {
            let before = compile(&rules, &ids, c(1), &PolicyLimits::default());
            let mut more = rules.clone();
            more.push(extra);
            let after = compile(&more, &ids, c(1), &PolicyLimits::default());
            for (e, p, pr, po) in probes(&ids) {
                let (b, a) = (before.policy(e), after.policy(e));
                // Only a direction that was already enforced keeps every allow; a newly enforced one
                // starts from deny by design.
                if b.ingress.is_enforced() && b.ingress.allows(p, pr, po) {
                    prop_assert!(a.ingress.allows(p, pr, po));
                }
                if b.egress.is_enforced() && b.egress.allows(p, pr, po) {
                    prop_assert!(a.egress.allows(p, pr, po));
                }
                prop_assert!(a.ingress.is_enforced() || !b.ingress.is_enforced());
            }
        }
    }
}
