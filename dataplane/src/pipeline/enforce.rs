//! Policy enforcement in the pipeline: a new flow faces the egress policy of its local source and the
//! ingress policy of its local destination, and is remembered if both let it through; established
//! flows and replies skip policy.

use super::conntrack::{self, Known};
use super::route::Destination;
use super::{InFlight, Source};
use crate::conntrack::{Conntrack, NatKind};
use crate::flow::proto;
use crate::snapshot::Tables;
use crate::DropReason;

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
            conntrack::remember(ct, now_ms, flight)
        }
        Known::Reply(Some(nat)) if nat.kind == NatKind::Frontend => {
            conntrack::renew_forward_entry(ct, now_ms, flight, nat);
            Ok(())
        }
        Known::Original { .. } | Known::Reply(_) => Ok(()),
    }
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
