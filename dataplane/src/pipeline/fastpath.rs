//! The established-flow fast path: what the pipeline decided for one direction of a flow, kept in the
//! flow's conntrack slot ([`crate::conntrack`]) beside its entry, so that the next packet that way
//! does one lookup — its conntrack entry, whose slot the burst prefetched — and applies the decision.
//! The entry says which directions have a path; the burst loads those paths together once its
//! lookups are done, so a flow without one pays no extra cache line.
//!
//! A [`Path`] out of the node holds where the flow's packets go (the node they are tunnelled or
//! sent to and the next hop's MAC, whether they are encrypted to it, or the kernel) with the
//! destination's identity for the flow log; the entry beside it holds the NAT rewrite, and the flow
//! being in conntrack at all is the policy verdict (established flows skip policy). A pod on this
//! node is found by one lookup in the node's small endpoint table, cheaper than the cache line a
//! kept path costs: no path is kept for a pod's frame to another pod of the node (kept, they took
//! 14% longer at production scale). A frame from another node (for a local pod or the node itself)
//! keeps a path in all the same, for the sender's claim it vouches for, which spares the frame the
//! ipcache's longest-prefix match; its destination is found again.
//! It is made by the full pipeline for a packet of a known flow that left, and is stamped with:
//! - the snapshot's generation ([`Tables::generation`]): any new snapshot (a policy flip, a backend
//!   gone, a node moved or its MAC or key changed) leaves every path stale, lazily — nothing is
//!   flushed, the next packet of each flow takes the full pipeline and makes a new one;
//! - how the packet arrived and with which source identity (the VNI a tunnel frame carries, the
//!   pod's own): a packet that arrives otherwise is decided in full;
//! - for a frame from another node, what it claimed of its sender ([`Claim`]: the node that
//!   tunnelled it, the MAC it came from plain, the WireGuard peer that decrypted it), proven then
//!   against the ipcache. Only a frame with the same claim rides the path; any other (another
//!   underlay host, another VNI, another peer) is checked in full, and dropped if its claim fails,
//!   before conntrack renews or counts anything of the flow.
//!
//! The slot's paths are cleared whenever its entry is written or moves, so a path never outlives
//! the translation it was made with. What depends on the packet itself — its size against the path
//! MTU, its hop limit, checksums, encryption — is done per packet on both paths alike, by the same
//! code ([`super::route::transmit`]); the flow log and counters see no difference.

use super::conntrack::{Found, Known};
use super::from_uplink::Claim;
use super::route::{wireguard_key, Destination, NodeRoute};
use super::{Arrival, InFlight};
use crate::conntrack::Conntrack;
use crate::route::NextHop;
use crate::snapshot::Tables;
use crate::{Addr, FlowKey, Identity};

/// One direction of a flow as the full pipeline last forwarded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Path {
    generation: u64,
    arrival: Arrival,
    source: Identity,
    way: Way,
}

/// Which way a path goes: out of a local pod or the node's stack, or in from another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// Where to, and how the destination node is reached, for [`Destination::Node`].
    Out(Destination, Option<Reach>),
    /// From another node, with what the frame claimed of its sender, proven then. Such a frame is
    /// for a local pod or the node itself, found again in a small table (no room is left in the
    /// line for the destination beside the claim).
    In(Claim),
}

/// A node route the snapshot gave, in short: the next hop's MAC, tunnelled or not, and whether the
/// frames are encrypted to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reach {
    mac: [u8; 6],
    tunnel: bool,
    encrypt: bool,
}

impl Reach {
    /// The route to `node` in short; `None` if it failed, or goes through another node.
    fn of(node: Addr, route: NodeRoute) -> Option<Self> {
        let (Ok(hop), Ok(key)) = (route.hop, route.key) else {
            return None;
        };
        let encrypt = key.is_some();
        match hop {
            NextHop::Tunnel { node: to, mac } if to == node => Some(Reach {
                mac,
                tunnel: true,
                encrypt,
            }),
            NextHop::Direct { mac } => Some(Reach {
                mac,
                tunnel: false,
                encrypt,
            }),
            NextHop::Tunnel { .. } => None,
        }
    }
}

/// Both directions' paths of the flow in one conntrack slot: the original direction's (the way the
/// entry's key goes) and the reply direction's, a cache line each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlowPaths {
    original: Line,
    reply: Line,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(align(64))]
struct Line(Option<Path>);

impl FlowPaths {
    pub(crate) fn get(&self, reply: bool) -> Option<Path> {
        self.line_of(reply).0
    }

    pub(crate) fn set(&mut self, reply: bool, path: Path) {
        let line = if reply {
            &mut self.reply
        } else {
            &mut self.original
        };
        line.0 = Some(path);
    }

