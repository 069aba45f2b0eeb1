//! `meshpath observe`: the workers' flow logs as a stream of readable flows, off the packet path.
//!
//! The worker drains its flow log after each batch into a bounded lock-free queue (`try_send`: no
//! lock and no syscall, since the reader never blocks on it; a full queue loses events, counted). A
//! control-plane task polls the queue, names the peers (local pods by address, remote ones by their
//! ipcache identity and cluster), keeps the last [`KEEP`] flows and fans new ones out to the observers
//! of the socket `<status-socket>.observe`: one JSON flow per line.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{Flow, Peer};
use meshpath_api::status::FlowLogStatus;
use meshpath_api::Protocol;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_control::local::LocalState;
use meshpath_dataplane::flowlog::{Direction, FlowEvent};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::{Addr, Identity};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::convert;
use super::socket::{self, ConnectionError};

/// Flows the agent keeps for `meshpath observe` without `--follow`.
pub const KEEP: usize = 1024;
/// Events in flight between the worker and the control task.
const QUEUE: usize = 8192;
const POLL: Duration = Duration::from_millis(20);

/// The worker's end of the queue.
pub struct FlowSink {
    queue: SyncSender<FlowEvent>,
    lost: Arc<AtomicU64>,
    /// The clock the worker stamps events with.
    pub epoch: Instant,
}

impl FlowSink {
    /// Hands an event on; never blocks: if the control task is behind, the event is lost and counted.
    pub fn send(&self, event: FlowEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(event)
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The control task's end of the queue.
pub struct FlowSource {
    queue: Receiver<FlowEvent>,
    lost: Arc<AtomicU64>,
    epoch: Instant,
}

pub fn channel() -> (FlowSink, FlowSource) {
    let (tx, rx) = sync_channel(QUEUE);
    let lost = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    (
        FlowSink {
            queue: tx,
            lost: lost.clone(),
            epoch,
        },
        FlowSource {
            queue: rx,
            lost,
            epoch,
        },
    )
}

/// What names the peers of a flow.
pub struct Names {
    pub cluster: String,
    pub node: String,
    pub tables: Arc<ArcSwap<Tables>>,
    pub mesh: Option<watch::Receiver<MeshStatus>>,
    /// This cluster's pods, on every node: names pods of other nodes by address.
    pub local: Option<watch::Receiver<Arc<LocalState>>>,
}

/// `namespace/name` of this cluster's pods by address, rebuilt when the local state changes.
#[derive(Default)]
struct PodIndex(HashMap<Addr, String>);

impl PodIndex {
    fn refresh(&mut self, local: &mut Option<watch::Receiver<Arc<LocalState>>>) {
        let Some(local) = local else { return };
        if !local.has_changed().unwrap_or(false) && !self.0.is_empty() {
            return;
        }
        let state = local.borrow_and_update().clone();
        self.0 = state
            .pods
            .values()
            .flat_map(|p| {
                let name = format!("{}/{}", p.pod.namespace, p.pod.name);
                p.ips.iter().map(move |ip| (Addr::from(*ip), name.clone()))
            })
            .collect();
    }
}

/// What the control plane knows at the time a batch of events is named.
struct View<'a> {
    tables: &'a Tables,
    mesh: Option<&'a MeshStatus>,
    pods: &'a PodIndex,
}

impl Names {
    fn flow(&self, view: &View<'_>, wall_ms: u64, e: &FlowEvent) -> Flow {
        Flow {
            time_ms: wall_ms,
            node: self.node.clone(),
            source: self.source(view, e),
            destination: self.peer(view, e.flow.dst, e.flow.dst_port, e.dst_identity),
            protocol: Protocol::from_number(e.flow.proto),
            outcome: convert::outcome(e.verdict),
            direction: convert::direction(e.direction),
            backend: e
                .backend
                .map(|(addr, port)| convert::socket_addr(addr, port)),
        }
    }

