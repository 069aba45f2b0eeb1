//! Masquerading in the pipeline: a new flow from a pod to outside the mesh, once policy let it through,
//! leaves from the node's address and a port of the masquerade range ([`crate::masquerade`]) that is
//! this worker's to choose ([`crate::steering`]); conntrack then remembers both tuples, and later
//! frames and replies follow the remembered translation.

use super::conntrack::Tracked;
use super::route::Destination;
use super::{Arrival, InFlight};
use crate::conntrack::{Conntrack, CtNat};
use crate::nat::{self, End};
use crate::snapshot::Tables;
use crate::steering::WorkerSlot;
use crate::DropReason;

/// Chooses the node's `addr:port` for a new flow leaving the mesh, if it is masqueraded.
pub(super) fn choose(
    tables: &Tables,
    ct: &Conntrack,
    now_ms: u64,
    slot: WorkerSlot,
    flight: &mut InFlight<'_>,
) -> Result<(), DropReason> {
    let (Some(masquerade), Destination::Kernel, Arrival::FromPod) =
        (&tables.node.masquerade, flight.destination, flight.arrival)
    else {
        return Ok(());
    };
    // A service flow keeps its own translation (backends outside the mesh are not masqueraded).
    if flight.tracked.rewrite.is_some() {
        return Ok(());
    }
    let flow = flight.tracked.flow;
    let Some(addr) = masquerade.address_for(flow.dst) else {
        return Ok(());
    };
    if !nat::translatable(&flight.parsed) {
        // Nothing to tell its replies apart by: such a flow cannot share the node's address.
        return Err(DropReason::UnsupportedProtocol);
    }
    let port = masquerade.allocate_port(ct, &flow, addr, now_ms, slot)?;
    flight.tracked = Tracked::translated(flow, End::Source, CtNat::masquerade(addr, port));
    Ok(())
}
