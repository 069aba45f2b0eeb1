//! The builder on hand-made states: Cilium's x-wing/rebel-base case run through the real pipeline,
//! failover and affinity, and incremental application against a full rebuild.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::PacketBuilder;
use meshpath_dataplane::conntrack::{ConntrackConfig, Timeouts};
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::pipeline::{process_one, Verdict, WorkerState};
use meshpath_dataplane::policy::{EgressRule, LabelSelector, Peer, PolicyRule, CLUSTER_LABEL};
use meshpath_dataplane::route::NodeLink;
use meshpath_dataplane::service::{BackendState, Frontend};
use meshpath_dataplane::snapshot::{Capacities, Tables};
use meshpath_dataplane::{Addr, ClusterId, DropReason, Frame, Identity, PortId};
use proptest::prelude::*;

use super::*;
use crate::clustermesh::RemoteEvent;
use crate::kvstore::LabelSet;
use crate::local::*;
use crate::resolve::{MemoryAllocator, ResolvedLocal, Resolver};
use crate::state::*;

const UPLINK: PortId = PortId(0);
pub(super) const X_WING_PORT: PortId = PortId(1);
pub(super) const REBEL_PORT: PortId = PortId(2);
const GATEWAY_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];
pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 255, 10);
pub(super) const X_WING: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 10);
pub(super) const REBEL_C1: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 11);
pub(super) const REBEL_C2: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 10);
pub(super) const NODE_C2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

pub(super) fn obj(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

pub(super) fn c1() -> ClusterId {
    ClusterId::new(1).unwrap()
}

pub(super) fn c2_name() -> crate::ClusterName {
    crate::ClusterName::new("cluster2").unwrap()
}

pub(super) fn mac(last: u8) -> [u8; 6] {
    [2, 0, 0, 1, 1, last]
}

pub(super) fn spec() -> NodeSpec {
    NodeSpec {
        cluster: crate::ClusterName::new("cluster1").unwrap(),
        cluster_id: c1(),
        node: "n1".into(),
        config: meshpath_dataplane::testbed::node_config(),
        capacities: Capacities::default(),
        ports: BTreeMap::from([
            (obj("x-wing"), (X_WING_PORT, mac(10))),
            (obj("rebel-base"), (REBEL_PORT, mac(11))),
        ]),
        local_affinity_threshold: 0.0,
        policy_limits: Default::default(),
        admission: Default::default(),
        segments: Vec::new(),
        external_workload: false,
    }
}

fn pod(name: &str, ip: Ipv4Addr) -> LocalPod {
    LocalPod {
        pod: obj(name),
        node: Some("n1".into()),
        labels: [("name".to_string(), name.to_string())].into(),
        ips: vec![ip.into()],
        service_account: "default".into(),
        ready: true,
        terminating: false,
    }
}

fn http() -> LocalServicePort {
    LocalServicePort {
        name: "http".into(),
        protocol: 6,
        port: 80,
    }
}

fn x_wing_policy() -> LocalPolicy {
    let policy = PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        policy: obj("x-wing"),
    };
    let to = LabelSelector::all()
        .with_label("name", "rebel-base")
        .with_label(CLUSTER_LABEL, "cluster2");
    LocalPolicy {
        policy,
        rules: vec![PolicyRule {
            endpoint_selector: LabelSelector::all().with_label("name", "x-wing"),
            ingress: None,
            egress: Some(vec![EgressRule {
                to: vec![Peer::Endpoints(to)],
                to_ports: vec![],
            }]),
        }],
        refused: None,
    }
}

/// Cluster1: node n1 with x-wing and a rebel-base behind the global service `rebel-base`.
pub(super) fn local_state(rebel_ready: bool, affinity: Affinity) -> LocalState {
    let mut local = LocalState::default();
    local.nodes.insert(
        "n1".into(),
        LocalNode {
            name: "n1".into(),
            internal_ips: vec![Ipv4Addr::new(198, 18, 1, 1).into()],
            pod_cidrs: vec!["100.64.1.0/24".into()],
            labels: Default::default(),
            wireguard_pub_key: None,
        },
    );
    for p in [pod("x-wing", X_WING), pod("rebel-base", REBEL_C1)] {
        local.pods.insert(p.pod.clone(), p);
    }
    local.services.insert(
        obj("rebel-base"),
        LocalService {
            service: obj("rebel-base"),
            cluster_ips: vec![VIP.into()],
            ports: vec![http()],
            selector: Default::default(),
            global: true,
            shared: true,
            affinity,
        },
    );
    local.endpoint_slices.insert(
        obj("rebel-base-1"),
        LocalEndpointSlice {
            slice: obj("rebel-base-1"),
            service: obj("rebel-base"),
            ports: vec![LocalServicePort {
                port: 8080,
                ..http()
            }],
            endpoints: vec![SliceEndpoint {
                addresses: vec![REBEL_C1.into()],
                ready: rebel_ready,
                serving: rebel_ready,
                terminating: false,
                node: Some("n1".into()),
                pod: Some(obj("rebel-base")),
            }],
        },
    );
    let policy = x_wing_policy();
    local.policies.insert(policy.policy.clone(), policy);
    local
}

