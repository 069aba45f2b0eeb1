//! The routing modes on real frames: what each puts on the wire towards another node (Geneve or VXLAN,
//! plain to the node's MAC, plain through the router, or refused), and the rule for plain frames from
//! the underlay: a source the mesh places on a node is believed only from that node's MAC.

use super::*;

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const STRANGER_MAC: [u8; 6] = [0x02, 0x66, 0, 0, 0, 6];
const NATIVE: RoutingMode = RoutingMode::Native {
    underlay_routes_pods: false,
};
const NATIVE_ROUTED: RoutingMode = RoutingMode::Native {
    underlay_routes_pods: true,
};

/// Only x-wing may reach rebel-base: a delivery proves the receiver took x-wing's identity.
fn only_x_wing() -> PolicyRule {
    PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("name", "rebel-base"),
        ingress: Some(vec![policy::IngressRule {
            from: vec![Peer::Endpoints(
                LabelSelector::all().with_label("name", "x-wing"),
            )],
            to_ports: vec![],
        }]),
        egress: None,
    }
}

/// Node 1 (x-wing) and node 2 (rebel-base, which admits only x-wing) in `mode`, each seeing the other
/// as `link` (with the other's own MAC for `NodeLink::Segment`).
fn pair(mode: RoutingMode, link: fn([u8; 6]) -> NodeLink) -> (Tables, Tables) {
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let mut b = tables(
        2,
        &[(X_WING_PORT, rebel_c2())],
        &[x_wing()],
        &[only_x_wing()],
    );
    for (t, other) in [(&mut a, 2), (&mut b, 1)] {
        t.node.routing = mode;
        t.nodes
            .upsert(RemoteNode {
                addr: node_ip(other).into(),
                cluster: ClusterId::new(other).unwrap(),
                link: link(node_mac(other)),
                wireguard_key: None,
            })
            .unwrap();
    }
    (a, b)
}

fn x_wing_to_rebel(sport: u16) -> Vec<u8> {
    tcp(&x_wing(), rebel_c2().ip, sport, 8080, true)
}

fn with_src_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[6..12].copy_from_slice(&mac);
    frame
}

#[test]
fn hybrid_goes_plain_on_the_segment_and_the_receiver_proves_the_sender_by_its_mac() {
    let (a, b) = pair(RoutingMode::Hybrid, NodeLink::Segment);
    let (mut sa, mut sb) = (state(), state());
    let request = x_wing_to_rebel(40000);
    let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &request);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(wire.len(), request.len(), "not encapsulated");
    assert_eq!(
        (&wire[..6], &wire[6..12]),
        (&node_mac(2)[..], &node_mac(1)[..])
    );
    assert_eq!(sa.counters.forwarded(Forward::Direct).packets, 1);

    let (verdict, delivered) = run(&b, &mut sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT), "x-wing's identity");
    assert_eq!(ports(&delivered), (x_wing().ip, 40000, rebel_c2().ip, 8080));

    let tunnel_mode = tables(
        2,
        &[(X_WING_PORT, rebel_c2())],
        &[x_wing()],
        &[only_x_wing()],
    );
    assert_eq!(
        run(&tunnel_mode, &mut state(), UPLINK, &wire).0,
        Verdict::Drop(DropReason::PolicyDenied),
        "in tunnel mode a pod address claimed in the clear is world"
    );
    let mut stranger = Vec::new();
    PacketBuilder::ethernet2(node_mac(1), node_mac(2))
        .ipv4([100, 64, 1, 99], rebel_c2().ip.octets(), 63)
        .tcp(40001, 8080, 1, 1024)
        .syn()
        .write(&mut stranger, b"hello")
        .unwrap();
    assert_eq!(
        run(&b, &mut sb, UPLINK, &stranger).0,
        Verdict::Drop(DropReason::PolicyDenied),
        "an address outside the ipcache is world"
    );
}

#[test]
fn a_plain_frame_claiming_a_mesh_address_from_any_other_mac_is_dropped() {
    for mode in [RoutingMode::Hybrid, NATIVE, NATIVE_ROUTED] {
        let (a, b) = pair(mode, NodeLink::Segment);
        let (_, wire) = run(&a, &mut state(), X_WING_PORT, &x_wing_to_rebel(40000));
        for mac in [STRANGER_MAC, ROUTER_MAC] {
            let mut sb = state();
            assert_eq!(
                run(&b, &mut sb, UPLINK, &with_src_mac(&wire, mac)).0,
                Verdict::Drop(DropReason::SpoofedUnderlaySource),
                "{mode:?}: x-wing's address from {mac:02x?}"
            );
            assert_eq!(
                sb.counters
                    .dropped(DropReason::SpoofedUnderlaySource)
                    .packets,
                1
            );
        }
    }
}

#[test]
fn a_plain_frame_claiming_a_pod_of_the_receiving_node_is_dropped() {
    // rebel-base's own address, from x-wing's node (whose MAC is proven): nobody else owns it.
    let (_, b) = pair(RoutingMode::Hybrid, NodeLink::Segment);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(node_mac(1), node_mac(2))
        .ipv4(rebel_c2().ip.octets(), rebel_c2().ip.octets(), 63)
        .tcp(1, 8080, 1, 1024)
        .syn()
        .write(&mut frame, b"loop")
        .unwrap();
    assert_eq!(
        run(&b, &mut state(), UPLINK, &frame).0,
        Verdict::Drop(DropReason::SpoofedUnderlaySource)
    );
}

