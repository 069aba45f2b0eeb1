//! WireGuard between two pipelines on real frames: each hands the other what it sent, as the fabric
//! would — the handshake, data both ways, a re-keyed node, strict encryption's refusals, datagrams
//! from strangers and garbage on port 51871.

use super::*;
use crate::wireguard::{self, EncryptionMode, PublicKey, Tunnels};

const KEY_1: [u8; 32] = [0x11; 32];
const KEY_2: [u8; 32] = [0x22; 32];
const KEY_2_NEW: [u8; 32] = [0x23; 32];
/// What the pods send: must never be seen between the nodes.
const MARKER: &[u8] = b"hello";

pub(super) fn public(private: [u8; 32]) -> PublicKey {
    Tunnels::new(private).public_key().unwrap()
}

/// Only x-wing may reach rebel-base: a delivery proves the receiver took x-wing's identity.
pub(super) fn only_x_wing() -> PolicyRule {
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

/// Node 1 (x-wing) and node 2 (rebel-base) in `mode`, each knowing the other's key when given.
fn pair(mode: EncryptionMode, keys: (Option<[u8; 32]>, Option<[u8; 32]>)) -> (Tables, Tables) {
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let mut b = tables(
        2,
        &[(REBEL_PORT, rebel_c2())],
        &[x_wing()],
        &[only_x_wing()],
    );
    a.node.encryption = mode;
    b.node.encryption = mode;
    set_key(&mut a, 2, keys.1);
    set_key(&mut b, 1, keys.0);
    (a, b)
}

fn set_key(t: &mut Tables, node: u8, key: Option<[u8; 32]>) {
    let mut remote = *t.nodes.get(node_ip(node).into()).unwrap();
    remote.wireguard_key = key.map(public);
    t.nodes.upsert(remote).unwrap();
}

fn keyed(private: [u8; 32]) -> WorkerState {
    let mut s = state();
    s.wireguard = Tunnels::new(private);
    s
}

/// The frames the pipeline sent of its own accord since last asked.
pub(super) fn originated(s: &mut WorkerState) -> Vec<(PortId, Vec<u8>)> {
    let mut out = Vec::new();
    originate(s, |port, bytes| out.push((port, bytes.to_vec())));
    out
}

/// The WireGuard message inside a datagram between the nodes, checked to be one.
fn message(datagram: &[u8]) -> Vec<u8> {
    let sliced = SlicedPacket::from_ethernet(datagram).unwrap();
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    assert_eq!(
        (udp.source_port(), udp.destination_port()),
        (wireguard::PORT, wireguard::PORT)
    );
    udp.payload().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn x_wing_to_rebel(sport: u16) -> Vec<u8> {
    tcp(&x_wing(), rebel_c2().ip, sport, 8080, true)
}

/// Runs the handshake that x-wing's first frame starts; returns the datagram carrying that frame.
fn handshake(a: &Tables, sa: &mut WorkerState, b: &Tables, sb: &mut WorkerState) -> Vec<u8> {
    let held = sa.wireguard.stats.held;
    let (verdict, initiation) = run(a, sa, X_WING_PORT, &x_wing_to_rebel(40000));
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(message(&initiation).len(), 148, "a handshake initiation");
    assert_eq!(
        sa.wireguard.stats.held,
        held + 1,
        "x-wing's frame waits for it"
    );

    let (verdict, response) = run(b, sb, UPLINK, &initiation);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(message(&response).len(), 92, "a handshake response");
    assert_eq!(sb.counters.forwarded(Forward::Wireguard).packets, 1);

    let (verdict, keepalive) = run(a, sa, UPLINK, &response);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(message(&keepalive).len(), 32, "an empty data message");
    assert_eq!(run(b, sb, UPLINK, &keepalive).0, Verdict::Consumed);

    let held = originated(sa);
    assert_eq!(held.len(), 1, "the held frame, sent once the session is up");
    assert_eq!(held[0].0, UPLINK);
    held[0].1.clone()
}

#[test]
fn pods_on_two_nodes_talk_through_wireguard_both_ways() {
    for mode in [EncryptionMode::On, EncryptionMode::Strict] {
        let (a, b) = pair(mode, (Some(KEY_1), Some(KEY_2)));
        let (mut sa, mut sb) = (keyed(KEY_1), keyed(KEY_2));
        let first = handshake(&a, &mut sa, &b, &mut sb);
        assert!(!contains(&first, MARKER), "{mode:?}: the payload in clear");

        let (verdict, delivered) = run(&b, &mut sb, UPLINK, &first);
        assert_eq!(
            verdict,
            Verdict::Transmit(REBEL_PORT),
            "{mode:?}: x-wing's identity"
        );
        assert_eq!(ports(&delivered), (x_wing().ip, 40000, rebel_c2().ip, 8080));
        assert_checksums(&delivered);

        let reply = tcp(&rebel_c2(), x_wing().ip, 8080, 40000, false);
        let (verdict, wire) = run(&b, &mut sb, REBEL_PORT, &reply);
        assert_eq!(verdict, Verdict::Transmit(UPLINK));
        assert_eq!(message(&wire)[0], 4, "a data message");
        assert!(!contains(&wire, MARKER));
        let (verdict, delivered) = run(&a, &mut sa, UPLINK, &wire);
        assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
        assert_eq!(ports(&delivered), (rebel_c2().ip, 8080, x_wing().ip, 40000));

        let (verdict, wire) = run(
            &a,
            &mut sa,
            X_WING_PORT,
            &tcp(&x_wing(), rebel_c2().ip, 40000, 8080, false),
        );
        assert_eq!(
            verdict,
            Verdict::Transmit(UPLINK),
            "a session needs no new handshake"
        );
        assert_eq!(
            run(&b, &mut sb, UPLINK, &wire).0,
            Verdict::Transmit(REBEL_PORT)
        );
        assert_eq!(
            (sa.wireguard.stats.encrypted, sb.wireguard.stats.decrypted),
            (2, 2)
        );
        let peer = sa.wireguard.peers().next().unwrap();
        assert_eq!(peer.addr, Addr::from(node_ip(2)));
        assert!(peer.last_handshake.is_some());
    }
}

#[test]
fn the_tunnel_inside_is_the_vxlan_datagram_cilium_sends() {
    let (a, b) = pair(EncryptionMode::On, (Some(KEY_1), Some(KEY_2)));
    let (mut sa, mut sb) = (keyed(KEY_1), keyed(KEY_2));
    let first = handshake(&a, &mut sa, &b, &mut sb);
    // Decrypt by hand with node 2's own tunnel: what comes out is node 1's VXLAN datagram.
    let sliced = SlicedPacket::from_ethernet(&first).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    assert_eq!(ip.header().source_addr(), node_ip(1));
    assert_eq!(ip.header().destination_addr(), node_ip(2));
    let plain = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let (_, vxlan) = run(&plain, &mut state(), X_WING_PORT, &x_wing_to_rebel(40000));
    let overhead = wireguard::overhead(true);
    assert_eq!(first.len(), vxlan.len() + overhead, "60 bytes over IPv4");
}

#[test]
fn a_node_whose_key_changed_is_reached_again_with_a_new_handshake() {
    let (mut a, b) = pair(EncryptionMode::Strict, (Some(KEY_1), Some(KEY_2)));
    let (mut sa, mut sb) = (keyed(KEY_1), keyed(KEY_2));
    let first = handshake(&a, &mut sa, &b, &mut sb);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &first).0,
        Verdict::Transmit(REBEL_PORT)
    );

    // Node 2 restarts with a new key; node 1 still has the old one in its snapshot.
    let mut sb = keyed(KEY_2_NEW);
    let (verdict, stale) = run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40001));
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(
        run(&b, &mut sb, UPLINK, &stale).0,
        Verdict::Drop(DropReason::InvalidWireguard),
        "a session of the old key means nothing to the new one"
    );

    // The new key reaches node 1's snapshot: its next frame starts a handshake with it.
    set_key(&mut a, 2, Some(KEY_2_NEW));
    tick(&a, &mut sa);
    let first = handshake(&a, &mut sa, &b, &mut sb);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &first).0,
        Verdict::Transmit(REBEL_PORT)
    );
}

