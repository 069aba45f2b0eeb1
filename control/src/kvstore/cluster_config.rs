//! `cilium/cluster-config/<cluster>`: the id a cluster claims and what its kvstore offers. A reader
//! checks the id before it trusts anything else from that etcd.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The cluster writes `cilium/synced/...` canaries once each prefix is complete.
    #[serde(default)]
    pub synced_canaries: bool,
    #[serde(default)]
    pub max_connected_clusters: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub id: u32,
    #[serde(default = "no_capabilities")]
    pub capabilities: Capabilities,
}

fn no_capabilities() -> Capabilities {
    Capabilities {
        synced_canaries: false,
        max_connected_clusters: 255,
    }
}

impl ClusterConfig {
    /// What meshpath writes: canaries on, Cilium's default of 255 clusters.
    pub fn new(id: u8) -> Self {
        ClusterConfig {
            id: id.into(),
            capabilities: Capabilities {
                synced_canaries: true,
                max_connected_clusters: 255,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_documented_value_exactly() {
        let doc = r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
        assert_eq!(
            serde_json::from_str::<ClusterConfig>(doc).unwrap(),
            ClusterConfig::new(3)
        );
        assert_eq!(serde_json::to_string(&ClusterConfig::new(3)).unwrap(), doc);
    }

    #[test]
    fn an_old_cluster_without_capabilities_has_no_canaries() {
        let config: ClusterConfig = serde_json::from_str(r#"{"id":7}"#).unwrap();
        assert!(!config.capabilities.synced_canaries);
    }
}