pub(super) async fn resolve(local: LocalState) -> Arc<ResolvedLocal> {
    let name = crate::ClusterName::new("cluster1").unwrap();
    let mut resolver = Resolver::new(name, c1(), MemoryAllocator::new(c1()));
    Arc::new(resolver.resolve(Arc::new(local)).await.unwrap())
}

pub(super) fn remote(event: StateEvent) -> Change {
    Change::Remote(RemoteEvent {
        cluster: c2_name(),
        event,
    })
}

/// Cluster2 as its watcher emits it: one node, its rebel-base and the shared service.
pub(super) fn cluster2() -> Vec<Change> {
    cluster2_keyed(None)
}

/// Cluster2 whose node publishes `wireguard_pub_key`.
fn cluster2_keyed(wireguard_pub_key: Option<String>) -> Vec<Change> {
    let id = Identity::new(0x2_0100).unwrap();
    let labels = LabelSet::parse(
        "k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=default;k8s:name=rebel-base;",
    )
    .unwrap();
    let node = NodeInfo {
        name: "n1".into(),
        cluster_id: ClusterId::new(2).unwrap(),
        addresses: vec![(NodeAddressKind::Internal, NODE_C2.into())],
        pod_cidrs: vec![Cidr {
            addr: Ipv4Addr::new(100, 65, 1, 0).into(),
            prefix_len: 24,
        }],
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key,
    };
    let endpoint = EndpointInfo {
        ip: REBEL_C2.into(),
        identity: id,
        host_ip: Some(NODE_C2.into()),
        namespace: "default".into(),
        pod_name: "rebel-base".into(),
    };
    let service = ServiceInfo {
        name: ServiceName {
            namespace: "default".into(),
            name: "rebel-base".into(),
        },
        frontends: vec![],
        backends: vec![ServicePort {
            addr: REBEL_C2.into(),
            port_name: "http".into(),
            protocol: 6,
            port: 8080,
        }],
        shared: true,
        include_external: true,
        selector: vec![],
    };
    [
        Entry::Node(node.into()),
        Entry::Identity(id, labels),
        Entry::Endpoint(endpoint.into()),
        Entry::Service(service.into()),
    ]
    .into_iter()
    .map(|e| remote(StateEvent::Upsert(e)))
    .collect()
}

pub(super) fn worker() -> WorkerState {
    WorkerState::new(ConntrackConfig {
        capacity: 1024,
        timeouts: Timeouts::default(),
        endpoint_quota: None,
    })
}

pub(super) fn syn(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 1024)
        .syn()
        .write(&mut frame, b"hi")
        .unwrap();
    frame
}

/// The verdict, and the outer destination address when the frame leaves tunnelled.
pub(super) fn run(
    t: &Tables,
    s: &mut WorkerState,
    port: PortId,
    bytes: &[u8],
) -> (Verdict, Option<Ipv4Addr>) {
    let mut buf = vec![0u8; HEADROOM + bytes.len() + 64];
    buf[HEADROOM..][..bytes.len()].copy_from_slice(bytes);
    let mut frame = Frame::new(&mut buf, HEADROOM, bytes.len(), port).unwrap();
    let verdict = process_one(t, s, 1_000, &mut frame);
    let outer = etherparse::SlicedPacket::from_ethernet(frame.data()).ok();
    let dst = outer.and_then(|p| match p.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => Some(ip.header().destination_addr()),
        _ => None,
    });
    (verdict, dst)
}

pub(super) fn x_wing_to(
    t: &Tables,
    dst: Ipv4Addr,
    dport: u16,
    sport: u16,
) -> (Verdict, Option<Ipv4Addr>) {
    run(
        t,
        &mut worker(),
        X_WING_PORT,
        &syn(mac(10), X_WING, dst, sport, dport),
    )
}

pub(super) async fn built(rebel_ready: bool, affinity: Affinity) -> SnapshotBuilder {
    let mut builder = SnapshotBuilder::new(spec());
    let mut changes = vec![Change::Local(
        resolve(local_state(rebel_ready, affinity)).await,
    )];
    changes.extend(cluster2());
    builder.apply(changes).unwrap();
    builder
}

