//! The node's own path on real frames: the host port (the node's stack reaching its pods and the mesh,
//! with the `host` identity), masquerading of traffic leaving the mesh and its replies and ICMP
//! errors, path MTU errors, offloaded checksums, and what a tunnel frame must prove.

use super::*;
use crate::endpoint::Endpoint;
use crate::ipcache::IpPrefix;
use crate::masquerade::{Masquerade, PortRange};
use crate::snapshot::HostPort;
use etherparse::{icmpv4, Icmpv4Type};

pub(super) const HOST_PORT: PortId = PortId(9);
pub(super) const HOST_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
pub(super) const KERNEL_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
pub(super) const WORLD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Cluster `c`'s node with a host port and masquerading.
pub(super) fn node_tables(
    c: u8,
    local: &[(PortId, Pod)],
    remote: &[Pod],
    rules: &[PolicyRule],
) -> Tables {
    let mut t = tables(c, local, remote, rules);
    t.node.host = Some(HostPort {
        port: HOST_PORT,
        mac: HOST_MAC,
        kernel_mac: KERNEL_MAC,
    });
    t.node.masquerade = Some(Masquerade {
        ipv4: Some(node_ip(c)),
        ipv6: None,
        ports: PortRange::DEFAULT,
        non_masquerade: vec![],
    });
    t
}

/// Nothing may come into `pod` (an ingress rule that selects it and allows no one).
fn deny_all_into(name: &str) -> PolicyRule {
    PolicyRule {
        endpoint_selector: LabelSelector::all().with_label("name", name),
        ingress: Some(vec![]),
        egress: None,
    }
}

fn frame_v4(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, GATEWAY_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 1024)
        .syn()
        .write(&mut out, b"hello")
        .unwrap();
    out
}

#[test]
fn the_node_reaches_its_pod_as_host_whatever_the_pod_policy_and_the_reply_goes_back_to_the_kernel()
{
    let t = node_tables(
        1,
        &[(X_WING_PORT, x_wing())],
        &[],
        &[deny_all_into("x-wing")],
    );
    let mut s = state();
    let probe = frame_v4(KERNEL_MAC, node_ip(1), x_wing().ip, 50000, 8080);
    let (verdict, out) = run(&t, &mut s, HOST_PORT, &probe);
    assert_eq!(
        verdict,
        Verdict::Transmit(X_WING_PORT),
        "kubelet's probe gets through"
    );
    assert_eq!(&out[..6], &x_wing().mac);
    let event = s.flowlog.drain().last().unwrap();
    assert_eq!(event.src_identity, Identity::HOST);
    assert_eq!(event.direction, Direction::FromHost);

    let reply = tcp(&x_wing(), node_ip(1), 8080, 50000, false);
    let (verdict, out) = run(&t, &mut s, X_WING_PORT, &reply);
    assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    assert_eq!((&out[..6], &out[6..12]), (&KERNEL_MAC[..], &HOST_MAC[..]));
    assert_eq!(
        ports(&out),
        (x_wing().ip, 8080, node_ip(1), 50000),
        "not masqueraded"
    );
}

#[test]
fn another_address_the_kernel_forwards_in_is_world_and_faces_policy() {
    let t = node_tables(
        1,
        &[(X_WING_PORT, x_wing())],
        &[],
        &[deny_all_into("x-wing")],
    );
    let forwarded = frame_v4(KERNEL_MAC, WORLD, x_wing().ip, 50000, 8080);
    assert_eq!(
        run(&t, &mut state(), HOST_PORT, &forwarded).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}

#[test]
fn the_nodes_traffic_to_a_remote_pod_is_remote_node_in_the_tunnel_and_only_from_the_node_itself() {
    let a = node_tables(1, &[], &[rebel_c2()], &[]);
    let b = node_tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let (mut sa, mut sb) = (state(), state());
    let probe = frame_v4(KERNEL_MAC, node_ip(1), rebel_c2().ip, 50000, 8080);
    let (verdict, wire) = run(&a, &mut sa, HOST_PORT, &probe);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(vni_of(&wire), Identity::REMOTE_NODE.get());
    let (verdict, _) = run(&b, &mut sb, UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(
        sb.flowlog.drain().last().unwrap().src_identity,
        Identity::REMOTE_NODE
    );

    // A pod of node 1 claiming remote-node in the VNI is refused.
    let forged = tunnelled(&x_wing(), rebel_c2().ip, Identity::REMOTE_NODE.get());
    assert_eq!(
        run(&b, &mut sb, UPLINK, &forged).0,
        Verdict::Drop(DropReason::ReservedIdentity)
    );
    let host = tunnelled(&x_wing(), rebel_c2().ip, Identity::HOST.get());
    assert_eq!(
        run(&b, &mut sb, UPLINK, &host).0,
        Verdict::Drop(DropReason::ReservedIdentity)
    );
}

#[test]
fn a_tunnel_frame_may_carry_only_its_sending_nodes_cluster_and_addresses() {
    let b = node_tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let mut sb = state();
    let honest = tunnelled(&x_wing(), rebel_c2().ip, x_wing().identity.get());
    assert_eq!(
        run(&b, &mut sb, UPLINK, &honest).0,
        Verdict::Transmit(X_WING_PORT)
    );

    let other_cluster = (3u32 << 16) | 0x100;
    let wrong_cluster = tunnelled(&x_wing(), rebel_c2().ip, other_cluster);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &wrong_cluster).0,
        Verdict::Drop(DropReason::IdentityClusterMismatch)
    );
    let stranger = Pod {
        ip: Ipv4Addr::new(100, 65, 1, 77),
        ..x_wing()
    };
    let foreign = tunnelled(&stranger, rebel_c2().ip, x_wing().identity.get());
    assert_eq!(
        run(&b, &mut sb, UPLINK, &foreign).0,
        Verdict::Drop(DropReason::ForeignInnerSource),
        "node 1 may not speak for an address of cluster 2"
    );
}

