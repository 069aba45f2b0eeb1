//! The control task: the local source, identity resolution and the remote clusters, wired together
//! on the agent's tokio runtime, feeding the snapshot builder on a thread of its own. A remote's
//! failure stays in its watcher.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshpath_control::clustermesh::config::TlsMaterial;
use meshpath_control::clustermesh::config_watch::watch_config_dir;
use meshpath_control::clustermesh::{run_clustermesh_from, MeshStatus, RemoteEvent, RemoteOptions};
use meshpath_control::etcd::{describe, EtcdTarget};
use meshpath_control::identity_alloc::IdentityAllocator;
use meshpath_control::local::LocalState;
use meshpath_control::publish::Publisher;
use meshpath_control::resolve::{resolve_known, IdentitySource, MemoryAllocator, Resolver};
use meshpath_control::snapshot::{
    spawn_builder, Change, NodeSpec, PodPorts, SnapshotBuilder, SnapshotSink,
};
use meshpath_control::ClusterName;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::{self, AgentConfig, EtcdSection};
use super::endpoints::EndpointDirectory;
use super::health::Readiness;
use super::identities::IdentityDirectory;
use super::last_known::Recorder;
use super::nodes::NodeDirectory;

/// Where the control task notes what the CLI lists and observe names (nodes, identities, endpoints),
/// what readiness waits for, and what the next agent starts from.
#[derive(Clone)]
pub struct Directories {
    pub nodes: NodeDirectory,
    pub identities: IdentityDirectory,
    pub endpoints: EndpointDirectory,
    pub readiness: Readiness,
    pub known: Recorder,
    pub publication: PublicationMetrics,
}

/// How long this agent's keys outlive it in etcd if it dies without withdrawing them.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Changes a builder takes into one snapshot at most.
const MAX_BATCH: usize = 1024;

/// What [`start`] started: its tasks, the remotes' status, and the builder's input for changes from
/// elsewhere in the agent (the neighbours' MACs).
/// The control tasks; the remote clusters' status; the own etcd's watch for external workloads;
/// the builder's input.
pub type Started = (
    JoinSet<()>,
    Option<watch::Receiver<MeshStatus>>,
    Option<watch::Receiver<MeshStatus>>,
    mpsc::Sender<Change>,
);

