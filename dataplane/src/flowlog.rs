//! The flow log: what the pipeline decided about each new flow and each dropped frame, kept per
//! worker for `meshpath observe`.
//!
//! The pipeline records an event at the end of a burst (one store of a small `Copy` value); the
//! worker's owner drains the log after each batch. The log is a ring allocated once: when the owner
//! falls behind, the oldest events are overwritten and counted, and the packet path never waits.

use crate::identity::Identity;
use crate::parse::{self, L4};
use crate::snapshot::Tables;
use crate::stats::Forward;
use crate::{Addr, DropReason, FlowKey, Frame};

/// Which side of the node a frame came in from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a pod of this node.
    FromPod,
    /// Received on the uplink: from another node, or from outside the mesh.
    FromUplink,
    /// Sent by the node's own stack through the host port.
    FromHost,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::FromPod => "from_pod",
            Direction::FromUplink => "from_uplink",
            Direction::FromHost => "from_host",
        }
    }
}

/// What the pipeline made of a flow: forwarded how, or dropped why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowVerdict {
    Forwarded(Forward),
    Dropped(DropReason),
}

/// One decision of the pipeline about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// The worker's monotonic clock, in milliseconds.
    pub time_ms: u64,
    /// The 5-tuple as received (before service translation); zero if the frame did not parse.
    pub flow: FlowKey,
    /// The transport as received: TCP flags, ICMP message (`L4::None` if the frame did not parse).
    pub l4: L4,
    /// The backend address and port, when a service was balanced.
    pub backend: Option<(Addr, u16)>,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    pub verdict: FlowVerdict,
    pub direction: Direction,
}

impl FlowEvent {
    /// The event for a frame dropped before it was tracked (anti-spoofing, decapsulation, parsing):
    /// the 5-tuple is read again from the frame as it is, identities from what the tables know.
    /// Only drops pay for this.
    pub fn early_drop(
        tables: &Tables,
        frame: &Frame<'_>,
        reason: DropReason,
        time_ms: u64,
    ) -> Self {
        let direction = if frame.port() == tables.node.uplink {
            Direction::FromUplink
        } else if tables.node.is_host_port(frame.port()) {
            Direction::FromHost
        } else {
            Direction::FromPod
        };
        let (flow, l4) =
            parse::parse(frame.data()).map_or((FlowKey::default(), L4::None), |p| (p.flow, p.l4));
        let ipcache_identity = |addr: Addr| {
            tables
                .ipcache
                .lookup(addr)
                .map_or(Identity::UNKNOWN, |e| e.identity)
        };
        let src_identity = match direction {
            Direction::FromUplink => ipcache_identity(flow.src),
            Direction::FromHost if tables.node.owns(flow.src) => Identity::HOST,
            Direction::FromHost => Identity::WORLD,
            Direction::FromPod => tables
                .endpoints
                .by_port(frame.port())
                .map_or(Identity::UNKNOWN, |e| e.identity),
        };
        let dst_identity = match tables.endpoints.by_addr(flow.dst) {
            Some(endpoint) => endpoint.identity,
            None => ipcache_identity(flow.dst),
        };
        FlowEvent {
            time_ms,
            flow,
            l4,
            backend: None,
            src_identity,
            dst_identity,
            verdict: FlowVerdict::Dropped(reason),
            direction,
        }
    }
}

/// A fixed-capacity ring of flow events, oldest first.
#[derive(Debug)]
pub struct FlowLog {
    events: Box<[FlowEvent]>,
    /// Index of the oldest event.
    head: usize,
    len: usize,
    overwritten: u64,
}

/// Events a worker keeps between two drains by default: several batches' worth.
pub const DEFAULT_CAPACITY: usize = 1024;

