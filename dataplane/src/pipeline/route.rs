//! Routing in the pipeline: who holds a tracked, translated frame's destination — a pod on this node,
//! another node (encapsulated or directly), the node's own stack, or the world beyond the kernel — and
//! the rewrite that sends it there. Frames for the node and the world go to the kernel through the
//! host port; a frame too big for the underlay once encapsulated is answered with an ICMP error that
//! tells its sender the MTU that fits ([`crate::pmtu`]). With encryption on, a frame for a node that
//! publishes a WireGuard key leaves as a WireGuard datagram to it, encrypted after encapsulation
//! ([`crate::wireguard`]); its overhead enters the path MTU. Under strict encryption a node without a
//! key is unreachable (`node_without_key`).

use super::conntrack::Rewrite;
use super::{Arrival, InFlight, Outcome, Verdict};
use crate::endpoint::Endpoint;
use crate::nat;
use crate::parse::Parsed;
use crate::pmtu::{self, ErrorRateLimit};
use crate::route::{self, NextHop, NodeLink, RemoteNode};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::tunnel::{self, Encapsulation};
use crate::wire::ethernet;
use crate::wireguard::{self, EncryptionMode, Ends, PublicKey, Sent, Tunnels};
use crate::{Addr, DropReason, Frame, Identity, PortId};

/// The outer TTL of tunnel frames, as Linux's VXLAN device sends them.
const TUNNEL_TTL: u8 = 64;

/// Who holds a flow's (translated) destination address. Self-contained (no reference into the
/// tables), so that the fast path can remember it beside the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Destination {
    LocalPod(LocalPod),
    /// Another node of the mesh; the address's identity.
    Node {
        node: Addr,
        identity: Identity,
    },
    /// This node's own stack (one of its addresses).
    Host,
    /// Outside the mesh: the node's kernel routes it.
    Kernel,
    /// Not reachable from where the frame came in, and why.
    Nowhere {
        identity: Identity,
        reason: DropReason,
    },
}

/// What the pipeline needs of a pod on this node it sends a frame to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LocalPod {
    pub port: PortId,
    pub mac: [u8; 6],
    pub identity: Identity,
}

impl From<&Endpoint> for LocalPod {
    fn from(endpoint: &Endpoint) -> Self {
        LocalPod {
            port: endpoint.port,
            mac: endpoint.mac,
            identity: endpoint.identity,
        }
    }
}

pub(super) fn destination(tables: &Tables, dst: Addr, arrival: Arrival) -> Destination {
    if let Some(endpoint) = tables.endpoints.by_addr(dst) {
        return Destination::LocalPod(endpoint.into());
    }
    let nowhere = |identity, reason| Destination::Nowhere { identity, reason };
    if tables.node.owns(dst) {
        return match arrival {
            Arrival::FromPod | Arrival::FromTunnel => Destination::Host,
            // Only replies and errors reach us plain at our own address, and those were translated
            // to a pod by now: anything else is no masqueraded flow's.
            Arrival::FromUnderlay => nowhere(Identity::HOST, DropReason::NoNatMapping),
            Arrival::FromHost => nowhere(Identity::HOST, DropReason::NoRoute),
        };
    }
    let entry = tables.ipcache.lookup(dst);
    let identity = entry.map_or(Identity::WORLD, |e| e.identity);
    if matches!(arrival, Arrival::FromTunnel | Arrival::FromUnderlay) {
        // This node is no transit router: the underlay only delivers to its pods and itself.
        return nowhere(identity, DropReason::NoRoute);
    }
    match entry.map(|e| e.tunnel_endpoint) {
        Some(Some(node)) if !tables.node.owns(node) => Destination::Node { node, identity },
        _ if tables.nodes.get(dst).is_some() => Destination::Node {
            node: dst,
            identity: Identity::REMOTE_NODE,
        },
        None if arrival == Arrival::FromPod => Destination::Kernel,
        Some(_) if identity == Identity::WORLD && arrival == Arrival::FromPod => {
            Destination::Kernel
        }
        _ => nowhere(identity, DropReason::NoRoute),
    }
}

/// How the snapshot says another node is reached: the next hop and the WireGuard key, each or why
/// not. Worked out once per flow and snapshot: the fast path keeps it beside the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NodeRoute {
    pub hop: Result<NextHop, DropReason>,
    pub key: Result<Option<PublicKey>, DropReason>,
}

