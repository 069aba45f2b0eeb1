//! The control task: the local source, identity resolution, the remote clusters and the snapshot
//! builder, wired together on the agent's tokio runtime. A remote's failure stays in its watcher.

use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use meshpath_control::clustermesh::config_watch::watch_config_dir;
use meshpath_control::clustermesh::{run_clustermesh, RemoteOptions};
use meshpath_control::local::LocalState;
use meshpath_control::resolve::{MemoryAllocator, Resolver};
use meshpath_control::snapshot::{run_builder, Change, NodeSpec, SnapshotBuilder};
use meshpath_control::ClusterName;
use meshpath_dataplane::snapshot::Tables;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;

/// Changes a builder takes into one snapshot at most.
const MAX_BATCH: usize = 1024;

/// Starts every control task on the current runtime; they stop on `cancel`.
pub fn start(
    config: &AgentConfig,
    spec: NodeSpec,
    local: watch::Receiver<Arc<LocalState>>,
    tables: Arc<ArcSwap<Tables>>,
    cancel: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    let (changes_tx, changes) = mpsc::channel(64);
    let (remote_tx, remote) = mpsc::channel(4096);
    let cluster = spec.cluster.clone();
    let resolver = Resolver::new(
        cluster.clone(),
        spec.cluster_id,
        MemoryAllocator::new(spec.cluster_id),
    );
    tasks.spawn(resolve_forever(
        resolver,
        local,
        changes_tx.clone(),
        cancel.clone(),
    ));
    if let Some(mesh) = &config.clustermesh {
        let watch = watch_config_dir(mesh.config_dir.clone(), cluster.clone(), cancel.clone())
            .with_context(|| format!("clustermesh directory {}", mesh.config_dir.display()))?;
        let options = RemoteOptions {
            grace: mesh.grace_period,
            local_id: Some(spec.cluster_id),
            ..RemoteOptions::default()
        };
        let mesh = run_clustermesh(watch.config, options, remote_tx, cancel.clone());
        tasks.spawn(async move {
            let _ = mesh.task.await;
        });
    } else {
        drop(remote_tx);
    }
    let ports = spec.ports.clone();
    let builder = SnapshotBuilder::new(spec);
    tasks.spawn(async move {
        let _ = changes_tx.send(Change::Ports(ports)).await;
        run_builder(builder, changes, remote, tables, cancel, MAX_BATCH).await;
    });
    Ok(tasks)
}

/// Resolves every new local state and hands it to the builder; a failure is logged and the next state
/// tried, the last good snapshot staying in force.
async fn resolve_forever(
    mut resolver: Resolver<MemoryAllocator>,
    mut local: watch::Receiver<Arc<LocalState>>,
    changes: mpsc::Sender<Change>,
    cancel: CancellationToken,
) {
    loop {
        let state = local.borrow_and_update().clone();
        match resolver.resolve(state).await {
            Ok(resolved) => {
                if changes
                    .send(Change::Local(Arc::new(resolved)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "local state not resolved; the last snapshot stays")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = local.changed() => if changed.is_err() { return },
        }
    }
}

/// The cluster name of the configuration, checked at load.
pub fn cluster_name(config: &AgentConfig) -> anyhow::Result<ClusterName> {
    Ok(ClusterName::new(&config.cluster.name)?)
}
