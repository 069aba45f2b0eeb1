//! Stage 6: where a frame goes once policy has let it through — to a pod on this node (the pipeline
//! finds those in [`crate::endpoint`]), or to the node that owns the destination, encapsulated or not —
//! and the rewrite every routed frame gets: new MACs and one hop less.
//!
//! How another node is reached depends on the routing mode and on where that node is:
//!
//! | node is                  | tunnel                  | native                                   | hybrid                  |
//! |--------------------------|-------------------------|------------------------------------------|-------------------------|
//! | on our segment, MAC known | tunnel to its MAC      | plain to its MAC                         | plain to its MAC        |
//! | on our segment, MAC not yet | tunnel via the router | dropped (`node_mac_unresolved`)         | tunnel via the router   |
//! | behind the router        | tunnel via the router   | plain via the router if the underlay routes pod CIDRs, else dropped (`node_off_segment`) | tunnel via the router |

use crate::hash::KeyedMap;
use thiserror::Error;

use crate::parse::{Parsed, L3};
use crate::wire::{ethernet, ipv4, ipv6};
use crate::wireguard::PublicKey;
use crate::{Addr, ClusterId, DropReason};

/// How frames reach pods on other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// Always encapsulate to the owning node.
    #[default]
    Tunnel,
    /// Never encapsulate (Cilium's native routing): the owning node's MAC on our segment, as
    /// Cilium's `auto-direct-node-routes` does; a node behind the underlay router only when
    /// `underlay_routes_pods` says the underlay knows every node's pod CIDRs.
    Native { underlay_routes_pods: bool },
    /// Plain to nodes on our L2 segment, encapsulated to all others.
    Hybrid,
}

/// Where another node sits on the underlay, as seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLink {
    /// On our L2 segment, its MAC on the uplink resolved.
    Segment([u8; 6]),
    /// On our L2 segment, its MAC not resolved (yet).
    Unresolved,
    /// Behind the underlay router.
    Routed,
}

/// Another node of the mesh, as the underlay sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its underlay address: the tunnel endpoint.
    pub addr: Addr,
    /// The cluster it belongs to: the only one whose identities it may send.
    pub cluster: ClusterId,
    pub link: NodeLink,
    /// Its WireGuard public key (its node record's `WireguardPubKey`), if it publishes one.
    pub wireguard_key: Option<PublicKey>,
}

impl RemoteNode {
    /// Its MAC when it shares our segment and is resolved.
    pub fn segment_mac(&self) -> Option<[u8; 6]> {
        match self.link {
            NodeLink::Segment(mac) => Some(mac),
            NodeLink::Unresolved | NodeLink::Routed => None,
        }
    }
}

/// This node's side of the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub mac: [u8; 6],
    /// The router towards the other segments.
    pub router_mac: [u8; 6],
    /// Largest IP packet the uplink carries.
    pub mtu: u16,
}

/// The next hop for a frame bound to another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Encapsulate to `node`, the outer frame addressed to `mac`.
    Tunnel { node: Addr, mac: [u8; 6] },
    /// Send the frame itself, re-addressed to `mac`.
    Direct { mac: [u8; 6] },
}

impl RoutingMode {
    /// How `node` is reached in this mode, or why it cannot be.
    pub fn next_hop(self, underlay: &Underlay, node: &RemoteNode) -> Result<NextHop, DropReason> {
        let tunnel = |mac| NextHop::Tunnel {
            node: node.addr,
            mac,
        };
        let router = underlay.router_mac;
        match (self, node.link) {
            (RoutingMode::Tunnel, NodeLink::Segment(mac)) => Ok(tunnel(mac)),
            (
                RoutingMode::Tunnel | RoutingMode::Hybrid,
                NodeLink::Unresolved | NodeLink::Routed,
            ) => Ok(tunnel(router)),
            (RoutingMode::Native { .. } | RoutingMode::Hybrid, NodeLink::Segment(mac)) => {
                Ok(NextHop::Direct { mac })
            }
            (RoutingMode::Native { .. }, NodeLink::Unresolved) => {
                Err(DropReason::NodeMacUnresolved)
            }
            (
                RoutingMode::Native {
                    underlay_routes_pods,
                },
                NodeLink::Routed,
            ) => {
                if underlay_routes_pods {
                    Ok(NextHop::Direct { mac: router })
                } else {
                    Err(DropReason::NodeOffSegment)
                }
            }
        }
    }

