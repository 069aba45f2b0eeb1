//! The lab's topology as data: which namespaces, links, addresses and routes `lab up` creates for N
//! clusters × M nodes × K pods. Pure, so the address plan is tested without touching the machine.

use std::net::Ipv4Addr;

use serde::Serialize;

/// Largest lab: the address plan has one octet each for cluster, node and pod.
pub const MAX_CLUSTERS: u8 = 64;
pub const MAX_NODES: u8 = 200;
pub const MAX_PODS: u8 = 200;
pub const MAX_EXTERNALS: u8 = 200;
/// Most dataplane workers a lab node's agent runs (the agent's own limit).
pub const MAX_WORKERS: u8 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub clusters: u8,
    pub nodes: u8,
    pub pods: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--clusters {0}: must be 1..={MAX_CLUSTERS}")]
    Clusters(u8),
    #[error("--nodes {0}: must be 1..={MAX_NODES}")]
    Nodes(u8),
    #[error("--pods {0}: must be 0..={MAX_PODS}")]
    Pods(u8),
    #[error("--prefix `{0}`: 1 to 8 of [a-z0-9]")]
    Prefix(String),
    #[error("--external {0}: must be 0..={MAX_EXTERNALS}")]
    Externals(u8),
    #[error("--workers {0}: must be 1..={MAX_WORKERS}")]
    Workers(u8),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub cluster: u8,
    pub node: u8,
    pub netns: String,
    /// Interface name on both sides: `uplink` in the node, this name in the fabric.
    pub fabric_port: String,
    pub underlay: Ipv4Addr,
    pub pod_cidr: (Ipv4Addr, u8),
    /// The pods' default gateway: an on-link address whose ARP the agent answers (no interface holds
    /// it).
    pub gateway: Ipv4Addr,
    pub pods: Vec<Pod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    pub netns: String,
    /// The node side of the pod's veth, where XDP attaches, in the plain lab (the CNI plugin names
    /// its own: [`cni::node_interface`](crate::cni::node_interface)); `eth0` in the pod.
    pub node_port: String,
    pub addr: Ipv4Addr,
}

/// The host outside every cluster (TEST-NET-3, RFC 5737), and the fabric router's address towards it.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const OUTSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub prefix: String,
    pub fabric: String,
    /// The namespace of the host outside the mesh, at [`OUTSIDE`].
    pub outside: String,
    pub clusters: Vec<u8>,
    pub nodes: Vec<Node>,
    /// Members of each cluster's etcd (1, or 3 as production runs it), all on the cluster's first node.
    pub etcd_members: u8,
    /// Hosts outside every cluster that join cluster1 as external workloads (`vm1`, …; see
    /// [`crate::external`]).
    pub externals: u8,
    /// Dataplane workers of each node's agent: cores `0..workers` (agents share them), and as many
    /// queues on each node's uplink and on the pods' veths. External workloads run one.
    pub workers: u8,
}

/// The fabric router's address on cluster `c`'s bridge.
pub fn fabric_router(c: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, c, 254)
}

pub fn bridge(c: u8) -> String {
    format!("br-c{c}")
}

impl Plan {
    /// Each cluster's etcd as `members` members.
    pub fn with_etcd_members(mut self, members: u8) -> Self {
        self.etcd_members = members.max(1);
        self
    }

    pub fn new(prefix: &str, size: Size) -> Result<Plan, PlanError> {
        let prefix_ok = (1..=8).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !prefix_ok {
            return Err(PlanError::Prefix(prefix.to_owned()));
        }
        if !(1..=MAX_CLUSTERS).contains(&size.clusters) {
            return Err(PlanError::Clusters(size.clusters));
        }
        if !(1..=MAX_NODES).contains(&size.nodes) {
            return Err(PlanError::Nodes(size.nodes));
        }
        if size.pods > MAX_PODS {
            return Err(PlanError::Pods(size.pods));
        }
        let clusters: Vec<u8> = (1..=size.clusters).collect();
        let nodes = clusters
            .iter()
            .flat_map(|&c| (1..=size.nodes).map(move |n| (c, n)))
            .map(|(c, n)| node(prefix, c, n, size.pods))
            .collect();
        Ok(Plan {
            prefix: prefix.to_owned(),
            fabric: format!("{prefix}-fabric"),
            outside: format!("{prefix}-outside"),
            clusters,
            nodes,
            etcd_members: 1,
            externals: 0,
            workers: 1,
        })
    }

    /// `n` external workloads (at most [`MAX_EXTERNALS`]).
    pub fn with_externals(mut self, n: u8) -> Result<Self, PlanError> {
        if n > MAX_EXTERNALS {
            return Err(PlanError::Externals(n));
        }
        self.externals = n;
        Ok(self)
    }

    /// `n` workers in every node's agent (at most [`MAX_WORKERS`]).
    pub fn with_workers(mut self, n: u8) -> Result<Self, PlanError> {
        if !(1..=MAX_WORKERS).contains(&n) {
            return Err(PlanError::Workers(n));
        }
        self.workers = n;
        Ok(self)
    }

