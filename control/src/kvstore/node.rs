//! A node as Cilium writes it under `cilium/state/nodes/v1/<cluster>/<node>` (Go field names).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::go::{optional_ip, IpNet};

/// One of a node's addresses; `Type` is `InternalIP`, `ExternalIP` or `CiliumInternalIP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "IP")]
    pub ip: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    pub name: String,
    pub cluster: String,
    #[serde(rename = "IPAddresses", default)]
    pub ip_addresses: Vec<NodeAddress>,
    #[serde(rename = "IPv4AllocCIDR", default)]
    pub ipv4_alloc_cidr: Option<IpNet>,
    #[serde(rename = "IPv6AllocCIDR", default)]
    pub ipv6_alloc_cidr: Option<IpNet>,
    #[serde(rename = "IPv4HealthIP", default, with = "optional_ip")]
    pub ipv4_health_ip: Option<IpAddr>,
    #[serde(rename = "IPv6HealthIP", default, with = "optional_ip")]
    pub ipv6_health_ip: Option<IpAddr>,
    #[serde(rename = "ClusterID", default)]
    pub cluster_id: u32,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub encryption_key: u8,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub node_identity: u32,
    #[serde(default)]
    pub wireguard_pub_key: String,
    #[serde(rename = "BootID", default)]
    pub boot_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const DOC_EXAMPLE: &str = r#"{"Name":"node-2","Cluster":"cluster3",
 "IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"},{"Type":"CiliumInternalIP","IP":"10.244.1.130"}],
 "IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"////AA=="},"IPv6AllocCIDR":null,
 "IPv4HealthIP":"","IPv6HealthIP":"","ClusterID":3,"Source":"custom-resource","EncryptionKey":0,
 "Labels":{"kubernetes.io/hostname":"node-2"},"Annotations":null,"NodeIdentity":0,"WireguardPubKey":"","BootID":"..."}"#;

    #[test]
    fn reads_the_documented_node() {
        let node: Node = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(node.name, "node-2");
        assert_eq!(node.cluster, "cluster3");
        assert_eq!(node.cluster_id, 3);
        assert_eq!(node.ip_addresses[1].kind, "CiliumInternalIP");
        assert_eq!(
            node.ipv4_alloc_cidr.as_ref().and_then(IpNet::prefix_len),
            Some(24)
        );
        assert_eq!(node.ipv4_health_ip, None);
        assert_eq!(node.labels["kubernetes.io/hostname"], "node-2");
    }

    #[test]
    fn writes_go_field_names_and_reads_them_back() {
        let node: Node = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let written: serde_json::Value = serde_json::to_value(&node).unwrap();
        let original: serde_json::Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(written, original);
    }
}
