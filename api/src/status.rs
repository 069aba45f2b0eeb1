//! The agent's status document: what `meshpath status -o json` prints, and what every list command
//! (`service list`, `node list`, `clustermesh status`, `identity list`, `policy get`) reads its rows
//! from. The agent serves one per connection on its status socket.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::clustermesh::{ClusterMeshStatus, RemoteClusterStatus};
use crate::drop_reason::DropReason;
use crate::encryption::EncryptionStatus;
use crate::endpoint::EndpointRow;
use crate::forward::ForwardKind;
use crate::health::Health;
use crate::identity::IdentityRow;
use crate::kvstore::KvStoreStatus;
use crate::local_source::LocalSourceStatus;
use crate::node::NodeRow;
use crate::policy::{EndpointPolicyRow, PolicyRefusalRow};
use crate::service::ServiceStatus;
use crate::text::Table;
use crate::version::VersionInfo;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub cluster: String,
    /// The cluster's id (`cluster.id`), by which service backends name their cluster; `null` from an
    /// agent that predates it.
    #[serde(default)]
    pub cluster_id: Option<u8>,
    pub node: String,
    pub dataplane: DataplaneStatus,
    pub tables: TableSizes,
    /// Every service frontend and its backends, as the workers balance them now.
    pub services: Vec<ServiceStatus>,
    /// Each remote cluster's status; `null` when the agent has no `clustermesh` configured.
    pub clustermesh: Option<ClusterMeshStatus>,
    /// A node's watch of its own cluster's etcd for the external workloads (VMs, bare-metal hosts)
    /// that joined the cluster; `null` where there is none (no `etcd`, or an external workload).
    #[serde(default)]
    pub external_workloads_watch: Option<RemoteClusterStatus>,
    /// Every node of every cluster the agent knows.
    pub nodes: Vec<NodeRow>,
    /// Every security identity the agent knows, with its labels.
    #[serde(default)]
    pub identities: Vec<IdentityRow>,
    /// Each pod on this node with its compiled policy, as the workers enforce it now.
    #[serde(default)]
    pub policies: Vec<EndpointPolicyRow>,
    /// Policies that cannot be enforced as written: the endpoints they select are denied.
    #[serde(default)]
    pub policy_refusals: Vec<PolicyRefusalRow>,
    /// Each pod on this node: its identity, labels, addresses and enforcement.
    #[serde(default)]
    pub endpoints: Vec<EndpointRow>,
    /// Liveness and readiness, as the health endpoint answers them; `null` from an agent that
    /// predates them.
    #[serde(default)]
    pub health: Option<Health>,
    /// The agent's build.
    #[serde(default)]
    pub version: Option<VersionInfo>,
    /// This cluster's etcd as the agent last found it.
    #[serde(default)]
    pub kvstore: Option<KvStoreStatus>,
    /// Where the local state comes from (the Kubernetes API server or a directory), and how that goes.
    #[serde(default)]
    pub local_source: Option<LocalSourceStatus>,
    /// This cluster's global services (`service.cilium.io/global`).
    #[serde(default)]
    pub global_services: u64,
    /// The worker's connection tracking: occupancy and what gave way under pressure.
    #[serde(default)]
    pub conntrack: Option<ConntrackStatus>,
    /// What each interface's XDP program did with the frames it saw.
    #[serde(default)]
    pub xdp: Vec<XdpStatus>,
    /// The flow log `meshpath observe` reads.
    #[serde(default)]
    pub flows: Option<FlowLogStatus>,
    /// WireGuard between nodes: the mode, this node's key, its peers.
    #[serde(default)]
    pub encryption: Option<EncryptionStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub received: u64,
    /// Forwarded packets by how they left (every kind, seen or not).
    pub forwarded: BTreeMap<ForwardKind, u64>,
    /// Dropped packets by reason (only reasons seen).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Per AF_XDP port: its frames, and the kernel's drops before the pipeline saw them.
    pub ports: Vec<PortStatus>,
    /// The node's workers' packet memory, summed.
    #[serde(default)]
    pub umem: Option<UmemStatus>,
    /// The node's workers, one per core of `dataplane.cores` (their number is its length; empty from
    /// an agent older than several workers). `received`, `dropped` and `ports` above sum them all.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
}

