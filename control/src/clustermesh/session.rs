//! One connection to a remote cluster's etcd, from dial to watch: check the cluster-config, list
//! everything under `cilium/` at one revision, then watch from the next. It reports to its remote's
//! task over a channel and ends with [`Msg::Failed`]; reconnecting is the remote task's business.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, EventType, KeyValue, KvClient, WatchOptions};
use meshpath_dataplane::{Addr, ClusterId};
use tokio::sync::mpsc;

use super::config::RemoteConfig;
use super::limits::{held_footprint, RemoteLimits, Usage};
use super::remote::{RemoteError, RemoteOptions};
use super::status::SyncStatus;
use crate::cluster_name::ClusterName;
use crate::etcd::{self, EtcdTarget};
use crate::kvstore::{is_ipv4_mapped, ClusterConfig, Key, KeyError, Kind, Origin, Record, ROOT};
use crate::refusal::{Refusal, RefusalCounts};
use crate::state::{ClusterState, Entry, EntryKey};

/// What a session reports to its remote's task.
pub(super) enum Msg {
    Configured {
        id: ClusterId,
        canaries: bool,
    },
    Listed(Box<Listing>),
    /// A key now holding a good value.
    Upsert {
        key: String,
        entry: Entry,
    },
    /// A key deleted; `entry` is what it held, if it was one of ours.
    Delete {
        key: String,
        entry: Option<EntryKey>,
    },
    Synced(Kind),
    Refused(Refused),
    /// The watch broke (its etcd member went away, say): disconnected until it is resumed.
    WatchBroken(String),
    /// The broken watch was opened again from the revision after the last one seen: nothing missed,
    /// nothing listed again.
    WatchResumed,
    Failed(RemoteError),
}

/// A key whose value is not believed.
#[derive(Debug)]
pub(super) struct Refused {
    pub key: String,
    /// The entry the key names, when it names one: what it held before is not believed either.
    pub entry: Option<EntryKey>,
    pub reason: Refusal,
    pub detail: String,
}

/// A full listing, already held to the remote's limits.
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub state: ClusterState,
    pub usage: Usage,
    pub refused: Vec<Refused>,
    pub synced: SyncStatus,
    /// Keys left out past a limit, per limit.
    pub ignored: RefusalCounts,
}

pub(super) async fn run_session(
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
    let get = kv.get(config_key.clone(), None);
    let mut resp = timed(&endpoints, options.request_timeout, get).await?;
    let value = resp.take_kvs().into_iter().next();
    let value = value.ok_or_else(|| RemoteError::NoClusterConfig {
        key: config_key.clone(),
    })?;
    let announced = cluster_config(value.value(), &options.limits)?;
    let id = check_id(config, options, &announced)?;
    let canaries = announced.capabilities.synced_canaries;
    send(tx, Msg::Configured { id, canaries }).await?;

    let origin = Origin {
        name: &config.name,
        id,
    };
    let revision = list(&mut kv, &endpoints, options, origin, canaries, tx).await?;
    let mut next = revision + 1;
    let mut quick_failures = 0;
    let mut resuming = false;
    loop {
        let started = std::time::Instant::now();
        let watch = Watch {
            next: &mut next,
            resuming,
            config_key: &config_key,
        };
        let err = match watch_changes(&client, &endpoints, options, watch, origin, tx).await {
            Err(
                err @ (RemoteError::Etcd { .. }
                | RemoteError::Timeout { .. }
                | RemoteError::WatchEnded),
            ) => err,
            other => return other,
        };
        // A watch that ran a while broke (its member went away): resume it from the next revision
        // through the client, which reaches the other members. One that cannot be opened again
        // soon ends the session: the remote is unreachable, and the next session lists it again.
        quick_failures = if started.elapsed() > options.request_timeout {
            0
        } else {
            quick_failures + 1
        };
        if quick_failures > MAX_QUICK_RESUMES {
            return Err(err);
        }
        tracing::info!(cluster = %config.name, from = next, %err, "watch broken: resuming it from the next revision");
        send(tx, Msg::WatchBroken(err.to_string())).await?;
        tokio::time::sleep(options.backoff_min).await;
        resuming = true;
    }
}

/// Resumptions of a watch that broke again at once before the session gives up.
const MAX_QUICK_RESUMES: u32 = 1;

/// Where a watch starts: `next` is the revision after the last one seen, advanced as events come.
struct Watch<'a> {
    next: &'a mut i64,
    /// A broken watch opened again: says so once etcd has accepted it.
    resuming: bool,
    config_key: &'a str,
}

