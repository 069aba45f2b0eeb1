//! The meshpath control plane: a tokio task that gathers local state (Kubernetes watchers or YAML files),
//! publishes it to the cluster's own etcd, watches every remote cluster's etcd read-only, and merges it all
//! into immutable [`meshpath_dataplane`] table snapshots for the workers.
//!
//! Modules: [`kvstore`] (Cilium's key layout and values), [`state`] (one cluster's state as the mesh sees
//! it, and its change events), [`clustermesh`] (remote clusters: configuration directory, one watcher task
//! per remote, their limits, status), [`refusal`] (why something a remote wrote is not believed),
//! [`publish`] (this agent's state into its own cluster's etcd, under a lease), [`identity_alloc`]
//! (cluster-wide identities through etcd transactions), [`etcd`] (connecting, listing), [`local`] (this
//! cluster's state from Kubernetes or YAML files), [`resolve`] (identities and this cluster's mesh view),
//! [`snapshot`] (the table builder, with what it admits of each remote) and [`yaml`] (reading YAML).
//!
//! Not here: anything on the packet path.

pub mod cluster_name;
pub mod clustermesh;
pub mod etcd;
pub mod identity_alloc;
pub mod identity_gc;
pub mod kvstore;
pub mod last_known;
pub mod local;
pub mod publish;
pub mod refusal;
pub mod resolve;
pub mod snapshot;
pub mod state;
pub mod yaml;

pub use cluster_name::{ClusterName, ClusterNameError};
