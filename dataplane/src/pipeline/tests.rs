//! The pipeline end to end on real frames: two nodes, one in cluster1 and one in cluster2, exchange the
//! frames their pipelines emit, as the lab does over AF_XDP.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

use super::*;
use crate::conntrack::{ConntrackConfig, Timeouts};
use crate::endpoint::Endpoint;
use crate::gateway::Gateway;
use crate::ipcache::{IpCacheEntry, IpPrefix};
use crate::policy::{self, EgressRule, IdentityLabels, Labels, PolicyRule, CLUSTER_LABEL};
use crate::policy::{LabelSelector, Peer};
use crate::route::{NodeLink, RemoteNode, RoutingMode, Underlay};
use crate::service::{Backend, BackendState, Frontend, Service, ServiceId};
use crate::snapshot::{Capacities, NodeConfig};
use crate::tunnel::TunnelProtocol;
use crate::{Addr, ClusterId, Identity};

const UPLINK: PortId = PortId(0);
const X_WING_PORT: PortId = PortId(1);
const REBEL_PORT: PortId = PortId(2);
const GATEWAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const VIP: Ipv4Addr = Ipv4Addr::new(100, 64, 255, 10);

/// A pod in the fixture: cluster `c`, node-local index `i`.
struct Pod {
    ip: Ipv4Addr,
    mac: [u8; 6],
    identity: Identity,
    labels: Labels,
}

fn pod(cluster: u8, i: u8, name: &str) -> Pod {
    Pod {
        ip: Ipv4Addr::new(100, 63 + cluster, 1, 10 + i),
        mac: [0x02, 0, 0, cluster, 1, i],
        identity: Identity::new((u32::from(cluster) << 16) | 0x100 | u32::from(i)).unwrap(),
        labels: Labels::new()
            .with("name", name)
            .with(CLUSTER_LABEL, &format!("cluster{cluster}")),
    }
}

fn x_wing() -> Pod {
    pod(1, 0, "x-wing")
}
fn rebel_c1() -> Pod {
    pod(1, 1, "rebel-base")
}
fn rebel_c2() -> Pod {
    pod(2, 0, "rebel-base")
}

fn node_ip(cluster: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, cluster, 1)
}

fn node_mac(cluster: u8) -> [u8; 6] {
    [0x02, 0, 0, cluster, 0, 1]
}

/// The snapshot of cluster `c`'s only node, which hosts `local` pods and knows `remote` ones.
fn tables(cluster: u8, local: &[(PortId, Pod)], remote: &[Pod], rules: &[PolicyRule]) -> Tables {
    let node = NodeConfig {
        cluster: ClusterId::new(cluster).unwrap(),
        ipv4: Some(node_ip(cluster)),
        ipv6: None,
        uplink: UPLINK,
        underlay: Underlay {
            mac: node_mac(cluster),
            router_mac: [0x02, 0, 0, 0, 0, 0xfe],
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
    let mut identities = IdentityLabels::new();
    for (port, p) in local {
        t.endpoints
            .insert(Endpoint {
                port: *port,
                mac: p.mac,
                ipv4: Some(p.ip),
                ipv6: None,
                identity: p.identity,
                name: "default/pod".into(),
            })
            .unwrap();
        identities.insert(p.identity, p.labels.clone());
        ipcache_insert(&mut t, p, None);
    }
    let other = 3 - cluster;
    for p in remote {
        identities.insert(p.identity, p.labels.clone());
        ipcache_insert(&mut t, p, Some(node_ip(other)));
    }
    t.nodes
        .upsert(RemoteNode {
            addr: node_ip(other).into(),
            cluster: ClusterId::new(other).unwrap(),
            link: NodeLink::Routed,
            wireguard_key: None,
        })
        .unwrap();
    t.policy = policy::compile(
        rules,
        &identities,
        ClusterId::new(cluster).unwrap(),
        &Default::default(),
    );
    t
}

fn ipcache_insert(t: &mut Tables, p: &Pod, node: Option<Ipv4Addr>) {
    let entry = IpCacheEntry {
        identity: p.identity,
        tunnel_endpoint: node.map(Addr::from),
        cluster: p.identity.cluster(),
    };
    t.ipcache
        .insert(IpPrefix::host(p.ip.into()), entry)
        .unwrap();
}

fn add_rebel_service(t: &mut Tables, backends: &[(&Pod, BackendState)]) {
    let frontend = Frontend {
        addr: VIP.into(),
        port: 80,
        proto: crate::flow::proto::TCP,
    };
    let backends = backends
        .iter()
        .map(|(p, state)| Backend {
            addr: p.ip.into(),
            port: 8080,
            state: *state,
            cluster: p.identity.cluster(),
        })
        .collect();
    let service = Service::new(ServiceId(1), frontend, backends).unwrap();
    t.services.insert(Arc::new(service)).unwrap();
    // Changed in place, not on a clone: no worker may apply what it decided before.
    t.changed();
}

fn state() -> WorkerState {
    WorkerState::new(ConntrackConfig {
        capacity: 1024,
        timeouts: Timeouts::default(),
        endpoint_quota: None,
    })
}

fn tcp(from: &Pod, to: Ipv4Addr, sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(from.mac, GATEWAY_MAC)
        .ipv4(from.ip.octets(), to.octets(), 64)
        .tcp(sport, dport, 1, 1024);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let mut frame = Vec::new();
    builder.write(&mut frame, b"hello").unwrap();
    frame
}

/// A TCP segment closing its side of the connection (FIN, ACK).
fn tcp_fin(from: &Pod, to: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(from.mac, GATEWAY_MAC)
        .ipv4(from.ip.octets(), to.octets(), 64)
        .tcp(sport, dport, 2, 1024)
        .fin()
        .ack(1);
    let mut frame = Vec::new();
    builder.write(&mut frame, b"").unwrap();
    frame
}

/// Runs one frame through `tables` on `port`; returns the verdict and the bytes as they leave.
fn run(t: &Tables, s: &mut WorkerState, port: PortId, bytes: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; crate::frame::HEADROOM + bytes.len() + 64];
    buf[crate::frame::HEADROOM..][..bytes.len()].copy_from_slice(bytes);
    let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, bytes.len(), port).unwrap();
    let verdict = process_one(t, s, 1_000, &mut frame);
    (verdict, frame.data().to_vec())
}

