//! The program's classification, run in the kernel over real frames built with etherparse
//! (BPF_PROG_TEST_RUN): needs root; not root, each test is reported as skipped (and fails under
//! `scripts/test`). No socket is ever bound here, so every frame the dataplane owns shows the
//! fail-closed path: dropped, counted.

use super::*;
use crate::MasqueradePorts;
use etherparse::PacketBuilder;
use meshpath_testkit::needs_root;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const PEER4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 2);
/// Cilium's WireGuard port, which the uplink hands over from known nodes as it does the tunnel ports.
const WIREGUARD: u16 = 51871;
const MASQ: MasqueradePorts = MasqueradePorts {
    first: 61000,
    last: 65535,
};
const NODE4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 1);
const POD_NET4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 0);
const POD_NET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, 0);
const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

fn uplink() -> XdpRedirect {
    let node = NodeAddrs {
        ipv4: Some(NODE4),
        ipv6: Some(NODE6),
    };
    let mut prog = XdpRedirect::load(Role::Uplink, node).expect("root can load the XDP program");
    let prefixes = [
        PodPrefix {
            addr: IpAddr::V4(POD_NET4),
            len: 24,
        },
        PodPrefix {
            addr: IpAddr::V6(POD_NET6),
            len: 64,
        },
    ];
    prog.set_pod_prefixes(&prefixes).expect("prefixes fit");
    let peers = [
        IpAddr::V4(PEER4),
        IpAddr::V6(PEER6),
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 9)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    prog.set_tunnel_peers(&peers).expect("peers fit");
    prog.set_masquerade_ports(Some(MASQ)).expect("config");
    prog
}

/// Who the program gave a frame to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Kernel,
    /// The dataplane's: with no socket bound, dropped as `dropped_no_socket`.
    Dataplane,
    /// Tunnel traffic from no known node: dropped as `dropped_unknown_peer`.
    Nobody,
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Udp(u16),
    Tcp(u16),
    Icmp,
}

fn frame(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MACS.0, MACS.1);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("same family by construction"),
    };
    let payload = [0u8; 18];
    let mut out = Vec::new();
    match l4 {
        L4::Udp(port) => ip.udp(40000, port).write(&mut out, &payload),
        L4::Tcp(port) => ip.tcp(40000, port, 1, 1024).write(&mut out, &payload),
        L4::Icmp if src.is_ipv4() => ip.icmpv4_echo_request(1, 1).write(&mut out, &payload),
        L4::Icmp => ip.icmpv6_echo_request(1, 1).write(&mut out, &payload),
    }
    .expect("frame fits");
    out
}

/// Runs the frame and says, from the action and the counters, whose it was.
fn owner(prog: &XdpRedirect, frame: &[u8]) -> Owner {
    let before = prog.verdicts().expect("counters readable");
    let action = prog.test_run(frame).expect("test run");
    let after = prog.verdicts().expect("counters readable");
    let moved = |f: fn(&VerdictCounts) -> u64| f(&after) - f(&before);
    let total = moved(|c| c.pass)
        + moved(|c| c.to_xsk)
        + moved(|c| c.dropped_no_socket)
        + moved(|c| c.dropped_unknown_peer);
    assert_eq!(total, 1, "one counter per frame");
    match action {
        XDP_PASS => {
            assert_eq!(moved(|c| c.pass), 1);
            Owner::Kernel
        }
        XDP_DROP if moved(|c| c.dropped_no_socket) == 1 => Owner::Dataplane,
        XDP_DROP if moved(|c| c.dropped_unknown_peer) == 1 => Owner::Nobody,
        other => panic!("unexpected action {other}"),
    }
}

fn owned(prog: &XdpRedirect, frame: &[u8]) -> bool {
    owner(prog, frame) == Owner::Dataplane
}

