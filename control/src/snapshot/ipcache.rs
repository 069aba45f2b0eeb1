//! The ipcache entry a prefix should have, from every source that may claim it, in order of trust:
//! this cluster's pods, this cluster's node pod CIDRs, then the remote clusters with their admitted
//! endpoints and pod CIDRs ([`super::admission`]): since those never overlap another cluster's, a
//! remote can never take over a local address, nor another remote's.

use meshpath_dataplane::ipcache::{IpCacheEntry, IpPrefix};
use meshpath_dataplane::{Addr, Identity};

use super::sources::{RemoteCluster, Sources};
use super::NodeSpec;
use crate::local::ObjectRef;
use crate::resolve::local_node_addr;

/// The entry `prefix` should have now; `None` if no source claims it.
pub fn desired(sources: &Sources, spec: &NodeSpec, prefix: &IpPrefix) -> Option<IpCacheEntry> {
    let host = (prefix.mapped_len() == 128).then_some(prefix.addr());
    let local_pod = host
        .and_then(|a| sources.pods_by_ip.get(&a))
        .and_then(|pod| local_pod(sources, spec, pod));
    local_pod
        .or_else(|| local_cidr(sources, spec, prefix))
        .or_else(|| {
            sources.remotes.values().find_map(|remote| {
                let endpoint = host.and_then(|a| remote_endpoint(remote, a));
                endpoint.or_else(|| remote_cidr(remote, prefix))
            })
        })
}

/// The tunnel endpoint of something on local node `name`: none for this node, else its address.
/// `None` when the node has no address: the entry is then left out rather than taken as ours.
fn local_tunnel(sources: &Sources, spec: &NodeSpec, name: &str) -> Option<Option<Addr>> {
    if name == spec.node {
        return Some(None);
    }
    let node = sources.local.local.nodes.get(name)?;
    local_node_addr(node).map(Some)
}

fn local_pod(sources: &Sources, spec: &NodeSpec, pod: &ObjectRef) -> Option<IpCacheEntry> {
    let identity = *sources.local.pods.get(pod)?;
    let node = sources.local.local.pods.get(pod)?.node.as_deref()?;
    Some(IpCacheEntry {
        identity,
        tunnel_endpoint: local_tunnel(sources, spec, node)?,
        cluster: Some(spec.cluster_id),
    })
}

fn local_cidr(sources: &Sources, spec: &NodeSpec, prefix: &IpPrefix) -> Option<IpCacheEntry> {
    let node = sources.local_cidrs.get(prefix)?;
    Some(IpCacheEntry {
        identity: Identity::UNKNOWN,
        tunnel_endpoint: local_tunnel(sources, spec, node)?,
        cluster: Some(spec.cluster_id),
    })
}

fn remote_endpoint(remote: &RemoteCluster, addr: Addr) -> Option<IpCacheEntry> {
    let (endpoint, tunnel) = remote.admitted_endpoint(addr)?.ok()?;
    Some(IpCacheEntry {
        identity: endpoint.identity,
        tunnel_endpoint: Some(tunnel),
        cluster: endpoint.identity.cluster().or(remote.id),
    })
}

fn remote_cidr(remote: &RemoteCluster, prefix: &IpPrefix) -> Option<IpCacheEntry> {
    if !remote.admitted.contains(prefix) {
        return None;
    }
    let owner = remote.cidrs.get(prefix)?.first()?;
    let node = remote.state.nodes.get(owner)?;
    Some(IpCacheEntry {
        identity: Identity::UNKNOWN,
        tunnel_endpoint: Some(node.tunnel_addr()?),
        cluster: Some(node.cluster_id),
    })
}