#[test]
fn a_source_outside_the_mesh_stays_world_in_every_mode() {
    for mode in [RoutingMode::Tunnel, RoutingMode::Hybrid, NATIVE] {
        let (_, b) = pair(mode, NodeLink::Segment);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(STRANGER_MAC, node_mac(2))
            .ipv4([203, 0, 113, 10], rebel_c2().ip.octets(), 63)
            .tcp(1, 8080, 1, 1024)
            .syn()
            .write(&mut frame, b"world")
            .unwrap();
        assert_eq!(
            run(&b, &mut state(), UPLINK, &frame).0,
            Verdict::Drop(DropReason::PolicyDenied),
            "{mode:?}: world, which rebel-base does not admit"
        );
    }
}

#[test]
fn native_routing_reaches_a_node_behind_the_router_only_when_the_underlay_routes_pods() {
    let (a, _) = pair(NATIVE, |_| NodeLink::Routed);
    let mut sa = state();
    assert_eq!(
        run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40000)).0,
        Verdict::Drop(DropReason::NodeOffSegment)
    );
    assert_eq!(sa.counters.dropped(DropReason::NodeOffSegment).packets, 1);

    let (a, b) = pair(NATIVE_ROUTED, |_| NodeLink::Routed);
    let request = x_wing_to_rebel(40001);
    let (verdict, wire) = run(&a, &mut state(), X_WING_PORT, &request);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(wire.len(), request.len(), "not encapsulated");
    assert_eq!(&wire[..6], &ROUTER_MAC, "to the router");

    // The router hands it on from its own MAC: believed only because the underlay routes pods.
    let mut routed = with_src_mac(&wire, ROUTER_MAC);
    routed[..6].copy_from_slice(&node_mac(2));
    assert_eq!(
        run(&b, &mut state(), UPLINK, &routed).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let (_, hybrid) = pair(RoutingMode::Hybrid, |_| NodeLink::Routed);
    assert_eq!(
        run(&hybrid, &mut state(), UPLINK, &routed).0,
        Verdict::Drop(DropReason::SpoofedUnderlaySource),
        "hybrid tunnels to nodes behind the router: their pods never come plain"
    );
}

#[test]
fn native_routing_waits_for_a_node_mac_both_ways() {
    let (a, b) = pair(NATIVE, |_| NodeLink::Unresolved);
    let (verdict, _) = run(&a, &mut state(), X_WING_PORT, &x_wing_to_rebel(40000));
    assert_eq!(verdict, Verdict::Drop(DropReason::NodeMacUnresolved));
    let (resolved, _) = pair(NATIVE, NodeLink::Segment);
    let (_, wire) = run(
        &resolved,
        &mut state(),
        X_WING_PORT,
        &x_wing_to_rebel(40000),
    );
    assert_eq!(
        run(&b, &mut state(), UPLINK, &wire).0,
        Verdict::Drop(DropReason::NodeMacUnresolved)
    );
}

#[test]
fn hybrid_tunnels_to_an_unresolved_neighbour_through_the_router() {
    let (a, b) = pair(RoutingMode::Hybrid, |_| NodeLink::Unresolved);
    let (verdict, wire) = run(&a, &mut state(), X_WING_PORT, &x_wing_to_rebel(40000));
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(&wire[..6], &ROUTER_MAC);
    assert_eq!(udp_dst_port(&wire), 8472);
    assert_eq!(
        run(&b, &mut state(), UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT),
        "a tunnel frame proves its identity as in tunnel mode"
    );
}

fn udp_dst_port(frame: &[u8]) -> u16 {
    let sliced = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    udp.destination_port()
}

#[test]
fn geneve_carries_the_identity_on_udp_6081_to_the_neighbours_mac() {
    let (mut a, mut b) = pair(RoutingMode::Tunnel, NodeLink::Segment);
    a.node.tunnel = TunnelProtocol::Geneve;
    b.node.tunnel = TunnelProtocol::Geneve;
    let (mut sa, mut sb) = (state(), state());
    let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40000));
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(&wire[..6], &node_mac(2), "to the neighbour, not the router");
    assert_eq!(udp_dst_port(&wire), 6081);
    assert_eq!(sa.counters.forwarded(Forward::Tunnel).packets, 1);
    let (verdict, delivered) = run(&b, &mut sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT), "x-wing's identity");
    assert_eq!(ports(&delivered), (x_wing().ip, 40000, rebel_c2().ip, 8080));
}

#[test]
fn the_path_mtu_of_a_plain_next_hop_is_the_uplinks() {
    // 1500 bytes of IP fit the uplink as they are, but not in a tunnel.
    let mut big = Vec::new();
    PacketBuilder::ethernet2(x_wing().mac, GATEWAY_MAC)
        .ipv4(x_wing().ip.octets(), rebel_c2().ip.octets(), 64)
        .tcp(40000, 8080, 1, 1024)
        .write(&mut big, &[0u8; 1460])
        .unwrap();
    let (native, _) = pair(NATIVE, NodeLink::Segment);
    let (verdict, wire) = run(&native, &mut state(), X_WING_PORT, &big);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(wire.len(), big.len());
    let (tunnel, _) = pair(RoutingMode::Tunnel, NodeLink::Segment);
    let mut s = state();
    assert_eq!(
        run(&tunnel, &mut s, X_WING_PORT, &big).0,
        Verdict::Transmit(X_WING_PORT),
        "fragmentation needed, back to the pod"
    );
    assert_eq!(s.counters.forwarded(Forward::IcmpError).packets, 1);
}
