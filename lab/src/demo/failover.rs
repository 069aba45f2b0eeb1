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
use super::stream::{self, Answer, Stream};
use crate::mesh::wait;

/// New connections a second during the failover.
pub const RATE: u32 = 20;
/// How long a terminating pod keeps serving once x-wing's agent has seen it terminating: its grace
/// period, shortened for the demo. Kubernetes' default (30 s) is far longer than the mesh takes to
/// learn of a terminating endpoint; a shortened one must not end before it has, nor before a
/// connection opened just before then is through. A SYN sent again (TCP retries after 1 s, then
/// 2 s more) because the first or its answer was lost — a busy server's accept queue, a backlog of 5
/// in python's http.server, drops SYNs — keeps the backend chosen for the first: with a 1 s grace,
/// on a loaded machine, such retries met the stopped server and were refused.
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
}

/// A transition's span of time.
struct Window {
    situation: String,
    from_ms: u64,
    to_ms: u64,
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
    }
}

fn scale_to_zero_and_back(scene: &Scene, down: u8) -> anyhow::Result<[Window; 2]> {
    let up = if down == 1 { 2 } else { 1 };
    let leaving = unix_ms();
    scene.write_rebels(down, Rebels::Terminating { serving: true }, false)?;
    await_balance(scene, &[up], || format!("cluster{down} terminating"))?;
    std::thread::sleep(GRACE);
    scene.write_rebels(down, Rebels::Terminating { serving: false }, false)?;
    scene.stop_server(down)?;
    scene.write_rebels(down, Rebels::Gone, false)?;
    settle(scene, &[up], || format!("cluster{down} scaled to zero"))?;
    let returning = unix_ms();
    scene.start_server(down)?;
    scene.write_rebels(down, Rebels::Ready, false)?;
    settle(scene, &CLUSTERS, || format!("cluster{down} back"))?;
    let done = unix_ms();
    Ok([
        Window {
            situation: format!("rebel-base scaled to zero in cluster{down}"),
            from_ms: leaving,
            to_ms: returning,
        },
        Window {
            situation: format!("rebel-base back in cluster{down}"),
            from_ms: returning,
            to_ms: done,
        },
    ])
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
