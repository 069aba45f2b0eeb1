//! Keeps the ClusterMesh configuration current: watches the directory (and the directories of the TLS
//! files it names) and re-reads everything on any change, since a Kubernetes secret update is a symlink
//! flip that touches no file by its own name. A broken file leaves that cluster's last good config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{load_dir, ConfigError, Loaded, MeshConfig};
use crate::cluster_name::ClusterName;

/// Changes arriving within this window are read as one.
const SETTLE: Duration = Duration::from_millis(50);

/// The current configuration, and the errors of the last reading (one line per bad file).
pub struct ConfigWatch {
    pub config: watch::Receiver<MeshConfig>,
    pub errors: watch::Receiver<Vec<String>>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Reads `dir` now, then again on every change until `cancel`. Fails only if `dir` cannot be read or watched.
pub fn watch_config_dir(
    dir: PathBuf,
    local: ClusterName,
    cancel: CancellationToken,
) -> Result<ConfigWatch, ConfigError> {
    let first = load_dir(&dir, &local)?;
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let notify_err = |e: notify::Error| ConfigError::Invalid {
        path: dir.clone(),
        why: format!("cannot watch: {e}"),
    };
    let mut watcher = notify::recommended_watcher(move |_event| {
        let _ = changes_tx.send(());
    })
    .map_err(notify_err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(notify_err)?;
    let mut state = DirWatch {
        dir,
        local,
        watcher,
        watched: BTreeSet::new(),
        config: MeshConfig::default(),
    };
    let (errors, first_config) = state.merge(first);
    let (config_tx, config) = watch::channel(first_config);
    let (errors_tx, errors_rx) = watch::channel(errors);
    let task = tokio::spawn(state.run(changes, config_tx, errors_tx, cancel));
    Ok(ConfigWatch {
        config,
        errors: errors_rx,
        task,
    })
}

struct DirWatch {
    dir: PathBuf,
    local: ClusterName,
    watcher: RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
    config: MeshConfig,
}

impl DirWatch {
    async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<()>,
        config_tx: watch::Sender<MeshConfig>,
        errors_tx: watch::Sender<Vec<String>>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            let loaded = match load_dir(&self.dir, &self.local) {
                Ok(loaded) => loaded,
                Err(err) => {
                    tracing::warn!(%err, "clustermesh config: keeping the last good configuration");
                    errors_tx.send_replace(vec![err.to_string()]);
                    continue;
                }
            };
            let (errors, config) = self.merge(loaded);
            errors_tx.send_replace(errors);
            config_tx.send_if_modified(|current| {
                let changed = *current != config;
                *current = config;
                changed
            });
        }
    }

    /// The new config: what loaded, plus the last good config of each cluster whose file is broken.
    fn merge(&mut self, loaded: Loaded) -> (Vec<String>, MeshConfig) {
        let Loaded {
            mut config,
            errors,
            broken,
        } = loaded;
        for name in broken {
            if let Some(last_good) = self.config.remotes.get(&name) {
                config
                    .remotes
                    .entry(name)
                    .or_insert_with(|| last_good.clone());
            }
        }
        for err in &errors {
            tracing::warn!(%err, "clustermesh config: file refused");
        }
        self.watch_tls_dirs(&config);
        self.config = config.clone();
        (errors.iter().map(ToString::to_string).collect(), config)
    }

    /// Certificates may live outside the directory; their directories are watched too.
    fn watch_tls_dirs(&mut self, config: &MeshConfig) {
        let files = config.remotes.values().flat_map(|r| r.tls_paths.iter());
        let dirs = files.filter_map(|p| p.parent().map(Path::to_owned));
        for dir in dirs.collect::<BTreeSet<_>>() {
            if dir != self.dir
                && !self.watched.contains(&dir)
                && self
                    .watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .is_ok()
            {
                self.watched.insert(dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn yaml(endpoint: &str) -> String {
        format!("endpoints:\n- {endpoint}\ntrusted-ca-file: ca.crt\ncert-file: client.crt\nkey-file: client.key\n")
    }

    /// Lays out a secret the way the kubelet does: `..data` → a timestamped directory, names → `..data/name`.
    fn secret_version(dir: &Path, version: &str, ca: &str) {
        let versioned = dir.join(format!("..{version}"));
        fs::create_dir(&versioned).unwrap();
        fs::write(
            versioned.join("cluster2"),
            yaml("https://cluster2.mesh:2379"),
        )
        .unwrap();
        fs::write(versioned.join("ca.crt"), ca).unwrap();
        fs::write(versioned.join("client.crt"), "cert").unwrap();
        fs::write(versioned.join("client.key"), "key").unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(format!("..{version}"), &tmp).unwrap();
        fs::rename(&tmp, dir.join("..data")).unwrap();
    }

    async fn changed(rx: &mut watch::Receiver<MeshConfig>) -> MeshConfig {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("config change")
            .unwrap();
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn follows_additions_removals_breakage_and_secret_flips() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        secret_version(d, "v1", "ca-one");
        for name in ["cluster2", "ca.crt", "client.crt", "client.key"] {
            symlink(format!("..data/{name}"), d.join(name)).unwrap();
        }
        let cancel = CancellationToken::new();
        let mut w = watch_config_dir(
            d.to_owned(),
            ClusterName::new("cluster1").unwrap(),
            cancel.clone(),
        )
        .unwrap();
        let c2 = ClusterName::new("cluster2").unwrap();
        let c3 = ClusterName::new("cluster3").unwrap();
        assert_eq!(
            w.config.borrow().remotes[&c2].tls.as_ref().unwrap().ca,
            b"ca-one"
        );

        secret_version(d, "v2", "ca-two");
        let config = changed(&mut w.config).await;
        assert_eq!(
            config.remotes[&c2].tls.as_ref().unwrap().ca,
            b"ca-two",
            "re-keyed by the flip"
        );

        fs::write(d.join("cluster3"), yaml("https://cluster3.mesh:2379")).unwrap();
        assert!(changed(&mut w.config).await.remotes.contains_key(&c3));

        fs::write(d.join("cluster3"), "endpoints: [").unwrap();
        let errors = w.errors.clone();
        meshpath_testkit::until_async("the broken file's error", Duration::from_secs(10), || {
            let errors = errors.borrow().clone();
            let named = errors.iter().any(|e| e.contains("cluster3"));
            async move { meshpath_testkit::wait::check(named, errors) }
        })
        .await
        .unwrap();
        assert!(
            w.config.borrow().remotes.contains_key(&c3),
            "last good config stays"
        );

        fs::remove_file(d.join("cluster3")).unwrap();
        assert!(!changed(&mut w.config).await.remotes.contains_key(&c3));
        assert!(w.errors.borrow().is_empty());
        cancel.cancel();
        w.task.await.unwrap();
    }
}