#[tokio::test]
async fn x_wing_reaches_the_cluster2_rebel_base_and_not_the_cluster1_one() {
    let builder = built(true, Affinity::None).await;
    let t = builder.current();
    assert_eq!(t.endpoints.len(), 2);
    assert_eq!(t.nodes.len(), 1);
    let entry = t.ipcache.lookup(REBEL_C2.into()).unwrap();
    assert_eq!(entry.tunnel_endpoint, Some(NODE_C2.into()));
    assert_eq!(
        x_wing_to(&t, REBEL_C2, 8080, 40000),
        (Verdict::Transmit(UPLINK), Some(NODE_C2))
    );
    assert_eq!(
        x_wing_to(&t, REBEL_C1, 8080, 40001).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert!(builder.current().policy.refusals().is_empty());
}

pub(super) fn states(t: &Tables) -> Vec<(Ipv4Addr, BackendState)> {
    let frontend = Frontend {
        addr: VIP.into(),
        port: 80,
        proto: 6,
    };
    let service = t.services.lookup(&frontend).expect("the VIP is a service");
    let ip = |a: Addr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    service
        .backends()
        .iter()
        .map(|b| (ip(b.addr), b.state))
        .collect()
}

#[tokio::test]
async fn local_affinity_fails_over_to_cluster2_and_back() {
    let mut builder = built(true, Affinity::Local).await;
    let t = builder.current();
    assert_eq!(
        states(&t),
        vec![
            (REBEL_C1, BackendState::Active),
            (REBEL_C2, BackendState::Terminating)
        ]
    );
    // The x-wing policy allows only cluster2's rebel-base: the local backend is denied.
    assert_eq!(
        x_wing_to(&t, VIP, 80, 40000).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );

    let id = t.services.iter().next().map(|s| s.id);
    let down = resolve(local_state(false, Affinity::Local)).await;
    let t = builder.apply([Change::Local(down)]).unwrap();
    assert_eq!(
        t.services.iter().next().map(|s| s.id),
        id,
        "the frontend keeps its id"
    );
    assert_eq!(
        states(&t),
        vec![(REBEL_C2, BackendState::Active)],
        "the local backend, not ready, leaves the service"
    );
    assert_eq!(
        x_wing_to(&t, VIP, 80, 40000),
        (Verdict::Transmit(UPLINK), Some(NODE_C2))
    );

    let up = resolve(local_state(true, Affinity::Local)).await;
    let t = builder.apply([Change::Local(up)]).unwrap();
    assert_eq!(states(&t)[0], (REBEL_C1, BackendState::Active));
    assert_eq!(states(&t)[1].1, BackendState::Terminating);
}

#[tokio::test]
async fn remote_affinity_prefers_cluster2_while_it_has_a_backend() {
    let mut builder = built(true, Affinity::Remote).await;
    assert_eq!(
        states(&builder.current()),
        vec![
            (REBEL_C1, BackendState::Terminating),
            (REBEL_C2, BackendState::Active)
        ]
    );
    let t = builder.apply(cluster2().into_iter().skip(3).map(|c| match c {
        Change::Remote(RemoteEvent {
            event: StateEvent::Upsert(e),
            ..
        }) => remote(StateEvent::Delete(e.key())),
        other => other,
    }));
    assert_eq!(states(&t.unwrap()), vec![(REBEL_C1, BackendState::Active)]);
}

/// Cluster1 as an external workload that joined it watches it: one node, its rebel-base and the
/// global service it exports with its ClusterIP.
fn joined_cluster1() -> Vec<Change> {
    let id = Identity::new(0x1_0100).unwrap();
    let node = NodeInfo {
        name: "n1".into(),
        cluster_id: c1(),
        addresses: vec![(
            NodeAddressKind::Internal,
            Ipv4Addr::new(198, 18, 1, 1).into(),
        )],
        pod_cidrs: vec![Cidr {
            addr: Ipv4Addr::new(100, 64, 1, 0).into(),
            prefix_len: 24,
        }],
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: None,
    };
    let endpoint = EndpointInfo {
        ip: REBEL_C1.into(),
        identity: id,
        host_ip: Some(Ipv4Addr::new(198, 18, 1, 1).into()),
        namespace: "default".into(),
        pod_name: "rebel-base".into(),
    };
    let port = |addr: Ipv4Addr, port: u16| ServicePort {
        addr: addr.into(),
        port_name: "http".into(),
        protocol: 6,
        port,
    };
    let service = ServiceInfo {
        name: ServiceName {
            namespace: "default".into(),
            name: "rebel-base".into(),
        },
        frontends: vec![port(VIP, 80)],
        backends: vec![port(REBEL_C1, 8080)],
        shared: true,
        include_external: true,
        selector: vec![],
    };
    let labels = LabelSet::parse(
        "k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;k8s:name=rebel-base;",
    )
    .unwrap();
    [
        Entry::Node(node.into()),
        Entry::Identity(id, labels),
        Entry::Endpoint(endpoint.into()),
        Entry::Service(service.into()),
    ]
    .into_iter()
    .map(|e| {
        Change::Remote(RemoteEvent {
            cluster: crate::ClusterName::new("cluster1").unwrap(),
            event: StateEvent::Upsert(e),
        })
    })
    .collect()
}

#[tokio::test]
async fn an_external_workload_takes_the_joined_clusters_global_services_with_every_clusters_backends(
) {
    let mut builder = SnapshotBuilder::new(NodeSpec {
        external_workload: true,
        ports: Default::default(),
        ..spec()
    });
    let mut changes = vec![Change::Local(resolve(LocalState::default()).await)];
    changes.extend(joined_cluster1());
    changes.extend(cluster2());
    let t = builder.apply(changes).unwrap();
    assert_eq!(
        states(&t),
        vec![
            (REBEL_C1, BackendState::Active),
            (REBEL_C2, BackendState::Active)
        ]
    );

    let mut node = SnapshotBuilder::new(NodeSpec {
        ports: Default::default(),
        ..spec()
    });
    let mut changes = vec![Change::Local(resolve(LocalState::default()).await)];
    changes.extend(cluster2());
    let t = node.apply(changes).unwrap();
    assert!(
        t.services.is_empty(),
        "a node has only its own services' frontends"
    );
}

/// A host that joined cluster2 as an external workload: a node without pod CIDRs at `addr`, and its
/// endpoint at the same address naming `host_ip`.
fn external_workload(addr: Ipv4Addr, host_ip: Ipv4Addr, pod_cidrs: Vec<Cidr>) -> Vec<Change> {
    let id = Identity::new(0x2_0200).unwrap();
    let node = NodeInfo {
        name: "vm1".into(),
        cluster_id: ClusterId::new(2).unwrap(),
        addresses: vec![(NodeAddressKind::Internal, addr.into())],
        pod_cidrs,
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: None,
    };
    let endpoint = EndpointInfo {
        ip: addr.into(),
        identity: id,
        host_ip: Some(host_ip.into()),
        namespace: "default".into(),
        pod_name: "vm1".into(),
    };
    [Entry::Node(node.into()), Entry::Endpoint(endpoint.into())]
        .into_iter()
        .map(|e| remote(StateEvent::Upsert(e)))
        .collect()
}

#[tokio::test]
async fn a_remote_external_workload_is_its_own_tunnel_endpoint_and_nothing_else_is_admitted_so() {
    let vm = Ipv4Addr::new(198, 18, 100, 10);
    let mut builder = built(true, Affinity::None).await;
    let t = builder.apply(external_workload(vm, vm, vec![])).unwrap();
    let entry = t
        .ipcache
        .lookup(vm.into())
        .expect("the host is in the ipcache");
    assert_eq!(entry.tunnel_endpoint, Some(vm.into()));
    assert_eq!(entry.identity, Identity::new(0x2_0200).unwrap());
    assert!(t.nodes.get(vm.into()).is_some(), "and a node to tunnel to");

    let other = Ipv4Addr::new(198, 18, 100, 11);
    let mut builder = built(true, Affinity::None).await;
    let t = builder.apply(external_workload(other, NODE_C2, vec![]));
    let t = t.unwrap_or_else(|| builder.current());
    assert!(
        t.ipcache.lookup(other.into()).is_none(),
        "an address outside pod CIDRs hosted by another node"
    );
    let cidr = Cidr {
        addr: Ipv4Addr::new(100, 65, 9, 0).into(),
        prefix_len: 24,
    };
    let mut builder = built(true, Affinity::None).await;
    let t = builder.apply(external_workload(other, other, vec![cidr]));
    let t = t.unwrap_or_else(|| builder.current());
    assert!(
        t.ipcache.lookup(other.into()).is_none(),
        "a node with pod CIDRs is no external workload"
    );
}

fn backend(
    last: u8,
    state: BackendState,
    cluster: Option<u8>,
) -> meshpath_dataplane::service::Backend {
    meshpath_dataplane::service::Backend {
        addr: Ipv4Addr::new(100, 64, 1, last).into(),
        port: 8080,
        state,
        cluster: cluster.and_then(ClusterId::new),
    }
}

#[test]
fn local_affinity_threshold_lets_remote_backends_join_below_it() {
    use BackendState::*;
    let local = vec![
        backend(1, Active, None),
        backend(2, Unhealthy, None),
        backend(3, Unhealthy, None),
    ];
    let remote = vec![backend(9, Active, Some(2))];
    let states = |threshold: f64| -> Vec<BackendState> {
        services::choose(local.clone(), remote.clone(), Affinity::Local, threshold)
            .iter()
            .map(|b| b.state)
            .collect()
    };
    assert_eq!(
        states(0.0),
        vec![Active, Unhealthy, Unhealthy, Terminating],
        "Cilium: one ready is enough"
    );
    assert_eq!(states(0.3), vec![Active, Unhealthy, Unhealthy, Terminating]);
    assert_eq!(
        states(0.5),
        vec![Active, Unhealthy, Unhealthy, Active],
        "1/3 ready is below half"
    );
    let none = services::choose(local.clone(), remote.clone(), Affinity::None, 0.0);
    assert_eq!(none.iter().filter(|b| b.state == Active).count(), 2);
    let all_down = vec![backend(1, Unhealthy, None)];
    let failover = services::choose(all_down, remote, Affinity::Local, 0.0);
    assert_eq!(failover[1].state, Active);
}

#[tokio::test]
async fn a_remote_cannot_take_over_a_local_address_and_its_withdrawal_leaves_local_state() {
    let mut builder = built(true, Affinity::None).await;
    let imposter = EndpointInfo {
        ip: X_WING.into(),
        identity: Identity::new(0x2_0999).unwrap(),
        host_ip: Some(NODE_C2.into()),
        namespace: "default".into(),
        pod_name: "imposter".into(),
    };
    builder.apply([remote(StateEvent::Upsert(Entry::Endpoint(imposter.into())))]);
    let mine = builder
        .current()
        .ipcache
        .lookup(X_WING.into())
        .copied()
        .unwrap();
    assert_eq!((mine.tunnel_endpoint, mine.cluster), (None, Some(c1())));
    let withdraw: Vec<Change> = cluster2()
        .into_iter()
        .map(|c| match c {
            Change::Remote(RemoteEvent {
                event: StateEvent::Upsert(e),
                ..
            }) => remote(StateEvent::Delete(e.key())),
            other => other,
        })
        .collect();
    let t = builder.apply(withdraw).unwrap();
    assert!(t.ipcache.lookup(REBEL_C2.into()).is_none());
    assert_eq!(t.nodes.len(), 0);
    assert_eq!(t.endpoints.len(), 2);
    assert_eq!(states(&t), vec![(REBEL_C1, BackendState::Active)]);
    assert!(t.ipcache.lookup(X_WING.into()).is_some());
}

/// One change at 100k entries copies one shard: every other entry is still the previous snapshot's.
#[test]
fn one_endpoint_change_shares_the_rest_of_a_100k_table() {
    let mut builder = SnapshotBuilder::new(spec());
    let endpoint = |i: u32, id: u32| EndpointInfo {
        ip: Addr::from_v4_bits(0x6441_0000 + i),
        identity: Identity::new(0x2_0000 + id).unwrap(),
        host_ip: Some(NODE_C2.into()),
        namespace: "default".into(),
        pod_name: format!("p{i}"),
    };
    // The 100k addresses run from 100.65.0.0 into 100.66.134.159: two /16s of node n1.
    let node = NodeInfo {
        name: "n1".into(),
        cluster_id: ClusterId::new(2).unwrap(),
        addresses: vec![(NodeAddressKind::Internal, NODE_C2.into())],
        pod_cidrs: [65, 66]
            .map(|b| Cidr {
                addr: Ipv4Addr::new(100, b, 0, 0).into(),
                prefix_len: 16,
            })
            .to_vec(),
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: None,
    };
    let all =
        (0..100_000).map(|i| remote(StateEvent::Upsert(Entry::Endpoint(endpoint(i, 300).into()))));
    let node = remote(StateEvent::Upsert(Entry::Node(node.into())));
    let before = builder.apply(std::iter::once(node).chain(all)).unwrap();
    let after = builder
        .apply([remote(StateEvent::Upsert(Entry::Endpoint(
            endpoint(7, 301).into(),
        )))])
        .unwrap();
    assert_eq!(
        after
            .ipcache
            .lookup(endpoint(7, 0).ip)
            .unwrap()
            .identity
            .get(),
        0x2_0000 + 301
    );
    let shared = (0..100_000)
        .filter(|i| {
            let a = Addr::from_v4_bits(0x6441_0000 + i);
            std::ptr::eq(
                before.ipcache.lookup(a).unwrap(),
                after.ipcache.lookup(a).unwrap(),
            )
        })
        .count();
    assert!(shared > 97_000, "only {shared} of 100000 entries shared");
}

/// Everything a snapshot holds, in a comparable form (service ids aside: they depend on history).
fn digest(t: &Tables, probe_nodes: &[Addr]) -> String {
    let mut ipcache: Vec<String> = t
        .ipcache
        .iter()
        .map(|(p, e)| format!("{p} {e:?}"))
        .collect();
    ipcache.sort();
    let mut endpoints: Vec<String> = t.endpoints.iter().map(|e| format!("{e:?}")).collect();
    endpoints.sort();
    let nodes: Vec<bool> = probe_nodes
        .iter()
        .map(|a| t.nodes.get(*a).is_some())
        .collect();
    let mut services: Vec<String> = t
        .services
        .iter()
        .map(|s| format!("{:?} {:?}", s.frontend, s.backends()))
        .collect();
    services.sort();
    let policy: Vec<String> = (0..4u32)
        .flat_map(|i| [0x1_0000 + i, 0x2_0000 + i])
        .filter_map(Identity::new)
        .map(|id| format!("{:?}", t.policy.policy(id)))
        .collect();
    format!("{ipcache:?}\n{endpoints:?}\n{nodes:?}\n{services:?}\n{policy:?}")
}

#[derive(Clone, Debug)]
enum Op {
    Endpoint {
        cluster: u8,
        ip: u8,
        id: u8,
        host: Option<u8>,
    },
    DeleteEndpoint {
        cluster: u8,
        ip: u8,
    },
    Node {
        cluster: u8,
        n: u8,
        cidr: u8,
    },
    DeleteNode {
        cluster: u8,
        n: u8,
    },
    Identity {
        cluster: u8,
        id: u8,
        name: bool,
    },
    DeleteIdentity {
        cluster: u8,
        id: u8,
    },
    Service {
        cluster: u8,
        backends: u8,
    },
    DeleteService {
        cluster: u8,
    },
    Local {
        rebel_ready: bool,
        affinity: u8,
    },
    Ports {
        with_rebel: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 2u8..4;
    prop_oneof![
        (c.clone(), 0u8..8, 0u8..4, prop::option::of(0u8..3)).prop_map(
            |(cluster, ip, id, host)| Op::Endpoint {
                cluster,
                ip,
                id,
                host
            }
        ),
        (c.clone(), 0u8..8).prop_map(|(cluster, ip)| Op::DeleteEndpoint { cluster, ip }),
        (c.clone(), 0u8..3, 0u8..3).prop_map(|(cluster, n, cidr)| Op::Node { cluster, n, cidr }),
        (c.clone(), 0u8..3).prop_map(|(cluster, n)| Op::DeleteNode { cluster, n }),
        (c.clone(), 0u8..4, any::<bool>()).prop_map(|(cluster, id, name)| Op::Identity {
            cluster,
            id,
            name
        }),
        (c.clone(), 0u8..4).prop_map(|(cluster, id)| Op::DeleteIdentity { cluster, id }),
        (c.clone(), 0u8..8).prop_map(|(cluster, backends)| Op::Service { cluster, backends }),
        c.prop_map(|cluster| Op::DeleteService { cluster }),
        (any::<bool>(), 0u8..3).prop_map(|(rebel_ready, affinity)| Op::Local {
            rebel_ready,
            affinity
        }),
        any::<bool>().prop_map(|with_rebel| Op::Ports { with_rebel }),
    ]
}

fn cluster_name(c: u8) -> crate::ClusterName {
    crate::ClusterName::new(&format!("cluster{c}")).unwrap()
}

fn pod_ip(c: u8, ip: u8) -> Addr {
    Ipv4Addr::new(100, 63 + c, ip % 3, 10 + ip).into()
}

fn node_addr(c: u8, n: u8) -> Addr {
    Ipv4Addr::new(198, 18, c, 1 + n).into()
}

fn to_change(op: &Op, locals: &[Arc<ResolvedLocal>]) -> Change {
    let ev = |cluster: u8, event| {
        Change::Remote(RemoteEvent {
            cluster: cluster_name(cluster),
            event,
        })
    };
    let cid = |c: u8| ClusterId::new(c).unwrap();
    let identity =
        |c: u8, id: u8| Identity::new((u32::from(c) << 16) + 0x100 + u32::from(id)).unwrap();
    let service_name = ServiceName {
        namespace: "default".into(),
        name: "rebel-base".into(),
    };
    match *op {
        Op::Endpoint {
            cluster,
            ip,
            id,
            host,
        } => ev(
            cluster,
            StateEvent::Upsert(Entry::Endpoint(
                EndpointInfo {
                    ip: pod_ip(cluster, ip),
                    identity: identity(cluster, id),
                    host_ip: host.map(|n| node_addr(cluster, n)),
                    namespace: "default".into(),
                    pod_name: format!("p{ip}"),
                }
                .into(),
            )),
        ),
        Op::DeleteEndpoint { cluster, ip } => ev(
            cluster,
            StateEvent::Delete(EntryKey::Endpoint(pod_ip(cluster, ip))),
        ),
        Op::Node { cluster, n, cidr } => ev(
            cluster,
            StateEvent::Upsert(Entry::Node(
                NodeInfo {
                    name: format!("n{n}"),
                    cluster_id: cid(cluster),
                    addresses: vec![(NodeAddressKind::Internal, node_addr(cluster, n))],
                    pod_cidrs: vec![Cidr {
                        addr: Ipv4Addr::new(100, 63 + cluster, cidr, 0).into(),
                        prefix_len: 24,
                    }],
                    health_ips: vec![],
                    encryption_key: 0,
                    wireguard_pub_key: None,
                }
                .into(),
            )),
        ),
        Op::DeleteNode { cluster, n } => {
            ev(cluster, StateEvent::Delete(EntryKey::Node(format!("n{n}"))))
        }
        Op::Identity { cluster, id, name } => {
            let name = if name { "rebel-base" } else { "other" };
            let labels = LabelSet::parse(&format!(
                "k8s:name={name};k8s:{CLUSTER_LABEL}=cluster{cluster};"
            ))
            .unwrap();
            ev(
                cluster,
                StateEvent::Upsert(Entry::Identity(identity(cluster, id), labels)),
            )
        }
        Op::DeleteIdentity { cluster, id } => ev(
            cluster,
            StateEvent::Delete(EntryKey::Identity(identity(cluster, id))),
        ),
        Op::Service { cluster, backends } => ev(
            cluster,
            StateEvent::Upsert(Entry::Service(
                ServiceInfo {
                    name: service_name,
                    frontends: vec![],
                    backends: (0..backends % 4)
                        .map(|b| ServicePort {
                            addr: pod_ip(cluster, b),
                            port_name: "http".into(),
                            protocol: 6,
                            port: 8080,
                        })
                        .collect(),
                    shared: true,
                    include_external: true,
                    selector: vec![],
                }
                .into(),
            )),
        ),
        Op::DeleteService { cluster } => {
            ev(cluster, StateEvent::Delete(EntryKey::Service(service_name)))
        }
        Op::Local {
            rebel_ready,
            affinity,
        } => Change::Local(locals[usize::from(rebel_ready) * 3 + usize::from(affinity)].clone()),
        Op::Ports { with_rebel } => {
            let mut ports = spec().ports;
            if !with_rebel {
                ports.remove(&obj("rebel-base"));
            }
            Change::Ports(ports)
        }
    }
}

fn resolved_locals() -> Vec<Arc<ResolvedLocal>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for ready in [false, true] {
        for affinity in [Affinity::None, Affinity::Local, Affinity::Remote] {
            out.push(rt.block_on(resolve(local_state(ready, affinity))));
        }
    }
    out
}

/// The final state the raw change list leaves, folded here without the builder (whose own sources
/// would carry any event it dropped into the reference too): the last local state, the last pod
/// ports, and per remote cluster the last upsert of every key not deleted since.
struct FinalState {
    local: Arc<ResolvedLocal>,
    ports: Option<PodPorts>,
    macs: NodeMacs,
    remotes: BTreeMap<crate::ClusterName, BTreeMap<EntryKey, Entry>>,
}

impl FinalState {
    fn new(local: Arc<ResolvedLocal>) -> Self {
        FinalState {
            local,
            ports: None,
            macs: NodeMacs::new(),
            remotes: BTreeMap::new(),
        }
    }

    fn fold(&mut self, change: &Change) {
        match change {
            Change::Local(local) => self.local = local.clone(),
            Change::Ports(ports) => self.ports = Some(ports.clone()),
            Change::NodeMacs(macs) => self.macs = macs.clone(),
            Change::Remote(RemoteEvent { cluster, event }) => {
                let entries = self.remotes.entry(cluster.clone()).or_default();
                match event {
                    StateEvent::Upsert(entry) => {
                        entries.insert(entry.key(), entry.clone());
                    }
                    StateEvent::Delete(key) => {
                        entries.remove(key);
                    }
                }
            }
        }
    }

    /// A fresh builder given the final state in one batch.
    fn rebuild(&self) -> SnapshotBuilder {
        let mut spec = spec();
        if let Some(ports) = &self.ports {
            spec.ports = ports.clone();
        }
        let mut fresh = SnapshotBuilder::new(spec);
        let mut changes = vec![
            Change::Local(self.local.clone()),
            Change::NodeMacs(self.macs.clone()),
        ];
        for (cluster, entries) in &self.remotes {
            changes.extend(entries.values().map(|e| {
                Change::Remote(RemoteEvent {
                    cluster: cluster.clone(),
                    event: StateEvent::Upsert(e.clone()),
                })
            }));
        }
        fresh.apply(changes);
        fresh
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn incremental_application_equals_a_full_rebuild(
        ops in prop::collection::vec(op(), 1..40),
        cuts in prop::collection::vec(1usize..6, 1..40),
    ) {
        let locals = resolved_locals();
        let mut builder = SnapshotBuilder::new(spec());
        builder.apply([Change::Local(locals[3].clone())]);
        let mut reference = FinalState::new(locals[3].clone());
        let mut ops = ops.iter();
        for cut in cuts.iter().cycle() {
            let batch: Vec<Change> = ops.by_ref().take(*cut).map(|o| to_change(o, &locals)).collect();
            if batch.is_empty() {
                break;
            }
            batch.iter().for_each(|c| reference.fold(c));
            builder.apply(batch);
        }
        let probes: Vec<Addr> = (2u8..4).flat_map(|c| (0u8..3).map(move |n| node_addr(c, n))).collect();
        let fresh = reference.rebuild();
        prop_assert_eq!(digest(&builder.current(), &probes), digest(&fresh.current(), &probes));
        for c in 2u8..4 {
            prop_assert_eq!(builder.refused(&cluster_name(c)), fresh.refused(&cluster_name(c)));
        }
        let _ = IpPrefix::host(X_WING.into());
    }
}

#[tokio::test]
async fn the_driver_coalesces_a_burst_and_stops_when_inputs_close() {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let (rtx, rrx) = tokio::sync::mpsc::channel(1024);
    for change in cluster2() {
        let Change::Remote(event) = change else {
            unreachable!()
        };
        rtx.send(event).await.unwrap();
    }
    tx.send(Change::Local(
        resolve(local_state(true, Affinity::None)).await,
    ))
    .await
    .unwrap();
    drop((tx, rtx));
    let swap = Arc::new(arc_swap::ArcSwap::from(
        SnapshotBuilder::new(spec()).current(),
    ));
    let cancel = tokio_util::sync::CancellationToken::new();
    let builder = run_builder(
        SnapshotBuilder::new(spec()),
        rx,
        rrx,
        swap.clone(),
        cancel,
        1024,
    )
    .await;
    assert_eq!(builder.stats().changes, 5);
    assert_eq!(builder.stats().snapshots, 1, "one burst, one snapshot");
    assert_eq!(swap.load().endpoints.len(), 2);
    assert!(swap.load().ipcache.lookup(REBEL_C2.into()).is_some());
}

/// A sink that holds the builder inside `publish` until told to go on: a build that takes forever.
struct StuckSink {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl SnapshotSink for StuckSink {
    fn publish(&mut self, _: Arc<Tables>) {
        let _ = self.entered.send(());
        let _ = self.release.recv();
    }
}

/// While a build runs, the runtime that feeds the builder (the agent's, with the status socket and
/// the remotes' keepalives) still runs its tasks: the builder has a thread of its own.
#[test]
fn a_build_never_holds_up_the_runtime_that_feeds_the_builder() {
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let (done_tx, done) = std::sync::mpsc::channel();
    let feeder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let (rtx, rrx) = tokio::sync::mpsc::channel(16);
            let sink = StuckSink {
                entered: entered_tx,
                release: release_rx,
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            let builder =
                spawn_builder(SnapshotBuilder::new(spec()), rx, rrx, sink, cancel, 1024).unwrap();
            let mut ports = spec().ports;
            ports.remove(&obj("rebel-base"));
            tx.send(Change::Ports(ports)).await.unwrap();
            // The builder is now stuck in its build; this runtime must still run a task.
            let status = tokio::spawn(async { "answered" });
            let _ = done_tx.send(status.await.unwrap());
            drop((tx, rtx));
            builder
        })
    });
    let deadline = std::time::Duration::from_secs(30);
    entered.recv_timeout(deadline).expect("the build started");
    assert_eq!(done.recv_timeout(deadline), Ok("answered"));
    release.send(()).unwrap();
    let builder = feeder.join().unwrap();
    assert_eq!(builder.join().unwrap().stats().snapshots, 1);
}

