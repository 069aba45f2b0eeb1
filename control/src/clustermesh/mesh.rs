//! The set of remote watchers, kept equal to the configuration: a new file starts a watcher, a changed
//! file (new endpoints, new certificates) restarts it seeded with what it had emitted — so the resync
//! diff leaves no leftovers — and a removed file stops it and withdraws its entries at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{MeshConfig, RemoteConfig};
use super::remote::{spawn_remote, RemoteEvent, RemoteHandle, RemoteOptions, StatusBoard};
use super::status::MeshStatus;
use crate::cluster_name::ClusterName;
use crate::state::ClusterState;

/// The running mesh: every remote's status, and the supervising task.
pub struct ClusterMesh {
    pub status: watch::Receiver<MeshStatus>,
    /// Where the snapshot builder adds what it refuses of each remote.
    pub board: StatusBoard,
    pub task: JoinHandle<()>,
}

/// Runs one watcher per remote in `config` until `cancel`, sending every change to `events`.
pub fn run_clustermesh(
    config: watch::Receiver<MeshConfig>,
    options: RemoteOptions,
    events: mpsc::Sender<RemoteEvent>,
    cancel: CancellationToken,
) -> ClusterMesh {
    run_clustermesh_from(config, options, BTreeMap::new(), events, cancel)
}

/// [`run_clustermesh`], starting each configured remote from what was last known of it (`known`): its
/// entries are sent as events before its watcher connects, and the watcher's first full listing then
/// corrects them (what vanished meanwhile goes once the remote's canaries say its listing is whole; a
/// remote that never answers is withdrawn after the grace period, as a lost one is).
pub fn run_clustermesh_from(
    config: watch::Receiver<MeshConfig>,
    options: RemoteOptions,
    known: BTreeMap<ClusterName, ClusterState>,
    events: mpsc::Sender<RemoteEvent>,
    cancel: CancellationToken,
) -> ClusterMesh {
    let (board, status) = watch::channel(MeshStatus::new());
    let board = Arc::new(board);
    let mesh = Supervisor {
        options,
        events,
        board: board.clone(),
        cancel,
        remotes: BTreeMap::new(),
        known,
    };
    ClusterMesh {
        status,
        board,
        task: tokio::spawn(mesh.run(config)),
    }
}

struct Supervisor {
    options: RemoteOptions,
    events: mpsc::Sender<RemoteEvent>,
    board: StatusBoard,
    cancel: CancellationToken,
    remotes: BTreeMap<ClusterName, (RemoteConfig, RemoteHandle)>,
    /// What was last known of remotes not started yet.
    known: BTreeMap<ClusterName, ClusterState>,
}

impl Supervisor {
    async fn run(mut self, mut config: watch::Receiver<MeshConfig>) {
        loop {
            let desired = config.borrow_and_update().clone();
            self.reconcile(desired).await;
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                changed = config.changed() => if changed.is_err() { break },
            }
        }
        for (_, (_, handle)) in std::mem::take(&mut self.remotes) {
            handle.stop().await;
        }
    }

    async fn reconcile(&mut self, desired: MeshConfig) {
        let current: Vec<ClusterName> = self.remotes.keys().cloned().collect();
        for name in current {
            let wanted = desired.remotes.get(&name);
            if wanted == self.remotes.get(&name).map(|(c, _)| c) {
                continue;
            }
            let Some((_, handle)) = self.remotes.remove(&name) else {
                continue;
            };
            let last = handle.stop().await;
            match wanted {
                Some(config) => {
                    tracing::info!(cluster = %name, "clustermesh: remote reconfigured, resyncing");
                    self.start(config.clone(), last);
                }
                None => {
                    tracing::info!(cluster = %name, "clustermesh: remote removed, withdrawing its entries");
                    self.send(&name, last.diff(&ClusterState::default())).await;
                }
            }
        }
        for (name, config) in desired.remotes {
            if !self.remotes.contains_key(&name) {
                let seed = self.known.remove(&name).unwrap_or_default();
                self.send(&name, ClusterState::default().diff(&seed)).await;
                self.start(config, seed);
            }
        }
        // What was known of remotes no longer configured is never used.
        self.known.clear();
    }

    async fn send(&self, cluster: &ClusterName, events: Vec<crate::state::StateEvent>) {
        for event in events {
            let event = RemoteEvent {
                cluster: cluster.clone(),
                event,
            };
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }

    fn start(&mut self, config: RemoteConfig, seed: ClusterState) {
        let name = config.name.clone();
        let (options, events, board) = (
            self.options.clone(),
            self.events.clone(),
            self.board.clone(),
        );
        let handle = spawn_remote(
            config.clone(),
            options,
            seed,
            events,
            board,
            self.cancel.clone(),
        );
        self.remotes.insert(name, (config, handle));
    }
}
