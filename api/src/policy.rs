//! The compiled policy of the agent's pods, as the workers enforce it now: `meshpath policy get`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::{IdentityRow, ReservedIdentity};
use crate::protocol::Protocol;
use crate::text::join;
use crate::text::Table;

/// One local endpoint's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicyRow {
    /// `namespace/name`.
    pub endpoint: String,
    pub identity: u32,
    pub ingress: DirectionRow,
    pub egress: DirectionRow,
}

/// One direction: allow-all when not enforced, otherwise only what `allow` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionRow {
    pub enforced: bool,
    pub allow: Vec<AllowRow>,
    /// Policies that cannot be enforced as written and so deny this direction: `policy: why`.
    #[serde(default)]
    pub denied_by: Vec<String>,
}

/// A policy that cannot be enforced as written: the endpoints it selects are denied in the
/// directions it covers (`meshpath status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRefusalRow {
    /// `CiliumNetworkPolicy default/name` (several, comma-separated, when their merged grants were
    /// too many together).
    pub policy: String,
    pub why: String,
    /// The local endpoint identities it denies.
    pub endpoints: Vec<u32>,
    pub ingress: bool,
    pub egress: bool,
}

impl PolicyRefusalRow {
    /// `ingress`, `egress` or `ingress and egress`.
    pub fn directions(&self) -> &'static str {
        match (self.ingress, self.egress) {
            (true, true) => "ingress and egress",
            (true, false) => "ingress",
            (false, _) => "egress",
        }
    }
}

/// What one peer may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRow {
    pub peer: PolicyPeer,
    pub ports: Vec<PortGrant>,
}

/// Who a grant is for; as text `any`, a reserved identity's name, or an identity's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyPeer {
    /// Every peer.
    Any,
    Reserved(ReservedIdentity),
    Identity(u32),
}

impl fmt::Display for PolicyPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyPeer::Any => f.write_str("any"),
            PolicyPeer::Reserved(reserved) => f.write_str(reserved.name()),
            PolicyPeer::Identity(id) => write!(f, "{id}"),
        }
    }
}

/// Text that is no policy peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no policy peer (any, a reserved identity's name or an identity's value)")]
pub struct BadPeer(pub String);

impl FromStr for PolicyPeer {
    type Err = BadPeer;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "any" {
            return Ok(PolicyPeer::Any);
        }
        if let Ok(reserved) = text.parse() {
            return Ok(PolicyPeer::Reserved(reserved));
        }
        match text.parse::<u32>() {
            Ok(id) if id.to_string() == text => Ok(PolicyPeer::Identity(id)),
            _ => Err(BadPeer(text.to_owned())),
        }
    }
}

serde_as_text!(PolicyPeer);

/// Ports a peer may reach; as text `all`, `80/TCP` or `1000-2000/UDP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortGrant {
    /// Every port of every protocol.
    All,
    /// `first..=last` of one protocol.
    Ports {
        first: u16,
        last: u16,
        protocol: Protocol,
    },
}

impl fmt::Display for PortGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PortGrant::All => f.write_str("all"),
            PortGrant::Ports {
                first,
                last,
                protocol,
            } if first == last => write!(f, "{first}/{protocol}"),
            PortGrant::Ports {
                first,
                last,
                protocol,
            } => write!(f, "{first}-{last}/{protocol}"),
        }
    }
}

/// Text that is no port grant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is no port grant (all, PORT/PROTOCOL or FIRST-LAST/PROTOCOL)")]
pub struct BadPortGrant(pub String);

impl FromStr for PortGrant {
    type Err = BadPortGrant;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "all" {
            return Ok(PortGrant::All);
        }
        let bad = || BadPortGrant(text.to_owned());
        let (ports, protocol) = text.split_once('/').ok_or_else(bad)?;
        let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
        let (first, last): (u16, u16) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        if first > last {
            return Err(bad());
        }
        Ok(PortGrant::Ports {
            first,
            last,
            protocol: protocol.parse().map_err(|_| bad())?,
        })
    }
}

serde_as_text!(PortGrant);

