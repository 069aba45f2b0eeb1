//! Worker steering on the frames the pipelines emit: a flow's request and its reply — after service
//! translation, reverse NAT, masquerading, tunnelling — are owned by one worker on either node.

use super::node_path::{node_tables, HOST_PORT, WORLD};
use super::*;
use crate::steering::{Owner, Steering};
use etherparse::{icmpv4, Icmpv4Type};

fn rebel_c2_second() -> Pod {
    pod(2, 1, "rebel-base")
}

/// Node a (cluster1) with x-wing and the rebel-base service of two backends on node b (cluster2).
fn two_nodes() -> (Tables, Tables) {
    let backends = [rebel_c2(), rebel_c2_second()];
    let mut a = tables(1, &[(X_WING_PORT, x_wing())], &backends, &[]);
    add_rebel_service(
        &mut a,
        &[
            (&backends[0], BackendState::Active),
            (&backends[1], BackendState::Active),
        ],
    );
    let b = tables(
        2,
        &[(X_WING_PORT, rebel_c2()), (REBEL_PORT, rebel_c2_second())],
        &[x_wing()],
        &[],
    );
    (a, b)
}

/// Node b's port and pod the frame went to.
fn backend_at(verdict: Verdict) -> (PortId, Pod) {
    match verdict {
        Verdict::Transmit(port) if port == REBEL_PORT => (port, rebel_c2_second()),
        Verdict::Transmit(port) => (port, rebel_c2()),
        other => panic!("not delivered to a backend: {other:?}"),
    }
}

fn owned(owner: Owner) -> u16 {
    match owner {
        Owner::Worker(w) => w,
        Owner::Any => panic!("a frame of a flow has an owner"),
    }
}

