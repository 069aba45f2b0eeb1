//! Frames from the underlay: tunnel frames for this node are decapsulated and carry their sender's
//! identity in the VNI; directly routed frames for our pods take their identity from the ipcache;
//! everything else belongs to the node's kernel.

use super::deliver::{self, Arrival};
use super::track::Source;
use super::{Outcome, Verdict, WorkerState};
use crate::parse::{self, Parsed, L3};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::tunnel::{self, TunnelProtocol};
use crate::{DropReason, Frame, Identity};

pub(super) fn process(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frame: &mut Frame<'_>,
) -> Outcome {
    let outer = parse::parse(frame.data())?;
    if let Some(protocol) = tunnel_for_us(tables, &outer) {
        if tables.nodes.get(outer.flow.src).is_none() {
            return Err(DropReason::UnknownTunnelPeer);
        }
        let decapsulated = tunnel::decap(frame, &outer, protocol)?;
        if decapsulated.identity == Identity::UNKNOWN {
            return Err(DropReason::InvalidIdentity);
        }
        let inner = parse::parse(frame.data())?;
        return deliver_inbound(tables, state, now_ms, frame, &inner, decapsulated.identity);
    }
    if matches!(outer.l3, L3::Ipv4 | L3::Ipv6) && tables.endpoints.by_addr(outer.flow.dst).is_some()
    {
        let identity = tables
            .ipcache
            .lookup(outer.flow.src)
            .map_or(Identity::WORLD, |entry| entry.identity);
        return deliver_inbound(tables, state, now_ms, frame, &outer, identity);
    }
    Ok((Forward::ToKernel, Verdict::ToKernel))
}

fn tunnel_for_us(tables: &Tables, outer: &Parsed) -> Option<TunnelProtocol> {
    let protocol = TunnelProtocol::from_port(outer.tunnel_port()?)?;
    tables.node.owns(outer.flow.dst).then_some(protocol)
}

fn deliver_inbound(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frame: &mut Frame<'_>,
    parsed: &Parsed,
    identity: Identity,
) -> Outcome {
    if !matches!(parsed.l3, L3::Ipv4 | L3::Ipv6) {
        return Err(DropReason::UnsupportedProtocol);
    }
    let source = Source {
        identity,
        local: false,
    };
    deliver::forward(
        tables,
        state,
        now_ms,
        frame,
        parsed,
        source,
        Arrival::FromUplink,
    )
}
