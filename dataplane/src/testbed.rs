//! A ready-made node for benchmarks and fuzzing (feature `testbed`): node 1 of cluster1 with local
//! client pods, remote endpoints spread over other clusters' nodes, global services whose backends are
//! those endpoints, identity policy, and the frames that flow between them — at any scale.
//!
//! Addresses follow the lab's plan: cluster c's pods in 100.(63+c).0.0/16, its nodes in 198.18.c.0/24.
//! Service frontends sit in 100.64.240.0/20 (more than the lab's /24, to hold benchmark-sized tables).

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::conntrack::{ConntrackConfig, Timeouts};
use crate::endpoint::Endpoint;
use crate::flow::proto;
use crate::gateway::Gateway;
use crate::ipcache::{IpCacheEntry, IpPrefix};
use crate::pipeline::{self, Verdict, WorkerState};
use crate::policy::{
    self, EgressRule, IdentityLabels, LabelSelector, Labels, Operator, Peer, PolicyRule, PortRule,
    Protocol, CLUSTER_LABEL,
};
use crate::route::{NodeLink, RemoteNode, RoutingMode, Underlay};
use crate::service::{Backend, BackendState, Frontend, Service, ServiceId};
use crate::snapshot::{Capacities, NodeConfig, Tables};
use crate::steering::{Owner, Steering};
use crate::tunnel::{self, Encapsulation, TunnelProtocol};
use crate::wire::checksum;
use crate::{Addr, ClusterId, Frame, Identity, PortId};

pub const UPLINK: PortId = PortId(0);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 1, 0, 1];
pub const BACKEND_PORT: u16 = 8080;
/// Remote endpoints of one deployment share an identity.
const ENDPOINTS_PER_IDENTITY: usize = 100;
const REMOTE_NODES_PER_CLUSTER: usize = 250;
const ENDPOINTS_PER_CLUSTER: usize = 60_000;

/// How big the node's world is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub local_pods: usize,
    /// Remote endpoints, each a /32 in the ipcache.
    pub remote_endpoints: usize,
    pub services: usize,
    pub backends_per_service: usize,
    pub policy_rules: usize,
    /// Live service flows put in conntrack before measuring (each takes two entries).
    pub flows: usize,
}

impl Scale {
    /// What the pipeline benchmark asks for.
    pub const BENCHMARK: Scale = Scale {
        local_pods: 64,
        remote_endpoints: 100_000,
        services: 10_000,
        backends_per_service: 10,
        policy_rules: 1_000,
        flows: 100_000,
    };

    /// Small enough to build per fuzz input.
    pub const TINY: Scale = Scale {
        local_pods: 2,
        remote_endpoints: 20,
        services: 4,
        backends_per_service: 3,
        policy_rules: 4,
        flows: 8,
    };
}

/// One service flow from a local pod, as the benchmark replays it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub pod: usize,
    pub src_port: u16,
    pub service: usize,
}

/// The node, its tables and its traffic.
pub struct Testbed {
    pub tables: Tables,
    pub scale: Scale,
    pub flows: Vec<Flow>,
}

pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 1, 10 + i as u8)
}

pub fn pod_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 1, 1, i as u8]
}

pub fn pod_port(i: usize) -> PortId {
    PortId(1 + i as u16)
}

fn pod_identity(i: usize) -> Identity {
    Identity::new(0x1_0100 + i as u32).unwrap_or(Identity::UNKNOWN)
}

pub fn node_ip() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 1)
}

fn remote_cluster(j: usize) -> u8 {
    2 + (j / ENDPOINTS_PER_CLUSTER) as u8
}

pub fn remote_ip(j: usize) -> Ipv4Addr {
    let k = j % ENDPOINTS_PER_CLUSTER;
    Ipv4Addr::new(
        100,
        63 + remote_cluster(j),
        (k / 250) as u8,
        1 + (k % 250) as u8,
    )
}

/// The node that hosts remote endpoint `j`.
pub fn remote_node(j: usize) -> Ipv4Addr {
    let k = j % ENDPOINTS_PER_CLUSTER;
    Ipv4Addr::new(
        198,
        18,
        remote_cluster(j),
        1 + (k % REMOTE_NODES_PER_CLUSTER) as u8,
    )
}

fn remote_identity(j: usize) -> Identity {
    let cluster = u32::from(remote_cluster(j));
    let k = (j % ENDPOINTS_PER_CLUSTER) / ENDPOINTS_PER_IDENTITY;
    Identity::new((cluster << 16) | 0x100 | k as u32).unwrap_or(Identity::UNKNOWN)
}

