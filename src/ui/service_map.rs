//! The service map: flows aggregated into workloads and the edges between them, as Hubble UI draws
//! them. A workload is a pod's app (its `app`, `app.kubernetes.io/name`, `k8s-app` or `name` label,
//! else the pod's own name) in its namespace and cluster, or one of the reserved peers (world, host,
//! remote-node). An edge is every flow of one (source workload, destination workload, destination
//! port, protocol, verdict), drops also by reason, counted as the agents logged them (a flow between
//! two nodes is logged by both, and counted twice when both are read). The map holds at most [`MAX_EDGES`]
//! edges: past that the least recently seen give way and are counted, so a mesh of hundreds of
//! workloads costs the page an aggregated map, never every flow.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use meshpath_api::flow::{Endpoint, Flow, FlowTime, Verdict};
use meshpath_api::DropReason;
use serde::Serialize;

/// Edges kept; the least recently seen give way past it.
pub const MAX_EDGES: usize = 1000;
/// Service frontends remembered per edge (an edge reached through more is still counted).
const MAX_SERVICES_PER_EDGE: usize = 4;

/// The labels that name a pod's workload, in order of preference (Hubble UI's choice).
const APP_LABELS: [&str; 4] = ["app", "app.kubernetes.io/name", "k8s-app", "name"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Pod,
    World,
    Host,
    RemoteNode,
    /// A peer known by its identity alone.
    Identity,
}

/// One box of the map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// Unique on the map: `cluster/namespace/name`, or `world`, `host`, `remote-node`, `identity:N`.
    pub id: String,
    pub kind: WorkloadKind,
    /// Empty for the reserved peers.
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub identity: u32,
}

impl Workload {
    /// The workload a flow's end belongs to.
    pub fn of(end: &Endpoint) -> Workload {
        let reserved = |kind, name: &str| Workload {
            id: name.to_owned(),
            kind,
            cluster: String::new(),
            namespace: String::new(),
            name: name.to_owned(),
            identity: end.identity,
        };
        if end.pod_name.is_empty() {
            return match end.identity {
                1 => reserved(WorkloadKind::Host, "host"),
                2 => reserved(WorkloadKind::World, "world"),
                6 => reserved(WorkloadKind::RemoteNode, "remote-node"),
                0 => reserved(WorkloadKind::Identity, "unknown"),
                id => reserved(WorkloadKind::Identity, &format!("identity:{id}")),
            };
        }
        let app = APP_LABELS.iter().find_map(|key| {
            let label = end
                .labels
                .iter()
                .find(|l| l.key == *key && l.source == "k8s");
            label.map(|l| l.value.clone())
        });
        let name = app.unwrap_or_else(|| end.pod_name.clone());
        Workload {
            id: format!("{}/{}/{name}", end.cluster_name, end.namespace),
            kind: WorkloadKind::Pod,
            cluster: end.cluster_name.clone(),
            namespace: end.namespace.clone(),
            name,
            identity: end.identity,
        }
    }
}

/// The colour an edge is drawn in: green forwarded, red denied by policy, amber dropped otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeColour {
    Forwarded,
    Denied,
    Dropped,
}

impl EdgeColour {
    pub fn of(verdict: Verdict, reason: Option<DropReason>) -> EdgeColour {
        match (verdict, reason) {
            (Verdict::Forwarded, _) => EdgeColour::Forwarded,
            (Verdict::Dropped, Some(DropReason::PolicyDenied)) => EdgeColour::Denied,
            (Verdict::Dropped, _) => EdgeColour::Dropped,
        }
    }