#[test]
fn traffic_leaving_the_mesh_is_masqueraded_and_its_replies_and_errors_come_back_to_the_pod() {
    let t = node_tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    let mut s = state();
    let out_frame = tcp(&x_wing(), WORLD, 40000, 80, true);
    let (verdict, out) = run(&t, &mut s, X_WING_PORT, &out_frame);
    assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    assert_eq!((&out[..6], &out[6..12]), (&KERNEL_MAC[..], &HOST_MAC[..]));
    let (src, port, dst, dport) = ports(&out);
    assert_eq!((src, dst, dport), (node_ip(1), WORLD, 80));
    assert!(
        PortRange::DEFAULT.contains(port),
        "port {port} from the range"
    );
    assert_checksums(&out);

    let mut reply = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], node_mac(1))
        .ipv4(WORLD.octets(), node_ip(1).octets(), 60)
        .tcp(80, port, 9, 1024)
        .syn()
        .ack(2)
        .write(&mut reply, b"")
        .unwrap();
    let (verdict, back) = run(&t, &mut s, UPLINK, &reply);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(ports(&back), (WORLD, 80, x_wing().ip, 40000));
    assert_checksums(&back);

    // A router on the way reports the TTL ran out, quoting the masqueraded packet.
    let mut error = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], node_mac(1))
        .ipv4([198, 18, 255, 1], node_ip(1).octets(), 60)
        .icmpv4(Icmpv4Type::TimeExceeded(
            icmpv4::TimeExceededCode::TtlExceededInTransit,
        ))
        .write(&mut error, &out[14..14 + 28])
        .unwrap();
    let (verdict, delivered) = run(&t, &mut s, UPLINK, &error);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_eq!(&delivered[14 + 16..14 + 20], &x_wing().ip.octets());
    let quoted = &delivered[14 + 20 + 8..];
    assert_eq!(
        &quoted[12..16],
        &x_wing().ip.octets(),
        "the pod's own packet"
    );
    assert_eq!(&quoted[20..22], &40000u16.to_be_bytes());

    // An unsolicited frame to a masquerade port, and an error about no flow, go nowhere.
    let mut stray = reply.clone();
    stray[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&(port ^ 1).to_be_bytes());
    assert_eq!(
        run(&t, &mut s, UPLINK, &stray).0,
        Verdict::Drop(DropReason::NoNatMapping)
    );
}

#[test]
fn the_node_itself_and_the_non_masquerade_prefixes_see_the_pods_address() {
    let mut t = node_tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    if let Some(m) = t.node.masquerade.as_mut() {
        m.non_masquerade = vec![IpPrefix::new(Ipv4Addr::new(203, 0, 113, 0).into(), 24).unwrap()];
    }
    let mut s = state();
    let (verdict, out) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), WORLD, 40000, 80, true),
    );
    assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    assert_eq!(ports(&out).0, x_wing().ip);
    let (verdict, out) = run(
        &t,
        &mut s,
        X_WING_PORT,
        &tcp(&x_wing(), node_ip(1), 40001, 10250, true),
    );
    assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    assert_eq!(ports(&out).0, x_wing().ip);
}

