//! Whether every tunnelled frame the demo's capture saw carried its sender's security identity in the
//! VNI, as Cilium's datapath puts it there: the identity of the pod whose packet is inside, as the
//! agents list their own endpoints — in both directions, inside a cluster and across clusters.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use meshpath_api::Client;
use serde::Serialize;

use super::routing::{endpoint, pod_cluster};

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct IdentityInVni {
    /// Tunnelled frames between pods checked, by the clusters of the inner packet's source and
    /// destination (`cluster1->cluster2`).
    pub checked: BTreeMap<String, u64>,
    /// Of those, the frames whose VNI was not the identity of the pod that sent the inner packet.
    pub mismatched: u64,
    /// The first of them as tcpdump printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_mismatch: Option<String>,
}

/// Every pod's security identity, from the agent that hosts it.
#[derive(Debug, Default)]
pub struct Identities(HashMap<Ipv4Addr, u32>);

impl Identities {
    pub fn of_every_pod(sockets: &[PathBuf]) -> anyhow::Result<Identities> {
        let mut identities = HashMap::new();
        for socket in sockets {
            for endpoint in Client::new(socket).status()?.endpoints {
                if let Some(ip) = endpoint.ipv4 {
                    identities.insert(ip, endpoint.identity);
                }
            }
        }
        Ok(Identities(identities))
    }
}

impl IdentityInVni {
    /// Checks one captured frame (its lines joined); anything but a tunnelled packet between pods
    /// is not this check's business.
    pub fn check(&mut self, frame: &str, identities: &Identities) {
        let Some(tunnelled) = Tunnelled::parse(frame) else {
            return;
        };
        let (Some(from), Some(to)) = (
            pod_cluster(tunnelled.inner_src),
            pod_cluster(tunnelled.inner_dst),
        ) else {
            return;
        };
        *self
            .checked
            .entry(format!("cluster{from}->cluster{to}"))
            .or_default() += 1;
        if identities.0.get(&tunnelled.inner_src) != Some(&tunnelled.vni) {
            self.mismatched += 1;
            self.first_mismatch.get_or_insert_with(|| frame.to_owned());
        }
    }
}

/// A VXLAN or Geneve frame as tcpdump decodes it: `… VXLAN, flags [I] (0x08), vni 65538 IP
/// 100.64.1.10.36502 > 100.65.2.10.8080: …` or `… Geneve, Flags [none], vni 0x10002: IP …`.
#[derive(Debug, PartialEq, Eq)]
struct Tunnelled {
    vni: u32,
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
}

impl Tunnelled {
    fn parse(frame: &str) -> Option<Tunnelled> {
        let words: Vec<&str> = frame.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "vni")?;
        let vni = parse_vni(words.get(at + 1)?.trim_end_matches([',', ':']))?;
        let inner = &words[at + 2..];
        let ip = inner.iter().position(|w| *w == "IP")?;
        let (inner_src, _) = endpoint(inner.get(ip + 1)?)?;
        if inner.get(ip + 2) != Some(&">") {
            return None;
        }
        let (inner_dst, _) = endpoint(inner.get(ip + 3)?.trim_end_matches(':'))?;
        Some(Tunnelled {
            vni,
            inner_src,
            inner_dst,
        })
    }
}

/// tcpdump prints VXLAN's VNI in decimal and Geneve's in hex.
fn parse_vni(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN: &str = "22:17:31.328117 IP 198.18.1.1.58729 > 198.18.2.2.8472: VXLAN, flags [I] \
        (0x08), vni 65536 IP 100.64.1.10.41772 > 100.65.2.10.8080: Flags [S], seq 1, length 0";
    const GENEVE_REPLY: &str = "22:18:18.414475 IP 198.18.2.2.47666 > 198.18.1.1.6081: Geneve, \
        Flags [none], vni 0x20000: IP 100.65.2.10.8080 > 100.64.1.10.41772: Flags [S.], length 0";

    fn identities() -> Identities {
        Identities(HashMap::from([
            ("100.64.1.10".parse().unwrap(), 65536),
            ("100.65.2.10".parse().unwrap(), 131072),
        ]))
    }

    #[test]
    fn both_tunnels_are_read_with_their_inner_packet() {
        assert_eq!(
            Tunnelled::parse(VXLAN),
            Some(Tunnelled {
                vni: 65536,
                inner_src: "100.64.1.10".parse().unwrap(),
                inner_dst: "100.65.2.10".parse().unwrap(),
            })
        );
        assert_eq!(Tunnelled::parse(GENEVE_REPLY).map(|t| t.vni), Some(0x20000));
        let plain = "22:17:31.3 IP 100.64.1.10.41772 > 100.65.2.10.8080: Flags [S], length 0";
        assert_eq!(Tunnelled::parse(plain), None);
    }

    #[test]
    fn frames_are_checked_by_direction_and_a_wrong_identity_is_kept() {
        let mut check = IdentityInVni::default();
        check.check(VXLAN, &identities());
        check.check(GENEVE_REPLY, &identities());
        assert_eq!(check.mismatched, 0);
        let lie = VXLAN.replace("vni 65536", "vni 65537");
        check.check(&lie, &identities());
        let unknown_pod = VXLAN.replace("100.64.1.10.41772 >", "100.64.1.11.41772 >");
        check.check(&unknown_pod, &identities());
        check.check(
            "22:17:31.3 IP 198.18.1.1.40000 > 198.18.2.1.2379: tcp 40",
            &identities(),
        );
        assert_eq!(
            check.checked,
            BTreeMap::from([
                ("cluster1->cluster2".to_owned(), 3),
                ("cluster2->cluster1".to_owned(), 1)
            ])
        );
        assert_eq!(check.mismatched, 2);
        assert_eq!(check.first_mismatch.as_deref(), Some(lie.as_str()));
    }
}
