//! The burst: two remote clusters push their share of a 100k-identity burst at once, every identity
//! selected by a local policy, so the builder recompiles policy against the whole mesh batch after
//! batch. Meanwhile, on the agent's runtime, a status-like request is answered every 10 ms and an etcd
//! lease is kept alive every 100 ms; how long each waits is what the burst costs the agent's
//! control tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::Client;
use hdrhistogram::Histogram;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_dataplane::policy::DirectionPolicy;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::Identity;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::cluster;

/// How often the status-like request is made, and the lease kept alive.
const STATUS_EVERY: Duration = Duration::from_millis(10);
const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);

#[derive(Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// What the burst cost.
#[derive(Serialize)]
pub struct BurstReport {
    pub identities: u32,
    /// From the first identity written to the snapshot whose policy holds them all.
    pub absorb_s: f64,
    pub status_latency_ms: Percentiles,
    pub status_requests: u64,
    /// The longest an etcd lease keepalive left the agent after its tick.
    pub keepalive_delay_ms: f64,
    /// The longest from a tick to the keepalive's answer (etcd is busy with the burst too).
    pub keepalive_answer_ms: f64,
    pub keepalives: u64,
}

/// Where the burst is written and how its arrival is seen.
pub struct Burst<'a> {
    pub identities: u32,
    /// The remotes' etcd clients, each taking an equal share.
    pub remotes: Vec<(Client, u8)>,
    /// An etcd of the mesh to keep a lease alive on, from the agent's runtime.
    pub lease_etcd: Client,
    pub board: watch::Receiver<MeshStatus>,
    pub snapshots: &'a mut watch::Receiver<Arc<Tables>>,
    /// The local endpoint whose ingress policy selects every burst identity.
    pub client: Identity,
}

/// Runs the burst on the current runtime (the agent's); returns its figures.
pub async fn run(burst: Burst<'_>) -> anyhow::Result<BurstReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let status = spawn_status_probe(burst.board.clone(), burst.snapshots.clone(), stop.clone());
    let keepalive = tokio::spawn(keepalive_probe(burst.lease_etcd, stop.clone()));
    let share = burst.identities / burst.remotes.len().max(1) as u32;
    let expected = share as usize * burst.remotes.len();
    let started = Instant::now();
    let writer = std::thread::spawn(move || write_all(burst.remotes, share));
    let client = burst.client;
    let before = peers(&burst.snapshots.borrow(), client);
    let absorbed = tokio::time::timeout(
        Duration::from_secs(600),
        burst
            .snapshots
            .wait_for(|t| peers(t, client) == before + expected),
    )
    .await;
    let absorb_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the burst writer panicked"))??;
    absorbed
        .context("the burst was not absorbed within 600 s")?
        .context("the builder stopped")?;
    let (status_histogram, status_requests) = status
        .join()
        .map_err(|_| anyhow::anyhow!("the status probe panicked"))??;
    let keepalives = keepalive.await??;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(BurstReport {
        identities: expected as u32,
        absorb_s,
        status_latency_ms: Percentiles::of(&status_histogram),
        status_requests,
        keepalive_delay_ms: ms(keepalives.delay),
        keepalive_answer_ms: ms(keepalives.answer),
        keepalives: keepalives.count,
    })
}

/// Peers with their own grant in `client`'s ingress policy.
fn peers(tables: &Tables, client: Identity) -> usize {
    match &tables.policy.policy(client).ingress {
        DirectionPolicy::Enforced(policy) => policy.entries(),
        DirectionPolicy::AllowAll => 0,
    }
}

/// The remotes' shares, written concurrently from a runtime of their own (they are the remote
/// clusters, not the agent).
fn write_all(remotes: Vec<(Client, u8)>, share: u32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut writes = tokio::task::JoinSet::new();
        for (mut client, cluster) in remotes {
            writes.spawn(async move { cluster::write_burst(&mut client, cluster, share).await });
        }
        while let Some(result) = writes.join_next().await {
            result??;
        }
        Ok(())
    })
}

/// A status-like request every 10 ms from a thread of its own, answered by a task on the agent's
/// runtime that reads what the agent's status reads; returns the latencies (µs) and their count.
fn spawn_status_probe(
    board: watch::Receiver<MeshStatus>,
    tables: watch::Receiver<Arc<Tables>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<(Histogram<u64>, u64)>> {
    let (requests, mut incoming) = mpsc::channel::<oneshot::Sender<usize>>(1);
    tokio::spawn(async move {
        while let Some(reply) = incoming.recv().await {
            let mesh = serde_json::to_vec(&*board.borrow()).unwrap_or_default();
            let t = tables.borrow().clone();
            let sizes = t.ipcache.len() + t.services.len() + t.endpoints.len();
            let _ = reply.send(mesh.len() + sizes);
        }
    });
    std::thread::spawn(move || {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut count = 0;
        while !stop.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let (tx, rx) = oneshot::channel();
            requests.blocking_send(tx)?;
            rx.blocking_recv()?;
            histogram.record(asked.elapsed().as_micros().max(1) as u64)?;
            count += 1;
            std::thread::sleep(STATUS_EVERY.saturating_sub(asked.elapsed()));
        }
        Ok((histogram, count))
    })
}

/// How late the keepalives left the agent, and how long their answers took.
struct Keepalives {
    /// The longest from a tick to its keepalive handed to the etcd client: the agent's own delay.
    delay: Duration,
    /// The longest from a tick to its answer: the delay, the network and etcd (busy with the burst).
    answer: Duration,
    count: u64,
}

/// Keeps a lease alive every 100 ms from the agent's runtime.
async fn keepalive_probe(mut client: Client, stop: Arc<AtomicBool>) -> anyhow::Result<Keepalives> {
    let lease = client.lease_grant(30, None).await?.id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    let mut ticks = tokio::time::interval(KEEPALIVE_EVERY);
    // A late answer must not make the next ticks look late too.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Keepalives {
        delay: Duration::ZERO,
        answer: Duration::ZERO,
        count: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let due = ticks.tick().await;
        keeper.keep_alive().await?;
        seen.delay = seen.delay.max(due.elapsed());
        answers
            .message()
            .await?
            .context("the keepalive stream ended")?;
        seen.answer = seen.answer.max(due.elapsed());
        seen.count += 1;
    }
    client.lease_revoke(lease).await?;
    Ok(seen)
}
