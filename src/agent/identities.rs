//! Every security identity the agent knows, for `meshpath identity list`: this cluster's from the
//! resolver's identity labels, the remote clusters' from their watchers' events. Control-plane
//! bookkeeping, off the packet path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use meshpath_api::identity::{IdentityRow, Label, ReservedIdentity};
use meshpath_api::policy::PolicyPeer;
use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::kvstore::LabelSet;
use meshpath_control::state::{Entry, EntryKey, StateEvent};
use meshpath_dataplane::policy::IdentityLabels;
use meshpath_dataplane::Identity;

use super::cluster_names::ClusterNames;

/// What the directory holds of one identity: this cluster's as rows, a remote's as the remote state's
/// own labels (shared, not copied: rows made up front were 21 MB of the agent's peak in
/// `meshpath-perf sync`, 6 MB after), made into a row when asked.
enum Known {
    Local(IdentityRow),
    Remote { cluster: Arc<str>, labels: LabelSet },
}

impl Known {
    fn cluster(&self) -> Option<&str> {
        match self {
            Known::Local(row) => row.cluster.as_deref(),
            Known::Remote { cluster, .. } => Some(cluster),
        }
    }

    fn labels(&self) -> Vec<Label> {
        match self {
            Known::Local(row) => row.labels.clone(),
            Known::Remote { labels, .. } => labels
                .iter()
                .map(|(key, v)| Label::new(v.source, key, v.value))
                .collect(),
        }
    }

    fn row(&self, id: u32) -> IdentityRow {
        match self {
            Known::Local(row) => row.clone(),
            Known::Remote { cluster, .. } => IdentityRow {
                id,
                cluster: Some(cluster.to_string()),
                labels: self.labels(),
            },
        }
    }
}

#[derive(Default)]
struct Identities {
    by_id: BTreeMap<u32, Known>,
    /// The identities the local state gave.
    local: BTreeSet<u32>,
    /// One copy of each remote cluster's name, shared by its identities.
    clusters: ClusterNames,
}

/// Identities by value, and those the local state gave (see [`super::nodes::NodeDirectory`]).
#[derive(Clone, Default)]
pub struct IdentityDirectory(Arc<Mutex<Identities>>);

impl IdentityDirectory {
    /// Replaces this cluster's own identities with `identities`.
    pub fn record_local(&self, cluster: &str, identities: &IdentityLabels) {
        let Ok(mut known) = self.0.lock() else {
            return;
        };
        let known = &mut *known;
        for id in std::mem::take(&mut known.local) {
            known.by_id.remove(&id);
        }
        for (id, labels) in identities {
            known.local.insert(id.get());
            // A pod's labels, its namespace's and its cluster's are all Kubernetes labels to Cilium.
            let row = IdentityRow {
                id: id.get(),
                cluster: Some(cluster.to_owned()),
                labels: labels
                    .iter()
                    .map(|(k, v)| Label::new("k8s", k, v))
                    .collect(),
            };
            known.by_id.insert(id.get(), Known::Local(row));
        }
    }

    /// Follows a remote cluster's identity events.
    pub fn record_remote(&self, event: &RemoteEvent) {
        let Ok(mut known) = self.0.lock() else { return };
        let cluster = event.cluster.as_str();
        match &event.event {
            StateEvent::Upsert(Entry::Identity(id, labels)) => {
                let remote = Known::Remote {
                    cluster: known.clusters.shared(cluster),
                    labels: labels.clone(),
                };
                known.by_id.insert(id.get(), remote);
            }
            // Only the cluster that announced it may withdraw it.
            StateEvent::Delete(EntryKey::Identity(id))
                if known
                    .by_id
                    .get(&id.get())
                    .is_some_and(|k| k.cluster() == Some(cluster)) =>
            {
                known.by_id.remove(&id.get());
            }
            _ => {}
        }
    }

    /// The labels of `id`, reserved or allocated; none for an identity nobody announced.
    pub fn labels(&self, id: u32) -> Vec<Label> {
        if let Some((_, name)) = RESERVED.iter().find(|(r, _)| r.get() == id) {
            return vec![Label::new("reserved", name.name(), "")];
        }
        self.0
            .lock()
            .ok()
            .and_then(|known| known.by_id.get(&id).map(Known::labels))
            .unwrap_or_default()
    }

    /// The reserved identities the dataplane uses, then every allocated one, by value.
    pub fn rows(&self) -> Vec<IdentityRow> {
        let reserved = RESERVED.iter().map(|(id, name)| IdentityRow {
            id: id.get(),
            cluster: None,
            labels: vec![Label::new("reserved", name.name(), "")],
        });
        let known = self
            .0
            .lock()
            .map(|known| {
                let rows = known.by_id.iter().map(|(id, k)| k.row(*id));
                rows.collect::<Vec<_>>()
            })
            .unwrap_or_default();
        reserved.chain(known).collect()
    }
}

/// Reserved identities the pipeline gives peers, with Cilium's names for them.
const RESERVED: [(Identity, ReservedIdentity); 3] = [
    (Identity::HOST, ReservedIdentity::Host),
    (Identity::WORLD, ReservedIdentity::World),
    (Identity::REMOTE_NODE, ReservedIdentity::RemoteNode),
];

/// How a peer identity is named in `policy get`: reserved ones by name, others by value.
pub fn peer(id: Identity) -> PolicyPeer {
    match RESERVED.iter().find(|(r, _)| *r == id) {
        Some((_, reserved)) => PolicyPeer::Reserved(*reserved),
        None if id == Identity::UNKNOWN => PolicyPeer::Reserved(ReservedIdentity::Unknown),
        None => PolicyPeer::Identity(id.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(rows[1].labels, ["reserved:world".parse().unwrap()]);
        assert_eq!(rows[1].cluster, None);
        assert_eq!(rows[5].labels, ["k8s:app=rebel-base".parse().unwrap()]);
        assert_eq!(
            rows[3].labels,
            ["k8s:app=x-wing".parse().unwrap()],
            "local: k8s"
        );
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
    fn reserved_rows_first_by_their_cilium_names() {
        let rows = IdentityDirectory::default().rows();
        let table = meshpath_api::identity::render(&rows[1..2]);
        assert_eq!(table.lines().nth(1), Some("2   -        reserved:world"));
        assert_eq!(rows[2].labels[0].to_string(), "reserved:remote-node");
    }

    #[test]
    fn peers_named() {
        assert_eq!(peer(Identity::WORLD).to_string(), "world");
        assert_eq!(peer(Identity::UNKNOWN).to_string(), "unknown");
        assert_eq!(peer(Identity::new(0x2_0001).unwrap()).to_string(), "131073");
    }
}
