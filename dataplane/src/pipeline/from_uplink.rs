//! Receiving from the underlay. Tunnel frames for this node are decapsulated and carry their sender's
//! identity in the VNI, believed only within what the sending node may claim; plain frames for our
//! pods (or, as replies to masqueraded flows, for the node's own address) take an identity by their
//! source; everything else belongs to the node's kernel.
//!
//! What a tunnel frame must prove (each refusal its own drop reason):
//! - it comes from a node of the mesh (`unknown_tunnel_peer`);
//! - its identity is no reserved one (`reserved_identity`), except `remote-node` for the sending node's
//!   own traffic (Cilium sends its host's traffic so), from the node's own address;
//! - its identity belongs to the sending node's cluster (`identity_cluster_mismatch`);
//! - its inner source is an address the ipcache places on the sending node (`foreign_inner_source`).
//!
//! A plain frame in tunnel mode is `remote-node` when it comes from a node's own address, `world`
//! otherwise: the underlay carries no pod traffic plain there, so a pod address claimed in the clear is
//! believed no more than any address of the world (policy decides whether `world` may come in).
//! In native and hybrid routing pods' frames travel plain, and a source the mesh places on a node
//! (that node's own address, `remote-node`, or an address the ipcache gives that node) takes its
//! identity only when the frame proves it came from that node: its source MAC is the node's on our
//! segment (or, in native routing over an underlay configured to route pod CIDRs, the router's for a
//! node behind it). Otherwise it is dropped (`spoofed_underlay_source`, or `node_mac_unresolved`
//! while the owner's MAC is not known yet). A source the mesh does not place is `world`.
//!
//! The checks that need the ipcache (the inner source's node, a plain source's identity) wait for
//! conntrack's lookup as a [`Claim`]: an established flow's path may vouch for it
//! ([`super::fastpath`]), otherwise [`prove`] checks it; a frame that fails leaves conntrack as it was.
//!
//! WireGuard datagrams (UDP 51871 to our address) go to the peer of their outer source
//! ([`crate::wireguard`]): from no node with a key they are `unknown_wireguard_peer`; what the peer
//! decrypts is then checked as a frame from that node, except that the tunnel proves the sender
//! instead of its MAC: a tunnel frame inside must come from the peer's own address, and a plain
//! packet's source must be the peer or an address the ipcache places on it (else
//! `wireguard_source_mismatch`). Under strict encryption nothing from a node of the mesh (or its
//! pods) is believed in clear: `unencrypted_traffic`.

use super::{Arrival, Received, Source, Verdict};
use crate::offload;
use crate::parse::{self, Parsed, L3};
use crate::route::{RemoteNode, RoutingMode};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::tunnel::{self, TunnelProtocol};
use crate::wireguard::{self, EncryptionMode, Tunnels};
use crate::{Addr, DropReason, Frame, Identity};

pub(super) fn receive(
    tables: &Tables,
    tunnels: &mut Tunnels,
    frame: &mut Frame<'_>,
) -> Result<Received, DropReason> {
    let outer = parse::parse(frame.data())?;
    if outer.tunnel_port() == Some(wireguard::PORT) && tables.node.owns(outer.flow.dst) {
        return from_wireguard(tables, tunnels, frame, &outer);
    }
    from_node(tables, frame, outer, None)
}

fn from_wireguard(
    tables: &Tables,
    tunnels: &mut Tunnels,
    frame: &mut Frame<'_>,
    outer: &Parsed,
) -> Result<Received, DropReason> {
    let key = match tables.node.encryption {
        EncryptionMode::Off => None,
        EncryptionMode::On | EncryptionMode::Strict => tables
            .nodes
            .get(outer.flow.src)
            .and_then(|node| node.wireguard_key),
    };
    let key = key.ok_or(DropReason::UnknownWireguardPeer)?;
    let answered = |verdict| Ok(Received::Answered(Forward::Wireguard, verdict));
    match tunnels.receive(tables, frame, outer, key)? {
        wireguard::Received::Reply => answered(Verdict::Transmit(tables.node.uplink)),
        wireguard::Received::Absorbed => answered(Verdict::Consumed),
        wireguard::Received::Decrypted(decrypted) => {
            let inner = parse::parse(frame.data())?;
            from_node(tables, frame, inner, Some(decrypted.peer))
        }
    }
}

