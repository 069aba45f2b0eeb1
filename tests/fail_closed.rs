//! The node fails closed (root, on the lab): with its agent stopped — the planned way or killed — no
//! frame of its pods reaches its kernel or another pod, spoofed ones included, and the XDP programs
//! that stay attached count what they dropped in their pinned maps; the restarted agent carries the
//! pods' traffic again and still refuses a spoofed source.

use std::process::Command;
use std::time::Duration;

use meshpath_lab::capture::Capture;
use meshpath_lab::mesh::{self, Stop};
use meshpath_lab::plan::{Plan, Size};
use meshpath_xdp_redirect::XdpRedirect;

struct Lab {
    plan: Plan,
}

impl Lab {
    fn build(prefix: &str) -> Lab {
        let size = Size {
            clusters: 1,
            nodes: 2,
            pods: 1,
        };
        let lab = Lab {
            plan: Plan::new(prefix, size).expect("a valid plan"),
        };
        // The lab starts agents with this binary: the test's own is not beside it.
        std::env::set_var("MESHPATH_BIN", env!("CARGO_BIN_EXE_meshpath"));
        meshpath_lab::up::up_for_cni(&lab.plan).expect("lab up");
        mesh::start(&lab.plan).expect("agents and etcd start");
        lab
    }

    fn pod(&self, n: u8) -> String {
        format!("{}-c1-n{n}-p1", self.plan.prefix)
    }

    /// The node's end of pod `n`'s veth, as the CNI plugin named it.
    fn pod_port(&self, n: u8) -> String {
        meshpath_lab::cni::node_interface(&self.plan.prefix, &self.pod(n))
            .expect("the plugin made the pod's veth")
    }

    fn node(&self, n: u8) -> String {
        format!("{}-c1-n{n}", self.plan.prefix)
    }

    fn ping(&self, from: u8, to: &str, source: Option<&str>) -> bool {
        let mut ping = Command::new("ip");
        ping.args([
            "netns",
            "exec",
            &self.pod(from),
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
        ]);
        if let Some(source) = source {
            ping.args(["-I", source]);
        }
        ping.arg(to).output().is_ok_and(|o| o.status.success())
    }

    /// The verdict counters of the XDP program on node 1's pod veth, from its pinned maps.
    fn pod_port_verdicts(&self) -> meshpath_xdp_redirect::VerdictCounts {
        let dir = mesh::pin_dir(&self.plan.prefix)
            .join("c1-n1")
            .join(self.pod_port(1));
        XdpRedirect::pinned_verdicts(&dir).expect("the pod port's pinned counters")
    }

    fn spoofed_drops(&self) -> u64 {
        meshpath_api::Client::new(mesh::socket(&self.plan.prefix, 1, 1))
            .status()
            .ok()
            .and_then(|s| {
                s.dataplane
                    .dropped
                    .get(&meshpath_api::DropReason::SpoofedSource)
                    .copied()
            })
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        mesh::tear_down(&self.plan.prefix);
    }
}

#[test]
fn a_node_without_its_agent_drops_its_pods_traffic_and_counts_it() {
    if !meshpath_testkit::needs_root(
        "a_node_without_its_agent_drops_its_pods_traffic_and_counts_it",
    ) {
        return;
    }
    let lab = Lab::build(&format!("fc{}", std::process::id() % 100_000));
    let peer = lab.plan.nodes[1].pods[0].addr.to_string();
    let spoofed = "100.64.1.99";
    assert!(
        mesh::wait(Duration::from_secs(20), || lab.ping(1, &peer, None)),
        "pods talk through the agents"
    );
    let add = |verb: &str| {
        let pod = lab.pod(1);
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &pod,
                "ip",
                "addr",
                verb,
                &format!("{spoofed}/32"),
                "dev",
                "eth0",
            ])
            .status()
            .expect("ip addr in the pod");
    };
    add("add");

    for how in [Stop::Planned, Stop::Killed] {
        let before = lab.pod_port_verdicts();
        mesh::stop_agent(&lab.plan, 1, 1, how).expect("the agent stops");
        let into_node =
            Capture::start(&lab.node(1), &lab.pod_port(1)).expect("a capture on node 1");
        let into_peer = Capture::start(&lab.pod(2), "eth0").expect("a capture in pod 2");
        assert!(!lab.ping(1, &peer, None), "{how:?}: no agent, no path");
        assert!(
            !lab.ping(1, &peer, Some(spoofed)),
            "{how:?}: nor for a spoofed source"
        );
        let node_saw = into_node.stop().expect("node 1's capture");
        let peer_saw = into_peer.stop().expect("pod 2's capture");
        assert!(
            node_saw.is_empty(),
            "{how:?}: the node's kernel got pod frames: {node_saw:?}"
        );
        let icmp: Vec<&String> = peer_saw
            .iter()
            .filter(|l| l.contains("ICMP echo request"))
            .collect();
        assert!(icmp.is_empty(), "{how:?}: the peer got pings: {icmp:?}");
        let after = lab.pod_port_verdicts();
        assert!(
            after.dropped_no_socket >= before.dropped_no_socket + 4,
            "{how:?}: the program counted its drops: {before:?} → {after:?}"
        );

        mesh::start_agent_again(&lab.plan, 1, 1).expect("the agent starts again");
        assert!(
            mesh::wait(Duration::from_secs(20), || lab.ping(1, &peer, None)),
            "{how:?}: the restarted agent carries the pods again"
        );
        let spoofs_before = lab.spoofed_drops();
        assert!(
            !lab.ping(1, &peer, Some(spoofed)),
            "{how:?}: spoofing is still refused"
        );
        assert!(lab.spoofed_drops() > spoofs_before, "{how:?}: and counted");
    }
    add("del");
}