/// Starts every control task on the current runtime; they stop on `cancel`.
pub async fn start(
    config: &AgentConfig,
    spec: NodeSpec,
    local: watch::Receiver<Arc<LocalState>>,
    ports: watch::Receiver<PodPorts>,
    sink: impl SnapshotSink + 'static,
    directories: Directories,
    cancel: CancellationToken,
) -> anyhow::Result<Started> {
    let mut tasks = JoinSet::new();
    let mut mesh_status = None;
    let mut board = None;
    let (changes_tx, changes) = mpsc::channel(64);
    let (remote_tx, remote) = mpsc::channel(4096);
    let cluster = spec.cluster.clone();
    let mut external_watch = None;
    // A node sees the external workloads that joined its cluster in its own cluster's etcd.
    if let (config::Mode::Node, Some(own)) = (config.mode, super::external::own_cluster(config)?) {
        let options = RemoteOptions {
            local_id: Some(spec.cluster_id),
            joined: Some(cluster.clone()),
            ..RemoteOptions::default()
        };
        let (board, status) = watch::channel(MeshStatus::new());
        external_watch = Some(status);
        tasks.spawn(super::external::members::watch(
            own,
            options,
            Arc::new(board),
            local.clone(),
            remote_tx.clone(),
            directories.clone(),
            cancel.clone(),
        ));
    }
    match &config.etcd {
        Some(etcd) => {
            // Certificates are read now: a missing file is a configuration error, not an outage.
            let tls = tls_material(etcd)?;
            directories
                .publication
                .kvstore_insecure
                .set(i64::from(tls.is_none()));
            let nodes = (directories.clone(), cluster.to_string());
            tasks.spawn(resolve_with_etcd(
                etcd.clone(),
                tls,
                spec.clone(),
                local,
                nodes,
                changes_tx.clone(),
                cancel.clone(),
            ));
        }
        None => {
            let alloc = MemoryAllocator::new(spec.cluster_id);
            let resolver = Resolver::new(cluster.clone(), spec.cluster_id, alloc);
            let nodes = (directories.clone(), cluster.to_string());
            tasks.spawn(resolve_forever(
                resolver,
                local,
                nodes,
                changes_tx.clone(),
                (cancel.clone(), false),
            ));
        }
    }
    let joined = super::external::joined_remote(config)?;
    if config.clustermesh.is_some() || joined.is_some() {
        let dir = match &config.clustermesh {
            Some(mesh) => Some(
                watch_config_dir(mesh.config_dir.clone(), cluster.clone(), cancel.clone())
                    .with_context(|| {
                        format!("clustermesh directory {}", mesh.config_dir.display())
                    })?
                    .config,
            ),
            None => None,
        };
        let remotes = match joined {
            Some(joined) => super::external::with_joined(dir, joined, cancel.clone()),
            None => dir.context("no clustermesh directory")?,
        };
        let mesh_section = config.clustermesh.as_ref();
        let options = RemoteOptions {
            local_id: Some(spec.cluster_id),
            joined: spec.external_workload.then(|| cluster.clone()),
            ..mesh_section.map_or_else(RemoteOptions::default, |m| RemoteOptions {
                grace: m.grace_period,
                limits: m.remote_limits(),
                ..RemoteOptions::default()
            })
        };
        let (mesh_tx, mesh_rx) = mpsc::channel(4096);
        let known = directories.known.remotes();
        let mesh = run_clustermesh_from(remotes, options, known, mesh_tx, cancel.clone());
        let own = super::external::OwnRecords::of(config);
        tasks.spawn(record_remote_nodes(mesh_rx, remote_tx, directories, own));
        mesh_status = Some(mesh.status.clone());
        board = Some(mesh.board.clone());
        tasks.spawn(async move {
            let _ = mesh.task.await;
        });
    } else {
        drop(remote_tx);
    }
    let mut builder = SnapshotBuilder::new(spec);
    if let Some(board) = board {
        builder = builder.with_status_board(board);
    }
    // Off this runtime: a build (a policy recompile against the whole mesh among it) must not hold
    // up the status socket or the remotes' keepalives.
    let thread = spawn_builder(builder, changes, remote, sink, cancel.clone(), MAX_BATCH)
        .context("starting the snapshot builder's thread")?;
    let input = changes_tx.clone();
    tasks.spawn(forward_ports(ports, changes_tx, cancel));
    tasks.spawn(async move {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    });
    Ok((tasks, mesh_status, external_watch, input))
}

/// Hands the builder every new set of attached pods (the configuration's, and the CNI plugin's as
/// they come and go).
async fn forward_ports(
    mut ports: watch::Receiver<PodPorts>,
    changes: mpsc::Sender<Change>,
    cancel: CancellationToken,
) {
    loop {
        let current = ports.borrow_and_update().clone();
        if changes.send(Change::Ports(current)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = ports.changed() => if changed.is_err() { return },
        }
    }
}

/// Resolves every new local state and hands it to the builder; a failure is logged and the next state
/// tried, the last good snapshot staying in force. Between states, the publisher's upkeep runs every
/// [`UPKEEP_EVERY`] and at once when its lease is lost. On stop, the lead is given up; this agent's own
/// keys expire with its lease unless the next agent on this node takes them over first — or, `for_good`
/// (an external workload), are withdrawn at once.
async fn resolve_forever<A: IdentitySource + Send>(
    mut resolver: Resolver<A>,
    mut local: watch::Receiver<Arc<LocalState>>,
    (directories, cluster): (Directories, String),
    changes: mpsc::Sender<Change>,
    (cancel, for_good): (CancellationToken, bool),
) {
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The lead first: its holder publishes the cluster-config with its first state, so that remote
    // clusters do not find the cluster without one.
    upkeep.tick().await;
    take_care(&mut resolver, &directories.publication).await;
    loop {
        let state = local.borrow_and_update().clone();
        directories.nodes.record_local(&cluster, &state);
        directories.endpoints.record_local(&cluster, &state);
        match resolver.resolve(state).await {
            Ok(resolved) => {
                directories
                    .identities
                    .record_local(&cluster, &resolved.identities);
                directories.known.local_identities(&resolved.state);
                directories.readiness.local_synced();
                if changes
                    .send(Change::Local(Arc::new(resolved)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "local state not resolved; the last snapshot stays")
            }
        }
        let mut lost = resolver.publisher_mut().map(|p| p.lease().lost.clone());
        let resolve_again = loop {
            tokio::select! {
                _ = cancel.cancelled() => break false,
                changed = local.changed() => break changed.is_ok(),
                _ = lease_lost(&mut lost) => {
                    lost = None;
                    if take_care(&mut resolver, &directories.publication).await { break true }
                }
                _ = upkeep.tick() => {
                    if take_care(&mut resolver, &directories.publication).await { break true }
                }
            }
        };
        if !resolve_again {
            break;
        }
    }
    if for_good {
        // An external workload that stops leaves the mesh: its records go now, not with its lease.
        match tokio::time::timeout(LEAVE_TIMEOUT, resolver.close()).await {
            Ok(Ok(())) => tracing::info!("left the cluster: this host's records withdrawn"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "records not withdrawn: they expire with this agent's lease")
            }
            Err(_) => tracing::warn!(
                "etcd did not answer in time: this host's records expire with its lease"
            ),
        }
        return;
    }
    match tokio::time::timeout(LEAVE_TIMEOUT, resolver.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "the cluster-wide lead not given up: it expires with this agent's lease")
        }
        Err(_) => tracing::warn!(
            "etcd did not answer in time: the cluster-wide lead expires with this agent's lease"
        ),
    }
}

