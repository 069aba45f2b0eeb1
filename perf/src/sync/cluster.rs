//! The benchmark's clusters: the remote one written into etcd in Cilium's layout, and the local one
//! (one node, one pod, a global service of the same name for every remote service).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use etcd_client::{Client, Txn, TxnOp};
use meshpath_control::kvstore::{ClusterConfig, Key, Kind, LabelSet};
use meshpath_control::local::{
    LocalNode, LocalPod, LocalPolicy, LocalService, LocalServicePort, LocalState, ObjectRef,
    PolicyKind, PolicyRef,
};
use meshpath_control::resolve::{MemoryAllocator, ResolvedLocal, Resolver};
use meshpath_control::snapshot::NodeSpec;
use meshpath_control::state::{
    Cidr, EndpointInfo, NodeAddressKind, NodeInfo, ServiceInfo, ServiceName, ServicePort,
};
use meshpath_control::ClusterName;
use meshpath_dataplane::gateway::Gateway;
use meshpath_dataplane::policy::{IngressRule, LabelSelector, Peer, PolicyLimits, PolicyRule};
use meshpath_dataplane::route::{RoutingMode, Underlay};
use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
use meshpath_dataplane::tunnel::TunnelProtocol;
use meshpath_dataplane::{Addr, ClusterId, Identity, PortId};

/// Puts per transaction while writing the remote cluster.
const TXN_OPS: u32 = 2048;
/// Addresses per remote node: its pod CIDR is a /22.
const PER_NODE: u32 = 1024;
const REMOTE_PODS: u32 = 0x0a80_0000; // 10.128.0.0
const CHANGED_PODS: u32 = 0x0ac8_0000; // 10.200.0.0
pub const LOCAL_VIPS: u32 = 0x0a60_0000; // 10.96.0.0

pub struct Shape {
    pub policy_rules: u32,
    pub endpoints: u32,
    pub services: u32,
    pub backends: u32,
    pub identities: u32,
    pub nodes: u32,
}

fn c1() -> ClusterId {
    ClusterId::new(1).unwrap_or_else(|| unreachable!())
}

fn c2() -> ClusterId {
    ClusterId::new(2).unwrap_or_else(|| unreachable!())
}

fn c2_name() -> anyhow::Result<ClusterName> {
    Ok(ClusterName::new("cluster2")?)
}

fn identity(shape: &Shape, i: u32) -> anyhow::Result<Identity> {
    let id = (2 << 16) + 256 + i % shape.identities.max(1);
    Identity::new(id).ok_or_else(|| anyhow::anyhow!("identity {id} out of range"))
}

fn node_addr(n: u32) -> Addr {
    Addr::from_v4_bits(u32::from(Ipv4Addr::new(198, 18, 2, 1)) + n)
}

fn endpoint(shape: &Shape, ip: u32, node: u32) -> anyhow::Result<EndpointInfo> {
    Ok(EndpointInfo {
        ip: Addr::from_v4_bits(ip),
        identity: identity(shape, ip)?,
        host_ip: Some(node_addr(node)),
        namespace: "bench".into(),
        pod_name: format!("pod-{ip:x}"),
    })
}

fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn identity_kv(shape: &Shape, k: u32) -> anyhow::Result<(String, Vec<u8>)> {
    let labels = format!(
        "k8s:app=app-{k};k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=bench;"
    );
    LabelSet::parse(&labels)?;
    Ok((
        Key::Identity(identity(shape, k)?).to_string(),
        labels.into_bytes(),
    ))
}

/// Node `n`'s pod CIDR; the node after the last holds the timed changes' pods.
fn node_kv(shape: &Shape, n: u32) -> anyhow::Result<(String, Vec<u8>)> {
    let name = c2_name()?;
    let pods = match n == shape.nodes {
        true => CHANGED_PODS,
        false => REMOTE_PODS + n * PER_NODE,
    };
    let node = NodeInfo {
        name: format!("node-{n}"),
        cluster_id: c2(),
        addresses: vec![(NodeAddressKind::Internal, node_addr(n))],
        pod_cidrs: vec![Cidr {
            addr: Addr::from_v4_bits(pods),
            prefix_len: 22,
        }],
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: None,
    };
    let key = Key::Node {
        cluster: name.clone(),
        node: node.name.clone(),
    };
    Ok((key.to_string(), json(&node.to_kvstore(&name))?))
}