fn cluster_config(value: &[u8], limits: &RemoteLimits) -> Result<ClusterConfig, RemoteError> {
    if value.len() > limits.max_value_bytes {
        return Err(RemoteError::ClusterConfig(format!(
            "{} bytes, over the {}-byte value limit",
            value.len(),
            limits.max_value_bytes
        )));
    }
    serde_json::from_slice(value).map_err(|e| RemoteError::ClusterConfig(e.to_string()))
}

/// Lists the remote's state prefix by prefix at one revision, held to its limits, and reports it as
/// one [`Msg::Listed`]; returns the revision. Past the key limit the rest of the state is not read
/// (only counted); the canaries always are.
async fn list(
    kv: &mut KvClient,
    endpoints: &str,
    options: &RemoteOptions,
    origin: Origin<'_>,
    canaries: bool,
    tx: &mpsc::Sender<Msg>,
) -> Result<i64, RemoteError> {
    let mut listing = Listing::default();
    let mut revision = 0;
    let limits = &options.limits;
    for prefix in Key::LISTED {
        let state = prefix != Key::LISTED[4];
        let pages = etcd::list_pages(kv, prefix, options.list_page, revision, |kvs| {
            for kv in kvs {
                listing.take(kv.key(), kv.value(), origin, limits);
            }
            !state || listing.usage.keys < limits.max_keys
        });
        let (read_at, unread) = timed(endpoints, options.request_timeout, pages).await?;
        revision = read_at;
        if unread > 0 {
            *listing.ignored.entry(Refusal::OverKeyLimit).or_default() += unread;
        }
    }
    if !canaries {
        // A remote that writes no canaries is complete as soon as it is listed.
        listing.synced = SyncStatus {
            nodes: true,
            endpoints: true,
            identities: true,
            services: true,
        };
    }
    send(tx, Msg::Listed(Box::new(listing))).await?;
    Ok(revision)
}

impl Listing {
    /// One listed key: an entry if it is good and fits, else refused or ignored.
    fn take(&mut self, key: &[u8], value: &[u8], origin: Origin<'_>, limits: &RemoteLimits) {
        let fits = match decode_put(key, value, origin, limits) {
            Ok(Received::Entry(entry)) => {
                let old = held_footprint(&self.state, &entry.key());
                let fits = self.usage.admit(limits, &entry, old);
                if fits.is_ok() {
                    self.state.upsert(entry);
                }
                fits
            }
            Ok(Received::Synced(kind)) => {
                self.synced.set(kind, true);
                Ok(())
            }
            Ok(Received::Foreign) => Ok(()),
            Err(refused) => {
                let fits = self.usage.admit_refused(limits, &refused.key);
                if fits.is_ok() {
                    self.refused.push(refused);
                }
                fits
            }
        };
        if let Err(limit) = fits {
            *self.ignored.entry(limit).or_default() += 1;
        }
    }
}

/// Reports every change until the watch fails; it only returns with the reason it ended.
async fn watch_changes(
    client: &Client,
    endpoints: &str,
    options: &RemoteOptions,
    watch: Watch<'_>,
    origin: Origin<'_>,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), RemoteError> {
    let Watch {
        next,
        mut resuming,
        config_key,
    } = watch;
    let mut watch_client = client.watch_client();
    let options_from = WatchOptions::new().with_prefix().with_start_revision(*next);
    let start = watch_client.watch(ROOT, Some(options_from));
    let mut stream = timed(endpoints, options.request_timeout, start).await?;
    loop {
        let message = stream.message();
        let resp = if resuming {
            timed(endpoints, options.request_timeout, message).await?
        } else {
            message.await.map_err(|e| etcd_error(endpoints, &e))?
        };
        let resp = resp.ok_or(RemoteError::WatchEnded)?;
        if resp.canceled() {
            return Err(RemoteError::WatchCanceled(resp.cancel_reason().to_owned()));
        }
        if std::mem::take(&mut resuming) {
            send(tx, Msg::WatchResumed).await?;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            *next = (*next).max(kv.mod_revision() + 1);
            if kv.key() == config_key.as_bytes() {
                cluster_config_still(
                    kv,
                    event.event_type(),
                    config_key,
                    origin.id,
                    &options.limits,
                )?;
            } else if let Some(msg) = change(kv, event.event_type(), origin, &options.limits) {
                send(tx, msg).await?;
            }
        }
    }
}

