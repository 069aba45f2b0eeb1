//! The node fails closed (root, on the lab): with its agent stopped — the planned way or killed — no
//! frame of its pods reaches its kernel or another pod, spoofed ones included, and the XDP programs
//! that stay attached count what they dropped in their pinned maps; the restarted agent carries the
//! pods' traffic again and still refuses a spoofed source.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
        meshpath_lab::up::up(&lab.plan).expect("lab up");
        mesh::start(&lab.plan).expect("agents and etcd start");
        lab
    }

    fn pod(&self, n: u8) -> String {
        format!("{}-c1-n{n}-p1", self.plan.prefix)
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
        let dir = mesh::pin_dir(&self.plan.prefix).join("c1-n1").join("pod1");
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
        let _ = meshpath_lab::down::down(&self.plan.prefix);
        let _ = std::fs::remove_dir_all(mesh::dir(&self.plan.prefix));
    }
}

/// tcpdump, inbound only, on `interface` in `netns`: frames that reached that kernel's stack.
fn capture(netns: &str, interface: &str) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", netns, "tcpdump", "-i", interface, "-Q", "in", "-n", "-l", "-q",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (setup-host installs it)");
    std::thread::sleep(Duration::from_millis(500));
    child
}

fn captured(child: Child) -> Vec<String> {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().expect("tcpdump ends");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_node_without_its_agent_drops_its_pods_traffic_and_counts_it() {
    let uid = Command::new("id").arg("-u").output().expect("id(1)");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: needs root");
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
        let into_node = capture(&lab.node(1), "pod1");
        let into_peer = capture(&lab.pod(2), "eth0");
        assert!(!lab.ping(1, &peer, None), "{how:?}: no agent, no path");
        assert!(
            !lab.ping(1, &peer, Some(spoofed)),
            "{how:?}: nor for a spoofed source"
        );
        let (node_saw, peer_saw) = (captured(into_node), captured(into_peer));
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
