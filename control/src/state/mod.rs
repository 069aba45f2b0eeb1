//! One cluster's state as the mesh sees it: nodes, endpoints (IP → identity and the node to tunnel to),
//! identities (id → labels) and services, in keyed maps, plus the change events between two states.
//! Remote watchers fold kvstore values into a [`ClusterState`] and emit [`StateEvent`]s; a later stage
//! turns states into dataplane snapshots.

mod convert;

use std::collections::HashMap;
use std::sync::Arc;

use meshpath_dataplane::{Addr, ClusterId, Identity};

use crate::kvstore::{Kind, LabelSet};

pub use convert::ConvertError;

/// How a node address is used (Cilium's `Type`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeAddressKind {
    Internal,
    External,
    CiliumInternal,
    Other(String),
}

/// An address prefix: a pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Addr,
    pub prefix_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub cluster_id: ClusterId,
    pub addresses: Vec<(NodeAddressKind, Addr)>,
    pub pod_cidrs: Vec<Cidr>,
    pub health_ips: Vec<Addr>,
    pub encryption_key: u8,
    pub wireguard_pub_key: Option<String>,
}

impl NodeInfo {
    /// The underlay address to tunnel to: the first InternalIP, else the first address.
    pub fn tunnel_addr(&self) -> Option<Addr> {
        let internal = self
            .addresses
            .iter()
            .find(|(kind, _)| *kind == NodeAddressKind::Internal);
        internal.or(self.addresses.first()).map(|(_, addr)| *addr)
    }
}

/// An endpoint address, its security identity and the node that hosts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Addr,
    pub identity: Identity,
    pub host_ip: Option<Addr>,
    pub namespace: String,
    pub pod_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

/// One address and port of a service, frontend or backend.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    pub addr: Addr,
    /// Shared by the ports of one service that bear the same name (its backends repeat a few).
    pub port_name: Arc<str>,
    pub protocol: u8,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: ServiceName,
    pub frontends: Vec<ServicePort>,
    pub backends: Vec<ServicePort>,
    pub shared: bool,
    pub include_external: bool,
    pub selector: Vec<(String, String)>,
}

/// One entry of any kind. Its payload is shared, not copied, between the states and events that
/// hold it: the agent keeps a remote cluster in three states (the watcher's mirror, the snapshot
/// builder's sources, the last known state), and at 100k endpoints a copy each cost ~25 MB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Node(Arc<NodeInfo>),
    Endpoint(Arc<EndpointInfo>),
    Identity(Identity, LabelSet),
    Service(Arc<ServiceInfo>),
}

/// What names an entry within its cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKey {
    Node(String),
    Endpoint(Addr),
    Identity(Identity),
    Service(ServiceName),
}

/// A change to a cluster's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateEvent {
    Upsert(Entry),
    Delete(EntryKey),
}

impl Entry {
    pub fn key(&self) -> EntryKey {
        match self {
            Entry::Node(n) => EntryKey::Node(n.name.clone()),
            Entry::Endpoint(e) => EntryKey::Endpoint(e.ip),
            Entry::Identity(id, _) => EntryKey::Identity(*id),
            Entry::Service(s) => EntryKey::Service(s.name.clone()),
        }
    }
}

impl EntryKey {
    pub fn kind(&self) -> Kind {
        match self {
            EntryKey::Node(_) => Kind::Nodes,
            EntryKey::Endpoint(_) => Kind::Endpoints,
            EntryKey::Identity(_) => Kind::Identities,
            EntryKey::Service(_) => Kind::Services,
        }
    }
}