/// `meshpath policy get` as a table: per endpoint and direction, each allowed peer with its ports and,
/// when `identities` knows it, its labels.
pub fn render(rows: &[EndpointPolicyRow], identities: &[IdentityRow]) -> String {
    let labels_of = |peer: PolicyPeer| -> String {
        let PolicyPeer::Identity(id) = peer else {
            return String::new();
        };
        let Some(row) = identities.iter().find(|r| r.id == id) else {
            return String::new();
        };
        let labels: Vec<String> = row.labels.iter().map(ToString::to_string).collect();
        labels.join(",")
    };
    let mut table = Table::new([
        "ENDPOINT",
        "IDENTITY",
        "DIRECTION",
        "PEER",
        "PORTS",
        "PEER LABELS",
    ]);
    for row in rows {
        let (mut endpoint, mut identity) = (row.endpoint.clone(), row.identity.to_string());
        for (name, dir) in [("ingress", &row.ingress), ("egress", &row.egress)] {
            let refused = dir
                .denied_by
                .first()
                .map(|why| format!("none (refused: {why})"));
            let lines: Vec<(String, String, String)> = match (dir.enforced, dir.allow.is_empty()) {
                _ if refused.is_some() => {
                    vec![(
                        "-".into(),
                        refused.clone().unwrap_or_default(),
                        String::new(),
                    )]
                }
                (false, _) => vec![("all".into(), "all (not enforced)".into(), String::new())],
                (true, true) => vec![("-".into(), "none (deny all)".into(), String::new())],
                (true, false) => dir
                    .allow
                    .iter()
                    .map(|a| (a.peer.to_string(), join(&a.ports, ","), labels_of(a.peer)))
                    .collect(),
            };
            let mut direction = name;
            for (peer, ports, labels) in lines {
                table.row([&endpoint, &identity, direction, &peer, &ports, &labels]);
                (endpoint, identity, direction) = (String::new(), String::new(), "");
            }
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(ingress: DirectionRow) -> EndpointPolicyRow {
        EndpointPolicyRow {
            endpoint: "default/rebel-base".into(),
            identity: 65538,
            ingress,
            egress: DirectionRow {
                enforced: false,
                allow: vec![],
                denied_by: vec![],
            },
        }
    }

    #[test]
    fn table_shows_enforced_and_open_directions() {
        let enforced = DirectionRow {
            enforced: true,
            allow: vec![AllowRow {
                peer: PolicyPeer::Identity(131073),
                ports: vec!["80/TCP".parse().unwrap()],
            }],
            denied_by: vec![],
        };
        let peer = IdentityRow {
            id: 131073,
            cluster: Some("cluster2".into()),
            labels: vec!["k8s:app=x-wing".parse().unwrap()],
        };
        let table = render(&[row(enforced)], &[peer]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].starts_with("default/rebel-base"));
        assert!(lines[1].contains("ingress"), "{table}");
        let fields: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            fields[3..],
            ["131073", "80/TCP", "k8s:app=x-wing"],
            "{table}"
        );
        assert!(lines[2].contains("egress") && lines[2].ends_with("all (not enforced)"));
        let denied = render(
            &[row(DirectionRow {
                enforced: true,
                allow: vec![],
                denied_by: vec![],
            })],
            &[],
        );
        assert!(denied.contains("none (deny all)"));
        let refused = render(
            &[row(DirectionRow {
                enforced: true,
                allow: vec![],
                denied_by: vec!["CiliumNetworkPolicy default/office: `fromCIDR` unknown".into()],
            })],
            &[],
        );
        assert!(
            refused
                .contains("none (refused: CiliumNetworkPolicy default/office: `fromCIDR` unknown)"),
            "{refused}"
        );
    }

    #[test]
    fn peers_and_grants_as_text() {
        let peers = ["any", "world", "remote-node", "unknown", "131073"];
        for text in peers {
            let peer: PolicyPeer = text.parse().unwrap();
            assert_eq!(peer.to_string(), text);
        }
        assert_eq!("2".parse(), Ok(PolicyPeer::Identity(2)));
        for bad in ["", "World", "0131073", "-1", "4294967296"] {
            assert!(bad.parse::<PolicyPeer>().is_err(), "{bad}");
        }
        let grant: PortGrant = "1000-2000/UDP".parse().unwrap();
        assert_eq!(
            grant,
            PortGrant::Ports {
                first: 1000,
                last: 2000,
                protocol: Protocol::Udp
            }
        );
        for bad in [
            "80",
            "80/tcp",
            "2000-1000/UDP",
            "-80/TCP",
            "ALL",
            "65536/TCP",
        ] {
            assert!(bad.parse::<PortGrant>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn grants_round_trip(a: u16, b: u16, number: u8, all: bool) {
            let grant = match all {
                true => PortGrant::All,
                false => PortGrant::Ports {
                    first: a.min(b),
                    last: a.max(b),
                    protocol: Protocol::from_number(number),
                },
            };
            prop_assert_eq!(grant.to_string().parse::<PortGrant>(), Ok(grant));
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,24}") {
            let _ = text.parse::<PortGrant>();
            let _ = text.parse::<PolicyPeer>();
        }
    }
}