pub fn frontend(s: usize) -> Frontend {
    Frontend {
        addr: Ipv4Addr::new(100, 64, 240 + (s / 256 % 16) as u8, (s % 256) as u8).into(),
        port: 80 + (s / 4096) as u16,
        proto: proto::UDP,
    }
}

/// Backend `b` of service `s`: a remote endpoint.
pub fn backend_endpoint(scale: &Scale, s: usize, b: usize) -> usize {
    (s * scale.backends_per_service + b) % scale.remote_endpoints.max(1)
}

impl Testbed {
    /// Builds the node's tables at `scale`.
    pub fn new(scale: Scale) -> Testbed {
        let mut tables = Tables::empty(node_config(), Capacities::default());
        let mut identities = IdentityLabels::new();
        add_local_pods(&mut tables, &mut identities, &scale);
        add_remote_endpoints(&mut tables, &mut identities, &scale);
        add_services(&mut tables, &scale);
        let rules = policy_rules(&scale);
        let local = ClusterId::new(1).expect("1 is a mesh id");
        tables.policy = policy::compile(&rules, &identities, local, &Default::default());
        assert!(
            tables.policy.refusals().is_empty(),
            "the testbed's policy fits the default limits"
        );
        let flows = (0..scale.flows)
            .map(|f| Flow {
                pod: f % scale.local_pods,
                src_port: 1024 + (f / scale.local_pods) as u16,
                service: f % scale.services,
            })
            .collect();
        Testbed {
            tables,
            scale,
            flows,
        }
    }

    /// A worker whose conntrack holds every flow of the testbed, established by its first packet.
    pub fn warmed_worker(&self, capacity: usize) -> WorkerState {
        let only = Steering::new(1).expect("one worker");
        let mut workers = self.warmed_workers(only, capacity);
        workers.pop().expect("one worker")
    }

    /// The workers of `steering`, each in its slot and with the flows of the testbed it owns
    /// established in its conntrack (each holds `capacity` entries at most).
    pub fn warmed_workers(&self, steering: Steering, capacity: usize) -> Vec<WorkerState> {
        let mut workers: Vec<WorkerState> = (0..steering.workers())
            .map(|index| WorkerState {
                slot: steering.slot(index),
                ..WorkerState::new(ConntrackConfig {
                    capacity,
                    timeouts: Timeouts::default(),
                    endpoint_quota: None,
                })
            })
            .collect();
        let mut buf = vec![0u8; 2048];
        for flow in &self.flows {
            let head = crate::frame::HEADROOM;
            let len = self.request(flow, &mut buf[head..]);
            let port = pod_port(flow.pod);
            let owner = match steering.owner(&self.tables, port, &buf[head..head + len]) {
                Owner::Worker(w) => usize::from(w),
                Owner::Any => 0,
            };
            let mut frame =
                Frame::new(&mut buf, head, len, port).expect("the buffer holds a frame");
            let state = &mut workers[owner];
            let verdict = pipeline::process_one(&self.tables, state, 0, &mut frame);
            assert_eq!(verdict, Verdict::Transmit(UPLINK), "warming {flow:?}");
        }
        workers
    }

    /// Writes the 60-byte UDP frame (64 on the wire with its FCS) of `flow` from its pod to the
    /// service frontend; returns its length.
    pub fn request(&self, flow: &Flow, out: &mut [u8]) -> usize {
        let fe = frontend(flow.service);
        let dst = fe
            .addr
            .v4_bits()
            .map(Ipv4Addr::from)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let udp = Udp {
            src_mac: pod_mac(flow.pod),
            dst_mac: GATEWAY_MAC,
            src: pod_ip(flow.pod),
            dst,
            src_port: flow.src_port,
            dst_port: fe.port,
        };
        udp.write(out)
    }

