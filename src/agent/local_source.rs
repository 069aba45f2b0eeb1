//! The agent's local source, from `source` in its configuration: a YAML directory, or the Kubernetes
//! API server — of the pod's service account (in-cluster) or of a kubeconfig — through the kube
//! client and `meshpath_control::local::KubeSource`'s watchers. What it reports is converted here into
//! `meshpath_api::local_source` for the status, the health checks and the metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshpath_api::clustermesh::Timestamp;
use meshpath_api::local_source::{
    LocalSourceKind, LocalSourceState, LocalSourceStatus, WatchedResource,
};
use meshpath_control::local::{
    kube_client, Kind, KubeSource, LocalSourceHandle, LocalState, SourceError, SourceStatus,
    YamlSource,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;

/// A running local source, and what to call it.
pub struct LocalSource {
    pub handle: LocalSourceHandle,
    pub describe: SourceInfo,
}

/// Which source, where: what the status shows with its progress.
#[derive(Clone)]
pub struct SourceInfo {
    pub kind: LocalSourceKind,
    pub location: String,
    pub status: watch::Receiver<SourceStatus>,
}

/// Starts the source `config.source` names.
pub async fn spawn(config: &AgentConfig, cancel: CancellationToken) -> anyhow::Result<LocalSource> {
    let (handle, kind, location) = match (&config.source.yaml_dir, &config.source.kubernetes) {
        (Some(dir), _) => {
            let handle = YamlSource::spawn(dir.clone(), cancel)?;
            (handle, LocalSourceKind::YamlDir, dir.display().to_string())
        }
        (None, Some(kubernetes)) => {
            let (client, location) = kube_client(
                kubernetes.kubeconfig.as_deref(),
                kubernetes.context.as_deref(),
            )
            .await
            .context("`source.kubernetes`")?;
            tracing::info!(server = %location, "local state from the Kubernetes API server");
            let handle = KubeSource::spawn(client, cancel);
            (handle, LocalSourceKind::Kubernetes, location)
        }
        (None, None) => anyhow::bail!("`source`: no local source configured"),
    };
    let describe = SourceInfo {
        kind,
        location,
        status: handle.status.clone(),
    };
    Ok(LocalSource { handle, describe })
}

/// How long start-up waits for the source's first complete state: Cilium's `--k8s-sync-timeout`.
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);

/// The source's first complete state. A directory has it at once; the API server's watchers once
/// every kind listed. An agent that gets none in time stops, saying why, rather than run a node on
/// a partial cluster (its XDP programs, if a previous agent left them, stay closed).
pub async fn first_state(
    handle: &LocalSourceHandle,
    info: &SourceInfo,
) -> anyhow::Result<Arc<LocalState>> {
    let mut status = handle.status.clone();
    let synced = tokio::time::timeout(SYNC_TIMEOUT, status.wait_for(|s| s.synced)).await;
    if !matches!(synced, Ok(Ok(_))) {
        let why = info.status().problem.unwrap_or_default();
        anyhow::bail!(
            "`source`: no complete local state from {} within {SYNC_TIMEOUT:?}: {why}",
            info.location
        );
    }
    // The state is published with (and before) the status that says it is synced.
    let mut state = handle.state.clone();
    let first = state.borrow_and_update().clone();
    tracing::info!(
        nodes = first.nodes.len(),
        pods = first.pods.len(),
        services = first.services.len(),
        policies = first.policies.len(),
        "first complete local state"
    );
    Ok(first)
}

impl SourceInfo {
    /// Why the source cannot follow the cluster now (its last state stays in force), if it cannot.
    pub fn lost(&self) -> Option<String> {
        let status = self.status.borrow();
        status.synced.then(|| status.lost()).flatten()
    }

