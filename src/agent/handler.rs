//! The pipeline as the worker's batch handler: loads the current table snapshot once per batch (no
//! lock: an `ArcSwap` load), reads the clock once per batch, and copies its report (counters,
//! conntrack, traffic by direction) out for the status socket and the metrics every so often; after
//! each batch, hands its flow log to `meshpath observe`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use meshpath_dataplane::afxdp::BatchHandler;
use meshpath_dataplane::pipeline::{self, WorkerState};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::steering::{Owner, Steering};
use meshpath_dataplane::{Frame, PortId, Verdict};

use super::observe::FlowSink;
use super::report::{ConntrackReport, Traffic, WireguardReport, WorkerReport};

/// How often a worker copies its report out.
const PUBLISH_EVERY_MS: u64 = 100;

pub struct PipelineHandler {
    tables: Arc<ArcSwap<Tables>>,
    state: WorkerState,
    started: Instant,
    report: Arc<ArcSwap<WorkerReport>>,
    traffic: Traffic,
    published_ms: u64,
    flows: FlowSink,
}

impl PipelineHandler {
    pub fn new(
        tables: Arc<ArcSwap<Tables>>,
        state: WorkerState,
        report: Arc<ArcSwap<WorkerReport>>,
        flows: FlowSink,
    ) -> Self {
        PipelineHandler {
            tables,
            state,
            // The observe task turns event times into wall time from the same clock.
            started: flows.epoch,
            report,
            traffic: Traffic::default(),
            published_ms: 0,
            flows,
        }
    }
}

impl PipelineHandler {
    fn publish(&mut self, now_ms: u64) {
        let mode = self.tables.load().node.encryption;
        self.report.store(Arc::new(WorkerReport {
            counters: self.state.counters.clone(),
            conntrack: ConntrackReport::of(&self.state.conntrack),
            traffic: self.traffic.clone(),
            wireguard: WireguardReport::of(&self.state.wireguard, mode),
        }));
        self.published_ms = now_ms;
    }

    /// The worker's state once it stopped, and the time on its clock: what a handover writes.
    pub fn finish(self) -> (WorkerState, u64) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        (self.state, now_ms)
    }

    /// Milliseconds on the clock this handler's conntrack runs on.
    pub fn clock(epoch: Instant) -> u64 {
        epoch.elapsed().as_millis() as u64
    }
}

impl BatchHandler for PipelineHandler {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let tables = self.tables.load();
        pipeline::process(&tables, &mut self.state, now_ms, frames, verdicts);
        self.traffic.count(&tables, frames, verdicts);
        for event in self.state.flowlog.drain() {
            self.flows.send(event);
        }
        if now_ms >= self.published_ms + PUBLISH_EVERY_MS {
            self.publish(now_ms);
        }
    }

    /// By the node's steering (one snapshot load per burst); a node's only worker owns every frame.
    fn steer(&mut self, frames: &[Frame<'_>], owners: &mut [Owner]) {
        let slot = self.state.slot;
        let Some(steering) = Steering::new(slot.of).filter(|s| s.workers() > 1) else {
            return;
        };
        steering.owners(&self.tables.load(), frames, owners);
    }

    fn originate(&mut self, send: &mut dyn FnMut(PortId, &[u8])) {
        pipeline::originate(&mut self.state, send);
    }

    fn tick(&mut self) {
        let tables = self.tables.load();
        pipeline::tick(&tables, &mut self.state);
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms >= self.published_ms + PUBLISH_EVERY_MS {
            // An idle worker's peers age too.
            self.publish(now_ms);
        }
    }
}