fn ports(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    let h = ip.header();
    (
        h.source_addr(),
        tcp.source_port(),
        h.destination_addr(),
        tcp.destination_port(),
    )
}

/// Checks that every checksum of an IPv4/TCP frame is right, by recomputing it.
fn assert_checksums(frame: &[u8]) {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    let expected = tcp
        .to_header()
        .calc_checksum_ipv4(&header, tcp.payload())
        .unwrap();
    assert_eq!(tcp.checksum(), expected);
}

#[test]
fn pod_to_pod_on_the_same_node_is_routed_with_gateway_macs() {
    let t = tables(
        1,
        &[(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())],
        &[],
        &[],
    );
    let mut s = state();
    let (verdict, out) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c1().ip, 40000, 8080, true),
    );
    assert_eq!(verdict, Verdict::Transmit(REBEL_PORT));
    assert_eq!(&out[..6], &rebel_c1().mac);
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(out[14 + 8], 63, "one hop less");
    assert_checksums(&out);
    assert_eq!(s.counters.forwarded(Forward::LocalPod).packets, 1);
}

#[test]
fn cross_node_traffic_is_tunnelled_with_the_sender_identity_and_delivered() {
    let a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let (mut sa, mut sb) = (state(), state());
    let request = tcp(&x_wing(), rebel_c2().ip, 40000, 8080, true);
    let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &request);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let outer = SlicedPacket::from_ethernet(&wire).unwrap();
    let Some(TransportSlice::Udp(udp)) = outer.transport else {
        panic!("not UDP")
    };
    assert_eq!(udp.destination_port(), 8472);
    let vni = u32::from_be_bytes([0, udp.payload()[4], udp.payload()[5], udp.payload()[6]]);
    assert_eq!(
        vni,
        x_wing().identity.get(),
        "the VNI carries the sender's identity"
    );

    let (verdict, delivered) = run(&b, &mut sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(ports(&delivered), (x_wing().ip, 40000, rebel_c2().ip, 8080));
    assert_eq!(&delivered[..6], &rebel_c2().mac);
    assert_checksums(&delivered);
}

#[test]
fn a_spoofed_source_is_dropped_and_counted() {
    let t = tables(
        1,
        &[(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())],
        &[],
        &[],
    );
    let mut s = state();
    let mut liar = x_wing();
    liar.ip = Ipv4Addr::new(100, 64, 1, 99);
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&liar, rebel_c1().ip, 1, 2, true),
    );
    assert_eq!(verdict, Verdict::Drop(DropReason::SpoofedSource));
    let mut mac_liar = x_wing();
    mac_liar.mac = [2, 9, 9, 9, 9, 9];
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&mac_liar, rebel_c1().ip, 1, 2, true),
    );
    assert_eq!(verdict, Verdict::Drop(DropReason::SpoofedSource));
    assert_eq!(s.counters.dropped(DropReason::SpoofedSource).packets, 2);
}

