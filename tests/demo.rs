//! The demo of Cilium's ClusterMesh docs, end to end on the lab (root): two clusters, an etcd and an
//! agent each, meshed. The report must show the global service answered from both clusters, failover
//! without a failed request, the cross-cluster policy's verdicts, and the node's own path: the world
//! reached behind the node's address, node and pod reaching each other, path MTU discovery across
//! the tunnel. It runs in every routing mode — VXLAN and Geneve tunnels, native routing (the fabric
//! routing pod CIDRs), hybrid — and the capture on the fabric must show what each mode puts on the
//! wire, every tunnelled frame's VNI the identity of the pod that sent it; then once more with strict
//! WireGuard (`--encrypt`), where the capture must find nothing but WireGuard between the nodes and
//! none of the pods' HTTP in clear. Every agent reads its cluster from the lab's stand-in Kubernetes
//! API server (`platform.source`), which serves what the demo's steps change, and every pod is made by
//! the CNI plugin as a container runtime runs it (`platform.pods_via_cni`). Every etcd connection
//! of every agent is mutual TLS (`platform.mtls`); the first run's etcds have 3 members, and killing
//! cluster2's leader during x-wing's requests fails none and withdraws nothing
//! (`platform.survives_etcd_leader_loss`; `null` in the other runs, whose etcds have one member). Run
//! as users run it, `meshpath demo`, which execs `meshpath-demo` beside `meshpath` (`cargo test
//! --workspace` builds every package's binaries before it runs a test; `cargo test -p meshpath` alone
//! does not build it).

use std::process::Command;

use serde_json::{json, Value};

/// Requests per step: enough for both clusters to answer, few enough for four runs.
const REQUESTS: u64 = 12;

/// One after the other: four labs at once would share two cores with every other test.
#[test]
fn the_clustermesh_demo_works_end_to_end_in_every_routing_mode() {
    if !meshpath_testkit::needs_root("the_clustermesh_demo_works_end_to_end_in_every_routing_mode")
    {
        return;
    }
    // (routing, tunnel, intra-cluster encapsulated, cross-cluster encapsulated)
    let modes = [
        ("tunnel", "vxlan", true, true),
        ("tunnel", "geneve", true, true),
        ("native", "vxlan", false, false),
        ("hybrid", "vxlan", false, true),
    ];
    for (i, (routing, tunnel, intra, cross)) in modes.into_iter().enumerate() {
        let report = demo(i, routing, tunnel, &[]);
        let mode = format!("{routing}/{tunnel}");
        assert_demo_checks(&report, &mode);
        let platform = &report["platform"];
        assert_eq!(platform["mtls"], true, "{mode}: {platform:#}");
        let leader_loss = if i == 0 { json!(true) } else { Value::Null };
        assert_eq!(
            platform["survives_etcd_leader_loss"], leader_loss,
            "{mode}: {platform:#}"
        );
        let wire = &report["routing"];
        assert_eq!(
            (&wire["mode"], &wire["tunnel"]),
            (&json!(routing), &json!(tunnel)),
            "{mode}"
        );
        assert_eq!(
            (
                &wire["intra_cluster_encapsulated"],
                &wire["cross_cluster_encapsulated"]
            ),
            (&json!(intra), &json!(cross)),
            "{mode}: what the fabric carried: {wire:#}"
        );
        let other = if tunnel == "vxlan" { "geneve" } else { "vxlan" };
        let captured = &wire["captured"];
        for class in ["intra_cluster", "cross_cluster"] {
            assert_eq!(captured[class][other], 0, "{mode}: no {other}: {wire:#}");
        }
        assert!(
            captured["payload_in_clear"].as_u64() > Some(0),
            "{mode}: the capture sees the pods' HTTP in clear: {wire:#}"
        );
        assert!(report.get("encryption").is_none(), "{mode}: no --encrypt");
        assert_reach(&report, routing, tunnel);
        assert_identity_in_vni(&wire["identity_in_vni"], intra, cross, &mode);
        assert_external_workload(&report, routing == "native", &mode);
    }

    // Once with strict WireGuard: the same demo, and nothing of it in clear on the fabric.
    let report = demo(modes.len(), "tunnel", "vxlan", &["--encrypt"]);
    assert_demo_checks(&report, "tunnel/vxlan, encrypted");
    assert_eq!(
        report["encryption"],
        json!({"mode": "strict", "payload_seen_in_clear": false, "only_wireguard_between_nodes": true}),
        "{report:#}"
    );
    let captured = &report["routing"]["captured"];
    for class in ["intra_cluster", "cross_cluster"] {
        assert!(
            captured[class]["wireguard"].as_u64() > Some(0),
            "{class} over WireGuard: {captured:#}"
        );
    }
    assert_external_workload(&report, false, "tunnel/vxlan, encrypted");
}

/// Step 6, a VM joins: vm1 reached the global service in both clusters, x-wing reached vm1, and the
/// policy selecting vm1 by its labels let x-wing through and denied cluster1's rebel-base. Not run
/// (`null`) in native routing, where the lab has no external workload; vm1 is in cluster1's node list.
fn assert_external_workload(report: &Value, native: bool, mode: &str) {
    let vm = &report["external_workload"];
    if native {
        assert!(vm.is_null(), "{mode}: {vm:#}");
        return;
    }
    for check in [
        "service_reached_both_clusters",
        "pod_to_vm",
        "policy_enforced",
    ] {
        assert_eq!(vm[check], true, "{mode}: {check}: {vm:#}");
    }
    let nodes = report["nodes"].as_array().expect("nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n["cluster"] == "cluster1" && n["name"] == "vm1"),
        "{mode}: vm1 among cluster1's nodes: {nodes:#?}"
    );
}

