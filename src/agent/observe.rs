//! `meshpath observe`: the workers' flow logs as a stream of readable flows, off the packet path.
//!
//! The worker drains its flow log after each batch into a bounded lock-free queue (`try_send`: no
//! lock and no syscall, since the reader never blocks on it; a full queue loses events, counted). A
//! control-plane task polls the queue, names the peers (local pods by address, remote ones by their
//! ipcache identity and cluster), keeps the last [`KEEP`] flows and fans new ones out to the observers
//! of the socket `<status-socket>.observe`: one JSON flow per line.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_control::local::LocalState;
use meshpath_dataplane::flow::proto;
use meshpath_dataplane::flowlog::{Direction, FlowEvent, FlowVerdict};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::{Addr, Identity};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Flows the agent keeps for `meshpath observe` without `--follow`.
pub const KEEP: usize = 1024;
/// Events in flight between the worker and the control task.
const QUEUE: usize = 8192;
const POLL: Duration = Duration::from_millis(20);

/// One flow as `meshpath observe -o json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Wall clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node whose worker saw it.
    pub node: String,
    pub source: Peer,
    pub destination: Peer,
    /// `TCP`, `UDP`, `ICMPv4`, `ICMPv6` or the protocol number.
    pub protocol: String,
    /// `forwarded` or `dropped`.
    pub verdict: String,
    /// How it was forwarded (`local_pod`, `tunnel`, ...), or why it was dropped (`policy_denied`, ...).
    pub reason: String,
    /// `from_pod` or `from_uplink`.
    pub direction: String,
    /// `address:port` the service translated the destination to.
    pub backend: Option<String>,
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: String,
    pub port: u16,
    pub identity: u32,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Peer {
    /// `cluster/namespace/pod`, `cluster/identity:N` or the address.
    pub fn name(&self) -> String {
        match (&self.cluster, &self.namespace, &self.pod) {
            (Some(c), Some(ns), Some(pod)) => format!("{c}/{ns}/{pod}"),
            (Some(c), _, _) => format!("{c}/{} (identity {})", self.ip, self.identity),
            _ => self.ip.clone(),
        }
    }
}

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
        let (verdict, reason) = match e.verdict {
            FlowVerdict::Forwarded(how) => ("forwarded", how.name()),
            FlowVerdict::Dropped(why) => ("dropped", why.name()),
        };
        Flow {
            time_ms: wall_ms,
            node: self.node.clone(),
            source: self.source(view, e),
            destination: self.peer(view, e.flow.dst, e.flow.dst_port, e.dst_identity),
            protocol: protocol_name(e.flow.proto),
            verdict: verdict.to_owned(),
            reason: reason.to_owned(),
            direction: e.direction.name().to_owned(),
            backend: e.backend.map(|(addr, port)| socket(addr, port)),
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
            ip: addr.to_string(),
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

/// The flows kept for observers that do not follow, and the stream of new ones.
#[derive(Clone)]
pub struct FlowHub {
    recent: Arc<Mutex<VecDeque<Flow>>>,
    live: broadcast::Sender<Flow>,
}

impl Default for FlowHub {
    fn default() -> Self {
        FlowHub {
            recent: Arc::default(),
            live: broadcast::channel(KEEP).0,
        }
    }
}

impl FlowHub {
    fn publish(&self, flow: Flow) {
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
        if lost != reported_lost {
            tracing::warn!(lost, "flow events lost: the observe queue was full");
            reported_lost = lost;
        }
    }
}

/// What a client asks for, as its first line.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    follow: bool,
}

/// The observe socket's path beside the status socket's.
pub fn socket_path(status_socket: &Path) -> PathBuf {
    let mut path = status_socket.as_os_str().to_owned();
    path.push(".observe");
    PathBuf::from(path)
}

/// Serves observers until cancelled: the kept flows, then (when asked) every new one.
pub async fn serve(path: &Path, hub: FlowHub, cancel: CancellationToken) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted?,
        };
        let hub = hub.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = observer(stream, hub) => {}
            }
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn observer(stream: UnixStream, hub: FlowHub) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let request: Request = serde_json::from_str(&line)?;
    // Subscribe first: a flow published meanwhile is then not missed (at worst printed twice).
    let mut live = hub.live.subscribe();
    for flow in hub.recent() {
        write.write_all(&json_line(&flow)?).await?;
    }
    if !request.follow {
        return Ok(());
    }
    loop {
        match live.recv().await {
            Ok(flow) => write.write_all(&json_line(&flow)?).await?,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn json_line(flow: &Flow) -> anyhow::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(flow)?;
    line.push(b'\n');
    Ok(line)
}

/// Which flows the CLI prints.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
    pub verdict: Option<String>,
}

