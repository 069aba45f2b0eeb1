//! Conntrack, service load balancing and policy for one frame: a known flow keeps its translation and
//! skips policy; a new flow is balanced (if it is for a service), checked against the egress policy of
//! its local source and the ingress policy of its local destination, and remembered.

use crate::conntrack::{Conntrack, CtEntry, CtNat, NatKind, Timeouts};
use crate::flow::proto;
use crate::nat::End;
use crate::parse::{Parsed, L4};
use crate::service::{Frontend, Service};
use crate::snapshot::Tables;
use crate::{Addr, DropReason, FlowKey, Identity};

/// What tracking decided: the flow as it leaves (after translation) and the rewrite that makes it so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tracked {
    pub flow: FlowKey,
    pub rewrite: Option<(End, Addr, u16)>,
}

impl Tracked {
    fn unchanged(flow: FlowKey) -> Self {
        Tracked {
            flow,
            rewrite: None,
        }
    }
}

/// Who sends: the security identity of the source, and whether it is one of our own endpoints (whose
/// egress policy then applies).
#[derive(Clone, Copy, Debug)]
pub(super) struct Source {
    pub identity: Identity,
    pub local: bool,
}

pub(super) fn track(
    tables: &Tables,
    ct: &mut Conntrack,
    now_ms: u64,
    parsed: &Parsed,
    len: usize,
    source: Source,
) -> Result<Tracked, DropReason> {
    let key = parsed.flow;
    let flags = tcp_flags(parsed);
    let timeouts = *ct.timeouts();
    if let Some(entry) = ct.lookup(&key, now_ms) {
        observe(entry, key.proto, flags, false, now_ms, &timeouts);
        entry.count(len);
        match entry.nat {
            Some(nat) if nat.kind == NatKind::Backend => {
                if backend_still_serves(tables, &key, nat) {
                    return Ok(translated(key, End::Destination, nat));
                }
                // The backend left the service: its flows are rebalanced as new ones.
                ct.remove(&key);
            }
            _ => return Ok(Tracked::unchanged(key)),
        }
    } else if let Some(entry) = ct.lookup(&key.reversed(), now_ms) {
        observe(entry, key.proto, flags, true, now_ms, &timeouts);
        entry.count(len);
        return Ok(match entry.nat {
            Some(nat) if nat.kind == NatKind::Frontend => {
                // The forward entry (client→VIP) never sees a reply itself: it follows the flow here.
                let forward = FlowKey {
                    dst: nat.addr,
                    dst_port: nat.port,
                    ..key.reversed()
                };
                if let Some(forward) = ct.lookup(&forward, now_ms) {
                    observe(forward, key.proto, flags, true, now_ms, &timeouts);
                }
                translated(key, End::Source, nat)
            }
            _ => Tracked::unchanged(key),
        });
    }
    new_flow(tables, ct, now_ms, parsed, len, source)
}

fn new_flow(
    tables: &Tables,
    ct: &mut Conntrack,
    now_ms: u64,
    parsed: &Parsed,
    len: usize,
    source: Source,
) -> Result<Tracked, DropReason> {
    let key = parsed.flow;
    let service = service_of(tables, &key);
    let tracked = match service {
        Some(service) => {
            let (_, backend) = service
                .select(key.symmetric_hash())
                .ok_or(DropReason::NoBackend)?;
            translated(
                key,
                End::Destination,
                CtNat::backend(backend.addr, backend.port),
            )
        }
        None => Tracked::unchanged(key),
    };
    authorize(tables, &tracked.flow, source)?;
    let timeouts = *ct.timeouts();
    let mut entry = CtEntry::new(key.proto, now_ms, &timeouts);
    observe(
        &mut entry,
        key.proto,
        tcp_flags(parsed),
        false,
        now_ms,
        &timeouts,
    );
    entry.count(len);
    match (service, tracked.rewrite) {
        (Some(service), Some((_, addr, port))) => {
            let forward = CtEntry {
                nat: Some(CtNat::backend(addr, port)),
                service: Some(service.id.0),
                ..entry
            };
            let translated = CtEntry {
                nat: Some(CtNat::frontend(key.dst, key.dst_port)),
                ..forward
            };
            insert(ct, key, forward, now_ms)?;
            if let Err(full) = insert(ct, tracked.flow, translated, now_ms) {
                ct.remove(&key);
                return Err(full);
            }
        }
        _ => insert(ct, key, entry, now_ms)?,
    }
    Ok(tracked)
}

/// Egress policy of a local source, then ingress policy of a local destination.
fn authorize(tables: &Tables, flow: &FlowKey, source: Source) -> Result<(), DropReason> {
    let port = match flow.proto {
        proto::TCP | proto::UDP => flow.dst_port,
        _ => 0,
    };
    let local_dst = tables.endpoints.by_addr(flow.dst);
    let dst_identity = match local_dst {
        Some(endpoint) => endpoint.identity,
        None => tables
            .ipcache
            .lookup(flow.dst)
            .map_or(Identity::WORLD, |entry| entry.identity),
    };
    let policy = &tables.policy;
    if source.local && !policy.allows_egress(source.identity, dst_identity, flow.proto, port) {
        return Err(DropReason::PolicyDenied);
    }
    if let Some(dst) = local_dst {
        if !policy.allows_ingress(dst.identity, source.identity, flow.proto, port) {
            return Err(DropReason::PolicyDenied);
        }
    }
    Ok(())
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
fn backend_still_serves(tables: &Tables, key: &FlowKey, nat: CtNat) -> bool {
    service_of(tables, key).is_some_and(|service| {
        service
            .backends()
            .iter()
            .any(|b| b.addr == nat.addr && b.port == nat.port)
    })
}

fn translated(key: FlowKey, end: End, nat: CtNat) -> Tracked {
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
    }
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
