//! External workloads: a VM or bare-metal host outside Kubernetes that joins one cluster of the mesh,
//! as Cilium's external workloads do. The agent runs on the host with `mode: external`; the host has
//! no pods and no CNI socket, and is itself the only endpoint the agent serves.
//!
//! Why the host is an endpoint behind the host port: its processes use ordinary kernel sockets, and
//! the kernel routes pod CIDRs and service addresses into the host port ([`super::host_port`]) with
//! the host's own underlay address as source. That address is its address in the mesh (no overlay
//! address of its own, as with Cilium), so the dataplane treats the host port as the endpoint's port:
//! what the host sends carries the endpoint's identity in the VNI and faces its egress policy, what
//! comes for it faces its ingress policy and leaves through the host port to the kernel (see the
//! dataplane's `from_host`). Everything else — identity, publication, tables — is a pod's path.
//!
//! What it publishes, under its own lease in the joined cluster's etcd (mutual TLS, `etcd`), exactly as
//! a node publishes a pod: its node record (its address, no pod CIDRs), the identity of its labels
//! plus `io.kubernetes.pod.namespace` and `io.cilium.k8s.policy.cluster=<joined cluster>`, allocated
//! in that cluster's range, and its IP → identity pair with itself as tunnel endpoint. It never
//! campaigns for the cluster-wide records (those are the cluster's nodes' to write). A planned stop
//! revokes its lease, so that its records go at once ([`leave`] does the same from outside); a host
//! that dies takes them away when its lease expires.
//!
//! What it reads: the joined cluster's nodes, identities, endpoints and global services from that
//! cluster's etcd, watched read-only as a remote named as the joined cluster (its own records left out,
//! [`OwnRecords`]); other clusters through the usual clustermesh directory. The joined cluster's
//! global services are its frontends, with every cluster's backends. Policies that select the host
//! come from the local source (`source.yaml-dir`, CiliumNetworkPolicies and
//! CiliumClusterwideNetworkPolicies only: whatever else the directory holds is left out, logged).
//! When etcd is unreachable the last state stays in force: the remotes' watchers keep their entries
//! for their grace period and the tables keep forwarding.

pub mod leave;
pub mod members;
pub mod section;

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context;
use meshpath_control::clustermesh::config::{MeshConfig, RemoteConfig};
use meshpath_control::clustermesh::RemoteEvent;
use meshpath_control::local::{LocalNode, LocalPod, LocalState, ObjectRef};
use meshpath_control::state::{Entry, EntryKey, StateEvent};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, ClusterId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::AgentConfig;

/// The host's endpoint: `<namespace>/<node name>`.
pub fn endpoint_ref(config: &AgentConfig) -> Option<ObjectRef> {
    let external = config.external.as_ref()?;
    Some(ObjectRef {
        namespace: external.namespace.clone(),
        name: config.node.name.clone(),
    })
}

/// The local state of an external workload: the source's policies, the host as the only node and the
/// only endpoint, nothing else.
pub fn local_state(source: &LocalState, config: &AgentConfig) -> LocalState {
    let Some((external, pod)) = config.external.as_ref().zip(endpoint_ref(config)) else {
        return source.clone();
    };
    let ips: Vec<IpAddr> = own_addresses(config);
    let node = LocalNode {
        name: config.node.name.clone(),
        internal_ips: ips.clone(),
        pod_cidrs: Vec::new(),
        labels: external.labels.clone(),
        wireguard_pub_key: None,
    };
    let endpoint = LocalPod {
        pod: pod.clone(),
        node: Some(config.node.name.clone()),
        labels: external.labels.clone(),
        ips,
        service_account: "default".into(),
        ready: true,
        terminating: false,
    };
    LocalState {
        nodes: [(node.name.clone(), node)].into(),
        pods: [(pod, endpoint)].into(),
        policies: source.policies.clone(),
        ..LocalState::default()
    }
}

fn own_addresses(config: &AgentConfig) -> Vec<IpAddr> {
    let v4 = config.node.ipv4.map(IpAddr::V4);
    v4.into_iter()
        .chain(config.node.ipv6.map(IpAddr::V6))
        .collect()
}

