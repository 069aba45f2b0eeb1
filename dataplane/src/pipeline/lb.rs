//! Service load balancing in the pipeline: the service a new flow is for, and its backend by Maglev; an
//! established flow keeps its backend while the backend stays in the service. Also where every known
//! flow's remembered translation (service, masquerade, an ICMP error's) is applied to its tuple.

use super::conntrack::{Known, Tracked};
use super::InFlight;
use crate::conntrack::{Conntrack, CtNat, NatKind};
use crate::flow::proto;
use crate::nat::End;
use crate::service::{BackendStatus, Frontend, Service, ServiceId};
use crate::snapshot::Tables;
use crate::{DropReason, FlowKey};

/// Finds the service a frame's flow may be balanced by: a new flow's, or an established one's whose
/// backend was retired or cannot be vouched for. Its backends start loading for [`translate`].
pub(super) fn find_service<'t>(tables: &'t Tables, flight: &InFlight<'t>) -> Option<&'t Service> {
    if flight.path.is_some() {
        // Decided under these very tables: the backend still serves.
        return None;
    }
    let needs_service = match flight.known {
        Known::New => true,
        Known::Original {
            nat: Some(nat),
            service,
        } if nat.kind == NatKind::Backend => {
            backend_status(tables, service, nat) != BackendStatus::Serving
        }
        Known::Original { .. } | Known::Reply(_) | Known::Related(_) | Known::Unrelated => false,
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
            let serving = flight.path.is_some()
                || match backend_status(tables, service, nat) {
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
                flight.found = None;
                balance(flight.service, &key)?
            }
        }
        Known::Original { nat: Some(nat), .. } if nat.kind == NatKind::Masquerade => {
            Tracked::translated(key, End::Source, nat)
        }
        Known::Reply(Some(nat)) => match nat.kind {
            NatKind::Frontend => Tracked::translated(key, End::Source, nat),
            NatKind::Unmasquerade => Tracked::translated(key, End::Destination, nat),
            NatKind::Backend | NatKind::Masquerade => Tracked::unchanged(key),
        },
        Known::Related(untranslate) => Tracked::related(key, untranslate),
        Known::Original { .. } | Known::Reply(None) | Known::Unrelated => Tracked::unchanged(key),
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
