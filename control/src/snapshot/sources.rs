//! What the builder knows: the resolved local state with its indexes, and each remote cluster's state.
//! Applying a change here records which table keys it touched ([`Dirty`]); only those are recomputed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::policy::{IdentityLabels, Labels};
use meshpath_dataplane::{Addr, ClusterId};
use smallvec::SmallVec;

use super::admission::last;
use crate::cluster_name::ClusterName;
use crate::clustermesh::RemoteEvent;
use crate::kvstore::LabelSet;
use crate::local::{LocalNode, ObjectRef};
use crate::resolve::{local_node_addr, parse_cidr, ResolvedLocal};
use crate::state::{
    Cidr, ClusterState, EndpointInfo, Entry, EntryKey, NodeInfo, ServiceName, StateEvent,
};

/// The table keys a batch of changes touched.
#[derive(Debug, Default)]
pub struct Dirty {
    pub prefixes: HashSet<IpPrefix>,
    pub pods: BTreeSet<ObjectRef>,
    pub nodes: HashSet<Addr>,
    pub services: BTreeSet<ServiceName>,
    pub policy: bool,
    /// A pod CIDR of some cluster came or went: every remote claim is weighed again.
    pub claims: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
            && self.pods.is_empty()
            && self.nodes.is_empty()
            && self.services.is_empty()
            && !self.policy
            && !self.claims
    }
}

/// One remote cluster: its state as its watcher emitted it, indexed for admission.
#[derive(Debug, Default)]
pub struct RemoteCluster {
    pub state: ClusterState,
    /// Pod CIDR → the nodes claiming it; the first by name owns it.
    pub cidrs: HashMap<IpPrefix, BTreeSet<String>>,
    /// When each pod CIDR was first claimed, in the order of every cluster's claims.
    pub claimed_at: HashMap<IpPrefix, u64>,
    /// The pod CIDRs admitted, and their mapped lengths (to find the one holding an address).
    pub admitted: HashSet<IpPrefix>,
    pub admitted_lens: BTreeSet<u8>,
    /// Learned from its nodes or identities; tags its service backends.
    pub id: Option<ClusterId>,
    /// Endpoints without a HostIP: their tunnel endpoint is the node whose pod CIDR holds them.
    pub orphans: HashSet<Addr>,
    /// Every endpoint address, in order: those inside a prefix are a range.
    pub endpoint_addrs: BTreeSet<Addr>,
    /// Endpoints by their HostIP.
    pub by_host: HashMap<Addr, HashSet<Addr>>,
    /// Every address of every node, and how many nodes have it.
    pub node_addrs: HashMap<Addr, usize>,
    /// The services that list an address as a backend (their names shared, not copied per backend);
    /// one, held in place, for most addresses.
    pub backends_of: HashMap<Addr, SmallVec<[Arc<ServiceName>; 1]>>,
}

#[derive(Debug, Default)]
pub struct Sources {
    pub local: Arc<ResolvedLocal>,
    pub pods_by_ip: HashMap<Addr, ObjectRef>,
    pub local_cidrs: HashMap<IpPrefix, String>,
    pub slices_by_service: HashMap<ObjectRef, Vec<ObjectRef>>,
    pub remotes: BTreeMap<ClusterName, RemoteCluster>,
    /// Every identity of the mesh with its labels: what policy compiles against.
    pub identities: IdentityLabels,
    /// The order remote pod CIDR claims arrive in.
    next_claim: u64,
}

pub fn cidr_prefix(cidr: &Cidr) -> Option<IpPrefix> {
    IpPrefix::new(cidr.addr, cidr.prefix_len).ok()
}

fn local_cidrs(node: &LocalNode) -> impl Iterator<Item = IpPrefix> + '_ {
    node.pod_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c))
        .filter_map(|c| cidr_prefix(&c))
}

/// The dataplane's form of kvstore labels: keys without their source.
pub fn labels_of(set: &LabelSet) -> Labels {
    set.iter().map(|(k, v)| (k, v.value)).collect()
}

/// Keys present in one map and not the other, or with different values.
fn changed_keys<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> Vec<K> {
    let gone = old.keys().filter(|k| !new.contains_key(*k));
    let differ = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, _)| k);
    gone.chain(differ).cloned().collect()
}

fn service_name(obj: &ObjectRef) -> ServiceName {
    ServiceName {
        namespace: obj.namespace.clone(),
        name: obj.name.clone(),
    }
}