#[test]
fn the_gateway_answers_a_pods_arp_request() {
    let t = tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    let mut s = state();
    let request = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation::REQUEST,
        &x_wing().mac,
        &x_wing().ip.octets(),
        &[0; 6],
        &[100, 64, 1, 1],
    )
    .unwrap();
    let mut frame = Vec::new();
    etherparse::Ethernet2Header {
        source: x_wing().mac,
        destination: [0xff; 6],
        ether_type: etherparse::EtherType::ARP,
    }
    .write(&mut frame)
    .unwrap();
    request.write(&mut frame).unwrap();
    let (verdict, reply) = run(&t, &mut s, X_WING_PORT, &frame);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    let arp = etherparse::ArpPacketSlice::from_slice(&reply[14..]).unwrap();
    assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(arp.sender_hw_addr(), &GATEWAY_MAC);
}

/// Cilium's cross-cluster example: x-wing in cluster1 may reach rebel-base in cluster2 only.
fn x_wing_policy() -> PolicyRule {
    PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("name", "x-wing"),
        ingress: None,
        egress: Some(vec![EgressRule {
            to: vec![Peer::Endpoints(
                LabelSelector::all()
                    .with_label("name", "rebel-base")
                    .with_label(CLUSTER_LABEL, "cluster2"),
            )],
            to_ports: vec![],
        }]),
    }
}

#[test]
fn x_wing_reaches_the_cluster2_rebel_base_and_not_the_cluster1_one() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[rebel_c2()], &[x_wing_policy()]);
    let mut s = state();
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c2().ip, 40000, 80, true),
    );
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c1().ip, 40001, 80, true),
    );
    assert_eq!(verdict, Verdict::Drop(DropReason::PolicyDenied));
    assert_eq!(s.counters.dropped(DropReason::PolicyDenied).packets, 1);
}

#[test]
fn replies_of_an_allowed_connection_pass_a_default_deny_egress() {
    // rebel-base in cluster1 may send nothing on its own, yet answers x-wing.
    let deny_rebel_egress = PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("name", "rebel-base"),
        ingress: None,
        egress: Some(vec![]),
    };
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[], &[deny_rebel_egress]);
    let mut s = state();
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c1().ip, 40000, 80, true),
    );
    assert_eq!(verdict, Verdict::Transmit(REBEL_PORT));
    let reply = tcp(&rebel_c1(), x_wing().ip, 80, 40000, false);
    assert_eq!(
        run(&t, &mut s, REBEL_PORT, &reply).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let unsolicited = tcp(&rebel_c1(), x_wing().ip, 81, 40000, true);
    assert_eq!(
        run(&t, &mut s, REBEL_PORT, &unsolicited).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn a_service_flow_is_translated_to_a_remote_backend_and_its_replies_back() {
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    add_rebel_service(&mut a, &[(&rebel_c2(), BackendState::Active)]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let (mut sa, mut sb) = (state(), state());

    let (verdict, wire) = run(
        &a,
        &mut sa,
        X_WING_PORT,
        &tcp(&x_wing(), VIP, 40000, 80, true),
    );
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let (verdict, at_backend) = run(&b, &mut sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(
        ports(&at_backend),
        (x_wing().ip, 40000, rebel_c2().ip, 8080)
    );
    assert_checksums(&at_backend);

    let reply = tcp(&rebel_c2(), x_wing().ip, 8080, 40000, false);
    let (verdict, wire) = run(&b, &mut sb, X_WING_PORT, &reply);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let (verdict, at_client) = run(&a, &mut sa, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(
        ports(&at_client),
        (VIP, 80, x_wing().ip, 40000),
        "reverse NAT"
    );
    assert_checksums(&at_client);
}

#[test]
fn established_flows_keep_a_terminating_backend_and_new_flows_avoid_it() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let mut t = tables(1, &local, &[rebel_c2()], &[]);
    add_rebel_service(&mut t, &[(&rebel_c1(), BackendState::Active)]);
    let mut s = state();
    let first = tcp(&x_wing(), VIP, 40000, 80, true);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &first).0,
        Verdict::Transmit(REBEL_PORT)
    );

    add_rebel_service(
        &mut t,
        &[
            (&rebel_c1(), BackendState::Terminating),
            (&rebel_c2(), BackendState::Active),
        ],
    );
    let again = tcp(&x_wing(), VIP, 40000, 80, false);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &again).0,
        Verdict::Transmit(REBEL_PORT)
    );
    for sport in 40001..40020 {
        let new = tcp(&x_wing(), VIP, sport, 80, true);
        assert_eq!(
            run(&t, &mut s, X_WING_PORT, &new).0,
            Verdict::Transmit(UPLINK)
        );
    }
}

