//! One remote cluster: a tokio task that connects to the remote's etcd over mutual TLS, checks its
//! cluster-config, lists everything under `cilium/` at one revision, watches from the next revision, and
//! emits [`RemoteEvent`]s for every change. After a disconnect it retries with backoff and resyncs fully;
//! while it cannot reach the remote the entries stay for a grace period and are then withdrawn.
//!
//! The etcd session runs as a child task and reports over a channel, so the grace timer and cancellation
//! keep working while a connection attempt hangs.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use etcd_client::{EventType, WatchOptions};
use meshpath_dataplane::{Addr, ClusterId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::config::RemoteConfig;
use super::mirror::Mirror;
use super::status::{MeshStatus, RemoteStatus, SyncStatus};
use crate::cluster_name::ClusterName;
use crate::etcd::{self, EtcdTarget};
use crate::kvstore::{ClusterConfig, Key, KeyError, Kind, Origin, Record, ROOT};
use crate::state::{ClusterState, Entry, EntryKey, StateEvent};

/// Cluster ids announced by connected remotes, so that two remotes cannot both be cluster 5.
pub type IdClaims = Arc<Mutex<BTreeMap<ClusterId, ClusterName>>>;

/// Every remote's status, updated by the remote tasks.
pub type StatusBoard = Arc<watch::Sender<MeshStatus>>;

#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// How long a remote's entries outlive the connection to it.
    pub grace: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive interval and timeout: how fast a silent etcd is noticed.
    pub keep_alive: Duration,
    /// Keys per page when listing.
    pub list_page: i64,
    /// This cluster's own id, which no remote may announce.
    pub local_id: Option<ClusterId>,
    pub claims: IdClaims,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            grace: Duration::from_secs(60),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            list_page: 10_000,
            local_id: None,
            claims: IdClaims::default(),
        }
    }
}

/// A change in one remote cluster's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEvent {
    pub cluster: ClusterName,
    pub event: StateEvent,
}

/// Why a session with a remote ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("etcd at {endpoints}: {detail}")]
    Etcd { endpoints: String, detail: String },
    #[error("etcd at {endpoints}: no answer within {after:?}")]
    Timeout { endpoints: String, after: Duration },
    #[error("{key} is missing: the remote has not announced its cluster id")]
    NoClusterConfig { key: String },
    #[error("cluster-config refused: {0}")]
    ClusterConfig(String),
    #[error("cluster-config announces id {found}, the configuration expects {expected}")]
    IdMismatch {
        found: ClusterId,
        expected: ClusterId,
    },
    #[error("cluster-config announces id {0}, which is this cluster's own")]
    OwnId(ClusterId),
    #[error("cluster-config announces id {id}, already used by remote `{other}`")]
    IdInUse { id: ClusterId, other: ClusterName },
    #[error("watch canceled by etcd: {0}")]
    WatchCanceled(String),
    #[error("watch stream ended")]
    WatchEnded,
}

/// A running remote watcher.
pub struct RemoteHandle {
    cancel: CancellationToken,
    task: JoinHandle<ClusterState>,
}