/// One dataplane worker: its core, the receive queue it serves on every interface, its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub index: u16,
    pub core: u32,
    pub queue: u32,
    /// Frames received on its queues (including those it handed to their flow's owner).
    pub rx: u64,
    /// Frames it queued for transmit.
    pub tx: u64,
    /// Frames received here whose flow another worker owns, handed to it.
    pub handed_off: u64,
    /// Frames another worker received and handed here.
    pub received_handoff: u64,
    /// Turns of its loop (its heartbeat).
    pub loop_turns: u64,
}

/// The worker's UMEM, in chunks (one frame each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UmemStatus {
    pub chunks: u64,
    /// On no ring and in no batch.
    pub free: u64,
    /// Held by the socket of a port that is gone: leaked, always 0.
    pub orphaned: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    /// The interface the port's socket is bound to.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub role: Option<PortRole>,
    pub rx: u64,
    pub tx: u64,
    pub tx_ring_full: u64,
    /// The kernel's own counters of the port's socket: frames dropped before the pipeline saw them.
    #[serde(default)]
    pub kernel: KernelDrops,
}

named_enum! {
    /// What a port (and its interface's XDP program) serves.
    pub enum PortRole ("port role") {
        /// The node's interface towards the underlay.
        Uplink => "uplink",
        /// The node's own stack (its host port).
        Host => "host",
        /// A pod's veth.
        Pod => "pod",
    }
}

/// The kernel's counters of one AF_XDP socket (`XDP_STATISTICS`), read every 100 ms busy or idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelDrops {
    /// Frames dropped for any reason other than the two below.
    pub rx_dropped: u64,
    /// Frames dropped because the socket's rx ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// Times a frame found no buffer in the fill ring.
    pub fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

impl KernelDrops {
    /// Frames the kernel dropped on the way in.
    pub fn lost(&self) -> u64 {
        self.rx_dropped + self.rx_ring_full + self.rx_invalid_descs
    }
}

/// Entries in the table snapshot the workers use now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSizes {
    pub endpoints: u64,
    pub ipcache: u64,
    pub services: u64,
    pub nodes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub entries: u64,
    pub capacity: u64,
    /// Live flows never answered, evicted for a new one.
    pub evicted_unreplied: u64,
    /// Live closing TCP flows evicted for a new one.
    pub evicted_closing: u64,
    /// Live UDP, ICMP and other flows evicted for a new one.
    pub evicted_datagram: u64,
    /// New flows refused: their neighbourhood held only established TCP flows.
    pub refused_full: u64,
    /// New flows refused: their endpoint held its quota.
    pub refused_quota: u64,
}

impl ConntrackStatus {
    /// Occupancy, as Cilium's map pressure: entries / capacity.
    pub fn pressure(&self) -> f64 {
        match self.capacity {
            0 => 0.0,
            capacity => self.entries as f64 / capacity as f64,
        }
    }
}

/// One interface's XDP program's verdict counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpStatus {
    pub interface: String,
    pub role: PortRole,
    /// Passed to the kernel.
    pub pass: u64,
    /// Redirected to the dataplane's socket.
    pub to_xsk: u64,
    /// The dataplane's frames dropped while no socket was registered (no agent ran): closed, not open.
    pub dropped_no_socket: u64,
    /// Tunnel datagrams from an address that is no node of the mesh.
    pub dropped_unknown_peer: u64,
    /// Why the counters could not be read, if they could not.
    pub error: Option<String>,
}

