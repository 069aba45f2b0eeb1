//! The agent's status socket: one status document (`meshpath_api::AgentStatus`) per connection, then
//! the socket closes. The document is collected on each connection from the live snapshot, the
//! workers' copied-out counters and the control plane's directories.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshpath_api::service::{BackendInfo, Frontend, ServiceStatus};
use meshpath_api::status::{AgentStatus, DataplaneStatus, PortStatus, TableSizes};
use meshpath_api::Protocol;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_dataplane::afxdp::StatsReader;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Counters, Forward};
use meshpath_dataplane::DropReason;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert;
use super::identities::IdentityDirectory;
use super::nodes::NodeDirectory;

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
        AgentStatus {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            dataplane: dataplane(&counters, &self.worker),
            tables: TableSizes {
                endpoints: tables.endpoints.len() as u64,
                ipcache: tables.ipcache.len() as u64,
                services: tables.services.len() as u64,
                nodes: tables.nodes.len() as u64,
            },
            services: services(&tables),
            clustermesh: self
                .mesh
                .as_ref()
                .map(|m| convert::clustermesh(&m.borrow())),
            nodes: self.nodes.rows_reached(&tables),
            identities: self.identities.rows(),
            policies: super::policy::rows(&tables),
            policy_refusals: super::policy::refusals(&tables),
        }
    }
}

fn dataplane(counters: &Counters, worker: &StatsReader) -> DataplaneStatus {
    DataplaneStatus {
        received: counters.received.packets,
        forwarded: Forward::ALL
            .iter()
            .map(|f| (convert::forward_kind(*f), counters.forwarded(*f).packets))
            .collect(),
        dropped: DropReason::ALL
            .iter()
            .map(|r| (convert::drop_reason(*r), counters.dropped(*r).packets))
            .filter(|(_, n)| *n > 0)
            .collect(),
        ports: worker
            .read()
            .ports
            .iter()
            .map(|p| PortStatus {
                port: p.port.0,
                rx: p.rx,
                tx: p.tx,
                tx_ring_full: p.tx_ring_full,
            })
            .collect(),
    }
}

fn services(tables: &Tables) -> Vec<ServiceStatus> {
    let mut out: Vec<ServiceStatus> = tables
        .services
        .iter()
        .map(|service| {
            let f = service.frontend;
            ServiceStatus {
                frontend: Frontend {
                    address: convert::socket_addr(f.addr, f.port),
                    protocol: Protocol::from_number(f.proto),
                },
                backends: service
                    .backends()
                    .iter()
                    .map(|b| BackendInfo {
                        backend: convert::socket_addr(b.addr, b.port),
                        cluster: Some(b.cluster.unwrap_or(tables.node.cluster).get()),
                        state: convert::backend_state(b.state),
                    })
                    .collect(),
            }
        })
        .collect();
    // By their text, as the list always was.
    out.sort_by_cached_key(|s| s.frontend.to_string());
    out
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
