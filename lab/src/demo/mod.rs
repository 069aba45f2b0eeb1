//! `meshpath demo`: the scenario of Cilium's ClusterMesh documentation on the lab, with a report a
//! person reads (or one JSON object with `-o json`).
//!
//! 1. x-wing in cluster1 calls the global service rebel-base, whose pods in both clusters answer
//!    with their cluster's name: the count per cluster, and what the routing mode put on the fabric
//!    meanwhile ([`routing`]);
//! 2. rebel-base scaled to zero in cluster2 the way Kubernetes does it while x-wing keeps opening
//!    new connections: every request issued meanwhile is counted, none may fail; back; then the same
//!    the other way round ([`failover`]);
//! 3. the CiliumNetworkPolicy that lets x-wing in cluster1 reach rebel-base in cluster2 only;
//! 4. the nodes of both clusters;
//! 5. beyond the mesh: the world, the node and a large transfer across clusters ([`beyond`]);
//! 6. a VM joins: an external workload joined to cluster1 calls the global service, x-wing reaches
//!    it, and a policy selects it by its labels ([`external_workload`]; not in native routing);
//! 7. the platform it ran on, as the agents report it ([`platform`]): their local state from the
//!    Kubernetes API (each cluster's stand-in API server, which serves what the steps above write),
//!    every pod made by the CNI plugin.

mod beyond;
pub mod external_workload;
mod failover;
pub mod platform;
pub mod routing;
pub mod scene;
pub mod steps;
mod stream;
mod vni;

use std::collections::BTreeMap;
use std::time::Instant;

use meshpath_api::local_source::LocalSourceKind;
use serde::Serialize;

use crate::mesh::{Encryption, MeshOptions};
use scene::Scene;

/// What the demo found, step by step.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub requests_per_cluster: BTreeMap<String, u64>,
    pub failed_requests: u64,
    pub routing: routing::RoutingReport,
    /// With `--encrypt`: what the capture of step 1 says of the encryption between nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<routing::EncryptionReport>,
    pub failover_failed_requests: u64,
    pub failover: Vec<failover::Failover>,
    pub policy: steps::PolicyReport,
    pub nodes: Vec<meshpath_api::node::NodeRow>,
    pub beyond_mesh: beyond::BeyondMesh,
    /// Step 6; `null` in native routing, where the lab has no external workload.
    pub external_workload: Option<external_workload::ExternalWorkload>,
    pub platform: platform::Platform,
    pub seconds: f64,
}

