//! One connection to a remote cluster's etcd, from dial to watch: check the cluster-config, list
//! everything under `cilium/` at one revision, then watch from the next. It reports to its remote's
//! task over a channel and ends with [`Msg::Failed`]; reconnecting is the remote task's business.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, EventType, KeyValue, KvClient, WatchOptions};
use meshpath_dataplane::{Addr, ClusterId};
use tokio::sync::mpsc;

use super::config::RemoteConfig;
use super::remote::{RemoteError, RemoteOptions};
use super::status::SyncStatus;
use crate::cluster_name::ClusterName;
use crate::etcd::{self, EtcdTarget};
use crate::kvstore::{ClusterConfig, Key, KeyError, Kind, Origin, Record, ROOT};
use crate::state::{ClusterState, Entry, EntryKey};

/// What a session reports to its remote's task.
pub(super) enum Msg {
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
    let announced: ClusterConfig = serde_json::from_slice(value.value())
        .map_err(|e| RemoteError::ClusterConfig(e.to_string()))?;
    let id = check_id(config, options, &announced)?;
    let canaries = announced.capabilities.synced_canaries;
    send(tx, Msg::Configured { id, canaries }).await?;

    let origin = Origin {
        name: &config.name,
        id,
    };
    let revision = list(&mut kv, &endpoints, options, origin, canaries, tx).await?;
    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    watch_changes(&client, &endpoints, options, watch, &config_key, origin, tx).await
}

/// Lists everything at one revision and reports it as one [`Msg::Listed`]; returns the revision.
async fn list(
    kv: &mut KvClient,
    endpoints: &str,
    options: &RemoteOptions,
    origin: Origin<'_>,
    canaries: bool,
    tx: &mpsc::Sender<Msg>,
) -> Result<i64, RemoteError> {
    let listing = etcd::list_prefix(kv, ROOT, options.list_page);
    let (revision, kvs) = timed(endpoints, options.request_timeout, listing).await?;
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
                tracing::warn!(cluster = %origin.name, %why, "clustermesh remote: value rejected");
                rejected += 1;
            }
        }
    }
    if !canaries {
        // A remote that writes no canaries is complete as soon as it is listed.
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
    Ok(revision)
}

/// Reports every change until the watch fails; it only returns with the reason it ended.
async fn watch_changes(
    client: &Client,
    endpoints: &str,
    options: &RemoteOptions,
    watch: WatchOptions,
    config_key: &str,
    origin: Origin<'_>,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), RemoteError> {
    let mut watch_client = client.watch_client();
    let start = watch_client.watch(ROOT, Some(watch));
    let mut stream = timed(endpoints, options.request_timeout, start).await?;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|e| etcd_error(endpoints, &e))?;
        let resp = resp.ok_or(RemoteError::WatchEnded)?;
        if resp.canceled() {
            return Err(RemoteError::WatchCanceled(resp.cancel_reason().to_owned()));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.key() == config_key.as_bytes() {
                cluster_config_still(kv, event.event_type(), config_key, origin.id)?;
            } else if let Some(msg) = change(kv, event.event_type(), origin) {
                send(tx, msg).await?;
            }
        }
    }
}

/// What one watched event means for the remote's state; `None` for keys that are not ours.
fn change(kv: &KeyValue, event: EventType, origin: Origin<'_>) -> Option<Msg> {
    match event {
        EventType::Put => match decode_put(kv.key(), kv.value(), origin) {
            Ok(Some(Decoded::Entry(entry))) => Some(Msg::Upsert(entry)),
            Ok(Some(Decoded::Synced(kind))) => Some(Msg::Synced(kind)),
            Ok(None) => None,
            Err(why) => Some(Msg::Rejected(why)),
        },
        EventType::Delete => deleted_entry(kv.key(), origin).map(Msg::Delete),
    }
}

/// The remote changed its cluster-config while we watched: fine if the id stays, else the session ends
/// and the next one checks the new config from scratch.
fn cluster_config_still(
    kv: &KeyValue,
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
