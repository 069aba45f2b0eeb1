//! The node the pipeline targets run on: the dataplane's tiny testbed (node 1 of cluster1, two client
//! pods, remote endpoints in cluster2, services balanced to them, identity policy) plus a dual-stack
//! pod and a remote IPv6 endpoint, so that IPv6 and neighbour discovery have somewhere to go.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use meshpath_dataplane::endpoint::Endpoint;
use meshpath_dataplane::ipcache::{IpCacheEntry, IpPrefix};
use meshpath_dataplane::testbed::{self, Scale, Testbed};
use meshpath_dataplane::{ClusterId, Identity, PortId, WorkerState};

/// Conntrack of a fuzzed worker: room for the warmed flows and some more, small enough to fill.
pub const CONNTRACK_CAPACITY: usize = 64;
pub const DUAL_STACK_PORT: PortId = PortId(3);
pub const DUAL_STACK_MAC: [u8; 6] = [0x02, 0, 0, 1, 1, 3];
pub const DUAL_STACK_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 13);
pub const DUAL_STACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 1, 0, 0, 0, 0, 13);
/// A remote endpoint of cluster2 with an IPv6 address, behind the testbed's first remote node.
pub const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x65, 0, 0, 0, 0, 0, 1);

pub fn bed() -> &'static Testbed {
    static BED: OnceLock<Testbed> = OnceLock::new();
    BED.get_or_init(build)
}

/// A worker of the bed whose conntrack holds the testbed's live service flows.
pub fn worker() -> WorkerState {
    bed().warmed_worker(CONNTRACK_CAPACITY)
}

/// Whether `port` is one of the bed's: the uplink or a pod.
pub fn has_port(port: PortId) -> bool {
    port == testbed::UPLINK || bed().tables.endpoints.by_port(port).is_some()
}

fn build() -> Testbed {
    let mut bed = Testbed::new(Scale::TINY);
    let identity = Identity::new(0x1_0180).expect("an identity of cluster1");
    let pod = Endpoint {
        port: DUAL_STACK_PORT,
        mac: DUAL_STACK_MAC,
        ipv4: Some(DUAL_STACK_V4),
        ipv6: Some(DUAL_STACK_V6),
        identity,
        name: "default/dual-stack".into(),
    };
    let t = &mut bed.tables;
    t.endpoints.insert(pod).expect("room for a third pod");
    let local = IpCacheEntry {
        identity,
        tunnel_endpoint: None,
        cluster: ClusterId::new(1),
    };
    for addr in [DUAL_STACK_V4.into(), DUAL_STACK_V6.into()] {
        t.ipcache
            .insert(IpPrefix::host(addr), local)
            .expect("room in the ipcache");
    }
    let remote = t
        .ipcache
        .lookup(testbed::remote_ip(0).into())
        .copied()
        .expect("the testbed's first remote endpoint");
    t.ipcache
        .insert(IpPrefix::host(REMOTE_V6.into()), remote)
        .expect("room in the ipcache");
    bed
}
