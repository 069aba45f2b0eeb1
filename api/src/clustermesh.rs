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
    /// Whether the remote is read over mutual TLS; false only with its configuration's
    /// `insecure: true`.
    #[serde(default)]
    pub mutual_tls: bool,
    pub endpoints_configured: u64,
    pub config_retrieved: bool,
    pub cluster_id: Option<u8>,
    pub sync_canaries: bool,
    pub synced: SyncStatus,
    pub nodes: u64,
    pub endpoints: u64,
    pub identities: u64,
    pub services: u64,
    /// Keys refused now, per reason (on receipt and on admission to the tables); for the
    /// `over_*_limit` reasons, keys ignored since the last listing.
    pub refused: BTreeMap<Refusal, u64>,
    /// Pod CIDRs refused because another cluster holds an overlapping one, naming it.
    pub cidr_conflicts: Vec<CidrConflict>,
    /// Why the remote is degraded, while it is: past a limit, its excess keys are ignored.
    pub degraded: Option<String>,
    pub usage: RemoteUsage,
    pub limits: RemoteLimits,
    pub failures: u64,
    /// Full listings of the remote's state, the first included (each later one: a new session).
    #[serde(default)]
    pub listings: u64,
    /// Watches that broke (an etcd member gone) and were resumed from the next revision.
    #[serde(default)]
    pub watch_resumes: u64,
    pub last_failure: Option<Timestamp>,
    pub last_error: Option<String>,
    pub connected_since: Option<Timestamp>,
    pub disconnected_since: Option<Timestamp>,
    /// Entries withdrawn after the grace period; `last_error` says why.
    pub withdrawn_at: Option<Timestamp>,
}

named_enum! {
    /// Why a remote's key or entry is refused: the control plane's `Refusal`, name for name.
    pub enum Refusal ("refusal reason") {
        Malformed => "malformed",
        WrongCluster => "wrong_cluster",
        ReservedIdentity => "reserved_identity",
        Ipv4Mapped => "ipv4_mapped",
        NotShared => "not_shared",
        ValueTooLarge => "value_too_large",
        PodCidrTooShort => "pod_cidr_too_short",
        PodCidrOverlap => "pod_cidr_overlap",
        EndpointOutsidePodCidrs => "endpoint_outside_pod_cidrs",
        HostIpNotANode => "host_ip_not_a_node",
        BackendNotAnEndpoint => "backend_not_an_endpoint",
        OverKeyLimit => "over_key_limit",
        OverByteLimit => "over_byte_limit",
        OverIdentityLimit => "over_identity_limit",
    }
}

/// A remote's pod CIDR refused because it overlaps another cluster's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrConflict {
    pub node: String,
    pub prefix: String,
    pub other_cluster: String,
    pub other_prefix: String,
}

impl fmt::Display for CidrConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pod CIDR {} of node {} refused: overlaps {}'s {}",
            self.prefix, self.node, self.other_cluster, self.other_prefix
        )
    }
}

/// What a remote holds in the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteUsage {
    pub keys: u64,
    /// Estimated from the entries' decoded size.
    pub bytes: u64,
    pub identities: u64,
}

/// What a remote may hold in the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLimits {
    pub max_keys: u64,
    pub max_bytes: u64,
    pub max_identities: u64,
    pub max_value_bytes: u64,
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
        let state = match (r.ready, &r.degraded) {
            (true, _) => "ready",
            (false, Some(_)) => "degraded",
            (false, None) => "not ready",
        };
        let last = r.last_failure.map_or("never".to_owned(), |t| t.to_string());
        let _ = writeln!(
            out,
            "  {name}: {state}, {} nodes, {} endpoints, {} identities, {} services, {} failures (last: {last})",
            r.nodes, r.endpoints, r.identities, r.services, r.failures,
        );
        let tls = if r.mutual_tls {
            "mutual TLS"
        } else {
            "INSECURE (no client certificate)"
        };
        let _ = writeln!(out, "  └ etcd: connected={}, {tls}", r.connected);
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
        render_refusals(&mut out, r);
    }
    out
}