fn endpoint_kv(shape: &Shape, i: u32) -> anyhow::Result<(String, Vec<u8>)> {
    let ep = endpoint(shape, REMOTE_PODS + i, i / PER_NODE)?;
    Ok((
        Key::Endpoint(ep.ip.ip()).to_string(),
        json(&ep.to_kvstore())?,
    ))
}

fn service_kv(shape: &Shape, j: u32) -> anyhow::Result<(String, Vec<u8>)> {
    let name = c2_name()?;
    let backends = (0..shape.backends).map(|b| ServicePort {
        addr: Addr::from_v4_bits(REMOTE_PODS + (j * shape.backends + b) % shape.endpoints.max(1)),
        port_name: "http".into(),
        protocol: 6,
        port: 8080,
    });
    let service = ServiceInfo {
        name: ServiceName {
            namespace: "bench".into(),
            name: format!("svc-{j}"),
        },
        frontends: vec![],
        backends: backends.collect(),
        shared: true,
        include_external: true,
        selector: vec![],
    };
    let key = Key::Service {
        cluster: name.clone(),
        namespace: "bench".into(),
        name: service.name.name.clone(),
    };
    Ok((key.to_string(), json(&service.to_kvstore(&name, c2()))?))
}

fn announce_kvs(cluster: u8) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let name = ClusterName::new(&format!("cluster{cluster}"))?;
    let mut kvs = vec![(
        Key::ClusterConfig(name.clone()).to_string(),
        json(&ClusterConfig::new(cluster))?,
    )];
    for kind in Kind::ALL {
        let key = Key::SyncCanary {
            cluster: name.clone(),
            kind,
        };
        kvs.push((key.to_string(), b"2026-11-25T12:00:00Z".to_vec()));
    }
    Ok(kvs)
}

async fn put_all(client: &mut Client, kvs: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let ops: Vec<TxnOp> = kvs
        .iter()
        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_slice(), None))
        .collect();
    client.txn(Txn::new().and_then(ops)).await?;
    Ok(())
}

/// Writes `count` items made by `kv`, a transaction at a time, so that the whole cluster is never
/// held in this process's memory.
async fn write_each(
    client: &mut Client,
    count: u32,
    kv: impl Fn(u32) -> anyhow::Result<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut start = 0;
    while start < count {
        let end = count.min(start + TXN_OPS);
        let chunk = (start..end).map(&kv).collect::<anyhow::Result<Vec<_>>>()?;
        put_all(client, &chunk).await?;
        start = end;
    }
    Ok(())
}

/// The remote cluster in Cilium's layout, the cluster-config and canaries last.
pub async fn write_remote(client: &mut Client, shape: &Shape) -> anyhow::Result<()> {
    write_each(client, shape.identities, |k| identity_kv(shape, k)).await?;
    write_each(client, shape.nodes + 1, |n| node_kv(shape, n)).await?;
    write_each(client, shape.endpoints, |i| endpoint_kv(shape, i)).await?;
    write_each(client, shape.services, |j| service_kv(shape, j)).await?;
    put_all(client, &announce_kvs(2)?).await
}

/// A remote cluster with nothing but its cluster-config and canaries.
pub async fn announce(client: &mut Client, cluster: u8) -> anyhow::Result<()> {
    put_all(client, &announce_kvs(cluster)?).await
}

/// The first identity of `cluster`'s share of the burst: past cluster2's own identities.
fn burst_base(cluster: u8) -> u32 {
    (u32::from(cluster) << 16) + if cluster == 2 { 0x1000 } else { 256 }
}

/// `share` new identities of `cluster`, every one labelled `burst=yes`.
pub async fn write_burst(client: &mut Client, cluster: u8, share: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        burst_base(cluster) + share <= (u32::from(cluster) << 16) + 0xffff,
        "{share} identities do not fit cluster{cluster}'s range"
    );
    write_each(client, share, |k| {
        let id = Identity::new(burst_base(cluster) + k)
            .ok_or_else(|| anyhow::anyhow!("identity out of range"))?;
        let labels = format!(
            "k8s:app=burst-{k};k8s:burst=yes;k8s:io.cilium.k8s.policy.cluster=cluster{cluster};k8s:io.kubernetes.pod.namespace=bench;"
        );
        Ok((Key::Identity(id).to_string(), labels.into_bytes()))
    })
    .await
}