impl StateEvent {
    pub fn kind(&self) -> Kind {
        match self {
            StateEvent::Upsert(entry) => entry.key().kind(),
            StateEvent::Delete(key) => key.kind(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub nodes: HashMap<String, Arc<NodeInfo>>,
    pub endpoints: HashMap<Addr, Arc<EndpointInfo>>,
    pub identities: HashMap<Identity, LabelSet>,
    pub services: HashMap<ServiceName, Arc<ServiceInfo>>,
}

impl ClusterState {
    /// Inserts or replaces; `true` if the state changed.
    pub fn upsert(&mut self, entry: Entry) -> bool {
        match entry {
            Entry::Node(n) => replace(&mut self.nodes, n.name.clone(), n),
            Entry::Endpoint(e) => replace(&mut self.endpoints, e.ip, e),
            Entry::Identity(id, labels) => replace(&mut self.identities, id, labels),
            Entry::Service(s) => replace(&mut self.services, s.name.clone(), s),
        }
    }

    /// Removes; `true` if the entry was there.
    pub fn remove(&mut self, key: &EntryKey) -> bool {
        match key {
            EntryKey::Node(name) => self.nodes.remove(name).is_some(),
            EntryKey::Endpoint(ip) => self.endpoints.remove(ip).is_some(),
            EntryKey::Identity(id) => self.identities.remove(id).is_some(),
            EntryKey::Service(name) => self.services.remove(name).is_some(),
        }
    }

    /// Applies one event; `true` if the state changed.
    pub fn apply(&mut self, event: StateEvent) -> bool {
        match event {
            StateEvent::Upsert(entry) => self.upsert(entry),
            StateEvent::Delete(key) => self.remove(&key),
        }
    }

    /// A copy of the entry at `key`.
    pub fn get(&self, key: &EntryKey) -> Option<Entry> {
        match key {
            EntryKey::Node(name) => self.nodes.get(name).cloned().map(Entry::Node),
            EntryKey::Endpoint(ip) => self.endpoints.get(ip).cloned().map(Entry::Endpoint),
            EntryKey::Identity(id) => self
                .identities
                .get(id)
                .map(|labels| Entry::Identity(*id, labels.clone())),
            EntryKey::Service(name) => self.services.get(name).cloned().map(Entry::Service),
        }
    }

    pub fn contains(&self, key: &EntryKey) -> bool {
        match key {
            EntryKey::Node(name) => self.nodes.contains_key(name),
            EntryKey::Endpoint(ip) => self.endpoints.contains_key(ip),
            EntryKey::Identity(id) => self.identities.contains_key(id),
            EntryKey::Service(name) => self.services.contains_key(name),
        }
    }

    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Nodes => self.nodes.len(),
            Kind::Endpoints => self.endpoints.len(),
            Kind::Identities => self.identities.len(),
            Kind::Services => self.services.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        Kind::ALL.iter().all(|kind| self.count(*kind) == 0)
    }

    /// The keys of one kind.
    pub fn keys_of(&self, kind: Kind) -> Vec<EntryKey> {
        match kind {
            Kind::Nodes => self.nodes.keys().cloned().map(EntryKey::Node).collect(),
            Kind::Endpoints => self
                .endpoints
                .keys()
                .copied()
                .map(EntryKey::Endpoint)
                .collect(),
            Kind::Identities => self
                .identities
                .keys()
                .copied()
                .map(EntryKey::Identity)
                .collect(),
            Kind::Services => self
                .services
                .keys()
                .cloned()
                .map(EntryKey::Service)
                .collect(),
        }
    }

    /// Every entry, as upserts.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let nodes = self.nodes.values().cloned().map(Entry::Node);
        let endpoints = self.endpoints.values().cloned().map(Entry::Endpoint);
        let identities = self
            .identities
            .iter()
            .map(|(id, l)| Entry::Identity(*id, l.clone()));
        let services = self.services.values().cloned().map(Entry::Service);
        nodes.chain(endpoints).chain(identities).chain(services)
    }

    /// The events that turn `self` into `new`: deletes for leftovers, upserts for what is new or changed.
    pub fn diff(&self, new: &ClusterState) -> Vec<StateEvent> {
        let mut events = Vec::new();
        for kind in Kind::ALL {
            let gone = self.keys_of(kind).into_iter().filter(|k| !new.contains(k));
            events.extend(gone.map(StateEvent::Delete));
        }
        events.extend(
            new.entries()
                .filter(|e| !self.holds(e))
                .map(StateEvent::Upsert),
        );
        events
    }

    /// `true` if this exact entry is present.
    pub fn holds(&self, entry: &Entry) -> bool {
        match entry {
            Entry::Node(n) => self.nodes.get(&n.name) == Some(n),
            Entry::Endpoint(e) => self.endpoints.get(&e.ip) == Some(e),
            Entry::Identity(id, labels) => self.identities.get(id) == Some(labels),
            Entry::Service(s) => self.services.get(&s.name) == Some(s),
        }
    }
}

fn replace<K: std::hash::Hash + Eq, V: PartialEq>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
