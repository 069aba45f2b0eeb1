//! Step 2: rebel-base scaled to zero in one cluster and back, then in the other, the way Kubernetes
//! takes a pod away — its endpoint marked terminating while it still serves out its grace period,
//! then not serving, then the process stopped and the endpoint gone — while x-wing keeps opening new
//! connections to the global service ([`super::stream`], 20 a second). Every request issued during
//! a transition is counted in its row: the target is none failed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::scene::{service_ip, Rebels, Scene, CLUSTERS, SERVICE_PORT};
use super::steps::{active_backend_clusters, unix_ms};
use super::stream::{self, Answer, Failure, Stream};
use crate::mesh::wait;

/// New connections a second during the failover.
pub const RATE: u32 = 20;
/// How long a terminating pod keeps serving once x-wing's agent has seen it terminating: its grace
/// period, shortened for the demo. Kubernetes' default (30 s) is far longer than the mesh takes to
/// learn of a terminating endpoint; a shortened one must outlast the connections opened before then
/// (stream.py gives a connect 2 s). A SYN sent again and a client port reused are balanced anew,
/// so neither goes to a backend that stopped taking new flows.
const GRACE: Duration = Duration::from_secs(3);
/// How long a row goes on once cluster1's agent shows the new backends.
const TAIL: Duration = Duration::from_secs(2);

/// One transition and the requests issued while it lasted.
#[derive(Debug, Serialize)]
pub struct Failover {
    pub situation: String,
    pub issued: u64,
    pub per_cluster: BTreeMap<String, u64>,
    pub failed: u64,
    /// The failed requests by why (refused, reset, connect timeout, answer timeout, bad answer).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    /// Each failed request, placed on the row's timeline.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_requests: Vec<Failure>,
    /// What happened when, in milliseconds from the row's start: what the demo changed and when
    /// x-wing's agent showed it.
    pub timeline_ms: BTreeMap<&'static str, u64>,
}

/// A transition's span of time.
struct Window {
    situation: String,
    from_ms: u64,
    to_ms: u64,
    /// Unix ms of what happened during it.
    events: BTreeMap<&'static str, u64>,
}

pub fn failover(scene: &Scene) -> anyhow::Result<Vec<Failover>> {
    let stream = Stream::start(&scene.pod_ns(1, false), &service_ip(1), SERVICE_PORT, RATE)?;
    let windows = [2, 1].into_iter().try_fold(Vec::new(), |mut all, down| {
        all.extend(scale_to_zero_and_back(scene, down)?);
        anyhow::Ok(all)
    });
    let answers = stream.stop()?;
    Ok(windows?.iter().map(|w| row(w, &answers)).collect())
}

fn row(window: &Window, answers: &[Answer]) -> Failover {
    let tally = stream::tally(answers, window.from_ms, window.to_ms);
    Failover {
        situation: window.situation.clone(),
        issued: tally.issued,
        per_cluster: tally.per_cluster,
        failed: tally.failed,
        failures: tally.failures,
        failed_requests: tally.failed_requests,
        timeline_ms: window
            .events
            .iter()
            .map(|(event, at)| (*event, at.saturating_sub(window.from_ms)))
            .collect(),
    }
}

fn scale_to_zero_and_back(scene: &Scene, down: u8) -> anyhow::Result<[Window; 2]> {
    let up = if down == 1 { 2 } else { 1 };
    let mut leaving = Events::new();
    scene.write_rebels(down, Rebels::Terminating { serving: true }, false)?;
    await_balance(scene, &[up], || format!("cluster{down} terminating"))?;
    leaving.note("terminating_seen");
    std::thread::sleep(GRACE);
    scene.write_rebels(down, Rebels::Terminating { serving: false }, false)?;
    scene.stop_server(down)?;
    leaving.note("server_stopped");
    scene.write_rebels(down, Rebels::Gone, false)?;
    settle(scene, &[up], || format!("cluster{down} scaled to zero"))?;
    let mut returning = Events::new();
    scene.start_server(down)?;
    returning.note("server_started");
    scene.write_rebels(down, Rebels::Ready, false)?;
    await_balance(scene, &CLUSTERS, || format!("cluster{down} back"))?;
    returning.note("ready_seen");
    std::thread::sleep(TAIL);
    let done = unix_ms();
    Ok([
        leaving.window(
            format!("rebel-base scaled to zero in cluster{down}"),
            returning.start,
        ),
        returning.window(format!("rebel-base back in cluster{down}"), done),
    ])
}

/// A window's start and what happened during it.
struct Events {
    start: u64,
    at: BTreeMap<&'static str, u64>,
}

impl Events {
    fn new() -> Events {
        Events {
            start: unix_ms(),
            at: BTreeMap::new(),
        }
    }

    fn note(&mut self, event: &'static str) {
        self.at.insert(event, unix_ms());
    }

    fn window(self, situation: String, to_ms: u64) -> Window {
        Window {
            situation,
            from_ms: self.start,
            to_ms,
            events: self.at,
        }
    }
}

/// Waits until cluster1's agent balances over exactly `clusters`, then lets the stream run on.
fn settle(scene: &Scene, clusters: &[u8], what: impl Fn() -> String) -> anyhow::Result<()> {
    await_balance(scene, clusters, what)?;
    std::thread::sleep(TAIL);
    Ok(())
}

/// Waits until cluster1's agent (x-wing's) gives new flows to backends in exactly `clusters`.
fn await_balance(scene: &Scene, clusters: &[u8], what: impl Fn() -> String) -> anyhow::Result<()> {
    if !wait(Duration::from_secs(20), || {
        active_backend_clusters(scene, 1) == clusters
    }) {
        bail!(
            "{}: cluster1's agent does not balance over clusters {clusters:?}",
            what()
        );
    }
    Ok(())
}
