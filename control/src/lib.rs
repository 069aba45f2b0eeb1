//! The meshpath control plane: a tokio task that gathers local state (Kubernetes watchers or YAML files),
//! publishes it to the cluster's own etcd, watches every remote cluster's etcd read-only, and merges it all
//! into immutable [`meshpath_dataplane`] table snapshots for the workers.
//!
//! Not here: anything on the packet path.
