//! Policy enforcement in the pipeline: a new flow faces the egress policy of its local source and the
//! ingress policy of its local destination, and is remembered if both let it through; established
//! flows, replies and ICMP errors about known flows skip policy. The node's own stack (identity `host`)
//! always reaches its pods, as with Cilium's default `allow-localhost: always`, so kubelet probes work
//! under any policy.

use super::conntrack::{self, Known};
use super::route::Destination;
use super::{masquerade, InFlight, Source};
use crate::conntrack::{Conntrack, NatKind};
use crate::flow::proto;
use crate::parse::L4;
use crate::service::EndKey;
use crate::snapshot::Tables;
use crate::steering::WorkerSlot;
use crate::{DropReason, Identity};

/// Lets a new flow through policy and remembers it; renews the forward entry of a service reply.
pub(super) fn admit(
    tables: &Tables,
    ct: &mut Conntrack,
    now_ms: u64,
    slot: WorkerSlot,
    flight: &mut InFlight<'_>,
) -> Result<(), DropReason> {
    if let Destination::Nowhere { reason, .. } = flight.destination {
        return Err(reason);
    }
    match flight.known {
        Known::New => {
            refuse_backend_segment_without_flow(tables, flight)?;
            authorize(tables, flight)?;
            masquerade::choose(tables, ct, now_ms, slot, flight)?;
            conntrack::remember(ct, now_ms, flight)
        }
        Known::Reply(Some(nat)) if nat.kind == NatKind::Frontend => {
            conntrack::renew_forward_entry(ct, now_ms, flight, nat);
            Ok(())
        }
        Known::Unrelated => Err(DropReason::UnrelatedIcmpError),
        Known::Original { .. } | Known::Reply(_) | Known::Related(_) => Ok(()),
    }
}

/// A TCP segment that opens nothing (no SYN), from an address and port that back a service, with no
/// flow: the answer of a service flow whose entry conntrack lost (an agent killed, a table that gave
/// it up). Made a flow of its own, it would reach the client untranslated, from the backend's address,
/// and the client's kernel would reset the connection at the backend. Dropped instead, as kube-proxy
/// drops what conntrack calls invalid; the client's next segment makes the flow again (Maglev picks
/// the same backend). A connection made straight to the backend, not through the service, waits
/// for its client likewise: one retransmission.
fn refuse_backend_segment_without_flow(
    tables: &Tables,
    flight: &InFlight<'_>,
) -> Result<(), DropReason> {
    use crate::conntrack::tcp_flags::SYN;
    let flow = &flight.parsed.flow;
    let L4::Tcp(flags) = flight.parsed.l4 else {
        return Ok(());
    };
    let backend = EndKey {
        addr: flow.src,
        port: flow.src_port,
        proto: flow.proto,
    };
    if flags.bits() & SYN == 0 && tables.services.is_backend(&backend) {
        return Err(DropReason::BackendSegmentWithoutFlow);
    }
    Ok(())
}

/// Egress policy of a local source, then ingress policy of a local destination.
fn authorize(tables: &Tables, flight: &InFlight<'_>) -> Result<(), DropReason> {
    let flow = &flight.tracked.flow;
    let port = match flow.proto {
        proto::TCP | proto::UDP => flow.dst_port,
        _ => 0,
    };
    let Source {
        identity, local, ..
    } = flight.source;
    let policy = &tables.policy;
    if local && !policy.allows_egress(identity, flight.destination.identity(), flow.proto, port) {
        return Err(DropReason::PolicyDenied);
    }
    if let Destination::LocalPod(dst) = flight.destination {
        let from_host = identity == Identity::HOST;
        if !from_host && !policy.allows_ingress(dst.identity, identity, flow.proto, port) {
            return Err(DropReason::PolicyDenied);
        }
    }
    Ok(())
}
