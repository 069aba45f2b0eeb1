//! Compiles rules against the identity table into per-endpoint lookup tables. Runs in the control
//! plane when rules or identities change; the result goes into the next snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::{ClusterId, Identity};

use super::rule::{DirectionRule, Entity, Peer, PolicyRule};
use super::selector::Labels;
use super::table::{DirectionPolicy, EndpointPolicy, EnforcedPolicy, PeerGrant, PolicyTable};

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

/// What one rule contributes to each direction of the endpoints it selects.
struct Compiled {
    ingress: Option<EnforcedPolicy>,
    egress: Option<EnforcedPolicy>,
}

/// The policy of every local endpoint identity (those `local` allocated) under `rules`.
pub fn compile(
    rules: &[PolicyRule],
    identities: &IdentityLabels,
    local: ClusterId,
    limits: &PolicyLimits,
) -> Result<PolicyTable, PolicyError> {
    if rules.len() > limits.max_rules {
        return Err(PolicyError::TooManyRules {
            count: rules.len(),
            max: limits.max_rules,
        });
    }
    let resolver = Resolver::new(identities, local);
    let compiled: Vec<Compiled> = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            Ok(Compiled {
                ingress: rule
                    .ingress
                    .as_deref()
                    .map(|r| resolver.direction(i, r))
                    .transpose()?,
                egress: rule
                    .egress
                    .as_deref()
                    .map(|r| resolver.direction(i, r))
                    .transpose()?,
            })
        })
        .collect::<Result<_, PolicyError>>()?;

    let mut shared: FxHashMap<Vec<usize>, Arc<EndpointPolicy>> = FxHashMap::default();
    let mut table = PolicyTable::default();
    for (endpoint, labels) in identities
        .iter()
        .filter(|(id, _)| id.cluster() == Some(local))
    {
        let selecting: Vec<usize> = (0..rules.len())
            .filter(|i| {
                rules
                    .get(*i)
                    .is_some_and(|r| r.endpoint_selector.matches(labels))
            })
            .collect();
        if selecting.is_empty() {
            continue;
        }
        let policy = match shared.get(&selecting) {
            Some(policy) => policy.clone(),
            None => {
                let policy = Arc::new(merge(&selecting, &compiled, *endpoint, limits)?);
                shared.insert(selecting, policy.clone());
                policy
            }
        };
        table.by_endpoint.insert(*endpoint, policy);
    }
    Ok(table)
}