impl Sources {
    /// Replaces the local state; marks what differs from the previous one.
    pub fn set_local(&mut self, new: Arc<ResolvedLocal>, dirty: &mut Dirty) {
        let old = std::mem::replace(&mut self.local, new);
        let new = self.local.clone();
        let (o, n) = (&old.local, &new.local);
        let mut pods = changed_keys(&o.pods, &n.pods);
        pods.extend(changed_keys(&old.pods, &new.pods));
        let changed_nodes: BTreeSet<String> =
            changed_keys(&o.nodes, &n.nodes).into_iter().collect();
        dirty.claims |= !changed_nodes.is_empty();
        for state in [o, n] {
            for name in &changed_nodes {
                if let Some(node) = state.nodes.get(name) {
                    dirty.prefixes.extend(local_cidrs(node));
                    dirty.nodes.extend(local_node_addr(node));
                }
            }
            // A node's address is its pods' tunnel endpoint.
            let moved = state
                .pods
                .values()
                .filter(|p| p.node.as_ref().is_some_and(|n| changed_nodes.contains(n)));
            pods.extend(moved.map(|p| p.pod.clone()));
        }
        for pod in pods {
            for state in [o, n] {
                let ips = state
                    .pods
                    .get(&pod)
                    .map(|p| p.ips.as_slice())
                    .unwrap_or_default();
                dirty
                    .prefixes
                    .extend(ips.iter().map(|ip| IpPrefix::host(Addr::from(*ip))));
            }
            dirty.pods.insert(pod);
        }
        dirty.services.extend(
            changed_keys(&o.services, &n.services)
                .iter()
                .map(service_name),
        );
        for slice in changed_keys(&o.endpoint_slices, &n.endpoint_slices) {
            for state in [o, n] {
                if let Some(s) = state.endpoint_slices.get(&slice) {
                    dirty.services.insert(service_name(&s.service));
                }
            }
        }
        if old.identities != new.identities || o.policies != n.policies {
            dirty.policy = true;
            for id in old.identities.keys() {
                self.identities.remove(id);
            }
            self.identities
                .extend(new.identities.iter().map(|(id, l)| (*id, l.clone())));
        }
        self.index_local();
    }

    fn index_local(&mut self) {
        let local = &self.local.local;
        self.pods_by_ip = local
            .pods
            .values()
            .filter(|p| self.local.pods.contains_key(&p.pod))
            .flat_map(|p| p.ips.iter().map(|ip| (Addr::from(*ip), p.pod.clone())))
            .collect();
        self.local_cidrs = local
            .nodes
            .values()
            .flat_map(|n| local_cidrs(n).map(|c| (c, n.name.clone())))
            .collect();
        self.slices_by_service.clear();
        for slice in local.endpoint_slices.values() {
            let slices = self
                .slices_by_service
                .entry(slice.service.clone())
                .or_default();
            slices.push(slice.slice.clone());
        }
    }

    /// Applies one remote event; marks what it touched.
    pub fn apply_remote(&mut self, event: RemoteEvent, dirty: &mut Dirty) {
        let remote = self.remotes.entry(event.cluster).or_default();
        match event.event {
            StateEvent::Upsert(Entry::Endpoint(e)) => {
                remote.forget_endpoint(e.ip, dirty);
                remote.learn_endpoint(&e, dirty);
                remote.state.upsert(Entry::Endpoint(e));
            }
            StateEvent::Delete(EntryKey::Endpoint(ip)) => {
                remote.forget_endpoint(ip, dirty);
                remote.state.remove(&EntryKey::Endpoint(ip));
            }
            StateEvent::Upsert(Entry::Node(node)) => {
                if let Some(old) = remote.state.nodes.remove(&node.name) {
                    remote.forget_node(&old, dirty);
                }
                remote.learn_node(&node, &mut self.next_claim, dirty);
                remote.state.upsert(Entry::Node(node));
            }
            StateEvent::Delete(EntryKey::Node(name)) => {
                if let Some(old) = remote.state.nodes.remove(&name) {
                    remote.forget_node(&old, dirty);
                }
            }
            StateEvent::Upsert(Entry::Identity(id, labels)) => {
                self.identities.insert(id, labels_of(&labels));
                remote.state.upsert(Entry::Identity(id, labels));
                dirty.policy = true;
            }
            StateEvent::Delete(EntryKey::Identity(id)) => {
                self.identities.remove(&id);
                remote.state.remove(&EntryKey::Identity(id));
                dirty.policy = true;
            }
            StateEvent::Upsert(Entry::Service(s)) => {
                remote.forget_backends(&s.name);
                dirty.services.insert(s.name.clone());
                let name = Arc::new(s.name.clone());
                for backend in &s.backends {
                    let services = remote.backends_of.entry(backend.addr).or_default();
                    if !services.contains(&name) {
                        services.push(name.clone());
                    }
                }
                remote.state.upsert(Entry::Service(s));
            }
            StateEvent::Delete(EntryKey::Service(name)) => {
                remote.forget_backends(&name);
                remote.state.remove(&EntryKey::Service(name.clone()));
                dirty.services.insert(name);
            }
        }
        remote.learn_id(dirty);
    }
}

impl RemoteCluster {
    /// Marks the ipcache entry of the endpoint at `addr` and the services it backs.
    pub fn touch_endpoint(&self, addr: Addr, dirty: &mut Dirty) {
        dirty.prefixes.insert(IpPrefix::host(addr));
        if let Some(services) = self.backends_of.get(&addr) {
            dirty
                .services
                .extend(services.iter().map(|s| ServiceName::clone(s)));
        }
    }

