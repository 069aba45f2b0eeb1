//! The compiled policy of every pod on this node, for `meshpath policy get`: read from the snapshot
//! the workers use now, so it is what is enforced, not what was written. Off the packet path.

use meshpath_dataplane::policy::{DirectionPolicy, PeerGrant, PortSet};
use meshpath_dataplane::snapshot::Tables;
use serde::{Deserialize, Serialize};

use super::identities::{label, name_of, IdentityRow};

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
}

/// What one peer may do: `peer` is `any` (every peer), a reserved name or an identity's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowRow {
    pub peer: String,
    /// `all`, or ports as `80/TCP`, `1000-2000/UDP`.
    pub ports: Vec<String>,
}

/// Every endpoint of `tables`, by name.
pub fn rows(tables: &Tables) -> Vec<EndpointPolicyRow> {
    let mut out: Vec<EndpointPolicyRow> = tables
        .endpoints
        .iter()
        .map(|endpoint| {
            let policy = tables.policy.policy(endpoint.identity);
            EndpointPolicyRow {
                endpoint: endpoint.name.to_string(),
                identity: endpoint.identity.get(),
                ingress: direction(&policy.ingress),
                egress: direction(&policy.egress),
            }
        })
        .collect();
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    out
}

fn direction(policy: &DirectionPolicy) -> DirectionRow {
    let DirectionPolicy::Enforced(enforced) = policy else {
        return DirectionRow {
            enforced: false,
            allow: Vec::new(),
        };
    };
    let mut peers: Vec<_> = enforced.peers().collect();
    peers.sort_by_key(|(peer, _)| *peer);
    let any = Some(("any".to_owned(), enforced.any_peer()));
    let allow = any
        .into_iter()
        .chain(peers.into_iter().map(|(p, g)| (name_of(p), g)))
        .filter_map(|(peer, grant)| {
            let ports = ports(grant);
            (!ports.is_empty()).then_some(AllowRow { peer, ports })
        })
        .collect();
    DirectionRow {
        enforced: true,
        allow,
    }
}

fn ports(grant: &PeerGrant) -> Vec<String> {
    if grant.all {
        return vec!["all".to_owned()];
    }
    let named = |set: &PortSet, proto: &str| -> Vec<String> {
        set.ranges()
            .iter()
            .map(|(lo, hi)| match lo == hi {
                true => format!("{lo}/{proto}"),
                false => format!("{lo}-{hi}/{proto}"),
            })
            .collect()
    };
    let mut out = named(&grant.tcp, "TCP");
    out.extend(named(&grant.udp, "UDP"));
    out
}

