//! Between Cilium's kvstore values and the mesh's model of a cluster, both ways: remote watchers read
//! values into entries, the publisher writes entries as values.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use meshpath_dataplane::flow::proto;
use meshpath_dataplane::{Addr, ClusterId, Identity};

use super::{
    Cidr, EndpointInfo, Entry, NodeAddressKind, NodeInfo, ServiceInfo, ServiceName, ServicePort,
};
use crate::cluster_name::ClusterName;
use crate::kvstore::{
    ClusterService, IpIdentityPair, IpNet, Key, L4Addr, Node, NodeAddress, PortsByAddress, Record,
};

const SCTP: u8 = 132;

/// A value that passed validation but does not fit the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {why}")]
pub struct ConvertError {
    pub key: String,
    pub why: String,
}

impl Entry {
    /// The entry a record describes; `None` for records that are not state (cluster-config, canaries).
    pub fn from_record(key: &Key, record: Record) -> Result<Option<Entry>, ConvertError> {
        let err = |why: String| ConvertError {
            key: key.to_string(),
            why,
        };
        Ok(Some(match record {
            Record::Node(node) => Entry::Node(node_info(node).map_err(err)?.into()),
            Record::Endpoint(pair) => Entry::Endpoint(endpoint_info(pair).map_err(err)?.into()),
            Record::Identity(id, labels) => Entry::Identity(id, labels),
            Record::Service(svc) => Entry::Service(service_info(svc).map_err(err)?.into()),
            Record::ClusterConfig(_) | Record::SyncCanary(_) => return Ok(None),
        }))
    }
}

fn node_info(node: Node) -> Result<NodeInfo, String> {
    let cluster_id = u8::try_from(node.cluster_id)
        .ok()
        .and_then(ClusterId::new)
        .ok_or_else(|| format!("ClusterID {} is not a mesh cluster id", node.cluster_id))?;
    let addresses = node
        .ip_addresses
        .iter()
        .map(|a| (address_kind(&a.kind), Addr::from(a.ip)))
        .collect();
    let cidr = |net: &IpNet| {
        let prefix_len = net
            .prefix_len()
            .ok_or_else(|| format!("pod CIDR {} has a bad mask", net.ip))?;
        Ok::<_, String>(Cidr {
            addr: net.ip.into(),
            prefix_len,
        })
    };
    let pod_cidrs = [&node.ipv4_alloc_cidr, &node.ipv6_alloc_cidr]
        .into_iter()
        .flatten()
        .map(cidr)
        .collect::<Result<_, _>>()?;
    let health_ips = [node.ipv4_health_ip, node.ipv6_health_ip]
        .into_iter()
        .flatten()
        .map(Addr::from)
        .collect();
    let wireguard_pub_key = Some(node.wireguard_pub_key).filter(|k| !k.is_empty());
    Ok(NodeInfo {
        name: node.name,
        cluster_id,
        addresses,
        pod_cidrs,
        health_ips,
        encryption_key: node.encryption_key,
        wireguard_pub_key,
    })
}

fn address_kind(kind: &str) -> NodeAddressKind {
    match kind {
        "InternalIP" => NodeAddressKind::Internal,
        "ExternalIP" => NodeAddressKind::External,
        "CiliumInternalIP" => NodeAddressKind::CiliumInternal,
        other => NodeAddressKind::Other(other.to_owned()),
    }
}

fn endpoint_info(pair: IpIdentityPair) -> Result<EndpointInfo, String> {
    let identity =
        Identity::new(pair.id).ok_or_else(|| format!("ID {} is not 24 bits", pair.id))?;
    Ok(EndpointInfo {
        ip: pair.ip.into(),
        identity,
        host_ip: pair.host_ip.map(Addr::from),
        namespace: pair.k8s_namespace,
        pod_name: pair.k8s_pod_name,
    })
}

fn service_info(svc: ClusterService) -> Result<ServiceInfo, String> {
    let mut names = PortNames::default();
    Ok(ServiceInfo {
        name: ServiceName {
            namespace: svc.namespace,
            name: svc.name,
        },
        frontends: service_ports(&svc.frontends, &mut names)?,
        backends: service_ports(&svc.backends, &mut names)?,
        shared: svc.shared,
        include_external: svc.include_external,
        selector: svc.selector.into_iter().collect(),
    })
}