    fn learn_endpoint(&mut self, e: &EndpointInfo, dirty: &mut Dirty) {
        self.touch_endpoint(e.ip, dirty);
        self.endpoint_addrs.insert(e.ip);
        match e.host_ip {
            None => {
                self.orphans.insert(e.ip);
            }
            Some(host) => {
                self.by_host.entry(host).or_default().insert(e.ip);
            }
        }
    }

    fn forget_endpoint(&mut self, ip: Addr, dirty: &mut Dirty) {
        self.touch_endpoint(ip, dirty);
        self.orphans.remove(&ip);
        self.endpoint_addrs.remove(&ip);
        let host = self.state.endpoints.get(&ip).and_then(|e| e.host_ip);
        if let Some(host) = host {
            if let Some(on_host) = self.by_host.get_mut(&host) {
                on_host.remove(&ip);
                if on_host.is_empty() {
                    self.by_host.remove(&host);
                }
            }
        }
    }

    fn forget_backends(&mut self, name: &ServiceName) {
        let Some(old) = self.state.services.get(name) else {
            return;
        };
        for backend in &old.backends {
            if let Some(services) = self.backends_of.get_mut(&backend.addr) {
                services.retain(|s| **s != *name);
                if services.is_empty() {
                    self.backends_of.remove(&backend.addr);
                }
            }
        }
    }

    /// Marks `prefix` and the endpoints without HostIP it holds.
    fn touch_cidr(&self, prefix: IpPrefix, dirty: &mut Dirty) {
        dirty.prefixes.insert(prefix);
        let held = self.orphans.iter().filter(|a| prefix.contains(**a));
        dirty.prefixes.extend(held.map(|a| IpPrefix::host(*a)));
    }

    /// Marks the endpoints whose HostIP is one of `node`'s addresses: whether it is a node changed.
    fn touch_hosted(&self, node: &NodeInfo, dirty: &mut Dirty) {
        for (_, addr) in &node.addresses {
            for ip in self.by_host.get(addr).into_iter().flatten() {
                self.touch_endpoint(*ip, dirty);
            }
        }
    }

    fn learn_node(&mut self, node: &NodeInfo, next_claim: &mut u64, dirty: &mut Dirty) {
        for prefix in node.pod_cidrs.iter().filter_map(cidr_prefix) {
            self.touch_cidr(prefix, dirty);
            self.cidrs
                .entry(prefix)
                .or_default()
                .insert(node.name.clone());
            self.claimed_at.entry(prefix).or_insert_with(|| {
                *next_claim += 1;
                *next_claim
            });
        }
        for (_, addr) in &node.addresses {
            *self.node_addrs.entry(*addr).or_default() += 1;
        }
        self.touch_hosted(node, dirty);
        dirty.nodes.extend(node.tunnel_addr());
        dirty.claims = true;
    }

    fn forget_node(&mut self, node: &NodeInfo, dirty: &mut Dirty) {
        for prefix in node.pod_cidrs.iter().filter_map(cidr_prefix) {
            self.touch_cidr(prefix, dirty);
            if let Some(nodes) = self.cidrs.get_mut(&prefix) {
                nodes.remove(&node.name);
                if nodes.is_empty() {
                    self.cidrs.remove(&prefix);
                    self.claimed_at.remove(&prefix);
                }
            }
        }
        for (_, addr) in &node.addresses {
            if let Some(n) = self.node_addrs.get_mut(addr) {
                *n -= 1;
                if *n == 0 {
                    self.node_addrs.remove(addr);
                }
            }
        }
        self.touch_hosted(node, dirty);
        dirty.nodes.extend(node.tunnel_addr());
        dirty.claims = true;
    }

    /// Takes the newly weighed admitted pod CIDRs; marks the prefixes whose admission changed and
    /// every endpoint inside them.
    pub fn set_admitted(&mut self, now: BTreeSet<IpPrefix>, dirty: &mut Dirty) {
        let changed: Vec<IpPrefix> = self
            .admitted
            .iter()
            .filter(|p| !now.contains(*p))
            .chain(now.iter().filter(|p| !self.admitted.contains(*p)))
            .copied()
            .collect();
        for prefix in &changed {
            dirty.prefixes.insert(*prefix);
            let inside = self.endpoint_addrs.range(prefix.addr()..=last(prefix));
            for ip in inside.filter(|ip| prefix.contains(**ip)) {
                self.touch_endpoint(*ip, dirty);
            }
        }
        self.admitted_lens = now.iter().map(IpPrefix::mapped_len).collect();
        self.admitted = now.into_iter().collect();
    }

    /// The cluster id as its nodes or identities tell it; its services are rebuilt when it changes.
    fn learn_id(&mut self, dirty: &mut Dirty) {
        let from_node = self.state.nodes.values().map(|n| n.cluster_id).next();
        let id = from_node.or_else(|| self.state.identities.keys().find_map(|id| id.cluster()));
        if id != self.id {
            self.id = id;
            dirty.services.extend(self.state.services.keys().cloned());
        }
    }
}
