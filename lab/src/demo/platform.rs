//! What the demo ran on, as the agents themselves report it: `platform` in the report. `source`: where
//! every agent's local state came from (`kubernetes`: the cluster's API server — the lab's stand-in,
//! through the agents' own kube client). `pods_via_cni`: every pod of the demo is an endpoint its
//! node's agent says the CNI plugin made (`origin: cni`), none from an agent's configuration. `mtls`:
//! every etcd connection of every agent (its own cluster's and each remote's) used mutual TLS, as the
//! agents report their connections.
//! `survives_etcd_leader_loss` (with a 3-member etcd): cluster2's etcd leader killed during x-wing's
//! requests to the global service, none failed and cluster1 withdrew nothing of cluster2 nor listed it
//! again. `survives_agent_stop` (with `--agent-stop`): the agent of cluster2's node without
//! rebel-base stopped, x-wing reaches rebel-base in cluster2 for the next [`AGENT_STOP_WATCH`] (longer
//! than an agent's 30 s lease) without a failed request.

use meshpath_api::endpoint::EndpointOrigin;
use meshpath_api::local_source::{LocalSourceKind, LocalSourceState};
use meshpath_api::Client;
use serde::Serialize;

use std::time::{Duration, Instant};

use super::scene::{rebel_ip, Scene, BACKEND_PORT};

#[derive(Debug, Serialize)]
pub struct Platform {
    /// Where every agent read its local state from.
    pub source: LocalSourceKind,
    /// Every pod of the demo was made by the CNI plugin, as its node's agent reports its endpoint.
    pub pods_via_cni: bool,
    /// Every etcd connection of every agent used mutual TLS.
    pub mtls: bool,
    /// With `--agent-stop`: cluster2's agent beside rebel-base stopped, no request to rebel-base in
    /// cluster2 failed over the next minute; `null` without it.
    pub survives_agent_stop: Option<bool>,
    /// With a 3-member etcd: its leader lost without a failed request nor a withdrawal; `null` with a
    /// one-member etcd.
    pub survives_etcd_leader_loss: Option<bool>,
}

/// The platform as every agent of the scene reports it; an agent whose source differs from the
/// others', or does not follow its cluster, is an error naming it.
pub fn platform(scene: &Scene) -> anyhow::Result<Platform> {
    let mut source = None;
    for (name, socket) in scene.agents() {
        let status = Client::new(&socket).status()?;
        let Some(local) = status.local_source else {
            anyhow::bail!("the agent of {name} reports no local source");
        };
        if local.state != LocalSourceState::Ok {
            anyhow::bail!(
                "the local source of {name} ({}) is {}: {}",
                local.location,
                super::name(&local.state),
                local.problem.unwrap_or_default()
            );
        }
        match source {
            Some(kind) if kind != local.kind => anyhow::bail!(
                "the agent of {name} reads {} where the others read {}",
                super::name(&local.kind),
                super::name(&kind)
            ),
            _ => source = Some(local.kind),
        }
    }
    Ok(Platform {
        source: source.ok_or_else(|| anyhow::anyhow!("no agents"))?,
        pods_via_cni: pods_via_cni(scene)?,
        mtls: mutual_tls(scene)?,
        survives_agent_stop: None,
        survives_etcd_leader_loss: None,
    })
}

/// Whether every pod of the scene is an endpoint of its node's agent that the plugin made, and no
/// endpoint came from an agent's configuration.
fn pods_via_cni(scene: &Scene) -> anyhow::Result<bool> {
    for ((_, socket), pods) in scene.agents().iter().zip(scene.pods_per_node()) {
        let endpoints = Client::new(socket).status()?.endpoints;
        let made_by_plugin = |pod: &String| {
            endpoints
                .iter()
                .any(|e| e.pod == *pod && e.origin == EndpointOrigin::Cni)
        };
        if !pods.iter().all(made_by_plugin)
            || endpoints.iter().any(|e| e.origin != EndpointOrigin::Cni)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether every agent reaches its own etcd and every remote one over mutual TLS, as it reports.
fn mutual_tls(scene: &Scene) -> anyhow::Result<bool> {
    for (_, socket) in scene.agents() {
        let status = Client::new(&socket).status()?;
        let own = status.kvstore.is_some_and(|k| k.mutual_tls);
        let remotes = status.clustermesh.unwrap_or_default();
        if !own || remotes.is_empty() || remotes.values().any(|r| !r.mutual_tls) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How long x-wing calls rebel-base in cluster2 after the agent beside it stopped: longer than the
/// agent's lease, so that its keys' expiry is inside the window.
pub const AGENT_STOP_WATCH: Duration = Duration::from_secs(60);

/// Stops cluster2's agent of the node without rebel-base, then has x-wing call rebel-base in cluster2
/// for [`AGENT_STOP_WATCH`]: true if no request failed.
pub fn survives_agent_stop(scene: &Scene) -> anyhow::Result<bool> {
    scene.stop_agent_beside_rebel(2)?;
    let url = format!("http://{}:{BACKEND_PORT}/", rebel_ip(2));
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    while started.elapsed() < AGENT_STOP_WATCH {
        sent += 1;
        if super::steps::request(scene, 1, &url).is_none() {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("   {sent} requests to rebel-base in cluster2, {failed} failed");
    Ok(failed == 0)
}

/// Cluster2 as cluster1's x-wing node sees it.
fn cluster2(scene: &Scene) -> anyhow::Result<meshpath_api::clustermesh::RemoteClusterStatus> {
    let status = Client::new(scene.socket(1)).status()?;
    let remote = status.clustermesh.and_then(|m| m.get("cluster2").cloned());
    remote.ok_or_else(|| anyhow::anyhow!("cluster1's agent does not see cluster2"))
}

/// Kills cluster2's etcd leader a third of the way through `requests` requests from x-wing to the
/// global service: true if none failed, cluster1 never held fewer of cluster2's endpoints than before
/// and did not list cluster2 again. `None` with a one-member etcd.
pub fn survives_etcd_leader_loss(scene: &Scene, requests: usize) -> anyhow::Result<Option<bool>> {
    if scene.etcd_members() < 3 {
        return Ok(None);
    }
    let before = cluster2(scene)?;
    let first = requests / 3;
    let mut failed = super::steps::call_service(scene, 1, first)?.failed;
    let leader = scene.kill_etcd_leader(2)?;
    eprintln!("   cluster2's etcd leader (member {leader}) killed");
    let mut withdrew = false;
    for _ in first..requests {
        failed += super::steps::call_service(scene, 1, 1)?.failed;
        let now = cluster2(scene)?;
        withdrew |= now.endpoints < before.endpoints || now.withdrawn_at.is_some();
    }
    let after = cluster2(scene)?;
    let relisted = after.listings != before.listings;
    Ok(Some(failed == 0 && !withdrew && !relisted))
}