/// The `i`th timed change: a new endpoint on the node after the last (at most 1024 of them).
pub fn change(shape: &Shape, i: u32) -> anyhow::Result<(String, Vec<u8>, Addr)> {
    anyhow::ensure!(i < PER_NODE, "at most {PER_NODE} timed changes");
    let ep = endpoint(shape, CHANGED_PODS + i, shape.nodes)?;
    Ok((
        Key::Endpoint(ep.ip.ip()).to_string(),
        json(&ep.to_kvstore())?,
        ep.ip,
    ))
}

/// Local pod, local node CIDR, remote endpoints and remote node CIDRs (the changes' node's too).
pub fn expected_ipcache(shape: &Shape) -> usize {
    2 + shape.endpoints as usize + shape.nodes as usize + 1
}

fn obj(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "bench".into(),
        name: name.into(),
    }
}

pub fn spec() -> NodeSpec {
    NodeSpec {
        cluster: ClusterName::new("cluster1").unwrap_or_else(|_| unreachable!()),
        cluster_id: c1(),
        node: "node-0".into(),
        config: NodeConfig {
            cluster: c1(),
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
            encryption: Default::default(),
        },
        capacities: Capacities::default(),
        ports: BTreeMap::from([(obj("client"), (PortId(1), [2, 0, 0, 1, 1, 10]))]),
        local_affinity_threshold: 0.0,
        // The burst's identities are all peers of the client's ingress policy.
        policy_limits: PolicyLimits {
            max_entries: 1 << 20,
            ..PolicyLimits::default()
        },
        admission: Default::default(),
        segments: Vec::new(),
        external_workload: false,
    }
}

/// The client admits every identity labelled `burst=yes`, and `rules - 1` more rules each admit
/// one app: policy is compiled against every identity, once per rule.
fn client_policy(rules: u32) -> LocalPolicy {
    let admit = |key: &str, value: &str| PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("app", "client"),
        ingress: Some(vec![IngressRule {
            from: vec![Peer::Endpoints(LabelSelector::all().with_label(key, value))],
            to_ports: vec![],
        }]),
        egress: None,
    };
    let mut all = vec![admit("burst", "yes")];
    all.extend((1..rules).map(|i| admit("app", &format!("app-{i}"))));
    LocalPolicy {
        policy: PolicyRef {
            kind: PolicyKind::CiliumNetworkPolicy,
            policy: obj("client-ingress"),
        },
        rules: all,
        refused: None,
    }
}

/// Cluster1 as the builder sees it: one node with one pod, and every service global.
pub async fn local(shape: &Shape) -> anyhow::Result<Arc<ResolvedLocal>> {
    let mut state = LocalState::default();
    state.nodes.insert(
        "node-0".into(),
        LocalNode {
            name: "node-0".into(),
            internal_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))],
            pod_cidrs: vec!["10.0.1.0/24".into()],
            labels: Default::default(),
            wireguard_pub_key: None,
        },
    );
    state.pods.insert(
        obj("client"),
        LocalPod {
            pod: obj("client"),
            node: Some("node-0".into()),
            labels: [("app".to_string(), "client".to_string())].into(),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10))],
            service_account: "default".into(),
            ready: true,
            terminating: false,
        },
    );
    for j in 0..shape.services {
        let name = obj(&format!("svc-{j}"));
        state.services.insert(
            name.clone(),
            LocalService {
                service: name,
                cluster_ips: vec![Addr::from_v4_bits(LOCAL_VIPS + j).ip()],
                ports: vec![LocalServicePort {
                    name: "http".into(),
                    protocol: 6,
                    port: 80,
                }],
                selector: Default::default(),
                global: true,
                shared: true,
                affinity: Default::default(),
            },
        );
    }
    let policy = client_policy(shape.policy_rules);
    state.policies.insert(policy.policy.clone(), policy);
    let mut resolver = Resolver::new(
        ClusterName::new("cluster1")?,
        c1(),
        MemoryAllocator::new(c1()),
    );
    Ok(Arc::new(resolver.resolve(Arc::new(state)).await?))
}