    /// A pod's frame whose source address is not its own (spoofed) is still named after the pod
    /// that sent it: the local endpoint of its identity.
    fn source(&self, view: &View<'_>, e: &FlowEvent) -> Peer {
        let mut peer = self.peer(view, e.flow.src, e.flow.src_port, e.src_identity);
        if peer.pod.is_none() && e.direction == Direction::FromPod {
            let sender = view
                .tables
                .endpoints
                .iter()
                .find(|ep| ep.identity == e.src_identity);
            if let Some(endpoint) = sender {
                self.name_local(&mut peer, &endpoint.name);
            }
        }
        peer
    }

    fn name_local(&self, peer: &mut Peer, name: &str) {
        let (namespace, pod) = name.split_once('/').unwrap_or(("", name));
        peer.cluster = Some(self.cluster.clone());
        peer.namespace = Some(namespace.to_owned());
        peer.pod = Some(pod.to_owned());
    }

    /// Pods of this node by their endpoint, of this cluster by the local state, of other clusters
    /// by their ipcache entry's cluster (and identity).
    fn peer(&self, view: &View<'_>, addr: Addr, port: u16, identity: Identity) -> Peer {
        let mut peer = Peer {
            ip: addr.ip(),
            port,
            identity: identity.get(),
            cluster: None,
            namespace: None,
            pod: None,
        };
        if let Some(endpoint) = view.tables.endpoints.by_addr(addr) {
            self.name_local(&mut peer, &endpoint.name);
        } else if let Some(name) = view.pods.0.get(&addr) {
            self.name_local(&mut peer, name);
        } else if let Some(id) = view.tables.ipcache.lookup(addr).and_then(|e| e.cluster) {
            let remote = view
                .mesh
                .and_then(|m| m.values().find(|r| r.cluster_id == Some(id.get())))
                .map_or_else(|| format!("cluster-id-{id}"), |r| r.name.clone());
            let local = view.tables.node.cluster == id;
            peer.cluster = Some(if local { self.cluster.clone() } else { remote });
        }
        peer
    }
}

/// The flows kept for observers that do not follow, the stream of new ones, and how many were seen
/// and lost.
#[derive(Clone)]
pub struct FlowHub {
    recent: Arc<Mutex<VecDeque<Flow>>>,
    live: broadcast::Sender<Flow>,
    seen: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
}

impl Default for FlowHub {
    fn default() -> Self {
        FlowHub {
            recent: Arc::default(),
            live: broadcast::channel(KEEP).0,
            seen: Arc::default(),
            lost: Arc::default(),
        }
    }
}

impl FlowHub {
    /// What the status reports of the flow log.
    pub fn status(&self) -> FlowLogStatus {
        FlowLogStatus {
            kept: self.recent.lock().map_or(0, |r| r.len() as u64),
            capacity: KEEP as u64,
            seen: self.seen.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, flow: Flow) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEEP {
                recent.pop_front();
            }
            recent.push_back(flow.clone());
        }
        let _ = self.live.send(flow);
    }

    fn recent(&self) -> Vec<Flow> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Polls the workers' queue until cancelled, naming each event and publishing it.
pub async fn collect(
    source: FlowSource,
    mut names: Names,
    hub: FlowHub,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL);
    let mut pods = PodIndex::default();
    let mut reported_lost = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        pods.refresh(&mut names.local);
        let tables = names.tables.load();
        let mesh = names.mesh.as_ref().map(|m| m.borrow().clone());
        let view = View {
            tables: &tables,
            mesh: mesh.as_ref(),
            pods: &pods,
        };
        let wall_now = unix_ms(SystemTime::now());
        let mono_now = source.epoch.elapsed().as_millis() as u64;
        while let Ok(event) = source.queue.try_recv() {
            let wall = wall_now.saturating_sub(mono_now.saturating_sub(event.time_ms));
            hub.publish(names.flow(&view, wall, &event));
        }
        let lost = source.lost.load(Ordering::Relaxed);
        hub.lost.store(lost, Ordering::Relaxed);
        if lost != reported_lost {
            tracing::warn!(lost, "flow events lost: the observe queue was full");
            reported_lost = lost;
        }
    }
}

/// Serves observers on `listener` (bound at `path`) until cancelled: the kept flows, then (when
/// asked) every new one.
pub async fn serve(
    listener: UnixListener,
    path: &Path,
    hub: FlowHub,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    socket::accept(listener, path, cancel, move |stream| {
        observer(stream, hub.clone())
    })
    .await
}