    /// The CSS colour the page draws it in.
    pub const fn css(self) -> &'static str {
        match self {
            EdgeColour::Forwarded => "#2f9e44",
            EdgeColour::Denied => "#e03131",
            EdgeColour::Dropped => "#f08c00",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EdgeKey {
    from: String,
    to: String,
    port: u16,
    protocol: &'static str,
    verdict: Verdict,
    reason: Option<DropReason>,
}

/// One arrow of the map: every flow of one key, counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The destination port (the backend's, for a flow through a service); 0 for ICMP.
    pub port: u16,
    /// `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, or `IP`.
    pub protocol: &'static str,
    pub verdict: Verdict,
    /// Why its flows were dropped, by the stable name …
    pub reason: Option<DropReason>,
    /// … and as Cilium says it (`Policy denied`).
    pub reason_text: Option<&'static str>,
    pub colour: EdgeColour,
    /// `colour` as CSS.
    pub css: &'static str,
    pub flows: u64,
    pub last_seen: FlowTime,
    /// The service frontends its flows were sent to, when a service chose the destination.
    pub services: Vec<SocketAddr>,
}

/// The aggregation of flows into workloads and edges.
#[derive(Clone, Debug, Default)]
pub struct ServiceMap {
    workloads: HashMap<String, Workload>,
    edges: HashMap<EdgeKey, Edge>,
    /// Edges that gave way to newer ones under [`MAX_EDGES`].
    evicted: u64,
    flows: u64,
}

/// The map as the page gets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapView {
    /// Only the workloads some edge touches, by id.
    pub workloads: Vec<Workload>,
    pub edges: Vec<Edge>,
    pub flows: u64,
    pub evicted_edges: u64,
}

impl ServiceMap {
    pub fn add(&mut self, flow: &Flow) {
        self.flows += 1;
        let (from, to) = (Workload::of(&flow.source), Workload::of(&flow.destination));
        let reason = match flow.verdict {
            Verdict::Dropped => flow.extensions.reason,
            Verdict::Forwarded => None,
        };
        let key = EdgeKey {
            from: from.id.clone(),
            to: to.id.clone(),
            port: flow.ports().1,
            protocol: flow.protocol().unwrap_or("IP"),
            verdict: flow.verdict,
            reason,
        };
        if !self.edges.contains_key(&key) && self.edges.len() >= MAX_EDGES {
            self.evict();
        }
        let edge = self.edges.entry(key).or_insert_with_key(|key| {
            let colour = EdgeColour::of(key.verdict, key.reason);
            Edge {
                from: key.from.clone(),
                to: key.to.clone(),
                port: key.port,
                protocol: key.protocol,
                verdict: key.verdict,
                reason: key.reason,
                reason_text: key.reason.map(|r| r.cilium().description),
                colour,
                css: colour.css(),
                flows: 0,
                last_seen: flow.time,
                services: Vec::new(),
            }
        });
        edge.flows += 1;
        edge.last_seen = edge.last_seen.max(flow.time);
        if let Some(service) = flow.extensions.service {
            if !edge.services.contains(&service) && edge.services.len() < MAX_SERVICES_PER_EDGE {
                edge.services.push(service);
            }
        }
        for workload in [from, to] {
            self.workloads.insert(workload.id.clone(), workload);
        }
    }

    /// Makes room: the least recently seen tenth of the edges goes, and the workloads only they
    /// touched with them (one sort per tenth, not one scan per flow).
    fn evict(&mut self) {
        let mut by_age: Vec<(FlowTime, EdgeKey)> = self
            .edges
            .iter()
            .map(|(key, edge)| (edge.last_seen, key.clone()))
            .collect();
        by_age.sort_by_key(|(seen, _)| *seen);
        let gone = (MAX_EDGES / 10).max(1);
        for (_, key) in by_age.into_iter().take(gone) {
            self.edges.remove(&key);
            self.evicted += 1;
        }
        let edges = &self.edges;
        self.workloads
            .retain(|id, _| edges.keys().any(|k| k.from == *id || k.to == *id));
    }

    pub fn view(&self) -> MapView {
        let mut edges: Vec<Edge> = self.edges.values().cloned().collect();
        edges.sort_by(|a, b| (&a.from, &a.to, a.port).cmp(&(&b.from, &b.to, b.port)));
        let touched: BTreeMap<&str, &Workload> = edges
            .iter()
            .flat_map(|e| [e.from.as_str(), e.to.as_str()])
            .filter_map(|id| self.workloads.get(id).map(|w| (id, w)))
            .collect();
        MapView {
            workloads: touched.into_values().cloned().collect(),
            edges,
            flows: self.flows,
            evicted_edges: self.evicted,
        }
    }
}

#[cfg(test)]
#[path = "service_map_tests.rs"]
mod tests;