/// How often the publisher checks its lease and keys and campaigns for the cluster-wide records.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping agent waits for etcd to take its resignation of the lead.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until the lease is lost; forever without one.
async fn lease_lost(lost: &mut Option<watch::Receiver<bool>>) {
    if let Some(lost) = lost {
        if lost.wait_for(|l| *l).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// One upkeep round, counted; whether the local state must be resolved (and published) again.
async fn take_care<A: IdentitySource + Send>(
    resolver: &mut Resolver<A>,
    metrics: &PublicationMetrics,
) -> bool {
    match resolver.upkeep().await {
        Ok(None) => false,
        Ok(Some(upkeep)) => {
            if upkeep.lease_recovered {
                metrics.lease_recoveries.inc();
                let changed = upkeep.identities_changed.len();
                tracing::warn!(
                    identities_changed = changed,
                    "etcd lease recovered: this agent's keys published again"
                );
            }
            metrics.keys_restored.inc_by(upkeep.keys_restored as u64);
            if let Some(round) = upkeep.gc {
                metrics.identities_collected.inc_by(round.deleted as u64);
            }
            metrics.leading.set(i64::from(upkeep.leading));
            upkeep.lease_recovered || upkeep.lead_changed()
        }
        Err(error) => {
            tracing::warn!(%error, "publication upkeep failed; retried at the next round");
            false
        }
    }
}

/// What the metrics export of this agent's publication into its cluster's etcd.
#[derive(Clone, Debug, Default)]
pub struct PublicationMetrics {
    /// Leases found lost and replaced, everything written again.
    pub lease_recoveries: Counter,
    /// Keys found deleted behind the agent's back and written again.
    pub keys_restored: Counter,
    /// 1 while this agent writes the cluster-wide records.
    pub leading: Gauge,
    /// Unused identities the identity GC deleted (while this agent led).
    pub identities_collected: Counter,
    /// 1 while this cluster's etcd is reached without mutual TLS (`etcd.insecure: true`).
    pub kvstore_insecure: Gauge,
}

/// Passes the remote clusters' events on to the builder, noting their nodes and identities on the way;
/// an external workload's own records, as the joined cluster reports them, stay out.
async fn record_remote_nodes(
    mut events: mpsc::Receiver<RemoteEvent>,
    builder: mpsc::Sender<RemoteEvent>,
    directories: Directories,
    own: Option<super::external::OwnRecords>,
) {
    while let Some(event) = events.recv().await {
        if own.as_ref().is_some_and(|own| own.contains(&event)) {
            continue;
        }
        directories.nodes.record_remote(&event);
        directories.identities.record_remote(&event);
        directories.endpoints.record_remote(&event);
        directories.known.remote_event(&event);
        if builder.send(event).await.is_err() {
            return;
        }
    }
}

/// How long between attempts to reach this cluster's etcd at start-up, at most.
const ETCD_RETRY_MAX: Duration = Duration::from_secs(10);

/// Resolution with this cluster's etcd, which start-up does not wait for: until it answers, the local
/// state is resolved from the identities last known (a pod whose labels have none waits), and the
/// builder forwards from that; once it answers, the etcd-backed resolver takes over for good.
async fn resolve_with_etcd(
    etcd: EtcdSection,
    tls: Option<TlsMaterial>,
    spec: NodeSpec,
    mut local: watch::Receiver<Arc<LocalState>>,
    (directories, cluster): (Directories, String),
    changes: mpsc::Sender<Change>,
    cancel: CancellationToken,
) {
    let known = directories.known.snapshot().identities;
    let (connected_tx, mut connected) = tokio::sync::oneshot::channel();
    let connecting = tokio::spawn(connect_etcd(etcd, tls, spec.clone(), connected_tx));
    let resolver = loop {
        let state = local.borrow_and_update().clone();
        directories.nodes.record_local(&cluster, &state);
        directories.endpoints.record_local(&cluster, &state);
        let resolved = resolve_known(state, &known, &spec.cluster, spec.cluster_id);
        directories
            .identities
            .record_local(&cluster, &resolved.identities);
        if changes
            .send(Change::Local(Arc::new(resolved)))
            .await
            .is_err()
        {
            connecting.abort();
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                connecting.abort();
                return;
            }
            changed = local.changed() => if changed.is_err() { return },
            resolver = &mut connected => match resolver {
                Ok(resolver) => break resolver,
                Err(_) => return,
            },
        }
    };
    tracing::info!("this cluster's etcd answers: identities and publication from it now");
    let for_good = spec.external_workload;
    let stop = (cancel, for_good);
    resolve_forever(resolver, local, (directories, cluster), changes, stop).await;
}

/// Connects the etcd resolver, retrying with a growing pause until it works.
async fn connect_etcd(
    etcd: EtcdSection,
    tls: Option<TlsMaterial>,
    spec: NodeSpec,
    connected: tokio::sync::oneshot::Sender<Resolver<IdentityAllocator>>,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        match etcd_resolver(&etcd, tls.as_ref(), &spec).await {
            Ok(resolver) => {
                let _ = connected.send(resolver);
                return;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), retry_in = ?pause, "this cluster's etcd does not answer yet; forwarding from the last known state");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ETCD_RETRY_MAX);
            }
        }
    }
}

