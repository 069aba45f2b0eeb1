//! The builder: applies a batch of changes to its sources, then recomputes only the table entries the
//! batch touched, on a clone of the current tables, and returns the new snapshot.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshpath_dataplane::endpoint::Endpoint;
use meshpath_dataplane::policy::{compile_policies, PolicySource};
use meshpath_dataplane::route::{NodeLink, RemoteNode};
use meshpath_dataplane::service::{Frontend, Service, ServiceId};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::wireguard::PublicKey;
use meshpath_dataplane::{Addr, ClusterId, PortId};

use super::admission::AdmissionLog;
use super::sources::{Dirty, Sources};
use super::{ipcache, services, Change, NodeMacs, NodeSpec, PodPorts};
use crate::cluster_name::ClusterName;
use crate::clustermesh::{CidrConflict, StatusBoard};
use crate::local::ObjectRef;
use crate::refusal::RefusalCounts;
use crate::resolve::{local_node_addr, parse_wireguard_key};
use crate::state::ServiceName;

/// What the builder did, and what the tables refused (full tables, address conflicts, bad policy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    pub changes: u64,
    pub snapshots: u64,
    pub ipcache_refused: u64,
    pub endpoints_refused: u64,
    pub nodes_refused: u64,
    pub services_refused: u64,
    /// Policies (or parts) refused in the last compilation: their endpoints are denied.
    pub policy_refused: u64,
}

pub struct SnapshotBuilder {
    spec: NodeSpec,
    sources: Sources,
    /// The port each local pod's endpoint is installed on.
    pods: HashMap<ObjectRef, PortId>,
    /// The frontends each service has in the tables.
    services: HashMap<ServiceName, Vec<Frontend>>,
    /// Stable while a frontend exists.
    service_ids: HashMap<Frontend, ServiceId>,
    next_service_id: u32,
    current: Arc<Tables>,
    stats: BuildStats,
    /// What of the remotes' state the tables refused.
    admission: AdmissionLog,
    /// Since when a policy recompile for remote identities has been put off within a burst.
    policy_pending: Option<Instant>,
    /// The neighbours' MACs the agent resolved on the uplink.
    node_macs: NodeMacs,
}

/// The longest a policy recompile for remote identities waits while a burst is still queued.
const POLICY_DEFERRAL: Duration = Duration::from_secs(1);

impl SnapshotBuilder {
    pub fn new(spec: NodeSpec) -> Self {
        let current = Arc::new(Tables::empty(spec.config.clone(), spec.capacities));
        SnapshotBuilder {
            spec,
            sources: Sources::default(),
            pods: HashMap::new(),
            services: HashMap::new(),
            service_ids: HashMap::new(),
            next_service_id: 1,
            current,
            stats: BuildStats::default(),
            admission: AdmissionLog::default(),
            policy_pending: None,
            node_macs: NodeMacs::new(),
        }
    }

    /// Reports what the tables refuse of each remote into its status on `board`.
    pub fn with_status_board(mut self, board: StatusBoard) -> Self {
        self.admission.set_board(board);
        self
    }

    /// What the tables refuse of `cluster` now, per reason.
    pub fn refused(&self, cluster: &ClusterName) -> RefusalCounts {
        self.admission.counts(cluster)
    }

    /// `cluster`'s pod CIDRs refused for overlapping another cluster's.
    pub fn cidr_conflicts(&self, cluster: &ClusterName) -> Vec<CidrConflict> {
        self.admission.conflicts(cluster)
    }

    pub fn current(&self) -> Arc<Tables> {
        self.current.clone()
    }

    pub fn stats(&self) -> &BuildStats {
        &self.stats
    }