impl NodeRoute {
    pub(super) fn of(tables: &Tables, node: Addr) -> Self {
        let config = &tables.node;
        NodeRoute {
            hop: config
                .routing
                .next_hop(&config.underlay, &remote_node(tables, node)),
            key: wireguard_key(tables, node),
        }
    }

    /// What encapsulation and encryption add to a packet on its way to `node`; `None` if the node
    /// cannot be reached at all (its drop reason comes from `to_node`, not a path MTU).
    pub(super) fn overhead(&self, node: Addr) -> Option<usize> {
        // The outer Ethernet header is no part of the MTU, but the inner one travels inside: the
        // headers encapsulation adds count exactly once. Plain frames take the uplink's MTU as they
        // are.
        let overhead = match self.hop.ok()? {
            NextHop::Tunnel { node, .. } => tunnel::overhead(node),
            NextHop::Direct { .. } => 0,
        };
        Some(match self.key {
            Ok(Some(_)) => overhead + wireguard::overhead_to(node),
            _ => overhead,
        })
    }
}

/// Rewrites the frame for where it goes, and says where that is. `route` is how the destination
/// node is reached, for a frame to another node.
pub(super) fn transmit(
    tables: &Tables,
    frame: &mut Frame<'_>,
    flight: &InFlight<'_>,
    route: Option<NodeRoute>,
    (errors, tunnels): (&mut ErrorRateLimit, &mut Tunnels),
    now_ms: u64,
) -> Outcome {
    if let (Destination::Node { node, .. }, Some(route)) = (flight.destination, route) {
        // Before any rewrite: an error must quote the packet as its sender sent it.
        if let Some(mtu) = too_big(tables, frame, &flight.parsed, node, &route) {
            return path_mtu_reply(tables, frame, flight, mtu, errors, now_ms);
        }
    }
    match flight.tracked.rewrite {
        Some(Rewrite::Flow(end, addr, port)) => {
            nat::rewrite(frame.data_mut(), &flight.parsed, end, addr, port)?
        }
        Some(Rewrite::Related(untranslate)) => {
            untranslate.apply(frame.data_mut(), &flight.parsed)?
        }
        None => {}
    }
    match flight.destination {
        Destination::LocalPod(endpoint) => {
            to_local_pod(tables, frame, &flight.parsed, endpoint, flight.arrival)
        }
        Destination::Node { node, .. } => {
            let route = route.unwrap_or_else(|| NodeRoute::of(tables, node));
            // The node's own traffic is the "remote-node" of its receivers, as Cilium sends it.
            let identity = match flight.source.identity {
                Identity::HOST => Identity::REMOTE_NODE,
                identity => identity,
            };
            let hash = flight.tracked.flow.symmetric_hash();
            let key = route.key?;
            let sent = to_node(tables, frame, &flight.parsed, route.hop?, identity, hash)?;
            match key {
                Some(key) => encrypt(tables, tunnels, frame, node, key, sent),
                None => Ok(sent),
            }
        }
        Destination::Host | Destination::Kernel => to_kernel(tables, frame),
        Destination::Nowhere { reason, .. } => Err(reason),
    }
}

fn to_local_pod(
    tables: &Tables,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    endpoint: LocalPod,
    arrival: Arrival,
) -> Outcome {
    let bytes = frame.data_mut();
    // A frame from another node had its hop taken by the sending node.
    if matches!(arrival, Arrival::FromPod | Arrival::FromHost) {
        route::decrement_hop_limit(bytes, parsed)?;
    }
    route::set_macs(bytes, tables.node.gateway.mac, endpoint.mac)?;
    Ok((Forward::LocalPod, Verdict::Transmit(endpoint.port)))
}

/// Through the host port into the node's stack, which delivers it or routes it on (and takes the
/// hop); without a host port, handed back to the caller as `Verdict::ToKernel`.
fn to_kernel(tables: &Tables, frame: &mut Frame<'_>) -> Outcome {
    let Some(host) = tables.node.host else {
        return Ok((Forward::ToKernel, Verdict::ToKernel));
    };
    route::set_macs(frame.data_mut(), host.mac, host.kernel_mac)?;
    Ok((Forward::ToKernel, Verdict::Transmit(host.port)))
}