/// `meshpath policy get` as a table: per endpoint and direction, each allowed peer with its ports and,
/// when `identities` knows it, its labels.
pub fn render(rows: &[EndpointPolicyRow], identities: &[IdentityRow]) -> String {
    use std::fmt::Write;
    let labels_of = |peer: &str| -> String {
        let Some(row) = identities.iter().find(|r| r.id.to_string() == peer) else {
            return String::new();
        };
        let labels: Vec<String> = row.labels.iter().map(|(k, v)| label(k, v)).collect();
        labels.join(",")
    };
    let mut out = format!(
        "{:<32} {:<10} {:<9} {:<12} {:<20} {}\n",
        "ENDPOINT", "IDENTITY", "DIRECTION", "PEER", "PORTS", "PEER LABELS"
    );
    for row in rows {
        let (mut endpoint, mut identity) = (row.endpoint.clone(), row.identity.to_string());
        for (name, dir) in [("ingress", &row.ingress), ("egress", &row.egress)] {
            let lines: Vec<(&str, String)> = match (dir.enforced, dir.allow.is_empty()) {
                (false, _) => vec![("all", "all (not enforced)".to_owned())],
                (true, true) => vec![("-", "none (deny all)".to_owned())],
                (true, false) => dir
                    .allow
                    .iter()
                    .map(|a| (a.peer.as_str(), a.ports.join(",")))
                    .collect(),
            };
            let mut direction = name;
            for (peer, ports) in lines {
                let line = format!(
                    "{endpoint:<32} {identity:<10} {direction:<9} {peer:<12} {ports:<20} {}",
                    labels_of(peer)
                );
                let _ = writeln!(out, "{}", line.trim_end());
                (endpoint, identity, direction) = (String::new(), String::new(), "");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::endpoint::Endpoint;
    use meshpath_dataplane::gateway::Gateway;
    use meshpath_dataplane::policy::{
        compile, IdentityLabels, IngressRule, LabelSelector, Labels, Peer, PolicyRule, PortRule,
        Protocol,
    };
    use meshpath_dataplane::route::{RoutingMode, Underlay};
    use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
    use meshpath_dataplane::tunnel::TunnelProtocol;
    use meshpath_dataplane::{ClusterId, Identity, PortId};

    fn node() -> NodeConfig {
        NodeConfig {
            cluster: ClusterId::new(1).unwrap(),
            ipv4: Some([198, 18, 1, 1].into()),
            ipv6: None,
            uplink: PortId(0),
            underlay: Underlay {
                mac: [2, 0, 0, 1, 0, 1],
                router_mac: [2, 0, 0, 0, 0, 0xfe],
                mtu: 1500,
            },
            gateway: Gateway {
                mac: [2, 0, 0, 0, 0, 1],
            },
            routing: RoutingMode::Tunnel,
            tunnel: TunnelProtocol::Vxlan,
            host: None,
            masquerade: None,
        }
    }

    /// rebel-base admits x-wing of any cluster on 80/TCP; x-wing has no rule.
    #[test]
    fn rows_read_the_compiled_table() {
        let (xwing, base, remote) = (
            Identity::new(0x1_0001).unwrap(),
            Identity::new(0x1_0002).unwrap(),
            Identity::new(0x2_0001).unwrap(),
        );
        let mut ids = IdentityLabels::new();
        ids.insert(xwing, Labels::new().with("app", "x-wing"));
        ids.insert(base, Labels::new().with("app", "rebel-base"));
        ids.insert(remote, Labels::new().with("app", "x-wing"));
        let rule = PolicyRule {
            endpoint_selector: LabelSelector::all().with_label("app", "rebel-base"),
            ingress: Some(vec![IngressRule {
                from: vec![Peer::Endpoints(
                    LabelSelector::all().with_label("app", "x-wing"),
                )],
                to_ports: vec![PortRule::new(Protocol::Tcp, 80)],
            }]),
            egress: None,
        };
        let mut tables = Tables::empty(node(), Capacities::default());
        tables.policy = compile(
            &[rule],
            &ids,
            ClusterId::new(1).unwrap(),
            &Default::default(),
        )
        .unwrap();
        for (port, id, name) in [
            (1, base, "default/rebel-base"),
            (2, xwing, "default/x-wing"),
        ] {
            let endpoint = Endpoint {
                port: PortId(port),
                mac: [2, 0, 0, 0, 1, port as u8],
                ipv4: Some([10, 1, 0, port as u8].into()),
                ipv6: None,
                identity: id,
                name: name.into(),
            };
            tables.endpoints.insert(endpoint).unwrap();
        }
        let rows = rows(&tables);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].endpoint.as_str(), rows[0].identity),
            ("default/rebel-base", base.get())
        );
        assert!(rows[0].ingress.enforced && !rows[0].egress.enforced);
        let peers: Vec<(&str, &[String])> = rows[0]
            .ingress
            .allow
            .iter()
            .map(|a| (a.peer.as_str(), a.ports.as_slice()))
            .collect();
        let port80 = ["80/TCP".to_owned()];
        assert_eq!(peers, vec![("65537", &port80[..]), ("131073", &port80[..])]);
        assert!(!rows[1].ingress.enforced && !rows[1].egress.enforced);
    }

    fn row(ingress: DirectionRow) -> EndpointPolicyRow {
        EndpointPolicyRow {
            endpoint: "default/rebel-base".into(),
            identity: 65538,
            ingress,
            egress: DirectionRow {
                enforced: false,
                allow: vec![],
            },
        }
    }

    #[test]
    fn grants_named_with_their_ports() {
        let mut grant = PeerGrant::default();
        grant.tcp.insert(80, 80);
        grant.udp.insert(1000, 2000);
        assert_eq!(ports(&grant), vec!["80/TCP", "1000-2000/UDP"]);
        grant.all = true;
        assert_eq!(ports(&grant), vec!["all"]);
        assert!(ports(&PeerGrant::default()).is_empty());
    }

    #[test]
    fn table_shows_enforced_and_open_directions() {
        let enforced = DirectionRow {
            enforced: true,
            allow: vec![AllowRow {
                peer: "131073".into(),
                ports: vec!["80/TCP".into()],
            }],
        };
        let peer = IdentityRow {
            id: 131073,
            cluster: Some("cluster2".into()),
            labels: [("app".to_owned(), "x-wing".to_owned())].into(),
        };
        let table = render(&[row(enforced)], &[peer]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[1].starts_with("default/rebel-base"));
        assert!(lines[1].contains("ingress"), "{table}");
        assert!(lines[1].ends_with("131073       80/TCP               app=x-wing"));
        assert!(lines[2].contains("egress") && lines[2].ends_with("all (not enforced)"));
        let denied = render(
            &[row(DirectionRow {
                enforced: true,
                allow: vec![],
            })],
            &[],
        );
        assert!(denied.contains("none (deny all)"));
    }
}
