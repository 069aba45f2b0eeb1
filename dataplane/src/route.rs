//! Stage 6: where a frame goes once policy has let it through — to a pod on this node (the pipeline
//! finds those in [`crate::endpoint`]), or to the node that owns the destination, encapsulated or not —
//! and the rewrite every routed frame gets: new MACs and one hop less.

use crate::hash::KeyedMap;
use thiserror::Error;

use crate::parse::{Parsed, L3};
use crate::wire::{ethernet, ipv4, ipv6};
use crate::{Addr, ClusterId, DropReason};

/// How frames reach pods on other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// Always encapsulate to the owning node.
    #[default]
    Tunnel,
    /// Never encapsulate: the owning node's MAC on our segment, else the underlay router, which must
    /// know the pod prefixes.
    Direct,
    /// Direct to nodes on our L2 segment, encapsulated to all others.
    Hybrid,
}

/// Another node of the mesh, as the underlay sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its underlay address: the tunnel endpoint.
    pub addr: Addr,
    /// The cluster it belongs to: the only one whose identities it may send.
    pub cluster: ClusterId,
    /// Its MAC when it shares our L2 segment; `None` when it is behind the underlay router.
    pub segment_mac: Option<[u8; 6]>,
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
    pub fn next_hop(self, underlay: &Underlay, node: &RemoteNode) -> NextHop {
        let mac = node.segment_mac.unwrap_or(underlay.router_mac);
        let tunnel = NextHop::Tunnel {
            node: node.addr,
            mac,
        };
        match (self, node.segment_mac) {
            (RoutingMode::Tunnel, _) | (RoutingMode::Hybrid, None) => tunnel,
            (RoutingMode::Direct, _) | (RoutingMode::Hybrid, Some(_)) => NextHop::Direct { mac },
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

    fn node(last: u8, on_segment: bool) -> RemoteNode {
        RemoteNode {
            addr: Ipv4Addr::new(198, 18, 1, last).into(),
            cluster: ClusterId::new(1).unwrap(),
            segment_mac: on_segment.then_some([2, 0, 0, 0, 1, last]),
        }
    }

    #[test]
    fn tunnel_mode_always_encapsulates_via_the_right_mac() {
        let near = node(2, true);
        let far = node(3, false);
        assert_eq!(
            RoutingMode::Tunnel.next_hop(&UNDERLAY, &near),
            NextHop::Tunnel {
                node: near.addr,
                mac: [2, 0, 0, 0, 1, 2]
            }
        );
        assert_eq!(
            RoutingMode::Tunnel.next_hop(&UNDERLAY, &far),
            NextHop::Tunnel {
                node: far.addr,
                mac: UNDERLAY.router_mac
            }
        );
    }

    #[test]
    fn hybrid_goes_direct_only_on_the_segment() {
        assert_eq!(
            RoutingMode::Hybrid.next_hop(&UNDERLAY, &node(2, true)),
            NextHop::Direct {
                mac: [2, 0, 0, 0, 1, 2]
            }
        );
        assert!(matches!(
            RoutingMode::Hybrid.next_hop(&UNDERLAY, &node(3, false)),
            NextHop::Tunnel { .. }
        ));
        assert_eq!(
            RoutingMode::Direct.next_hop(&UNDERLAY, &node(3, false)),
            NextHop::Direct {
                mac: UNDERLAY.router_mac
            }
        );
    }

    #[test]
    fn node_table_is_bounded_but_replaces_in_place() {
        let mut table = NodeTable::with_capacity(1);
        table.upsert(node(2, true)).unwrap();
        table.upsert(node(2, false)).unwrap();
        assert_eq!(table.upsert(node(3, true)), Err(NodeTableFull(1)));
        assert_eq!(table.get(node(2, false).addr).unwrap().segment_mac, None);
    }
}