/// A node's watch of its own cluster's etcd for the external workloads that joined the cluster:
/// whether it is connected and synced, and its failures. Its counts are of everything the watch
/// read (the whole cluster), of which only the external workloads' records are taken.
pub fn render_external_workloads_watch(r: &RemoteClusterStatus) -> String {
    let state = if r.ready { "ready" } else { "not ready" };
    let tls = if r.mutual_tls {
        "mutual TLS"
    } else {
        "INSECURE (no client certificate)"
    };
    let last = r.last_failure.map_or("never".to_owned(), |t| t.to_string());
    let mut out = format!(
        "External workloads (this cluster's own etcd): {state}, connected={}, {tls}, {} failures (last: {last})\n",
        r.connected, r.failures
    );
    if let Some(error) = &r.last_error {
        let _ = writeln!(out, "  └ last error: {error}");
    }
    out
}

/// Like Cilium's failures line: what is refused, per reason; overlapping pod CIDRs naming the other
/// cluster; and why the remote is degraded, against its limits.
fn render_refusals(out: &mut String, r: &RemoteClusterStatus) {
    if !r.refused.is_empty() {
        let counts: Vec<String> = r.refused.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(out, "  └ refused: {}", counts.join(", "));
    }
    for conflict in &r.cidr_conflicts {
        let _ = writeln!(out, "  └ {conflict}");
    }
    if let Some(why) = &r.degraded {
        let (u, l) = (&r.usage, &r.limits);
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let _ = writeln!(out, "  └ degraded: {why}");
        let _ = writeln!(
            out,
            "  └ limits: {}/{} keys, {:.1}/{:.1} MiB, {}/{} identities",
            u.keys,
            l.max_keys,
            mib(u.bytes),
            mib(l.max_bytes),
            u.identities,
            l.max_identities
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn renders_the_external_workloads_watch_with_its_error() {
        let watch = RemoteClusterStatus {
            name: "cluster1".into(),
            mutual_tls: true,
            failures: 2,
            last_failure: Some(Timestamp(UNIX_EPOCH + Duration::from_secs(1_700_000_000))),
            last_error: Some("etcd at 198.18.1.1:2379: connection refused".into()),
            ..Default::default()
        };
        assert_eq!(
            render_external_workloads_watch(&watch),
            "External workloads (this cluster's own etcd): not ready, connected=false, mutual TLS, 2 failures (last: 2023-11-14T22:13:20Z)\n  └ last error: etcd at 198.18.1.1:2379: connection refused\n"
        );
    }

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
        assert_eq!(
            lines[2],
            "  └ etcd: connected=true, INSECURE (no client certificate)"
        );
        assert!(lines[3].contains("cluster-id=2"), "{text}");
        assert!(
            lines[4].ends_with("nodes=false, endpoints=false, identities=false, services=false")
        );
        assert!(lines[5].ends_with("connection refused"));
        assert_eq!(
            lines.len(),
            6,
            "nothing refused, not degraded: no more lines"
        );
    }

    #[test]
    fn renders_refusals_conflicts_and_degradation() {
        let remote = RemoteClusterStatus {
            name: "cluster3".into(),
            connected: true,
            refused: [(Refusal::ReservedIdentity, 2), (Refusal::OverKeyLimit, 7)].into(),
            cidr_conflicts: vec![CidrConflict {
                node: "n1".into(),
                prefix: "10.1.0.0/25".into(),
                other_cluster: "cluster1".into(),
                other_prefix: "10.1.0.0/24".into(),
            }],
            degraded: Some("7 keys ignored past the key limit (3)".into()),
            usage: RemoteUsage {
                keys: 3,
                bytes: 1 << 20,
                identities: 0,
            },
            limits: RemoteLimits {
                max_keys: 3,
                max_bytes: 2 << 20,
                max_identities: 9,
                max_value_bytes: 1,
            },
            ..Default::default()
        };
        let mesh: ClusterMeshStatus = [("cluster3".to_owned(), remote)].into();
        let text = render(Some(&mesh));
        assert!(text.contains("  cluster3: degraded, 0 nodes"), "{text}");
        for line in [
            "  └ refused: 7 over_key_limit, 2 reserved_identity\n",
            "  └ pod CIDR 10.1.0.0/25 of node n1 refused: overlaps cluster1's 10.1.0.0/24\n",
            "  └ degraded: 7 keys ignored past the key limit (3)\n",
            "  └ limits: 3/3 keys, 1.0/2.0 MiB, 0/9 identities\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
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