/// x-wing's node balancing rebel-base to its local backend only, and the node of the remote one.
fn rebels_on_two_nodes() -> (Tables, Tables) {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let mut a = tables(1, &local, &[rebel_c2()], &[]);
    add_rebel_service(&mut a, &[(&rebel_c1(), BackendState::Active)]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    (a, b)
}

/// The local backend stops taking new flows (its pod terminating); the remote one takes them.
fn local_rebel_terminating(a: &mut Tables) {
    add_rebel_service(
        a,
        &[
            (&rebel_c1(), BackendState::Terminating),
            (&rebel_c2(), BackendState::Active),
        ],
    );
}

/// The SYN `syn` leaves x-wing's node for the remote backend, and the backend's answer comes back
/// from the service's address.
fn assert_balanced_to_the_remote_backend(
    (a, b): (&Tables, &Tables),
    (sa, sb): (&mut WorkerState, &mut WorkerState),
    syn: &[u8],
) {
    let (verdict, wire) = run(a, sa, X_WING_PORT, syn);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let (verdict, at_backend) = run(b, sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(
        ports(&at_backend),
        (x_wing().ip, 40000, rebel_c2().ip, 8080)
    );
    let answer = tcp(&rebel_c2(), x_wing().ip, 8080, 40000, false);
    let (_, wire) = run(b, sb, X_WING_PORT, &answer);
    let (verdict, at_client) = run(a, sa, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(ports(&at_client), (VIP, 80, x_wing().ip, 40000));
}

/// A client that reuses its port once its connection closed opens a new connection: it is balanced
/// anew, so a backend that stopped taking new flows (a terminating pod, which may have stopped
/// listening) does not get it.
#[test]
fn a_port_reused_after_its_connection_closed_is_balanced_anew() {
    let (mut a, b) = rebels_on_two_nodes();
    let (mut sa, mut sb) = (state(), state());
    let syn = tcp(&x_wing(), VIP, 40000, 80, true);
    assert_eq!(
        run(&a, &mut sa, X_WING_PORT, &syn).0,
        Verdict::Transmit(REBEL_PORT)
    );
    let answer = tcp(&rebel_c1(), x_wing().ip, 8080, 40000, false);
    assert_eq!(
        run(&a, &mut sa, REBEL_PORT, &answer).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let fin = tcp_fin(&x_wing(), VIP, 40000, 80);
    assert_eq!(
        run(&a, &mut sa, X_WING_PORT, &fin).0,
        Verdict::Transmit(REBEL_PORT)
    );

    local_rebel_terminating(&mut a);
    assert_balanced_to_the_remote_backend((&a, &b), (&mut sa, &mut sb), &syn);
}

/// A SYN sent again before any answer came is balanced again: the same backend while it takes new
/// flows (Maglev), another once it stopped.
#[test]
fn a_retried_syn_leaves_a_backend_that_stopped_taking_new_flows() {
    let (mut a, b) = rebels_on_two_nodes();
    let (mut sa, mut sb) = (state(), state());
    let syn = tcp(&x_wing(), VIP, 40000, 80, true);
    for _ in 0..2 {
        assert_eq!(
            run(&a, &mut sa, X_WING_PORT, &syn).0,
            Verdict::Transmit(REBEL_PORT)
        );
    }
    local_rebel_terminating(&mut a);
    assert_balanced_to_the_remote_backend((&a, &b), (&mut sa, &mut sb), &syn);
}

/// After x-wing's node lost its conntrack (its agent killed), a segment of an established service
/// flow from the backend must not reach x-wing untranslated: x-wing's kernel would answer it with a
/// reset, which kills the connection at the backend. It is dropped; x-wing's next segment makes the
/// flow again (Maglev picks the same backend), and the backend's segments come back translated.
#[test]
fn a_backends_segment_without_its_flow_waits_for_the_client_to_speak() {
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    add_rebel_service(&mut a, &[(&rebel_c2(), BackendState::Active)]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let mut sb = state();
    let syn = tcp(&x_wing(), VIP, 40000, 80, true);
    let (_, wire) = run(&a, &mut state(), X_WING_PORT, &syn);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT)
    );

    let mut sa = state();
    let answer = tcp(&rebel_c2(), x_wing().ip, 8080, 40000, false);
    let (_, wire) = run(&b, &mut sb, X_WING_PORT, &answer);
    assert_eq!(
        run(&a, &mut sa, UPLINK, &wire).0,
        Verdict::Drop(DropReason::BackendSegmentWithoutFlow)
    );

    let request = tcp(&x_wing(), VIP, 40000, 80, false);
    let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &request);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(
        run(&b, &mut sb, UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let (_, wire) = run(&b, &mut sb, X_WING_PORT, &answer);
    let (verdict, at_client) = run(&a, &mut sa, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(ports(&at_client), (VIP, 80, x_wing().ip, 40000));
}

/// A backend's SYN opens a flow of its own: only segments that answer something wait.
#[test]
fn a_backend_may_still_open_connections_from_its_service_port() {
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    add_rebel_service(&mut a, &[(&rebel_c2(), BackendState::Active)]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let syn = tcp(&rebel_c2(), x_wing().ip, 8080, 40000, true);
    let (_, wire) = run(&b, &mut state(), X_WING_PORT, &syn);
    assert_eq!(
        run(&a, &mut state(), UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT)
    );
}

#[test]
fn a_service_without_active_backends_drops_new_flows() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let mut t = tables(1, &local, &[], &[]);
    add_rebel_service(&mut t, &[(&rebel_c1(), BackendState::Unhealthy)]);
    let mut s = state();
    let (verdict, _) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), VIP, 40000, 80, true),
    );
    assert_eq!(verdict, Verdict::Drop(DropReason::NoBackend));
}

#[test]
fn a_full_conntrack_refuses_new_flows_but_keeps_established_ones() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[], &[]);
    let mut s = WorkerState::new(ConntrackConfig {
        capacity: 4,
        timeouts: Timeouts::default(),
        endpoint_quota: None,
    });
    for sport in 0..4 {
        establish(&t, &mut s, 1000 + sport);
    }
    let fifth = tcp(&x_wing(), rebel_c1().ip, 2000, 80, true);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &fifth).0,
        Verdict::Drop(DropReason::CtTableFull)
    );
    let old = tcp(&x_wing(), rebel_c1().ip, 1000, 80, false);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &old).0,
        Verdict::Transmit(REBEL_PORT)
    );
}