/// What one watched event means for the remote's state; `None` for keys that are not ours.
fn change(
    kv: &KeyValue,
    event: EventType,
    origin: Origin<'_>,
    limits: &RemoteLimits,
) -> Option<Msg> {
    let key = || String::from_utf8_lossy(kv.key()).into_owned();
    match event {
        EventType::Put => match decode_put(kv.key(), kv.value(), origin, limits) {
            Ok(Received::Entry(entry)) => Some(Msg::Upsert { key: key(), entry }),
            Ok(Received::Synced(kind)) => Some(Msg::Synced(kind)),
            Ok(Received::Foreign) => None,
            Err(refused) => Some(Msg::Refused(refused)),
        },
        EventType::Delete => {
            let key = key();
            let parsed = Key::parse(&key).ok()?;
            let entry = entry_key(&parsed, origin);
            Some(Msg::Delete { key, entry })
        }
    }
}

/// The remote changed its cluster-config while we watched: fine if the id stays, else the session ends
/// and the next one checks the new config from scratch.
fn cluster_config_still(
    kv: &KeyValue,
    event: EventType,
    key: &str,
    id: ClusterId,
    limits: &RemoteLimits,
) -> Result<(), RemoteError> {
    if event == EventType::Delete {
        return Err(RemoteError::NoClusterConfig {
            key: key.to_owned(),
        });
    }
    let announced = cluster_config(kv.value(), limits)?;
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
    let joined = options.joined.as_ref() == Some(&config.name);
    if options.local_id == Some(id) && !joined {
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

/// A good put under `cilium/`.
enum Received {
    Entry(Entry),
    Synced(Kind),
    /// A key outside the layout we read (other Cilium state): nothing of ours.
    Foreign,
}

/// What a watcher makes of a remote's put: the entry it admits, if any (canaries, foreign keys and
/// refusals carry none). The same checks the watcher runs, for the fuzzer of remote bytes.
pub fn decode_remote_entry(
    key: &[u8],
    value: &[u8],
    origin: Origin<'_>,
    limits: &RemoteLimits,
) -> Option<Entry> {
    match decode_put(key, value, origin, limits) {
        Ok(Received::Entry(entry)) => Some(entry),
        _ => None,
    }
}

/// A put under `cilium/`: an entry, a canary, nothing of ours, or a refusal naming the key and why.
fn decode_put(
    key: &[u8],
    value: &[u8],
    origin: Origin<'_>,
    limits: &RemoteLimits,
) -> Result<Received, Refused> {
    let text = String::from_utf8_lossy(key);
    let refused = |entry, reason, detail: String| Refused {
        key: text.clone().into_owned(),
        entry,
        reason,
        detail,
    };
    let Ok(key_text) = std::str::from_utf8(key) else {
        return Err(refused(
            None,
            Refusal::Malformed,
            "the key is not UTF-8".into(),
        ));
    };
    let key = match Key::parse(key_text) {
        Ok(key) => key,
        Err(KeyError::Foreign(_)) => return Ok(Received::Foreign),
        Err(err) => return Err(refused(None, Refusal::Malformed, err.to_string())),
    };
    let entry = entry_key(&key, origin);
    if value.len() > limits.max_value_bytes {
        let why = format!(
            "{} bytes, over the {}-byte value limit: not parsed",
            value.len(),
            limits.max_value_bytes
        );
        return Err(refused(entry, Refusal::ValueTooLarge, why));
    }
    let record = Record::decode(&key, value, origin)
        .map_err(|e| refused(entry.clone(), e.refusal(), e.to_string()))?;
    if let Record::SyncCanary(kind) = record {
        return Ok(Received::Synced(kind));
    }
    match Entry::from_record(&key, record) {
        Ok(Some(entry)) => Ok(Received::Entry(entry)),
        Ok(None) => Ok(Received::Foreign),
        Err(err) => Err(refused(entry, Refusal::Malformed, err.to_string())),
    }
}

/// The entry a key names, if it is one of `origin`'s (an IPv4-mapped endpoint key names none: it
/// would alias the IPv4 endpoint).
fn entry_key(key: &Key, origin: Origin<'_>) -> Option<EntryKey> {
    let ours = |cluster: &ClusterName| cluster == origin.name;
    match key {
        Key::Node { cluster, node } if ours(cluster) => Some(EntryKey::Node(node.clone())),
        Key::Service {
            cluster,
            namespace,
            name,
        } if ours(cluster) => Some(EntryKey::Service(crate::state::ServiceName {
            namespace: namespace.clone(),
            name: name.clone(),
        })),
        Key::Identity(id) => Some(EntryKey::Identity(*id)),
        Key::Endpoint(ip) if !is_ipv4_mapped(ip) => Some(EntryKey::Endpoint(Addr::from(*ip))),
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
    fn only_the_joined_cluster_may_announce_the_external_workloads_own_id() {
        let options = RemoteOptions {
            local_id: ClusterId::new(1),
            joined: Some(ClusterName::new("cluster1").unwrap()),
            ..Default::default()
        };
        let one = ClusterConfig {
            id: 1,
            ..ClusterConfig::new(0)
        };
        assert_eq!(
            check_id(&config("cluster1", Some(1)), &options, &one).ok(),
            ClusterId::new(1)
        );
        assert!(matches!(
            check_id(&config("cluster2", None), &options, &one),
            Err(RemoteError::OwnId(_))
        ));
    }

    fn origin(name: &ClusterName) -> Origin<'_> {
        Origin {
            name,
            id: ClusterId::new(2).unwrap(),
        }
    }

    fn named(key: &str, origin: Origin<'_>) -> Option<EntryKey> {
        entry_key(&Key::parse(key).unwrap(), origin)
    }

    #[test]
    fn keys_name_only_entries_of_the_origin() {
        let name = ClusterName::new("cluster2").unwrap();
        let origin = origin(&name);
        let node = named("cilium/state/nodes/v1/cluster2/n1", origin);
        assert_eq!(node, Some(EntryKey::Node("n1".into())));
        assert_eq!(named("cilium/state/nodes/v1/cluster3/n1", origin), None);
        assert_eq!(
            named("cilium/synced/cluster2/cilium/state/nodes/v1", origin),
            None
        );
        assert!(matches!(
            named("cilium/state/ip/v1/default/10.0.0.1", origin),
            Some(EntryKey::Endpoint(_))
        ));
        assert_eq!(
            named("cilium/state/ip/v1/default/::ffff:10.0.0.1", origin),
            None,
            "a mapped key must not name (and delete) the IPv4 endpoint"
        );
    }

    #[test]
    fn puts_of_foreign_keys_are_ignored_and_bad_ones_named() {
        let name = ClusterName::new("cluster2").unwrap();
        let limits = RemoteLimits::default();
        let decode = |key: &[u8], value: &[u8]| decode_put(key, value, origin(&name), &limits);
        assert!(matches!(
            decode(b"cilium/state/identities/v1/value/k8s:a=b;/n1", b"131073"),
            Ok(Received::Foreign)
        ));
        let err = decode(b"cilium/state/ip/v1/default/10.0.0.1", b"{")
            .err()
            .unwrap();
        assert_eq!(err.key, "cilium/state/ip/v1/default/10.0.0.1");
        assert_eq!(err.reason, Refusal::Malformed);
        assert!(matches!(err.entry, Some(EntryKey::Endpoint(_))), "{err:?}");
        let err = decode(b"cilium/state/ip/v1/default/10.0.0.1.5", b"{}")
            .err()
            .unwrap();
        assert_eq!((err.reason, err.entry), (Refusal::Malformed, None));
        let err = decode(b"cilium/\xff", b"").err().unwrap();
        assert_eq!(err.reason, Refusal::Malformed);
    }

    #[test]
    fn a_value_over_the_size_limit_is_refused_unread() {
        let name = ClusterName::new("cluster2").unwrap();
        let limits = RemoteLimits {
            max_value_bytes: 1024,
            ..RemoteLimits::default()
        };
        // Ten megabytes of a JSON value that would take a while to parse, were it parsed.
        let mut huge = b"{\"IP\":\"10.0.0.1\",\"ID\":131073,\"K8sPodName\":\"".to_vec();
        huge.resize(10 << 20, b'a');
        huge.extend_from_slice(b"\"}");
        let err = decode_put(
            b"cilium/state/ip/v1/default/10.0.0.1",
            &huge,
            origin(&name),
            &limits,
        )
        .err()
        .unwrap();
        assert_eq!(err.reason, Refusal::ValueTooLarge);
        assert!(err.detail.contains("10485762 bytes"), "{}", err.detail);
        let config = cluster_config(&huge, &limits).unwrap_err();
        assert!(config.to_string().contains("value limit"), "{config}");
    }
}