/// The resolver of a cluster with an etcd: identities allocated cluster-wide, every change of this
/// agent's share published under its lease.
async fn etcd_resolver(
    etcd: &EtcdSection,
    tls: Option<&TlsMaterial>,
    spec: &NodeSpec,
) -> anyhow::Result<Resolver<IdentityAllocator>> {
    let target = EtcdTarget {
        endpoints: &etcd.endpoints,
        tls,
        connect_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(10),
    };
    let endpoints = etcd.endpoints.join(",");
    let publisher = Publisher::connect(
        &target,
        spec.cluster.clone(),
        spec.cluster_id,
        &spec.node,
        LEASE_TTL,
    )
    .await
    .with_context(|| format!("this cluster's etcd at {endpoints}"))?;
    let publisher = match spec.external_workload {
        true => publisher.never_leading(),
        false => publisher,
    };
    let client = meshpath_control::etcd::connect(&target)
        .await
        .map_err(|e| anyhow::anyhow!("this cluster's etcd at {endpoints}: {}", describe(&e)))?;
    let alloc = IdentityAllocator::new(
        meshpath_control::etcd::kv_client(&client),
        spec.cluster_id,
        &spec.node,
        publisher.lease().id,
    );
    Ok(Resolver::new(spec.cluster.clone(), spec.cluster_id, alloc).with_publisher(publisher))
}

/// The TLS files `etcd` names, read; none for an insecure lab etcd.
pub fn tls_material(etcd: &EtcdSection) -> anyhow::Result<Option<TlsMaterial>> {
    if etcd.insecure && etcd.trusted_ca_file.is_none() {
        return Ok(None);
    }
    let read = |key: &str, path: &Option<std::path::PathBuf>| -> anyhow::Result<Vec<u8>> {
        let path = path
            .as_ref()
            .with_context(|| format!("`etcd.{key}` is required for TLS"))?;
        std::fs::read(path).with_context(|| format!("`etcd.{key}`: {}", path.display()))
    };
    Ok(Some(TlsMaterial {
        ca: read("trusted-ca-file", &etcd.trusted_ca_file)?,
        cert: read("cert-file", &etcd.cert_file)?,
        key: read("key-file", &etcd.key_file)?,
    }))
}

/// The cluster name of the configuration, checked at load.
pub fn cluster_name(config: &AgentConfig) -> anyhow::Result<ClusterName> {
    Ok(ClusterName::new(&config.cluster.name)?)
}