pub fn run(
    prefix: &str,
    requests: usize,
    options: MeshOptions,
    etcd_members: u8,
    agent_stop: bool,
) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    eprintln!(
        "building the lab: 2 clusters of 2 nodes, an etcd of {etcd_members} member(s) per cluster and an agent per node, meshed ({:?} routing, {:?}) …",
        options.routing, options.tunnel
    );
    let scene = Scene::build(prefix, options, etcd_members)?;
    steps::wait_for_mesh(&scene)?;
    eprintln!("step 1: x-wing calls the global service rebel-base {requests} times …");
    let capture = routing::FabricCapture::start(&scene, options)?;
    let calls = steps::call_service(&scene, 1, requests)?;
    let identities = vni::Identities::of_every_pod(&scene.agent_sockets())?;
    let routing = capture.stop(options, &identities)?;
    let encryption =
        (options.encryption != Encryption::Off).then(|| routing.encryption(options.encryption));
    eprintln!(
        "step 2: failover, x-wing opening {} connections a second …",
        failover::RATE
    );
    let failover = failover::failover(&scene)?;
    eprintln!("step 3: the cross-cluster policy …");
    let policy = steps::policy(&scene)?;
    let nodes = steps::nodes(&scene)?;
    eprintln!("step 5: beyond the mesh …");
    let beyond_mesh = beyond::beyond_mesh(&scene)?;
    if scene.vm().is_some() {
        eprintln!("step 6: a VM joins cluster1 …");
    }
    let external_workload = external_workload::external_workload(&scene, requests)?;
    let mut platform = platform::platform(&scene)?;
    if scene.etcd_members() >= 3 {
        eprintln!("step 7: cluster2's etcd leader killed during x-wing's requests …");
    }
    platform.survives_etcd_leader_loss = platform::survives_etcd_leader_loss(&scene, requests)?;
    if agent_stop {
        eprintln!(
            "step 7: cluster2's agent beside rebel-base stopped; x-wing calls rebel-base for {} s …",
            platform::AGENT_STOP_WATCH.as_secs()
        );
        platform.survives_agent_stop = Some(platform::survives_agent_stop(&scene)?);
    }
    Ok(DemoReport {
        requests_per_cluster: calls.per_cluster,
        failed_requests: calls.failed,
        routing,
        encryption,
        failover_failed_requests: failover.iter().map(|f| f.failed).sum(),
        failover,
        policy,
        nodes,
        beyond_mesh,
        external_workload,
        platform,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl DemoReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::from("\n1. x-wing (cluster1) → global service rebel-base\n");
        for (cluster, n) in &self.requests_per_cluster {
            let _ = writeln!(out, "   answered by {cluster}: {n}");
        }
        let _ = writeln!(out, "   failed: {}", self.failed_requests);
        let r = &self.routing;
        let _ = writeln!(
            out,
            "   on the fabric ({} routing): inside a cluster {}, across clusters {}",
            name(&r.mode),
            wire(&r.captured.intra_cluster),
            wire(&r.captured.cross_cluster),
        );
        if let Some(e) = &self.encryption {
            let yes = |b: bool| if b { "yes" } else { "no" };
            let _ = writeln!(
                out,
                "   encryption ({} WireGuard): payload seen in clear: {}, only WireGuard between nodes: {}",
                name(&e.mode),
                yes(e.payload_seen_in_clear),
                yes(e.only_wireguard_between_nodes),
            );
        }
        let vni = &r.identity_in_vni;
        let checked: u64 = vni.checked.values().sum();
        if checked > 0 {
            let _ = writeln!(
                out,
                "   sender's identity in the VNI: {} of {checked} tunnelled frames",
                checked - vni.mismatched,
            );
        }
        let _ = writeln!(
            out,
            "\n2. failover (x-wing opening {} new connections a second throughout)",
            failover::RATE
        );
        for f in &self.failover {
            let answers: Vec<String> = f
                .per_cluster
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            let why: Vec<String> = f
                .failures
                .iter()
                .map(|(w, n)| format!("{w}: {n}"))
                .collect();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join(", "))
            };
            let _ = writeln!(
                out,
                "   {:<44} {:>3} requests  {}  failed: {}{why}",
                f.situation,
                f.issued,
                answers.join(", "),
                f.failed
            );
        }
        let p = &self.policy;
        out += "\n3. CiliumNetworkPolicy allow-cross-cluster (x-wing may reach rebel-base in cluster2 only)\n";
        let verdict = |ok: bool| if ok { "allowed" } else { "denied" };
        let _ = writeln!(
            out,
            "   x-wing → rebel-base in cluster2: {}",
            verdict(p.cross_cluster_allowed)
        );
        let _ = writeln!(
            out,
            "   x-wing → rebel-base in cluster1: {}",
            verdict(!p.local_denied)
        );
        let _ = writeln!(
            out,
            "   cluster1's agent counted {} frames dropped as policy_denied",
            p.policy_denied_drops
        );
        let _ = writeln!(
            out,
            "   meshpath observe on cluster1's agent showed {} denials, e.g.:",
            p.observed_denials
        );
        if let Some(sample) = &p.observed_sample {
            let _ = writeln!(out, "     {sample}");
        }
        out += "\n4. meshpath node list (cluster1's agent)\n";
        for line in meshpath_api::node::render(&self.nodes).lines() {
            let _ = writeln!(out, "   {line}");
        }
        let b = &self.beyond_mesh;
        let yes = |ok: bool| if ok { "yes" } else { "NO" };
        out += "\n5. beyond the mesh\n";
        let _ = writeln!(
            out,
            "   x-wing → the outside host (203.0.113.10): {}",
            yes(b.outside_reached)
        );
        let _ = writeln!(
            out,
            "   the outside host saw the node's address, not the pod's: {}",
            yes(b.outside_saw_node_address)
        );
        let _ = writeln!(
            out,
            "   the node → x-wing over TCP (a kubelet probe): {}",
            yes(b.node_to_pod)
        );
        let _ = writeln!(out, "   x-wing → its node over TCP: {}", yes(b.pod_to_node));
        let _ = writeln!(
            out,
            "   x-wing (MTU 1500) fetched 4 MB from rebel-base (MTU 1500) in cluster2: {}",
            yes(b.pmtu_large_transfer)
        );
        out += &render_external_workload(self.external_workload.as_ref());
        out += "\n7. platform\n";
        let _ = writeln!(
            out,
            "   every agent's local state from: {}",
            match self.platform.source {
                LocalSourceKind::Kubernetes =>
                    "the Kubernetes API server (the lab's stand-in, over HTTPS)",
                LocalSourceKind::YamlDir => "a YAML directory",
            }
        );
        let _ = writeln!(
            out,
            "   every pod made by the CNI plugin (meshpath-cni, as a container runtime runs it): {}",
            yes(self.platform.pods_via_cni)
        );
        let _ = writeln!(
            out,
            "   every etcd connection of every agent over mutual TLS: {}",
            yes(self.platform.mtls)
        );
        let _ = writeln!(
            out,
            "   cluster2's agent beside rebel-base stopped, no request to it failed for a minute: {}",
            match self.platform.survives_agent_stop {
                Some(ok) => yes(ok),
                None => "not run (--agent-stop runs it)",
            }
        );
        let _ = writeln!(
            out,
            "   cluster2's etcd leader killed during x-wing's requests, none failed, nothing withdrawn: {}",
            match self.platform.survives_etcd_leader_loss {
                Some(ok) => yes(ok),
                None => "not run (one-member etcd; --etcd-members 3 runs it)",
            }
        );
        let _ = writeln!(
            out,
            "\n(done in {:.1} s; the lab is torn down)",
            self.seconds
        );
        out
    }
}