impl RemoteHandle {
    /// Stops the watcher; returns the state it had emitted, without withdrawing it.
    pub async fn stop(self) -> ClusterState {
        self.cancel.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Starts watching `config`'s cluster. `seed` is what a previous watcher of it had emitted: the first
/// listing is diffed against it.
pub fn spawn_remote(
    config: RemoteConfig,
    options: RemoteOptions,
    seed: ClusterState,
    events: mpsc::Sender<RemoteEvent>,
    board: StatusBoard,
    cancel: CancellationToken,
) -> RemoteHandle {
    let cancel = cancel.child_token();
    let status = RemoteStatus::new(&config.name, config.endpoints.len());
    let remote = Remote {
        config: Arc::new(config),
        options,
        events,
        board,
        cancel: cancel.clone(),
        mirror: Mirror::new(seed),
        status,
        down_since: Some(Instant::now()),
        withdrawn: false,
    };
    RemoteHandle {
        cancel,
        task: tokio::spawn(remote.run()),
    }
}

/// What a session reports to its remote's task.
enum Msg {
    Configured {
        id: ClusterId,
        canaries: bool,
    },
    Listed {
        state: ClusterState,
        synced: SyncStatus,
        rejected: u64,
    },
    Upsert(Entry),
    Delete(EntryKey),
    Synced(Kind),
    Rejected(String),
    Failed(RemoteError),
}

struct Session {
    task: JoinHandle<()>,
    msgs: mpsc::Receiver<Msg>,
}

struct Remote {
    config: Arc<RemoteConfig>,
    options: RemoteOptions,
    events: mpsc::Sender<RemoteEvent>,
    board: StatusBoard,
    cancel: CancellationToken,
    mirror: Mirror,
    status: RemoteStatus,
    down_since: Option<Instant>,
    withdrawn: bool,
}

impl Remote {
    async fn run(mut self) -> ClusterState {
        let mut session: Option<Session> = None;
        let mut retry_at = Instant::now();
        let mut backoff = self.options.backoff_min;
        self.publish_status();
        loop {
            let grace_at = self.grace_deadline();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = sleep_until(retry_at), if session.is_none() => session = Some(self.start_session()),
                msg = next_msg(&mut session), if session.is_some() => match msg {
                    Msg::Failed(err) => {
                        session = None;
                        self.on_failure(err);
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(self.options.backoff_max);
                    }
                    Msg::Listed { state, synced, rejected } => {
                        backoff = self.options.backoff_min;
                        self.on_listed(state, synced, rejected).await;
                    }
                    other => self.on_msg(other).await,
                },
                _ = sleep_until(grace_at.unwrap_or_else(Instant::now)), if grace_at.is_some() => self.withdraw().await,
            }
            self.publish_status();
        }
        if let Some(s) = session {
            s.task.abort();
        }
        self.release_claim();
        self.board.send_modify(|b| {
            b.remove(&self.config.name);
        });
        self.mirror.into_state()
    }

    fn start_session(&self) -> Session {
        let (tx, msgs) = mpsc::channel(1024);
        let (config, options) = (self.config.clone(), self.options.clone());
        let task = tokio::spawn(async move {
            let err = match run_session(&config, &options, &tx).await {
                Ok(()) => RemoteError::WatchEnded,
                Err(err) => err,
            };
            let _ = tx.send(Msg::Failed(err)).await;
        });
        Session { task, msgs }
    }

    fn grace_deadline(&self) -> Option<Instant> {
        let holding = !self.withdrawn && !self.mirror.state().is_empty();
        self.down_since
            .filter(|_| holding)
            .map(|since| since + self.options.grace)
    }

    fn on_failure(&mut self, err: RemoteError) {
        tracing::warn!(cluster = %self.config.name, %err, "clustermesh remote failed");
        self.mirror.disconnected();
        let status = &mut self.status;
        status.failures += 1;
        status.last_failure = Some(SystemTime::now());
        status.last_error = Some(err.to_string());
        if status.connected || status.disconnected_since.is_none() {
            status.disconnected_since = Some(SystemTime::now());
        }
        status.connected = false;
        status.connected_since = None;
        self.down_since.get_or_insert_with(Instant::now);
    }

    async fn on_listed(&mut self, state: ClusterState, synced: SyncStatus, rejected: u64) {
        self.status.rejected += rejected;
        self.status.connected = true;
        self.status.connected_since = Some(SystemTime::now());
        self.status.disconnected_since = None;
        self.status.withdrawn_at = None;
        self.down_since = None;
        self.withdrawn = false;
        let events = self.mirror.resync(state, synced);
        self.emit(events).await;
    }

    async fn on_msg(&mut self, msg: Msg) {
        let events = match msg {
            Msg::Configured { id, canaries } => {
                self.status.config_retrieved = true;
                self.status.cluster_id = Some(id.get());
                self.status.sync_canaries = canaries;
                return;
            }
            Msg::Upsert(entry) => self.mirror.upsert(entry).into_iter().collect(),
            Msg::Delete(key) => self.mirror.delete(key).into_iter().collect(),
            Msg::Synced(kind) => self.mirror.mark_synced(kind),
            Msg::Rejected(why) => {
                tracing::warn!(cluster = %self.config.name, %why, "clustermesh remote: value rejected");
                self.status.rejected += 1;
                return;
            }
            Msg::Listed { .. } | Msg::Failed(_) => return,
        };
        self.emit(events).await;
    }

    async fn withdraw(&mut self) {
        let why = self
            .status
            .last_error
            .clone()
            .unwrap_or_else(|| "never connected".into());
        tracing::warn!(cluster = %self.config.name, grace = ?self.options.grace, %why, "clustermesh remote withdrawn");
        self.withdrawn = true;
        self.status.withdrawn_at = Some(SystemTime::now());
        self.status.last_error = Some(format!(
            "entries withdrawn after {:?} without the remote: {why}",
            self.options.grace
        ));
        let events = self.mirror.withdraw();
        self.emit(events).await;
    }

    /// Sends `events` (already applied to the mirror), status first so that a consumer who sees the
    /// events also sees the status that explains them.
    async fn emit(&mut self, events: Vec<StateEvent>) {
        self.publish_status();
        for event in events {
            let event = RemoteEvent {
                cluster: self.config.name.clone(),
                event,
            };
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }

    fn publish_status(&mut self) {
        let state = self.mirror.state();
        for kind in Kind::ALL {
            *self.status.count_mut(kind) = state.count(kind);
        }
        self.status.synced = self.mirror.synced();
        self.status.ready = self.status.connected && self.status.synced.all();
        let status = self.status.clone();
        self.board.send_if_modified(|b| {
            let changed = b.get(&self.config.name) != Some(&status);
            b.insert(self.config.name.clone(), status);
            changed
        });
    }

    fn release_claim(&self) {
        if let Ok(mut claims) = self.options.claims.lock() {
            claims.retain(|_, name| *name != self.config.name);
        }
    }
}

async fn next_msg(session: &mut Option<Session>) -> Msg {
    match session {
        Some(s) => s
            .msgs
            .recv()
            .await
            .unwrap_or(Msg::Failed(RemoteError::WatchEnded)),
        None => std::future::pending().await,
    }
}

async fn run_session(
    config: &RemoteConfig,
    options: &RemoteOptions,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), RemoteError> {
    let endpoints = config.endpoints.join(",");
    let target = EtcdTarget {
        endpoints: &config.endpoints,
        tls: config.tls.as_ref(),
        connect_timeout: options.connect_timeout,
        keep_alive: options.keep_alive,
    };
    let client = timed(&endpoints, options.connect_timeout, etcd::connect(&target)).await?;
    let mut kv = etcd::kv_client(&client);

    let config_key = Key::ClusterConfig(config.name.clone()).to_string();
    let mut resp = timed(
        &endpoints,
        options.request_timeout,
        kv.get(config_key.clone(), None),
    )
    .await?;
    let value = resp
        .take_kvs()
        .into_iter()
        .next()
        .ok_or_else(|| RemoteError::NoClusterConfig {
            key: config_key.clone(),
        })?;
    let cluster_config: ClusterConfig = serde_json::from_slice(value.value())
        .map_err(|e| RemoteError::ClusterConfig(e.to_string()))?;
    let id = check_id(config, options, &cluster_config)?;
    let canaries = cluster_config.capabilities.synced_canaries;
    send(tx, Msg::Configured { id, canaries }).await?;

    let origin = Origin {
        name: &config.name,
        id,
    };
    let (revision, kvs) = timed(
        &endpoints,
        options.request_timeout,
        etcd::list_prefix(&mut kv, ROOT, options.list_page),
    )
    .await?;
    let mut state = ClusterState::default();
    let mut synced = SyncStatus::default();
    let mut rejected = 0;
    for kv in kvs {
        match decode_put(kv.key(), kv.value(), origin) {
            Ok(Some(Decoded::Entry(entry))) => {
                state.upsert(entry);
            }
            Ok(Some(Decoded::Synced(kind))) => synced.set(kind, true),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(cluster = %config.name, %why, "clustermesh remote: value rejected");
                rejected += 1;
            }
        }
    }
    if !canaries {
        synced = SyncStatus {
            nodes: true,
            endpoints: true,
            identities: true,
            services: true,
        };
    }
    send(
        tx,
        Msg::Listed {
            state,
            synced,
            rejected,
        },
    )
    .await?;

    let options_watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch_client = client.watch_client();
    let mut stream = timed(
        &endpoints,
        options.request_timeout,
        watch_client.watch(ROOT, Some(options_watch)),
    )
    .await?;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|e| etcd_error(&endpoints, &e))?
            .ok_or(RemoteError::WatchEnded)?;
        if resp.canceled() {
            return Err(RemoteError::WatchCanceled(resp.cancel_reason().to_owned()));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.key() == config_key.as_bytes() {
                cluster_config_still(kv, event.event_type(), &config_key, id)?;
                continue;
            }
            let msg = match event.event_type() {
                EventType::Put => match decode_put(kv.key(), kv.value(), origin) {
                    Ok(Some(Decoded::Entry(entry))) => Msg::Upsert(entry),
                    Ok(Some(Decoded::Synced(kind))) => Msg::Synced(kind),
                    Ok(None) => continue,
                    Err(why) => Msg::Rejected(why),
                },
                EventType::Delete => match deleted_entry(kv.key(), origin) {
                    Some(key) => Msg::Delete(key),
                    None => continue,
                },
            };
            send(tx, msg).await?;
        }
    }
}

