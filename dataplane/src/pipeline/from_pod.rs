//! Receiving what a pod sends: held to the pod's own MAC and addresses, answered at once if it asks
//! for the gateway, its checksums finished if its stack left them to an offload, otherwise handed on to
//! be tracked, balanced, checked and routed.

use super::{Arrival, Received, Source, Verdict};
use crate::endpoint::Endpoint;
use crate::gateway;
use crate::offload;
use crate::parse::{self, IcmpKind, Parsed, L3, L4};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::{Addr, DropReason, Frame};

pub(super) fn receive(tables: &Tables, frame: &mut Frame<'_>) -> Result<Received, DropReason> {
    let port = frame.port();
    let endpoint = tables
        .endpoints
        .by_port(port)
        .ok_or(DropReason::UnknownPort)?;
    let parsed = parse::parse(frame.data())?;
    check_source(endpoint, &parsed)?;
    if is_neighbour_discovery(&parsed) {
        gateway::answer_neighbour(frame, &parsed, &tables.node.gateway)?;
        return Ok(Received::Answered(
            Forward::NeighbourReply,
            Verdict::Transmit(port),
        ));
    }
    if parsed.ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    frame.truncate(parsed.l3_end());
    offload::complete_partial_checksum(frame.data_mut(), &parsed)?;
    let source = Source {
        identity: endpoint.identity,
        local: true,
        claim: None,
    };
    Ok(Received::Track(parsed, source, Arrival::FromPod))
}

/// Anti-spoofing: the pod's own MAC, and its own address (ARP: as sender; neighbour discovery may also
/// come from a link-local or the unspecified address).
fn check_source(endpoint: &Endpoint, parsed: &Parsed) -> Result<(), DropReason> {
    match parsed.l3 {
        L3::Arp(arp) if arp.sender_ip.is_unspecified() => {
            endpoint.check_source(arp.sender_mac, endpoint_v4(endpoint)?)?;
            endpoint.check_source(parsed.eth_src, endpoint_v4(endpoint)?)
        }
        L3::Arp(arp) => {
            endpoint.check_source(arp.sender_mac, arp.sender_ip.into())?;
            endpoint.check_source(parsed.eth_src, arp.sender_ip.into())
        }
        L3::Ipv6 if is_link_scope(parsed.flow.src) => {
            if parsed.eth_src != endpoint.mac {
                return Err(DropReason::SpoofedSource);
            }
            // Neighbour discovery is answered; other link-scoped chatter (MLD reports) stays on the link.
            if is_neighbour_discovery(parsed) {
                Ok(())
            } else {
                Err(DropReason::LinkScope)
            }
        }
        L3::Ipv4 | L3::Ipv6 => endpoint.check_source(parsed.eth_src, parsed.flow.src),
    }
}

fn endpoint_v4(endpoint: &Endpoint) -> Result<Addr, DropReason> {
    endpoint
        .ipv4
        .map(Addr::from)
        .ok_or(DropReason::SpoofedSource)
}

pub(super) fn is_link_scope(addr: Addr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V6(v6) => v6.is_unspecified() || v6.is_unicast_link_local(),
        std::net::IpAddr::V4(_) => false,
    }
}

fn is_neighbour_discovery(parsed: &Parsed) -> bool {
    matches!(parsed.l3, L3::Arp(_))
        || matches!(
            parsed.l4,
            L4::Icmp(
                IcmpKind::NeighbourSolicitation { .. }
                    | IcmpKind::NeighbourAdvertisement
                    | IcmpKind::RouterSolicitation
            )
        )
}