/// Follows the source until `cancel`, sending the external workload's state whenever it changes.
pub fn overlay(
    mut source: watch::Receiver<Arc<LocalState>>,
    config: AgentConfig,
    cancel: CancellationToken,
) -> watch::Receiver<Arc<LocalState>> {
    let first = source.borrow_and_update().clone();
    warn_left_out(&first);
    let (tx, rx) = watch::channel(Arc::new(local_state(&first, &config)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = source.changed() => if changed.is_err() { return },
            }
            let current = source.borrow_and_update().clone();
            warn_left_out(&current);
            let state = local_state(&current, &config);
            tx.send_if_modified(|old| {
                let differs = **old != state;
                if differs {
                    *old = Arc::new(state);
                }
                differs
            });
        }
    });
    rx
}

fn warn_left_out(source: &LocalState) {
    let left_out = source.nodes.len() + source.pods.len() + source.services.len();
    if left_out > 0 {
        tracing::warn!(
            nodes = source.nodes.len(),
            pods = source.pods.len(),
            services = source.services.len(),
            "an external workload's source holds policies only: the rest is left out"
        );
    }
}

/// The joined cluster as a remote of the mesh: its etcd (`etcd`), expected to announce `cluster.id`.
pub fn joined_remote(config: &AgentConfig) -> anyhow::Result<Option<RemoteConfig>> {
    match config.external {
        Some(_) => own_cluster(config),
        None => Ok(None),
    }
}

/// The own cluster's etcd (`etcd`) as a remote's, expected to announce `cluster.id`; none without one.
pub fn own_cluster(config: &AgentConfig) -> anyhow::Result<Option<RemoteConfig>> {
    let Some(etcd) = config.etcd.as_ref() else {
        return Ok(None);
    };
    let name = ClusterName::new(&config.cluster.name)?;
    let tls = super::control::tls_material(etcd)?;
    let tls_paths = [&etcd.trusted_ca_file, &etcd.cert_file, &etcd.key_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    Ok(Some(RemoteConfig {
        path: etcd
            .trusted_ca_file
            .clone()
            .unwrap_or_else(|| name.to_string().into()),
        name,
        endpoints: etcd.endpoints.clone(),
        tls,
        tls_paths,
        expected_id: Some(ClusterId::new(config.cluster.id).context("cluster.id")?),
    }))
}

/// `mesh` (the clustermesh directory's remotes, followed) with the joined cluster among them.
pub fn with_joined(
    mut mesh: Option<watch::Receiver<MeshConfig>>,
    joined: RemoteConfig,
    cancel: CancellationToken,
) -> watch::Receiver<MeshConfig> {
    let merge = move |dir: Option<&MeshConfig>| {
        let mut config = dir.cloned().unwrap_or_default();
        config.remotes.insert(joined.name.clone(), joined.clone());
        config
    };
    let first = merge(
        mesh.as_mut()
            .map(|m| m.borrow_and_update().clone())
            .as_ref(),
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let changed = async {
                match mesh.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                ok = changed => if !ok { return },
            }
            let dir = mesh.as_mut().map(|m| m.borrow_and_update().clone());
            tx.send_replace(merge(dir.as_ref()));
        }
    });
    rx
}

/// The external workload's own records as the joined cluster's watcher reports them: its node and its
/// endpoint are the local state's already, and must not come back as a remote's.
#[derive(Clone, Debug)]
pub struct OwnRecords {
    cluster: ClusterName,
    node: String,
    addresses: Vec<Addr>,
}

impl OwnRecords {
    pub fn of(config: &AgentConfig) -> Option<OwnRecords> {
        config.external.as_ref()?;
        Some(OwnRecords {
            cluster: ClusterName::new(&config.cluster.name).ok()?,
            node: config.node.name.clone(),
            addresses: own_addresses(config).into_iter().map(Addr::from).collect(),
        })
    }

    /// Whether `event` is about this host's own node or endpoint in the joined cluster.
    pub fn contains(&self, event: &RemoteEvent) -> bool {
        if event.cluster != self.cluster {
            return false;
        }
        match &event.event {
            StateEvent::Upsert(Entry::Node(node)) => node.name == self.node,
            StateEvent::Delete(EntryKey::Node(name)) => *name == self.node,
            StateEvent::Upsert(Entry::Endpoint(e)) => self.addresses.contains(&e.ip),
            StateEvent::Delete(EntryKey::Endpoint(ip)) => self.addresses.contains(ip),
            _ => false,
        }
    }
}
