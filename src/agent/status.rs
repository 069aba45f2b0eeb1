//! The agent's status, as the operator CLI reads it from the unix socket: one JSON document per
//! connection, then the socket closes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshpath_dataplane::afxdp::StatsReader;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Counters, Forward};
use meshpath_dataplane::DropReason;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// What `meshpath status -o json` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub cluster: String,
    pub node: String,
    pub dataplane: DataplaneStatus,
    pub tables: TableSizes,
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
        }
    }
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