/// The flows the agent keeps for `meshpath observe`, and those it could not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLogStatus {
    /// Flows kept for observers that do not follow.
    pub kept: u64,
    pub capacity: u64,
    /// Flows the workers logged since the agent started.
    pub seen: u64,
    /// Flow events lost between the worker and the agent's flow log (its queue was full).
    pub lost: u64,
}

impl AgentStatus {
    /// What makes the agent unhealthy: not live, not ready, or its kvstore unusable. Empty when all
    /// is well.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.health {
            Some(health) if !health.ready => problems.push(health.summary()),
            Some(_) => {}
            None => problems.push("the agent reports no health (an older agent?)".into()),
        }
        if let Some(kvstore) = self.kvstore.as_ref().filter(|k| !k.usable()) {
            problems.push(format!("KVStore: {}", crate::kvstore::line(kvstore)));
        }
        problems
    }

    /// The number of remote clusters ready, and configured.
    fn remotes_ready(&self) -> Option<(usize, usize)> {
        let mesh = self.clustermesh.as_ref()?;
        Some((mesh.values().filter(|r| r.ready).count(), mesh.len()))
    }
}

/// `meshpath status --brief`: `OK`, or what is wrong.
pub fn brief(status: &AgentStatus) -> String {
    match status.problems() {
        problems if problems.is_empty() => "OK".to_owned(),
        problems => problems.join("\n"),
    }
}

/// `meshpath status` as a person reads it: the summary lines of `cilium status` first, then the
/// dataplane's counters.
pub fn render(status: &AgentStatus) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let key = format!("{key}:");
        let width = 15.max(key.len() + 1);
        let _ = writeln!(out, "{key:<width$}{value}");
    };
    if let Some(kvstore) = &status.kvstore {
        line("KVStore", crate::kvstore::line(kvstore));
    }
    if let Some(source) = &status.local_source {
        line("Kubernetes", crate::local_source::line(source));
        if let Some(apis) = crate::local_source::apis_line(source) {
            line("Kubernetes APIs", apis);
        }
    }
    line(
        "ClusterMesh",
        match status.remotes_ready() {
            None => "Disabled".to_owned(),
            Some((ready, all)) => format!(
                "{ready}/{all} remote clusters ready, {} global-services",
                status.global_services
            ),
        },
    );
    let health = status
        .health
        .as_ref()
        .map_or("Unknown".to_owned(), Health::summary);
    let version = status
        .version
        .as_ref()
        .map_or(String::new(), |v| format!("   {v}"));
    line("Meshpath", format!("{health}{version}"));
    line("Node", format!("{}/{}", status.cluster, status.node));
    let t = &status.tables;
    line(
        "Tables",
        format!(
            "{} endpoints, {} ipcache entries, {} services, {} nodes",
            t.endpoints, t.ipcache, t.services, t.nodes
        ),
    );
    if let Some(ct) = &status.conntrack {
        line("Conntrack", conntrack_line(ct));
    }
    if let Some(encryption) = &status.encryption {
        line("Encryption", crate::encryption::line(encryption));
    }
    if let Some(flows) = &status.flows {
        line(
            "Flows",
            format!(
                "{}/{} kept, {} seen, {} lost",
                flows.kept, flows.capacity, flows.seen, flows.lost
            ),
        );
    }
    for r in &status.policy_refusals {
        line(
            "Policy",
            format!(
                "refused {} — {} endpoint(s) denied {}: {}",
                r.policy,
                r.endpoints.len(),
                r.directions(),
                r.why
            ),
        );
    }
    let d = &status.dataplane;
    line("Received", d.received.to_string());
    for (kind, packets) in d.forwarded.iter().filter(|(_, n)| **n > 0) {
        line("Forwarded", format!("{packets:>10}  {kind}"));
    }
    for (reason, packets) in &d.dropped {
        line("Dropped", format!("{packets:>10}  {reason}"));
    }
    if let Some(u) = &d.umem {
        line(
            "UMEM",
            format!(
                "{}/{} chunks free, {} orphaned",
                u.free, u.chunks, u.orphaned
            ),
        );
    }
    if d.workers.len() > 1 {
        line("Workers", workers_line(&d.workers));
    }
    out.push_str(&ports_table(&d.ports));
    if let Some(encryption) = status.encryption.as_ref().filter(|e| !e.peers.is_empty()) {
        out.push_str(&crate::encryption::peers_table(&encryption.peers));
    }
    if !status.xdp.is_empty() {
        out.push_str(&xdp_table(&status.xdp));
    }
    out
}

