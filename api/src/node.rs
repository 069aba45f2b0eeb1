//! Every node of every cluster the agent knows, and how the agent reaches it: `meshpath node list`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::drop_reason::DropReason;
use crate::text::{join, Table};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub cluster: String,
    pub name: String,
    /// The underlay address other nodes tunnel to.
    pub address: Option<IpAddr>,
    pub pod_cidrs: Vec<Cidr>,
    /// How this agent reaches the node's pods; `None` when it cannot tell (no address, or the node
    /// is not in its tables).
    #[serde(default)]
    pub reach: Option<Reach>,
}

/// How the agent sends pod traffic to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Reach {
    /// The agent's own node.
    Local,
    /// Plain (native or hybrid routing), re-addressed to `next_hop`.
    Direct { next_hop: NextHop },
    /// Encapsulated with `protocol`, the outer frame addressed to `next_hop`.
    Tunnel {
        protocol: TunnelProtocol,
        next_hop: NextHop,
    },
    /// Not at all: frames to its pods are dropped for `reason`.
    Refused { reason: DropReason },
}

/// Where frames to a node go on the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextHop {
    /// The node itself, at this MAC on the uplink's segment.
    Segment(Mac),
    /// The underlay router towards other segments.
    Router,
}

named_enum! {
    /// What tunnel frames are encapsulated with.
    pub enum TunnelProtocol ("tunnel protocol") {
        /// VXLAN on UDP 8472.
        Vxlan => "vxlan",
        /// Geneve on UDP 6081.
        Geneve => "geneve",
    }
}

/// A MAC address; as text `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Text that is not six hexadecimal bytes separated by colons.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no MAC address (02:00:00:00:00:01)")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2);
            *byte = part
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| BadMac(text.to_owned()))?;
        }
        match parts.next() {
            None => Ok(Mac(mac)),
            Some(_) => Err(BadMac(text.to_owned())),
        }
    }
}

serde_as_text!(Mac);

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reach::Local => f.write_str("local"),
            Reach::Direct { next_hop } => write!(f, "direct {next_hop}"),
            Reach::Tunnel { protocol, next_hop } => write!(f, "{protocol} tunnel {next_hop}"),
            Reach::Refused { reason } => write!(f, "refused ({reason})"),
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::Segment(mac) => write!(f, "to {mac}"),
            NextHop::Router => f.write_str("via router"),
        }
    }
}

/// An address prefix; as text `address/length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// Text that is not `address/length` with a length the address family allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no CIDR (address/length)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(text.to_owned());
        let (address, len) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(bad());
        }
        Ok(Cidr {
            address,
            prefix_len,
        })
    }
}

serde_as_text!(Cidr);

/// `meshpath node list` as a table, its columns as wide as their widest cell.
pub fn render(rows: &[NodeRow]) -> String {
    let mut table = Table::new(["NODE", "ADDRESS", "POD CIDRS", "REACHED"]);
    for row in rows {
        table.row([
            format!("{}/{}", row.cluster, row.name),
            row.address.map_or("-".to_owned(), |a| a.to_string()),
            join(&row.pod_cidrs, ","),
            row.reach.map_or("-".to_owned(), |r| r.to_string()),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cidrs_as_text() {
        let v6: Cidr = "fd00:2::/64".parse().unwrap();
        assert_eq!(
            (v6.to_string().as_str(), v6.prefix_len),
            ("fd00:2::/64", 64)
        );
        for bad in ["10.1.0.0/33", "fd00::/129", "10.1.0.0", "10.1.0/24", "/24"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn cidrs_round_trip(address: IpAddr, len in 0u8..=128) {
            let prefix_len = if address.is_ipv4() { len % 33 } else { len };
            let cidr = Cidr { address, prefix_len };
            prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
        }
    }

    #[test]
    fn table_names_nodes_by_cluster() {
        let rows = [NodeRow {
            cluster: "cluster2".into(),
            name: "node1".into(),
            address: None,
            pod_cidrs: vec![
                "10.2.0.0/24".parse().unwrap(),
                "fd00:2::/64".parse().unwrap(),
            ],
            reach: None,
        }];
        let table = render(&rows);
        assert_eq!(
            table.lines().nth(1),
            Some("cluster2/node1  -        10.2.0.0/24,fd00:2::/64  -")
        );
    }

    #[test]
    fn how_a_node_is_reached_reads_as_text_and_as_json() {
        let mac: Mac = "02:00:00:01:00:0a".parse().unwrap();
        let cases = [
            (Reach::Local, "local", r#"{"mode":"local"}"#),
            (
                Reach::Direct {
                    next_hop: NextHop::Segment(mac),
                },
                "direct to 02:00:00:01:00:0a",
                r#"{"mode":"direct","next_hop":{"segment":"02:00:00:01:00:0a"}}"#,
            ),
            (
                Reach::Tunnel {
                    protocol: TunnelProtocol::Geneve,
                    next_hop: NextHop::Router,
                },
                "geneve tunnel via router",
                r#"{"mode":"tunnel","protocol":"geneve","next_hop":"router"}"#,
            ),
            (
                Reach::Refused {
                    reason: DropReason::NodeOffSegment,
                },
                "refused (node_off_segment)",
                r#"{"mode":"refused","reason":"node_off_segment"}"#,
            ),
        ];
        for (reach, text, json) in cases {
            assert_eq!(reach.to_string(), text);
            assert_eq!(serde_json::to_string(&reach).unwrap(), json);
            assert_eq!(serde_json::from_str::<Reach>(json).unwrap(), reach);
        }
        for bad in [
            "02:00:00:01:00",
            "02:00:00:01:00:0a:0b",
            "2:0:0:1:0:a",
            "zz:00:00:01:00:0a",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
