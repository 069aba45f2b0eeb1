//! The agent's status socket: one status document (`meshpath_api::AgentStatus`) per connection, then
//! the socket closes (one task per connection, see [`super::socket`]). The document is collected on each connection from the live snapshot, the
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
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert;
use super::health::HealthMonitor;
use super::identities::IdentityDirectory;
use super::nodes::NodeDirectory;
use super::socket;

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
    pub health: Arc<HealthMonitor>,
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
            nodes: self.nodes.rows(),
            identities: self.identities.rows(),
            policies: super::policy::rows(&tables),
            health: Some(self.health.check()),
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

/// Serves the status on `listener` (bound at `path`) until `cancel`.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    sources: StatusSources,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let sources = Arc::new(sources);
    serve_documents(listener, path, cancel, move || {
        Ok(serde_json::to_vec(&sources.collect())?)
    })
    .await
}

/// One document per connection, made by `document` off the runtime's thread (a status of 100k
/// endpoints takes a while to collect and serialise) and written within the write deadline.
async fn serve_documents<D>(
    listener: UnixListener,
    path: &Path,
    cancel: CancellationToken,
    document: D,
) -> std::io::Result<()>
where
    D: Fn() -> anyhow::Result<Vec<u8>> + Clone + Send + Sync + 'static,
{
    socket::accept(listener, path, cancel, move |mut stream| {
        let document = document.clone();
        async move {
            let body = tokio::task::spawn_blocking(document)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            socket::write(&mut stream, &body).await
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    /// One client that connects and never reads must not hold up the next: the old socket wrote
    /// each answer inline, so a document bigger than the socket's buffer stopped it for everyone.
    #[tokio::test]
    async fn a_client_that_does_not_read_holds_up_nobody() {
        let dir = std::env::temp_dir().join(format!("mp-status-{}", std::process::id()));
        let path = dir.join("agent.sock");
        let listener = socket::bind(&path, socket::Access::default()).unwrap();
        let cancel = CancellationToken::new();
        let big = Arc::new(vec![b' '; 8 << 20]);
        let server = tokio::spawn({
            let (path, cancel) = (path.clone(), cancel.clone());
            async move { serve_documents(listener, &path, cancel, move || Ok(big.to_vec())).await }
        });
        let _stuck = UnixStream::connect(&path).await.unwrap();
        let mut second = UnixStream::connect(&path).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut got))
            .await
            .expect("answered while the first client holds its connection")
            .unwrap();
        assert_eq!(got.len(), 8 << 20);
        cancel.cancel();
        server.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