fn conntrack_line(ct: &ConntrackStatus) -> String {
    format!(
        "{}/{} entries ({:.2}%), evicted {} unreplied, {} closing, {} datagram; refused {} full, {} quota",
        ct.entries,
        ct.capacity,
        ct.pressure() * 100.0,
        ct.evicted_unreplied,
        ct.evicted_closing,
        ct.evicted_datagram,
        ct.refused_full,
        ct.refused_quota
    )
}

/// Per port: what it moved, and what the kernel dropped before the pipeline saw it.
fn ports_table(ports: &[PortStatus]) -> String {
    let mut table = Table::new([
        "PORT",
        "INTERFACE",
        "ROLE",
        "RX",
        "TX",
        "TX-RING-FULL",
        "RX-RING-FULL",
        "FILL-RING-EMPTY",
        "RX-DROPPED",
        "INVALID-DESCS",
    ]);
    for p in ports {
        let k = &p.kernel;
        table.row([
            p.port.to_string(),
            p.interface.clone().unwrap_or_else(|| "-".into()),
            p.role.map_or("-".into(), |r| r.to_string()),
            p.rx.to_string(),
            p.tx.to_string(),
            p.tx_ring_full.to_string(),
            k.rx_ring_full.to_string(),
            k.fill_ring_empty.to_string(),
            k.rx_dropped.to_string(),
            (k.rx_invalid_descs + k.tx_invalid_descs).to_string(),
        ]);
    }
    format!("Ports:\n{}", indent(&table.render()))
}

fn xdp_table(programs: &[XdpStatus]) -> String {
    let mut table = Table::new([
        "INTERFACE",
        "ROLE",
        "PASS",
        "TO-XSK",
        "DROPPED-NO-SOCKET",
        "DROPPED-UNKNOWN-PEER",
    ]);
    for x in programs {
        match &x.error {
            Some(error) => table.row([
                x.interface.clone(),
                x.role.to_string(),
                format!("unreadable: {error}"),
            ]),
            None => table.row([
                x.interface.clone(),
                x.role.to_string(),
                x.pass.to_string(),
                x.to_xsk.to_string(),
                x.dropped_no_socket.to_string(),
                x.dropped_unknown_peer.to_string(),
            ]),
        };
    }
    format!("XDP programs:\n{}", indent(&table.render()))
}