#[test]
fn uplink_takes_tunnels_to_the_node_and_frames_for_local_pods() {
    if !needs_root("uplink_takes_tunnels_to_the_node_and_frames_for_local_pods") {
        return;
    }
    let prog = uplink();
    let peer4 = IpAddr::V4(PEER4);
    let peer6 = IpAddr::V6(PEER6);
    let pod4 = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10));
    let pod6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, 10));
    let cases = [
        (peer4, IpAddr::V4(NODE4), L4::Udp(8472), true),
        (peer4, IpAddr::V4(NODE4), L4::Udp(6081), true),
        (peer4, IpAddr::V4(NODE4), L4::Udp(WIREGUARD), true),
        (peer6, IpAddr::V6(NODE6), L4::Udp(8472), true),
        (peer6, IpAddr::V6(NODE6), L4::Udp(WIREGUARD), true),
        (peer4, pod4, L4::Tcp(80), true),
        (peer6, pod6, L4::Icmp, true),
        (peer4, IpAddr::V4(NODE4), L4::Tcp(2379), false),
        (peer4, IpAddr::V4(NODE4), L4::Udp(53), false),
        (peer4, IpAddr::V4(NODE4), L4::Icmp, false),
        (
            peer4,
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3)),
            L4::Udp(8472),
            false,
        ),
        (peer6, IpAddr::V6(NODE6), L4::Tcp(22), false),
        (
            peer4,
            IpAddr::V4(Ipv4Addr::new(100, 64, 2, 10)),
            L4::Tcp(80),
            false,
        ),
    ];
    for (src, dst, l4, want) in cases {
        assert_eq!(
            owned(&prog, &frame(src, dst, l4)),
            want,
            "{src} -> {dst} {l4:?}"
        );
    }
    let mut arp = frame(peer4, IpAddr::V4(NODE4), L4::Udp(8472));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(!owned(&prog, &arp), "ARP is the kernel's");
}

#[test]
fn tunnel_traffic_from_an_address_that_is_no_node_is_dropped_and_counted() {
    if !needs_root("tunnel_traffic_from_an_address_that_is_no_node_is_dropped_and_counted") {
        return;
    }
    let mut prog = uplink();
    let stranger = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 66));
    let vxlan = frame(stranger, IpAddr::V4(NODE4), L4::Udp(8472));
    assert_eq!(owner(&prog, &vxlan), Owner::Nobody);
    let stranger6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 66));
    assert_eq!(
        owner(&prog, &frame(stranger6, IpAddr::V6(NODE6), L4::Udp(6081))),
        Owner::Nobody
    );
    let wireguard = frame(stranger, IpAddr::V4(NODE4), L4::Udp(WIREGUARD));
    assert_eq!(owner(&prog, &wireguard), Owner::Nobody, "WireGuard too");
    let from_peer = frame(IpAddr::V4(PEER4), IpAddr::V4(NODE4), L4::Udp(8472));
    assert_eq!(owner(&prog, &from_peer), Owner::Dataplane);
    let wireguard_from_peer = frame(IpAddr::V4(PEER4), IpAddr::V4(NODE4), L4::Udp(WIREGUARD));
    assert_eq!(owner(&prog, &wireguard_from_peer), Owner::Dataplane);
    prog.set_tunnel_peers(&[IpAddr::V4(Ipv4Addr::new(198, 18, 1, 66))])
        .expect("peers fit");
    assert_eq!(owner(&prog, &vxlan), Owner::Dataplane, "a node that joined");
    assert_eq!(
        owner(&prog, &wireguard),
        Owner::Dataplane,
        "a node that joined"
    );
    assert_eq!(owner(&prog, &from_peer), Owner::Nobody, "a node that left");
    assert_eq!(
        owner(&prog, &wireguard_from_peer),
        Owner::Nobody,
        "a node that left"
    );
}

/// An ICMP error from a router to the node, quoting a packet the node sent from `sport`.
fn error_quoting(v6: bool, quoted_l4: L4) -> Vec<u8> {
    let (node, world, router) = if v6 {
        (
            IpAddr::V6(NODE6),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(NODE4),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
            IpAddr::V4(Ipv4Addr::new(198, 18, 255, 1)),
        )
    };
    let quoted = frame(node, world, quoted_l4);
    let inner = &quoted[14..];
    let eth = PacketBuilder::ethernet2(MACS.0, MACS.1);
    let mut out = Vec::new();
    match (router, node) {
        (IpAddr::V4(r), IpAddr::V4(n)) => eth
            .ipv4(r.octets(), n.octets(), 64)
            .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            ))
            .write(&mut out, &inner[..28]),
        (IpAddr::V6(r), IpAddr::V6(n)) => eth
            .ipv6(r.octets(), n.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, inner),
        _ => unreachable!(),
    }
    .expect("frame fits");
    out
}

