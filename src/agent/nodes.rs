//! Every node the agent knows, for `meshpath node list`: its own cluster's from the local state, the
//! remote clusters' from their watchers' events. Control-plane bookkeeping, off the packet path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meshpath_api::node::{Cidr, NodeRow};
use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::local::LocalState;
use meshpath_control::resolve::parse_cidr;
use meshpath_control::state::{Entry, EntryKey, StateEvent};

/// Nodes by (cluster, name), and a signal for whoever follows their changes.
#[derive(Clone, Default)]
pub struct NodeDirectory(
    Arc<Mutex<BTreeMap<(String, String), NodeRow>>>,
    Arc<tokio::sync::Notify>,
);

impl NodeDirectory {
    /// Resolves after the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.1.notified().await;
    }

    /// Replaces this cluster's own nodes with those of `state`.
    pub fn record_local(&self, cluster: &str, state: &LocalState) {
        let Ok(mut nodes) = self.0.lock() else { return };
        nodes.retain(|(c, _), _| c != cluster);
        for node in state.nodes.values() {
            let row = NodeRow {
                cluster: cluster.to_owned(),
                name: node.name.clone(),
                address: node.internal_ips.first().copied(),
                // As the agent routes them: text that is no CIDR routes nothing.
                pod_cidrs: node
                    .pod_cidrs
                    .iter()
                    .filter_map(|text| parse_cidr(text))
                    .map(cidr)
                    .collect(),
            };
            nodes.insert((cluster.to_owned(), node.name.clone()), row);
        }
        self.1.notify_one();
    }

    /// Follows a remote cluster's node events.
    pub fn record_remote(&self, event: &RemoteEvent) {
        let Ok(mut nodes) = self.0.lock() else { return };
        let cluster = event.cluster.to_string();
        match &event.event {
            StateEvent::Upsert(Entry::Node(node)) => {
                let row = NodeRow {
                    cluster: cluster.clone(),
                    name: node.name.clone(),
                    address: node.tunnel_addr().map(|a| a.ip()),
                    pod_cidrs: node.pod_cidrs.iter().copied().map(cidr).collect(),
                };
                nodes.insert((cluster, node.name.clone()), row);
            }
            StateEvent::Delete(EntryKey::Node(name)) => {
                nodes.remove(&(cluster, name.clone()));
            }
            _ => return,
        }
        self.1.notify_one();
    }

    pub fn rows(&self) -> Vec<NodeRow> {
        self.0
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn cidr(c: meshpath_control::state::Cidr) -> Cidr {
    Cidr {
        address: c.addr.ip(),
        prefix_len: c.prefix_len,
    }
}