/// Each worker's core and frames: `2 — core 0: 10 rx 3 handed off, core 1: …`.
fn workers_line(workers: &[WorkerStatus]) -> String {
    let each: Vec<String> = workers
        .iter()
        .map(|w| format!("core {}: {} rx {} handed off", w.core, w.rx, w.handed_off))
        .collect();
    format!("{} — {}", workers.len(), each.join(", "))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> AgentStatus {
        AgentStatus {
            cluster: "cluster1".into(),
            cluster_id: Some(1),
            node: "node1".into(),
            dataplane: DataplaneStatus {
                received: 1234,
                forwarded: [(ForwardKind::LocalPod, 1000), (ForwardKind::Direct, 0)].into(),
                dropped: [(DropReason::PolicyDenied, 34)].into(),
                ports: vec![PortStatus {
                    port: 0,
                    interface: Some("uplink".into()),
                    role: Some(PortRole::Uplink),
                    rx: 1234,
                    tx: 1200,
                    tx_ring_full: 3,
                    kernel: KernelDrops {
                        rx_ring_full: 68,
                        ..Default::default()
                    },
                }],
                umem: None,
                workers: vec![],
            },
            tables: TableSizes {
                endpoints: 2,
                ipcache: 9,
                services: 1,
                nodes: 3,
            },
            services: vec![],
            clustermesh: None,
            external_workloads_watch: None,
            nodes: vec![],
            identities: vec![],
            policies: vec![],
            policy_refusals: vec![],
            endpoints: vec![],
            health: Some(Health::of(vec![])),
            version: Some(VersionInfo::new("0.1.0", "3f2a9c1d0e4b")),
            kvstore: Some(KvStoreStatus::disabled()),
            local_source: None,
            global_services: 0,
            conntrack: Some(ConntrackStatus {
                entries: 1,
                capacity: 4,
                ..Default::default()
            }),
            xdp: vec![],
            flows: None,
            encryption: None,
        }
    }

    #[test]
    fn table_shows_what_moved() {
        let text = render(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "KVStore:       Ok   Disabled");
        assert_eq!(lines[1], "ClusterMesh:   Disabled");
        assert_eq!(lines[2], "Meshpath:      Ok   0.1.0 (0.1.0-3f2a9c1d0e4b)");
        assert_eq!(lines[3], "Node:          cluster1/node1");
        assert!(
            lines[5].starts_with("Conntrack:     1/4 entries (25.00%)"),
            "{text}"
        );
        assert_eq!(lines[6], "Received:      1234");
        assert_eq!(lines[7], "Forwarded:           1000  local_pod");
        assert_eq!(lines[8], "Dropped:               34  policy_denied");
        assert_eq!(lines[9], "Ports:");
        assert!(lines[10]
            .starts_with("  PORT  INTERFACE  ROLE    RX    TX    TX-RING-FULL  RX-RING-FULL"));
        assert!(
            lines[11].starts_with("  0     uplink     uplink  1234  1200  3             68"),
            "{text}"
        );
        assert_eq!(lines.len(), 12, "kinds that moved nothing are left out");
        assert_eq!(brief(&status()), "OK");
        let mut two = status();
        two.dataplane.workers = (0..2)
            .map(|i| WorkerStatus {
                index: i,
                core: u32::from(i),
                queue: u32::from(i),
                rx: 10 * u64::from(i),
                tx: 0,
                handed_off: 1,
                received_handoff: 0,
                loop_turns: 5,
            })
            .collect();
        let text = render(&two);
        assert!(
            text.contains(
                "Workers:       2 — core 0: 0 rx 1 handed off, core 1: 10 rx 1 handed off"
            ),
            "{text}"
        );
    }

    #[test]
    fn unhealthy_is_named_and_briefly_told() {
        use crate::health::{Check, CheckKind, CheckName, CheckState};
        let mut sick = status();
        sick.health = Some(Health::of(vec![Check {
            name: CheckName::Worker,
            kind: CheckKind::Liveness,
            state: CheckState::Failing,
            detail: "no progress for 7.0s".into(),
        }]));
        assert_eq!(brief(&sick), "Failing: worker: no progress for 7.0s");
        assert!(render(&sick).contains("Meshpath:      Failing: worker: no progress for 7.0s"));
        let mut old = status();
        old.health = None;
        assert_eq!(old.problems().len(), 1);
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
        assert!(status.dataplane.workers.is_empty(), "no workers listed");
        assert_eq!(status.services[0].backends[0].state.name(), "terminating");
        assert_eq!(status.clustermesh, None);
        let again: serde_json::Value = serde_json::to_value(&status).unwrap();
        assert_eq!(again["dataplane"]["forwarded"]["tunnel"], 0);
        assert_eq!(again["services"][0]["frontend"], "10.96.0.10:80/TCP");
        assert_eq!(again["nodes"][0]["address"], "198.18.1.1");
        assert_eq!(again["clustermesh"], serde_json::Value::Null);
    }
}