#[test]
fn unanswered_flows_give_way_to_new_ones_and_a_pod_past_its_quota_only_displaces_its_own() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[], &[]);
    let mut s = WorkerState::new(ConntrackConfig {
        capacity: 4,
        timeouts: Timeouts::default(),
        endpoint_quota: None,
    });
    // A SYN flood fills the table; a real connection still gets in.
    for sport in 0..16 {
        let syn = tcp(&x_wing(), rebel_c1().ip, 3000 + sport, 80, true);
        run(&t, &mut s, X_WING_PORT, &syn);
    }
    assert!(s.conntrack.stats().evicted_unreplied > 0);
    establish(&t, &mut s, 4000);

    let mut q = WorkerState::new(ConntrackConfig {
        capacity: 1024,
        timeouts: Timeouts::default(),
        endpoint_quota: Some(2),
    });
    establish(&t, &mut q, 1000);
    let established = run(
        &t,
        &mut q,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c1().ip, 1001, 80, true),
    )
    .0;
    assert_eq!(
        established,
        Verdict::Transmit(REBEL_PORT),
        "a second flow fits the quota"
    );
    let mut refused = 0;
    for sport in 1002..1010 {
        let syn = tcp(&x_wing(), rebel_c1().ip, sport, 80, true);
        if run(&t, &mut q, X_WING_PORT, &syn).0 == Verdict::Drop(DropReason::CtEndpointQuota) {
            refused += 1;
        }
    }
    assert!(refused > 0, "past its quota");
    assert!(q.conntrack.owned_by(crate::conntrack::Owner(X_WING_PORT.0)) <= 2);
    let old = tcp(&x_wing(), rebel_c1().ip, 1000, 80, false);
    assert_eq!(
        run(&t, &mut q, X_WING_PORT, &old).0,
        Verdict::Transmit(REBEL_PORT)
    );
}

