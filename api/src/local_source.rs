//! Where the agent's local state comes from, and how that goes: the `Kubernetes:` and
//! `Kubernetes APIs:` lines of `meshpath status`, in the shape of `cilium status`' (`Ok   v1.37.0 …`,
//! `Disabled` without an API server), and the `platform.source` of the demo's report.

use serde::{Deserialize, Serialize};

use crate::clustermesh::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSourceStatus {
    pub kind: LocalSourceKind,
    /// The API server's URL, or the directory.
    pub location: String,
    pub state: LocalSourceState,
    /// Why it is not `ok`: what it waits for, or what fails (its last state stays in force meanwhile).
    pub problem: Option<String>,
    /// The API server's version (`v1.37.0`), as its last probe answered.
    pub server_version: Option<String>,
    /// Since when the API server has been reachable, or not.
    pub since: Option<Timestamp>,
    /// Each watched resource: served or not, failing or not, how often its watch failed.
    #[serde(default)]
    pub resources: Vec<WatchedResource>,
    /// Objects (or files) that cannot be read; their last good version stays in force.
    #[serde(default)]
    pub errors: Vec<String>,
}

named_enum! {
    pub enum LocalSourceKind ("local source") {
        /// The Kubernetes API server: watchers on its objects.
        Kubernetes => "kubernetes",
        /// A directory of Kubernetes-shaped YAML files, watched.
        YamlDir => "yaml-dir",
    }
}

named_enum! {
    pub enum LocalSourceState ("local source state") {
        /// It follows the cluster.
        Ok => "ok",
        /// Its first complete state is not in yet.
        Waiting => "waiting",
        /// It cannot follow the cluster now: the API server does not answer, or a watch fails.
        Failing => "failing",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedResource {
    /// As Cilium names it: `core/v1::Pods`, `cilium/v2::CiliumNetworkPolicy`.
    pub api: String,
    /// The resource as `kubectl` and RBAC name it: `pods`, `endpointslices.discovery.k8s.io`.
    pub resource: String,
    /// `false` when the API server does not serve it (a CRD not installed): none of it is assumed.
    pub served: bool,
    /// Why its watch fails now, if it does.
    pub failing: Option<String>,
    /// How often its watch failed since the agent started.
    pub failures: u64,
}

/// The text after `Kubernetes:`.
pub fn line(status: &LocalSourceStatus) -> String {
    if status.kind == LocalSourceKind::YamlDir {
        return format!("Disabled   (local state from {})", status.location);
    }
    let problem = status.problem.as_deref().unwrap_or_default();
    match status.state {
        LocalSourceState::Ok => format!(
            "Ok   {} at {}",
            status
                .server_version
                .as_deref()
                .unwrap_or("unknown version"),
            status.location
        ),
        LocalSourceState::Waiting => format!("Waiting   {} ({problem})", status.location),
        LocalSourceState::Failing => format!("Failure   {}: {problem}", status.location),
    }
}

/// The text after `Kubernetes APIs:`, as Cilium's: the APIs watched and served.
pub fn apis_line(status: &LocalSourceStatus) -> Option<String> {
    if status.kind == LocalSourceKind::YamlDir {
        return None;
    }
    let served: Vec<String> = status
        .resources
        .iter()
        .filter(|r| r.served)
        .map(|r| format!("{:?}", r.api))
        .collect();
    Some(format!("[{}]", served.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: LocalSourceState, problem: Option<&str>) -> LocalSourceStatus {
        LocalSourceStatus {
            kind: LocalSourceKind::Kubernetes,
            location: "https://198.18.1.254:6443".into(),
            state,
            problem: problem.map(Into::into),
            server_version: Some("v1.37.0".into()),
            since: None,
            resources: vec![
                WatchedResource {
                    api: "core/v1::Pods".into(),
                    resource: "pods".into(),
                    served: true,
                    failing: None,
                    failures: 0,
                },
                WatchedResource {
                    api: "cilium/v2::CiliumNetworkPolicy".into(),
                    resource: "ciliumnetworkpolicies.cilium.io".into(),
                    served: false,
                    failing: None,
                    failures: 0,
                },
            ],
            errors: vec![],
        }
    }

    #[test]
    fn lines_as_cilium_status_writes_them() {
        let ok = status(LocalSourceState::Ok, None);
        assert_eq!(line(&ok), "Ok   v1.37.0 at https://198.18.1.254:6443");
        assert_eq!(apis_line(&ok).unwrap(), r#"["core/v1::Pods"]"#);
        let lost = status(
            LocalSourceState::Failing,
            Some("the API server does not answer: connection refused"),
        );
        assert_eq!(
            line(&lost),
            "Failure   https://198.18.1.254:6443: the API server does not answer: connection refused"
        );
        let yaml = LocalSourceStatus {
            kind: LocalSourceKind::YamlDir,
            location: "/etc/meshpath/state".into(),
            ..ok
        };
        assert_eq!(
            line(&yaml),
            "Disabled   (local state from /etc/meshpath/state)"
        );
        assert_eq!(apis_line(&yaml), None);
        let json = serde_json::to_value(&lost).unwrap();
        assert_eq!(json["kind"], "kubernetes");
        assert_eq!(json["state"], "failing");
        assert_eq!(
            serde_json::from_value::<LocalSourceStatus>(json).unwrap(),
            lost
        );
    }
}