/// The remote changed its cluster-config while we watched: fine if the id stays, else the session ends
/// and the next one checks the new config from scratch.
fn cluster_config_still(
    kv: &etcd_client::KeyValue,
    event: EventType,
    key: &str,
    id: ClusterId,
) -> Result<(), RemoteError> {
    if event == EventType::Delete {
        return Err(RemoteError::NoClusterConfig {
            key: key.to_owned(),
        });
    }
    let announced: ClusterConfig = serde_json::from_slice(kv.value())
        .map_err(|e| RemoteError::ClusterConfig(e.to_string()))?;
    if announced.id != u32::from(id.get()) {
        let found = u8::try_from(announced.id).ok().and_then(ClusterId::new);
        return Err(match found {
            Some(found) => RemoteError::IdMismatch {
                found,
                expected: id,
            },
            None => RemoteError::ClusterConfig(format!("id {} is not in 1..=255", announced.id)),
        });
    }
    Ok(())
}

fn check_id(
    config: &RemoteConfig,
    options: &RemoteOptions,
    announced: &ClusterConfig,
) -> Result<ClusterId, RemoteError> {
    let id = u8::try_from(announced.id)
        .ok()
        .and_then(ClusterId::new)
        .ok_or_else(|| {
            RemoteError::ClusterConfig(format!("id {} is not in 1..=255", announced.id))
        })?;
    if let Some(expected) = config.expected_id.filter(|e| *e != id) {
        return Err(RemoteError::IdMismatch {
            found: id,
            expected,
        });
    }
    if options.local_id == Some(id) {
        return Err(RemoteError::OwnId(id));
    }
    let mut claims = options
        .claims
        .lock()
        .map_err(|_| RemoteError::ClusterConfig("id claims poisoned".into()))?;
    if let Some(other) = claims.get(&id).filter(|other| **other != config.name) {
        let other = other.clone();
        return Err(RemoteError::IdInUse { id, other });
    }
    // A remote that changed its id gives up the old one.
    claims.retain(|_, name| *name != config.name);
    claims.insert(id, config.name.clone());
    Ok(id)
}

