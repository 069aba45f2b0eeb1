//! The demo of Cilium's ClusterMesh docs, end to end on the lab (root): two clusters, an etcd and an
//! agent each, meshed. The report must show the global service answered from both clusters, failover
//! without a failed request, the cross-cluster policy's verdicts, and the node's own path: the world
//! reached behind the node's address, node and pod reaching each other, path MTU discovery across
//! the tunnel. Run as users run it, `meshpath
//! demo`, which execs `meshpath-demo` beside `meshpath` (`cargo test --workspace` builds every
//! package's binaries before it runs a test; `cargo test -p meshpath` alone does not build it).

use std::process::Command;

#[test]
fn the_clustermesh_demo_works_end_to_end() {
    if !meshpath_testkit::needs_root("the_clustermesh_demo_works_end_to_end") {
        return;
    }
    let prefix = format!("d{}", std::process::id() % 100_000);
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args([
            "demo",
            "-o",
            "json",
            "--requests",
            "20",
            "--prefix",
            &prefix,
        ])
        .output()
        .expect("meshpath runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");

    let per_cluster = &report["requests_per_cluster"];
    let answered = |c: &str| per_cluster[c].as_u64().unwrap_or(0);
    assert!(
        answered("cluster1") > 0 && answered("cluster2") > 0,
        "both clusters answer: {report:#}"
    );
    assert_eq!(
        answered("cluster1") + answered("cluster2"),
        20,
        "{report:#}"
    );
    assert_eq!(report["failed_requests"], 0, "{report:#}");

    assert_eq!(report["failover_failed_requests"], 0, "{report:#}");
    let failover = report["failover"].as_array().expect("failover steps");
    assert_eq!(
        failover[0]["per_cluster"]["cluster1"], 20,
        "cluster2 down: all from cluster1"
    );
    assert_eq!(
        failover[2]["per_cluster"]["cluster2"], 20,
        "cluster1 down: all from cluster2"
    );

    assert_eq!(
        report["policy"]["cross_cluster_allowed"], true,
        "{report:#}"
    );
    assert_eq!(report["policy"]["local_denied"], true, "{report:#}");
    assert!(
        report["policy"]["policy_denied_drops"].as_u64() > Some(0),
        "{report:#}"
    );
    assert!(
        report["policy"]["observed_denials"].as_u64() > Some(0),
        "meshpath observe shows the denials: {report:#}"
    );
    let sample = report["policy"]["observed_sample"]
        .as_str()
        .unwrap_or_default();
    assert!(sample.contains("Policy denied DROPPED"), "{sample}");

    let nodes: Vec<String> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            format!(
                "{}/{}",
                n["cluster"].as_str().unwrap_or(""),
                n["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        nodes,
        [
            "cluster1/c1-n1",
            "cluster1/c1-n2",
            "cluster2/c2-n1",
            "cluster2/c2-n2"
        ]
    );

    let beyond = &report["beyond_mesh"];
    for check in [
        "outside_reached",
        "outside_saw_node_address",
        "node_to_pod",
        "pod_to_node",
        "pmtu_large_transfer",
    ] {
        assert_eq!(beyond[check], true, "beyond the mesh: {check}: {report:#}");
    }

    let leftovers = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftovers = String::from_utf8_lossy(&leftovers.stdout);
    assert!(
        !leftovers.contains(&format!("{prefix}-")),
        "the demo cleans up: {leftovers}"
    );
}
