//! Cilium's kvstore formats: the keys a cluster writes to its own etcd and the JSON (or label string)
//! under each, as serde types; and the checks a reader makes before it trusts a value from a remote
//! cluster. Publishing (our etcd) and the remote watchers (theirs) both speak through this module.

mod cluster_config;
mod go;
mod ip;
mod key;
mod labels;
mod node;
mod service;

use std::net::IpAddr;

use meshpath_dataplane::{ClusterId, Identity};

pub use cluster_config::{Capabilities, ClusterConfig};
pub use go::IpNet;
pub use ip::IpIdentityPair;
pub use key::{Key, KeyError, Kind, ROOT};
pub use labels::{LabelError, LabelSet, LabelValue, CLUSTER_LABEL, NAMESPACE_LABEL};
pub use node::{Node, NodeAddress};
pub use service::{ClusterService, L4Addr, PortsByAddress};

use crate::cluster_name::ClusterName;
use crate::refusal::Refusal;

/// The cluster whose etcd a value was read from: what every key and value must agree with.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub name: &'a ClusterName,
    pub id: ClusterId,
}

/// A value decoded and checked against its key and its origin.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Node(Node),
    Service(ClusterService),
    Identity(Identity, LabelSet),
    Endpoint(IpIdentityPair),
    ClusterConfig(ClusterConfig),
    SyncCanary(Kind),
}

/// A value refused; every variant names the key it was found under.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("{key}: value is not valid JSON of its kind: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
    #[error("{key}: value is not UTF-8")]
    Utf8 { key: String },
    #[error("{key}: {source}")]
    Labels { key: String, source: LabelError },
    #[error("{key}: cluster name `{found}` does not match `{expected}`")]
    ClusterName {
        key: String,
        found: String,
        expected: String,
    },
    #[error("{key}: cluster id {found} does not match {expected}")]
    ClusterId {
        key: String,
        found: u32,
        expected: u8,
    },
    #[error("{key}: {field} `{found}` does not match the key")]
    Mismatch {
        key: String,
        field: &'static str,
        found: String,
    },
    #[error("{key}: identity {id} is outside cluster {cluster}'s range")]
    IdentityRange {
        key: String,
        id: u32,
        cluster: ClusterId,
    },
    #[error("{key}: identity {id} is reserved (below 256), not an endpoint's")]
    ReservedIdentity { key: String, id: u32 },
    #[error(
        "{key}: {field} holds the IPv4-mapped address {addr}, which would alias {}",
        mapped_v4(addr)
    )]
    Ipv4Mapped {
        key: String,
        field: &'static str,
        addr: IpAddr,
    },
    #[error("{key}: the service is not shared (`shared: false`)")]
    NotShared { key: String },
    #[error("{key}: CIDR entries are not shared across clusters")]
    Cidr { key: String },
}

impl ValueError {
    /// The reason, as status and metrics count it.
    pub fn refusal(&self) -> Refusal {
        match self {
            ValueError::Json { .. }
            | ValueError::Utf8 { .. }
            | ValueError::Labels { .. }
            | ValueError::Mismatch { .. }
            | ValueError::Cidr { .. } => Refusal::Malformed,
            ValueError::ClusterName { .. } | ValueError::ClusterId { .. } => Refusal::WrongCluster,
            ValueError::IdentityRange { .. } | ValueError::ReservedIdentity { .. } => {
                Refusal::ReservedIdentity
            }
            ValueError::Ipv4Mapped { .. } => Refusal::Ipv4Mapped,
            ValueError::NotShared { .. } => Refusal::NotShared,
        }
    }
}

