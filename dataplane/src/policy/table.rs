//! Compiled policy, as the pipeline's policy stage reads it: per local endpoint identity and
//! direction, either allow-all or a map from peer identity to what that peer may do.

use std::sync::Arc;

use crate::hash::KeyedMap;

use crate::flow::proto;
use crate::Identity;

/// Sorted, disjoint, non-adjacent inclusive port ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        // Few ranges per peer: a scan beats a binary search's branches.
        self.ranges
            .iter()
            .any(|(lo, hi)| *lo <= port && port <= *hi)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    /// Adds `lo..=hi`, merging it with the ranges it touches.
    pub fn insert(&mut self, lo: u16, hi: u16) {
        let (mut lo, mut hi) = (lo.min(hi), lo.max(hi));
        self.ranges.retain(|(a, b)| {
            let touches = u32::from(*a) <= u32::from(hi) + 1 && u32::from(lo) <= u32::from(*b) + 1;
            if touches {
                lo = lo.min(*a);
                hi = hi.max(*b);
            }
            !touches
        });
        let at = self.ranges.partition_point(|(a, _)| *a < lo);
        self.ranges.insert(at, (lo, hi));
    }

    pub fn union(&mut self, other: &PortSet) {
        for (lo, hi) in &other.ranges {
            self.insert(*lo, *hi);
        }
    }
}

/// What one peer (or every peer) may do in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerGrant {
    /// Every protocol and port, ICMP included (an L3-only rule).
    pub all: bool,
    pub tcp: PortSet,
    pub udp: PortSet,
}

impl PeerGrant {
    /// ICMP and other protocols without ports are allowed by L3-only rules only.
    pub fn allows(&self, ip_proto: u8, dst_port: u16) -> bool {
        self.all
            || match ip_proto {
                proto::TCP => self.tcp.contains(dst_port),
                proto::UDP => self.udp.contains(dst_port),
                _ => false,
            }
    }

    pub fn union(&mut self, other: &PeerGrant) {
        self.all |= other.all;
        if !self.all {
            self.tcp.union(&other.tcp);
            self.udp.union(&other.udp);
        }
    }
}

/// An enforced direction: only what is listed is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnforcedPolicy {
    pub(crate) by_peer: KeyedMap<Identity, PeerGrant>,
    /// Grants every peer has (rules with no peers, or the `all` entity).
    pub(crate) any_peer: PeerGrant,
}

impl EnforcedPolicy {
    pub fn peer(&self, peer: Identity) -> Option<&PeerGrant> {
        self.by_peer.get(&peer)
    }

    pub fn any_peer(&self) -> &PeerGrant {
        &self.any_peer
    }

    /// Every peer with a grant of its own, in no particular order (for the CLI, off the packet path).
    pub fn peers(&self) -> impl Iterator<Item = (Identity, &PeerGrant)> {
        self.by_peer.iter().map(|(peer, grant)| (*peer, grant))
    }

    /// Per-peer entries: what the table's bound counts.
    pub fn entries(&self) -> usize {
        self.by_peer.len()
    }

    pub(crate) fn union(&mut self, other: &EnforcedPolicy) {
        self.any_peer.union(&other.any_peer);
        for (peer, grant) in &other.by_peer {
            self.by_peer.entry(*peer).or_default().union(grant);
        }
    }
}

/// One direction of one endpoint's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectionPolicy {
    /// No rule selecting the endpoint says anything about this direction.
    AllowAll,
    Enforced(EnforcedPolicy),
}

impl DirectionPolicy {
    /// May `peer` exchange `ip_proto` traffic to `dst_port` (0 for ICMP) in this direction?
    pub fn allows(&self, peer: Identity, ip_proto: u8, dst_port: u16) -> bool {
        match self {
            DirectionPolicy::AllowAll => true,
            DirectionPolicy::Enforced(policy) => {
                policy.any_peer.allows(ip_proto, dst_port)
                    || policy
                        .by_peer
                        .get(&peer)
                        .is_some_and(|g| g.allows(ip_proto, dst_port))
            }
        }
    }

    pub fn is_enforced(&self) -> bool {
        matches!(self, DirectionPolicy::Enforced(_))
    }
}

/// An endpoint identity's policy. Ingress peers are sources, egress peers destinations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub const ALLOW_ALL: EndpointPolicy = EndpointPolicy {
        ingress: DirectionPolicy::AllowAll,
        egress: DirectionPolicy::AllowAll,
    };
}

static ALLOW_ALL: EndpointPolicy = EndpointPolicy::ALLOW_ALL;

/// A policy, or part of one, that could not be enforced as written: the endpoints it selects are
/// denied in the directions it covers. Read by the CLI and metrics, never by the packet path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRefusal {
    /// The policy's name (several, comma-separated, when their merged grants were too many).
    pub policy: String,
    pub why: String,
    /// The local endpoint identities denied because of it.
    pub endpoints: Vec<Identity>,
    pub ingress: bool,
    pub egress: bool,
}