#[tokio::test]
async fn nodes_on_the_uplinks_segment_are_reached_at_the_mac_the_agent_resolved() {
    let neighbour = Ipv4Addr::new(198, 18, 1, 2);
    let mut spec = spec();
    spec.segments = vec!["198.18.1.0/24".parse().unwrap()];
    let mut builder = SnapshotBuilder::new(spec);
    let mut local = local_state(true, Affinity::None);
    local.nodes.insert(
        "n2".into(),
        LocalNode {
            name: "n2".into(),
            internal_ips: vec![neighbour.into()],
            pod_cidrs: vec!["100.64.2.0/24".into()],
            labels: Default::default(),
            wireguard_pub_key: None,
        },
    );
    let mut changes = vec![Change::Local(resolve(local).await)];
    changes.extend(cluster2());
    builder.apply(changes).unwrap();
    let link =
        |b: &SnapshotBuilder, addr: Ipv4Addr| b.current().nodes.get(addr.into()).map(|n| n.link);
    assert_eq!(link(&builder, neighbour), Some(NodeLink::Unresolved));
    assert_eq!(link(&builder, NODE_C2), Some(NodeLink::Routed));

    let macs = NodeMacs::from([(neighbour.into(), mac(2)), (NODE_C2.into(), mac(3))]);
    builder.apply([Change::NodeMacs(macs)]).unwrap();
    assert_eq!(link(&builder, neighbour), Some(NodeLink::Segment(mac(2))));
    assert_eq!(
        link(&builder, NODE_C2),
        Some(NodeLink::Routed),
        "a MAC for a node off the segment changes nothing"
    );
    let same = NodeMacs::from([(neighbour.into(), mac(2)), (NODE_C2.into(), mac(3))]);
    assert!(
        builder.apply([Change::NodeMacs(same)]).is_none(),
        "the same MACs again: no new snapshot"
    );
    builder.apply([Change::NodeMacs(NodeMacs::new())]).unwrap();
    assert_eq!(link(&builder, neighbour), Some(NodeLink::Unresolved));
}