    /// What the builder knows, from which the tables were built.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// Applies a batch; a new snapshot if it changed anything.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Option<Arc<Tables>> {
        self.apply_queued(changes, false)
    }

    /// Applies a batch taken while more changes are `queued` behind it. Within such a burst, a
    /// policy recompile that only remote identities asked for waits for the burst's end (at most
    /// a second): meanwhile their new identities have no grants yet (denied, not
    /// allowed), and a recompile per batch of a 100k-identity burst is not paid. A local change
    /// (endpoints, policies) is always compiled into the same snapshot.
    pub fn apply_queued(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        queued: bool,
    ) -> Option<Arc<Tables>> {
        let mut dirty = Dirty::default();
        let mut local = false;
        for change in changes {
            self.stats.changes += 1;
            match change {
                Change::Local(l) => {
                    local = true;
                    self.sources.set_local(l, &mut dirty);
                }
                Change::Remote(event) => self.sources.apply_remote(event, &mut dirty),
                Change::Ports(ports) => self.set_ports(ports, &mut dirty),
                Change::NodeMacs(macs) => self.set_node_macs(macs, &mut dirty),
            }
        }
        if dirty.policy || self.policy_pending.is_some() {
            let since = *self.policy_pending.get_or_insert_with(Instant::now);
            let defer = queued && !local && since.elapsed() < POLICY_DEFERRAL;
            dirty.policy = !defer;
            if !defer {
                self.policy_pending = None;
            }
        }
        if dirty.is_empty() {
            return None;
        }
        if dirty.claims {
            let spec = &self.spec;
            let verdicts = self
                .sources
                .readmit(&spec.cluster, &spec.admission, &mut dirty);
            self.admission.record_cidrs(&self.sources, &verdicts);
        }
        let mut tables = Tables::clone(&self.current);
        self.update_ipcache(&mut tables, &dirty);
        self.update_nodes(&mut tables, &dirty);
        self.update_endpoints(&mut tables, &dirty.pods);
        for name in &dirty.services {
            self.update_service(&mut tables, name);
            self.admission.record_service(&self.sources, name);
        }
        if dirty.policy {
            self.update_policy(&mut tables);
        }
        self.admission.publish();
        self.current = Arc::new(tables);
        self.stats.snapshots += 1;
        Some(self.current.clone())
    }

    fn set_ports(&mut self, ports: PodPorts, dirty: &mut Dirty) {
        let old = std::mem::replace(&mut self.spec.ports, ports);
        let gone = old.keys().filter(|k| !self.spec.ports.contains_key(*k));
        let changed = self
            .spec
            .ports
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v));
        let touched: Vec<ObjectRef> = gone.chain(changed.map(|(k, _)| k)).cloned().collect();
        dirty.pods.extend(touched);
    }

    fn set_node_macs(&mut self, macs: NodeMacs, dirty: &mut Dirty) {
        let old = std::mem::replace(&mut self.node_macs, macs);
        let new = &self.node_macs;
        let gone = old.keys().filter(|a| !new.contains_key(*a));
        let changed = new.iter().filter(|(a, mac)| old.get(*a) != Some(*mac));
        let touched: Vec<Addr> = gone.copied().chain(changed.map(|(a, _)| *a)).collect();
        dirty.nodes.extend(touched);
    }

    fn update_ipcache(&mut self, tables: &mut Tables, dirty: &Dirty) {
        for prefix in &dirty.prefixes {
            if prefix.mapped_len() == 128 {
                self.admission.record_endpoint(&self.sources, prefix.addr());
            }
            match ipcache::desired(&self.sources, &self.spec, prefix) {
                Some(entry) if tables.ipcache.get(prefix) == Some(&entry) => {}
                Some(entry) => {
                    if let Err(err) = tables.ipcache.insert(*prefix, entry) {
                        self.stats.ipcache_refused += 1;
                        tracing::warn!(%prefix, %err, "ipcache entry refused");
                    }
                }
                None => {
                    tables.ipcache.remove(prefix);
                }
            }
        }
    }

    /// The cluster of another node at `addr`, this one or a remote one, and the WireGuard key it
    /// publishes (none if what it publishes is no key: under strict encryption it is then
    /// unreachable, as a node without one).
    fn node_at(&self, addr: Addr) -> Option<(ClusterId, Option<PublicKey>)> {
        if self.spec.config.owns(addr) {
            return None;
        }
        let mut local = self.sources.local.local.nodes.values();
        let local = local.find(|n| n.name != self.spec.node && local_node_addr(n) == Some(addr));
        if let Some(node) = local {
            let key = node
                .wireguard_pub_key
                .as_deref()
                .and_then(parse_wireguard_key);
            return Some((self.spec.cluster_id, key));
        }
        self.sources.remotes.values().find_map(|r| {
            let mut nodes = r.state.nodes.values();
            let node = nodes.find(|n| n.tunnel_addr() == Some(addr))?;
            let key = node
                .wireguard_pub_key
                .as_deref()
                .and_then(parse_wireguard_key);
            Some((r.id?, key))
        })
    }

    /// Where the node at `addr` sits: on our segment (its MAC resolved or not), or behind the router.
    fn link_to(&self, addr: Addr) -> NodeLink {
        if !self.spec.segments.iter().any(|s| s.contains(addr)) {
            return NodeLink::Routed;
        }
        self.node_macs
            .get(&addr)
            .map_or(NodeLink::Unresolved, |mac| NodeLink::Segment(*mac))
    }

    fn update_nodes(&mut self, tables: &mut Tables, dirty: &Dirty) {
        for addr in &dirty.nodes {
            let Some((cluster, wireguard_key)) = self.node_at(*addr) else {
                tables.nodes.remove(*addr);
                continue;
            };
            let node = RemoteNode {
                addr: *addr,
                cluster,
                link: self.link_to(*addr),
                wireguard_key,
            };
            if let Err(err) = tables.nodes.upsert(node) {
                self.stats.nodes_refused += 1;
                tracing::warn!(%addr, %err, "node refused");
            }
        }
    }

    /// The endpoint a pod of this node should have: it must be attached and have an identity.
    fn desired_endpoint(&self, pod_ref: &ObjectRef) -> Option<Endpoint> {
        let (port, mac) = *self.spec.ports.get(pod_ref)?;
        let pod = self.sources.local.local.pods.get(pod_ref)?;
        if pod.node.as_deref() != Some(self.spec.node.as_str()) {
            return None;
        }
        let identity = *self.sources.local.pods.get(pod_ref)?;
        let v4 = pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        let v6 = pod.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        Some(Endpoint {
            port,
            mac,
            ipv4: v4,
            ipv6: v6,
            identity,
            name: format!("{}/{}", pod_ref.namespace, pod_ref.name).into(),
        })
    }

    /// Removes every touched endpoint before inserting any, so that a port or an address moving
    /// between two pods in one batch is no conflict.
    fn update_endpoints(&mut self, tables: &mut Tables, pods: &BTreeSet<ObjectRef>) {
        let wanted: Vec<(ObjectRef, Option<Endpoint>)> = pods
            .iter()
            .map(|p| (p.clone(), self.desired_endpoint(p)))
            .collect();
        for (pod, endpoint) in &wanted {
            let installed = self
                .pods
                .get(pod)
                .and_then(|port| tables.endpoints.by_port(*port));
            if installed.is_some() && installed == endpoint.as_ref() {
                continue;
            }
            if let Some(port) = self.pods.remove(pod) {
                tables.endpoints.remove(port);
            }
        }
        for (pod, endpoint) in wanted {
            let Some(endpoint) = endpoint else { continue };
            if self.pods.contains_key(&pod) {
                continue;
            }
            let port = endpoint.port;
            match tables.endpoints.insert(endpoint) {
                Ok(()) => {
                    self.pods.insert(pod, port);
                }
                Err(err) => {
                    self.stats.endpoints_refused += 1;
                    tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %err, "endpoint refused");
                }
            }
        }
    }

    fn update_service(&mut self, tables: &mut Tables, name: &ServiceName) {
        let plans = services::desired(&self.sources, &self.spec, name);
        for old in self.services.remove(name).unwrap_or_default() {
            if !plans.iter().any(|(f, _)| *f == old) {
                tables.services.remove(&old);
                self.service_ids.remove(&old);
            }
        }
        let frontends: Vec<Frontend> = plans.iter().map(|(f, _)| *f).collect();
        for (frontend, backends) in plans {
            let same = tables
                .services
                .lookup(&frontend)
                .is_some_and(|s| s.backends() == backends);
            if same {
                continue;
            }
            let next = &mut self.next_service_id;
            let id = *self.service_ids.entry(frontend).or_insert_with(|| {
                *next += 1;
                ServiceId(*next - 1)
            });
            let inserted = Service::new(id, frontend, backends)
                .and_then(|s| tables.services.insert(Arc::new(s)));
            if let Err(err) = inserted {
                self.stats.services_refused += 1;
                tracing::warn!(service = %format!("{}/{}", name.namespace, name.name), %err, "service refused");
            }
        }
        if !frontends.is_empty() {
            self.services.insert(name.clone(), frontends);
        }
    }

    /// Compiles every local policy against every identity of the mesh. It fails closed: what cannot
    /// be enforced as written denies the endpoints it selects (see [`compile_policies`]), and each
    /// refusal is logged when it first appears.
    fn update_policy(&mut self, tables: &mut Tables) {
        let local = &self.sources.local.local;
        let names: Vec<String> = local.policies.keys().map(ToString::to_string).collect();
        let policies: Vec<PolicySource<'_>> = local
            .policies
            .values()
            .zip(&names)
            .map(|(p, name)| PolicySource {
                name,
                rules: &p.rules,
                refused: p.refused.as_deref(),
            })
            .collect();
        let limits = &self.spec.policy_limits;
        let policy = compile_policies(
            &policies,
            &self.sources.identities,
            self.spec.cluster_id,
            limits,
        );
        for refusal in policy.refusals() {
            let known = tables.policy.refusals().iter().any(|r| {
                (&r.policy, &r.why, &r.endpoints)
                    == (&refusal.policy, &refusal.why, &refusal.endpoints)
            });
            if !known {
                tracing::warn!(
                    policy = %refusal.policy,
                    why = %refusal.why,
                    endpoints = refusal.endpoints.len(),
                    ingress = refusal.ingress,
                    egress = refusal.egress,
                    "policy refused: the endpoints it selects are denied"
                );
            }
        }
        self.stats.policy_refused = policy.refusals().len() as u64;
        tables.policy = policy;
    }
}