    /// Writes the VXLAN frame that brings the backend's reply to `flow` back to this node; returns its
    /// length. `out` must leave [`crate::frame::HEADROOM`] bytes in front of the frame.
    pub fn tunnelled_reply(&self, flow: &Flow, buf: &mut [u8]) -> usize {
        let backend = self.backend_of(flow);
        let udp = Udp {
            src_mac: [0x02, 0, 0, 2, 2, 2],
            dst_mac: GATEWAY_MAC,
            src: remote_ip(backend),
            dst: pod_ip(flow.pod),
            src_port: BACKEND_PORT,
            dst_port: flow.src_port,
        };
        let head = crate::frame::HEADROOM;
        let Some(inner) = buf.get_mut(head..) else {
            return 0;
        };
        let len = udp.write(inner);
        let Some(mut frame) = Frame::new(buf, head, len, UPLINK) else {
            return 0;
        };
        let encapsulation = Encapsulation {
            protocol: TunnelProtocol::Vxlan,
            vni: remote_identity(backend),
            src_mac: [0x02, 0, 0, 2, 0, 1],
            dst_mac: NODE_MAC,
            src: remote_node(backend).into(),
            dst: node_ip().into(),
            ttl: 64,
        };
        if tunnel::encap(&mut frame, &encapsulation, u32::from(flow.src_port)).is_err() {
            return 0;
        }
        let (start, len) = (frame.head(), frame.len());
        buf.copy_within(start..start + len, head);
        len
    }

    /// The remote endpoint the pipeline balanced `flow` to (its conntrack entry says which).
    pub fn backend_of(&self, flow: &Flow) -> usize {
        let fe = frontend(flow.service);
        let service = self.tables.services.lookup(&fe);
        let key = crate::FlowKey {
            src: pod_ip(flow.pod).into(),
            dst: fe.addr,
            src_port: flow.src_port,
            dst_port: fe.port,
            proto: proto::UDP,
        };
        let chosen = service.and_then(|s| s.select(key.symmetric_hash()));
        let addr = chosen.map(|(_, b)| b.addr);
        (0..self.scale.backends_per_service)
            .map(|b| backend_endpoint(&self.scale, flow.service, b))
            .find(|&j| Some(Addr::from(remote_ip(j))) == addr)
            .unwrap_or(0)
    }
}

/// Node 1 of cluster1 (198.18.1.1) as the lab makes it: tunnel routing over VXLAN, no host port,
/// no masquerade, no encryption. Tests that need another node take it with struct update syntax.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        cluster: ClusterId::new(1).expect("1 is a mesh id"),
        ipv4: Some(node_ip()),
        ipv6: None,
        uplink: UPLINK,
        underlay: Underlay {
            mac: NODE_MAC,
            router_mac: [0x02, 0, 0, 0, 0, 0xfe],
            mtu: 1500,
        },
        gateway: Gateway { mac: GATEWAY_MAC },
        routing: RoutingMode::Tunnel,
        tunnel: TunnelProtocol::Vxlan,
        host: None,
        masquerade: None,
        encryption: Default::default(),
    }
}

fn add_local_pods(tables: &mut Tables, identities: &mut IdentityLabels, scale: &Scale) {
    for i in 0..scale.local_pods {
        let endpoint = Endpoint {
            port: pod_port(i),
            mac: pod_mac(i),
            ipv4: Some(pod_ip(i)),
            ipv6: None,
            identity: pod_identity(i),
            name: format!("default/client-{i}").into(),
        };
        tables
            .endpoints
            .insert(endpoint)
            .expect("room for the local pods");
        let labels = Labels::new()
            .with("app", "client")
            .with("name", &format!("client-{i}"))
            .with(CLUSTER_LABEL, "cluster1");
        identities.insert(pod_identity(i), labels);
        let entry = IpCacheEntry {
            identity: pod_identity(i),
            tunnel_endpoint: None,
            cluster: ClusterId::new(1),
        };
        let _ = tables
            .ipcache
            .insert(IpPrefix::host(pod_ip(i).into()), entry);
    }
}

fn add_remote_endpoints(tables: &mut Tables, identities: &mut IdentityLabels, scale: &Scale) {
    for j in 0..scale.remote_endpoints {
        let identity = remote_identity(j);
        identities.entry(identity).or_insert_with(|| {
            Labels::new()
                .with("role", "backend")
                .with("name", &format!("backend-{}", identity.get() & 0xffff))
                .with(CLUSTER_LABEL, &format!("cluster{}", remote_cluster(j)))
        });
        let entry = IpCacheEntry {
            identity,
            tunnel_endpoint: Some(remote_node(j).into()),
            cluster: identity.cluster(),
        };
        let _ = tables
            .ipcache
            .insert(IpPrefix::host(remote_ip(j).into()), entry);
        let _ = tables.nodes.upsert(RemoteNode {
            addr: remote_node(j).into(),
            cluster: identity.cluster().unwrap_or(tables.node.cluster),
            link: NodeLink::Routed,
            wireguard_key: None,
        });
    }
}