fn mapped_v4(addr: &IpAddr) -> String {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or_else(|| addr.to_string(), |v4| v4.to_string()),
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// `true` for `::ffff:a.b.c.d`, which the dataplane could not tell from `a.b.c.d`.
pub fn is_ipv4_mapped(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

impl Record {
    /// Decodes `value` found under `key` in `origin`'s etcd, refusing anything that claims another cluster.
    pub fn decode(key: &Key, value: &[u8], origin: Origin<'_>) -> Result<Record, ValueError> {
        let k = || key.to_string();
        let name_matches = |found: &str| -> Result<(), ValueError> {
            if found == origin.name.as_str() {
                Ok(())
            } else {
                Err(ValueError::ClusterName {
                    key: k(),
                    found: found.into(),
                    expected: origin.name.to_string(),
                })
            }
        };
        let id_matches = |found: u32| -> Result<(), ValueError> {
            if found == u32::from(origin.id.get()) {
                Ok(())
            } else {
                Err(ValueError::ClusterId {
                    key: k(),
                    found,
                    expected: origin.id.get(),
                })
            }
        };
        match key {
            Key::Node { cluster, node } => {
                name_matches(cluster.as_str())?;
                let value: Node = from_json(key, value)?;
                name_matches(&value.cluster)?;
                id_matches(value.cluster_id)?;
                same(key, "Name", node, &value.name)?;
                node_addresses_unmapped(key, &value)?;
                Ok(Record::Node(value))
            }
            Key::Service {
                cluster,
                namespace,
                name,
            } => {
                name_matches(cluster.as_str())?;
                let value: ClusterService = from_json(key, value)?;
                name_matches(&value.cluster)?;
                id_matches(value.cluster_id)?;
                same(key, "namespace", namespace, &value.namespace)?;
                same(key, "name", name, &value.name)?;
                service_addresses_unmapped(key, &value)?;
                if !value.shared {
                    return Err(ValueError::NotShared { key: k() });
                }
                Ok(Record::Service(value))
            }
            Key::Identity(id) => {
                owned_by(key, *id, origin.id)?;
                let text = std::str::from_utf8(value).map_err(|_| ValueError::Utf8 { key: k() })?;
                let labels = LabelSet::parse(text)
                    .map_err(|source| ValueError::Labels { key: k(), source })?;
                if let Some(cluster) = labels.get(CLUSTER_LABEL) {
                    name_matches(cluster)?;
                }
                Ok(Record::Identity(*id, labels))
            }
            Key::Endpoint(ip) => {
                unmapped(key, "key", ip)?;
                let value: IpIdentityPair = from_json(key, value)?;
                same(key, "IP", &ip.to_string(), &value.ip.to_string())?;
                if let Some(host) = &value.host_ip {
                    unmapped(key, "HostIP", host)?;
                }
                if value.mask.is_some() {
                    return Err(ValueError::Cidr { key: k() });
                }
                let id = Identity::new(value.id).ok_or(ValueError::IdentityRange {
                    key: k(),
                    id: value.id,
                    cluster: origin.id,
                })?;
                if id.is_reserved() {
                    return Err(ValueError::ReservedIdentity {
                        key: k(),
                        id: id.get(),
                    });
                }
                owned_by(key, id, origin.id)?;
                Ok(Record::Endpoint(value))
            }
            Key::ClusterConfig(cluster) => {
                name_matches(cluster.as_str())?;
                let value: ClusterConfig = from_json(key, value)?;
                id_matches(value.id)?;
                Ok(Record::ClusterConfig(value))
            }
            Key::SyncCanary { cluster, kind } => {
                name_matches(cluster.as_str())?;
                Ok(Record::SyncCanary(*kind))
            }
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(key: &Key, value: &[u8]) -> Result<T, ValueError> {
    serde_json::from_slice(value).map_err(|source| ValueError::Json {
        key: key.to_string(),
        source,
    })
}

fn same(key: &Key, field: &'static str, in_key: &str, in_value: &str) -> Result<(), ValueError> {
    if in_key == in_value {
        Ok(())
    } else {
        Err(ValueError::Mismatch {
            key: key.to_string(),
            field,
            found: in_value.to_owned(),
        })
    }
}

fn unmapped(key: &Key, field: &'static str, addr: &IpAddr) -> Result<(), ValueError> {
    if is_ipv4_mapped(addr) {
        return Err(ValueError::Ipv4Mapped {
            key: key.to_string(),
            field,
            addr: *addr,
        });
    }
    Ok(())
}

fn node_addresses_unmapped(key: &Key, node: &Node) -> Result<(), ValueError> {
    for address in &node.ip_addresses {
        unmapped(key, "IPAddresses", &address.ip)?;
    }
    for (field, cidr) in [
        ("IPv4AllocCIDR", &node.ipv4_alloc_cidr),
        ("IPv6AllocCIDR", &node.ipv6_alloc_cidr),
    ] {
        if let Some(cidr) = cidr {
            unmapped(key, field, &cidr.ip)?;
        }
    }
    for (field, ip) in [
        ("IPv4HealthIP", &node.ipv4_health_ip),
        ("IPv6HealthIP", &node.ipv6_health_ip),
    ] {
        if let Some(ip) = ip {
            unmapped(key, field, ip)?;
        }
    }
    Ok(())
}

/// Addresses that do not parse are left for the conversion to refuse.
fn service_addresses_unmapped(key: &Key, service: &ClusterService) -> Result<(), ValueError> {
    for (field, by_addr) in [
        ("frontends", &service.frontends),
        ("backends", &service.backends),
    ] {
        for addr in by_addr.keys().filter_map(|a| a.parse::<IpAddr>().ok()) {
            unmapped(key, field, &addr)?;
        }
    }
    Ok(())
}

fn owned_by(key: &Key, id: Identity, cluster: ClusterId) -> Result<(), ValueError> {
    if id.cluster() == Some(cluster) {
        Ok(())
    } else {
        Err(ValueError::IdentityRange {
            key: key.to_string(),
            id: id.get(),
            cluster,
        })
    }
}

#[cfg(test)]
mod tests;
