//! The agent's status socket: one status document (`meshpath_api::AgentStatus`) per connection, then
//! the socket closes (one task per connection, see [`super::socket`]). The document is collected on each connection from the live snapshot, the
//! workers' copied-out counters and the control plane's directories.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use meshpath_api::client::{StatusRequest, StatusView};
use meshpath_api::kvstore::KvStoreStatus;
use meshpath_api::service::{BackendInfo, Frontend, ServiceStatus, ServiceType};
use meshpath_api::status::{
    AgentStatus, ConntrackStatus, DataplaneStatus, PortRole, PortStatus, TableSizes, UmemStatus,
};
use meshpath_api::version::VersionInfo;
use meshpath_api::Protocol;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_control::local::LocalState;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Counters, Forward};
use meshpath_dataplane::{DropReason, PortId};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert;
use super::health::HealthMonitor;
use super::identities::IdentityDirectory;
use super::local_source::SourceInfo;
use super::nodes::NodeDirectory;
use super::observe::FlowHub;
use super::port_names::PortNames;
use super::report::ConntrackReport;
use super::socket;
use super::workers::NodeWorkers;
use super::xdp_counters::XdpPrograms;

/// What the status is made of: the live snapshot, the workers' copied-out reports and counters, the
/// control plane's directories and boards.
#[derive(Clone)]
pub struct StatusSources {
    pub cluster: String,
    pub node: String,
    pub tables: Arc<ArcSwap<Tables>>,
    /// The node's workers: their reports and counters, summed where the status has one figure.
    pub workers: NodeWorkers,
    /// Each port's interface and role.
    pub ports: PortNames,
    /// The ports of the pods the configuration lists (the others' pods came from the CNI plugin).
    pub configured_pods: Vec<PortId>,
    pub programs: XdpPrograms,
    pub mesh: Option<watch::Receiver<MeshStatus>>,
    /// The own cluster's etcd watched for external workloads (a node with `etcd` configured).
    pub external_watch: Option<watch::Receiver<MeshStatus>>,
    pub kvstore: Option<watch::Receiver<KvStoreStatus>>,
    pub local: watch::Receiver<Arc<LocalState>>,
    /// The local source: which, where, and how it goes.
    pub source: SourceInfo,
    pub nodes: NodeDirectory,
    pub identities: IdentityDirectory,
    pub flows: FlowHub,
    pub health: Arc<HealthMonitor>,
}

impl StatusSources {
    /// The own etcd's watch for external workloads: the one remote its board holds.
    fn external_workloads_watch(&self) -> Option<meshpath_api::clustermesh::RemoteClusterStatus> {
        let board = self.external_watch.as_ref()?.borrow();
        board.values().next().map(convert::remote_cluster)
    }

    pub fn collect(&self, view: StatusView) -> AgentStatus {
        let report = self.workers.report();
        let tables = self.tables.load();
        let full = view == StatusView::Full;
        AgentStatus {
            cluster: self.cluster.clone(),
            cluster_id: Some(tables.node.cluster.get()),
            node: self.node.clone(),
            dataplane: dataplane(&report.counters, &self.workers, &self.ports.list()),
            tables: TableSizes {
                endpoints: tables.endpoints.len() as u64,
                ipcache: tables.ipcache.len() as u64,
                services: tables.services.len() as u64,
                nodes: tables.nodes.len() as u64,
            },
            services: if full {
                services(&tables, &self.local.borrow())
            } else {
                Vec::new()
            },
            clustermesh: self
                .mesh
                .as_ref()
                .map(|m| convert::clustermesh(&m.borrow())),
            external_workloads_watch: self.external_workloads_watch(),
            nodes: if full {
                self.nodes.rows_reached(&tables)
            } else {
                Vec::new()
            },
            identities: if full {
                self.identities.rows()
            } else {
                Vec::new()
            },
            policies: if full {
                super::policy::rows(&tables)
            } else {
                Vec::new()
            },
            policy_refusals: super::policy::refusals(&tables),
            endpoints: if full {
                super::endpoint_list::rows(
                    &tables,
                    &self.identities,
                    |port| self.ports.get(port).map(|(name, _)| name),
                    &self.configured_pods,
                )
            } else {
                Vec::new()
            },
            health: Some(self.health.check()),
            version: Some(version()),
            kvstore: Some(
                self.kvstore
                    .as_ref()
                    .map_or_else(KvStoreStatus::disabled, |k| k.borrow().clone()),
            ),
            local_source: Some(self.source.status()),
            global_services: global_services(&self.local.borrow()),
            conntrack: Some(conntrack(&report.conntrack)),
            xdp: self.programs.read(),
            flows: Some(self.flows.status()),
            encryption: Some(convert::encryption(&report.wireguard)),
        }
    }
}