/// Every tunnelled frame between pods carried the identity of the pod that sent it, in both
/// directions (x-wing's requests, rebel-base's answers) wherever the mode tunnels.
fn assert_identity_in_vni(vni: &Value, intra: bool, cross: bool, mode: &str) {
    assert_eq!(vni["mismatched"], 0, "{mode}: {vni:#}");
    let tunnelled = |from: u8, to: u8| {
        vni["checked"][format!("cluster{from}->cluster{to}")]
            .as_u64()
            .unwrap_or(0)
    };
    for (from, to, expected) in [(1, 1, intra), (1, 2, cross), (2, 1, cross)] {
        assert_eq!(
            tunnelled(from, to) > 0,
            expected,
            "{mode}: tunnelled frames cluster{from}->cluster{to}: {vni:#}"
        );
    }
}

fn demo(run: usize, routing: &str, tunnel: &str, extra: &[&str]) -> Value {
    let prefix = format!("d{}{run}", std::process::id() % 10_000);
    let requests = REQUESTS.to_string();
    let members = if run == 0 { "3" } else { "1" };
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["demo", "-o", "json", "--requests", &requests])
        .args(["--etcd-members", members])
        .args([
            "--routing",
            routing,
            "--tunnel",
            tunnel,
            "--prefix",
            &prefix,
        ])
        .args(extra)
        .output()
        .expect("meshpath runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo {routing}/{tunnel} failed:\n{stderr}"
    );
    let leftovers = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftovers = String::from_utf8_lossy(&leftovers.stdout);
    assert!(
        !leftovers.contains(&format!("{prefix}-")),
        "the demo cleans up: {leftovers}"
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// How cluster1's agent lists the other nodes in each mode: its neighbour on the segment, and the
/// nodes of cluster2 behind the fabric's router.
fn assert_reach(report: &Value, routing: &str, tunnel: &str) {
    let reach = |name: &str| {
        let nodes = report["nodes"].as_array().expect("nodes");
        let node = nodes.iter().find(|n| n["name"] == name).expect(name);
        node["reach"].clone()
    };
    assert_eq!(reach("c1-n1"), json!({"mode": "local"}));
    let neighbour = reach("c1-n2");
    let remote = reach("c2-n2");
    let segment = neighbour["next_hop"]["segment"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        segment.len(),
        17,
        "{routing}: a MAC on the segment: {neighbour}"
    );
    let (near, far) = match routing {
        "tunnel" => ("tunnel", "tunnel"),
        "native" => ("direct", "direct"),
        _ => ("direct", "tunnel"),
    };
    assert_eq!(neighbour["mode"], near, "{neighbour}");
    assert_eq!(remote["mode"], far, "{remote}");
    assert_eq!(remote["next_hop"], "router", "{remote}");
    if far == "tunnel" {
        assert_eq!(remote["protocol"], tunnel, "{remote}");
    }
}

/// All four rows of the failover, each with the requests issued while it lasted (20 a second): none
/// failed, the scaled-down cluster's row answered by the other, both answering once it is back.
fn assert_failover(report: &Value, mode: &str) {
    assert_eq!(report["failover_failed_requests"], 0, "{mode}: {report:#}");
    let rows = report["failover"].as_array().expect("failover rows");
    let situations: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["situation"].as_str())
        .collect();
    assert_eq!(
        situations,
        [
            "rebel-base scaled to zero in cluster2",
            "rebel-base back in cluster2",
            "rebel-base scaled to zero in cluster1",
            "rebel-base back in cluster1",
        ],
        "{mode}"
    );
    for (row, answering) in rows.iter().zip([&[1][..], &[1, 2], &[2], &[1, 2]]) {
        let count = |c: u8| {
            row["per_cluster"][format!("cluster{c}")]
                .as_u64()
                .unwrap_or(0)
        };
        let issued = row["issued"].as_u64().unwrap_or(0);
        // A row lasts at least its grace period and tail: 3 s at 20 requests a second.
        assert!(issued >= 30, "{mode}: {row:#}");
        assert_eq!(row["failed"], 0, "{mode}: {row:#}");
        assert_eq!(count(1) + count(2), issued, "{mode}: {row:#}");
        for c in answering {
            assert!(count(*c) > 0, "{mode}: cluster{c} answers: {row:#}");
        }
    }
}

fn assert_demo_checks(report: &Value, mode: &str) {
    assert_eq!(
        report["platform"]["source"], "kubernetes",
        "{mode}: every agent read the stand-in API server: {report:#}"
    );
    assert_eq!(
        report["platform"]["pods_via_cni"], true,
        "{mode}: every pod made by the CNI plugin: {report:#}"
    );
    let per_cluster = &report["requests_per_cluster"];
    let answered = |c: &str| per_cluster[c].as_u64().unwrap_or(0);
    assert!(
        answered("cluster1") > 0 && answered("cluster2") > 0,
        "both clusters answer: {report:#}"
    );
    assert_eq!(
        answered("cluster1") + answered("cluster2"),
        REQUESTS,
        "{mode}: {report:#}"
    );
    assert_eq!(report["failed_requests"], 0, "{report:#}");

    assert_failover(report, mode);

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

    // vm1, the external workload, is among them where the lab has one (assert_external_workload).
    let nodes: Vec<String> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["name"] != "vm1")
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
}
