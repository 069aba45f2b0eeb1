//! The agent's status, as the operator CLI reads it from the unix socket: one JSON document per
//! connection, then the socket closes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshpath_control::clustermesh::MeshStatus;

use super::identities::{IdentityDirectory, IdentityRow};
use super::nodes::{NodeDirectory, NodeRow};
use super::policy::EndpointPolicyRow;
use meshpath_dataplane::afxdp::StatsReader;
use meshpath_dataplane::service::BackendState;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Counters, Forward};
use meshpath_dataplane::Addr;
use meshpath_dataplane::DropReason;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What `meshpath status -o json` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub cluster: String,
    pub node: String,
    pub dataplane: DataplaneStatus,
    pub tables: TableSizes,
    /// Every service frontend and its backends, as the workers balance them now.
    pub services: Vec<ServiceStatus>,
    /// Each remote cluster's status, as `cilium-dbg status` shows ClusterMesh.
    pub clustermesh: serde_json::Value,
    /// Every node of every cluster the agent knows.
    pub nodes: Vec<NodeRow>,
    /// Every security identity the agent knows, with its labels.
    #[serde(default)]
    pub identities: Vec<IdentityRow>,
    /// Each pod on this node with its compiled policy, as the workers enforce it now.
    #[serde(default)]
    pub policies: Vec<EndpointPolicyRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `address:port/protocol`.
    pub frontend: String,
    pub backends: Vec<BackendInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `address:port`.
    pub backend: String,
    pub cluster: Option<u8>,
    /// `active`, `terminating` or `unhealthy`.
    pub state: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub received: u64,
    /// Forwarded packets by how they left.
    pub forwarded: BTreeMap<String, u64>,
    /// Dropped packets by reason (only reasons seen).
    pub dropped: BTreeMap<String, u64>,
    /// Per port: rx, tx, ring-full events.
    pub ports: Vec<PortStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub rx: u64,
    pub tx: u64,
    pub tx_ring_full: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableSizes {
    pub endpoints: usize,
    pub ipcache: usize,
    pub services: usize,
    pub nodes: usize,
}

/// What the status is made of: the live snapshot and the workers' copied-out counters.
#[derive(Clone)]
pub struct StatusSources {
    pub cluster: String,
    pub node: String,
    pub tables: Arc<ArcSwap<Tables>>,
    pub counters: Arc<ArcSwap<Counters>>,
    pub worker: StatsReader,
    pub mesh: Option<watch::Receiver<MeshStatus>>,
    pub nodes: NodeDirectory,
    pub identities: IdentityDirectory,
}

impl StatusSources {
    pub fn collect(&self) -> AgentStatus {
        let counters = self.counters.load();
        let tables = self.tables.load();
        let worker = self.worker.read();
        AgentStatus {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            dataplane: DataplaneStatus {
                received: counters.received.packets,
                forwarded: Forward::ALL
                    .iter()
                    .map(|f| (f.name().to_owned(), counters.forwarded(*f).packets))
                    .collect(),
                dropped: DropReason::ALL
                    .iter()
                    .map(|r| (r.name().to_owned(), counters.dropped(*r).packets))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
                ports: worker
                    .ports
                    .iter()
                    .map(|p| PortStatus {
                        port: p.port.0,
                        rx: p.rx,
                        tx: p.tx,
                        tx_ring_full: p.tx_ring_full,
                    })
                    .collect(),
            },
            tables: TableSizes {
                endpoints: tables.endpoints.len(),
                ipcache: tables.ipcache.len(),
                services: tables.services.len(),
                nodes: tables.nodes.len(),
            },
            services: services(&tables),
            clustermesh: self
                .mesh
                .as_ref()
                .and_then(|m| serde_json::to_value(&*m.borrow()).ok())
                .unwrap_or(serde_json::Value::Null),
            nodes: self.nodes.rows(),
            identities: self.identities.rows(),
            policies: super::policy::rows(&tables),
        }
    }
}

fn services(tables: &Tables) -> Vec<ServiceStatus> {
    let mut out: Vec<ServiceStatus> = tables
        .services
        .iter()
        .map(|service| {
            let f = service.frontend;
            let proto = match f.proto {
                6 => "TCP",
                17 => "UDP",
                _ => "?",
            };
            ServiceStatus {
                frontend: format!("{}/{proto}", socket(f.addr, f.port)),
                backends: service
                    .backends()
                    .iter()
                    .map(|b| BackendInfo {
                        backend: socket(b.addr, b.port),
                        cluster: Some(b.cluster.unwrap_or(tables.node.cluster).get()),
                        state: match b.state {
                            BackendState::Active => "active",
                            BackendState::Terminating => "terminating",
                            BackendState::Unhealthy => "unhealthy",
                        }
                        .to_owned(),
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.frontend.cmp(&b.frontend));
    out
}

fn socket(addr: Addr, port: u16) -> String {
    std::net::SocketAddr::new(addr.ip(), port).to_string()
}

/// Serves the status on `path` until `cancel`.
pub async fn serve(
    path: &Path,
    sources: StatusSources,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted?,
        };
        let body = serde_json::to_vec(&sources.collect())?;
        let _ = stream.write_all(&body).await;
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Reads the status from a running agent's socket.
pub fn read(path: &Path) -> anyhow::Result<AgentStatus> {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| anyhow::anyhow!("no agent answers on {}: {e}", path.display()))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// The status as a person reads it.
pub fn render_table(status: &AgentStatus) -> String {
    use std::fmt::Write;
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

/// `meshpath service list`: frontends → backends with their cluster and state.
pub fn render_services(status: &AgentStatus) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<28} {:<24} {:<8} {}\n",
        "FRONTEND", "BACKEND", "CLUSTER", "STATE"
    );
    for service in &status.services {
        let mut frontend = service.frontend.as_str();
        for b in &service.backends {
            let cluster = b.cluster.map_or("-".to_owned(), |c| c.to_string());
            let _ = writeln!(
                out,
                "{frontend:<28} {:<24} {cluster:<8} {}",
                b.backend, b.state
            );
            frontend = "";
        }
        if service.backends.is_empty() {
            let _ = writeln!(out, "{frontend:<28} (no backends)");
        }
    }
    out
}

/// `meshpath clustermesh status`, in the shape of `cilium-dbg status`'s ClusterMesh section.
pub fn render_clustermesh(status: &AgentStatus) -> String {
    use std::fmt::Write;
    let Some(remotes) = status.clustermesh.as_object() else {
        return "ClusterMesh: disabled\n".to_owned();
    };
    let ready = remotes.values().filter(|r| r["ready"] == true).count();
    let mut out = format!("ClusterMesh: {ready}/{} clusters ready\n", remotes.len());
    for (name, r) in remotes {
        let state = if r["ready"] == true {
            "ready"
        } else {
            "not ready"
        };
        let _ = writeln!(
            out,
            "  {name}: {state}, {} nodes, {} endpoints, {} identities, {} services, {} failures (last: {})",
            r["nodes"], r["endpoints"], r["identities"], r["services"], r["failures"],
            r["last_failure"].as_str().unwrap_or("never"),
        );
        let _ = writeln!(out, "  └ etcd: connected={}", r["connected"]);
        let _ = writeln!(
            out,
            "  └ remote configuration: retrieved={}, cluster-id={}, sync-canaries={}",
            r["config_retrieved"], r["cluster_id"], r["sync_canaries"]
        );
        let _ = writeln!(out, "  └ synchronization status: {}", r["synced"]);
        if let Some(error) = r["last_error"].as_str() {
            let _ = writeln!(out, "  └ last error: {error}");
        }
    }
    out
}
