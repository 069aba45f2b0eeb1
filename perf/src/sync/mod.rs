//! `meshpath-perf sync`: the control plane at scale against a real etcd. A remote cluster of 100k
//! endpoints and 10k services is written to a local etcd serving mutual TLS, which every watcher
//! reads through a relay adding a fixed delay each way ([`delay`]; `--delay-ms`). Then the remote
//! watcher and the snapshot builder run as the agent runs them (on a runtime of one worker thread),
//! and the benchmark measures the time from connecting to a complete dataplane snapshot, the latency
//! from a put in the remote etcd to the snapshot that holds it, and this benchmark process's RSS at
//! that size (the control plane's share). Then, as root, the real agent binary syncs the same remote
//! with its own defaults and its own memory is read ([`agent`]): what a node pays. Last, a second
//! remote joins and both push a burst of 100k identities ([`burst`]): how long a status-like request
//! and an etcd lease keepalive wait on the agent's runtime meanwhile.
mod agent;
mod burst;
mod cluster;
mod delay;
mod etcd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use meshpath_control::clustermesh::{config, spawn_remote, MeshStatus, RemoteOptions, StatusBoard};
use meshpath_control::snapshot::{spawn_builder, Change, SnapshotBuilder};
use meshpath_control::state::ClusterState;
use meshpath_control::ClusterName;
use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::snapshot::Tables;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::report::{against_ceiling, Report};

const TARGET_SYNC_S: f64 = 2.0;
const TARGET_P99_MS: f64 = 50.0;
/// The agent's resident memory with a 100k-endpoint remote.
const TARGET_RSS_MIB: f64 = 200.0;
/// Neither a status answer nor a keepalive may wait longer during the burst.
const TARGET_BURST_DELAY_MS: f64 = 100.0;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 100_000)]
    endpoints: u32,
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    #[arg(long, default_value_t = 10)]
    backends: u32,
    #[arg(long, default_value_t = 1_000)]
    identities: u32,
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Puts whose propagation is timed, one at a time.
    #[arg(long, default_value_t = 1_000)]
    changes: u32,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: String,
    /// Rules of the local policy compiled against every identity of the mesh.
    #[arg(long, default_value_t = 50)]
    policy_rules: u32,
    /// Identities the two remotes push at once at the end.
    #[arg(long, default_value_t = 100_000)]
    burst_identities: u32,
    /// One-way delay, ms, between every watcher (the benchmark's and the agent's) and the remote
    /// etcds they watch: a round trip of twice that, as to a cluster in another zone or region.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
}

/// The network between the watchers and the remote etcds.
#[derive(Serialize, Deserialize)]
pub struct Network {
    /// Mutual TLS (client certificates required), as in production.
    tls: bool,
    /// Added in each direction by a relay in front of each remote etcd.
    one_way_delay_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub struct Propagation {
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize, Deserialize)]
pub struct SyncReport {
    network: Network,
    full_sync_s: f64,
    propagation_ms: Propagation,
    /// The real agent's VmRSS with the remote cluster in its tables, run with its own defaults, read
    /// `agent::SETTLE` after its tables held it (null when not measured: it needs root).
    agent_rss_mib: Option<f64>,
    /// Its VmRSS at the moment its tables held the remote cluster (absent from older reports).
    #[serde(default)]
    agent_rss_at_sync_mib: Option<f64>,
    /// Its VmHWM by then: the most it was ever resident.
    agent_peak_rss_mib: Option<f64>,
    /// From the agent's start to its tables holding every remote endpoint.
    agent_full_sync_s: Option<f64>,
    /// This benchmark's own process (VmRSS) with the remote synced: the watcher and the builder as
    /// the agent runs them, its tables and snapshots, but not the agent's dataplane (workers'
    /// conntrack, UMEM) — not the agent's RSS.
    bench_process_rss_mib: f64,
    /// The same process before the remote was connected: runtime, etcd client, the local state.
    bench_process_rss_before_remote_mib: f64,
    /// Seconds to write the remote cluster into etcd (not part of any figure).
    write_s: f64,
    snapshots: u64,
    ipcache_entries: usize,
    services: usize,
    endpoints: u32,
    remote_services: u32,
    burst_identities: u32,
    /// From the burst's first put to the snapshot whose policy holds every burst identity.
    burst_absorb_s: f64,
    /// A status-like request every 10 ms on the agent's runtime during the burst.
    status_latency_ms: burst::Percentiles,
    /// The longest an etcd lease keepalive left the agent after its tick, during the burst.
    keepalive_delay_ms: f64,
    /// The longest from a keepalive's tick to etcd's answer (etcd takes the burst's writes too).
    keepalive_answer_ms: f64,
    status_requests: u64,
    keepalives: u64,
}

