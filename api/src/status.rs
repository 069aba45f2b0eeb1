//! The agent's status document: what `meshpath status -o json` prints, and what every list command
//! (`service list`, `node list`, `clustermesh status`, `identity list`, `policy get`) reads its rows
//! from. The agent serves one per connection on its status socket.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::clustermesh::ClusterMeshStatus;
use crate::drop_reason::DropReason;
use crate::forward::ForwardKind;
use crate::health::Health;
use crate::identity::IdentityRow;
use crate::node::NodeRow;
use crate::policy::EndpointPolicyRow;
use crate::service::ServiceStatus;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub cluster: String,
    pub node: String,
    pub dataplane: DataplaneStatus,
    pub tables: TableSizes,
    /// Every service frontend and its backends, as the workers balance them now.
    pub services: Vec<ServiceStatus>,
    /// Each remote cluster's status; `null` when the agent has no `clustermesh` configured.
    pub clustermesh: Option<ClusterMeshStatus>,
    /// Every node of every cluster the agent knows.
    pub nodes: Vec<NodeRow>,
    /// Every security identity the agent knows, with its labels.
    #[serde(default)]
    pub identities: Vec<IdentityRow>,
    /// Each pod on this node with its compiled policy, as the workers enforce it now.
    #[serde(default)]
    pub policies: Vec<EndpointPolicyRow>,
    /// Liveness and readiness, as the health endpoint answers them; `null` from an agent that
    /// predates them.
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub received: u64,
    /// Forwarded packets by how they left (every kind, seen or not).
    pub forwarded: BTreeMap<ForwardKind, u64>,
    /// Dropped packets by reason (only reasons seen).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Per AF_XDP port: rx, tx, ring-full events.
    pub ports: Vec<PortStatus>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub rx: u64,
    pub tx: u64,
    pub tx_ring_full: u64,
}

/// Entries in the table snapshot the workers use now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizes {
    pub endpoints: u64,
    pub ipcache: u64,
    pub services: u64,
    pub nodes: u64,
}

/// `meshpath status` as a person reads it.
pub fn render(status: &AgentStatus) -> String {
    let mut out = String::new();
    let d = &status.dataplane;
    let _ = writeln!(out, "Node:        {}/{}", status.cluster, status.node);
    let t = &status.tables;
    let _ = writeln!(
        out,
        "Tables:      {} endpoints, {} ipcache entries, {} services, {} nodes",
        t.endpoints, t.ipcache, t.services, t.nodes
    );
    let _ = writeln!(out, "Received:    {}", d.received);
    for (kind, packets) in d.forwarded.iter().filter(|(_, n)| **n > 0) {
        let _ = writeln!(out, "Forwarded:   {packets:>10}  {kind}");
    }
    for (reason, packets) in &d.dropped {
        let _ = writeln!(out, "Dropped:     {packets:>10}  {reason}");
    }
    for p in &d.ports {
        let _ = writeln!(
            out,
            "Port {:<6} rx {:>10}  tx {:>10}  tx-ring-full {}",
            p.port, p.rx, p.tx, p.tx_ring_full
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            cluster: "cluster1".into(),
            node: "node1".into(),
            dataplane: DataplaneStatus {
                received: 1234,
                forwarded: [(ForwardKind::LocalPod, 1000), (ForwardKind::Direct, 0)].into(),
                dropped: [(DropReason::PolicyDenied, 34)].into(),
                ports: vec![PortStatus {
                    port: 0,
                    rx: 1234,
                    tx: 1200,
                    tx_ring_full: 3,
                }],
            },
            tables: TableSizes {
                endpoints: 2,
                ipcache: 9,
                services: 1,
                nodes: 3,
            },
            services: vec![],
            clustermesh: None,
            nodes: vec![],
            identities: vec![],
            policies: vec![],
            health: None,
        }
    }

    #[test]
    fn table_shows_what_moved() {
        let text = render(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Node:        cluster1/node1");
        assert_eq!(lines[2], "Received:    1234");
        assert_eq!(lines[3], "Forwarded:         1000  local_pod");
        assert_eq!(lines[4], "Dropped:             34  policy_denied");
        assert_eq!(
            lines[5],
            "Port 0      rx       1234  tx       1200  tx-ring-full 3"
        );
        assert_eq!(lines.len(), 6, "kinds that moved nothing are left out");
    }

    /// A document of an agent that predates `identities` and `policies`, with no mesh configured.
    #[test]
    fn reads_the_json_it_always_read() {
        let json = r#"{"cluster":"c1","node":"n1",
            "dataplane":{"received":5,"forwarded":{"local_pod":5,"tunnel":0},
                "dropped":{"no_route":2},"ports":[{"port":1,"rx":5,"tx":5,"tx_ring_full":0}]},
            "tables":{"endpoints":1,"ipcache":2,"services":0,"nodes":1},
            "services":[{"frontend":"10.96.0.10:80/TCP",
                "backends":[{"backend":"10.1.0.3:80","cluster":1,"state":"terminating"}]}],
            "clustermesh":null,
            "nodes":[{"cluster":"c1","name":"n1","address":"198.18.1.1","pod_cidrs":["10.1.0.0/24"]}]}"#;
        let status: AgentStatus = serde_json::from_str(json).unwrap();
        assert_eq!(status.dataplane.dropped[&DropReason::NoRoute], 2);
        assert_eq!(status.services[0].backends[0].state.name(), "terminating");
        assert_eq!(status.clustermesh, None);
        let again: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(again["dataplane"]["forwarded"]["tunnel"], 0);
        assert_eq!(again["services"][0]["frontend"], "10.96.0.10:80/TCP");
        assert_eq!(again["nodes"][0]["address"], "198.18.1.1");
        assert_eq!(again["clustermesh"], serde_json::Value::Null);
    }
}
