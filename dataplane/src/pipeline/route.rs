//! Routing in the pipeline: who holds a tracked, translated frame's destination — a pod on this node,
//! another node (encapsulated or directly), or the kernel — and the rewrite that sends it there.

use super::{Arrival, InFlight, Outcome, Verdict};
use crate::endpoint::Endpoint;
use crate::nat;
use crate::parse::Parsed;
use crate::route::{self, NextHop, RemoteNode};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::tunnel::{self, Encapsulation};
use crate::{Addr, DropReason, Frame, Identity};

/// The outer TTL of tunnel frames, as Linux's VXLAN device sends them.
const TUNNEL_TTL: u8 = 64;
const ETHERNET_LEN: usize = 14;

/// Who holds a flow's (translated) destination address.
#[derive(Clone, Copy, Debug)]
pub(super) enum Destination<'t> {
    LocalPod(&'t Endpoint),
    /// Another node of the mesh; the address's identity.
    Node {
        node: Addr,
        identity: Identity,
    },
    /// Outside the mesh: the node's kernel routes it.
    Kernel,
    /// In the mesh, yet not reachable from here: an address of ours no pod holds, or anything but a
    /// local pod for a frame from the uplink.
    Nowhere {
        identity: Identity,
    },
}

pub(super) fn destination<'t>(tables: &'t Tables, dst: Addr, arrival: Arrival) -> Destination<'t> {
    if let Some(endpoint) = tables.endpoints.by_addr(dst) {
        return Destination::LocalPod(endpoint);
    }
    let entry = tables.ipcache.lookup(dst);
    let identity = entry.map_or(Identity::WORLD, |e| e.identity);
    if arrival == Arrival::FromUplink {
        return Destination::Nowhere { identity };
    }
    match entry.map(|e| e.tunnel_endpoint) {
        Some(Some(node)) if !tables.node.owns(node) => Destination::Node { node, identity },
        None => Destination::Kernel,
        Some(_) if identity == Identity::WORLD => Destination::Kernel,
        Some(_) => Destination::Nowhere { identity },
    }
}

/// Rewrites the frame for where it goes, and says where that is.
pub(super) fn transmit(tables: &Tables, frame: &mut Frame<'_>, flight: &InFlight<'_>) -> Outcome {
    if let Some((end, addr, port)) = flight.tracked.rewrite {
        nat::rewrite(frame.data_mut(), &flight.parsed, end, addr, port)?;
    }
    match flight.destination {
        Destination::LocalPod(endpoint) => {
            to_local_pod(tables, frame, &flight.parsed, endpoint, flight.arrival)
        }
        Destination::Node { node, .. } => {
            let hash = flight.tracked.flow.symmetric_hash();
            to_node(
                tables,
                frame,
                &flight.parsed,
                node,
                flight.source.identity,
                hash,
            )
        }
        Destination::Kernel => Ok((Forward::ToKernel, Verdict::ToKernel)),
        Destination::Nowhere { .. } => Err(DropReason::NoRoute),
    }
}

fn to_local_pod(
    tables: &Tables,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    endpoint: &Endpoint,
    arrival: Arrival,
) -> Outcome {
    let bytes = frame.data_mut();
    // A frame from the uplink had its hop taken by the sending node.
    if arrival == Arrival::FromPod {
        route::decrement_hop_limit(bytes, parsed)?;
    }
    route::set_macs(bytes, tables.node.gateway.mac, endpoint.mac)?;
    Ok((Forward::LocalPod, Verdict::Transmit(endpoint.port)))
}

fn to_node(
    tables: &Tables,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    node: Addr,
    identity: Identity,
    flow_hash: u32,
) -> Outcome {
    let config = &tables.node;
    let remote = tables.nodes.get(node).copied().unwrap_or(RemoteNode {
        addr: node,
        segment_mac: None,
    });
    route::decrement_hop_limit(frame.data_mut(), parsed)?;
    let forward = match config.routing.next_hop(&config.underlay, &remote) {
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
    if frame.len() - ETHERNET_LEN > usize::from(config.underlay.mtu) {
        return Err(DropReason::FrameTooBig);
    }
    Ok((forward, Verdict::Transmit(config.uplink)))
}

impl Destination<'_> {
    /// The destination's security identity, for the source's egress policy.
    pub(super) fn identity(&self) -> Identity {
        match *self {
            Destination::LocalPod(endpoint) => endpoint.identity,
            Destination::Node { identity, .. } | Destination::Nowhere { identity } => identity,
            Destination::Kernel => Identity::WORLD,
        }
    }
}
