//! The node's WireGuard key pair: the X25519 private key lives in `<state-dir>/wireguard.key`, as
//! `wg genkey` writes one (standard base64 of 32 bytes and a newline), readable by root alone (mode
//! 0600). The first start with encryption makes it (from the kernel's random source); every later
//! start uses it, so the node keeps its public key — and its peers their sessions' key — across
//! restarts. A file anyone else may read, or that holds no key, stops the agent with an error that
//! names it: never a silently new key.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meshpath_control::local::LocalState;
use meshpath_dataplane::wireguard::{PublicKey, Tunnels};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The key file's name inside the state directory.
pub const KEY_FILE: &str = "wireguard.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: mode {mode:04o}, but a private key must be readable by its owner alone (0600)"
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: not a WireGuard private key (base64 of 32 bytes, as `wg genkey` writes)")]
    Content { path: PathBuf },
}

/// The node's private key, and its public key as node records carry it (base64).
#[derive(Clone)]
pub struct NodeKey {
    pub private: [u8; 32],
    pub public: PublicKey,
}

impl NodeKey {
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public.0)
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.public_base64())
    }
}

/// Reads the key in `dir`, or makes one there if there is none.
pub fn load_or_create(dir: &Path) -> Result<NodeKey, KeyError> {
    let path = dir.join(KEY_FILE);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let private = match File::open(&path) {
        Ok(file) => read(&path, file)?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(&path)?,
        Err(error) => return Err(io(error)),
    };
    let public = Tunnels::new(private)
        .public_key()
        .ok_or(KeyError::Content { path })?;
    Ok(NodeKey { private, public })
}

fn read(path: &Path, file: File) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut text = String::new();
    file.take(256).read_to_string(&mut text).map_err(io)?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Content {
            path: path.to_path_buf(),
        })?;
    bytes.try_into().map_err(|_| KeyError::Content {
        path: path.to_path_buf(),
    })
}

/// Writes a new key, refusing to replace a file that appeared meanwhile.
fn create(path: &Path) -> Result<[u8; 32], KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut private = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut private))
        .map_err(io)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    writeln!(file, "{}", STANDARD.encode(private))
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    tracing::info!(file = %path.display(), "WireGuard key made");
    Ok(private)
}

/// The local state with this node's public key on its own node (as Cilium's agent annotates its
/// node): what the resolver publishes in the node's record, whatever the source says of it. Peers
/// of this cluster read each other's keys from their nodes' `network.cilium.io/wg-pub-key`.
pub fn announce(
    mut local: watch::Receiver<Arc<LocalState>>,
    node: String,
    key: &NodeKey,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<LocalState>> {
    let public = key.public_base64();
    let stamp = move |state: &Arc<LocalState>| {
        let mut state = LocalState::clone(state);
        if let Some(own) = state.nodes.get_mut(&node) {
            own.wireguard_pub_key = Some(public.clone());
        }
        Arc::new(state)
    };
    let (tx, rx) = watch::channel(stamp(&local.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = local.changed() => if changed.is_err() { return },
                () = cancel.cancelled() => return,
            }
            let stamped = stamp(&local.borrow_and_update());
            if tx.send(stamped).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_makes_a_key_that_later_starts_keep() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(again.public, made.public);
        assert_eq!(again.private, made.private);
        assert_eq!(made.public_base64().len(), 44, "base64 of 32 bytes");
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(error, KeyError::Mode { mode: 0o644, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("wireguard.key"), "{error}");
    }

    #[test]
    fn a_file_without_a_key_is_refused() {
        for content in ["", "not base64!\n", "AAAA\n"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(KEY_FILE);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let error = load_or_create(dir.path()).unwrap_err();
            assert!(
                matches!(error, KeyError::Content { .. }),
                "{content:?}: {error}"
            );
        }
    }

    #[test]
    fn a_key_written_by_wg_genkey_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let private = [7u8; 32];
        std::fs::write(&path, format!("{}\n", STANDARD.encode(private))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap().private, private);
    }
}