fn echo_reply(v6: bool, id: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MACS.0, MACS.1);
    let mut out = Vec::new();
    if v6 {
        eth.ipv6(Ipv6Addr::LOCALHOST.octets(), NODE6.octets(), 64)
            .icmpv6_echo_reply(id, 1)
            .write(&mut out, b"pong")
    } else {
        eth.ipv4([203, 0, 113, 10], NODE4.octets(), 64)
            .icmpv4_echo_reply(id, 1)
            .write(&mut out, b"pong")
    }
    .expect("frame fits");
    out
}

#[test]
fn replies_to_masqueraded_flows_and_errors_about_them_are_the_dataplanes() {
    if !needs_root("replies_to_masqueraded_flows_and_errors_about_them_are_the_dataplanes") {
        return;
    }
    let prog = uplink();
    let world4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    let world6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10));
    for (world, node) in [(world4, IpAddr::V4(NODE4)), (world6, IpAddr::V6(NODE6))] {
        let v6 = world.is_ipv6();
        assert!(
            owned(&prog, &frame(world, node, L4::Tcp(61234))),
            "{world} TCP reply"
        );
        assert!(
            owned(&prog, &frame(world, node, L4::Udp(65535))),
            "{world} UDP reply"
        );
        assert!(
            !owned(&prog, &frame(world, node, L4::Tcp(50000))),
            "the node's own port"
        );
        assert!(
            !owned(&prog, &frame(world, node, L4::Tcp(60999))),
            "just below the range"
        );
        assert!(owned(&prog, &echo_reply(v6, 62000)), "echo reply");
        assert!(!owned(&prog, &echo_reply(v6, 7)), "the node's own ping");
        let own = error_quoting(v6, L4::Tcp(80));
        assert!(
            !owned(&prog, &own),
            "an error about the node's own flow (port 40000)"
        );
    }
    // Errors quoting a masqueraded packet: the quoted source port decides.
    let mut error = error_quoting(false, L4::Tcp(80));
    error[14 + 20 + 8 + 20..14 + 20 + 8 + 22].copy_from_slice(&61500u16.to_be_bytes());
    assert!(
        owned(&prog, &error),
        "time exceeded about a masqueraded flow"
    );
    let mut error6 = error_quoting(true, L4::Udp(53));
    error6[14 + 40 + 8 + 40..14 + 40 + 8 + 42].copy_from_slice(&61500u16.to_be_bytes());
    assert!(
        owned(&prog, &error6),
        "packet too big about a masqueraded flow"
    );

    prog.set_masquerade_ports(None).expect("config");
    assert!(
        !owned(&prog, &frame(world4, IpAddr::V4(NODE4), L4::Tcp(61234))),
        "no masquerading"
    );
    assert!(!owned(&prog, &error));
}

#[test]
fn host_role_takes_everything_the_nodes_stack_sends() {
    if !needs_root("host_role_takes_everything_the_nodes_stack_sends") {
        return;
    }
    let host = XdpRedirect::load(Role::Host, NodeAddrs::default()).expect("root can load");
    let to_pod = frame(
        IpAddr::V4(NODE4),
        IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10)),
        L4::Tcp(8080),
    );
    assert!(owned(&host, &to_pod));
    assert!(owned(&host, &[0u8; 14]));
}

#[test]
fn pod_role_takes_every_frame_and_removed_prefixes_stop_matching() {
    if !needs_root("pod_role_takes_every_frame_and_removed_prefixes_stop_matching") {
        return;
    }
    let pod = XdpRedirect::load(Role::Pod, NodeAddrs::default()).expect("root can load");
    let f = frame(
        IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10)),
        IpAddr::V4(NODE4),
        L4::Tcp(22),
    );
    assert!(owned(&pod, &f));
    assert!(
        owned(&pod, &[0u8; 14]),
        "even garbage: the pipeline counts it"
    );

    let mut up = uplink();
    let to_pod = frame(
        IpAddr::V4(NODE4),
        IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10)),
        L4::Icmp,
    );
    assert!(owned(&up, &to_pod));
    up.set_pod_prefixes(&[]).expect("clearing works");
    assert!(!owned(&up, &to_pod));
}

