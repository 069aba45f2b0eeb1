//! How Go's encoding/json writes the network types Cilium's values hold: `net.IP` as a string (empty
//! for none), `net.IPMask` and `[]byte` as base64, `net.IPNet` as `{"IP":..,"Mask":..}`.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `net.IPNet`: address and mask. The prefix length is derived, and checked, on use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    #[serde(rename = "IP")]
    pub ip: IpAddr,
    #[serde(rename = "Mask", with = "mask")]
    pub mask: Vec<u8>,
}

impl IpNet {
    pub fn new(ip: IpAddr, prefix_len: u8) -> Self {
        let bytes = if ip.is_ipv4() { 4 } else { 16 };
        let mask = (0..bytes)
            .map(|i| {
                let ones = (prefix_len as usize).saturating_sub(i * 8).min(8);
                u8::MAX.checked_shl(8 - ones as u32).unwrap_or(0)
            })
            .collect();
        IpNet { ip, mask }
    }

    /// The prefix length; `None` if the mask is not contiguous or not of the address's size.
    pub fn prefix_len(&self) -> Option<u8> {
        let expected = if self.ip.is_ipv4() { 4 } else { 16 };
        if self.mask.len() != expected {
            return None;
        }
        let ones: u32 = self.mask.iter().map(|b| b.count_ones()).sum();
        (IpNet::new(self.ip, ones as u8).mask == self.mask).then_some(ones as u8)
    }
}

/// `[]byte` / `net.IPMask`: base64 text.
pub mod mask {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A `net.IP` that may be absent: Go writes `""` for none.
pub mod optional_ip {
    use super::*;

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_the_documented_mask() {
        let net: IpNet = serde_json::from_str(r#"{"IP":"10.244.1.0","Mask":"////AA=="}"#).unwrap();
        assert_eq!(net.mask, vec![255, 255, 255, 0]);
        assert_eq!(net.prefix_len(), Some(24));
        assert_eq!(
            serde_json::to_string(&net).unwrap(),
            r#"{"IP":"10.244.1.0","Mask":"////AA=="}"#
        );
    }

    #[test]
    fn refuses_holes_and_wrong_sizes() {
        let ip: IpAddr = "10.0.0.0".parse().unwrap();
        assert_eq!(
            IpNet {
                ip,
                mask: vec![255, 0, 255, 0]
            }
            .prefix_len(),
            None
        );
        assert_eq!(
            IpNet {
                ip,
                mask: vec![255; 16]
            }
            .prefix_len(),
            None
        );
    }

    proptest! {
        #[test]
        fn prefix_len_round_trips(v6 in any::<bool>(), len in 0u8..=128) {
            let ip: IpAddr = if v6 { "fd00::".parse().unwrap() } else { "10.0.0.0".parse().unwrap() };
            let len = if v6 { len } else { len % 33 };
            let net = IpNet::new(ip, len);
            prop_assert_eq!(net.prefix_len(), Some(len));
            let json = serde_json::to_string(&net).unwrap();
            prop_assert_eq!(serde_json::from_str::<IpNet>(&json).unwrap(), net);
        }
    }
}
