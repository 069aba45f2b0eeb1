//! The last known state of the mesh, kept on the node so that an agent starts from it — forwarding
//! before this cluster's etcd or any remote answers — and catches up when they do.
//!
//! What is kept: the identities this agent's pods had (label string → identity, so the local state
//! resolves without etcd) and every remote cluster's state as that remote published it, as Cilium's
//! own key/value pairs. Read back, the remote pairs go through the watcher's own decoding and checks
//! ([`crate::clustermesh::decode_remote_entry`]: keys, values, limits, refusals), and the snapshot
//! builder's admission rules after that, exactly like live remote bytes: a file on disk is believed no
//! more than the remote it came from. The file is JSON with a version; one of another version, another
//! cluster or node, or that does not parse is ignored with a warning.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use meshpath_dataplane::{ClusterId, Identity};
use serde::{Deserialize, Serialize};

use crate::cluster_name::ClusterName;
use crate::clustermesh::{decode_remote_entry, RemoteEvent, RemoteLimits};
use crate::kvstore::{Key, LabelSet, Origin};
use crate::state::{ClusterState, Entry, StateEvent};

const VERSION: u32 = 1;

/// Why a last-known-state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum LastKnownError {
    #[error("not a last-known-state file: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("version {found}, this agent reads version {VERSION}")]
    Version { found: u32 },
    #[error("written by {cluster}/{node}, not this node")]
    OtherNode { cluster: String, node: String },
}

/// What the agent last knew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastKnown {
    /// This cluster's identities in use by this node's pods.
    pub identities: BTreeMap<LabelSet, Identity>,
    /// Each remote cluster's id and state.
    pub remotes: BTreeMap<ClusterName, (ClusterId, ClusterState)>,
}

/// The file: written from borrowed state ([`Pairs`]), read into owned strings.
#[derive(Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de> + Ord, R: Deserialize<'de>"))]
struct File<S, R> {
    version: u32,
    cluster: S,
    node: S,
    written_unix_ms: u64,
    /// Label string → identity.
    identities: BTreeMap<String, u32>,
    remotes: BTreeMap<S, RemoteFile<R>>,
}

#[derive(Serialize, Deserialize)]
struct RemoteFile<R> {
    cluster_id: u8,
    /// Cilium's keys and values, as the remote's etcd holds them.
    entries: R,
}

/// What a file read holds.
type FileIn = File<String, Vec<(String, String)>>;

/// A remote's entries as Cilium's key/value pairs, each made as it is written.
struct Pairs<'a> {
    name: &'a ClusterName,
    id: ClusterId,
    state: &'a ClusterState,
}

impl Serialize for Pairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs = self
            .state
            .entries()
            .filter_map(|e| pair(self.name, self.id, &e));
        serializer.collect_seq(pairs)
    }
}

impl LastKnown {
    /// Follows a remote's events.
    pub fn apply_remote(&mut self, event: &RemoteEvent) {
        let Some(id) = self.remote_id(event) else {
            return;
        };
        let entry = self
            .remotes
            .entry(event.cluster.clone())
            .or_insert_with(|| (id, ClusterState::default()));
        entry.1.apply(event.event.clone());
    }

    /// The remote's cluster id: known already, or from the entry (nodes and identities carry it).
    fn remote_id(&self, event: &RemoteEvent) -> Option<ClusterId> {
        if let Some((id, _)) = self.remotes.get(&event.cluster) {
            return Some(*id);
        }
        match &event.event {
            StateEvent::Upsert(Entry::Node(node)) => Some(node.cluster_id),
            StateEvent::Upsert(Entry::Identity(id, _)) => id.cluster(),
            _ => None,
        }
    }

    /// Replaces this cluster's identities with those of the last resolved local state.
    pub fn set_identities(&mut self, identities: impl IntoIterator<Item = (LabelSet, Identity)>) {
        self.identities = identities.into_iter().collect();
    }

    pub fn encode(&self, cluster: &ClusterName, node: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write(cluster, node, &mut bytes)
            .map_or_else(|_| Vec::new(), |()| bytes)
    }

    /// Writes what [`LastKnown::encode`] returns to `out` as it is made, an entry at a time: at 100k
    /// remote endpoints the file is some 40 MB, which is never held whole in memory, nor its pairs.
    pub fn write(
        &self,
        cluster: &ClusterName,
        node: &str,
        out: impl std::io::Write,
    ) -> serde_json::Result<()> {
        let identities = self
            .identities
            .iter()
            .map(|(labels, id)| (labels.to_string(), id.get()))
            .collect();
        let remotes = self
            .remotes
            .iter()
            .map(|(name, (id, state))| {
                let file = RemoteFile {
                    cluster_id: id.get(),
                    entries: Pairs {
                        name,
                        id: *id,
                        state,
                    },
                };
                (name.as_str(), file)
            })
            .collect();
        let file = File {
            version: VERSION,
            cluster: cluster.as_str(),
            node,
            written_unix_ms: unix_ms(),
            identities,
            remotes,
        };
        serde_json::to_writer(out, &file)
    }

