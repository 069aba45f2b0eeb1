//! Conntrack, service load balancing and the policy verdict of new flows.
//!
//! A known flow keeps its translation and skips policy; a new one is balanced if it is for a service,
//! checked against the egress policy of its local source and the ingress policy of its local
//! destination, and remembered. Service flows get two entries, as in Cilium: the forward one (keyed
//! client→frontend) holds the backend, the translated one (client→backend) the frontend that replies
//! (found by their reverse) get back as their source.

use super::deliver::Destination;
use super::{InFlight, Source};
use crate::conntrack::{Conntrack, CtEntry, CtNat, NatKind, Timeouts};
use crate::flow::proto;
use crate::nat::End;
use crate::parse::{Parsed, L4};
use crate::service::{BackendStatus, Frontend, Service, ServiceId};
use crate::snapshot::Tables;
use crate::{Addr, DropReason, FlowKey, Identity};

/// What conntrack knows of a frame's flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    New,
    /// The frame travels the way the flow started; its entry's translation and service.
    Original {
        nat: Option<CtNat>,
        service: Option<u32>,
    },
    /// The frame answers a flow the other end started.
    Reply(Option<CtNat>),
}

/// The flow as it leaves (after translation), the rewrite that makes it so, and the service that
/// balanced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracked {
    pub flow: FlowKey,
    pub rewrite: Option<(End, Addr, u16)>,
    pub service: Option<u32>,
}

impl Tracked {
    pub fn unchanged(flow: FlowKey) -> Self {
        Tracked {
            flow,
            rewrite: None,
            service: None,
        }
    }

    fn translated(key: FlowKey, end: End, nat: CtNat) -> Self {
        let flow = match end {
            End::Destination => FlowKey {
                dst: nat.addr,
                dst_port: nat.port,
                ..key
            },
            End::Source => FlowKey {
                src: nat.addr,
                src_port: nat.port,
                ..key
            },
        };
        Tracked {
            flow,
            rewrite: Some((end, nat.addr, nat.port)),
            service: None,
        }
    }
}

/// Looks the frame's flow up in both directions, and renews and counts the entry it finds.
pub(super) fn lookup(ct: &mut Conntrack, now_ms: u64, parsed: &Parsed, len: usize) -> Known {
    let key = parsed.flow;
    let flags = tcp_flags(parsed);
    let timeouts = *ct.timeouts();
    if let Some(entry) = ct.lookup(&key, now_ms) {
        // A service flow's translated entry (client→backend) stands for the flow after DNAT and
        // answers only its replies: a frame that arrives with that tuple is a new flow straight to
        // the backend reusing the client's port, and must face policy like any new flow.
        if !is_translated(entry) {
            observe(entry, key.proto, flags, false, now_ms, &timeouts);
            entry.count(len);
            return Known::Original {
                nat: entry.nat,
                service: entry.service,
            };
        }
        return Known::New;
    }
    if let Some(entry) = ct.lookup(&key.reversed(), now_ms) {
        observe(entry, key.proto, flags, true, now_ms, &timeouts);
        entry.count(len);
        return Known::Reply(entry.nat);
    }
    Known::New
}

fn is_translated(entry: &CtEntry) -> bool {
    entry.nat.is_some_and(|nat| nat.kind == NatKind::Frontend)
}

/// Starts loading the forward entry a service reply renews in [`admit`].
pub(super) fn prefetch_forward_entry(ct: &Conntrack, flight: &InFlight<'_>) {
    if let Known::Reply(Some(nat)) = flight.known {
        if nat.kind == NatKind::Frontend {
            ct.prefetch(&forward_entry_of_reply(&flight.parsed.flow, nat));
        }
    }
}

/// The client→frontend key of the flow a reply (backend→client) belongs to.
fn forward_entry_of_reply(reply: &FlowKey, frontend: CtNat) -> FlowKey {
    FlowKey {
        dst: frontend.addr,
        dst_port: frontend.port,
        ..reply.reversed()
    }
}

/// Finds the service a frame's flow may be balanced by: a new flow's, or an established one's whose
/// backend was retired or cannot be vouched for. Its backends start loading for [`translate`].
pub(super) fn find_service<'t>(tables: &'t Tables, flight: &InFlight<'t>) -> Option<&'t Service> {
    let needs_service = match flight.known {
        Known::New => true,
        Known::Original {
            nat: Some(nat),
            service,
        } if nat.kind == NatKind::Backend => {
            backend_status(tables, service, nat) != BackendStatus::Serving
        }
        Known::Original { .. } | Known::Reply(_) => false,
    };
    if !needs_service {
        return None;
    }
    let service = service_of(tables, &flight.parsed.flow)?;
    crate::prefetch::prefetch(service.backends().as_ptr());
    Some(service)
}

/// Decides the translation: the remembered one, or for a new flow to a service, a backend by Maglev.
pub(super) fn translate(
    tables: &Tables,
    ct: &mut Conntrack,
    flight: &mut InFlight<'_>,
) -> Result<(), DropReason> {
    let key = flight.parsed.flow;
    flight.tracked = match flight.known {
        Known::Original {
            nat: Some(nat),
            service,
        } if nat.kind == NatKind::Backend => {
            let serving = match backend_status(tables, service, nat) {
                BackendStatus::Serving => true,
                BackendStatus::Retired => false,
                BackendStatus::Unknown => still_serves(flight.service, nat),
            };
            if serving {
                Tracked::translated(key, End::Destination, nat)
            } else {
                // The backend left the service: the flow is balanced again, as a new one.
                ct.remove(&key);
                flight.known = Known::New;
                balance(flight.service, &key)?
            }
        }
        Known::Reply(Some(nat)) if nat.kind == NatKind::Frontend => {
            Tracked::translated(key, End::Source, nat)
        }
        Known::Original { .. } | Known::Reply(_) => Tracked::unchanged(key),
        Known::New => balance(flight.service, &key)?,
    };
    Ok(())
}

