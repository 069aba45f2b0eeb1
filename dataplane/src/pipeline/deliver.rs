//! The end of the path: a tracked, translated frame goes to a pod on this node, to another node
//! (encapsulated or directly), or to the kernel.

use super::track::{self, Source};
use super::{Outcome, Verdict, WorkerState};
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

/// Where the frame came in: the uplink only delivers to local pods (this node is no transit router).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    FromPod,
    FromUplink,
}

/// Conntrack, load balancing and policy, then the translation and the route.
pub(super) fn forward(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    source: Source,
    arrival: Arrival,
) -> Outcome {
    frame.truncate(parsed.l3_end());
    if arrival == Arrival::FromPod && parsed.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let tracked = track::track(
        tables,
        &mut state.conntrack,
        now_ms,
        parsed,
        frame.len(),
        source,
    )?;
    if let Some((end, addr, port)) = tracked.rewrite {
        nat::rewrite(frame.data_mut(), parsed, end, addr, port)?;
    }
    let dst = tracked.flow.dst;
    if let Some(endpoint) = tables.endpoints.by_addr(dst) {
        return to_local_pod(tables, frame, parsed, endpoint, arrival);
    }
    if arrival == Arrival::FromUplink {
        return Err(DropReason::NoRoute);
    }
    match tables.ipcache.lookup(dst) {
        Some(entry) => match entry.tunnel_endpoint {
            Some(node) if !tables.node.owns(node) => {
                let hash = tracked.flow.symmetric_hash();
                to_node(tables, frame, parsed, node, source.identity, hash)
            }
            _ if entry.identity == Identity::WORLD => Ok((Forward::ToKernel, Verdict::ToKernel)),
            // Ours or unknown, yet no endpoint of ours holds it.
            _ => Err(DropReason::NoRoute),
        },
        None => Ok((Forward::ToKernel, Verdict::ToKernel)),
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
    // The sending node took the hop already.
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

const ETHERNET_LEN: usize = 14;
