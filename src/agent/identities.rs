//! Every security identity the agent knows, for `meshpath identity list`: this cluster's from the
//! resolver's identity labels, the remote clusters' from their watchers' events. Control-plane
//! bookkeeping, off the packet path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::snapshot::sources::labels_of;
use meshpath_control::state::{Entry, EntryKey, StateEvent};
use meshpath_dataplane::policy::IdentityLabels;
use meshpath_dataplane::Identity;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRow {
    pub id: u32,
    /// The cluster whose agents allocated it (or announced it, for a remote one); none for the
    /// reserved identities every node knows.
    pub cluster: Option<String>,
    /// Label keys without their source, as policy matches them.
    pub labels: BTreeMap<String, String>,
}

/// Identities by value.
#[derive(Clone, Default)]
pub struct IdentityDirectory(Arc<Mutex<BTreeMap<u32, IdentityRow>>>);

impl IdentityDirectory {
    /// Replaces this cluster's own identities with `identities`.
    pub fn record_local(&self, cluster: &str, identities: &IdentityLabels) {
        let Ok(mut rows) = self.0.lock() else { return };
        rows.retain(|_, row| row.cluster.as_deref() != Some(cluster));
        for (id, labels) in identities {
            let row = IdentityRow {
                id: id.get(),
                cluster: Some(cluster.to_owned()),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            };
            rows.insert(id.get(), row);
        }
    }

    /// Follows a remote cluster's identity events.
    pub fn record_remote(&self, event: &RemoteEvent) {
        let Ok(mut rows) = self.0.lock() else { return };
        let cluster = event.cluster.to_string();
        match &event.event {
            StateEvent::Upsert(Entry::Identity(id, labels)) => {
                let labels = labels_of(labels)
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                let row = IdentityRow {
                    id: id.get(),
                    cluster: Some(cluster),
                    labels,
                };
                rows.insert(id.get(), row);
            }
            // Only the cluster that announced it may withdraw it.
            StateEvent::Delete(EntryKey::Identity(id))
                if rows
                    .get(&id.get())
                    .is_some_and(|r| r.cluster.as_ref() == Some(&cluster)) =>
            {
                rows.remove(&id.get());
            }
            _ => {}
        }
    }

    /// The reserved identities the dataplane uses, then every allocated one, by value.
    pub fn rows(&self) -> Vec<IdentityRow> {
        let reserved = RESERVED.iter().map(|(id, name)| IdentityRow {
            id: id.get(),
            cluster: None,
            labels: [(format!("reserved:{name}"), String::new())].into(),
        });
        let known = self
            .0
            .lock()
            .map(|rows| rows.values().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        reserved.chain(known).collect()
    }
}

/// Reserved identities the pipeline gives peers, with Cilium's names for them.
const RESERVED: [(Identity, &str); 3] = [
    (Identity::HOST, "host"),
    (Identity::WORLD, "world"),
    (Identity::REMOTE_NODE, "remote-node"),
];

/// A label as Cilium prints it: `key=value`, or the bare key of a label without a value.
pub fn label(key: &str, value: &str) -> String {
    match value.is_empty() {
        true => key.to_owned(),
        false => format!("{key}={value}"),
    }
}

/// `meshpath identity list` as a table: `ID  LABELS`.
pub fn render(rows: &[IdentityRow]) -> String {
    let mut out = format!("{:<10} {}\n", "ID", "LABELS");
    for row in rows {
        let labels: Vec<String> = row.labels.iter().map(|(k, v)| label(k, v)).collect();
        let first = labels.first().map_or("-", String::as_str);
        out += &format!("{:<10} {first}\n", row.id);
        for label in labels.iter().skip(1) {
            out += &format!("{:<10} {label}\n", "");
        }
    }
    out
}

/// How a peer identity is named in `policy get`: reserved ones by name, others by value.
pub fn name_of(id: Identity) -> String {
    match RESERVED.iter().find(|(r, _)| *r == id) {
        Some((_, name)) => (*name).to_owned(),
        None if id == Identity::UNKNOWN => "unknown".to_owned(),
        None => id.get().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_control::kvstore::LabelSet;
    use meshpath_control::ClusterName;
    use meshpath_dataplane::policy::Labels;

    fn remote(event: StateEvent) -> RemoteEvent {
        RemoteEvent {
            cluster: ClusterName::new("cluster2").unwrap(),
            event,
        }
    }

    #[test]
    fn local_replaced_remote_followed() {
        let dir = IdentityDirectory::default();
        let a = Identity::new(0x1_0001).unwrap();
        let b = Identity::new(0x1_0002).unwrap();
        let r = Identity::new(0x2_0001).unwrap();
        let mut local = IdentityLabels::new();
        local.insert(a, Labels::new().with("app", "x-wing"));
        local.insert(b, Labels::new().with("app", "rebel-base"));
        dir.record_local("cluster1", &local);
        let mut set = LabelSet::new();
        set.insert("k8s", "app", "rebel-base").unwrap();
        dir.record_remote(&remote(StateEvent::Upsert(Entry::Identity(r, set))));
        let ids: Vec<u32> = dir.rows().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2, 6, 0x1_0001, 0x1_0002, 0x2_0001]);
        let rows = dir.rows();
        assert_eq!(rows[1].labels["reserved:world"], "");
        assert_eq!(rows[1].cluster, None);
        assert_eq!(rows[5].labels["app"], "rebel-base");
        assert_eq!(rows[5].cluster.as_deref(), Some("cluster2"));

        local.remove(&b);
        dir.record_local("cluster1", &local);
        // A remote cannot withdraw a local identity.
        dir.record_remote(&remote(StateEvent::Delete(EntryKey::Identity(a))));
        let ids: Vec<u32> = dir.rows().iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2, 6, 0x1_0001, 0x2_0001]);
        dir.record_remote(&remote(StateEvent::Delete(EntryKey::Identity(r))));
        assert_eq!(dir.rows().len(), 4);
    }

    #[test]
    fn table_lists_every_label() {
        let rows = vec![IdentityRow {
            id: 65537,
            cluster: Some("cluster1".into()),
            labels: [
                ("app", "x-wing"),
                ("io.kubernetes.pod.namespace", "default"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("65537") && lines[1].ends_with("app=x-wing"));
        assert!(lines[2].trim() == "io.kubernetes.pod.namespace=default");
        let world = render(&IdentityDirectory::default().rows()[1..2]);
        assert_eq!(world.lines().nth(1), Some("2          reserved:world"));
    }

    #[test]
    fn peers_named() {
        assert_eq!(name_of(Identity::WORLD), "world");
        assert_eq!(name_of(Identity::UNKNOWN), "unknown");
        assert_eq!(name_of(Identity::new(0x2_0001).unwrap()), "131073");
    }
}
