//! The pipeline: runs every stage over a batch of frames and decides each frame's fate.
//!
//! A frame from a pod goes through [`from_pod`]: anti-spoofing, the gateway's neighbour answers, service
//! load balancing, policy, routing and encapsulation. A frame from the uplink goes through
//! [`from_uplink`]: decapsulation and delivery to a local pod under its ingress policy. Both share the
//! conntrack step in [`track`] and the final delivery in [`deliver`].

mod deliver;
mod from_pod;
mod from_uplink;
mod track;

use crate::conntrack::{Conntrack, ConntrackConfig};
use crate::snapshot::Tables;
use crate::stats::{Counters, Forward};
use crate::{DropReason, Frame, PortId};

/// What becomes of a frame once the pipeline is done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame's (possibly rewritten) bytes out of this port.
    Transmit(PortId),
    /// Not ours: hand the frame to the node's kernel stack unchanged.
    ToKernel,
    /// Drop it, counted under this reason.
    Drop(DropReason),
}

/// How many conntrack slots a batch sweeps for expired flows.
const GC_BUDGET_PER_BATCH: usize = 64;

/// What a worker owns and nobody else touches: its conntrack and its counters.
#[derive(Debug)]
pub struct WorkerState {
    pub conntrack: Conntrack,
    pub counters: Counters,
}

impl WorkerState {
    pub fn new(conntrack: ConntrackConfig) -> Self {
        WorkerState {
            conntrack: Conntrack::new(conntrack),
            counters: Counters::default(),
        }
    }
}

/// Runs the pipeline over a batch: `verdicts[i]` is the fate of `frames[i]`, whose bytes may have been
/// rewritten (and moved within their buffer) to be transmitted as they are. `now_ms` is a monotonic
/// clock read once per batch.
pub fn process(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    state.conntrack.gc(now_ms, GC_BUDGET_PER_BATCH);
    for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
        *verdict = process_one(tables, state, now_ms, frame);
    }
}

/// A stage's answer for a frame that goes on: how it was forwarded and where it goes.
type Outcome = Result<(Forward, Verdict), DropReason>;

/// One frame through the pipeline, counted.
pub fn process_one(
    tables: &Tables,
    state: &mut WorkerState,
    now_ms: u64,
    frame: &mut Frame<'_>,
) -> Verdict {
    state.counters.count_received(frame.len());
    let outcome = if frame.port() == tables.node.uplink {
        from_uplink::process(tables, state, now_ms, frame)
    } else {
        from_pod::process(tables, state, now_ms, frame)
    };
    match outcome {
        Ok((forward, verdict)) => {
            state.counters.count_forward(forward, frame.len());
            verdict
        }
        Err(reason) => {
            state.counters.count_drop(reason, frame.len());
            Verdict::Drop(reason)
        }
    }
}

#[cfg(test)]
mod tests;