fn add_services(tables: &mut Tables, scale: &Scale) {
    for s in 0..scale.services {
        let backends = (0..scale.backends_per_service)
            .map(|b| {
                let j = backend_endpoint(scale, s, b);
                Backend {
                    addr: remote_ip(j).into(),
                    port: BACKEND_PORT,
                    state: BackendState::Active,
                    cluster: ClusterId::new(remote_cluster(j)),
                }
            })
            .collect();
        if let Ok(service) = Service::new(ServiceId(s as u32 + 1), frontend(s), backends) {
            let _ = tables.services.insert(Arc::new(service));
        }
    }
}

/// One rule lets every client reach every backend on its port; the others select clients and backends
/// by name and expression, so that compiled policies are as large as real ones.
fn policy_rules(scale: &Scale) -> Vec<PolicyRule> {
    let clients = LabelSelector::all().with_label("app", "client");
    let allow_backends = PolicyRule {
        endpoint_selector: clients.clone(),
        ingress: None,
        egress: Some(vec![EgressRule {
            to: vec![Peer::Endpoints(
                LabelSelector::all().with_label("role", "backend"),
            )],
            to_ports: vec![PortRule::new(Protocol::Any, BACKEND_PORT)],
        }]),
    };
    let others = (1..scale.policy_rules).map(|r| PolicyRule {
        endpoint_selector: LabelSelector::all()
            .with_label("name", &format!("client-{}", r % scale.local_pods.max(1))),
        ingress: None,
        egress: Some(vec![EgressRule {
            to: vec![Peer::Endpoints(
                LabelSelector::all()
                    .with_label("name", &format!("backend-{}", 0x100 + r % 600))
                    .with_expression(CLUSTER_LABEL, Operator::Exists),
            )],
            to_ports: vec![PortRule {
                protocol: Protocol::Tcp,
                port: 9000 + (r % 100) as u16,
                end_port: Some(9100 + (r % 100) as u16),
            }],
        }]),
    });
    std::iter::once(allow_backends).chain(others).collect()
}

/// An Ethernet/IPv4/UDP frame with an 18-byte payload: 60 bytes, 64 on the wire.
struct Udp {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
}

impl Udp {
    const LEN: usize = 60;

    fn write(&self, out: &mut [u8]) -> usize {
        let Some(f) = out.get_mut(..Self::LEN) else {
            return 0;
        };
        f.fill(0);
        f[..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&46u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto::UDP;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let sum = checksum::finish(checksum::data(ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut f[34..42];
        udp[..2].copy_from_slice(&self.src_port.to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&26u16.to_be_bytes());
        Self::LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_testbed_forwards_requests_and_delivers_replies() {
        let bed = Testbed::new(Scale::TINY);
        let mut state = bed.warmed_worker(1024);
        assert_eq!(state.conntrack.len(), 2 * Scale::TINY.flows);
        let mut buf = vec![0u8; 2048];
        let flow = bed.flows[3];
        let len = bed.tunnelled_reply(&flow, &mut buf);
        let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, len, UPLINK).unwrap();
        let verdict = pipeline::process_one(&bed.tables, &mut state, 1, &mut frame);
        assert_eq!(verdict, Verdict::Transmit(pod_port(flow.pod)));
        let delivered = crate::parse::parse(frame.data()).unwrap();
        assert_eq!(
            delivered.flow.src,
            frontend(flow.service).addr,
            "reverse NAT"
        );
    }

    #[test]
    fn established_requests_and_replies_take_the_fast_path_from_their_second_packet() {
        let bed = Testbed::new(Scale::TINY);
        let mut state = bed.warmed_worker(1024);
        let flow = bed.flows[5];
        let mut buf = vec![0u8; 2048];
        for round in 0..3u64 {
            let len = bed.request(&flow, &mut buf[crate::frame::HEADROOM..]);
            let port = pod_port(flow.pod);
            let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, len, port).unwrap();
            let verdict = pipeline::process_one(&bed.tables, &mut state, 1, &mut frame);
            assert_eq!(verdict, Verdict::Transmit(UPLINK));
            assert_eq!(state.fast_path_packets, 2 * round - u64::from(round > 0));
            let len = bed.tunnelled_reply(&flow, &mut buf);
            let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, len, UPLINK).unwrap();
            let verdict = pipeline::process_one(&bed.tables, &mut state, 1, &mut frame);
            assert_eq!(verdict, Verdict::Transmit(pod_port(flow.pod)));
            // The warming packet made the flow, the first round each direction's path.
            assert_eq!(state.fast_path_packets, 2 * round);
        }
    }
}
