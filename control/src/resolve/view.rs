//! The local state as the mesh sees it: nodes with their pod CIDRs, every pod address with its identity
//! and node, and the global services this cluster shares, with only their serving backends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use meshpath_dataplane::wireguard::PublicKey;
use meshpath_dataplane::{Addr, ClusterId, Identity};

use crate::kvstore::LabelSet;
use crate::local::{LocalNode, LocalService, LocalState, ObjectRef, SliceEndpoint};
use crate::state::{
    Cidr, ClusterState, EndpointInfo, NodeAddressKind, NodeInfo, ServiceInfo, ServiceName,
    ServicePort,
};

/// A node's underlay address: its first InternalIP.
pub fn local_node_addr(node: &LocalNode) -> Option<Addr> {
    node.internal_ips.first().map(|ip| Addr::from(*ip))
}

/// A WireGuard public key as Cilium writes it (`WireguardPubKey`, the node annotation): standard
/// base64 of 32 bytes; `None` if it is not one.
pub fn parse_wireguard_key(text: &str) -> Option<PublicKey> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    Some(PublicKey(bytes.try_into().ok()?))
}

/// `100.64.1.0/24` → a [`Cidr`]; `None` if it is not one.
pub fn parse_cidr(text: &str) -> Option<Cidr> {
    let (ip, len) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix_len: u8 = len.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix_len <= max).then_some(Cidr {
        addr: ip.into(),
        prefix_len,
    })
}

/// Whether a slice endpoint takes new flows: ready and not terminating (Kubernetes: a terminating
/// endpoint may still be `serving`, but only for the connections it has).
pub fn serving(endpoint: &SliceEndpoint) -> bool {
    endpoint.ready && !endpoint.terminating
}

/// This cluster's state for the mesh, given each scheduled pod's identity and each identity's labels.
pub fn mesh_view(
    local: &LocalState,
    pods: &BTreeMap<ObjectRef, Identity>,
    identities: &BTreeMap<Identity, LabelSet>,
    cluster: ClusterId,
) -> ClusterState {
    let mut state = ClusterState {
        nodes: local
            .nodes
            .values()
            .map(|n| (n.name.clone(), Arc::new(node_info(n, cluster))))
            .collect(),
        identities: identities.iter().map(|(id, l)| (*id, l.clone())).collect(),
        ..ClusterState::default()
    };
    for (pod_ref, identity) in pods {
        let Some(pod) = local.pods.get(pod_ref) else {
            continue;
        };
        let node = pod.node.as_ref().and_then(|n| local.nodes.get(n));
        for ip in &pod.ips {
            let host_ip = node.and_then(|n| host_ip_for(n, ip));
            let endpoint = EndpointInfo {
                ip: Addr::from(*ip),
                identity: *identity,
                host_ip,
                namespace: pod_ref.namespace.clone(),
                pod_name: pod_ref.name.clone(),
            };
            state.endpoints.insert(endpoint.ip, Arc::new(endpoint));
        }
    }
    state.services = shared_services(local);
    state
}

/// What one agent publishes of its cluster's `state`: its own node and the endpoints of the pods on it
/// (with the identities they use); the global services only if it leads the cluster.
pub fn node_share(
    local: &LocalState,
    state: &ClusterState,
    node: &str,
    leading: bool,
) -> ClusterState {
    let own_ips: HashSet<Addr> = local
        .pods
        .values()
        .filter(|pod| pod.node.as_deref() == Some(node))
        .flat_map(|pod| pod.ips.iter().map(|ip| Addr::from(*ip)))
        .collect();
    let endpoints: HashMap<Addr, Arc<EndpointInfo>> = state
        .endpoints
        .iter()
        .filter(|(ip, _)| own_ips.contains(*ip))
        .map(|(ip, e)| (*ip, e.clone()))
        .collect();
    let used: HashSet<Identity> = endpoints.values().map(|e| e.identity).collect();
    ClusterState {
        nodes: state
            .nodes
            .iter()
            .filter(|(name, _)| *name == node)
            .map(|(name, n)| (name.clone(), n.clone()))
            .collect(),
        identities: state
            .identities
            .iter()
            .filter(|(id, _)| used.contains(*id))
            .map(|(id, l)| (*id, l.clone()))
            .collect(),
        services: if leading {
            state.services.clone()
        } else {
            HashMap::new()
        },
        endpoints,
    }
}

