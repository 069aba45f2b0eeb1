//! Receiving from the node's own stack through the host port: the node's processes (kubelet probes,
//! hostNetwork pods) reaching pods, and whatever the kernel routes into the mesh. A frame from one of
//! the node's own addresses is the reserved `host` identity, anything else the kernel forwards is
//! `world`. The kernel end of the host port does no ARP or neighbour discovery (its routes point at
//! us directly), so only IP comes this way.
//!
//! An external workload (a VM or bare-metal host that joined a cluster) is itself the endpoint behind
//! its host port: a frame from the endpoint's address there is that endpoint's, with its identity and
//! its egress policy, as a pod's frame on its veth.

use super::{Arrival, Received, Source};
use crate::offload;
use crate::parse::{self, L3};
use crate::snapshot::Tables;
use crate::{DropReason, Frame, Identity};

pub(super) fn receive(tables: &Tables, frame: &mut Frame<'_>) -> Result<Received, DropReason> {
    let parsed = parse::parse(frame.data())?;
    match parsed.l3 {
        L3::Arp(_) => return Err(DropReason::UnansweredNeighbour),
        L3::Ipv6 if super::from_pod::is_link_scope(parsed.flow.src) => {
            return Err(DropReason::LinkScope)
        }
        L3::Ipv4 | L3::Ipv6 => {}
    }
    if parsed.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    frame.truncate(parsed.l3_end());
    offload::complete_partial_checksum(frame.data_mut(), &parsed)?;
    let own_endpoint = tables
        .endpoints
        .by_addr(parsed.flow.src)
        .filter(|e| e.port == frame.port());
    let source = match own_endpoint {
        Some(endpoint) => Source {
            identity: endpoint.identity,
            local: true,
            claim: None,
        },
        None if tables.node.owns(parsed.flow.src) => Source {
            identity: Identity::HOST,
            local: false,
            claim: None,
        },
        None => Source {
            identity: Identity::WORLD,
            local: false,
            claim: None,
        },
    };
    Ok(Received::Track(parsed, source, Arrival::FromHost))
}
