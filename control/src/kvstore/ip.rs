//! The IP → identity pair Cilium writes under `cilium/state/ip/v1/default/<ip>`: which security identity
//! an endpoint address has, and which node (`HostIP`) to tunnel to.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::go::optional_ip;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpIdentityPair {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    /// Set only for CIDR entries, which ClusterMesh does not share; kept to read such values faithfully.
    #[serde(rename = "Mask", default, with = "optional_mask")]
    pub mask: Option<Vec<u8>>,
    #[serde(rename = "HostIP", default, with = "optional_ip")]
    pub host_ip: Option<IpAddr>,
    #[serde(rename = "ID")]
    pub id: u32,
    #[serde(rename = "Key", default)]
    pub key: u8,
    #[serde(rename = "Metadata", default)]
    pub metadata: String,
    #[serde(rename = "K8sNamespace", default)]
    pub k8s_namespace: String,
    #[serde(rename = "K8sPodName", default)]
    pub k8s_pod_name: String,
    #[serde(rename = "K8sServiceAccount", default)]
    pub k8s_service_account: String,
}

mod optional_mask {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mask: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match mask {
            Some(bytes) => super::super::go::mask::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        use base64::Engine;
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_EXAMPLE: &str = r#"{"IP":"10.244.2.74","Mask":null,"HostIP":"172.18.0.2","ID":199475,"Key":0,"Metadata":"",
 "K8sNamespace":"bar","K8sPodName":"cep-002","K8sServiceAccount":"default"}"#;

    #[test]
    fn reads_the_documented_pair() {
        let pair: IpIdentityPair = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(pair.ip, "10.244.2.74".parse::<IpAddr>().unwrap());
        assert_eq!(pair.host_ip, Some("172.18.0.2".parse().unwrap()));
        assert_eq!((pair.id, pair.mask.as_ref()), (199475, None));
        assert_eq!(pair.k8s_pod_name, "cep-002");
    }

    #[test]
    fn writes_the_same_field_names() {
        let pair: IpIdentityPair = serde_json::from_str(DOC_EXAMPLE).unwrap();
        let original: serde_json::Value = serde_json::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(serde_json::to_value(&pair).unwrap(), original);
    }
}