impl Report for SyncReport {
    fn lines(&self) -> Vec<String> {
        let p = &self.propagation_ms;
        vec![
            format!(
                "remote cluster: {} endpoints, {} services (written in {:.1} s), read over {}with {} ms added each way",
                self.endpoints,
                self.remote_services,
                self.write_s,
                if self.network.tls { "mutual TLS " } else { "plain TCP " },
                self.network.one_way_delay_ms
            ),
            format!(
                "full sync        {:>8.2} s    {}",
                self.full_sync_s,
                against_ceiling(self.full_sync_s, TARGET_SYNC_S)
            ),
            format!(
                "propagation p50  {:>8.2} ms   p99 {:.2} ms  max {:.2} ms   p99 {}",
                p.p50,
                p.p99,
                p.max,
                against_ceiling(p.p99, TARGET_P99_MS)
            ),
            match (self.agent_rss_mib, self.agent_peak_rss_mib) {
                (Some(rss), Some(peak)) => format!(
                    "agent RSS         {:>8.1} MiB  {}  (peak {peak:.1} MiB, {}; synced in {:.1} s{})",
                    rss,
                    against_ceiling(rss, TARGET_RSS_MIB),
                    against_ceiling(peak, TARGET_RSS_MIB),
                    self.agent_full_sync_s.unwrap_or(f64::NAN),
                    self.agent_rss_at_sync_mib.map_or(String::new(), |at| format!(
                        ", {at:.1} MiB then, read again {} s later",
                        agent::SETTLE.as_secs()
                    ))
                ),
                _ => "agent RSS         not measured (needs root)".to_owned(),
            },
            format!(
                "benchmark process RSS {:>8.1} MiB ({:.1} MiB before the remote; the control plane's share, not the agent's)",
                self.bench_process_rss_mib,
                self.bench_process_rss_before_remote_mib
            ),
            format!(
                "snapshot: {} ipcache entries, {} services, {} snapshots built",
                self.ipcache_entries, self.services, self.snapshots
            ),
            format!(
                "burst: {} identities from two remotes, absorbed in {:.2} s",
                self.burst_identities, self.burst_absorb_s
            ),
            format!(
                "status latency p50 {:>6.2} ms   p99 {:.2} ms  max {:.2} ms   max {}",
                self.status_latency_ms.p50,
                self.status_latency_ms.p99,
                self.status_latency_ms.max,
                against_ceiling(self.status_latency_ms.max, TARGET_BURST_DELAY_MS)
            ),
            format!(
                "keepalive delay max {:>6.2} ms   {}  (answered within {:.2} ms; {} keepalives, {} status requests)",
                self.keepalive_delay_ms,
                against_ceiling(self.keepalive_delay_ms, TARGET_BURST_DELAY_MS),
                self.keepalive_answer_ms,
                self.keepalives,
                self.status_requests
            ),
        ]
    }
}

pub fn run(args: &Args) -> anyhow::Result<SyncReport> {
    // As root, the benchmark (its etcds, its clients and the real agent) runs in a namespace of its
    // own, so that the agent's uplink and XDP programs touch nothing else.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let node = match unsafe { libc::geteuid() } == 0 {
        true => Some(Arc::new(agent::Node::create()?)),
        false => {
            eprintln!(
                "sync: not root, so the agent's own RSS is not measured (agent_rss_mib null)"
            );
            None
        }
    };
    let inside = node.clone();
    // The agent's runtime: one worker thread for every control task.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            if let Some(node) = &inside {
                node.enter().unwrap_or_else(|e| panic!("{e:#}"));
            }
        })
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args, node.as_deref()))
}

/// Resident set size of this process, from /proc/self/status.
fn rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib / 1024.0)
}

async fn until(
    rx: &mut watch::Receiver<Arc<Tables>>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Tables) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done(&rx.borrow_and_update()) {
            return Ok(());
        }
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .with_context(|| format!("no snapshot with {what} within {timeout:?}"))??;
    }
}