#[test]
fn register_socket_rejects_a_queue_beyond_the_map() {
    if !needs_root("register_socket_rejects_a_queue_beyond_the_map") {
        return;
    }
    let prog = uplink();
    let fd = std::fs::File::open("/dev/null").expect("/dev/null");
    let err = prog.register_socket(MAX_QUEUES, fd.as_fd()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::QueueOutOfRange {
                queue: MAX_QUEUES,
                ..
            }
        ),
        "{err}"
    );
    // A queue in range but an fd that is no AF_XDP socket: the kernel refuses it.
    assert!(prog.register_socket(0, fd.as_fd()).is_err());
    prog.unregister_socket(0)
        .expect("deleting an empty slot is fine");
}

fn addr_strategy(v6: bool) -> impl Strategy<Value = (IpAddr, bool, bool)> {
    // (address, is the node's, is in the pod prefix)
    prop_oneof![
        Just(if v6 {
            (IpAddr::V6(NODE6), true, false)
        } else {
            (IpAddr::V4(NODE4), true, false)
        }),
        any::<u8>().prop_map(move |h| if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, h.into())),
                false,
                true,
            )
        } else {
            (IpAddr::V4(Ipv4Addr::new(100, 64, 1, h)), false, true)
        }),
        any::<u32>().prop_map(move |x| if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    (x >> 16) as u16,
                    x as u16,
                )),
                false,
                false,
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, x as u8)),
                false,
                false,
            )
        }),
    ]
}

