//! The lab: many clusters, nodes and pods on one machine, all in network namespaces, nothing routed to
//! or from the root namespace (see shared/lab.md). [`plan`] computes the topology, [`up`], [`down`]
//! and [`status`] apply it to and read it back from the kernel through iproute2; [`mesh`] runs an etcd
//! per cluster, a stand-in Kubernetes API server per cluster ([`apiserver`]) and an agent per node on
//! it, and has the CNI plugin make its pods ([`cni`]); [`external`] runs the hosts outside every
//! cluster that join one as external workloads; [`demo`] plays Cilium's ClusterMesh demo on such a lab.
//!
//! None of it is in the agent's binary, which runs on production nodes: the binaries `meshpath-lab`
//! and `meshpath-demo` are what `meshpath lab …` and `meshpath demo …` run. They read the agents
//! through `meshpath_api`, and start them with the `meshpath` binary [`agent_binary`] finds.

pub mod agent_binary;
pub mod apiserver;
pub mod capture;
pub mod cni;
pub mod demo;
pub mod down;
pub mod echo;
pub mod external;
pub mod ip;
pub mod mesh;
pub mod pki;
pub mod plan;
pub mod status;
pub mod up;

/// How `meshpath-lab` and `meshpath-demo` print what they report.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}