#[test]
fn strict_refuses_a_node_without_a_key_and_plain_frames_from_nodes() {
    let (a, b) = pair(EncryptionMode::Strict, (Some(KEY_1), None));
    let mut sa = keyed(KEY_1);
    assert_eq!(
        run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40000)).0,
        Verdict::Drop(DropReason::NodeWithoutKey)
    );
    assert_eq!(sa.counters.dropped(DropReason::NodeWithoutKey).packets, 1);

    // The same frame in clear from node 1's unencrypted pipeline.
    let plain = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let (_, vxlan) = run(&plain, &mut state(), X_WING_PORT, &x_wing_to_rebel(40000));
    let mut sb = keyed(KEY_2);
    assert_eq!(
        run(&b, &mut sb, UPLINK, &vxlan).0,
        Verdict::Drop(DropReason::UnencryptedTraffic)
    );
    assert_eq!(
        sb.counters.dropped(DropReason::UnencryptedTraffic).packets,
        1
    );

    // `on` takes the plain frame, and sends plain to a node without a key.
    let (a, b) = pair(EncryptionMode::On, (Some(KEY_1), None));
    assert_eq!(
        run(&b, &mut keyed(KEY_2), UPLINK, &vxlan).0,
        Verdict::Transmit(REBEL_PORT)
    );
    let (verdict, wire) = run(&a, &mut keyed(KEY_1), X_WING_PORT, &x_wing_to_rebel(40000));
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(wire, vxlan, "in clear, as without encryption");
}

