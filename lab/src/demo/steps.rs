//! The demo's steps: each drives the pods with curl and reads the agents' status (and flows).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{self, FlowResponse, Outcome, RenderOptions};
use meshpath_api::node::NodeRow;
use meshpath_api::service::BackendState;
use meshpath_api::{Client, DropReason};

use super::scene::{rebel_ip, service_ip, Scene, BACKEND_PORT, CLUSTERS, SERVICE_PORT};
use crate::mesh::wait;

/// Answers per cluster and failures of a run of requests.
#[derive(Debug, Default, Serialize)]
pub struct Calls {
    pub per_cluster: BTreeMap<String, u64>,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct PolicyReport {
    pub cross_cluster_allowed: bool,
    pub local_denied: bool,
    pub policy_denied_drops: u64,
    /// Denials `meshpath observe` showed on cluster1's agent during the step.
    pub observed_denials: u64,
    /// One of them, as `meshpath observe` prints it.
    pub observed_sample: Option<String>,
}

/// One HTTP request from cluster `c`'s x-wing; the answering cluster's name, or `None`.
pub fn request(scene: &Scene, c: u8, url: &str) -> Option<String> {
    let out = scene
        .exec(&scene.pod_ns(c, false), &["curl", "-s", "-m", "2", url])
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !body.is_empty()).then_some(body)
}

pub fn call_service(scene: &Scene, c: u8, n: usize) -> anyhow::Result<Calls> {
    let url = format!("http://{}:{SERVICE_PORT}/", service_ip(c));
    let mut calls = Calls::default();
    for _ in 0..n {
        match request(scene, c, &url) {
            Some(cluster) => *calls.per_cluster.entry(cluster).or_default() += 1,
            None => calls.failed += 1,
        }
    }
    Ok(calls)
}

/// The agents' view of rebel-base: which clusters' backends are active.
pub(super) fn active_backend_clusters(scene: &Scene, c: u8) -> Vec<u8> {
    let Ok(status) = Client::new(scene.socket(c)).status() else {
        return Vec::new();
    };
    let frontend = format!("{}:{SERVICE_PORT}/TCP", service_ip(c));
    let mut clusters: Vec<u8> = status
        .services
        .iter()
        .filter(|s| s.frontend.to_string() == frontend)
        .flat_map(|s| s.backends.iter())
        .filter(|b| b.state == BackendState::Active)
        .filter_map(|b| b.cluster)
        .collect();
    clusters.sort_unstable();
    clusters.dedup();
    clusters
}

/// Waits until both agents balance rebel-base over both clusters.
pub fn wait_for_mesh(scene: &Scene) -> anyhow::Result<()> {
    let meshed = wait(Duration::from_secs(60), || {
        CLUSTERS
            .iter()
            .all(|c| active_backend_clusters(scene, *c) == CLUSTERS)
    });
    if !meshed {
        bail!(
            "the clusters did not mesh within a minute\n--- agent cluster1 ---\n{}\n--- agent cluster2 ---\n{}",
            scene.agent_log(1),
            scene.agent_log(2)
        );
    }
    Ok(())
}

pub fn policy(scene: &Scene) -> anyhow::Result<PolicyReport> {
    let denied_before = policy_denied(&scene.socket(1));
    let started_ms = unix_ms();
    scene.write_state(1, true, true)?;
    let local = format!("http://{}:{BACKEND_PORT}/", rebel_ip(1));
    let remote = format!("http://{}:{BACKEND_PORT}/", rebel_ip(2));
    // The policy is in force once the local call stops working.
    let enforced = wait(Duration::from_secs(20), || {
        request(scene, 1, &local).is_none()
    });
    let cross_cluster_allowed = request(scene, 1, &remote).as_deref() == Some("cluster2");
    let local_denied = enforced && request(scene, 1, &local).is_none();
    scene.write_state(1, true, false)?;
    let denials = observed_denials(&scene.socket(1), started_ms)?;
    Ok(PolicyReport {
        cross_cluster_allowed,
        local_denied,
        policy_denied_drops: policy_denied(&scene.socket(1)).saturating_sub(denied_before),
        observed_denials: denials.len() as u64,
        observed_sample: denials
            .first()
            .map(|d| flow::render(d, RenderOptions::default())),
    })
}

/// The `policy_denied` drops the agent at `socket` kept since `since_ms`: `meshpath observe
/// --verdict dropped` (the flows' wall-clock stamps may trail the step's start by a poll).
pub(super) fn observed_denials(
    socket: &std::path::Path,
    since_ms: u64,
) -> anyhow::Result<Vec<FlowResponse>> {
    let mut denials = Vec::new();
    Client::new(socket).observe(&ObserveRequest::default(), |event| {
        let denied = event
            .flow()
            .is_some_and(|f| f.outcome() == Some(Outcome::Dropped(DropReason::PolicyDenied)));
        if denied && event.time.unix_ms() + 1000 >= since_ms {
            denials.push(event);
        }
        true
    })?;
    Ok(denials)
}

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The frames the agent at `socket` dropped as `policy_denied` so far.
pub(super) fn policy_denied(socket: &std::path::Path) -> u64 {
    Client::new(socket)
        .status()
        .ok()
        .and_then(|s| s.dataplane.dropped.get(&DropReason::PolicyDenied).copied())
        .unwrap_or(0)
}

/// Every node of both clusters, as cluster1's agent lists them (`meshpath node list`).
pub fn nodes(scene: &Scene) -> anyhow::Result<Vec<NodeRow>> {
    Ok(Client::new(scene.socket(1)).status()?.nodes)
}