/// x-wing → rebel-base on `sport`, handshake complete.
fn establish(t: &Tables, s: &mut WorkerState, sport: u16) {
    let syn = tcp(&x_wing(), rebel_c1().ip, sport, 80, true);
    assert_eq!(
        run(t, s, X_WING_PORT, &syn).0,
        Verdict::Transmit(REBEL_PORT)
    );
    let mut syn_ack = Vec::new();
    PacketBuilder::ethernet2(rebel_c1().mac, GATEWAY_MAC)
        .ipv4(rebel_c1().ip.octets(), x_wing().ip.octets(), 64)
        .tcp(80, sport, 9, 1024)
        .syn()
        .ack(2)
        .write(&mut syn_ack, b"")
        .unwrap();
    assert_eq!(
        run(t, s, REBEL_PORT, &syn_ack).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let ack = tcp(&x_wing(), rebel_c1().ip, sport, 80, false);
    assert_eq!(
        run(t, s, X_WING_PORT, &ack).0,
        Verdict::Transmit(REBEL_PORT)
    );
}

#[test]
fn tunnel_frames_from_strangers_or_without_identity_are_dropped() {
    let a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let (mut sa, mut sb) = (state(), state());
    let (_, wire) = run(
        &a,
        &mut sa,
        X_WING_PORT,
        &tcp(&x_wing(), rebel_c2().ip, 1, 2, true),
    );

    let mut stranger = wire.clone();
    stranger[14 + 12..14 + 16].copy_from_slice(&[198, 18, 9, 9]);
    fix_ipv4_checksum(&mut stranger);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &stranger).0,
        Verdict::Drop(DropReason::UnknownTunnelPeer)
    );

    let mut anonymous = wire;
    anonymous[14 + 20 + 8 + 4..14 + 20 + 8 + 7].fill(0);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &anonymous).0,
        Verdict::Drop(DropReason::InvalidIdentity)
    );
}

fn fix_ipv4_checksum(frame: &mut [u8]) {
    frame[14 + 10..14 + 12].fill(0);
    let sum = crate::wire::checksum::data(&frame[14..34]);
    frame[14 + 10..14 + 12].copy_from_slice(&(!sum).to_be_bytes());
}

#[test]
fn the_nodes_own_traffic_goes_to_the_kernel() {
    let t = tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    let mut s = state();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(node_mac(2), node_mac(1))
        .ipv4(node_ip(2).octets(), node_ip(1).octets(), 64)
        .tcp(50000, 2379, 1, 1024)
        .write(&mut frame, b"etcd")
        .unwrap();
    assert_eq!(run(&t, &mut s, UPLINK, &frame).0, Verdict::ToKernel);
}

#[test]
fn a_batch_gets_one_verdict_per_frame() {
    let t = tables(
        1,
        &[(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())],
        &[],
        &[],
    );
    let mut s = state();
    let good = tcp(&x_wing(), rebel_c1().ip, 1, 2, true);
    let mut bufs: Vec<Vec<u8>> = vec![good.clone(), vec![0u8; 10], good];
    let mut frames: Vec<Frame> = bufs
        .iter_mut()
        .map(|b| {
            let len = b.len();
            Frame::new(b, 0, len, X_WING_PORT).unwrap()
        })
        .collect();
    let mut verdicts = vec![Verdict::ToKernel; 3];
    process(&t, &mut s, 0, &mut frames, &mut verdicts);
    assert_eq!(
        verdicts,
        [
            Verdict::Transmit(REBEL_PORT),
            Verdict::Drop(DropReason::InvalidHeader),
            Verdict::Transmit(REBEL_PORT)
        ]
    );
    assert_eq!(s.counters.received.packets, 3);
}

proptest! {
    #[test]
    fn no_frame_on_any_port_makes_the_pipeline_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        port in 0u16..4,
    ) {
        let t = tables(1, &[(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())], &[rebel_c2()], &[x_wing_policy()]);
        let mut s = state();
        let (verdict, _) = run(&t, &mut s, PortId(port), &bytes);
        let counted = s.counters.total_forwarded() + s.counters.total_dropped();
        prop_assert_eq!(counted, 1, "{:?} was not counted", verdict);
    }

    #[test]
    fn mutated_real_frames_never_panic(
        flips in prop::collection::vec((0usize..120, any::<u8>()), 1..6),
        cut in 0usize..120,
        via_uplink in any::<bool>(),
    ) {
        let a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
        let b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
        let (mut sa, mut sb) = (state(), state());
        let (_, wire) = run(&a, &mut sa, X_WING_PORT, &tcp(&x_wing(), rebel_c2().ip, 1, 2, true));
        let mut frame = if via_uplink { wire } else { tcp(&x_wing(), rebel_c2().ip, 1, 2, true) };
        for (at, byte) in flips {
            if let Some(b) = frame.get_mut(at) { *b ^= byte; }
        }
        frame.truncate(frame.len().saturating_sub(cut % 40));
        let port = if via_uplink { UPLINK } else { X_WING_PORT };
        run(&b, &mut sb, port, &frame);
        run(&a, &mut sa, port, &frame);
    }
}

