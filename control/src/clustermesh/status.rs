//! What an operator sees of each remote cluster, in the shape of `cilium-dbg status`' ClusterMesh section,
//! and as JSON for `-o json` and metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use super::limits::{RemoteLimits, Usage};
use crate::cluster_name::ClusterName;
use crate::kvstore::Kind;
use crate::refusal::{add_counts, RefusalCounts};

/// Per kind: has the remote's sync canary been seen since the last (re)connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    pub nodes: bool,
    pub endpoints: bool,
    pub identities: bool,
    pub services: bool,
}

impl SyncStatus {
    pub fn set(&mut self, kind: Kind, synced: bool) {
        match kind {
            Kind::Nodes => self.nodes = synced,
            Kind::Endpoints => self.endpoints = synced,
            Kind::Identities => self.identities = synced,
            Kind::Services => self.services = synced,
        }
    }

    pub fn get(&self, kind: Kind) -> bool {
        match kind {
            Kind::Nodes => self.nodes,
            Kind::Endpoints => self.endpoints,
            Kind::Identities => self.identities,
            Kind::Services => self.services,
        }
    }

    pub fn all(&self) -> bool {
        Kind::ALL.iter().all(|k| self.get(*k))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteStatus {
    pub name: String,
    /// Connected, its configuration checked, every kind synced.
    pub ready: bool,
    pub connected: bool,
    /// Whether the remote is read over mutual TLS (a client certificate); false only with the
    /// configuration's `insecure: true`.
    pub mutual_tls: bool,
    pub endpoints_configured: usize,
    pub config_retrieved: bool,
    pub cluster_id: Option<u8>,
    pub sync_canaries: bool,
    pub synced: SyncStatus,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub services: usize,
    /// Keys refused now, per reason: on receipt (by the watcher) and on admission to the tables (by
    /// the snapshot builder). For the `over_*_limit` reasons: keys ignored since the last listing.
    pub refused: RefusalCounts,
    #[serde(skip)]
    pub refused_on_receipt: RefusalCounts,
    #[serde(skip)]
    pub refused_on_admission: RefusalCounts,
    /// Pod CIDRs refused because another cluster holds an overlapping one, naming it.
    pub cidr_conflicts: Vec<CidrConflict>,
    /// Why the remote is degraded, while it is: past a limit, its excess keys are ignored.
    pub degraded: Option<String>,
    pub usage: Usage,
    pub limits: RemoteLimits,
    pub failures: u64,
    /// Full listings of the remote's state, the first included: each later one is a watch that
    /// could not be resumed (a new session).
    pub listings: u64,
    /// Watches that broke and were resumed from the next revision, with nothing listed again.
    pub watch_resumes: u64,
    #[serde(serialize_with = "rfc3339")]
    pub last_failure: Option<SystemTime>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub connected_since: Option<SystemTime>,
    #[serde(serialize_with = "rfc3339")]
    pub disconnected_since: Option<SystemTime>,
    /// Entries withdrawn after the grace period; says why in `last_error`.
    #[serde(serialize_with = "rfc3339")]
    pub withdrawn_at: Option<SystemTime>,
}

fn rfc3339<S: serde::Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

/// A remote's pod CIDR refused because it overlaps another cluster's: the local cluster's always,
/// another remote's when that remote claimed it first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// How an etcd connection is secured, for status lines.
pub fn tls_word(mutual_tls: bool) -> &'static str {
    if mutual_tls {
        "mutual TLS"
    } else {
        "INSECURE (no client certificate)"
    }
}

/// Every remote's status, by cluster name.
pub type MeshStatus = BTreeMap<ClusterName, RemoteStatus>;

impl RemoteStatus {
    pub fn new(name: &ClusterName, endpoints_configured: usize) -> Self {
        RemoteStatus {
            name: name.to_string(),
            endpoints_configured,
            ..Default::default()
        }
    }

    /// What the watcher refused on receipt (and ignored past a limit).
    pub fn set_refused_on_receipt(&mut self, counts: RefusalCounts) {
        self.refused_on_receipt = counts;
        self.sum_refused();
    }

    /// What the snapshot builder refused to put into the tables.
    pub fn set_refused_on_admission(&mut self, counts: RefusalCounts) {
        self.refused_on_admission = counts;
        self.sum_refused();
    }

    fn sum_refused(&mut self) {
        self.refused = self.refused_on_receipt.clone();
        add_counts(&mut self.refused, &self.refused_on_admission);
    }

