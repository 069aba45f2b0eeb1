//! The demo with `--agent-stop` (root): cluster2's agent on the node without rebel-base stopped,
//! x-wing in cluster1 reaches rebel-base in cluster2 without a failed request for a minute — past
//! the stopped agent's lease, whose expiry takes away only that agent's own keys (its node and its
//! pods), never the other node's endpoints nor the cluster-wide records, whose lead moves on. Its own
//! test: the minute stays out of the routing-mode runs of the demo test.

use std::process::Command;

use serde_json::Value;

#[test]
fn rebel_base_stays_reachable_after_the_agent_beside_it_stops() {
    if !meshpath_testkit::needs_root("rebel_base_stays_reachable_after_the_agent_beside_it_stops") {
        return;
    }
    let prefix = format!("a{}", std::process::id() % 10_000);
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["demo", "-o", "json", "--requests", "6", "--agent-stop"])
        .args(["--prefix", &prefix])
        .output()
        .expect("meshpath runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo --agent-stop failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let platform = &report["platform"];
    assert_eq!(
        platform["survives_agent_stop"], true,
        "{platform:#}\n{stderr}"
    );
    assert_eq!(platform["mtls"], true, "{platform:#}");
}
