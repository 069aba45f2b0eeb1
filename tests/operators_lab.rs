//! What operators read, on a meshed lab (root): two clusters of one node, an etcd and an agent each
//! (`meshpath lab up --mesh`). `status --wait` and `clustermesh status --wait` come back healthy with
//! Cilium's KVStore and ClusterMesh lines; each agent serves its health in its node's namespace on
//! 127.0.0.1:9879 and its metrics on the node's address, port 9962, with Cilium's names; and a
//! mesh-wide `meshpath observe` (one `--socket` per agent) shows a cross-cluster ping from both
//! nodes, in time order, each end named — the remote pod by the namespace and name its cluster's
//! kvstore announced.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_meshpath");

struct MeshLab {
    prefix: String,
}

impl MeshLab {
    fn up() -> MeshLab {
        let lab = MeshLab {
            prefix: format!("o{}", std::process::id() % 100_000),
        };
        let out = meshpath(&[
            "lab",
            "up",
            "--mesh",
            "--clusters",
            "2",
            "--nodes",
            "1",
            "--pods",
            "1",
            "--prefix",
            &lab.prefix,
        ]);
        assert!(ok(&out), "lab up --mesh");
        lab
    }

    fn socket(&self, c: u8) -> PathBuf {
        PathBuf::from(format!("/run/meshpath/lab-{}/c{c}-n1.sock", self.prefix))
    }

    fn node_ns(&self, c: u8) -> String {
        format!("{}-c{c}-n1", self.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// `curl` in cluster `c`'s node: the HTTP status and the body.
    fn curl(&self, c: u8, url: &str) -> (u16, String) {
        let out = self.exec(
            &self.node_ns(c),
            &["curl", "-s", "-m", "3", "-w", "\\n%{http_code}", url],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        let _ = meshpath(&["lab", "down", "--prefix", &self.prefix]);
    }
}

fn meshpath(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("meshpath runs")
}

fn ok(out: &Output) -> bool {
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success()
}

fn wait_for(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    meshpath_testkit::until("the condition", timeout, || {
        meshpath_testkit::wait::check(ready(), ())
    })
    .is_ok()
}

#[test]
fn operators_read_a_meshed_lab_as_they_read_cilium() {
    if !meshpath_testkit::needs_root("operators_read_a_meshed_lab_as_they_read_cilium") {
        return;
    }
    let lab = MeshLab::up();
    let (c1, c2) = (lab.socket(1), lab.socket(2));
    let (c1, c2) = (c1.to_str().unwrap(), c2.to_str().unwrap());

    let status = meshpath(&["status", "--wait", "--wait-duration", "90s", "--socket", c1]);
    assert!(ok(&status), "cluster1's agent healthy");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("KVStore:       Ok   etcd: 1/1 connected: https://198.18.1.1:2379 - "),
        "{text}"
    );
    let mesh = meshpath(&[
        "clustermesh",
        "status",
        "--wait",
        "--wait-duration",
        "90s",
        "--socket",
        c1,
    ]);
    assert!(ok(&mesh), "cluster2 ready for cluster1's agent");
    let mesh_text = String::from_utf8_lossy(&mesh.stdout);
    assert!(
        mesh_text.contains("  └ etcd: connected=true, mutual TLS\n"),
        "cluster2 read over mutual TLS: {mesh_text}"
    );
    let status = meshpath(&["status", "--socket", c1]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("ClusterMesh:   1/1 remote clusters ready"),
        "{text}"
    );

    assert_eq!(
        lab.curl(1, "http://127.0.0.1:9879/readyz").0,
        200,
        "health in the node"
    );
    let (code, metrics) = lab.curl(1, "http://198.18.1.1:9962/metrics");
    assert_eq!(code, 200, "metrics on the node's address");
    for line in [
        r#"cilium_clustermesh_remote_cluster_readiness_status{source_cluster="cluster1",source_node_name="c1-n1",target_cluster="cluster2"} 1"#,
        r#"cilium_clustermesh_remote_clusters{source_cluster="cluster1",source_node_name="c1-n1"} 1"#,
        r#"meshpath_clustermesh_remote_cluster_insecure{source_cluster="cluster1",source_node_name="c1-n1",target_cluster="cluster2"} 0"#,
        "meshpath_kvstore_insecure 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"cilium_kvstore_operations_duration_seconds_count{action="Status",kind="read",outcome="success""#
        )),
        "{metrics}"
    );

    // A ping across clusters, once cluster2's pod is known to cluster1's agent.
    let pod = format!("{}-c1-n1-p1", lab.prefix);
    let pinged = wait_for(Duration::from_secs(60), || {
        let ping = lab.exec(&pod, &["ping", "-c", "1", "-W", "1", "100.65.1.10"]);
        ping.status.success()
    });
    assert!(pinged, "cluster1's pod reaches cluster2's");

    // Mesh-wide: both agents' flows, merged in time order, each end named.
    let mut flows = Vec::new();
    let seen_both = wait_for(Duration::from_secs(10), || {
        let out = meshpath(&[
            "observe",
            "-o",
            "json",
            "--all",
            "--protocol",
            "ICMP",
            "--to-ip",
            "100.65.1.10",
            "--socket",
            c1,
            "--socket",
            c2,
        ]);
        flows = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON event"))
            .filter(|e| e.get("flow").is_some())
            .collect();
        let nodes: Vec<&str> = flows
            .iter()
            .filter_map(|e| e["node_name"].as_str())
            .collect();
        nodes.contains(&"cluster1/c1-n1") && nodes.contains(&"cluster2/c2-n1")
    });
    assert!(seen_both, "{flows:#?}");
    let times: Vec<&str> = flows.iter().filter_map(|e| e["time"].as_str()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in time order: {times:?}"
    );
    for event in &flows {
        let flow = &event["flow"];
        assert_eq!(flow["source"]["cluster_name"], "cluster1", "{flow:#}");
        assert_eq!(flow["source"]["pod_name"], "p1-1", "{flow:#}");
        assert_eq!(flow["destination"]["cluster_name"], "cluster2", "{flow:#}");
        assert_eq!(
            flow["destination"]["pod_name"], "p1-1",
            "the remote pod named: {flow:#}"
        );
        assert_eq!(flow["destination"]["namespace"], "default", "{flow:#}");
        assert!(
            flow["destination"]["labels"]
                .as_array()
                .is_some_and(|l| l.iter().any(|l| l == "k8s:name=p1-1")),
            "{flow:#}"
        );
    }
}
