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
pub struct Failover {
    pub situation: String,
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
fn request(scene: &Scene, c: u8, url: &str) -> Option<String> {
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
fn active_backend_clusters(scene: &Scene, c: u8) -> Vec<u8> {
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

/// Scales rebel-base in `down` to zero (out of its service first, then the pod stops, as Kubernetes
/// does), calls from cluster1, then brings it back.
fn scale_to_zero_and_back(scene: &Scene, down: u8, n: usize) -> anyhow::Result<Vec<Failover>> {
    let up = CLUSTERS.iter().copied().find(|c| *c != down).unwrap_or(1);
    scene.write_state(down, false, false)?;
    if !wait(Duration::from_secs(20), || {
        active_backend_clusters(scene, 1) == [up]
    }) {
        bail!("cluster1 still balances to cluster{down} after it scaled to zero");
    }
    scene.stop_server(down)?;
    let during = call_service(scene, 1, n)?;
    scene.start_server(down)?;
    scene.write_state(down, true, false)?;
    if !wait(Duration::from_secs(20), || {
        active_backend_clusters(scene, 1) == CLUSTERS
    }) {
        bail!("cluster1 does not balance to cluster{down} again");
    }
    let after = call_service(scene, 1, n)?;
    Ok(vec![
        Failover {
            situation: format!("rebel-base scaled to zero in cluster{down}"),
            per_cluster: during.per_cluster,
            failed: during.failed,
        },
        Failover {
            situation: format!("rebel-base back in cluster{down}"),
            per_cluster: after.per_cluster,
            failed: after.failed,
        },
    ])
}

pub fn failover(scene: &Scene, n: usize) -> anyhow::Result<Vec<Failover>> {
    let mut rows = scale_to_zero_and_back(scene, 2, n)?;
    rows.extend(scale_to_zero_and_back(scene, 1, n)?);
    Ok(rows)
}

pub fn policy(scene: &Scene) -> anyhow::Result<PolicyReport> {
    let denied_before = policy_denied(scene);
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
    let denials = observed_denials(scene, started_ms)?;
    Ok(PolicyReport {
        cross_cluster_allowed,
        local_denied,
        policy_denied_drops: policy_denied(scene).saturating_sub(denied_before),
        observed_denials: denials.len() as u64,
        observed_sample: denials
            .first()
            .map(|d| flow::render(d, RenderOptions::default())),
    })
}

/// The `policy_denied` drops cluster1's agent kept since `since_ms`: `meshpath observe
/// --verdict dropped` (the flows' wall-clock stamps may trail the step's start by a poll).
fn observed_denials(scene: &Scene, since_ms: u64) -> anyhow::Result<Vec<FlowResponse>> {
    let mut denials = Vec::new();
    Client::new(scene.socket(1)).observe(&ObserveRequest::default(), |event| {
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn policy_denied(scene: &Scene) -> u64 {
    Client::new(scene.socket(1))
        .status()
        .ok()
        .and_then(|s| s.dataplane.dropped.get(&DropReason::PolicyDenied).copied())
        .unwrap_or(0)
}

/// Every node of both clusters, as cluster1's agent lists them (`meshpath node list`).
pub fn nodes(scene: &Scene) -> anyhow::Result<Vec<NodeRow>> {
    Ok(Client::new(scene.socket(1)).status()?.nodes)
}
