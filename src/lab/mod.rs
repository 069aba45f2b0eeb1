//! The lab: many clusters, nodes and pods on one machine, all in network namespaces, nothing routed to
//! or from the root namespace (see shared/lab.md). [`plan`] computes the topology, [`up`], [`down`]
//! and [`status`] apply it to and read it back from the kernel through iproute2; [`mesh`] runs an etcd
//! per cluster and an agent per node on it.

pub mod down;
pub mod ip;
pub mod mesh;
pub mod plan;
pub mod status;
pub mod up;
