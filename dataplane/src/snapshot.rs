//! The tables a worker reads, as one immutable snapshot.
//!
//! The control plane builds a new [`Tables`] for every change (each table is cheap to clone and change:
//! the large ones are sharded behind `Arc`s) and swaps it in; a worker loads the current snapshot once
//! per batch and never sees a table change under it.
//!
//! Every snapshot has a generation of its own: [`Tables::empty`] and every clone (how each new
//! snapshot starts) take the next one. What a worker remembers of a flow's forwarding decision
//! ([`crate::pipeline`]'s fast path) is stamped with the generation it was made under and holds only
//! while that generation is the current one. Tables changed in place, after a worker has seen them
//! (tests do), must be marked with [`Tables::changed`].

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::endpoint::EndpointTable;
use crate::gateway::Gateway;
use crate::ipcache::IpCache;
use crate::masquerade::Masquerade;
use crate::policy::PolicyTable;
use crate::route::{NodeTable, RoutingMode, Underlay};
use crate::service::ServiceTable;
use crate::tunnel::TunnelProtocol;
use crate::wireguard::EncryptionMode;
use crate::{Addr, ClusterId, PortId};

/// This node: who it is and how it is wired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub cluster: ClusterId,
    /// Underlay addresses: where other nodes send tunnel traffic for our pods.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The port towards the underlay.
    pub uplink: PortId,
    pub underlay: Underlay,
    /// The pods' gateway.
    pub gateway: Gateway,
    pub routing: RoutingMode,
    /// What we encapsulate with; we decapsulate both.
    pub tunnel: TunnelProtocol,
    /// The node's own stack: where frames for the node and for the world go, and where the node's
    /// traffic to pods comes from. `None`: such frames are handed back as `Verdict::ToKernel`.
    pub host: Option<HostPort>,
    /// Source NAT for pod traffic leaving the mesh; `None` leaves pod addresses as they are.
    pub masquerade: Option<Masquerade>,
    /// WireGuard between nodes ([`crate::wireguard`]).
    pub encryption: EncryptionMode,
}

/// The port towards the node's own stack: one end of a veth pair whose other end the kernel owns,
/// like Cilium's cilium_net/cilium_host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub port: PortId,
    /// Our end's MAC: the source of frames we hand the kernel.
    pub mac: [u8; 6],
    /// The kernel end's MAC: their destination.
    pub kernel_mac: [u8; 6],
}

impl NodeConfig {
    /// Whether `addr` is one of this node's underlay addresses.
    pub fn owns(&self, addr: Addr) -> bool {
        match addr.ip() {
            std::net::IpAddr::V4(v4) => self.ipv4 == Some(v4),
            std::net::IpAddr::V6(v6) => self.ipv6 == Some(v6),
        }
    }

    /// Whether frames from `port` come from the node's own stack.
    pub fn is_host_port(&self, port: PortId) -> bool {
        self.host.is_some_and(|h| h.port == port)
    }

    /// Our underlay address of the same family as `peer`, to source tunnel traffic to it from.
    pub fn underlay_addr_towards(&self, peer: Addr) -> Option<Addr> {
        if peer.is_ipv4() {
            self.ipv4.map(Addr::from)
        } else {
            self.ipv6.map(Addr::from)
        }
    }
}

/// Everything the pipeline looks up, frozen.
#[derive(Debug)]
pub struct Tables {
    pub node: NodeConfig,
    pub endpoints: EndpointTable,
    pub ipcache: IpCache,
    pub policy: PolicyTable,
    pub services: ServiceTable,
    pub nodes: NodeTable,
    generation: u64,
}

/// The last generation given to a snapshot; never 0, which stamps nothing.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

impl Clone for Tables {
    /// A copy to change into the next snapshot: a generation of its own.
    fn clone(&self) -> Self {
        Tables {
            node: self.node.clone(),
            endpoints: self.endpoints.clone(),
            ipcache: self.ipcache.clone(),
            policy: self.policy.clone(),
            services: self.services.clone(),
            nodes: self.nodes.clone(),
            generation: next_generation(),
        }
    }
}

/// How many entries each table of a new snapshot may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub endpoints: usize,
    pub ipcache: usize,
    pub services: usize,
    pub nodes: usize,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            endpoints: 4096,
            ipcache: 1 << 20,
            services: 1 << 16,
            nodes: 1 << 14,
        }
    }
}

impl Tables {
    /// A node's snapshot with every table empty: no pods, no peers, no policy, no services.
    pub fn empty(node: NodeConfig, capacities: Capacities) -> Self {
        Tables {
            node,
            endpoints: EndpointTable::with_capacity(capacities.endpoints),
            ipcache: IpCache::new(capacities.ipcache),
            policy: PolicyTable::default(),
            services: ServiceTable::new(capacities.services),
            nodes: NodeTable::with_capacity(capacities.nodes),
            generation: next_generation(),
        }
    }

    /// This snapshot's generation, unique to it in this process and never 0.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks tables changed in place (rather than on a clone) with a generation of their own, so
    /// that no worker applies a decision made under what they were before.
    pub fn changed(&mut self) {
        self.generation = next_generation();
    }
}