#[test]
fn ipv6_pods_get_neighbour_answers_and_are_routed() {
    let v6 = |last: u16| std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, last);
    let node = tables(1, &[], &[], &[]).node;
    let mut t = Tables::empty(node, Capacities::default());
    for (port, last) in [(X_WING_PORT, 10u16), (REBEL_PORT, 11)] {
        t.endpoints
            .insert(Endpoint {
                port,
                mac: [0x02, 0, 0, 1, 1, last as u8],
                ipv4: None,
                ipv6: Some(v6(last)),
                identity: Identity::new(0x1_0100 + u32::from(last)).unwrap(),
                name: "default/pod".into(),
            })
            .unwrap();
    }
    let mut s = state();
    let mac = [0x02, 0, 0, 1, 1, 10];
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac, GATEWAY_MAC)
        .ipv6(v6(10).octets(), v6(11).octets(), 64)
        .udp(5353, 53)
        .write(&mut frame, b"query")
        .unwrap();
    let (verdict, out) = run(&t, &mut s, X_WING_PORT, &frame);
    assert_eq!(verdict, Verdict::Transmit(REBEL_PORT));
    assert_eq!(out[14 + 7], 63, "one hop less");

    let mut liar = frame.clone();
    liar[14 + 8 + 15] = 99;
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &liar).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );

    let gateway = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1);
    let mut solicitation = crate::parse::tests::neighbour_solicitation(v6(10), gateway, Some(mac));
    solicitation[6..12].copy_from_slice(&mac);
    let (verdict, answer) = run(&t, &mut s, X_WING_PORT, &solicitation);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(
        &answer[..6],
        &mac,
        "the advertisement goes back to the asker"
    );
    assert_eq!(s.counters.forwarded(Forward::NeighbourReply).packets, 1);
}

#[test]
fn an_established_flow_moves_when_its_backend_leaves_the_service() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let mut t = tables(1, &local, &[rebel_c2()], &[]);
    add_rebel_service(&mut t, &[(&rebel_c1(), BackendState::Active)]);
    let mut s = state();
    let first = tcp(&x_wing(), VIP, 40000, 80, true);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &first).0,
        Verdict::Transmit(REBEL_PORT)
    );

    add_rebel_service(&mut t, &[(&rebel_c2(), BackendState::Active)]);
    let again = tcp(&x_wing(), VIP, 40000, 80, false);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &again).0,
        Verdict::Transmit(UPLINK)
    );
}

#[test]
fn link_scoped_chatter_stays_on_the_link_and_a_wrong_mac_is_still_spoofing() {
    let t = tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    let mut s = state();
    let link_local = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);
    let mld_routers = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    let mut report = Vec::new();
    PacketBuilder::ethernet2(x_wing().mac, [0x33, 0x33, 0, 0, 0, 0x16])
        .ipv6(link_local.octets(), mld_routers.octets(), 1)
        .icmpv6_raw(143, 0, [0; 4])
        .write(&mut report, &[])
        .unwrap();
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &report).0,
        Verdict::Drop(DropReason::LinkScope)
    );
    report[6..12].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &report).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );
}

#[test]
fn a_direct_flow_reusing_a_service_flows_port_still_faces_policy() {
    // A service call left a translated conntrack entry (x-wing:40000 → rebel-base:8080); a later direct
    // flow with that very tuple is a new flow, and the x-wing policy denies the cluster1 rebel-base.
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let mut t = tables(1, &local, &[rebel_c2()], &[]);
    add_rebel_service(&mut t, &[(&rebel_c1(), BackendState::Active)]);
    let mut s = state();
    let via_service = tcp(&x_wing(), VIP, 40000, 80, true);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &via_service).0,
        Verdict::Transmit(REBEL_PORT)
    );

    let policy = policy::compile(
        &[x_wing_policy()],
        &[
            (x_wing().identity, x_wing().labels),
            (rebel_c1().identity, rebel_c1().labels),
        ]
        .into_iter()
        .collect(),
        ClusterId::new(1).unwrap(),
        &Default::default(),
    );
    t.policy = policy;
    let direct = tcp(&x_wing(), rebel_c1().ip, 40000, 8080, true);
    assert_eq!(
        run(&t, &mut s, X_WING_PORT, &direct).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

/// Runs one frame at `now_ms`, as a worker whose clock has moved on.
fn run_at(t: &Tables, s: &mut WorkerState, port: PortId, now_ms: u64, bytes: &[u8]) -> Verdict {
    let mut buf = vec![0u8; crate::frame::HEADROOM + bytes.len() + 64];
    buf[crate::frame::HEADROOM..][..bytes.len()].copy_from_slice(bytes);
    let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, bytes.len(), port).unwrap();
    process_one(t, s, now_ms, &mut frame)
}