    pub fn count_mut(&mut self, kind: Kind) -> &mut usize {
        match kind {
            Kind::Nodes => &mut self.nodes,
            Kind::Endpoints => &mut self.endpoints,
            Kind::Identities => &mut self.identities,
            Kind::Services => &mut self.services,
        }
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = match self.last_failure {
            Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
            None => "never".into(),
        };
        writeln!(
            f,
            "{}: {}, {} nodes, {} endpoints, {} identities, {} services, {} failures (last: {last})",
            self.name,
            if self.ready { "ready" } else { "not-ready" },
            self.nodes,
            self.endpoints,
            self.identities,
            self.services,
            self.failures,
        )?;
        writeln!(
            f,
            "└ etcd: {}/{} connected, {}",
            u8::from(self.connected),
            self.endpoints_configured,
            tls_word(self.mutual_tls)
        )?;
        let id = self
            .cluster_id
            .map(|id| id.to_string())
            .unwrap_or_else(|| "unknown".into());
        writeln!(
            f,
            "└ remote configuration: expected=true, retrieved={}, cluster-id={id}, sync-canaries={}",
            self.config_retrieved, self.sync_canaries
        )?;
        let s = &self.synced;
        write!(
            f,
            "└ synchronization status: nodes={}, endpoints={}, identities={}, services={}",
            s.nodes, s.endpoints, s.identities, s.services
        )?;
        if let Some(err) = &self.last_error {
            write!(f, "\n└ last error: {err}")?;
        }
        if !self.refused.is_empty() {
            let counts: Vec<String> = self
                .refused
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            write!(f, "\n└ refused: {}", counts.join(", "))?;
        }
        for conflict in &self.cidr_conflicts {
            write!(f, "\n└ {conflict}")?;
        }
        if let Some(why) = &self.degraded {
            let (u, l) = (&self.usage, &self.limits);
            let mib = |b: usize| b as f64 / f64::from(1 << 20);
            write!(
                f,
                "\n└ degraded: {why}\n└ limits: {}/{} keys, {:.1}/{:.1} MiB, {}/{} identities",
                u.keys,
                l.max_keys,
                mib(u.bytes),
                mib(l.max_bytes),
                u.identities,
                l.max_identities
            )?;
        }
        Ok(())
    }
}

/// The whole ClusterMesh section of `cilium-dbg status`: a header, then each remote indented.
pub fn render(status: &MeshStatus, global_services: usize) -> String {
    let ready = status.values().filter(|s| s.ready).count();
    let mut out = format!(
        "ClusterMesh: {ready}/{} clusters ready, {global_services} global-services",
        status.len()
    );
    for remote in status.values() {
        for line in remote.to_string().lines() {
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_clustermesh_section() {
        let mut board = MeshStatus::new();
        let c2 = ClusterName::new("cluster2").unwrap();
        let c3 = ClusterName::new("cluster3").unwrap();
        board.insert(
            c2.clone(),
            RemoteStatus {
                ready: true,
                ..RemoteStatus::new(&c2, 1)
            },
        );
        board.insert(c3.clone(), RemoteStatus::new(&c3, 2));
        let text = render(&board, 4);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ClusterMesh: 1/2 clusters ready, 4 global-services"
        );
        assert!(lines[1].starts_with("  cluster2: ready, 0 nodes"), "{text}");
        assert_eq!(
            lines[2],
            "  └ etcd: 0/1 connected, INSECURE (no client certificate)"
        );
        assert!(text.contains("\n  cluster3: not-ready,"), "{text}");
    }

    #[test]
    fn prints_like_cilium_dbg_status() {
        let mut status = RemoteStatus::new(&ClusterName::new("cluster2").unwrap(), 1);
        status.ready = true;
        status.connected = true;
        status.mutual_tls = true;
        status.config_retrieved = true;
        status.cluster_id = Some(2);
        status.sync_canaries = true;
        status.synced = SyncStatus {
            nodes: true,
            endpoints: true,
            identities: true,
            services: true,
        };
        (
            status.nodes,
            status.endpoints,
            status.identities,
            status.services,
        ) = (2, 12, 5, 0);
        let expected = "cluster2: ready, 2 nodes, 12 endpoints, 5 identities, 0 services, 0 failures (last: never)
└ etcd: 1/1 connected, mutual TLS
└ remote configuration: expected=true, retrieved=true, cluster-id=2, sync-canaries=true
└ synchronization status: nodes=true, endpoints=true, identities=true, services=true";
        assert_eq!(status.to_string(), expected);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["synced"]["endpoints"], true);
        assert_eq!(json["last_failure"], serde_json::Value::Null);
    }
}