#[test]
fn when_the_masquerade_ports_run_out_new_flows_are_counted_drops() {
    let mut t = node_tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
    if let Some(m) = t.node.masquerade.as_mut() {
        m.ports = PortRange {
            first: 62000,
            last: 62001,
        };
    }
    let mut s = state();
    for sport in 40000..40002 {
        let (verdict, _) = run(
            &t,
            &mut s,
            X_WING_PORT,
            &tcp(&x_wing(), WORLD, sport, 80, true),
        );
        assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    }
    assert_eq!(
        run(
            &t,
            &mut s,
            X_WING_PORT,
            &tcp(&x_wing(), WORLD, 40002, 80, true)
        )
        .0,
        Verdict::Drop(DropReason::NatPortExhausted)
    );
    assert_eq!(s.counters.dropped(DropReason::NatPortExhausted).packets, 1);
}

#[test]
fn a_frame_too_big_for_the_tunnel_gets_fragmentation_needed_with_the_mtu_that_fits() {
    let a = node_tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let mut s = state();
    let mut big = Vec::new();
    PacketBuilder::ethernet2(x_wing().mac, GATEWAY_MAC)
        .ipv4(x_wing().ip.octets(), rebel_c2().ip.octets(), 64)
        .tcp(40000, 8080, 1, 1024)
        .write(&mut big, &[0u8; 1460])
        .unwrap();
    let (verdict, out) = run(&a, &mut s, X_WING_PORT, &big);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT), "back to the pod");
    assert_eq!(&out[..6], &x_wing().mac);
    let sliced = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("no ICMP")
    };
    assert_eq!(
        icmp.icmp_type(),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1450
        })
    );
    assert_eq!(s.counters.forwarded(Forward::IcmpError).packets, 1);

    // What fits goes through.
    let mut fits = Vec::new();
    PacketBuilder::ethernet2(x_wing().mac, GATEWAY_MAC)
        .ipv4(x_wing().ip.octets(), rebel_c2().ip.octets(), 64)
        .tcp(40000, 8080, 1, 1024)
        .write(&mut fits, &[0u8; 1410])
        .unwrap();
    assert_eq!(
        run(&a, &mut s, X_WING_PORT, &fits).0,
        Verdict::Transmit(UPLINK)
    );
}

#[test]
fn partial_checksums_from_an_offloading_pod_leave_complete() {
    let a = node_tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let b = node_tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &[]);
    let mut partial = tcp(&x_wing(), rebel_c2().ip, 40000, 8080, true);
    let tcp_len = (partial.len() - 34) as u16;
    let pseudo = crate::wire::checksum::pseudo_header_v4(
        x_wing().ip.octets(),
        rebel_c2().ip.octets(),
        6,
        tcp_len,
    );
    partial[34 + 16..34 + 18].copy_from_slice(&pseudo.to_be_bytes());
    let (_, wire) = run(&a, &mut state(), X_WING_PORT, &partial);
    let (verdict, delivered) = run(&b, &mut state(), UPLINK, &wire);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    assert_checksums(&delivered);
}

/// `from` on node 1 sending to `to` through node 1's tunnel, with `vni` in the header.
fn tunnelled(from: &Pod, to: Ipv4Addr, vni: u32) -> Vec<u8> {
    let a = node_tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let inner = tcp(&x_wing(), to, 41000, 8080, true);
    let (_, mut wire) = run(&a, &mut state(), X_WING_PORT, &inner);
    let inner_ip = 14 + 20 + 8 + 8 + 14;
    wire[inner_ip + 12..inner_ip + 16].copy_from_slice(&from.ip.octets());
    let mut header = etherparse::Ipv4Header::from_slice(&wire[inner_ip..])
        .unwrap()
        .0;
    header.header_checksum = header.calc_header_checksum();
    wire[inner_ip..inner_ip + 20].copy_from_slice(&header.to_bytes());
    wire[14 + 20 + 8 + 4..14 + 20 + 8 + 7].copy_from_slice(&vni.to_be_bytes()[1..]);
    wire
}

fn vni_of(wire: &[u8]) -> u32 {
    let vni = &wire[14 + 20 + 8 + 4..14 + 20 + 8 + 7];
    u32::from_be_bytes([0, vni[0], vni[1], vni[2]])
}