fn l4_strategy() -> impl Strategy<Value = L4> {
    let port = prop_oneof![Just(8472u16), Just(6081u16), Just(WIREGUARD), any::<u16>()];
    prop_oneof![
        port.clone().prop_map(L4::Udp),
        port.prop_map(L4::Tcp),
        Just(L4::Icmp)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The kernel program agrees with the rule it implements, on either address family.
    #[test]
    fn uplink_classification_matches_the_rule(
        (dst, is_node, is_pod) in any::<bool>().prop_flat_map(addr_strategy),
        l4 in l4_strategy(),
    ) {
        if !needs_root("uplink_classification_matches_the_rule") {
            return Ok(());
        }
        let src = if dst.is_ipv4() { IpAddr::V4(Ipv4Addr::new(198, 18, 1, 9)) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        let tunnel = matches!(l4, L4::Udp(8472) | L4::Udp(6081) | L4::Udp(WIREGUARD));
        let masq_reply = matches!(l4, L4::Udp(p) | L4::Tcp(p) if (MASQ.first..=MASQ.last).contains(&p));
        let want = is_pod || (is_node && (tunnel || masq_reply));
        let prog = uplink();
        prop_assert_eq!(owned(&prog, &frame(src, dst, l4)), want);
    }
}

#[test]
fn pinned_maps_carry_peers_prefixes_and_counters_over_to_the_next_load() {
    if !needs_root("pinned_maps_carry_peers_prefixes_and_counters_over_to_the_next_load") {
        return;
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/meshpath-test-{}", std::process::id()));
    let node = NodeAddrs {
        ipv4: Some(NODE4),
        ipv6: None,
    };
    let vxlan = frame(IpAddr::V4(PEER4), IpAddr::V4(NODE4), L4::Udp(8472));
    let mut first = XdpRedirect::load_pinned(Role::Uplink, node, &dir).expect("load pinned");
    first.set_tunnel_peers(&[IpAddr::V4(PEER4)]).expect("peers");
    assert!(owned(&first, &vxlan));
    let counted = first.verdicts().expect("counters").dropped_no_socket;
    drop(first);

    let mut second = XdpRedirect::load_pinned(Role::Uplink, node, &dir).expect("reload pinned");
    assert!(owned(&second, &vxlan), "the peer survived the reload");
    assert_eq!(
        second.verdicts().expect("counters").dropped_no_socket,
        counted + 1,
        "counting goes on"
    );
    second.set_tunnel_peers(&[]).expect("peers");
    assert_eq!(
        owner(&second, &vxlan),
        Owner::Nobody,
        "stale peers are removed"
    );
    drop(second);
    std::fs::remove_dir_all(&dir).expect("pins removed");
}

/// Inserts `bytes` at `at`.
fn insert(frame: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    [&frame[..at], bytes, &frame[at..]].concat()
}

/// Adds `n` to the 16-bit big-endian length at `at`.
fn grow(frame: &mut [u8], at: usize, n: u16) {
    let len = u16::from_be_bytes([frame[at], frame[at + 1]]) + n;
    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
}

/// An 802.1Q tag (VLAN 10) in front of the ethertype.
fn vlan_tagged(frame: &[u8]) -> Vec<u8> {
    insert(frame, 12, &[0x81, 0x00, 0x00, 0x0a])
}

/// Four bytes of IPv4 options (NOPs): a 24-byte header.
fn ipv4_options(frame: &[u8]) -> Vec<u8> {
    let mut out = insert(frame, 14 + 20, &[1, 1, 1, 1]);
    out[14] = 0x46;
    grow(&mut out, 14 + 2, 4);
    out
}

/// Sets the IPv4 fragment field: more fragments, and the offset in 8-byte units.
fn ipv4_fragment(frame: &[u8], more: bool, offset: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    let field = u16::from(more) << 13 | offset;
    out[14 + 6..14 + 8].copy_from_slice(&field.to_be_bytes());
    out
}

/// An IPv6 extension header (hop-by-hop 0 or fragment 44) between the fixed header and UDP.
fn ipv6_extension(frame: &[u8], kind: u8) -> Vec<u8> {
    let next = frame[14 + 6];
    let mut out = insert(frame, 14 + 40, &[next, 0, 1, 4, 0, 0, 0, 0]);
    out[14 + 6] = kind;
    grow(&mut out, 14 + 4, 8);
    out
}

/// The uplink's classification of frames that carry more than the plain headers: VLAN tags, IPv4
/// options and fragments, IPv6 extension headers. Tunnels to the node are recognised only where the
/// UDP header is found without guessing (IPv4 with options: yes; a non-first fragment or behind an
/// IPv6 extension header: no, the kernel's); a local pod's prefix is the dataplane's whatever follows
/// (the pipeline counts what it cannot forward); a tagged frame is the kernel's (its VLAN device's).
#[test]
fn uplink_classifies_tags_options_fragments_and_extension_headers() {
    if !needs_root("uplink_classifies_tags_options_fragments_and_extension_headers") {
        return;
    }
    use Owner::{Dataplane, Kernel};
    let prog = uplink();
    let peer4 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    let peer6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 2));
    let pod4 = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10));
    let pod6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, 10));
    let vxlan4 = frame(peer4, IpAddr::V4(NODE4), L4::Udp(8472));
    let geneve6 = frame(peer6, IpAddr::V6(NODE6), L4::Udp(6081));
    let to_pod4 = frame(peer4, pod4, L4::Tcp(80));
    let to_pod6 = frame(peer6, pod6, L4::Udp(53));
    let cases: [(&str, Vec<u8>, Owner); 14] = [
        ("VXLAN to the node", vxlan4.clone(), Dataplane),
        ("VXLAN, VLAN-tagged", vlan_tagged(&vxlan4), Kernel),
        ("to a pod, VLAN-tagged", vlan_tagged(&to_pod4), Kernel),
        ("VXLAN with IPv4 options", ipv4_options(&vxlan4), Dataplane),
        (
            "to a pod with IPv4 options",
            ipv4_options(&to_pod4),
            Dataplane,
        ),
        (
            "VXLAN, first fragment",
            ipv4_fragment(&vxlan4, true, 0),
            Dataplane,
        ),
        (
            "VXLAN, later fragment",
            ipv4_fragment(&vxlan4, false, 4),
            Kernel,
        ),
        (
            "to a pod, later fragment",
            ipv4_fragment(&to_pod4, false, 4),
            Dataplane,
        ),
        ("Geneve over IPv6 to the node", geneve6.clone(), Dataplane),
        (
            "Geneve behind hop-by-hop",
            ipv6_extension(&geneve6, 0),
            Kernel,
        ),
        (
            "Geneve behind a fragment header",
            ipv6_extension(&geneve6, 44),
            Kernel,
        ),
        (
            "to an IPv6 pod behind hop-by-hop",
            ipv6_extension(&to_pod6, 0),
            Dataplane,
        ),
        (
            "IPv4 header length below 5",
            {
                let mut short = vxlan4.clone();
                short[14] = 0x44;
                short
            },
            Kernel,
        ),
        ("IPv4 header cut short", vxlan4[..14 + 12].to_vec(), Kernel),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(owner(&prog, &bytes), want, "{name}");
    }
}