/// The key to encrypt to `node` with, `None` to send it plain; under strict encryption a node
/// without a key is no destination.
pub(super) fn wireguard_key(tables: &Tables, node: Addr) -> Result<Option<PublicKey>, DropReason> {
    let key = tables.nodes.get(node).and_then(|n| n.wireguard_key);
    match (tables.node.encryption, key) {
        (EncryptionMode::Off, _) => Ok(None),
        (EncryptionMode::Strict, None) => Err(DropReason::NodeWithoutKey),
        (EncryptionMode::On | EncryptionMode::Strict, key) => Ok(key),
    }
}

/// Wraps the frame `to_node` made into a WireGuard datagram to `node`.
fn encrypt(
    tables: &Tables,
    tunnels: &mut Tunnels,
    frame: &mut Frame<'_>,
    node: Addr,
    key: PublicKey,
    (forward, verdict): (Forward, Verdict),
) -> Outcome {
    let config = &tables.node;
    let ends = Ends {
        src_mac: config.underlay.mac,
        dst_mac: ethernet::Frame::new_checked(frame.data())
            .map_err(|_| DropReason::InvalidHeader)?
            .dst(),
        src: config
            .underlay_addr_towards(node)
            .ok_or(DropReason::NoRoute)?,
        dst: node,
    };
    match tunnels.encrypt(frame, &ends, key)? {
        Sent::Datagram => Ok((forward, verdict)),
        Sent::Held => Ok((forward, Verdict::Consumed)),
    }
}

fn remote_node(tables: &Tables, node: Addr) -> RemoteNode {
    tables.nodes.get(node).copied().unwrap_or(RemoteNode {
        addr: node,
        cluster: tables.node.cluster,
        link: NodeLink::Routed,
        wireguard_key: None,
    })
}

/// The MTU that fits a frame's IP packet on its way to `node`, if the packet is bigger.
fn too_big(
    tables: &Tables,
    frame: &Frame<'_>,
    parsed: &Parsed,
    node: Addr,
    route: &NodeRoute,
) -> Option<u16> {
    let overhead = route.overhead(node)?;
    let packet = frame.len().saturating_sub(parsed.l3_offset);
    let mtu = usize::from(tables.node.underlay.mtu);
    (packet + overhead > mtu).then(|| mtu.saturating_sub(overhead) as u16)
}

fn path_mtu_reply(
    tables: &Tables,
    frame: &mut Frame<'_>,
    flight: &InFlight<'_>,
    mtu: u16,
    errors: &mut ErrorRateLimit,
    now_ms: u64,
) -> Outcome {
    let config = &tables.node;
    let mac = match (flight.arrival, config.host) {
        (Arrival::FromHost, Some(host)) => host.mac,
        _ => config.gateway.mac,
    };
    let sender = pmtu::Sender {
        ipv4: config.ipv4.map(u32::from),
        ipv6: config.ipv6.map(u128::from),
        mac,
    };
    if !errors.allow(now_ms) {
        return Err(DropReason::FrameTooBig);
    }
    pmtu::too_big_reply(frame, &flight.parsed, mtu, &sender)?;
    Ok((Forward::IcmpError, Verdict::Transmit(frame.port())))
}

fn to_node(
    tables: &Tables,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    hop: NextHop,
    identity: Identity,
    flow_hash: u32,
) -> Outcome {
    let config = &tables.node;
    route::decrement_hop_limit(frame.data_mut(), parsed)?;
    let forward = match hop {
        NextHop::Tunnel { node, mac } => {
            let encapsulation = Encapsulation {
                protocol: config.tunnel,
                vni: identity,
                src_mac: config.underlay.mac,
                dst_mac: mac,
                src: config
                    .underlay_addr_towards(node)
                    .ok_or(DropReason::NoRoute)?,
                dst: node,
                ttl: TUNNEL_TTL,
            };
            tunnel::encap(frame, &encapsulation, flow_hash)?;
            Forward::Tunnel
        }
        NextHop::Direct { mac } => {
            route::set_macs(frame.data_mut(), config.underlay.mac, mac)?;
            Forward::Direct
        }
    };
    Ok((forward, Verdict::Transmit(config.uplink)))
}

impl Destination {
    /// The destination's security identity, for the source's egress policy.
    pub(super) fn identity(&self) -> Identity {
        match *self {
            Destination::LocalPod(endpoint) => endpoint.identity,
            Destination::Node { identity, .. } | Destination::Nowhere { identity, .. } => identity,
            Destination::Host => Identity::HOST,
            Destination::Kernel => Identity::WORLD,
        }
    }
}
