//! Identity resolution, between the local source and everything downstream: each pod's labels become a
//! security identity (allocated in this cluster's id range), and the [`LocalState`] becomes this
//! cluster's [`ClusterState`] as the mesh sees it, whose changes are published to the cluster's etcd.
//! The snapshot builder reads the [`ResolvedLocal`] this produces.
//!
//! [`LocalState`]: crate::local::LocalState
//! [`ClusterState`]: crate::state::ClusterState

mod allocator;
mod label_filter;
mod labels;
mod resolver;
mod view;

pub use allocator::{IdentitySource, MemoryAllocator};
pub use label_filter::identity_relevant;
pub use labels::{identity_labels, label_set, LABEL_SOURCE};
pub use resolver::{resolve_known, ResolveError, ResolvedLocal, Resolver};
pub use view::{local_node_addr, mesh_view, node_share, parse_cidr, parse_wireguard_key, serving};
