//! `meshpath-lab up/status/down` (`meshpath lab …`) on the real kernel: the address plan is reachable
//! as designed
//! (pods on one node, pods across nodes of a cluster, nodes across clusters through the routed hop),
//! pods of different clusters are not (that needs the tunnel), both commands are idempotent, and down
//! leaves no namespace or process behind. Needs root: not root, it is reported as skipped (and fails under `scripts/test`).

use std::process::{Command, Output};

use meshpath_testkit::needs_root;
use serde_json::Value;

/// How long the kernel may take to do what was asked, on a loaded machine.
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

struct Lab {
    prefix: String,
}

impl Lab {
    fn lab(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_meshpath-lab"))
            .args(args)
            .args(["--prefix", &self.prefix])
            .output()
            .expect("meshpath-lab runs");
        assert!(
            out.status.success(),
            "meshpath lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ping(&self, ns: &str, addr: &str) -> bool {
        let ns = format!("{}-{ns}", self.prefix);
        Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-c", "1", "-W", "1", addr])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn status(&self) -> Value {
        let out = self.lab(&["status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).expect("status prints JSON")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_meshpath-lab"))
            .args(["down", "--prefix", &self.prefix])
            .status();
    }
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lab_up_builds_the_address_plan_and_down_removes_everything() {
    if !needs_root("lab_up_builds_the_address_plan_and_down_removes_everything") {
        return;
    }
    let lab = Lab {
        prefix: format!("mpl{}", std::process::id() % 100_000),
    };
    let size = ["--clusters", "2", "--nodes", "2", "--pods", "2"];
    lab.lab(&[&["up"][..], &size].concat());
    lab.lab(&[&["up"][..], &size].concat());

    let status = lab.status();
    let namespaces = status["namespaces"].as_array().expect("namespaces");
    assert_eq!(
        namespaces.len(),
        2 + 2 * 2 * 3,
        "fabric, outside host, 4 nodes, 8 pods"
    );
    let pod = namespaces
        .iter()
        .find(|n| n["name"] == format!("{}-c2-n1-p2", lab.prefix))
        .expect("pod 2 of node 1 of cluster 2");
    assert_eq!(pod["role"], "pod");
    let eth0 = pod["interfaces"]
        .as_array()
        .and_then(|i| i.iter().find(|i| i["name"] == "eth0"))
        .expect("eth0");
    assert_eq!(eth0["addresses"][0], "100.65.1.11/32");

    // Without agents no kernel carries pod traffic: only the dataplane does.
    assert!(
        !lab.ping("c1-n1-p1", "100.64.1.11"),
        "no kernel path between pods of a node"
    );
    assert!(!lab.ping("c1-n1-p1", "100.64.2.10"), "nor across nodes");
    assert!(!lab.ping("c1-n1-p1", "100.65.1.10"), "nor across clusters");
    assert!(
        !lab.ping("c1-n1-p1", "203.0.113.10"),
        "nor to the outside host"
    );
    assert!(
        lab.ping("c1-n1", "198.18.2.2"),
        "nodes of two clusters, through the routed hop"
    );
    assert!(
        lab.ping("c1-n1", "203.0.113.10"),
        "nodes reach the outside host"
    );
    let outside = namespaces
        .iter()
        .find(|n| n["name"] == format!("{}-outside", lab.prefix))
        .expect("the outside host");
    assert_eq!(outside["role"], "outside");

    let node = format!("{}-c1-n1", lab.prefix);
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &node, "sleep", "60"])
        .spawn()
        .expect("a process inside the lab");
    let pid = sleeper.id().to_string();
    meshpath_testkit::until(
        "the process to be inside the node's namespace",
        WAIT,
        || {
            let pids = Command::new("ip")
                .args(["netns", "pids", &node])
                .output()
                .expect("ip netns pids");
            let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
            meshpath_testkit::wait::check(pids.lines().any(|p| p.trim() == pid), pids)
        },
    )
    .unwrap();

    lab.lab(&["down"]);
    meshpath_testkit::until("down to end the processes running in the lab", WAIT, || {
        meshpath_testkit::wait::check(sleeper.try_wait().ok().flatten().is_some(), "running")
    })
    .unwrap();
    assert!(
        lab_namespaces(&lab.prefix).is_empty(),
        "down leaves no namespace"
    );
    lab.lab(&["down"]);
    assert_eq!(lab.status()["namespaces"].as_array().map(Vec::len), Some(0));
}