/// A frame from another node: `via` the WireGuard peer that decrypted it, `None` if it came plain.
fn from_node(
    tables: &Tables,
    frame: &mut Frame<'_>,
    outer: Parsed,
    via: Option<Addr>,
) -> Result<Received, DropReason> {
    let strict = tables.node.encryption == EncryptionMode::Strict;
    if let Some(protocol) = tunnel_for_us(tables, &outer) {
        match via {
            Some(peer) if peer != outer.flow.src => {
                return Err(DropReason::WireguardSourceMismatch)
            }
            None if strict && tables.nodes.get(outer.flow.src).is_some() => {
                return Err(DropReason::UnencryptedTraffic)
            }
            _ => {}
        }
        let sender = *tables
            .nodes
            .get(outer.flow.src)
            .ok_or(DropReason::UnknownTunnelPeer)?;
        let decapsulated = tunnel::decap(frame, &outer, protocol)?;
        let inner = parse::parse(frame.data())?;
        let (identity, claim) = tunnel_identity(&sender, decapsulated.identity, &inner)?;
        return inbound(frame, inner, (identity, claim), Arrival::FromTunnel);
    }
    let is_ip = matches!(outer.l3, L3::Ipv4 | L3::Ipv6);
    let dst = outer.flow.dst;
    let for_pod = tables.endpoints.by_addr(dst).is_some();
    if is_ip && (for_pod || answers_masquerade(tables, frame, &outer)) {
        let claim = match via {
            Some(peer) => Claim::Decrypted { peer },
            None => Claim::Plain { mac: outer.eth_src },
        };
        // Known once the claim is proven or vouched for.
        let identity = Identity::UNKNOWN;
        return inbound(frame, outer, (identity, Some(claim)), Arrival::FromUnderlay);
    }
    if via.is_some() {
        // What comes out of a tunnel is for our pods or for our own tunnel endpoint, never for the
        // kernel to route on.
        return Err(DropReason::NoRoute);
    }
    Ok(Received::Answered(Forward::ToKernel, Verdict::ToKernel))
}

/// The identity of a plain packet that `peer`'s tunnel decrypted: the peer's own traffic, or one
/// of the addresses the ipcache places on it.
fn decrypted_identity(tables: &Tables, src: Addr, peer: Addr) -> Result<Identity, DropReason> {
    if src == peer {
        return Ok(Identity::REMOTE_NODE);
    }
    match tables.ipcache.lookup(src) {
        Some(entry) if entry.tunnel_endpoint == Some(peer) => Ok(entry.identity),
        _ => Err(DropReason::WireguardSourceMismatch),
    }
}

fn answers_masquerade(tables: &Tables, frame: &Frame<'_>, parsed: &Parsed) -> bool {
    let masquerade = tables.node.masquerade.as_ref();
    tables.node.owns(parsed.flow.dst) && masquerade.is_some_and(|m| m.answers(frame.data(), parsed))
}

fn tunnel_for_us(tables: &Tables, outer: &Parsed) -> Option<TunnelProtocol> {
    let protocol = TunnelProtocol::from_port(outer.tunnel_port()?)?;
    tables.node.owns(outer.flow.dst).then_some(protocol)
}

/// The identity a tunnel frame may carry from `sender`, and what the ipcache must still confirm.
fn tunnel_identity(
    sender: &RemoteNode,
    vni: Identity,
    inner: &Parsed,
) -> Result<(Identity, Option<Claim>), DropReason> {
    if vni == Identity::UNKNOWN {
        return Err(DropReason::InvalidIdentity);
    }
    if vni.is_reserved() {
        return if vni == Identity::REMOTE_NODE && inner.flow.src == sender.addr {
            Ok((vni, None))
        } else {
            Err(DropReason::ReservedIdentity)
        };
    }
    if vni.cluster() != Some(sender.cluster) {
        return Err(DropReason::IdentityClusterMismatch);
    }
    Ok((vni, Some(Claim::Tunnel { node: sender.addr })))
}