/// Whether an established service flow's backend is still in its service, from the table's record of
/// retired backends; an entry without a service id (none is ever written so) is checked the long way.
fn backend_status(tables: &Tables, service: Option<u32>, nat: CtNat) -> BackendStatus {
    service.map_or(BackendStatus::Unknown, |id| {
        tables
            .services
            .backend_status(ServiceId(id), nat.addr, nat.port)
    })
}

/// Lets a new flow through policy and remembers it; renews the forward entry of a service reply.
pub(super) fn admit(
    tables: &Tables,
    ct: &mut Conntrack,
    now_ms: u64,
    flight: &mut InFlight<'_>,
) -> Result<(), DropReason> {
    if let Destination::Nowhere { .. } = flight.destination {
        return Err(DropReason::NoRoute);
    }
    match flight.known {
        Known::New => {
            authorize(tables, flight)?;
            remember(ct, now_ms, flight)
        }
        Known::Reply(Some(nat)) if nat.kind == NatKind::Frontend => {
            // The forward entry (client→frontend) sees no reply itself: it follows the flow here.
            let key = flight.parsed.flow;
            let timeouts = *ct.timeouts();
            if let Some(entry) = ct.lookup(&forward_entry_of_reply(&key, nat), now_ms) {
                observe(
                    entry,
                    key.proto,
                    tcp_flags(&flight.parsed),
                    true,
                    now_ms,
                    &timeouts,
                );
            }
            Ok(())
        }
        Known::Original { .. } | Known::Reply(_) => Ok(()),
    }
}

fn balance(service: Option<&Service>, key: &FlowKey) -> Result<Tracked, DropReason> {
    let Some(service) = service else {
        return Ok(Tracked::unchanged(*key));
    };
    let (_, backend) = service
        .select(key.symmetric_hash())
        .ok_or(DropReason::NoBackend)?;
    let nat = CtNat::backend(backend.addr, backend.port);
    Ok(Tracked {
        service: Some(service.id.0),
        ..Tracked::translated(*key, End::Destination, nat)
    })
}

/// Egress policy of a local source, then ingress policy of a local destination.
fn authorize(tables: &Tables, flight: &InFlight<'_>) -> Result<(), DropReason> {
    let flow = &flight.tracked.flow;
    let port = match flow.proto {
        proto::TCP | proto::UDP => flow.dst_port,
        _ => 0,
    };
    let Source { identity, local } = flight.source;
    let policy = &tables.policy;
    if local && !policy.allows_egress(identity, flight.destination.identity(), flow.proto, port) {
        return Err(DropReason::PolicyDenied);
    }
    if let Destination::LocalPod(dst) = flight.destination {
        if !policy.allows_ingress(dst.identity, identity, flow.proto, port) {
            return Err(DropReason::PolicyDenied);
        }
    }
    Ok(())
}

fn remember(ct: &mut Conntrack, now_ms: u64, flight: &InFlight<'_>) -> Result<(), DropReason> {
    let key = flight.parsed.flow;
    let timeouts = *ct.timeouts();
    let mut entry = CtEntry::new(key.proto, now_ms, &timeouts);
    observe(
        &mut entry,
        key.proto,
        tcp_flags(&flight.parsed),
        false,
        now_ms,
        &timeouts,
    );
    entry.count(flight.parsed.l3_end());
    let tracked = &flight.tracked;
    let Some((_, addr, port)) = tracked.rewrite else {
        return insert(ct, key, entry, now_ms);
    };
    let forward = CtEntry {
        nat: Some(CtNat::backend(addr, port)),
        service: tracked.service,
        ..entry
    };
    let translated = CtEntry {
        nat: Some(CtNat::frontend(key.dst, key.dst_port)),
        ..forward
    };
    insert(ct, key, forward, now_ms)?;
    insert(ct, tracked.flow, translated, now_ms).inspect_err(|_| {
        ct.remove(&key);
    })
}

fn service_of<'t>(tables: &'t Tables, key: &FlowKey) -> Option<&'t Service> {
    match key.proto {
        proto::TCP | proto::UDP => tables.services.lookup(&Frontend {
            addr: key.dst,
            port: key.dst_port,
            proto: key.proto,
        }),
        _ => None,
    }
}

/// An established service flow keeps its backend while the backend is still in the service, even
/// terminating or unhealthy; once it is gone, the flow moves.
fn still_serves(service: Option<&Service>, nat: CtNat) -> bool {
    service.is_some_and(|service| {
        service
            .backends()
            .iter()
            .any(|b| b.addr == nat.addr && b.port == nat.port)
    })
}

fn insert(ct: &mut Conntrack, key: FlowKey, entry: CtEntry, now_ms: u64) -> Result<(), DropReason> {
    ct.insert(key, entry, now_ms)
        .map(|_| ())
        .map_err(|_| DropReason::CtTableFull)
}

fn tcp_flags(parsed: &Parsed) -> u8 {
    match parsed.l4 {
        L4::Tcp(flags) => flags.bits(),
        _ => 0,
    }
}

fn observe(
    entry: &mut CtEntry,
    proto: u8,
    flags: u8,
    is_reply: bool,
    now_ms: u64,
    timeouts: &Timeouts,
) {
    if proto == proto::TCP {
        entry.observe_tcp(flags, is_reply, now_ms, timeouts);
    } else {
        entry.observe_other(proto, is_reply, now_ms, timeouts);
    }
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
