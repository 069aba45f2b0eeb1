//! What an operator sees of each remote cluster, in the shape of `cilium-dbg status`' ClusterMesh section,
//! and as JSON for `-o json` and metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::Serialize;

use crate::cluster_name::ClusterName;
use crate::kvstore::Kind;

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
    pub endpoints_configured: usize,
    pub config_retrieved: bool,
    pub cluster_id: Option<u8>,
    pub sync_canaries: bool,
    pub synced: SyncStatus,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub services: usize,
    /// Values refused because they do not match their key or this cluster (since start).
    pub rejected: u64,
    pub failures: u64,
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
            "└ etcd: {}/{} connected",
            u8::from(self.connected),
            self.endpoints_configured
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
        if self.rejected > 0 {
            write!(f, "\n└ rejected values: {}", self.rejected)?;
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
        assert_eq!(lines[2], "  └ etcd: 0/1 connected");
        assert!(text.contains("\n  cluster3: not-ready,"), "{text}");
    }

    #[test]
    fn prints_like_cilium_dbg_status() {
        let mut status = RemoteStatus::new(&ClusterName::new("cluster2").unwrap(), 1);
        status.ready = true;
        status.connected = true;
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
└ etcd: 1/1 connected
└ remote configuration: expected=true, retrieved=true, cluster-id=2, sync-canaries=true
└ synchronization status: nodes=true, endpoints=true, identities=true, services=true";
        assert_eq!(status.to_string(), expected);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["synced"]["endpoints"], true);
        assert_eq!(json["last_failure"], serde_json::Value::Null);
    }
}