/// One allocation for each distinct port name of a service, shared by its ports.
type PortNames = HashSet<Arc<str>>;

fn shared_name(names: &mut PortNames, name: &str) -> Arc<str> {
    if let Some(shared) = names.get(name) {
        return shared.clone();
    }
    let shared: Arc<str> = name.into();
    names.insert(shared.clone());
    shared
}

fn service_ports(
    by_addr: &PortsByAddress,
    names: &mut PortNames,
) -> Result<Vec<ServicePort>, String> {
    let mut out = Vec::new();
    for (addr, ports) in by_addr {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an address"))?;
        for (name, l4) in ports {
            let protocol = match l4.protocol.as_str() {
                "TCP" => proto::TCP,
                "UDP" => proto::UDP,
                "SCTP" => SCTP,
                "ANY" => 0,
                other => {
                    return Err(format!(
                        "port `{name}` of {addr}: protocol `{other}` unknown"
                    ))
                }
            };
            out.push(ServicePort {
                addr: ip.into(),
                port_name: shared_name(names, name),
                protocol,
                port: l4.port,
            });
        }
    }
    out.sort();
    Ok(out)
}

impl NodeInfo {
    /// The value Cilium would write for this node.
    pub fn to_kvstore(&self, cluster: &ClusterName) -> Node {
        let kind_name = |k: &NodeAddressKind| match k {
            NodeAddressKind::Internal => "InternalIP".to_owned(),
            NodeAddressKind::External => "ExternalIP".to_owned(),
            NodeAddressKind::CiliumInternal => "CiliumInternalIP".to_owned(),
            NodeAddressKind::Other(s) => s.clone(),
        };
        let cidr = |v4: bool| {
            let c = self.pod_cidrs.iter().find(|c| c.addr.is_ipv4() == v4)?;
            Some(IpNet::new(c.addr.ip(), c.prefix_len))
        };
        let health = |v4: bool| {
            self.health_ips
                .iter()
                .find(|a| a.is_ipv4() == v4)
                .map(|a| a.ip())
        };
        Node {
            name: self.name.clone(),
            cluster: cluster.to_string(),
            ip_addresses: self
                .addresses
                .iter()
                .map(|(k, a)| NodeAddress {
                    kind: kind_name(k),
                    ip: a.ip(),
                })
                .collect(),
            ipv4_alloc_cidr: cidr(true),
            ipv6_alloc_cidr: cidr(false),
            ipv4_health_ip: health(true),
            ipv6_health_ip: health(false),
            cluster_id: self.cluster_id.get().into(),
            source: "custom-resource".into(),
            encryption_key: self.encryption_key,
            labels: Default::default(),
            annotations: None,
            node_identity: 0,
            wireguard_pub_key: self.wireguard_pub_key.clone().unwrap_or_default(),
            boot_id: String::new(),
        }
    }
}

impl EndpointInfo {
    pub fn to_kvstore(&self) -> IpIdentityPair {
        IpIdentityPair {
            ip: self.ip.ip(),
            mask: None,
            host_ip: self.host_ip.map(Addr::ip),
            id: self.identity.get(),
            key: 0,
            metadata: String::new(),
            k8s_namespace: self.namespace.clone(),
            k8s_pod_name: self.pod_name.clone(),
            k8s_service_account: String::new(),
        }
    }
}

impl ServiceInfo {
    pub fn to_kvstore(&self, cluster: &ClusterName, id: ClusterId) -> ClusterService {
        let by_addr = |ports: &[ServicePort]| {
            let mut out = PortsByAddress::new();
            for p in ports {
                let protocol = match p.protocol {
                    proto::TCP => "TCP",
                    proto::UDP => "UDP",
                    SCTP => "SCTP",
                    _ => "ANY",
                };
                let l4 = L4Addr {
                    protocol: protocol.into(),
                    port: p.port,
                };
                out.entry(p.addr.to_string())
                    .or_default()
                    .insert(p.port_name.to_string(), l4);
            }
            out
        };
        ClusterService {
            cluster: cluster.to_string(),
            namespace: self.name.namespace.clone(),
            name: self.name.name.clone(),
            frontends: by_addr(&self.frontends),
            backends: by_addr(&self.backends),
            labels: Default::default(),
            selector: self.selector.iter().cloned().collect(),
            include_external: self.include_external,
            shared: self.shared,
            cluster_id: id.get().into(),
        }
    }
}
