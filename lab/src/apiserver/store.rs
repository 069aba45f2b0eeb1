//! The stand-in's objects: read from a directory of Kubernetes-shaped YAML (the lab's cluster state,
//! as the lab and the demo write it), each change since the last reading an event with the next
//! resourceVersion, as etcd's revision grows under a real API server.
//!
//! Events are kept from `compacted` on (at most [`HISTORY`] of them): a watch from an older version
//! gets 410 Gone, as a real server answers once etcd compacted. The objects and the version are saved
//! to the data directory after every change, so a restarted stand-in goes on from its version — a
//! watch from its last one resumes — with no history before it: a change made while it was down
//! makes older watches 410 Gone, and their clients list again.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use meshpath_control::local::Kind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Events kept for watches that resume.
pub const HISTORY: usize = 10_000;

/// An object's identity: its kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "ADDED")]
    Added,
    #[serde(rename = "MODIFIED")]
    Modified,
    #[serde(rename = "DELETED")]
    Deleted,
}

/// One change: the object as it is now (as it was last, for a deletion), and as it was before.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub key: Key,
    pub kind: EventType,
    pub object: Value,
    pub before: Option<Value>,
}

/// An object as served, and as its file wrote it (to tell a change).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    served: Value,
    written: Value,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    rv: u64,
    uids: u64,
    objects: Vec<Stored>,
}