impl Filter {
    /// A flow passes when either end matches every peer filter given, and its verdict matches.
    pub fn matches(&self, flow: &Flow) -> bool {
        let end = |p: &Peer| {
            let pod = self.pod.as_deref().is_none_or(|want| {
                let full = format!(
                    "{}/{}",
                    p.namespace.as_deref().unwrap_or(""),
                    p.pod.as_deref().unwrap_or("")
                );
                p.pod.as_deref() == Some(want) || full == want
            });
            let ns = self
                .namespace
                .as_deref()
                .is_none_or(|n| p.namespace.as_deref() == Some(n));
            let cluster = self
                .cluster
                .as_deref()
                .is_none_or(|c| p.cluster.as_deref() == Some(c));
            pod && ns && cluster
        };
        let verdict = self.verdict.as_deref().is_none_or(|v| flow.verdict == v);
        verdict && (end(&flow.source) || end(&flow.destination))
    }
}

/// Reads flows from a running agent, calling `each` for every one until the agent closes the stream
/// (without `follow`: after the kept flows) or `each` says stop.
pub fn read(
    status_socket: &Path,
    follow: bool,
    mut each: impl FnMut(Flow) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let path = socket_path(status_socket);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", path.display()))?;
    let mut request = serde_json::to_vec(&Request { follow })?;
    request.push(b'\n');
    stream.write_all(&request)?;
    for line in std::io::BufReader::new(stream).lines() {
        let flow: Flow = serde_json::from_str(&line?)?;
        if !each(flow)? {
            break;
        }
    }
    Ok(())
}

/// A flow as one line, like `hubble observe`:
/// `time  src → dst  proto ports  verdict (reason)  via backend`.
pub fn render(flow: &Flow) -> String {
    let ports = match flow.protocol.as_str() {
        "TCP" | "UDP" => format!(" {} → {}", flow.source.port, flow.destination.port),
        _ => String::new(),
    };
    let via = flow
        .backend
        .as_deref()
        .map_or(String::new(), |b| format!("  via {b}"));
    format!(
        "{}  {} → {}  {}{ports}  {} ({}){via}",
        clock(flow.time_ms),
        flow.source.name(),
        flow.destination.name(),
        flow.protocol,
        flow.verdict.to_uppercase(),
        flow.reason,
    )
}

/// `HH:MM:SS.mmm` (UTC).
fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn protocol_name(number: u8) -> String {
    match number {
        proto::TCP => "TCP".into(),
        proto::UDP => "UDP".into(),
        proto::ICMP => "ICMPv4".into(),
        proto::ICMPV6 => "ICMPv6".into(),
        n => format!("proto-{n}"),
    }
}

fn socket(addr: Addr, port: u16) -> String {
    if addr.is_ipv4() {
        format!("{addr}:{port}")
    } else {
        format!("[{addr}]:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::endpoint::Endpoint;
    use meshpath_dataplane::flowlog::Direction;
    use meshpath_dataplane::gateway::Gateway;
    use meshpath_dataplane::ipcache::{IpCacheEntry, IpPrefix};
    use meshpath_dataplane::route::{RoutingMode, Underlay};
    use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
    use meshpath_dataplane::stats::Forward;
    use meshpath_dataplane::tunnel::TunnelProtocol;
    use meshpath_dataplane::{ClusterId, DropReason, FlowKey, PortId};
    use std::net::Ipv4Addr;

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
            (flow.verdict.as_str(), flow.reason.as_str()),
            ("dropped", "policy_denied")
        );
        assert_eq!(flow.backend.as_deref(), Some("100.65.1.10:8080"));
        let line = render(&flow);
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
        assert_eq!(flow.source.ip, "100.64.1.99");
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

    #[test]
    fn filters_by_either_end_and_verdict() {
        let names = names();
        let flow = flow_of(
            &names,
            &event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel)),
        );
        let filter = |pod: Option<&str>, cluster: Option<&str>, verdict: Option<&str>| Filter {
            pod: pod.map(String::from),
            namespace: None,
            cluster: cluster.map(String::from),
            verdict: verdict.map(String::from),
        };
        assert!(filter(None, None, None).matches(&flow));
        assert!(filter(Some("x-wing"), None, Some("forwarded")).matches(&flow));
        assert!(filter(Some("default/x-wing"), Some("cluster1"), None).matches(&flow));
        assert!(
            filter(None, Some("cluster2"), None).matches(&flow),
            "the destination's cluster"
        );
        assert!(!filter(Some("x-wing"), Some("cluster2"), None).matches(&flow));
        assert!(!filter(Some("tie-fighter"), None, None).matches(&flow));
        assert!(!filter(None, None, Some("dropped")).matches(&flow));
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
        let path = socket_path(&status);
        assert_eq!(path, dir.join("agent.sock.observe"));
        tokio::spawn(serve_owned(path.clone(), hub, cancel.clone()));
        sink.send(event(
            X_WING,
            FlowVerdict::Dropped(DropReason::PolicyDenied),
        ));
        assert!(wait_for_socket(&path).await);
        let kept = read_flows(&status, false, usize::MAX).await;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].reason, "policy_denied");

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
        let reasons: Vec<&str> = followed.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons, ["policy_denied", "tunnel"]);
        cancel.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn serve_owned(path: PathBuf, hub: FlowHub, cancel: CancellationToken) {
        serve(&path, hub, cancel).await.unwrap();
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
        read(status, follow, |flow| {
            flows.push(flow);
            Ok(flows.len() < max)
        })
        .unwrap();
        flows
    }
}