#[tokio::test]
async fn nodes_carry_the_wireguard_key_they_publish_and_a_new_one_replaces_it() {
    use base64::Engine;
    let encode = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let neighbour = Ipv4Addr::new(198, 18, 1, 2);
    let local_with = |key: Option<String>| {
        let mut local = local_state(true, Affinity::None);
        local.nodes.insert(
            "n2".into(),
            LocalNode {
                name: "n2".into(),
                internal_ips: vec![neighbour.into()],
                pod_cidrs: vec!["100.64.2.0/24".into()],
                labels: Default::default(),
                wireguard_pub_key: key,
            },
        );
        local
    };
    let mut builder = SnapshotBuilder::new(spec());
    let mut changes = vec![Change::Local(resolve(local_with(Some(encode(1)))).await)];
    changes.extend(cluster2_keyed(Some(encode(2))));
    builder.apply(changes).unwrap();
    let key = |b: &SnapshotBuilder, addr: Ipv4Addr| {
        b.current()
            .nodes
            .get(addr.into())
            .map(|n| n.wireguard_key.map(|k| k.0[0]))
    };
    assert_eq!(
        key(&builder, neighbour),
        Some(Some(1)),
        "from the node's annotation"
    );
    assert_eq!(
        key(&builder, NODE_C2),
        Some(Some(2)),
        "from the node record"
    );

    builder
        .apply([Change::Local(resolve(local_with(Some(encode(3)))).await)])
        .unwrap();
    assert_eq!(key(&builder, neighbour), Some(Some(3)), "a re-keyed node");
    builder
        .apply(cluster2_keyed(Some("not a key".into())))
        .unwrap();
    assert_eq!(
        key(&builder, NODE_C2),
        Some(None),
        "a record whose key is no key is a node without one"
    );
}