async fn run_async(args: &Args, node: Option<&agent::Node>) -> anyhow::Result<SyncReport> {
    let shape = cluster::Shape {
        policy_rules: args.policy_rules.max(1),
        endpoints: args.endpoints,
        services: args.services,
        backends: args.backends,
        identities: args.identities,
        nodes: args.nodes,
    };
    let ca = meshpath_lab::pki::LabCa::new()?;
    let server = etcd::Server::start(&args.etcd, &ca).await?;
    let server3 = etcd::Server::start(&args.etcd, &ca).await?;
    let delay = Duration::from_millis(args.delay_ms);
    let relay = delay::DelayRelay::start(server.addr, delay)?;
    let relay3 = delay::DelayRelay::start(server3.addr, delay)?;
    let far_url = |relay: &delay::DelayRelay| format!("https://{}", relay.addr);
    let mut client = server.client().await?;
    let written = Instant::now();
    cluster::write_remote(&mut client, &shape).await?;
    let write_s = written.elapsed().as_secs_f64();

    let (board_tx, board) = watch::channel(MeshStatus::new());
    let board_tx: StatusBoard = Arc::new(board_tx);
    let builder = SnapshotBuilder::new(cluster::spec()).with_status_board(board_tx.clone());
    let (sink, mut snapshots) = watch::channel(builder.current());
    let (changes, changes_rx) = mpsc::channel(16);
    let (events, events_rx) = mpsc::channel(65_536);
    let cancel = CancellationToken::new();
    let task = spawn_builder(builder, changes_rx, events_rx, sink, cancel.clone(), 8192)?;
    let local = cluster::local(&shape).await?;
    let client_identity = *local
        .pods
        .values()
        .next()
        .context("the local client has no identity")?;
    changes.send(Change::Local(local)).await?;
    until(
        &mut snapshots,
        "the local state",
        Duration::from_secs(30),
        |t| t.endpoints.len() == 1,
    )
    .await?;

    let remote_file = server.dir.path().join("cluster2");
    std::fs::write(&remote_file, server.remote_file(&far_url(&relay)))?;
    let remote_config = config::load_file(&ClusterName::new("cluster2")?, &remote_file)?;
    let options = RemoteOptions {
        local_id: meshpath_dataplane::ClusterId::new(1),
        ..RemoteOptions::default()
    };
    let rss_before_remote_mib = rss_mib()?;
    let start = Instant::now();
    let remote = spawn_remote(
        remote_config,
        options.clone(),
        ClusterState::default(),
        events.clone(),
        board_tx.clone(),
        cancel.clone(),
    );
    let expected = cluster::expected_ipcache(&shape);
    until(
        &mut snapshots,
        "the whole remote cluster",
        Duration::from_secs(120),
        |t| {
            t.ipcache.len() == expected
                && t.services
                    .iter()
                    .all(|s| s.backends().len() == shape.backends as usize)
        },
    )
    .await?;
    let full_sync_s = start.elapsed().as_secs_f64();
    let rss = rss_mib()?;

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for i in 0..args.changes {
        let (key, value, addr) = cluster::change(&shape, i)?;
        let put = Instant::now();
        client.put(key, value, None).await?;
        let host = IpPrefix::host(addr);
        until(&mut snapshots, "the change", Duration::from_secs(30), |t| {
            t.ipcache.get(&host).is_some()
        })
        .await?;
        histogram.record(put.elapsed().as_micros().max(1) as u64)?;
    }
    let last = snapshots.borrow().clone();
    let rss_synced = rss.max(rss_mib()?);
    let agent = match node {
        Some(node) => {
            Some(agent::measure(&shape, &server.remote_file(&far_url(&relay)), node).await?)
        }
        None => None,
    };

    let mut client3 = server3.client().await?;
    cluster::announce(&mut client3, 3).await?;
    let file3 = server3.dir.path().join("cluster3");
    std::fs::write(&file3, server3.remote_file(&far_url(&relay3)))?;
    let config3 = config::load_file(&ClusterName::new("cluster3")?, &file3)?;
    let remote3 = spawn_remote(
        config3,
        options,
        ClusterState::default(),
        events,
        board_tx,
        cancel.clone(),
    );
    let mut ready = board.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        ready.wait_for(|b| b.len() == 2 && b.values().all(|r| r.ready)),
    )
    .await
    .context("cluster3 not ready within 30 s")??;
    let burst = burst::run(burst::Burst {
        identities: args.burst_identities,
        remotes: vec![(server.client().await?, 2), (client3, 3)],
        lease_etcd: server.client().await?,
        board,
        snapshots: &mut snapshots,
        client: client_identity,
    })
    .await?;
    cancel.cancel();
    remote.stop().await;
    remote3.stop().await;
    let builder = tokio::task::spawn_blocking(move || task.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the builder's thread panicked"))?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(SyncReport {
        network: Network {
            tls: true,
            one_way_delay_ms: args.delay_ms,
        },
        full_sync_s,
        propagation_ms: Propagation {
            p50: ms(0.5),
            p99: ms(0.99),
            max: histogram.max() as f64 / 1000.0,
        },
        agent_rss_mib: agent.map(|a| a.rss_mib),
        agent_rss_at_sync_mib: agent.map(|a| a.rss_at_sync_mib),
        agent_peak_rss_mib: agent.map(|a| a.peak_rss_mib),
        agent_full_sync_s: agent.map(|a| a.sync_s),
        bench_process_rss_mib: rss_synced,
        bench_process_rss_before_remote_mib: rss_before_remote_mib,
        write_s,
        snapshots: builder.stats().snapshots,
        ipcache_entries: last.ipcache.len(),
        services: last.services.len(),
        endpoints: args.endpoints,
        remote_services: args.services,
        burst_identities: burst.identities,
        burst_absorb_s: burst.absorb_s,
        status_latency_ms: burst.status_latency_ms,
        keepalive_delay_ms: burst.keepalive_delay_ms,
        keepalive_answer_ms: burst.keepalive_answer_ms,
        status_requests: burst.status_requests,
        keepalives: burst.keepalives,
    })
}
