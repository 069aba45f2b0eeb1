//! The mesh as the agents the page reads see it, merged: every cluster with its nodes and, for each
//! remote cluster, its readiness as each agent sees it; every service with its backends per cluster
//! and their state. Built from the agents' status documents on every poll, so a failover shows as the
//! agents take it in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use meshpath_api::service::{BackendState, Frontend};
use meshpath_api::AgentStatus;
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MeshView {
    pub clusters: Vec<ClusterView>,
    pub services: Vec<ServiceView>,
    /// Each agent the page reads, with what went wrong reading it.
    pub agents: Vec<AgentView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentView {
    pub socket: String,
    /// `cluster/node`, once it answered.
    pub node: Option<String>,
    /// Why its status could not be read.
    pub error: Option<String>,
    /// Why its flows could not be read.
    pub flows_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub name: String,
    pub id: Option<u8>,
    pub nodes: Vec<NodeView>,
    /// As a remote cluster, its readiness in the eyes of each agent of another cluster.
    pub readiness: Vec<Readiness>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NodeView {
    pub name: String,
    pub address: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The agent that sees it: `cluster/node`.
    pub seen_by: String,
    pub ready: bool,
    pub connected: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    /// `namespace/name`, or the frontend when no agent named it.
    pub name: String,
    /// Its frontend in each cluster (a global service has one per cluster).
    pub frontends: Vec<Frontend>,
    /// Per cluster name, its backends; a backend two agents see in different states is listed in
    /// each.
    pub clusters: BTreeMap<String, Vec<BackendView>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct BackendView {
    pub address: SocketAddr,
    pub state: BackendState,
}

/// What one agent answered: its status, or why it could not be read.
#[derive(Clone, Debug)]
pub struct Reading {
    pub socket: String,
    pub status: Result<AgentStatus, String>,
    pub flows_error: Option<String>,
}

/// The agents' documents merged into one view of the mesh.
pub fn merge(readings: &[Reading]) -> MeshView {
    let statuses: Vec<&AgentStatus> = readings
        .iter()
        .filter_map(|r| r.status.as_ref().ok())
        .collect();
    let names = cluster_names(&statuses);
    MeshView {
        clusters: clusters(&statuses),
        services: services(&statuses, &names),
        agents: readings
            .iter()
            .map(|r| AgentView {
                socket: r.socket.clone(),
                node: r
                    .status
                    .as_ref()
                    .ok()
                    .map(|s| format!("{}/{}", s.cluster, s.node)),
                error: r.status.as_ref().err().cloned(),
                flows_error: r.flows_error.clone(),
            })
            .collect(),
    }
}

/// Cluster ids to names: each agent's own, and each of its remotes'.
fn cluster_names(statuses: &[&AgentStatus]) -> BTreeMap<u8, String> {
    let mut names = BTreeMap::new();
    for status in statuses {
        if let Some(id) = status.cluster_id {
            names.insert(id, status.cluster.clone());
        }
        for remote in status.clustermesh.iter().flat_map(|m| m.values()) {
            if let Some(id) = remote.cluster_id {
                names.entry(id).or_insert_with(|| remote.name.clone());
            }
        }
    }
    names
}

fn clusters(statuses: &[&AgentStatus]) -> Vec<ClusterView> {
    let mut clusters: BTreeMap<String, ClusterView> = BTreeMap::new();
    let mut nodes: BTreeMap<String, BTreeSet<NodeView>> = BTreeMap::new();
    for status in statuses {
        cluster(&mut clusters, &status.cluster).id = status.cluster_id;
        for node in &status.nodes {
            cluster(&mut clusters, &node.cluster);
            nodes
                .entry(node.cluster.clone())
                .or_default()
                .insert(NodeView {
                    name: node.name.clone(),
                    address: node.address,
                });
        }
        let seen_by = format!("{}/{}", status.cluster, status.node);
        for remote in status.clustermesh.iter().flat_map(|m| m.values()) {
            let view = cluster(&mut clusters, &remote.name);
            view.id = view.id.or(remote.cluster_id);
            view.readiness.push(Readiness {
                seen_by: seen_by.clone(),
                ready: remote.ready,
                connected: remote.connected,
                error: remote.last_error.clone().filter(|_| !remote.ready),
            });
        }
    }
    for (name, view) in clusters.iter_mut() {
        view.nodes = nodes.remove(name).unwrap_or_default().into_iter().collect();
    }
    clusters.into_values().collect()
}

fn cluster<'a>(clusters: &'a mut BTreeMap<String, ClusterView>, name: &str) -> &'a mut ClusterView {
    clusters
        .entry(name.to_owned())
        .or_insert_with(|| ClusterView {
            name: name.to_owned(),
            ..Default::default()
        })
}

fn services(statuses: &[&AgentStatus], names: &BTreeMap<u8, String>) -> Vec<ServiceView> {
    let mut services: BTreeMap<String, ServiceView> = BTreeMap::new();
    for status in statuses {
        for service in &status.services {
            let name = service
                .name
                .clone()
                .unwrap_or_else(|| service.frontend.to_string());
            let view = services.entry(name.clone()).or_insert_with(|| ServiceView {
                name,
                frontends: Vec::new(),
                clusters: BTreeMap::new(),
            });
            if !view.frontends.contains(&service.frontend) {
                view.frontends.push(service.frontend);
            }
            for backend in &service.backends {
                let cluster = match backend.cluster {
                    Some(id) => names
                        .get(&id)
                        .cloned()
                        .unwrap_or(format!("cluster-id {id}")),
                    None => status.cluster.clone(),
                };
                let backends = view.clusters.entry(cluster).or_default();
                let seen = BackendView {
                    address: backend.backend,
                    state: backend.state,
                };
                if !backends.contains(&seen) {
                    backends.push(seen);
                }
            }
        }
    }
    let mut out: Vec<ServiceView> = services.into_values().collect();
    for service in &mut out {
        service.frontends.sort();
        service.clusters.values_mut().for_each(|b| b.sort());
    }
    out
}

#[cfg(test)]
#[path = "mesh_tests.rs"]
mod tests;