/// This build of the agent.
pub fn version() -> VersionInfo {
    VersionInfo::new(env!("CARGO_PKG_VERSION"), env!("MESHPATH_GIT_COMMIT"))
}

/// This cluster's services marked global.
pub fn global_services(local: &LocalState) -> u64 {
    local.services.values().filter(|s| s.global).count() as u64
}

fn conntrack(ct: &ConntrackReport) -> ConntrackStatus {
    ConntrackStatus {
        entries: ct.entries as u64,
        capacity: ct.capacity as u64,
        evicted_unreplied: ct.stats.evicted_unreplied,
        evicted_closing: ct.stats.evicted_closing,
        evicted_datagram: ct.stats.evicted_datagram,
        refused_full: ct.stats.refused_full,
        refused_quota: ct.stats.refused_quota,
    }
}

fn dataplane(
    counters: &Counters,
    workers: &NodeWorkers,
    names: &[(PortId, String, PortRole)],
) -> DataplaneStatus {
    let stats = workers.read();
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
        umem: Some(UmemStatus {
            chunks: stats.umem.chunks,
            free: stats.umem.free,
            orphaned: stats.umem.orphaned,
        }),
        workers: workers.each(),
        ports: stats
            .ports
            .iter()
            .map(|p| {
                let named = names.iter().find(|(id, _, _)| *id == p.port);
                PortStatus {
                    port: p.port.0,
                    interface: named.map(|(_, name, _)| name.clone()),
                    role: named.map(|(_, _, role)| *role),
                    rx: p.rx,
                    tx: p.tx,
                    tx_ring_full: p.tx_ring_full,
                    kernel: convert::kernel_drops(&p.kernel),
                }
            })
            .collect(),
    }
}

fn services(tables: &Tables, local: &LocalState) -> Vec<ServiceStatus> {
    let mut out: Vec<ServiceStatus> = tables
        .services
        .iter()
        .map(|service| {
            let f = service.frontend;
            ServiceStatus {
                id: Some(service.id.0),
                name: service_name(local, convert::socket_addr(f.addr, f.port), f.proto),
                frontend: Frontend {
                    address: convert::socket_addr(f.addr, f.port),
                    protocol: Protocol::from_number(f.proto),
                },
                service_type: ServiceType::ClusterIp,
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

/// `namespace/name` of this cluster's service that owns the frontend, if one does.
fn service_name(local: &LocalState, address: std::net::SocketAddr, proto: u8) -> Option<String> {
    local
        .services
        .values()
        .find(|s| {
            s.cluster_ips.contains(&address.ip())
                && s.ports
                    .iter()
                    .any(|p| p.port == address.port() && p.protocol == proto)
        })
        .map(|s| format!("{}/{}", s.service.namespace, s.service.name))
}

/// Serves the status on `listener` (bound at `path`) until `cancel`.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    sources: StatusSources,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let sources = Arc::new(sources);
    serve_documents(listener, path, cancel, move |view| {
        Ok(serde_json::to_vec(&sources.collect(view))?)
    })
    .await
}

/// How long the agent waits for a request line before answering with the full document.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// One document per connection, of the view the client asks for, made by `document` off the
/// runtime's thread (a status of 100k endpoints takes a while to collect and serialise) and written
/// within the write deadline.
async fn serve_documents<D>(
    listener: UnixListener,
    path: &Path,
    cancel: CancellationToken,
    document: D,
) -> std::io::Result<()>
where
    D: Fn(StatusView) -> anyhow::Result<Vec<u8>> + Clone + Send + Sync + 'static,
{
    socket::accept(listener, path, cancel, move |mut stream| {
        let document = document.clone();
        async move {
            let request: Option<StatusRequest> =
                socket::read_optional_request(&mut stream, REQUEST_WAIT).await?;
            let view = request.map_or(StatusView::Full, |r| r.view);
            let body = tokio::task::spawn_blocking(move || document(view))
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
            async move { serve_documents(listener, &path, cancel, move |_| Ok(big.to_vec())).await }
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