#[test]
fn a_decrypted_packet_claiming_another_nodes_source_is_dropped() {
    let (a, b) = pair(EncryptionMode::Strict, (Some(KEY_1), Some(KEY_2)));
    let (mut sa, mut sb) = (keyed(KEY_1), keyed(KEY_2));
    handshake(&a, &mut sa, &b, &mut sb);
    // Node 1 sends, through its session, a VXLAN datagram that claims to come from 198.18.9.9.
    let plain = tables(1, &[(X_WING_PORT, x_wing())], &[rebel_c2()], &[]);
    let (_, mut vxlan) = run(&plain, &mut state(), X_WING_PORT, &x_wing_to_rebel(40002));
    vxlan[26..30].copy_from_slice(&[198, 18, 9, 9]);
    fix_ipv4_checksum(&mut vxlan);
    let ends = wireguard::ends_to(&a, a.nodes.get(node_ip(2).into()).unwrap()).unwrap();
    let mut buf = vec![0u8; crate::frame::HEADROOM + vxlan.len() + 64];
    buf[crate::frame::HEADROOM..][..vxlan.len()].copy_from_slice(&vxlan);
    let mut frame = Frame::new(&mut buf, crate::frame::HEADROOM, vxlan.len(), UPLINK).unwrap();
    sa.wireguard
        .encrypt(&mut frame, &ends, public(KEY_2))
        .unwrap();
    let forged = frame.data().to_vec();
    assert_eq!(
        run(&b, &mut sb, UPLINK, &forged).0,
        Verdict::Drop(DropReason::WireguardSourceMismatch)
    );
}

/// A WireGuard datagram from `src` to node 2 carrying `payload`.
fn datagram_from(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x02, 0x66, 0, 0, 0, 6], node_mac(2))
        .ipv4(src, node_ip(2).octets(), 64)
        .udp(wireguard::PORT, wireguard::PORT)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

#[test]
fn datagrams_from_strangers_and_garbage_are_dropped_and_counted() {
    let (a, b) = pair(EncryptionMode::Strict, (Some(KEY_1), Some(KEY_2)));
    let mut sa = keyed(KEY_1);
    let (_, initiation) = run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40000));
    let payload = message(&initiation);
    let mut sb = keyed(KEY_2);
    assert_eq!(
        run(
            &b,
            &mut sb,
            UPLINK,
            &datagram_from([198, 18, 9, 9], &payload)
        )
        .0,
        Verdict::Drop(DropReason::UnknownWireguardPeer),
        "no node at that address"
    );
    for garbage in [
        &b""[..],
        b"\x01",
        &[4u8; 40],
        &[1u8; 148],
        &[2u8; 92],
        &[3u8; 64],
    ] {
        assert_eq!(
            run(
                &b,
                &mut sb,
                UPLINK,
                &datagram_from(node_ip(1).octets(), garbage)
            )
            .0,
            Verdict::Drop(DropReason::InvalidWireguard),
            "{garbage:?}"
        );
    }
    assert_eq!(sb.counters.dropped(DropReason::InvalidWireguard).packets, 6);
    let mut off = b.clone();
    off.node.encryption = EncryptionMode::Off;
    assert_eq!(
        run(&off, &mut keyed(KEY_2), UPLINK, &initiation).0,
        Verdict::Drop(DropReason::UnknownWireguardPeer),
        "encryption off takes no WireGuard"
    );
}

#[test]
fn timers_retry_a_handshake_nobody_answered_through_the_outbox() {
    let (a, _) = pair(EncryptionMode::Strict, (Some(KEY_1), Some(KEY_2)));
    let mut sa = keyed(KEY_1);
    run(&a, &mut sa, X_WING_PORT, &x_wing_to_rebel(40000));
    tick(&a, &mut sa);
    assert!(originated(&mut sa).is_empty(), "too early to retry");
    let mut gone = a.clone();
    gone.nodes.remove(node_ip(2).into());
    tick(&gone, &mut sa);
    assert_eq!(sa.wireguard.peers().count(), 0, "a node gone is forgotten");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_payload_on_51871_from_a_peer_is_dropped_never_a_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        kind in 1u8..=4,
    ) {
        let (_, b) = pair(EncryptionMode::Strict, (Some(KEY_1), Some(KEY_2)));
        let mut payload = payload;
        if let Some(first) = payload.first_mut() {
            *first = kind;
        }
        let verdict = run(&b, &mut keyed(KEY_2), UPLINK, &datagram_from(node_ip(1).octets(), &payload)).0;
        prop_assert!(matches!(verdict, Verdict::Drop(_)), "{verdict:?}");
    }
}