    /// Where a direction's path lies, to prefetch it.
    pub(crate) fn line(&self, reply: bool) -> *const u8 {
        let line: *const Line = self.line_of(reply);
        line.cast()
    }

    fn line_of(&self, reply: bool) -> &Line {
        if reply {
            &self.reply
        } else {
            &self.original
        }
    }
}

impl Path {
    /// Whether the path holds for a frame of this flow: made under these tables, for a frame that
    /// arrived the same way from the same identity with the same claim of its sender (whose
    /// identity the claim may decide: then the frame's is not known before).
    pub(super) fn holds(&self, tables: &Tables, flight: &InFlight<'_>) -> bool {
        let source = flight.source;
        let claim = match self.way {
            Way::In(claim) => Some(claim),
            Way::Out(..) => None,
        };
        self.generation == tables.generation()
            && self.arrival == flight.arrival
            && claim == source.claim
            && (self.source == source.identity || source.claim.is_some_and(Claim::decides_identity))
    }

    /// The identity of the flow's sender this way.
    pub(super) fn source(&self) -> Identity {
        self.source
    }

    /// Where the frames go, if the path says: a path in leaves it to the tables.
    pub(super) fn destination(&self) -> Option<Destination> {
        match self.way {
            Way::Out(destination, _) => Some(destination),
            Way::In(_) => None,
        }
    }

    /// The node route the path was made with; the WireGuard key, if it encrypts, from the snapshot
    /// (a small table).
    pub(super) fn node_route(&self, tables: &Tables, node: Addr) -> Option<NodeRoute> {
        let Way::Out(_, Some(reach)) = self.way else {
            return None;
        };
        Some(NodeRoute {
            hop: Ok(if reach.tunnel {
                NextHop::Tunnel {
                    node,
                    mac: reach.mac,
                }
            } else {
                NextHop::Direct { mac: reach.mac }
            }),
            key: if reach.encrypt {
                wireguard_key(tables, node)
            } else {
                Ok(None)
            },
        })
    }
}

/// Starts loading the path kept for the frame's direction of its flow, if one is.
pub(super) fn prefetch(ct: &Conntrack, flight: &InFlight<'_>) {
    if let Some(Found {
        slot,
        reply,
        kept: true,
    }) = flight.found
    {
        ct.prefetch_path(slot, reply);
    }
}

/// The path kept for the frame's direction of its flow, if it holds for the frame.
pub(super) fn kept(ct: &Conntrack, tables: &Tables, flight: &InFlight<'_>) -> Option<Path> {
    let Found {
        slot,
        reply,
        kept: true,
    } = flight.found?
    else {
        return None;
    };
    ct.path(slot, &entry_key(flight, reply), reply)
        .filter(|path| path.holds(tables, flight))
}

/// The key of the conntrack entry a frame matched: its own flow's, or for a reply the reverse.
fn entry_key(flight: &InFlight<'_>, reply: bool) -> FlowKey {
    let key = flight.parsed.flow;
    if reply {
        key.reversed()
    } else {
        key
    }
}

/// Keeps the decision the full pipeline made for a frame of a known flow that left: what
/// `flight` says, and `route` for a frame to another node. Nothing is kept for a route that failed.
pub(super) fn remember(
    ct: &mut Conntrack,
    tables: &Tables,
    flight: &InFlight<'_>,
    route: Option<NodeRoute>,
) {
    let (Some(Found { slot, reply, .. }), Known::Original { .. } | Known::Reply(_)) =
        (flight.found, flight.known)
    else {
        return;
    };
    let way = match (flight.source.claim, flight.destination, route) {
        (Some(claim), Destination::LocalPod(_) | Destination::Host, _) => Way::In(claim),
        // What comes from another node goes nowhere else.
        (Some(_), ..) => return,
        // A local pod's destination is cheaper found again than loaded from a kept path.
        (None, Destination::LocalPod(_) | Destination::Nowhere { .. }, _)
        | (None, Destination::Node { .. }, None) => return,
        (None, Destination::Node { node, .. }, Some(route)) => {
            let Some(reach) = Reach::of(node, route) else {
                return;
            };
            Way::Out(flight.destination, Some(reach))
        }
        (None, Destination::Host | Destination::Kernel, _) => Way::Out(flight.destination, None),
    };
    let path = Path {
        generation: tables.generation(),
        arrival: flight.arrival,
        source: flight.source.identity,
        way,
    };
    ct.keep_path(
        slot,
        &entry_key(flight, reply),
        flight.known.nat(),
        reply,
        path,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_one_cache_line() {
        assert!(std::mem::size_of::<Option<Path>>() <= 64);
        assert_eq!(std::mem::size_of::<FlowPaths>(), 128);
        assert_eq!(std::mem::align_of::<FlowPaths>(), 64);
    }
}