fn node_info(node: &LocalNode, cluster: ClusterId) -> NodeInfo {
    NodeInfo {
        name: node.name.clone(),
        cluster_id: cluster,
        addresses: node
            .internal_ips
            .iter()
            .map(|ip| (NodeAddressKind::Internal, Addr::from(*ip)))
            .collect(),
        pod_cidrs: node
            .pod_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c))
            .collect(),
        health_ips: Vec::new(),
        encryption_key: 0,
        wireguard_pub_key: node.wireguard_pub_key.clone(),
    }
}

/// The node address to tunnel to for a pod address: one of the same family if the node has one.
fn host_ip_for(node: &LocalNode, ip: &IpAddr) -> Option<Addr> {
    let same = node
        .internal_ips
        .iter()
        .find(|n| n.is_ipv4() == ip.is_ipv4());
    same.or(node.internal_ips.first()).map(|n| Addr::from(*n))
}

/// Global services whose `shared` is not false, with their serving backends.
fn shared_services(local: &LocalState) -> HashMap<ServiceName, Arc<ServiceInfo>> {
    local
        .services
        .values()
        .filter(|s| s.global && s.shared)
        .map(|s| {
            let info = service_info(local, s);
            (info.name.clone(), Arc::new(info))
        })
        .collect()
}