#[test]
fn a_frame_without_a_hop_left_is_dropped_as_ttl_exceeded() {
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[rebel_c2()], &[]);
    let mut s = state();
    for (ttl, to) in [(1, rebel_c1().ip), (0, rebel_c1().ip), (1, rebel_c2().ip)] {
        let mut frame = tcp(&x_wing(), to, 40000, 8080, true);
        frame[14 + 8] = ttl;
        fix_ipv4_checksum(&mut frame);
        assert_eq!(
            run(&t, &mut s, X_WING_PORT, &frame).0,
            Verdict::Drop(DropReason::TtlExceeded),
            "TTL {ttl} to {to}"
        );
    }
    assert_eq!(s.counters.dropped(DropReason::TtlExceeded).packets, 3);
    let mut two = tcp(&x_wing(), rebel_c1().ip, 40000, 8080, true);
    two[14 + 8] = 2;
    fix_ipv4_checksum(&mut two);
    let (verdict, out) = run(&t, &mut s, X_WING_PORT, &two);
    assert_eq!(
        verdict,
        Verdict::Transmit(REBEL_PORT),
        "one hop left is enough"
    );
    assert_eq!(out[14 + 8], 1);
    assert_checksums(&out);
}

fn udp(from: &Pod, to: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(from.mac, GATEWAY_MAC)
        .ipv4(from.ip.octets(), to.octets(), 64)
        .udp(sport, dport)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

#[test]
fn conntrack_ages_flows_as_the_clock_moves() {
    // rebel-base may send nothing on its own: its replies pass only while x-wing's flow is tracked.
    let deny_rebel_egress = PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("name", "rebel-base"),
        ingress: None,
        egress: Some(vec![]),
    };
    let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
    let t = tables(1, &local, &[], &[deny_rebel_egress]);
    let timeouts = Timeouts::default();
    let mut s = state();

    // A UDP flow lives for the UDP timeout after its last packet, whichever way it went.
    let request = udp(&x_wing(), rebel_c1().ip, 5353, 53);
    let answer = udp(&rebel_c1(), x_wing().ip, 53, 5353);
    let t0 = 1_000;
    assert_eq!(
        run_at(&t, &mut s, X_WING_PORT, t0, &request),
        Verdict::Transmit(REBEL_PORT)
    );
    let renewed = t0 + timeouts.udp_ms - 1;
    assert_eq!(
        run_at(&t, &mut s, REBEL_PORT, renewed, &answer),
        Verdict::Transmit(X_WING_PORT),
        "just before the timeout"
    );
    let still = renewed + timeouts.udp_ms - 1;
    assert_eq!(
        run_at(&t, &mut s, REBEL_PORT, still, &answer),
        Verdict::Transmit(X_WING_PORT),
        "the answer renewed the flow"
    );
    // Idle past its timeout, the flow is gone: the same answer is now a new flow, and denied.
    let expired = still + timeouts.udp_ms;
    assert_eq!(
        run_at(&t, &mut s, REBEL_PORT, expired, &answer),
        Verdict::Drop(DropReason::PolicyDenied)
    );
    assert!(
        s.conntrack.iter().all(|(_, e)| e.is_expired(expired)),
        "no live entry is left of the aged flow"
    );

    // An established TCP flow outlives the SYN and UDP timeouts by far, but not its own.
    let syn = tcp(&x_wing(), rebel_c1().ip, 40001, 80, true);
    let ack = tcp(&x_wing(), rebel_c1().ip, 40001, 80, false);
    let reply = tcp(&rebel_c1(), x_wing().ip, 80, 40001, false);
    let t1 = expired + 1;
    for (port, frame) in [
        (X_WING_PORT, &syn),
        (REBEL_PORT, &reply),
        (X_WING_PORT, &ack),
    ] {
        assert!(matches!(
            run_at(&t, &mut s, port, t1, frame),
            Verdict::Transmit(_)
        ));
    }
    let later = t1 + timeouts.tcp_syn_ms * 10;
    assert_eq!(
        run_at(&t, &mut s, REBEL_PORT, later, &reply),
        Verdict::Transmit(X_WING_PORT),
        "established"
    );
    let gone = later + timeouts.tcp_established_ms;
    assert_eq!(
        run_at(&t, &mut s, REBEL_PORT, gone, &reply),
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

mod encryption;
mod fastpath;
mod node_path;
mod routing;
mod steering;