/// Step 6 as the report prints it.
fn render_external_workload(vm: Option<&external_workload::ExternalWorkload>) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "\n6. a VM joins (vm1, outside every cluster, joined to cluster1 as app=vm-db)\n",
    );
    let Some(vm) = vm else {
        out += "   not run (native routing: the fabric would carry plain frames to its kernel, around its policy)\n";
        return out;
    };
    let yes = |ok: bool| if ok { "yes" } else { "NO" };
    let answers: Vec<String> = vm
        .requests_per_cluster
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    let _ = writeln!(
        out,
        "   vm1 → global service rebel-base: {}  failed: {}  (both clusters: {})",
        answers.join(", "),
        vm.failed_requests,
        yes(vm.service_reached_both_clusters)
    );
    let _ = writeln!(
        out,
        "   x-wing → vm1's HTTP server (vm1 saw x-wing's address): {}",
        yes(vm.pod_to_vm)
    );
    let _ = writeln!(
        out,
        "   CiliumNetworkPolicy only-x-wing-to-vm-db: x-wing allowed, rebel-base in cluster1 denied: {}",
        yes(vm.policy_enforced)
    );
    let _ = writeln!(
        out,
        "   vm1's agent counted {} frames dropped as policy_denied; meshpath observe on it showed {} denials, e.g.:",
        vm.policy_denied_drops, vm.observed_denials
    );
    if let Some(sample) = &vm.observed_sample {
        let _ = writeln!(out, "     {sample}");
    }
    out
}

/// A serde name (`hybrid`, `geneve`) as the JSON has it.
fn name(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What the capture saw of one kind of traffic: `plain (12 frames)`, `geneve (12 frames)`,
/// `wireguard (12 frames)`, or each count when it saw several kinds or none.
fn wire(frames: &routing::Frames) -> String {
    let kinds = [
        ("plain", frames.plain),
        ("vxlan", frames.vxlan),
        ("geneve", frames.geneve),
        ("wireguard", frames.wireguard),
    ];
    match kinds.iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>()[..] {
        [(kind, n)] => format!("{kind} ({n} frames)"),
        [] => "nothing captured".to_owned(),
        _ => format!(
            "mixed ({} plain, {} vxlan, {} geneve, {} wireguard)",
            frames.plain, frames.vxlan, frames.geneve, frames.wireguard
        ),
    }
}