enum Decoded {
    Entry(Entry),
    Synced(Kind),
}

/// A put under `cilium/`: an entry, a canary, nothing of ours (`None`), or a refusal naming the key.
fn decode_put(key: &[u8], value: &[u8], origin: Origin<'_>) -> Result<Option<Decoded>, String> {
    let key = std::str::from_utf8(key).map_err(|_| format!("key {key:?} is not UTF-8"))?;
    let key = match Key::parse(key) {
        Ok(key) => key,
        Err(KeyError::Foreign(_)) => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let record = Record::decode(&key, value, origin).map_err(|e| e.to_string())?;
    if let Record::SyncCanary(kind) = record {
        return Ok(Some(Decoded::Synced(kind)));
    }
    let entry = Entry::from_record(&key, record).map_err(|e| e.to_string())?;
    Ok(entry.map(Decoded::Entry))
}

/// The entry a deleted key named, if it was one of `origin`'s.
fn deleted_entry(key: &[u8], origin: Origin<'_>) -> Option<EntryKey> {
    let ours = |cluster: &ClusterName| cluster == origin.name;
    match Key::parse(std::str::from_utf8(key).ok()?).ok()? {
        Key::Node { cluster, node } if ours(&cluster) => Some(EntryKey::Node(node)),
        Key::Service {
            cluster,
            namespace,
            name,
        } if ours(&cluster) => Some(EntryKey::Service(crate::state::ServiceName {
            namespace,
            name,
        })),
        Key::Identity(id) => Some(EntryKey::Identity(id)),
        Key::Endpoint(ip) => Some(EntryKey::Endpoint(Addr::from(ip))),
        _ => None,
    }
}

async fn send(tx: &mpsc::Sender<Msg>, msg: Msg) -> Result<(), RemoteError> {
    // The remote's task is gone (cancelled): end the session quietly.
    tx.send(msg).await.map_err(|_| RemoteError::WatchEnded)
}

fn etcd_error(endpoints: &str, err: &etcd_client::Error) -> RemoteError {
    RemoteError::Etcd {
        endpoints: endpoints.to_owned(),
        detail: etcd::describe(err),
    }
}

async fn timed<T>(
    endpoints: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RemoteError> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result.map_err(|e| etcd_error(endpoints, &e)),
        Err(_) => Err(RemoteError::Timeout {
            endpoints: endpoints.to_owned(),
            after,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(name: &str, expected: Option<u8>) -> RemoteConfig {
        RemoteConfig {
            name: ClusterName::new(name).unwrap(),
            path: PathBuf::from(name),
            endpoints: vec!["https://127.0.0.1:2379".into()],
            tls: None,
            tls_paths: vec![],
            expected_id: expected.and_then(ClusterId::new),
        }
    }

    #[test]
    fn the_announced_id_must_be_expected_foreign_and_unclaimed() {
        let options = RemoteOptions {
            local_id: ClusterId::new(1),
            ..Default::default()
        };
        let id = |n: u32| ClusterConfig {
            id: n,
            ..ClusterConfig::new(0)
        };
        assert!(matches!(
            check_id(&config("cluster2", Some(2)), &options, &id(3)),
            Err(RemoteError::IdMismatch { .. })
        ));
        assert!(matches!(
            check_id(&config("cluster2", None), &options, &id(1)),
            Err(RemoteError::OwnId(_))
        ));
        assert!(matches!(
            check_id(&config("cluster2", None), &options, &id(0)),
            Err(RemoteError::ClusterConfig(_))
        ));
        assert!(matches!(
            check_id(&config("cluster2", None), &options, &id(256)),
            Err(RemoteError::ClusterConfig(_))
        ));
        assert_eq!(
            check_id(&config("cluster2", Some(2)), &options, &id(2)).ok(),
            ClusterId::new(2)
        );
        assert_eq!(
            check_id(&config("cluster2", None), &options, &id(2)).ok(),
            ClusterId::new(2),
            "reconnecting keeps the claim"
        );
        let err = check_id(&config("cluster3", None), &options, &id(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster-config announces id 2, already used by remote `cluster2`"
        );
        let moved = check_id(&config("cluster2", None), &options, &id(4));
        assert!(moved.is_ok(), "cluster2 moves to 4");
        let freed = check_id(&config("cluster3", None), &options, &id(2));
        assert!(freed.is_ok(), "2 is free again");
    }

    #[test]
    fn deletes_name_only_entries_of_the_origin() {
        let name = ClusterName::new("cluster2").unwrap();
        let origin = Origin {
            name: &name,
            id: ClusterId::new(2).unwrap(),
        };
        let node = deleted_entry(b"cilium/state/nodes/v1/cluster2/n1", origin);
        assert_eq!(node, Some(EntryKey::Node("n1".into())));
        assert_eq!(
            deleted_entry(b"cilium/state/nodes/v1/cluster3/n1", origin),
            None
        );
        assert_eq!(
            deleted_entry(b"cilium/synced/cluster2/cilium/state/nodes/v1", origin),
            None
        );
        assert!(matches!(
            deleted_entry(b"cilium/state/ip/v1/default/10.0.0.1", origin),
            Some(EntryKey::Endpoint(_))
        ));
    }

    #[test]
    fn puts_of_foreign_keys_are_ignored_and_bad_ones_named() {
        let name = ClusterName::new("cluster2").unwrap();
        let origin = Origin {
            name: &name,
            id: ClusterId::new(2).unwrap(),
        };
        assert!(matches!(
            decode_put(
                b"cilium/state/identities/v1/value/k8s:a=b;/n1",
                b"131073",
                origin
            ),
            Ok(None)
        ));
        let err = decode_put(b"cilium/state/ip/v1/default/10.0.0.1", b"{", origin)
            .err()
            .unwrap();
        assert!(
            err.starts_with("cilium/state/ip/v1/default/10.0.0.1:"),
            "{err}"
        );
    }
}