/// The worker each of `state`'s conntrack entries goes to in a planned restart's handover.
fn owners_of_entries<'a>(
    steering: Steering,
    tables: &'a Tables,
    state: &'a WorkerState,
) -> impl Iterator<Item = u16> + 'a {
    assert!(!state.conntrack.is_empty(), "the flow made an entry");
    state
        .conntrack
        .iter()
        .map(move |(key, entry)| steering.flow_owner(tables, &entry.first_packet(&key)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The request to the service and the backend's reply: on the client's node the reply comes
    /// from the backend (and is reverse-NATed there), on the backend's node both carry the backend.
    #[test]
    fn a_service_flow_and_its_reverse_natted_reply_meet_one_worker_on_both_nodes(
        sport in 1024u16..65535,
        workers in 2u16..9,
    ) {
        let steering = Steering::new(workers).unwrap();
        let (a, b) = two_nodes();
        let (mut sa, mut sb) = (state(), state());
        let request = tcp(&x_wing(), VIP, sport, 80, true);
        let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &request);
        prop_assert_eq!(verdict, Verdict::Transmit(UPLINK));
        let (verdict, _) = run(&b, &mut sb, UPLINK, &wire);
        let (port, backend) = backend_at(verdict);
        let reply = tcp(&backend, x_wing().ip, 8080, sport, false);
        let (verdict, reply_wire) = run(&b, &mut sb, port, &reply);
        prop_assert_eq!(verdict, Verdict::Transmit(UPLINK));
        let (verdict, at_client) = run(&a, &mut sa, UPLINK, &reply_wire);
        prop_assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
        prop_assert_eq!(ports(&at_client), (VIP, 80, x_wing().ip, sport), "reverse NAT");

        let client_node = owned(steering.owner(&a, X_WING_PORT, &request));
        prop_assert!(client_node < workers);
        prop_assert_eq!(owned(steering.owner(&a, UPLINK, &reply_wire)), client_node);
        let later = tcp(&x_wing(), VIP, sport, 80, false);
        prop_assert_eq!(owned(steering.owner(&a, X_WING_PORT, &later)), client_node);
        let backend_node = owned(steering.owner(&b, UPLINK, &wire));
        prop_assert_eq!(owned(steering.owner(&b, port, &reply)), backend_node);
        // A planned restart gives each conntrack entry to the worker its frames are steered to.
        prop_assert!(owners_of_entries(steering, &a, &sa).all(|w| w == client_node));
        prop_assert!(owners_of_entries(steering, &b, &sb).all(|w| w == backend_node));
    }

    /// A flow straight to a pod, to a port a service balances to or not.
    #[test]
    fn a_direct_flow_and_its_reply_meet_one_worker(
        sport in 1024u16..65535,
        to_backend_port in any::<bool>(),
        workers in 2u16..9,
    ) {
        let steering = Steering::new(workers).unwrap();
        let (a, b) = two_nodes();
        let (mut sa, mut sb) = (state(), state());
        let dport = if to_backend_port { 8080 } else { 9090 };
        let request = tcp(&x_wing(), rebel_c2().ip, sport, dport, true);
        let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &request);
        prop_assert_eq!(verdict, Verdict::Transmit(UPLINK));
        prop_assert_eq!(run(&b, &mut sb, UPLINK, &wire).0, Verdict::Transmit(X_WING_PORT));
        let reply = tcp(&rebel_c2(), x_wing().ip, dport, sport, false);
        let (verdict, reply_wire) = run(&b, &mut sb, X_WING_PORT, &reply);
        prop_assert_eq!(verdict, Verdict::Transmit(UPLINK));

        let client_node = owned(steering.owner(&a, X_WING_PORT, &request));
        prop_assert_eq!(owned(steering.owner(&a, UPLINK, &reply_wire)), client_node);
        let backend_node = owned(steering.owner(&b, UPLINK, &wire));
        prop_assert_eq!(owned(steering.owner(&b, X_WING_PORT, &reply)), backend_node);
        prop_assert!(owners_of_entries(steering, &a, &sa).all(|w| w == client_node));
        prop_assert!(owners_of_entries(steering, &b, &sb).all(|w| w == backend_node));
    }

    /// The owner of a masqueraded flow chooses a port of its share, and the reply to that port and
    /// an error quoting the masqueraded packet are steered back to it.
    #[test]
    fn a_masqueraded_flow_its_reply_and_errors_meet_the_worker_that_chose_the_port(
        sport in 1024u16..65535,
        workers in 2u16..9,
    ) {
        let steering = Steering::new(workers).unwrap();
        let t = node_tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
        let request = tcp(&x_wing(), WORLD, sport, 80, true);
        let owner = owned(steering.owner(&t, X_WING_PORT, &request));
        let mut s = WorkerState { slot: steering.slot(owner), ..state() };
        let (verdict, out) = run(&t, &mut s, X_WING_PORT, &request);
        prop_assert_eq!(verdict, Verdict::Transmit(HOST_PORT));
        let (_, port, _, _) = ports(&out);

        let mut reply = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], node_mac(1))
            .ipv4(WORLD.octets(), node_ip(1).octets(), 60)
            .tcp(80, port, 9, 1024)
            .syn()
            .ack(2)
            .write(&mut reply, b"")
            .unwrap();
        prop_assert_eq!(owned(steering.owner(&t, UPLINK, &reply)), owner);
        let (verdict, back) = run(&t, &mut s, UPLINK, &reply);
        prop_assert_eq!(verdict, Verdict::Transmit(X_WING_PORT));
        prop_assert_eq!(ports(&back), (WORLD, 80, x_wing().ip, sport));

        let mut error = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xfe], node_mac(1))
            .ipv4([198, 18, 255, 1], node_ip(1).octets(), 60)
            .icmpv4(Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit))
            .write(&mut error, &out[14..14 + 28])
            .unwrap();
        prop_assert_eq!(owned(steering.owner(&t, UPLINK, &error)), owner);
        prop_assert!(owners_of_entries(steering, &t, &s).all(|w| w == owner));
    }

    /// A pod's own flow to a port of the node's that lies in the masquerade range is no
    /// masqueraded flow: the node's answer through the host port meets the same worker.
    #[test]
    fn a_pods_flow_to_the_node_on_a_masquerade_port_is_a_plain_flow(
        sport in 1024u16..65535,
        node_port in 61000u16..65535,
        workers in 2u16..9,
    ) {
        let steering = Steering::new(workers).unwrap();
        let t = node_tables(1, &[(X_WING_PORT, x_wing())], &[], &[]);
        let request = tcp(&x_wing(), node_ip(1), sport, node_port, true);
        let mut answer = Vec::new();
        PacketBuilder::ethernet2(super::node_path::KERNEL_MAC, super::node_path::HOST_MAC)
            .ipv4(node_ip(1).octets(), x_wing().ip.octets(), 64)
            .tcp(node_port, sport, 9, 1024)
            .syn()
            .ack(2)
            .write(&mut answer, b"")
            .unwrap();
        prop_assert_eq!(
            steering.owner(&t, X_WING_PORT, &request),
            steering.owner(&t, HOST_PORT, &answer)
        );
    }

    /// Whatever the bytes — random, or a real tunnel frame with one byte changed — steering names a
    /// worker there is, or none, and never panics.
    #[test]
    fn steering_never_panics_and_names_only_workers_there_are(
        random in prop::collection::vec(any::<u8>(), 0..200),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        workers in 1u16..9,
    ) {
        let steering = Steering::new(workers).unwrap();
        let (a, _) = two_nodes();
        let mut sa = state();
        let request = tcp(&x_wing(), VIP, 40000, 80, true);
        let (_, mut wire) = run(&a, &mut sa, X_WING_PORT, &request);
        let i = at.index(wire.len());
        wire[i] = byte;
        let received = [
            (UPLINK, &random),
            (X_WING_PORT, &random),
            (UPLINK, &wire),
            (X_WING_PORT, &request),
        ];
        for (port, frame) in received {
            match steering.owner(&a, port, frame) {
                Owner::Worker(w) => prop_assert!(w < workers),
                Owner::Any => {}
            }
        }
        // A burst (past one prefetch batch of 64) is steered as its frames one by one.
        let mut bufs: Vec<(PortId, Vec<u8>)> = (0..50)
            .flat_map(|_| received.iter().map(|(port, f)| (*port, f.to_vec())))
            .collect();
        let one_by_one: Vec<Owner> = bufs.iter().map(|(port, f)| steering.owner(&a, *port, f)).collect();
        let frames: Vec<Frame<'_>> = bufs
            .iter_mut()
            .filter_map(|(port, f)| {
                let len = f.len();
                Frame::new(f, 0, len, *port)
            })
            .collect();
        let mut owners = vec![Owner::Any; frames.len()];
        steering.owners(&a, &frames, &mut owners);
        prop_assert_eq!(owners, one_by_one);
    }
}

#[test]
fn frames_of_no_flow_go_to_any_worker_and_one_worker_owns_everything() {
    let (a, _) = two_nodes();
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
    let mut arp = Vec::new();
    etherparse::Ethernet2Header {
        source: x_wing().mac,
        destination: [0xff; 6],
        ether_type: etherparse::EtherType::ARP,
    }
    .write(&mut arp)
    .unwrap();
    request.write(&mut arp).unwrap();
    let two = Steering::new(2).unwrap();
    assert_eq!(two.owner(&a, X_WING_PORT, &arp), Owner::Any);
    assert_eq!(two.owner(&a, X_WING_PORT, &[1, 2, 3]), Owner::Any);
    let one = Steering::new(1).unwrap();
    assert_eq!(one.owner(&a, X_WING_PORT, &[1, 2, 3]), Owner::Worker(0));
}
