//! Each remote cluster as the agent sees it: `meshpath clustermesh status`, in the shape of
//! `cilium-dbg status`' ClusterMesh section.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Every remote cluster's status, by cluster name.
pub type ClusterMeshStatus = BTreeMap<String, RemoteClusterStatus>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteClusterStatus {
    pub name: String,
    /// Connected, its configuration checked, every kind synced.
    pub ready: bool,
    pub connected: bool,
    pub endpoints_configured: u64,
    pub config_retrieved: bool,
    pub cluster_id: Option<u8>,
    pub sync_canaries: bool,
    pub synced: SyncStatus,
    pub nodes: u64,
    pub endpoints: u64,
    pub identities: u64,
    pub services: u64,
    /// Values refused because they do not match their key or this cluster (since start).
    pub rejected: u64,
    pub failures: u64,
    pub last_failure: Option<Timestamp>,
    pub last_error: Option<String>,
    pub connected_since: Option<Timestamp>,
    pub disconnected_since: Option<Timestamp>,
    /// Entries withdrawn after the grace period; `last_error` says why.
    pub withdrawn_at: Option<Timestamp>,
}

/// Per kind: has the remote's sync canary been seen since the last (re)connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub nodes: bool,
    pub endpoints: bool,
    pub identities: bool,
    pub services: bool,
}

/// A moment, to the second; as text RFC 3339 in UTC (`2025-01-31T12:00:00Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

impl FromStr for Timestamp {
    type Err = humantime::TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339(text).map(Timestamp)
    }
}

serde_as_text!(Timestamp);

/// `meshpath clustermesh status`; `None` is an agent without `clustermesh` configured.
pub fn render(mesh: Option<&ClusterMeshStatus>) -> String {
    let Some(remotes) = mesh else {
        return "ClusterMesh: disabled\n".to_owned();
    };
    let ready = remotes.values().filter(|r| r.ready).count();
    let mut out = format!("ClusterMesh: {ready}/{} clusters ready\n", remotes.len());
    for (name, r) in remotes {
        let state = if r.ready { "ready" } else { "not ready" };
        let last = r.last_failure.map_or("never".to_owned(), |t| t.to_string());
        let _ = writeln!(
            out,
            "  {name}: {state}, {} nodes, {} endpoints, {} identities, {} services, {} failures (last: {last})",
            r.nodes, r.endpoints, r.identities, r.services, r.failures,
        );
        let _ = writeln!(out, "  └ etcd: connected={}", r.connected);
        let cluster_id = r
            .cluster_id
            .map_or("unknown".to_owned(), |id| id.to_string());
        let _ = writeln!(
            out,
            "  └ remote configuration: retrieved={}, cluster-id={cluster_id}, sync-canaries={}",
            r.config_retrieved, r.sync_canaries
        );
        let s = &r.synced;
        let _ = writeln!(
            out,
            "  └ synchronization status: nodes={}, endpoints={}, identities={}, services={}",
            s.nodes, s.endpoints, s.identities, s.services
        );
        if let Some(error) = &r.last_error {
            let _ = writeln!(out, "  └ last error: {error}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn renders_each_remote() {
        assert_eq!(render(None), "ClusterMesh: disabled\n");
        let remote = RemoteClusterStatus {
            name: "cluster2".into(),
            connected: true,
            cluster_id: Some(2),
            failures: 1,
            last_failure: Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))),
            last_error: Some("etcd at 198.18.2.1:2379: connection refused".into()),
            ..Default::default()
        };
        let mesh: ClusterMeshStatus = [("cluster2".to_owned(), remote)].into();
        let text = render(Some(&mesh));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ClusterMesh: 0/1 clusters ready");
        assert_eq!(
            lines[1],
            "  cluster2: not ready, 0 nodes, 0 endpoints, 0 identities, 0 services, 1 failures (last: 2023-11-14T22:13:20Z)"
        );
        assert_eq!(lines[2], "  └ etcd: connected=true");
        assert!(lines[3].contains("cluster-id=2"), "{text}");
        assert!(
            lines[4].ends_with("nodes=false, endpoints=false, identities=false, services=false")
        );
        assert!(lines[5].ends_with("connection refused"));
    }

    #[test]
    fn times_as_rfc3339() {
        let json = r#"{"at":"2023-11-14T22:13:20Z"}"#;
        #[derive(Deserialize, Serialize)]
        struct At {
            at: Timestamp,
        }
        let at: At = serde_json::from_str(json).unwrap();
        assert_eq!(at.at.0, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(serde_json::to_string(&at).unwrap(), json);
        assert!(serde_json::from_str::<At>(r#"{"at":"yesterday"}"#).is_err());
    }

    proptest! {
        #[test]
        fn times_round_trip_to_the_second(secs in 0u64..253_402_300_799) {
            let t = Timestamp(UNIX_EPOCH + Duration::from_secs(secs));
            prop_assert_eq!(t.to_string().parse::<Timestamp>().ok(), Some(t));
        }
    }
}