/// Local endpoint identity → its policy; endpoints with the same selecting rules share one policy.
#[derive(Clone, Debug, Default)]
pub struct PolicyTable {
    pub(crate) by_endpoint: KeyedMap<Identity, Arc<EndpointPolicy>>,
    pub(crate) refusals: Arc<[PolicyRefusal]>,
}

impl PolicyTable {
    /// The policy of a local endpoint identity; allow-all for one no rule selects.
    pub fn policy(&self, endpoint: Identity) -> &EndpointPolicy {
        self.by_endpoint
            .get(&endpoint)
            .map_or(&ALLOW_ALL, Arc::as_ref)
    }

    /// May `peer` send `ip_proto` to `endpoint`'s `dst_port`?
    pub fn allows_ingress(
        &self,
        endpoint: Identity,
        peer: Identity,
        ip_proto: u8,
        dst_port: u16,
    ) -> bool {
        self.policy(endpoint)
            .ingress
            .allows(peer, ip_proto, dst_port)
    }

    /// May `endpoint` send `ip_proto` to `peer`'s `dst_port`?
    pub fn allows_egress(
        &self,
        endpoint: Identity,
        peer: Identity,
        ip_proto: u8,
        dst_port: u16,
    ) -> bool {
        self.policy(endpoint)
            .egress
            .allows(peer, ip_proto, dst_port)
    }

    /// What could not be enforced as written, and whom it denies.
    pub fn refusals(&self) -> &[PolicyRefusal] {
        &self.refusals
    }

    /// The refusals that deny `endpoint`.
    pub fn refusals_of(&self, endpoint: Identity) -> impl Iterator<Item = &PolicyRefusal> {
        self.refusals
            .iter()
            .filter(move |r| r.endpoints.contains(&endpoint))
    }

    /// Endpoint identities with a compiled policy.
    pub fn len(&self) -> usize {
        self.by_endpoint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_endpoint.is_empty()
    }

    /// Distinct compiled policies (shared ones counted once).
    pub fn distinct_policies(&self) -> usize {
        let mut seen: Vec<*const EndpointPolicy> =
            self.by_endpoint.values().map(Arc::as_ptr).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn port_set_is_the_union_of_its_ranges(
            ranges in prop::collection::vec((any::<u16>(), 0u16..300), 0..12),
            probes in prop::collection::vec(any::<u16>(), 0..50),
        ) {
            let mut set = PortSet::default();
            let ranges: Vec<(u16, u16)> = ranges.iter().map(|(lo, w)| (*lo, lo.saturating_add(*w))).collect();
            for (lo, hi) in &ranges {
                set.insert(*lo, *hi);
            }
            for w in set.ranges().windows(2) {
                prop_assert!(u32::from(w[0].1) + 1 < u32::from(w[1].0), "sorted, disjoint, not adjacent");
            }
            let edges = ranges.iter().flat_map(|(lo, hi)| [*lo, *hi, lo.wrapping_sub(1), hi.wrapping_add(1)]);
            for port in probes.into_iter().chain(edges) {
                let want = ranges.iter().any(|(lo, hi)| *lo <= port && port <= *hi);
                prop_assert_eq!(set.contains(port), want);
            }
        }
    }

    #[test]
    fn peers_lists_every_grant() {
        let (a, b) = (
            Identity::new(0x1_0001).unwrap(),
            Identity::new(0x2_0001).unwrap(),
        );
        let mut web = PeerGrant::default();
        web.tcp.insert(80, 80);
        let l3 = PeerGrant {
            all: true,
            ..PeerGrant::default()
        };
        let mut policy = EnforcedPolicy::default();
        policy.by_peer.insert(a, web.clone());
        policy.by_peer.insert(b, l3.clone());
        let mut peers: Vec<(Identity, PeerGrant)> =
            policy.peers().map(|(p, g)| (p, g.clone())).collect();
        peers.sort_by_key(|(p, _)| *p);
        assert_eq!(peers, vec![(a, web), (b, l3)]);
        assert_eq!(EnforcedPolicy::default().peers().count(), 0);
    }

    #[test]
    fn icmp_needs_an_l3_grant() {
        let mut grant = PeerGrant::default();
        grant.tcp.insert(0, u16::MAX);
        grant.udp.insert(0, u16::MAX);
        assert!(grant.allows(proto::TCP, 0) && grant.allows(proto::UDP, 65535));
        assert!(!grant.allows(proto::ICMP, 0));
        grant.all = true;
        assert!(grant.allows(proto::ICMP, 0) && grant.allows(proto::ICMPV6, 0));
    }

    #[test]
    fn unknown_endpoint_allows_all() {
        let table = PolicyTable::default();
        assert!(table.allows_ingress(
            Identity::new(0x1_0001).unwrap(),
            Identity::WORLD,
            proto::TCP,
            22
        ));
    }
}