pub struct Store {
    dir: PathBuf,
    data: PathBuf,
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Arc<Event>>,
    /// A watch from a version below this one missed events no longer kept.
    compacted: u64,
    /// The files as last read: (name, modified, length).
    seen: Vec<(PathBuf, Option<SystemTime>, u64)>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Store {
    /// The store of `dir`'s objects, going on from what `data` saved (if anything).
    pub fn open(dir: &Path, data: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let saved: Saved = match std::fs::read(data.join("store.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("the saved store")?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).context("reading the saved store"),
        };
        let (events, _) = broadcast::channel(HISTORY);
        let mut store = Store {
            dir: dir.to_path_buf(),
            data: data.to_path_buf(),
            rv: saved.rv,
            uids: saved.uids,
            objects: saved
                .objects
                .into_iter()
                .filter_map(|s| Some((key_of(&s.served)?, s)))
                .collect(),
            history: VecDeque::new(),
            compacted: saved.rv,
            seen: Vec::new(),
            events,
        };
        store.refresh()?;
        // What changed while no stand-in ran is no event: a watch from before it gets 410 Gone.
        store.compact();
        Ok(store)
    }

    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The objects of `kind`, sorted by namespace and name.
    pub fn list(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(move |(k, _)| k.kind == kind)
            .map(|(_, s)| &s.served)
    }

    /// The events after `rv`, or `None` when some of them are no longer kept (410 Gone).
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<Event>>> {
        if rv < self.compacted || rv > self.rv {
            return None;
        }
        Some(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Forgets every event so far: watches from before now get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Reads the directory again if a file changed, and turns the differences into events.
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let seen = files(&self.dir)?;
        if seen == self.seen {
            return Ok(());
        }
        let written = read_objects(&seen)?;
        self.seen = seen;
        let mut changed = false;
        let gone: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| !written.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let Some(old) = self.objects.remove(&key) else {
                continue;
            };
            let mut object = old.served.clone();
            self.rv += 1;
            object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            self.record(key, EventType::Deleted, object, Some(old.served));
            changed = true;
        }
        for (key, object) in written {
            let before = self.objects.get(&key);
            if before.is_some_and(|s| s.written == object) {
                continue;
            }
            let before = before.map(|s| s.served.clone());
            self.rv += 1;
            let served = self.serve(&key, &object, before.as_ref());
            self.objects.insert(
                key.clone(),
                Stored {
                    served: served.clone(),
                    written: object,
                },
            );
            let kind = match before {
                Some(_) => EventType::Modified,
                None => EventType::Added,
            };
            self.record(key, kind, served, before);
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// The object as the server returns it: with its type, namespace, uid, creation time and version.
    fn serve(&mut self, key: &Key, written: &Value, before: Option<&Value>) -> Value {
        let mut object = written.clone();
        object["apiVersion"] = json!(key.kind.api_version());
        object["kind"] = json!(key.kind.name());
        let meta = &mut object["metadata"];
        if key.kind.namespaced() {
            meta["namespace"] = json!(key.namespace);
        }
        let kept = |field: &str| before.map(|b| b["metadata"][field].clone());
        meta["uid"] = kept("uid").unwrap_or_else(|| {
            self.uids += 1;
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uids))
        });
        meta["creationTimestamp"] = kept("creationTimestamp").unwrap_or_else(|| json!(now()));
        meta["resourceVersion"] = json!(self.rv.to_string());
        object
    }

    fn record(&mut self, key: Key, kind: EventType, object: Value, before: Option<Value>) {
        let event = Arc::new(Event {
            rv: self.rv,
            key,
            kind,
            object,
            before,
        });
        if self.history.len() == HISTORY {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.rv;
            }
        }
        self.history.push_back(event.clone());
        // No receiver is no error: nobody watches.
        let _ = self.events.send(event);
    }

    fn save(&self) -> anyhow::Result<()> {
        let saved = Saved {
            rv: self.rv,
            uids: self.uids,
            objects: self.objects.values().cloned().collect(),
        };
        let path = self.data.join("store.json");
        let temporary = self.data.join("store.json.tmp");
        std::fs::write(&temporary, serde_json::to_vec(&saved)?)?;
        std::fs::rename(&temporary, &path).with_context(|| format!("saving {}", path.display()))
    }
}

/// `2026-11-30T22:40:00Z`, as Kubernetes writes times.
fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The date `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn files(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Option<SystemTime>, u64)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let yaml = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if !yaml {
            continue;
        }
        let meta = std::fs::metadata(&path)?;
        out.push((path, meta.modified().ok(), meta.len()));
    }
    out.sort();
    Ok(out)
}

/// Every object of the files, by key; `List`s unpacked. Kinds the agent does not read are left out.
fn read_objects(
    files: &[(PathBuf, Option<SystemTime>, u64)],
) -> anyhow::Result<BTreeMap<Key, Value>> {
    let mut out = BTreeMap::new();
    for (path, _, _) in files {
        let text = std::fs::read_to_string(path)?;
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
            .with_context(|| format!("{}", path.display()))?;
        for doc in docs {
            let items = match doc["items"].as_array() {
                Some(items) if doc["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                    items.clone()
                }
                _ => vec![doc],
            };
            for object in items.into_iter().filter(|o| !o.is_null()) {
                match key_of(&object) {
                    Some(key) => drop(out.insert(key, object)),
                    None => {
                        tracing::warn!(file = %path.display(), "an object of no kind served here, or without a name: left out")
                    }
                }
            }
        }
    }
    Ok(out)
}

fn key_of(object: &Value) -> Option<Key> {
    let kind = Kind::of_type(object["apiVersion"].as_str()?, object["kind"].as_str()?)?;
    let name = object["metadata"]["name"].as_str()?.to_owned();
    let namespace = match kind.namespaced() {
        true => object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        false => String::new(),
    };
    Some(Key {
        kind,
        namespace,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, label: &str) -> String {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {label}}}}}\nspec: {{containers: []}}\n---\n")
    }

    #[test]
    fn file_changes_become_events_with_growing_versions_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (state, data) = (dir.path().join("state"), dir.path().join("data"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("a.yaml"), pod("p1", "x") + &pod("p2", "x")).unwrap();
        let mut store = Store::open(&state, &data).unwrap();
        assert_eq!(store.rv(), 2);
        let p1 = store.list(Kind::Pod).next().unwrap().clone();
        assert_eq!(p1["metadata"]["namespace"], "default");
        assert_eq!(p1["metadata"]["resourceVersion"], "1");

        // A file's length changes with it here, so the change is seen whatever the clock.
        std::fs::write(state.join("a.yaml"), pod("p1", "yy")).unwrap();
        store.refresh().unwrap();
        let events = store.since(2).unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.key.name.as_str(), e.rv))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventType::Deleted, "p2", 3),
                (EventType::Modified, "p1", 4)
            ]
        );
        assert_eq!(
            events[1].object["metadata"]["uid"], p1["metadata"]["uid"],
            "the same object"
        );
        assert!(store.since(2).is_some(), "kept since the store opened");
        assert!(
            store.since(1).is_none() && store.since(5).is_none(),
            "410: before it, or ahead"
        );

        drop(store);
        let restarted = Store::open(&state, &data).unwrap();
        assert_eq!(restarted.rv(), 4, "no change meanwhile, no new version");
        assert_eq!(
            restarted.since(4).map(|e| e.len()),
            Some(0),
            "a watch from the last version resumes"
        );
        assert!(
            restarted.since(3).is_none(),
            "the history before the restart is gone: 410"
        );
        drop(restarted);
        std::fs::write(state.join("a.yaml"), pod("p3", "x")).unwrap();
        let restarted = Store::open(&state, &data).unwrap();
        assert_eq!(restarted.rv(), 6, "p1 gone, p3 added");
        assert!(restarted.since(4).is_none(), "changed while down: 410");
        assert!(restarted.since(6).is_some());
    }

    #[test]
    fn dates_as_kubernetes_writes_them() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
