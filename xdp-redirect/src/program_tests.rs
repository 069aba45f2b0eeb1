//! The program's classification, run in the kernel over real frames built with etherparse
//! (BPF_PROG_TEST_RUN): needs root; skipped with a printed reason only when not root.

use super::*;
use etherparse::PacketBuilder;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const XDP_PASS: u32 = 2;
const NODE4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 1);
const POD_NET4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 0);
const POD_NET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, 0);
const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

pub(crate) fn is_root() -> bool {
    let root = crate::sys::effective_uid() == 0;
    if !root {
        eprintln!("skipped: needs root for BPF_PROG_TEST_RUN");
    }
    root
}

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
    prog
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

/// Runs the frame and says whether the program sent it towards the XSK (read from its counters).
fn owned(prog: &XdpRedirect, frame: &[u8]) -> bool {
    let before = prog.verdicts().expect("counters readable");
    let action = prog.test_run(frame).expect("test run");
    let after = prog.verdicts().expect("counters readable");
    // No socket is bound, so even an owned frame falls back to the kernel.
    assert_eq!(action, XDP_PASS);
    assert_eq!(after.pass + after.to_xsk, before.pass + before.to_xsk + 1);
    after.to_xsk == before.to_xsk + 1
}

#[test]
fn uplink_takes_tunnels_to_the_node_and_frames_for_local_pods() {
    if !is_root() {
        return;
    }
    let prog = uplink();
    let peer4 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    let peer6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, 2));
    let pod4 = IpAddr::V4(Ipv4Addr::new(100, 64, 1, 10));
    let pod6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x100, 0x64, 1, 0, 0, 0, 10));
    let cases = [
        (peer4, IpAddr::V4(NODE4), L4::Udp(8472), true),
        (peer4, IpAddr::V4(NODE4), L4::Udp(6081), true),
        (peer6, IpAddr::V6(NODE6), L4::Udp(8472), true),
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
fn pod_role_takes_every_frame_and_removed_prefixes_stop_matching() {
    if !is_root() {
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
    if !is_root() {
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
    let port = prop_oneof![Just(8472u16), Just(6081u16), any::<u16>()];
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
        if !is_root() {
            return Ok(());
        }
        let src = if dst.is_ipv4() { IpAddr::V4(Ipv4Addr::new(198, 18, 1, 9)) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        let tunnel = matches!(l4, L4::Udp(8472) | L4::Udp(6081));
        let want = is_pod || (is_node && tunnel);
        let prog = uplink();
        prop_assert_eq!(owned(&prog, &frame(src, dst, l4)), want);
    }
}
