//! Native routing on the lab (root) over a fabric that does not route pod CIDRs, as a network without
//! a route table for them: pods of one cluster on two nodes talk plain across their shared segment
//! (the capture on the fabric sees their ICMP, no tunnel), while the nodes of the other cluster,
//! behind the fabric's router, are refused as they must be — listed so by `meshpath node list` and
//! counted as `node_off_segment` when a pod tries — rather than silently tunnelled or sent to a router
//! that does not know the way.

use std::process::Command;
use std::time::Duration;

use meshpath_api::node::{NextHop, Reach};
use meshpath_api::{Client, DropReason};
use meshpath_lab::capture::Capture;
use meshpath_lab::mesh::{self, MeshOptions, Routing, Tunnel};
use meshpath_lab::plan::{Plan, Size};

struct Lab {
    plan: Plan,
}

impl Lab {
    fn build(prefix: &str) -> Lab {
        let size = Size {
            clusters: 2,
            nodes: 2,
            pods: 1,
        };
        let lab = Lab {
            plan: Plan::new(prefix, size).expect("a valid plan"),
        };
        // The lab starts agents with this binary: the test's own is not beside it.
        std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
        meshpath_lab::up::up_for_cni(&lab.plan).expect("lab up");
        let options = MeshOptions {
            fabric_routes_pods: false,
            ..MeshOptions::new(Routing::Native, Tunnel::Vxlan)
        };
        mesh::start_with(&lab.plan, options).expect("agents and etcd start");
        lab
    }

    fn pod(&self, c: u8, n: u8) -> String {
        format!("{}-c{c}-n{n}-p1", self.plan.prefix)
    }

    fn pod_ip(&self, c: u8, n: u8) -> String {
        let node = self
            .plan
            .nodes
            .iter()
            .find(|x| x.cluster == c && x.node == n);
        node.expect("a node of the plan").pods[0].addr.to_string()
    }

    fn ping(&self, from: (u8, u8), to: (u8, u8)) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.pod(from.0, from.1)])
            .args(["ping", "-c", "2", "-i", "0.2", "-W", "1"])
            .arg(self.pod_ip(to.0, to.1))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn client(&self) -> Client {
        Client::new(mesh::socket(&self.plan.prefix, 1, 1))
    }

    /// How cluster1's first node reaches each node, by name.
    fn reach(&self) -> Vec<(String, Option<Reach>)> {
        let Ok(status) = self.client().status() else {
            return Vec::new();
        };
        status
            .nodes
            .into_iter()
            .map(|n| (n.name, n.reach))
            .collect()
    }

    fn off_segment_drops(&self) -> u64 {
        let status = self.client().status().ok();
        let dropped = status.map(|s| s.dataplane.dropped);
        dropped
            .and_then(|d| d.get(&DropReason::NodeOffSegment).copied())
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.plan.prefix);
    }
}

#[test]
fn native_routing_carries_a_cluster_plain_and_refuses_nodes_behind_the_router() {
    if !meshpath_testkit::needs_root(
        "native_routing_carries_a_cluster_plain_and_refuses_nodes_behind_the_router",
    ) {
        return;
    }
    let lab = Lab::build(&format!("nr{}", std::process::id() % 100_000));
    let refused = Some(Reach::Refused {
        reason: DropReason::NodeOffSegment,
    });
    let settled = mesh::wait(Duration::from_secs(30), || {
        let reach = lab.reach();
        let neighbour = reach.iter().find(|(name, _)| name == "c1-n2");
        let resolved = neighbour.is_some_and(|(_, r)| {
            matches!(
                r,
                Some(Reach::Direct {
                    next_hop: NextHop::Segment(_)
                })
            )
        });
        let others = reach.iter().filter(|(name, _)| name.starts_with("c2-"));
        resolved && others.clone().count() == 2 && others.clone().all(|(_, r)| *r == refused)
    });
    assert!(
        settled,
        "cluster1's node list: its neighbour direct, cluster2's nodes refused: {:?}",
        lab.reach()
    );

    let fabric = lab.plan.fabric.clone();
    let capture = Capture::filtered(&fabric, "c1n1", &["icmp"]).expect("a capture on the fabric");
    assert!(
        mesh::wait(Duration::from_secs(20), || lab.ping((1, 1), (1, 2))),
        "pods of one cluster on two nodes talk natively"
    );
    let wire = capture.stop().expect("the capture");
    let plain = format!(
        "{} > {}: ICMP echo request",
        lab.pod_ip(1, 1),
        lab.pod_ip(1, 2)
    );
    assert!(
        wire.iter().any(|line| line.contains(&plain)),
        "the fabric carried the pods' own packets: {wire:?}"
    );

    let before = lab.off_segment_drops();
    assert!(!lab.ping((1, 1), (2, 2)), "no way to the other cluster");
    assert!(
        lab.off_segment_drops() > before,
        "and its frames are counted as node_off_segment"
    );
}