    /// Reads a file written by [`LastKnown::encode`] for this cluster and node. Remote pairs that the
    /// watcher would refuse are left out (and counted in the second value).
    pub fn decode(
        bytes: &[u8],
        cluster: &ClusterName,
        node: &str,
        limits: &RemoteLimits,
    ) -> Result<(LastKnown, usize), LastKnownError> {
        let file: FileIn = serde_json::from_slice(bytes)?;
        if file.version != VERSION {
            return Err(LastKnownError::Version {
                found: file.version,
            });
        }
        if file.cluster != cluster.as_str() || file.node != node {
            return Err(LastKnownError::OtherNode {
                cluster: file.cluster,
                node: file.node,
            });
        }
        let mut refused = 0;
        let mut known = LastKnown::default();
        for (text, id) in file.identities {
            match (LabelSet::parse(&text), Identity::new(id)) {
                (Ok(labels), Some(id)) if id.cluster().is_some() => {
                    known.identities.insert(labels, id);
                }
                _ => refused += 1,
            }
        }
        for (name, remote) in file.remotes {
            let (Ok(name), Some(id)) = (ClusterName::new(&name), ClusterId::new(remote.cluster_id))
            else {
                refused += remote.entries.len();
                continue;
            };
            let origin = Origin { name: &name, id };
            let mut state = ClusterState::default();
            for (key, value) in &remote.entries {
                match decode_remote_entry(key.as_bytes(), value.as_bytes(), origin, limits) {
                    Some(entry) => {
                        state.upsert(entry);
                    }
                    None => refused += 1,
                }
            }
            known.remotes.insert(name, (id, state));
        }
        Ok((known, refused))
    }
}

/// An entry as its cluster publishes it: Cilium's key, and its value.
fn pair(cluster: &ClusterName, id: ClusterId, entry: &Entry) -> Option<(String, String)> {
    let (key, value) = match entry {
        Entry::Node(node) => (
            Key::Node {
                cluster: cluster.clone(),
                node: node.name.clone(),
            },
            serde_json::to_string(&node.to_kvstore(cluster)).ok()?,
        ),
        Entry::Endpoint(endpoint) => (
            Key::Endpoint(endpoint.ip.ip()),
            serde_json::to_string(&endpoint.to_kvstore()).ok()?,
        ),
        Entry::Identity(identity, labels) => (Key::Identity(*identity), labels.to_string()),
        Entry::Service(service) => (
            Key::Service {
                cluster: cluster.clone(),
                namespace: service.name.namespace.clone(),
                name: service.name.name.clone(),
            },
            serde_json::to_string(&service.to_kvstore(cluster, id)).ok()?,
        ),
    };
    Some((key.to_string(), value))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{c2, endpoint, node, service};

    fn name(text: &str) -> ClusterName {
        ClusterName::new(text).unwrap()
    }

    fn remote_state() -> ClusterState {
        let mut state = ClusterState::default();
        state.upsert(Entry::Node(node("n1").into()));
        state.upsert(Entry::Endpoint(endpoint(10, 7).into()));
        state.upsert(Entry::Identity(
            Identity::new(0x2_0007).unwrap(),
            LabelSet::parse("k8s:app=rebel-base;k8s:io.cilium.k8s.policy.cluster=cluster2;")
                .unwrap(),
        ));
        state.upsert(Entry::Service(service().into()));
        state
    }

    fn known() -> LastKnown {
        let mut known = LastKnown::default();
        for entry in remote_state().entries() {
            known.apply_remote(&RemoteEvent {
                cluster: name("cluster2"),
                event: StateEvent::Upsert(entry),
            });
        }
        known.set_identities([(
            LabelSet::parse("k8s:app=x-wing;k8s:io.cilium.k8s.policy.cluster=cluster1;").unwrap(),
            Identity::new(0x1_0001).unwrap(),
        )]);
        known
    }

    #[test]
    fn what_was_known_comes_back_whole() {
        let bytes = known().encode(&name("cluster1"), "c1-n1");
        let (back, refused) =
            LastKnown::decode(&bytes, &name("cluster1"), "c1-n1", &RemoteLimits::default())
                .unwrap();
        assert_eq!(refused, 0);
        assert_eq!(back, known());
        assert_eq!(back.remotes[&name("cluster2")], (c2(), remote_state()));
    }

    #[test]
    fn a_pair_the_watcher_would_refuse_is_left_out() {
        let bytes = known().encode(&name("cluster1"), "c1-n1");
        let mut file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        // The node's value now claims another cluster than its key's.
        let entries = file["remotes"]["cluster2"]["entries"]
            .as_array_mut()
            .unwrap();
        for pair in entries.iter_mut() {
            if pair[0].as_str().unwrap().contains("/nodes/") {
                let forged = pair[1]
                    .as_str()
                    .unwrap()
                    .replace("\"cluster2\"", "\"cluster3\"");
                pair[1] = forged.into();
            }
        }
        let bytes = serde_json::to_vec(&file).unwrap();
        let (back, refused) =
            LastKnown::decode(&bytes, &name("cluster1"), "c1-n1", &RemoteLimits::default())
                .unwrap();
        assert_eq!(refused, 1);
        assert!(back.remotes[&name("cluster2")].1.nodes.is_empty());
        assert_eq!(back.remotes[&name("cluster2")].1.endpoints.len(), 1);
    }

    #[test]
    fn another_nodes_version_or_garbage_is_refused_whole() {
        let bytes = known().encode(&name("cluster1"), "c1-n1");
        let limits = RemoteLimits::default();
        assert!(matches!(
            LastKnown::decode(&bytes, &name("cluster1"), "c1-n2", &limits),
            Err(LastKnownError::OtherNode { .. })
        ));
        let other = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(matches!(
            LastKnown::decode(other.as_bytes(), &name("cluster1"), "c1-n1", &limits),
            Err(LastKnownError::Version { found: 2 })
        ));
        assert!(LastKnown::decode(b"{", &name("cluster1"), "c1-n1", &limits).is_err());
    }
}
