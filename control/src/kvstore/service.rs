//! A cluster's global service as Cilium writes it under `cilium/state/services/v1/<cluster>/<ns>/<name>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `loadbalancer.L4Addr`: protocol name (`TCP`, `UDP`, `SCTP`) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct L4Addr {
    #[serde(rename = "Protocol")]
    pub protocol: String,
    #[serde(rename = "Port")]
    pub port: u16,
}

/// Address (text) → port name → port: frontends and backends have this shape.
pub type PortsByAddress = BTreeMap<String, BTreeMap<String, L4Addr>>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterService {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub frontends: PortsByAddress,
    #[serde(default)]
    pub backends: PortsByAddress,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub include_external: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(rename = "clusterID", default)]
    pub cluster_id: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{"cluster":"cluster3","namespace":"ns-alpha","name":"echo-service",
 "frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},
 "backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},
 "labels":{},"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":3}"#;

    #[test]
    fn reads_the_documented_service() {
        let svc: ClusterService = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!((svc.cluster.as_str(), svc.cluster_id), ("cluster3", 3));
        assert_eq!(
            svc.backends["10.244.1.10"]["http"],
            L4Addr {
                protocol: "TCP".into(),
                port: 8080
            }
        );
        assert!(svc.include_external && svc.shared);
    }

    #[test]
    fn writes_the_same_field_names() {
        let svc: ClusterService = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let original: serde_json::Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(serde_json::to_value(&svc).unwrap(), original);
    }
}
