//! The meshpath control plane: a tokio task that gathers local state (Kubernetes watchers or YAML files),
//! publishes it to the cluster's own etcd, watches every remote cluster's etcd read-only, and merges it all
//! into immutable [`meshpath_dataplane`] table snapshots for the workers.
//!
//! Modules: [`kvstore`] (Cilium's key layout and values), [`state`] (one cluster's state as the mesh sees
//! it, and its change events), [`clustermesh`] (remote clusters: configuration directory, one watcher task
//! per remote, status), [`publish`] (this agent's state into its own cluster's etcd, under a lease),
//! [`identity_alloc`] (cluster-wide identities through etcd transactions) and [`etcd`] (connecting, listing).
//!
//! Not here: anything on the packet path. Not yet here: the Kubernetes watchers, the YAML local source and
//! the turning of [`state::ClusterState`] into dataplane snapshots.

pub mod cluster_name;
pub mod clustermesh;
pub mod etcd;
pub mod identity_alloc;
pub mod kvstore;
pub mod local;
pub mod publish;
pub mod refusal;
pub mod resolve;
pub mod snapshot;
pub mod state;
pub mod yaml;

pub use cluster_name::{ClusterName, ClusterNameError};