async fn observer(stream: UnixStream, hub: FlowHub) -> Result<(), ConnectionError> {
    let (read, mut write) = stream.into_split();
    let request: ObserveRequest = socket::read_request(read).await?;
    // Subscribe first: a flow published meanwhile is then not missed (at worst printed twice).
    let mut live = hub.live.subscribe();
    for flow in hub.recent() {
        socket::write(&mut write, &json_line(&flow)?).await?;
    }
    if !request.follow {
        return Ok(());
    }
    loop {
        match live.recv().await {
            Ok(flow) => socket::write(&mut write, &json_line(&flow)?).await?,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn json_line(flow: &Flow) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(flow)?;
    line.push(b'\n');
    Ok(line)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_api::flow::Outcome;
    use meshpath_api::Client;
    use meshpath_dataplane::endpoint::Endpoint;
    use meshpath_dataplane::flow::proto;
    use meshpath_dataplane::flowlog::{Direction, FlowVerdict};
    use meshpath_dataplane::gateway::Gateway;
    use meshpath_dataplane::ipcache::{IpCacheEntry, IpPrefix};
    use meshpath_dataplane::route::{RoutingMode, Underlay};
    use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
    use meshpath_dataplane::stats::Forward;
    use meshpath_dataplane::tunnel::TunnelProtocol;
    use meshpath_dataplane::{ClusterId, DropReason, FlowKey, PortId};
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    const X_WING: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 10);
    const REBEL_C2: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 10);

    fn identity(id: u32) -> Identity {
        Identity::new(id).unwrap()
    }

    fn names() -> Names {
        let node = NodeConfig {
            cluster: ClusterId::new(1).unwrap(),
            ipv4: Some(Ipv4Addr::new(198, 18, 1, 1)),
            ipv6: None,
            uplink: PortId(0),
            underlay: Underlay {
                mac: [2, 0, 0, 1, 0, 1],
                router_mac: [2, 0, 0, 0, 0, 0xfe],
                mtu: 1500,
            },
            gateway: Gateway {
                mac: [2, 0xaa, 0, 0, 0, 1],
            },
            routing: RoutingMode::Tunnel,
            tunnel: TunnelProtocol::Vxlan,
            host: None,
            masquerade: None,
        };
        let mut t = Tables::empty(node, Capacities::default());
        t.endpoints
            .insert(Endpoint {
                port: PortId(1),
                mac: [2, 0, 0, 1, 1, 0],
                ipv4: Some(X_WING),
                ipv6: None,
                identity: identity(0x1_0100),
                name: "default/x-wing".into(),
            })
            .unwrap();
        let entry = IpCacheEntry {
            identity: identity(0x2_0100),
            tunnel_endpoint: Some(Ipv4Addr::new(198, 18, 2, 1).into()),
            cluster: ClusterId::new(2),
        };
        t.ipcache
            .insert(IpPrefix::host(REBEL_C2.into()), entry)
            .unwrap();
        let c2 = meshpath_control::cluster_name::ClusterName::new("cluster2").unwrap();
        let mut mesh = MeshStatus::new();
        let mut remote = meshpath_control::clustermesh::RemoteStatus::new(&c2, 1);
        remote.cluster_id = Some(2);
        mesh.insert(c2, remote);
        Names {
            cluster: "cluster1".into(),
            node: "c1-n1".into(),
            tables: Arc::new(ArcSwap::from_pointee(t)),
            mesh: Some(watch::channel(mesh).1),
            local: None,
        }
    }

    fn event(src: Ipv4Addr, verdict: FlowVerdict) -> FlowEvent {
        FlowEvent {
            time_ms: 1,
            flow: FlowKey {
                src: src.into(),
                dst: REBEL_C2.into(),
                src_port: 40000,
                dst_port: 80,
                proto: proto::TCP,
            },
            backend: Some((REBEL_C2.into(), 8080)),
            src_identity: identity(0x1_0100),
            dst_identity: identity(0x2_0100),
            verdict,
            direction: Direction::FromPod,
        }
    }

    fn flow_of(names: &Names, e: &FlowEvent) -> Flow {
        let tables = names.tables.load();
        let mesh = names.mesh.as_ref().map(|m| m.borrow().clone());
        let mut pods = PodIndex::default();
        pods.0
            .insert(Ipv4Addr::new(100, 64, 2, 10).into(), "default/p21".into());
        let view = View {
            tables: &tables,
            mesh: mesh.as_ref(),
            pods: &pods,
        };
        names.flow(&view, 1_700_000_000_123, e)
    }

    #[test]
    fn names_local_pods_remote_clusters_and_spoofers() {
        let names = names();
        let denied = event(X_WING, FlowVerdict::Dropped(DropReason::PolicyDenied));
        let flow = flow_of(&names, &denied);
        assert_eq!(flow.source.name(), "cluster1/default/x-wing");
        assert_eq!(flow.destination.cluster.as_deref(), Some("cluster2"));
        assert_eq!(flow.destination.identity, 0x2_0100);
        assert_eq!(
            flow.outcome,
            Outcome::Dropped(meshpath_api::DropReason::PolicyDenied)
        );
        assert_eq!(flow.backend, Some("100.65.1.10:8080".parse().unwrap()));
        let line = meshpath_api::flow::render(&flow);
        assert!(
            line.starts_with("22:13:20.123  cluster1/default/x-wing → cluster2/"),
            "{line}"
        );
        assert!(
            line.contains("TCP 40000 → 80  DROPPED (policy_denied)  via 100.65.1.10:8080"),
            "{line}"
        );

        let liar = Ipv4Addr::new(100, 64, 1, 99);
        let spoofed = event(liar, FlowVerdict::Dropped(DropReason::SpoofedSource));
        let flow = flow_of(&names, &spoofed);
        assert_eq!(flow.source.ip, liar);
        assert_eq!(
            flow.source.pod.as_deref(),
            Some("x-wing"),
            "named by its port's identity"
        );

        let mut other_node = event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel));
        other_node.flow.dst = Ipv4Addr::new(100, 64, 2, 10).into();
        let flow = flow_of(&names, &other_node);
        assert_eq!(flow.destination.name(), "cluster1/default/p21");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_kept_flows_then_follows_new_ones() {
        let names = names();
        let dir = std::env::temp_dir().join(format!("meshpath-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = dir.join("agent.sock");
        let (sink, source) = channel();
        let hub = FlowHub::default();
        let cancel = CancellationToken::new();
        tokio::spawn(collect(source, names, hub.clone(), cancel.clone()));
        let path = meshpath_api::client::observe_socket(&status);
        assert_eq!(path, dir.join("agent.sock.observe"));
        tokio::spawn(serve_owned(path.clone(), hub, cancel.clone()));
        sink.send(event(
            X_WING,
            FlowVerdict::Dropped(DropReason::PolicyDenied),
        ));
        assert!(wait_for_socket(&path).await);
        let kept = read_flows(&status, false, usize::MAX).await;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].outcome.reason(), "policy_denied");

        let follower = tokio::task::spawn_blocking({
            let status = status.clone();
            move || collect_flows(&status, true, 2)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.send(event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel)));
        let followed = tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("the new flow arrives")
            .unwrap();
        let reasons: Vec<&str> = followed.iter().map(|f| f.outcome.reason()).collect();
        assert_eq!(reasons, ["policy_denied", "tunnel"]);
        cancel.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn serve_owned(path: PathBuf, hub: FlowHub, cancel: CancellationToken) {
        let listener = socket::bind(&path, socket::Access::default()).unwrap();
        serve(listener, &path, hub, cancel).await.unwrap();
    }

    async fn wait_for_socket(path: &Path) -> bool {
        for _ in 0..100 {
            if path.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn read_flows(status: &Path, follow: bool, max: usize) -> Vec<Flow> {
        // The collector polls: give it a turn before reading what is kept.
        tokio::time::sleep(POLL * 3).await;
        let status = status.to_owned();
        tokio::task::spawn_blocking(move || collect_flows(&status, follow, max))
            .await
            .unwrap()
    }

    fn collect_flows(status: &Path, follow: bool, max: usize) -> Vec<Flow> {
        let mut flows = Vec::new();
        Client::new(status)
            .observe(follow, |flow| {
                flows.push(flow);
                flows.len() < max
            })
            .unwrap();
        flows
    }
}