fn service_info(local: &LocalState, service: &LocalService) -> ServiceInfo {
    let frontends = service
        .cluster_ips
        .iter()
        .flat_map(|ip| {
            service.ports.iter().map(|p| ServicePort {
                addr: Addr::from(*ip),
                port_name: p.name.as_str().into(),
                protocol: p.protocol,
                port: p.port,
            })
        })
        .collect();
    let mut backends: Vec<ServicePort> = local
        .endpoint_slices
        .values()
        .filter(|slice| slice.service == service.service)
        .flat_map(|slice| {
            let ready = slice.endpoints.iter().filter(|e| serving(e));
            ready.flat_map(move |e| {
                e.addresses.iter().flat_map(move |ip| {
                    slice.ports.iter().map(move |p| ServicePort {
                        addr: Addr::from(*ip),
                        port_name: p.name.as_str().into(),
                        protocol: p.protocol,
                        port: p.port,
                    })
                })
            })
        })
        .collect();
    backends.sort();
    backends.dedup();
    ServiceInfo {
        name: ServiceName {
            namespace: service.service.namespace.clone(),
            name: service.service.name.clone(),
        },
        frontends,
        backends,
        shared: true,
        include_external: true,
        selector: service
            .selector
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::local::{LocalEndpointSlice, LocalPod, LocalServicePort};
    use std::net::Ipv4Addr;

    pub fn obj(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    pub fn slice_endpoint(ip: Ipv4Addr, ready: bool, terminating: bool) -> SliceEndpoint {
        SliceEndpoint {
            addresses: vec![ip.into()],
            ready,
            serving: ready,
            terminating,
            node: Some("n1".into()),
            pod: None,
        }
    }

    fn state() -> LocalState {
        let mut local = LocalState::default();
        local.nodes.insert(
            "n1".into(),
            LocalNode {
                name: "n1".into(),
                internal_ips: vec![Ipv4Addr::new(198, 18, 1, 1).into()],
                pod_cidrs: vec!["100.64.1.0/24".into(), "bogus".into()],
                labels: Default::default(),
                wireguard_pub_key: None,
            },
        );
        local.pods.insert(
            obj("default", "p1"),
            LocalPod {
                pod: obj("default", "p1"),
                node: Some("n1".into()),
                labels: Default::default(),
                ips: vec![Ipv4Addr::new(100, 64, 1, 10).into()],
                service_account: "default".into(),
                ready: true,
                terminating: false,
            },
        );
        let port = LocalServicePort {
            name: "http".into(),
            protocol: 6,
            port: 80,
        };
        for (name, global, shared) in [
            ("g", true, true),
            ("quiet", true, false),
            ("plain", false, true),
        ] {
            local.services.insert(
                obj("default", name),
                LocalService {
                    service: obj("default", name),
                    cluster_ips: vec![Ipv4Addr::new(100, 64, 255, 1).into()],
                    ports: vec![port.clone()],
                    selector: Default::default(),
                    global,
                    shared,
                    affinity: Default::default(),
                },
            );
        }
        local.endpoint_slices.insert(
            obj("default", "g-abc"),
            LocalEndpointSlice {
                slice: obj("default", "g-abc"),
                service: obj("default", "g"),
                ports: vec![LocalServicePort { port: 8080, ..port }],
                endpoints: vec![
                    slice_endpoint(Ipv4Addr::new(100, 64, 1, 10), true, false),
                    slice_endpoint(Ipv4Addr::new(100, 64, 1, 11), false, false),
                    slice_endpoint(Ipv4Addr::new(100, 64, 1, 12), true, true),
                ],
            },
        );
        local
    }

    #[test]
    fn exports_nodes_endpoints_and_only_shared_global_services_with_serving_backends() {
        let c = ClusterId::new(1).unwrap();
        let id = Identity::new(0x1_0100).unwrap();
        let pods = BTreeMap::from([(obj("default", "p1"), id)]);
        let ids = BTreeMap::from([(id, LabelSet::parse("k8s:a=b;").unwrap())]);
        let view = mesh_view(&state(), &pods, &ids, c);
        let node = &view.nodes["n1"];
        assert_eq!(node.pod_cidrs.len(), 1, "the bogus CIDR is left out");
        assert_eq!(
            node.tunnel_addr(),
            Some(Ipv4Addr::new(198, 18, 1, 1).into())
        );
        let ep = &view.endpoints[&Addr::from(Ipv4Addr::new(100, 64, 1, 10))];
        assert_eq!((ep.identity, ep.host_ip), (id, node.tunnel_addr()));
        assert_eq!(view.identities.len(), 1);
        assert_eq!(view.services.len(), 1);
        let g = view.services.values().next().unwrap();
        assert_eq!(g.name.name, "g");
        let backends: Vec<_> = g.backends.iter().map(|b| (b.addr, b.port)).collect();
        assert_eq!(
            backends,
            vec![(Addr::from(Ipv4Addr::new(100, 64, 1, 10)), 8080)]
        );
    }

    #[test]
    fn an_agent_shares_its_own_node_and_pods_and_the_services_only_when_leading() {
        let mut local = state();
        local.nodes.insert(
            "n2".into(),
            LocalNode {
                name: "n2".into(),
                internal_ips: vec![Ipv4Addr::new(198, 18, 1, 2).into()],
                pod_cidrs: vec!["100.64.2.0/24".into()],
                labels: Default::default(),
                wireguard_pub_key: None,
            },
        );
        let mut p2 = local.pods[&obj("default", "p1")].clone();
        p2.pod = obj("default", "p2");
        p2.node = Some("n2".into());
        p2.ips = vec![Ipv4Addr::new(100, 64, 2, 10).into()];
        local.pods.insert(p2.pod.clone(), p2);
        let (id1, id2) = (
            Identity::new(0x1_0100).unwrap(),
            Identity::new(0x1_0101).unwrap(),
        );
        let pods = BTreeMap::from([(obj("default", "p1"), id1), (obj("default", "p2"), id2)]);
        let ids = BTreeMap::from([
            (id1, LabelSet::parse("k8s:a=b;").unwrap()),
            (id2, LabelSet::parse("k8s:a=c;").unwrap()),
        ]);
        let view = mesh_view(&local, &pods, &ids, ClusterId::new(1).unwrap());
        assert_eq!((view.nodes.len(), view.endpoints.len()), (2, 2));

        let n2 = node_share(&local, &view, "n2", false);
        assert_eq!(n2.nodes.keys().collect::<Vec<_>>(), ["n2"]);
        let ips: Vec<_> = n2.endpoints.keys().copied().collect();
        assert_eq!(ips, [Addr::from(Ipv4Addr::new(100, 64, 2, 10))]);
        assert_eq!(n2.identities.keys().collect::<Vec<_>>(), [&id2]);
        assert!(n2.services.is_empty(), "a follower shares no service");
        let n1 = node_share(&local, &view, "n1", true);
        assert_eq!(n1.nodes.keys().collect::<Vec<_>>(), ["n1"]);
        assert_eq!(
            n1.services, view.services,
            "the leader shares every global service"
        );
        assert!(node_share(&local, &view, "elsewhere", false) == ClusterState::default());
    }

    #[test]
    fn parses_cidrs() {
        assert_eq!(parse_cidr("100.64.1.0/24").map(|c| c.prefix_len), Some(24));
        assert_eq!(parse_cidr("fd00::/64").map(|c| c.prefix_len), Some(64));
        for bad in ["100.64.1.0/33", "100.64.1.0", "x/8", "fd00::/129"] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }
}
