//! One remote cluster: a tokio task that connects to the remote's etcd over mutual TLS, checks its
//! cluster-config, lists everything under `cilium/` at one revision, watches from the next revision, and
//! emits [`RemoteEvent`]s for every change. After a disconnect it retries with backoff and resyncs fully;
//! while it cannot reach the remote the entries stay for a grace period and are then withdrawn —
//! except the cluster an external workload joined ([`RemoteOptions::joined`]), which is its own
//! cluster: its last state stays until its etcd answers again, as a node keeps its own cluster's.
//!
//! The etcd session runs as a child task and reports over a channel, so the grace timer and cancellation
//! keep working while a connection attempt hangs.
//!
//! What the session refuses on receipt is remembered per key (counted and logged once, see
//! [`Refusals`]), and a key refused after it held a good value takes that value away: what a remote
//! no longer vouches for is not kept. The remote's limits ([`RemoteLimits`]) are held here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshpath_dataplane::ClusterId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::config::RemoteConfig;
use super::limits::{held_footprint, RemoteLimits, Usage};
use super::mirror::Mirror;
use super::session::{run_session, Listing, Msg, Refused};
use super::status::{MeshStatus, RemoteStatus};
use crate::cluster_name::ClusterName;
use crate::kvstore::Kind;
use crate::refusal::{Refusal, RefusalCounts, Refusals};
use crate::state::{ClusterState, Entry, StateEvent};

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
    /// This cluster's own id, which no remote may announce but [`RemoteOptions::joined`].
    pub local_id: Option<ClusterId>,
    /// On an external workload: the cluster it joined, watched as a remote of the same name and id.
    pub joined: Option<ClusterName>,
    pub claims: IdClaims,
    pub limits: RemoteLimits,
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
            joined: None,
            claims: IdClaims::default(),
            limits: RemoteLimits::default(),
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
    let mut status = RemoteStatus::new(&config.name, config.endpoints.len());
    status.limits = options.limits;
    status.mutual_tls = config.tls.is_some();
    let refusals = Refusals::new(config.name.to_string());
    let remote = Remote {
        config: Arc::new(config),
        options,
        events,
        board,
        cancel: cancel.clone(),
        mirror: Mirror::new(seed),
        refusals,
        refused_usage: Usage::default(),
        ignored: RefusalCounts::new(),
        status,
        down_since: Some(Instant::now()),
        withdrawn: false,
    };
    RemoteHandle {
        cancel,
        task: tokio::spawn(remote.run()),
    }
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
    /// Keys refused on receipt, by key.
    refusals: Refusals<String>,
    /// What remembering the refused keys costs against the limits.
    refused_usage: Usage,
    /// Keys ignored past a limit since the last listing, per limit.
    ignored: RefusalCounts,
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
                    Msg::Listed(listing) => {
                        backoff = self.options.backoff_min;
                        self.on_listed(*listing).await;
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
        if self.options.joined.as_ref() == Some(&self.config.name) {
            return None;
        }
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

    async fn on_listed(&mut self, listing: Listing) {
        self.status.listings += 1;
        self.status.connected = true;
        self.status.connected_since = Some(SystemTime::now());
        self.status.disconnected_since = None;
        self.status.withdrawn_at = None;
        self.down_since = None;
        self.withdrawn = false;
        let listed: std::collections::HashSet<&str> =
            listing.refused.iter().map(|r| r.key.as_str()).collect();
        self.refusals.retain(|key| listed.contains(key.as_str()));
        for refused in listing.refused {
            self.remember(refused);
        }
        self.refused_usage = Usage::default();
        for key in self.refusals.keys() {
            self.refused_usage.add_refused(key);
        }
        self.ignored = listing.ignored;
        let events = self.mirror.resync(listing.state, listing.synced);
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
            Msg::Upsert { key, entry } => self.on_upsert(&key, entry),
            Msg::Delete { key, entry } => {
                self.forget_refusal(&key);
                entry
                    .and_then(|e| self.mirror.delete(e))
                    .into_iter()
                    .collect()
            }
            Msg::Synced(kind) => self.mirror.mark_synced(kind),
            Msg::Refused(refused) => self.on_refused(refused),
            Msg::WatchBroken(error) => {
                self.status.failures += 1;
                self.status.last_failure = Some(SystemTime::now());
                self.status.connected = false;
                self.status.disconnected_since = Some(SystemTime::now());
                self.status.last_error = Some(error);
                return;
            }
            Msg::WatchResumed => {
                self.status.watch_resumes += 1;
                self.status.connected = true;
                self.status.disconnected_since = None;
                return;
            }
            Msg::Listed(_) | Msg::Failed(_) => return,
        };
        self.emit(events).await;
    }

    /// A good value: taken if it fits the limits; if not, ignored, and what the key held goes too.
    fn on_upsert(&mut self, key: &str, entry: Entry) -> Vec<StateEvent> {
        self.forget_refusal(key);
        let entry_key = entry.key();
        let old = held_footprint(self.mirror.state(), &entry_key);
        let mut total = self.mirror.usage().plus(self.refused_usage);
        match total.admit(&self.options.limits, &entry, old) {
            Ok(()) => self.mirror.upsert(entry).into_iter().collect(),
            Err(limit) => {
                self.over_limit(limit, key);
                self.mirror.delete(entry_key).into_iter().collect()
            }
        }
    }

    /// A refused value: remembered (if the limits allow), and what the key held is withdrawn.
    fn on_refused(&mut self, refused: Refused) -> Vec<StateEvent> {
        let withdrawn: Vec<StateEvent> = refused
            .entry
            .clone()
            .and_then(|e| self.mirror.delete(e))
            .into_iter()
            .collect();
        if self.refusals.reason(&refused.key).is_none() {
            let mut total = self.mirror.usage().plus(self.refused_usage);
            if let Err(limit) = total.admit_refused(&self.options.limits, &refused.key) {
                self.over_limit(limit, &refused.key);
                return withdrawn;
            }
            self.refused_usage.add_refused(&refused.key);
        }
        self.remember(refused);
        withdrawn
    }

    /// Notes a refused key (its usage is the caller's to count).
    fn remember(&mut self, refused: Refused) {
        let Refused {
            key,
            reason,
            detail,
            ..
        } = refused;
        self.refusals.refuse(key, reason, || detail);
    }

    fn forget_refusal(&mut self, key: &str) {
        if self.refusals.clear(&key.to_owned()) {
            self.refused_usage.remove_refused(key);
        }
    }

    fn over_limit(&mut self, limit: Refusal, key: &str) {
        let count = self.ignored.entry(limit).or_default();
        if *count == 0 {
            tracing::warn!(cluster = %self.config.name, %key, limit = limit.name(), limits = ?self.options.limits, "clustermesh remote degraded: keys past its limit are ignored");
        }
        *count += 1;
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
        self.status.usage = self.mirror.usage().plus(self.refused_usage);
        self.status.degraded = degraded(&self.ignored, &self.options.limits);
        let mut refused = self.refusals.counts().clone();
        refused.extend(self.ignored.iter().map(|(r, n)| (*r, *n)));
        self.status.set_refused_on_receipt(refused);
        self.status.ready =
            self.status.connected && self.status.synced.all() && self.status.degraded.is_none();
        let mut status = self.status.clone();
        self.board.send_if_modified(|b| {
            // What the snapshot builder found is its own to write.
            if let Some(current) = b.get(&self.config.name) {
                status.cidr_conflicts = current.cidr_conflicts.clone();
                status.set_refused_on_admission(current.refused_on_admission.clone());
            }
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

/// Why a remote is degraded: the limits it passed, and how many keys each left out.
fn degraded(ignored: &RefusalCounts, limits: &RemoteLimits) -> Option<String> {
    let parts: Vec<String> = ignored
        .iter()
        .map(|(limit, n)| {
            let bound = match limit {
                Refusal::OverKeyLimit => format!("the key limit ({})", limits.max_keys),
                Refusal::OverByteLimit => format!("the byte limit ({} bytes)", limits.max_bytes),
                Refusal::OverIdentityLimit => {
                    format!("the identity limit ({})", limits.max_identities)
                }
                other => other.name().to_owned(),
            };
            format!("{n} keys ignored past {bound}")
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
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
