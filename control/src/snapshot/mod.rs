//! The snapshot builder, between the control plane's state and the workers: this node's spec, the
//! resolved local state and every remote cluster's events become immutable [`Tables`] that the workers
//! load once per batch. Each coalesced batch of changes is applied to a clone of the current tables
//! (the big tables are sharded behind `Arc`s, so one change copies one shard) and handed to a
//! [`SnapshotSink`] as a new `Arc<Tables>`: a worker never sees a half-applied change.
//!
//! [`sources`] keeps what the builder knows and marks what a change touches; [`admission`] decides
//! what of each remote cluster is believed; [`ipcache`], [`services`] and [`builder`] turn the
//! touched keys into table entries; [`driver`] is the loop, on a thread of its own.
//! A remote event costs work in proportion to what it touches; a new local state (the local source
//! hands over whole states) is compared with the previous one map by map, in proportion to its size.

pub mod admission;
pub mod builder;
pub mod driver;
pub mod ipcache;
pub mod services;
pub mod sources;

#[cfg(test)]
mod admission_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::policy::PolicyLimits;
use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
use meshpath_dataplane::{Addr, ClusterId, PortId};

use crate::cluster_name::ClusterName;
use crate::clustermesh::RemoteEvent;
use crate::local::ObjectRef;
use crate::resolve::ResolvedLocal;

pub use admission::AdmissionRules;
pub use builder::{BuildStats, SnapshotBuilder};
pub use driver::{run_builder, spawn_builder, SnapshotSink};

/// The pods attached to this node: their port and MAC. The agent fills it as it wires pods up.
pub type PodPorts = BTreeMap<ObjectRef, (PortId, [u8; 6])>;

/// This node, as the builder needs to know it.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    /// This node's name in the local state.
    pub node: String,
    pub config: NodeConfig,
    pub capacities: Capacities,
    pub ports: PodPorts,
    /// With affinity `local`, remote backends join once the fraction of local backends that are ready
    /// falls below this. 0.0 is Cilium's behaviour: only when no local backend is ready.
    pub local_affinity_threshold: f64,
    pub policy_limits: PolicyLimits,
    /// What a remote's pod CIDRs must be to be admitted.
    pub admission: AdmissionRules,
    /// The prefixes of the uplink's L2 segment: a node with an address inside one is our
    /// neighbour, reached at its MAC once [`Change::NodeMacs`] has it; every other node is behind the
    /// underlay router.
    pub segments: Vec<IpPrefix>,
    /// This node is an external workload (a VM or bare-metal host) that joined the cluster
    /// `cluster`: the remote of that name is the cluster itself, whose exported services are its
    /// frontends (see [`services`]).
    pub external_workload: bool,
}

/// One input change.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new resolved local state, replacing the previous one.
    Local(Arc<ResolvedLocal>),
    /// A change in one remote cluster.
    Remote(RemoteEvent),
    /// A new set of pods attached to this node.
    Ports(PodPorts),
    /// The MACs of the nodes on our segment, as the uplink's neighbour table resolved them: the whole
    /// set, replacing the previous one.
    NodeMacs(NodeMacs),
}

/// Underlay address → MAC on the uplink, of the neighbours resolved.
pub type NodeMacs = BTreeMap<Addr, [u8; 6]>;
