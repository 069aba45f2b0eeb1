//! Every node the agent knows, for `meshpath node list`: its own cluster's from the local state, the
//! remote clusters' from their watchers' events, and how the live snapshot reaches each. Control-plane
//! bookkeeping, off the packet path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use meshpath_api::node::{Cidr, Mac, NextHop, NodeRow, Reach, TunnelProtocol};
use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::local::LocalState;
use meshpath_control::resolve::parse_cidr;
use meshpath_control::state::{Entry, EntryKey, StateEvent};
use meshpath_dataplane::route;
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::tunnel;

use super::convert;

/// Nodes by (cluster, name), and a signal for whoever follows their changes. The names the local
/// state gave are kept apart: on an external workload the cluster it joined is also watched as a
/// remote of the same name, whose nodes a new local state must not take away.
#[derive(Clone, Default)]
pub struct NodeDirectory(
    Arc<Mutex<BTreeMap<(String, String), NodeRow>>>,
    Arc<tokio::sync::Notify>,
    Arc<Mutex<BTreeSet<(String, String)>>>,
);

impl NodeDirectory {
    /// Resolves after the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.1.notified().await;
    }

    /// Replaces this cluster's own nodes with those of `state`.
    pub fn record_local(&self, cluster: &str, state: &LocalState) {
        let (Ok(mut nodes), Ok(mut local)) = (self.0.lock(), self.2.lock()) else {
            return;
        };
        for key in std::mem::take(&mut *local) {
            nodes.remove(&key);
        }
        for node in state.nodes.values() {
            local.insert((cluster.to_owned(), node.name.clone()));
            let row = NodeRow {
                cluster: cluster.to_owned(),
                name: node.name.clone(),
                address: node.internal_ips.first().copied(),
                // As the agent routes them: text that is no CIDR routes nothing.
                pod_cidrs: node
                    .pod_cidrs
                    .iter()
                    .filter_map(|text| parse_cidr(text))
                    .map(cidr)
                    .collect(),
                reach: None,
            };
            nodes.insert((cluster.to_owned(), node.name.clone()), row);
        }
        self.1.notify_one();
    }

    /// Follows a remote cluster's node events.
    pub fn record_remote(&self, event: &RemoteEvent) {
        let Ok(mut nodes) = self.0.lock() else { return };
        let cluster = event.cluster.to_string();
        match &event.event {
            StateEvent::Upsert(Entry::Node(node)) => {
                let row = NodeRow {
                    cluster: cluster.clone(),
                    name: node.name.clone(),
                    address: node.tunnel_addr().map(|a| a.ip()),
                    pod_cidrs: node.pod_cidrs.iter().copied().map(cidr).collect(),
                    reach: None,
                };
                nodes.insert((cluster, node.name.clone()), row);
            }
            StateEvent::Delete(EntryKey::Node(name)) => {
                nodes.remove(&(cluster, name.clone()));
            }
            _ => return,
        }
        self.1.notify_one();
    }

    pub fn rows(&self) -> Vec<NodeRow> {
        self.0
            .lock()
            .map(|n| n.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The rows, each with how `tables` reach the node.
    pub fn rows_reached(&self, tables: &Tables) -> Vec<NodeRow> {
        let mut rows = self.rows();
        for row in &mut rows {
            row.reach = row.address.and_then(|a| reach(tables, a.into()));
        }
        rows
    }
}

/// How the pipeline sends to the node at `addr`, as its routing decides for every frame.
pub fn reach(tables: &Tables, addr: meshpath_dataplane::Addr) -> Option<Reach> {
    if tables.node.owns(addr) {
        return Some(Reach::Local);
    }
    let config = &tables.node;
    let node = tables.nodes.get(addr)?;
    let next_hop = |mac| {
        if mac == config.underlay.router_mac {
            NextHop::Router
        } else {
            NextHop::Segment(Mac(mac))
        }
    };
    Some(match config.routing.next_hop(&config.underlay, node) {
        Ok(route::NextHop::Direct { mac }) => Reach::Direct {
            next_hop: next_hop(mac),
        },
        Ok(route::NextHop::Tunnel { mac, .. }) => Reach::Tunnel {
            protocol: match config.tunnel {
                tunnel::TunnelProtocol::Vxlan => TunnelProtocol::Vxlan,
                tunnel::TunnelProtocol::Geneve => TunnelProtocol::Geneve,
            },
            next_hop: next_hop(mac),
        },
        Err(reason) => Reach::Refused {
            reason: convert::drop_reason(reason),
        },
    })
}

fn cidr(c: meshpath_control::state::Cidr) -> Cidr {
    Cidr {
        address: c.addr.ip(),
        prefix_len: c.prefix_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_api::DropReason;
    use meshpath_dataplane::route::{NodeLink, RemoteNode, RoutingMode};
    use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
    use meshpath_dataplane::ClusterId;

    const NEIGHBOUR: [u8; 6] = [2, 0, 0, 1, 0, 2];

    /// Node 198.18.1.1 in `routing`, with a resolved neighbour (.1.2), an unresolved one (.1.3) and
    /// a node behind the router (198.18.2.1).
    fn tables(routing: RoutingMode) -> Tables {
        let config = NodeConfig {
            routing,
            tunnel: tunnel::TunnelProtocol::Geneve,
            ..meshpath_dataplane::testbed::node_config()
        };
        let mut tables = Tables::empty(config, Capacities::default());
        let nodes = [
            ([198, 18, 1, 2], NodeLink::Segment(NEIGHBOUR)),
            ([198, 18, 1, 3], NodeLink::Unresolved),
            ([198, 18, 2, 1], NodeLink::Routed),
        ];
        for (addr, link) in nodes {
            let addr = std::net::Ipv4Addr::from(addr).into();
            let cluster = ClusterId::new(1).unwrap();
            tables
                .nodes
                .upsert(RemoteNode {
                    addr,
                    cluster,
                    link,
                    wireguard_key: None,
                })
                .unwrap();
        }
        tables
    }

    fn reaches(routing: RoutingMode) -> Vec<Option<Reach>> {
        let tables = tables(routing);
        [
            "198.18.1.1",
            "198.18.1.2",
            "198.18.1.3",
            "198.18.2.1",
            "198.18.9.9",
        ]
        .iter()
        .map(|a| reach(&tables, a.parse::<std::net::IpAddr>().unwrap().into()))
        .collect()
    }

    #[test]
    fn each_node_is_listed_as_the_pipeline_reaches_it() {
        let geneve = |next_hop| {
            Some(Reach::Tunnel {
                protocol: TunnelProtocol::Geneve,
                next_hop,
            })
        };
        let segment = NextHop::Segment(Mac(NEIGHBOUR));
        assert_eq!(
            reaches(RoutingMode::Tunnel),
            [
                Some(Reach::Local),
                geneve(segment),
                geneve(NextHop::Router),
                geneve(NextHop::Router),
                None
            ]
        );
        assert_eq!(
            reaches(RoutingMode::Hybrid)[1..4],
            [
                Some(Reach::Direct { next_hop: segment }),
                geneve(NextHop::Router),
                geneve(NextHop::Router)
            ]
        );
        let refused = |reason| Some(Reach::Refused { reason });
        let native = RoutingMode::Native {
            underlay_routes_pods: false,
        };
        assert_eq!(
            reaches(native)[1..4],
            [
                Some(Reach::Direct { next_hop: segment }),
                refused(DropReason::NodeMacUnresolved),
                refused(DropReason::NodeOffSegment)
            ]
        );
        let routed = RoutingMode::Native {
            underlay_routes_pods: true,
        };
        assert_eq!(
            reaches(routed)[3],
            Some(Reach::Direct {
                next_hop: NextHop::Router
            })
        );
    }
}
