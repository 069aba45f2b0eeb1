//! The agent's side of [`meshpath_control::last_known`]: read at start (so the node forwards from
//! what it last knew before its etcd or any remote answers), kept current from the resolved local
//! state and the remotes' events, and written to `state-dir` every few seconds when it changed and
//! once more when the agent stops. Off the packet path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshpath_control::clustermesh::{RemoteEvent, RemoteLimits};
use meshpath_control::last_known::LastKnown;
use meshpath_control::state::ClusterState;
use meshpath_control::ClusterName;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;

const FILE: &str = "last-known.v1.json";
const WRITE_EVERY: Duration = Duration::from_secs(5);

/// The last known state, shared by whoever follows the state and the task that writes it.
#[derive(Clone)]
pub struct Recorder {
    known: Arc<Mutex<LastKnown>>,
    dirty: Arc<AtomicBool>,
    path: PathBuf,
    cluster: ClusterName,
    node: String,
}

impl Recorder {
    /// The recorder of this node, starting from what its file holds (nothing if it holds nothing
    /// usable: a warning says why).
    pub fn load(config: &AgentConfig, cluster: ClusterName) -> Recorder {
        let path = config.state_dir.join(FILE);
        let node = config.node.name.clone();
        let known = match std::fs::read(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => LastKnown::default(),
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "last known state not read");
                LastKnown::default()
            }
            Ok(bytes) => decode(&bytes, &cluster, &node, &path),
        };
        Recorder {
            known: Arc::new(Mutex::new(known)),
            dirty: Arc::new(AtomicBool::new(false)),
            path,
            cluster,
            node,
        }
    }

    pub fn snapshot(&self) -> LastKnown {
        self.known.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// What was known of each remote cluster.
    pub fn remotes(&self) -> std::collections::BTreeMap<ClusterName, ClusterState> {
        let known = self.snapshot();
        known
            .remotes
            .into_iter()
            .map(|(name, (_, state))| (name, state))
            .collect()
    }

    pub fn remote_event(&self, event: &RemoteEvent) {
        if let Ok(mut known) = self.known.lock() {
            known.apply_remote(event);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    pub fn local_identities(&self, state: &ClusterState) {
        if let Ok(mut known) = self.known.lock() {
            let identities = state
                .identities
                .iter()
                .map(|(id, labels)| (labels.clone(), *id));
            known.set_identities(identities);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the file now (atomically: a temporary file renamed, mode 0600), encoded straight
    /// into it.
    pub fn write(&self) {
        let known = self.snapshot();
        let tmp = self.path.with_extension("tmp");
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                write_private(&tmp, |out| {
                    known
                        .write(&self.cluster, &self.node, out)
                        .map_err(std::io::Error::from)
                })
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(error) = written {
            tracing::warn!(%error, file = %self.path.display(), "last known state not written");
        }
        drop(known);
        super::heap::give_back_free_memory();
    }

    /// Writes the file whenever it changed, at most every few seconds, until `cancel`.
    pub async fn write_forever(self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(WRITE_EVERY) => {}
            }
            if self.dirty.swap(false, Ordering::Relaxed) {
                let recorder = self.clone();
                let _ = tokio::task::spawn_blocking(move || recorder.write()).await;
            }
        }
    }
}

fn decode(bytes: &[u8], cluster: &ClusterName, node: &str, path: &std::path::Path) -> LastKnown {
    match LastKnown::decode(bytes, cluster, node, &RemoteLimits::default()) {
        Ok((known, refused)) => {
            if refused > 0 {
                tracing::warn!(refused, file = %path.display(), "last known state: entries refused as a remote's would be");
            }
            tracing::info!(
                identities = known.identities.len(),
                remotes = known.remotes.len(),
                file = %path.display(),
                "starting from the last known state"
            );
            known
        }
        Err(error) => {
            tracing::warn!(%error, file = %path.display(), "last known state ignored");
            LastKnown::default()
        }
    }
}

fn write_private(
    path: &std::path::Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut out = std::io::BufWriter::new(&file);
    write(&mut out)?;
    out.flush()?;
    drop(out);
    file.sync_all()
}
