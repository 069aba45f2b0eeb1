//! Every node the agent knows, for `meshpath node list`: its own cluster's from the local state, the
//! remote clusters' from their watchers' events. Control-plane bookkeeping, off the packet path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::local::LocalState;
use meshpath_control::state::{Entry, EntryKey, StateEvent};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub cluster: String,
    pub name: String,
    /// The underlay address other nodes tunnel to.
    pub address: Option<String>,
    pub pod_cidrs: Vec<String>,
}

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
                address: node.internal_ips.first().map(|ip| ip.to_string()),
                pod_cidrs: node.pod_cidrs.clone(),
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
                    address: node.tunnel_addr().map(|a| a.to_string()),
                    pod_cidrs: node
                        .pod_cidrs
                        .iter()
                        .map(|c| format!("{}/{}", c.addr, c.prefix_len))
                        .collect(),
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

/// `meshpath node list` as a table.
pub fn render(rows: &[NodeRow]) -> String {
    let mut out = format!("{:<32} {:<16} {}\n", "NODE", "ADDRESS", "POD CIDRS");
    for row in rows {
        out += &format!(
            "{:<32} {:<16} {}\n",
            format!("{}/{}", row.cluster, row.name),
            row.address.as_deref().unwrap_or("-"),
            row.pod_cidrs.join(",")
        );
    }
    out
}