const EMPTY: FlowEvent = FlowEvent {
    time_ms: 0,
    flow: FlowKey {
        src: Addr::from_v6_bits(0),
        dst: Addr::from_v6_bits(0),
        src_port: 0,
        dst_port: 0,
        proto: 0,
    },
    l4: L4::None,
    backend: None,
    src_identity: Identity::UNKNOWN,
    dst_identity: Identity::UNKNOWN,
    verdict: FlowVerdict::Forwarded(Forward::ToKernel),
    direction: Direction::FromPod,
};

impl FlowLog {
    /// A log holding up to `capacity` events (at least one); all its memory is allocated here.
    pub fn new(capacity: usize) -> Self {
        FlowLog {
            events: vec![EMPTY; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
            overwritten: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.events.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events lost because the log was full when they were recorded.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    /// Appends an event; when full, the oldest one makes room.
    pub fn record(&mut self, event: FlowEvent) {
        let capacity = self.events.len();
        let tail = (self.head + self.len) % capacity;
        if let Some(slot) = self.events.get_mut(tail) {
            *slot = event;
        }
        if self.len == capacity {
            self.head = (self.head + 1) % capacity;
            self.overwritten += 1;
        } else {
            self.len += 1;
        }
    }

    /// Takes the oldest event out.
    pub fn pop(&mut self) -> Option<FlowEvent> {
        if self.len == 0 {
            return None;
        }
        let event = self.events.get(self.head).copied();
        self.head = (self.head + 1) % self.events.len();
        self.len -= 1;
        event
    }

    /// Takes every event out, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = FlowEvent> + '_ {
        std::iter::from_fn(move || self.pop())
    }

    /// Where the events live: the same for the log's whole life.
    #[cfg(test)]
    fn storage(&self) -> *const FlowEvent {
        self.events.as_ptr()
    }
}

impl Default for FlowLog {
    fn default() -> Self {
        FlowLog::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(n: u64) -> FlowEvent {
        FlowEvent {
            time_ms: n,
            verdict: if n % 2 == 0 {
                FlowVerdict::Dropped(DropReason::PolicyDenied)
            } else {
                FlowVerdict::Forwarded(Forward::Tunnel)
            },
            ..EMPTY
        }
    }

    #[test]
    fn keeps_order_and_drops_oldest_when_full() {
        let mut log = FlowLog::new(3);
        for n in 1..=5 {
            log.record(event(n));
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.overwritten(), 2);
        let times: Vec<u64> = log.drain().map(|e| e.time_ms).collect();
        assert_eq!(times, [3, 4, 5]);
        assert!(log.is_empty());
        assert_eq!(log.pop(), None);
    }

    #[test]
    fn never_reallocates_after_creation() {
        let mut log = FlowLog::new(8);
        let storage = log.storage();
        for n in 0..1000 {
            log.record(event(n));
            if n % 7 == 0 {
                let _ = log.drain().count();
            }
        }
        assert_eq!(log.storage(), storage);
        assert_eq!(log.capacity(), 8);
    }

    #[test]
    fn zero_capacity_still_holds_the_latest() {
        let mut log = FlowLog::new(0);
        log.record(event(1));
        log.record(event(2));
        assert_eq!(log.pop().map(|e| e.time_ms), Some(2));
    }

    mod through_the_pipeline {
        use super::*;
        use crate::conntrack::{ConntrackConfig, Timeouts};
        use crate::endpoint::Endpoint;
        use crate::flow::proto;
        use crate::gateway::Gateway;
        use crate::pipeline::{process_one, WorkerState};
        use crate::route::{RoutingMode, Underlay};
        use crate::snapshot::{Capacities, NodeConfig};
        use crate::tunnel::TunnelProtocol;
        use crate::{ClusterId, PortId, Verdict};
        use std::net::Ipv4Addr;

        const GATEWAY_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 1];

        pub(super) fn pod(i: u8) -> (PortId, [u8; 6], Ipv4Addr, Identity) {
            let identity = Identity::new(0x1_0100 + u32::from(i)).unwrap();
            (
                PortId(u16::from(i)),
                [2, 0, 0, 1, 1, i],
                Ipv4Addr::new(100, 64, 1, 10 + i),
                identity,
            )
        }

        pub(super) fn tables() -> Tables {
            let node = NodeConfig {
                cluster: ClusterId::new(1).unwrap(),
                ipv4: Some(Ipv4Addr::new(198, 18, 1, 1)),
                ipv6: None,
                uplink: PortId(0),
                underlay: Underlay {
                    mac: [2, 0, 0, 1, 0, 1],
                    router_mac: [2, 0, 0, 0, 0, 0xfe],
                    mtu: 1500,
                },
                gateway: Gateway { mac: GATEWAY_MAC },
                routing: RoutingMode::Tunnel,
                tunnel: TunnelProtocol::Vxlan,
                host: None,
                masquerade: None,
                encryption: Default::default(),
            };
            let mut t = Tables::empty(node, Capacities::default());
            for i in [1, 2] {
                let (port, mac, ip, identity) = pod(i);
                t.endpoints
                    .insert(Endpoint {
                        port,
                        mac,
                        ipv4: Some(ip),
                        ipv6: None,
                        identity,
                        name: "default/p".into(),
                    })
                    .unwrap();
            }
            t
        }

        fn udp(mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
            udp_to(mac, src, dst, 53)
        }

        pub(super) fn udp_to(mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
            let builder = etherparse::PacketBuilder::ethernet2(mac, GATEWAY_MAC)
                .ipv4(src.octets(), dst.octets(), 64)
                .udp(40000, port);
            let mut frame = Vec::new();
            builder.write(&mut frame, b"hello").unwrap();
            frame
        }

        pub(super) fn run(
            t: &Tables,
            s: &mut WorkerState,
            port: PortId,
            bytes: &[u8],
            now: u64,
        ) -> Verdict {
            let mut buf = bytes.to_vec();
            let len = buf.len();
            let mut frame = Frame::new(&mut buf, 0, len, port).unwrap();
            process_one(t, s, now, &mut frame)
        }

        #[test]
        fn records_new_flows_and_drops_but_not_established_packets() {
            let t = tables();
            let mut s = WorkerState::new(ConntrackConfig {
                capacity: 1024,
                timeouts: Timeouts::default(),
                endpoint_quota: None,
            });
            let (port1, mac1, ip1, id1) = pod(1);
            let (_, _, ip2, id2) = pod(2);
            let frame = udp(mac1, ip1, ip2);
            assert_eq!(
                run(&t, &mut s, port1, &frame, 5),
                Verdict::Transmit(PortId(2))
            );
            assert_eq!(
                run(&t, &mut s, port1, &frame, 6),
                Verdict::Transmit(PortId(2))
            );
            let spoofed = udp(mac1, Ipv4Addr::new(100, 64, 1, 99), ip2);
            assert_eq!(
                run(&t, &mut s, port1, &spoofed, 7),
                Verdict::Drop(DropReason::SpoofedSource)
            );
            let events: Vec<FlowEvent> = s.flowlog.drain().collect();
            assert_eq!(events.len(), 2, "{events:?}");
            let new_flow = FlowKey {
                src: ip1.into(),
                dst: ip2.into(),
                src_port: 40000,
                dst_port: 53,
                proto: proto::UDP,
            };
            assert_eq!(
                events[0],
                FlowEvent {
                    time_ms: 5,
                    flow: new_flow,
                    l4: parse::L4::Udp,
                    backend: None,
                    src_identity: id1,
                    dst_identity: id2,
                    verdict: FlowVerdict::Forwarded(Forward::LocalPod),
                    direction: Direction::FromPod,
                }
            );
            assert_eq!(events[1].time_ms, 7);
            assert_eq!(
                events[1].flow.src,
                Addr::from(Ipv4Addr::new(100, 64, 1, 99))
            );
            assert_eq!(events[1].src_identity, id1, "named after the port's pod");
            assert_eq!(
                events[1].verdict,
                FlowVerdict::Dropped(DropReason::SpoofedSource)
            );
        }
    }

    mod through_a_service {
        use super::through_the_pipeline::*;
        use super::*;
        use crate::conntrack::{ConntrackConfig, Timeouts};
        use crate::flow::proto;
        use crate::pipeline::WorkerState;
        use crate::service::{Backend, BackendState, Frontend, Service, ServiceId};
        use crate::{PortId, Verdict};
        use std::net::Ipv4Addr;
        use std::sync::Arc;

        const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 255, 10);

        fn add_service(t: &mut Tables, id: u32, port: u16, backend: Option<Ipv4Addr>) {
            let frontend = Frontend {
                addr: VIP.into(),
                port,
                proto: proto::UDP,
            };
            let backends = backend
                .map(|ip| Backend {
                    addr: ip.into(),
                    port: 5353,
                    state: BackendState::Active,
                    cluster: None,
                })
                .into_iter()
                .collect();
            let service = Service::new(ServiceId(id), frontend, backends).unwrap();
            t.services.insert(Arc::new(service)).unwrap();
        }

        #[test]
        fn records_the_backend_a_service_chose_and_a_service_without_one() {
            let mut t = tables();
            let (port1, mac1, ip1, id1) = pod(1);
            let (_, _, ip2, id2) = pod(2);
            add_service(&mut t, 1, 53, Some(ip2));
            add_service(&mut t, 2, 54, None);
            let mut s = WorkerState::new(ConntrackConfig {
                capacity: 1024,
                timeouts: Timeouts::default(),
                endpoint_quota: None,
            });
            let balanced = udp_to(mac1, ip1, VIP, 53);
            assert_eq!(
                run(&t, &mut s, port1, &balanced, 1),
                Verdict::Transmit(PortId(2))
            );
            let empty = udp_to(mac1, ip1, VIP, 54);
            assert_eq!(
                run(&t, &mut s, port1, &empty, 2),
                Verdict::Drop(DropReason::NoBackend)
            );
            let events: Vec<FlowEvent> = s.flowlog.drain().collect();
            assert_eq!(events.len(), 2, "{events:?}");
            assert_eq!(events[0].flow.dst, Addr::from(VIP), "as received");
            assert_eq!(events[0].backend, Some((ip2.into(), 5353)));
            assert_eq!((events[0].src_identity, events[0].dst_identity), (id1, id2));
            assert_eq!(events[0].verdict, FlowVerdict::Forwarded(Forward::LocalPod));
            assert_eq!(events[1].backend, None);
            assert_eq!(events[1].dst_identity, Identity::UNKNOWN, "never routed");
            assert_eq!(
                events[1].verdict,
                FlowVerdict::Dropped(DropReason::NoBackend)
            );
        }
    }

    proptest! {
        /// Against a model: the log holds exactly the last `capacity` events recorded since the last
        /// drain, in order, and counts the rest as overwritten.
        #[test]
        fn behaves_like_a_bounded_queue(
            capacity in 1usize..16,
            ops in proptest::collection::vec(proptest::option::of(0u64..1000), 0..200),
        ) {
            let mut log = FlowLog::new(capacity);
            let mut model = std::collections::VecDeque::new();
            let mut lost = 0u64;
            for op in ops {
                match op {
                    Some(n) => {
                        log.record(event(n));
                        model.push_back(n);
                        if model.len() > capacity {
                            model.pop_front();
                            lost += 1;
                        }
                    }
                    None => prop_assert_eq!(log.pop().map(|e| e.time_ms), model.pop_front()),
                }
                prop_assert_eq!(log.len(), model.len());
            }
            prop_assert_eq!(log.overwritten(), lost);
            let rest: Vec<u64> = log.drain().map(|e| e.time_ms).collect();
            prop_assert_eq!(rest, Vec::from(model));
        }
    }
}
