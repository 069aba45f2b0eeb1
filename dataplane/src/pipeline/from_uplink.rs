//! Receiving from the underlay: tunnel frames for this node are decapsulated and carry their sender's
//! identity in the VNI; directly routed frames for our pods take their identity from the ipcache;
//! everything else belongs to the node's kernel.

use super::{Arrival, Received, Source, Verdict};
use crate::parse::{self, Parsed, L3};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::tunnel::{self, TunnelProtocol};
use crate::{DropReason, Frame, Identity};

pub(super) fn receive(tables: &Tables, frame: &mut Frame<'_>) -> Result<Received, DropReason> {
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
        return inbound(frame, inner, decapsulated.identity);
    }
    let is_ip = matches!(outer.l3, L3::Ipv4 | L3::Ipv6);
    if is_ip && tables.endpoints.by_addr(outer.flow.dst).is_some() {
        let identity = tables
            .ipcache
            .lookup(outer.flow.src)
            .map_or(Identity::WORLD, |entry| entry.identity);
        return inbound(frame, outer, identity);
    }
    Ok(Received::Answered(Forward::ToKernel, Verdict::ToKernel))
}

fn tunnel_for_us(tables: &Tables, outer: &Parsed) -> Option<TunnelProtocol> {
    let protocol = TunnelProtocol::from_port(outer.tunnel_port()?)?;
    tables.node.owns(outer.flow.dst).then_some(protocol)
}

fn inbound(
    frame: &mut Frame<'_>,
    parsed: Parsed,
    identity: Identity,
) -> Result<Received, DropReason> {
    if !matches!(parsed.l3, L3::Ipv4 | L3::Ipv6) {
        return Err(DropReason::UnsupportedProtocol);
    }
    frame.truncate(parsed.l3_end());
    let source = Source {
        identity,
        local: false,
    };
    Ok(Received::Track(parsed, source, Arrival::FromUplink))
}