/// What a frame from another node claims of its sender that only the ipcache can confirm (a
/// longest-prefix match over every endpoint of the mesh, the costliest lookup a frame meets).
///
/// The check waits until conntrack has been looked up, and nothing of the flow is renewed before
/// it passes. Then a path kept for the frame's direction of its flow ([`super::fastpath`]) made
/// under the same snapshot for a frame with the same claim vouches for it: the check is a function
/// of the snapshot, the frame's source address (the flow's) and the claim alone, and it passed
/// for that frame. Without such a path, [`prove`] makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// Tunnelled by `node`, whose cluster the VNI's identity was checked against already: the
    /// ipcache must place the inner source on that node (`foreign_inner_source`).
    Tunnel { node: Addr },
    /// Plain from this source MAC: the identity of the source address, believed only if the MAC
    /// proves that its owner sent it ([`plain_identity`]).
    Plain { mac: [u8; 6] },
    /// A plain packet that the WireGuard peer `peer` decrypted: its source must be the peer or an
    /// address the ipcache places on it.
    Decrypted { peer: Addr },
}

impl Claim {
    /// Whether the claim, with the source address, decides the sender's identity (the frame's
    /// identity is unknown until it is proven); a tunnel's identity is its VNI's.
    pub(super) fn decides_identity(self) -> bool {
        matches!(self, Claim::Plain { .. } | Claim::Decrypted { .. })
    }
}

/// Checks what a frame from `src` claims: the identity of its sender, or why it is not believed.
/// `identity` is what the frame said (a tunnel's VNI).
pub(super) fn prove(
    tables: &Tables,
    src: Addr,
    claim: Claim,
    identity: Identity,
) -> Result<Identity, DropReason> {
    match claim {
        Claim::Tunnel { node } => {
            let owner = tables.ipcache.lookup(src).and_then(|e| e.tunnel_endpoint);
            if owner != Some(node) {
                return Err(DropReason::ForeignInnerSource);
            }
            Ok(identity)
        }
        Claim::Plain { mac } => {
            let identity = plain_identity(tables, src, mac)?;
            let strict = tables.node.encryption == EncryptionMode::Strict;
            if strict && identity != Identity::WORLD {
                return Err(DropReason::UnencryptedTraffic);
            }
            Ok(identity)
        }
        Claim::Decrypted { peer } => decrypted_identity(tables, src, peer),
    }
}

fn plain_identity(tables: &Tables, src: Addr, src_mac: [u8; 6]) -> Result<Identity, DropReason> {
    let node = tables.nodes.get(src);
    let routing = tables.node.routing;
    if routing == RoutingMode::Tunnel {
        return Ok(node.map_or(Identity::WORLD, |_| Identity::REMOTE_NODE));
    }
    let (identity, owner) = match node {
        Some(node) => (Identity::REMOTE_NODE, Some(node)),
        None => match tables.ipcache.lookup(src) {
            Some(entry) if entry.identity != Identity::WORLD => {
                let owner = entry
                    .tunnel_endpoint
                    .and_then(|addr| tables.nodes.get(addr));
                (entry.identity, owner)
            }
            _ => return Ok(Identity::WORLD),
        },
    };
    // No other node owns it (one of our own pods, or an entry placed nowhere): nobody may send it.
    let owner = owner.ok_or(DropReason::SpoofedUnderlaySource)?;
    routing.admits_plain(&tables.node.underlay, owner, src_mac)?;
    Ok(identity)
}

fn inbound(
    frame: &mut Frame<'_>,
    parsed: Parsed,
    (identity, claim): (Identity, Option<Claim>),
    arrival: Arrival,
) -> Result<Received, DropReason> {
    if !matches!(parsed.l3, L3::Ipv4 | L3::Ipv6) {
        return Err(DropReason::UnsupportedProtocol);
    }
    frame.truncate(parsed.l3_end());
    if arrival == Arrival::FromUnderlay {
        // A host on the same machine (a veth, a bridge) hands frames over with their checksums
        // left to offload, as a pod does; off a real wire they are complete and this is a compare.
        offload::complete_partial_checksum(frame.data_mut(), &parsed)?;
    }
    let source = Source {
        identity,
        local: false,
        claim,
    };
    Ok(Received::Track(parsed, source, arrival))
}