    /// Whether a plain frame whose source belongs to `owner` may have come from `src_mac`: only
    /// outside tunnel mode, straight from the owner on our segment or — in native routing over an
    /// underlay that routes pod CIDRs, where the underlay is trusted as configured — from the router
    /// when the owner is behind it.
    pub fn admits_plain(
        self,
        underlay: &Underlay,
        owner: &RemoteNode,
        src_mac: [u8; 6],
    ) -> Result<(), DropReason> {
        let proven = match (self, owner.link) {
            (RoutingMode::Tunnel, _) => false,
            (_, NodeLink::Segment(mac)) => mac == src_mac,
            (_, NodeLink::Unresolved) => return Err(DropReason::NodeMacUnresolved),
            (
                RoutingMode::Native {
                    underlay_routes_pods,
                },
                NodeLink::Routed,
            ) => underlay_routes_pods && src_mac == underlay.router_mac,
            (RoutingMode::Hybrid, NodeLink::Routed) => false,
        };
        if proven {
            Ok(())
        } else {
            Err(DropReason::SpoofedUnderlaySource)
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("node table is full ({0} nodes)")]
pub struct NodeTableFull(pub usize);

/// Every other node of the mesh by underlay address. Read-only on the packet path.
#[derive(Clone, Debug, Default)]
pub struct NodeTable {
    nodes: KeyedMap<Addr, RemoteNode>,
    capacity: usize,
}

impl NodeTable {
    pub fn with_capacity(capacity: usize) -> Self {
        NodeTable {
            nodes: KeyedMap::default(),
            capacity,
        }
    }

    pub fn get(&self, addr: Addr) -> Option<&RemoteNode> {
        self.nodes.get(&addr)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds or replaces a node.
    pub fn upsert(&mut self, node: RemoteNode) -> Result<(), NodeTableFull> {
        if self.nodes.len() >= self.capacity && !self.nodes.contains_key(&node.addr) {
            return Err(NodeTableFull(self.capacity));
        }
        self.nodes.insert(node.addr, node);
        Ok(())
    }

    pub fn remove(&mut self, addr: Addr) -> Option<RemoteNode> {
        self.nodes.remove(&addr)
    }
}

/// Re-addresses the Ethernet header of a routed frame.
pub fn set_macs(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) -> Result<(), DropReason> {
    let mut eth = ethernet::Frame::new_checked(frame).map_err(DropReason::from)?;
    eth.set_dst(dst);
    eth.set_src(src);
    Ok(())
}

/// Takes one hop off the IPv4 TTL (the header checksum follows) or the IPv6 hop limit, as a router
/// does; a frame that has no hop left is `TtlExceeded`.
pub fn decrement_hop_limit(frame: &mut [u8], parsed: &Parsed) -> Result<(), DropReason> {
    if parsed.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let l3 = frame
        .get_mut(parsed.l3_offset..)
        .ok_or(DropReason::InvalidHeader)?;
    match parsed.l3 {
        L3::Ipv4 => ipv4::Packet::new_checked(l3)
            .map_err(DropReason::from)?
            .set_ttl(parsed.ttl - 1),
        L3::Ipv6 => ipv6::Packet::new_checked(l3)
            .map_err(DropReason::from)?
            .set_hop_limit(parsed.ttl - 1),
        L3::Arp(_) => return Err(DropReason::UnsupportedProtocol),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const UNDERLAY: Underlay = Underlay {
        mac: [2, 0, 0, 0, 0, 1],
        router_mac: [2, 0, 0, 0, 0, 0xfe],
        mtu: 1500,
    };
    const NATIVE: RoutingMode = RoutingMode::Native {
        underlay_routes_pods: false,
    };
    const NATIVE_ROUTED: RoutingMode = RoutingMode::Native {
        underlay_routes_pods: true,
    };

    fn mac(last: u8) -> [u8; 6] {
        [2, 0, 0, 0, 1, last]
    }

    fn node(last: u8, link: NodeLink) -> RemoteNode {
        RemoteNode {
            addr: Ipv4Addr::new(198, 18, 1, last).into(),
            cluster: ClusterId::new(1).unwrap(),
            link,
            wireguard_key: None,
        }
    }

    fn near() -> RemoteNode {
        node(2, NodeLink::Segment(mac(2)))
    }

    #[test]
    fn tunnel_mode_always_encapsulates_via_the_right_mac() {
        let (near, far) = (near(), node(3, NodeLink::Routed));
        let unresolved = node(4, NodeLink::Unresolved);
        let tunnel = |n: &RemoteNode, mac| Ok(NextHop::Tunnel { node: n.addr, mac });
        let hop = |n| RoutingMode::Tunnel.next_hop(&UNDERLAY, n);
        assert_eq!(hop(&near), tunnel(&near, mac(2)));
        assert_eq!(hop(&far), tunnel(&far, UNDERLAY.router_mac));
        assert_eq!(hop(&unresolved), tunnel(&unresolved, UNDERLAY.router_mac));
    }

    #[test]
    fn hybrid_goes_direct_only_on_the_segment_and_tunnels_the_rest_via_the_router() {
        let direct = RoutingMode::Hybrid.next_hop(&UNDERLAY, &near()).unwrap();
        assert_eq!(direct, NextHop::Direct { mac: mac(2) });
        for link in [NodeLink::Routed, NodeLink::Unresolved] {
            let hop = RoutingMode::Hybrid.next_hop(&UNDERLAY, &node(3, link));
            assert!(
                matches!(hop, Ok(NextHop::Tunnel { mac, .. }) if mac == UNDERLAY.router_mac),
                "{link:?}: {hop:?}"
            );
        }
    }

    #[test]
    fn native_routing_refuses_what_it_cannot_reach_plain() {
        assert_eq!(
            NATIVE.next_hop(&UNDERLAY, &near()),
            Ok(NextHop::Direct { mac: mac(2) })
        );
        let far = node(3, NodeLink::Routed);
        assert_eq!(
            NATIVE.next_hop(&UNDERLAY, &far),
            Err(DropReason::NodeOffSegment)
        );
        assert_eq!(
            NATIVE_ROUTED.next_hop(&UNDERLAY, &far),
            Ok(NextHop::Direct {
                mac: UNDERLAY.router_mac
            })
        );
        for mode in [NATIVE, NATIVE_ROUTED] {
            assert_eq!(
                mode.next_hop(&UNDERLAY, &node(4, NodeLink::Unresolved)),
                Err(DropReason::NodeMacUnresolved)
            );
        }
    }

    #[test]
    fn plain_frames_are_admitted_only_from_their_owners_mac() {
        let far = node(3, NodeLink::Routed);
        let spoofed = Err(DropReason::SpoofedUnderlaySource);
        for mode in [NATIVE, RoutingMode::Hybrid] {
            assert_eq!(mode.admits_plain(&UNDERLAY, &near(), mac(2)), Ok(()));
            assert_eq!(mode.admits_plain(&UNDERLAY, &near(), mac(9)), spoofed);
            assert_eq!(
                mode.admits_plain(&UNDERLAY, &near(), UNDERLAY.router_mac),
                spoofed
            );
            assert_eq!(
                mode.admits_plain(&UNDERLAY, &far, UNDERLAY.router_mac),
                spoofed,
                "{mode:?}: a node behind the router is no proof"
            );
            let unresolved = node(4, NodeLink::Unresolved);
            assert_eq!(
                mode.admits_plain(&UNDERLAY, &unresolved, mac(4)),
                Err(DropReason::NodeMacUnresolved)
            );
        }
        assert_eq!(
            NATIVE_ROUTED.admits_plain(&UNDERLAY, &far, UNDERLAY.router_mac),
            Ok(())
        );
        assert_eq!(NATIVE_ROUTED.admits_plain(&UNDERLAY, &far, mac(3)), spoofed);
        assert_eq!(
            RoutingMode::Tunnel.admits_plain(&UNDERLAY, &near(), mac(2)),
            spoofed
        );
    }

    #[test]
    fn node_table_is_bounded_but_replaces_in_place() {
        let mut table = NodeTable::with_capacity(1);
        table.upsert(near()).unwrap();
        table.upsert(node(2, NodeLink::Routed)).unwrap();
        assert_eq!(
            table.upsert(node(3, NodeLink::Routed)),
            Err(NodeTableFull(1))
        );
        assert_eq!(table.get(near().addr).unwrap().segment_mac(), None);
    }
}
