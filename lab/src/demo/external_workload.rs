//! Step 6, a VM joins: vm1, a host outside every cluster running an agent with `mode: external`
//! joined to cluster1 with the labels `app=vm-db` ([`crate::external`]), calls the global service
//! rebel-base at cluster1's ClusterIP (answered by both clusters); x-wing reaches an HTTP server on
//! vm1; then a CiliumNetworkPolicy in vm1's policy directory lets only x-wing reach `app=vm-db`, and
//! cluster1's rebel-base, which reached it a moment before, is denied — counted by vm1's agent and
//! shown by `meshpath observe` on it. Every answer is measured: nothing is taken for granted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use meshpath_api::flow::{self, RenderOptions};

use super::scene::{service_ip, Scene, Vm, SERVICE_PORT};
use super::steps::{observed_denials, policy_denied, unix_ms};
use crate::mesh::wait;

/// vm1's HTTP server.
pub const VM_PORT: u16 = 8080;

/// What step 6 measured.
#[derive(Debug, Serialize)]
pub struct ExternalWorkload {
    /// vm1's calls to rebel-base were answered by cluster1 and cluster2, none failed.
    pub service_reached_both_clusters: bool,
    /// x-wing got vm1's page, and vm1's server saw x-wing's own address.
    pub pod_to_vm: bool,
    /// With the policy: x-wing still reaches vm1, cluster1's rebel-base no longer does, vm1's agent
    /// counted the denial and `meshpath observe` on it shows it.
    pub policy_enforced: bool,
    /// vm1's calls to rebel-base, per answering cluster, and the failures.
    pub requests_per_cluster: BTreeMap<String, u64>,
    pub failed_requests: u64,
    pub policy_denied_drops: u64,
    pub observed_denials: u64,
    pub observed_sample: Option<String>,
}

/// The policy of step 6: only x-wing of cluster1 may reach `app=vm-db`.
const ONLY_X_WING: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
    metadata: {name: only-x-wing-to-vm-db, namespace: default}\n\
    spec:\n  endpointSelector:\n    matchLabels: {app: vm-db}\n  \
    ingress:\n  - fromEndpoints:\n    - matchLabels: {name: x-wing, io.cilium.k8s.policy.cluster: cluster1}\n";

pub fn external_workload(
    scene: &Scene,
    requests: usize,
) -> anyhow::Result<Option<ExternalWorkload>> {
    let Some(vm) = scene.vm() else {
        return Ok(None);
    };
    let (requests_per_cluster, failed_requests) = vm_calls_service(scene, &vm, requests)?;
    let answered = |c: &str| requests_per_cluster.get(c).is_some_and(|n| *n > 0);
    let service_reached_both_clusters =
        failed_requests == 0 && answered("cluster1") && answered("cluster2");
    let root = scene.www_dir("vm1")?;
    std::fs::write(root.join("index.html"), "vm1\n")?;
    let url = format!("http://{}:{VM_PORT}/", vm.address);
    scene.serve(&vm.netns, &root, VM_PORT, &url, "vm1")?;
    let from_x_wing = |scene: &Scene| pod_gets(scene, &scene.pod_ns(1, false), &url);
    let x_wing_seen = || {
        let log = std::fs::read_to_string(scene.server_log("vm1")).unwrap_or_default();
        log.lines()
            .any(|l| l.starts_with(&format!("{} ", scene.x_wing_ip(1))))
    };
    let pod_to_vm = from_x_wing(scene) && x_wing_seen();

    let other = scene.pod_ns(1, true);
    let reached_before = pod_gets(scene, &other, &url);
    let denied_before = policy_denied(&vm.socket);
    let started_ms = unix_ms();
    crate::external::write_policies(&scene.prefix, 1, ONLY_X_WING)?;
    let enforced = wait(Duration::from_secs(20), || !pod_gets(scene, &other, &url));
    let x_wing_allowed = from_x_wing(scene);
    let denials = observed_denials(&vm.socket, started_ms)?;
    let drops = policy_denied(&vm.socket).saturating_sub(denied_before);
    crate::external::write_policies(&scene.prefix, 1, "")?;
    Ok(Some(ExternalWorkload {
        service_reached_both_clusters,
        pod_to_vm,
        policy_enforced: reached_before
            && enforced
            && x_wing_allowed
            && drops > 0
            && !denials.is_empty(),
        requests_per_cluster,
        failed_requests,
        policy_denied_drops: drops,
        observed_denials: denials.len() as u64,
        observed_sample: denials
            .first()
            .map(|d| flow::render(d, RenderOptions::default())),
    }))
}

/// vm1 calls rebel-base at cluster1's ClusterIP `requests` times, once the route to it is in place
/// (its agent routes the joined cluster's service frontends into the host port).
fn vm_calls_service(
    scene: &Scene,
    vm: &Vm,
    requests: usize,
) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    let url = format!("http://{}:{SERVICE_PORT}/", service_ip(1));
    wait(Duration::from_secs(20), || {
        get(scene, &vm.netns, &url).is_some()
    });
    let mut per_cluster = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..requests {
        match get(scene, &vm.netns, &url) {
            Some(cluster) => *per_cluster.entry(cluster).or_default() += 1,
            None => failed += 1,
        }
    }
    Ok((per_cluster, failed))
}

fn pod_gets(scene: &Scene, ns: &str, url: &str) -> bool {
    get(scene, ns, url).as_deref() == Some("vm1")
}

/// One HTTP GET from namespace `ns`: the body, if it answered.
fn get(scene: &Scene, ns: &str, url: &str) -> Option<String> {
    let out = scene.exec(ns, &["curl", "-s", "-m", "2", url]).ok()?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !body.is_empty()).then_some(body)
}