fn merge(
    selecting: &[usize],
    compiled: &[Compiled],
    endpoint: Identity,
    limits: &PolicyLimits,
) -> Result<EndpointPolicy, PolicyError> {
    let rules = || selecting.iter().filter_map(|i| compiled.get(*i));
    let direction = |part: fn(&Compiled) -> Option<&EnforcedPolicy>| {
        let mut merged: Option<EnforcedPolicy> = None;
        for grant in rules().filter_map(part) {
            merged
                .get_or_insert_with(EnforcedPolicy::default)
                .union(grant);
        }
        match merged {
            None => Ok(DirectionPolicy::AllowAll),
            Some(p) if p.entries() > limits.max_entries => Err(PolicyError::TooManyEntries {
                endpoint,
                entries: p.entries(),
                max: limits.max_entries,
            }),
            Some(p) => Ok(DirectionPolicy::Enforced(p)),
        }
    };
    Ok(EndpointPolicy {
        ingress: direction(|c| c.ingress.as_ref())?,
        egress: direction(|c| c.egress.as_ref())?,
    })
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
    use std::time::Instant;

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
        compile(rules, &identities(), c(1), &PolicyLimits::default()).unwrap()
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
        let bad = PortRule {
            protocol: Protocol::Tcp,
            port: 90,
            end_port: Some(80),
        };
        let err = compile(
            &[ingress(web(), vec![bad])],
            &identities(),
            c(1),
            &PolicyLimits::default(),
        );
        assert_eq!(
            err.unwrap_err(),
            PolicyError::InvalidPortRange {
                rule: 0,
                port: 90,
                end_port: 80
            }
        );
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
        let too_many = compile(&[rule.clone(), rule.clone()], &identities(), c(1), &limits);
        assert_eq!(
            too_many.unwrap_err(),
            PolicyError::TooManyRules { count: 2, max: 1 }
        );
        let entries = compile(std::slice::from_ref(&rule), &identities(), c(1), &limits);
        assert_eq!(
            entries.unwrap_err(),
            PolicyError::TooManyEntries {
                endpoint: id(1, 2),
                entries: 6,
                max: 3
            }
        );
        let mut ids = identities();
        ids.insert(id(1, 9), pod(1, "db"));
        let table = compile(&[rule], &ids, c(1), &PolicyLimits::default()).unwrap();
        assert_eq!((table.len(), table.distinct_policies()), (2, 1));
        let sel = LabelSelector::all()
            .with_expression("name", Operator::In(vec!["db".into(), "web".into()]));
        let deny = PolicyRule {
            endpoint_selector: sel,
            ingress: Some(vec![]),
            egress: None,
        };
        assert_eq!(
            compile(&[deny], &ids, c(1), &PolicyLimits::default())
                .unwrap()
                .len(),
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
            let table = compile(&rules, &ids, c(1), &PolicyLimits::default()).unwrap();
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
            let before = compile(&rules, &ids, c(1), &PolicyLimits::default()).unwrap();
            let mut more = rules.clone();
            more.push(extra);
            let after = compile(&more, &ids, c(1), &PolicyLimits::default()).unwrap();
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

    /// Figures for the report: `cargo test -p meshpath-dataplane --release -- --ignored --nocapture policy`.
    #[test]
    #[ignore]
    fn measure_1k_rules() {
        let ids: IdentityLabels = (0..2000u32)
            .map(|i| {
                let cluster = 1 + (i % 2) as u8;
                let labels = Labels::new()
                    .with("app", &format!("app{}", i % 200))
                    .with("tier", &format!("t{}", i % 7))
                    .with(CLUSTER_LABEL, &format!("cluster{cluster}"));
                (id(cluster, i), labels)
            })
            .collect();
        let rules: Vec<PolicyRule> = (0..1000u32)
            .map(|i| PolicyRule {
                endpoint_selector: LabelSelector::all()
                    .with_label("app", &format!("app{}", i % 200)),
                ingress: Some(vec![IngressRule {
                    from: vec![Peer::Endpoints(
                        LabelSelector::all().with_label("tier", &format!("t{}", i % 7)),
                    )],
                    to_ports: vec![PortRule {
                        protocol: Protocol::Tcp,
                        port: 8000 + (i % 50) as u16,
                        end_port: Some(8100),
                    }],
                }]),
                egress: None,
            })
            .collect();
        let start = Instant::now();
        let table = compile(&rules, &ids, c(1), &PolicyLimits::default()).unwrap();
        let compile_ms = start.elapsed().as_millis();
        let endpoints: Vec<Identity> = ids
            .keys()
            .filter(|i| i.cluster() == Some(c(1)))
            .copied()
            .collect();
        let peers: Vec<Identity> = ids.keys().copied().collect();
        let n = 10_000_000usize;
        let start = Instant::now();
        let mut allowed = 0usize;
        for i in 0..n {
            let e = endpoints[i % endpoints.len()];
            let p = peers[(i * 7919) % peers.len()];
            allowed +=
                table.allows_ingress(std::hint::black_box(e), p, TCP, 8000 + (i % 200) as u16)
                    as usize;
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "policy: 1k rules, {} identities: compile {compile_ms} ms, {} endpoints / {} distinct policies, lookup {per:.1} ns ({allowed} allowed)",
            ids.len(),
            table.len(),
            table.distinct_policies()
        );
    }
}