#[test]
fn ipv6_traffic_leaving_the_mesh_is_masqueraded_and_its_replies_come_back() {
    let pod6: std::net::Ipv6Addr = "fd00:64:1::10".parse().unwrap();
    let node6: std::net::Ipv6Addr = "2001:db8:1::1".parse().unwrap();
    let world6: std::net::Ipv6Addr = "2001:db8:ff::10".parse().unwrap();
    let mut t = node_tables(1, &[], &[], &[]);
    t.node.ipv6 = Some(node6);
    if let Some(m) = t.node.masquerade.as_mut() {
        m.ipv6 = Some(node6);
    }
    t.endpoints
        .insert(Endpoint {
            port: X_WING_PORT,
            mac: x_wing().mac,
            ipv4: None,
            ipv6: Some(pod6),
            identity: x_wing().identity,
            name: "default/x-wing".into(),
        })
        .unwrap();
    let mut s = state();
    let mut out_frame = Vec::new();
    PacketBuilder::ethernet2(x_wing().mac, GATEWAY_MAC)
        .ipv6(pod6.octets(), world6.octets(), 64)
        .tcp(40000, 443, 1, 1024)
        .syn()
        .write(&mut out_frame, b"hello")
        .unwrap();
    let (verdict, out) = run(&t, &mut s, X_WING_PORT, &out_frame);
    assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
    let sliced = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6")
    };
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    assert_eq!(ip.header().source(), node6.octets());
    let port = tcp.source_port();
    assert!(PortRange::DEFAULT.contains(port));
    let header = ip.header().to_header();
    let want = tcp
        .to_header()
        .calc_checksum_ipv6(&header, tcp.payload())
        .unwrap();
    assert_eq!(tcp.checksum(), want);

    let mut reply = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], node_mac(1))
        .ipv6(world6.octets(), node6.octets(), 60)
        .tcp(443, port, 9, 1024)
        .syn()
        .ack(2)
        .write(&mut reply, b"")
        .unwrap();
    let (verdict, back) = run(&t, &mut s, UPLINK, &reply);
    assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
    let sliced = SlicedPacket::from_ethernet(&back).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6")
    };
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP")
    };
    assert_eq!(ip.header().destination(), pod6.octets());
    assert_eq!(tcp.destination_port(), 40000);
    let header = ip.header().to_header();
    let want = tcp
        .to_header()
        .calc_checksum_ipv6(&header, tcp.payload())
        .unwrap();
    assert_eq!(tcp.checksum(), want);
}

/// An external workload's own endpoint: the host of cluster 1's "node" itself, behind its host port.
fn vm_db() -> Pod {
    Pod {
        ip: node_ip(1),
        mac: KERNEL_MAC,
        identity: Identity::new((1 << 16) | 0x200).unwrap(),
        labels: Labels::new()
            .with("name", "vm-db")
            .with(CLUSTER_LABEL, "cluster1"),
    }
}

#[test]
fn an_external_workload_sends_as_its_own_endpoint_and_faces_its_policy() {
    let vm = node_tables(1, &[(HOST_PORT, vm_db())], &[rebel_c2()], &[]);
    let b = node_tables(2, &[(X_WING_PORT, rebel_c2())], &[vm_db()], &[]);
    let (mut svm, mut sb) = (state(), state());
    let call = frame_v4(KERNEL_MAC, node_ip(1), rebel_c2().ip, 50000, 8080);
    let (verdict, wire) = run(&vm, &mut svm, HOST_PORT, &call);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(
        vni_of(&wire),
        vm_db().identity.get(),
        "its identity, not remote-node"
    );
    assert_eq!(
        run(&b, &mut sb, UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT)
    );
    assert_eq!(
        sb.flowlog.drain().last().unwrap().src_identity,
        vm_db().identity
    );

    let reply = tcp(&rebel_c2(), node_ip(1), 8080, 50000, false);
    let (verdict, wire) = run(&b, &mut sb, X_WING_PORT, &reply);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    let (verdict, out) = run(&vm, &mut svm, UPLINK, &wire);
    assert_eq!(
        verdict,
        Verdict::Transmit(HOST_PORT),
        "back to the host's stack"
    );
    assert_eq!(&out[..6], &KERNEL_MAC);

    let guarded = node_tables(
        1,
        &[(HOST_PORT, vm_db())],
        &[rebel_c2()],
        &[deny_all_into("vm-db")],
    );
    let call_in = tcp(&rebel_c2(), node_ip(1), 41000, 5432, true);
    let (_, wire) = run(&b, &mut sb, X_WING_PORT, &call_in);
    assert_eq!(
        run(&guarded, &mut state(), UPLINK, &wire).0,
        Verdict::Drop(DropReason::PolicyDenied)
    );
}
