//! Every node of every cluster the agent knows: `meshpath node list`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::text::{join, Table};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub cluster: String,
    pub name: String,
    /// The underlay address other nodes tunnel to.
    pub address: Option<IpAddr>,
    pub pod_cidrs: Vec<Cidr>,
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
    let mut table = Table::new(["NODE", "ADDRESS", "POD CIDRS"]);
    for row in rows {
        table.row([
            format!("{}/{}", row.cluster, row.name),
            row.address.map_or("-".to_owned(), |a| a.to_string()),
            join(&row.pod_cidrs, ","),
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
        }];
        let table = render(&rows);
        assert_eq!(
            table.lines().nth(1),
            Some("cluster2/node1  -        10.2.0.0/24,fd00:2::/64")
        );
    }
}