    /// The source as `meshpath status` shows it.
    pub fn status(&self) -> LocalSourceStatus {
        let status = self.status.borrow().clone();
        let lost = status.lost();
        let (state, problem) = match (status.synced, lost) {
            (false, lost) => (
                LocalSourceState::Waiting,
                Some(waiting(self.kind, lost.as_deref())),
            ),
            (true, Some(lost)) => (
                LocalSourceState::Failing,
                Some(format!("{lost}; the last state stays in force")),
            ),
            (true, None) => (LocalSourceState::Ok, None),
        };
        let api_server = status.api_server.as_ref();
        LocalSourceStatus {
            kind: self.kind,
            location: self.location.clone(),
            state,
            problem,
            server_version: api_server.and_then(|a| a.version.clone()),
            since: api_server.map(|a| Timestamp(a.since)),
            resources: match self.kind {
                LocalSourceKind::Kubernetes => resources(&status),
                LocalSourceKind::YamlDir => Vec::new(),
            },
            errors: status
                .errors
                .iter()
                .filter(|e| !matches!(e, SourceError::Watch { .. }))
                .map(ToString::to_string)
                .collect(),
        }
    }
}

fn waiting(kind: LocalSourceKind, lost: Option<&str>) -> String {
    let what = match kind {
        LocalSourceKind::Kubernetes => "waiting for every resource's first list",
        LocalSourceKind::YamlDir => "waiting for the directory's first reading",
    };
    match lost {
        Some(lost) => format!("{what}: {lost}"),
        None => what.to_owned(),
    }
}

fn resources(status: &SourceStatus) -> Vec<WatchedResource> {
    Kind::ALL
        .iter()
        .map(|kind| {
            let resource = kind.resource();
            let failing = status.errors.iter().find_map(|e| match e {
                SourceError::Watch {
                    resource: r,
                    problem,
                } if *r == resource => Some(problem.clone()),
                _ => None,
            });
            WatchedResource {
                api: cilium_api_name(*kind),
                resource: resource.to_owned(),
                served: !status.not_served.contains(&resource),
                failing,
                failures: status
                    .watch_failures
                    .iter()
                    .find(|(r, _)| *r == resource)
                    .map_or(0, |(_, n)| *n),
            }
        })
        .collect()
}

/// The API as `cilium status` lists it: `core/v1::Pods`, `cilium/v2::CiliumNetworkPolicy`.
fn cilium_api_name(kind: Kind) -> String {
    let group = match kind.group() {
        "" => "core",
        "cilium.io" => "cilium",
        "discovery.k8s.io" => "discovery",
        other => other,
    };
    let name = match kind {
        Kind::Pod => "Pods",
        other => other.name(),
    };
    format!("{group}/{}::{name}", kind.version())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_control::local::ApiServerHealth;
    use std::time::SystemTime;

    fn info(status: SourceStatus) -> SourceInfo {
        SourceInfo {
            kind: LocalSourceKind::Kubernetes,
            location: "https://198.18.1.254:6443/".into(),
            status: watch::channel(status).1,
        }
    }

    #[test]
    fn waiting_then_ok_then_lost() {
        let waiting = info(SourceStatus::default()).status();
        assert_eq!(waiting.state, LocalSourceState::Waiting);
        let mut status = SourceStatus {
            synced: true,
            api_server: Some(ApiServerHealth {
                reachable: true,
                version: Some("v1.37.0".into()),
                error: None,
                since: SystemTime::now(),
                checked_at: SystemTime::now(),
            }),
            not_served: vec!["ciliumclusterwidenetworkpolicies.cilium.io"],
            ..SourceStatus::default()
        };
        let ok = info(status.clone()).status();
        assert_eq!((ok.state, ok.problem), (LocalSourceState::Ok, None));
        assert_eq!(ok.server_version.as_deref(), Some("v1.37.0"));
        assert_eq!(ok.resources.len(), Kind::ALL.len());
        let ccnp = ok.resources.iter().find(|r| !r.served).unwrap();
        assert_eq!(ccnp.api, "cilium/v2::CiliumClusterwideNetworkPolicy");

        status.errors.push(SourceError::Watch {
            resource: "pods",
            problem: "connection refused".into(),
        });
        status.watch_failures.push(("pods", 3));
        let lost = info(status).status();
        assert_eq!(lost.state, LocalSourceState::Failing);
        assert_eq!(
            lost.problem.as_deref(),
            Some("watching pods: connection refused; the last state stays in force")
        );
        let pods = lost
            .resources
            .iter()
            .find(|r| r.resource == "pods")
            .unwrap();
        assert_eq!(
            (pods.api.as_str(), pods.failures, pods.failing.as_deref()),
            ("core/v1::Pods", 3, Some("connection refused"))
        );
        assert!(
            lost.errors.is_empty(),
            "watch failures are not object errors"
        );
    }
}