    /// The cores of node `node`'s agent: one, spread over the first two by the node's place (agents
    /// share them), or `0..workers`.
    pub fn agent_cores(&self, node: &Node) -> Vec<u8> {
        match self.workers {
            1 => vec![(node.cluster + node.node) % 2],
            n => (0..n).collect(),
        }
    }

    /// Every namespace of the plan, fabric and outside host first, external workloads last.
    pub fn namespaces(&self) -> impl Iterator<Item = String> + '_ {
        let nodes = self.nodes.iter().flat_map(|n| {
            std::iter::once(n.netns.clone()).chain(n.pods.iter().map(|p| p.netns.clone()))
        });
        let externals = (1..=self.externals).map(|v| external_netns(&self.prefix, v));
        [self.fabric.clone(), self.outside.clone()]
            .into_iter()
            .chain(nodes)
            .chain(externals)
    }
}

fn node(prefix: &str, c: u8, n: u8, pods: u8) -> Node {
    let netns = format!("{prefix}-c{c}-n{n}");
    let pods = (1..=pods)
        .map(|k| Pod {
            netns: format!("{netns}-p{k}"),
            node_port: format!("pod{k}"),
            addr: Ipv4Addr::new(100, 63 + c, n, 9 + k),
        })
        .collect();
    Node {
        cluster: c,
        node: n,
        fabric_port: format!("c{c}n{n}"),
        underlay: Ipv4Addr::new(198, 18, c, n),
        pod_cidr: (Ipv4Addr::new(100, 63 + c, n, 0), 24),
        gateway: Ipv4Addr::new(100, 63 + c, n, 1),
        netns,
        pods,
    }
}

/// The namespace of external workload `v` (`vm<v>`).
pub fn external_netns(prefix: &str, v: u8) -> String {
    format!("{prefix}-vm{v}")
}

/// External workload `v`'s address: on a subnet of its own (198.19.v.0/24, outside every cluster's),
/// which the fabric routes.
pub fn external_address(v: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, v, 10)
}

/// The fabric router's address on external workload `v`'s subnet.
pub fn external_router(v: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, v, 254)
}

/// Whether `name` is a namespace some lab with this prefix would create (for `down`).
pub fn is_lab_netns(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let external = |r: &str| {
        r.strip_prefix("vm")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    };
    rest == "fabric"
        || rest == "outside"
        || external(rest)
        || rest
            .strip_prefix('c')
            .is_some_and(|r| r.starts_with(|ch: char| ch.is_ascii_digit()) && r.contains("-n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        #[test]
        fn names_and_addresses_are_unique_and_in_their_ranges(
            clusters in 1u8..=6, nodes in 1u8..=6, pods in 0u8..=6,
        ) {
            let plan = Plan::new("mp", Size { clusters, nodes, pods }).expect("valid size");
            let ns: Vec<String> = plan.namespaces().collect();
            prop_assert_eq!(ns.len(), 2 + clusters as usize * nodes as usize * (1 + pods as usize));
            prop_assert_eq!(ns.iter().collect::<HashSet<_>>().len(), ns.len());
            prop_assert!(ns.iter().all(|n| is_lab_netns("mp", n)));
            let mut addrs = HashSet::new();
            for node in &plan.nodes {
                let c = node.cluster;
                prop_assert_eq!(node.underlay.octets()[..3].to_vec(), vec![198, 18, c]);
                prop_assert!(node.fabric_port.len() <= 15);
                prop_assert!(addrs.insert(node.underlay));
                for pod in &node.pods {
                    let o = pod.addr.octets();
                    prop_assert_eq!((o[0], o[1], o[2]), (100, 63 + c, node.node));
                    prop_assert!(o[3] >= 10 && pod.addr != node.gateway);
                    prop_assert!(addrs.insert(pod.addr));
                    prop_assert!(pod.node_port.len() <= 15);
                }
            }
        }
    }

    #[test]
    fn sizes_and_prefixes_out_of_range_are_refused() {
        let size = Size {
            clusters: 1,
            nodes: 1,
            pods: 1,
        };
        assert_eq!(
            Plan::new(
                "mp",
                Size {
                    clusters: 0,
                    ..size
                }
            ),
            Err(PlanError::Clusters(0))
        );
        assert_eq!(
            Plan::new("mp", Size { nodes: 201, ..size }),
            Err(PlanError::Nodes(201))
        );
        assert_eq!(Plan::new("MP", size), Err(PlanError::Prefix("MP".into())));
        assert_eq!(Plan::new("", size), Err(PlanError::Prefix(String::new())));
    }

    #[test]
    fn down_recognises_only_lab_namespaces_of_its_prefix() {
        assert!(is_lab_netns("mp", "mp-fabric"));
        assert!(is_lab_netns("mp", "mp-c2-n1-p3"));
        assert!(is_lab_netns("mp", "mp-vm1"));
        assert!(!is_lab_netns("mp", "mp-vm"));
        assert!(!is_lab_netns("mp", "mpx-vm1"));
        assert!(!is_lab_netns("mp", "mp-t-fwd12-node"));
        assert!(!is_lab_netns("mp", "mpx-c1-n1"));
        assert!(!is_lab_netns("mp", "other"));
    }
}
