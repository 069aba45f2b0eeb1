//! The fast path against the full pipeline: every node's worker runs twice, once taking the decisions
//! kept beside conntrack entries and once through every stage for every packet, over random flows in
//! both directions and random snapshot changes (a policy flip, a backend removed, the node that holds
//! a pod moved, a node's MAC changed, the routing mode, encryption switched on). Both twins must give
//! every packet the same verdict, the same bytes (their lengths where WireGuard encrypted them: the
//! twins' sessions have keys of their own), the same counters and the same flow log. Forged frames
//! from the uplink join them on established flows: a reply tunnelled by another underlay host or
//! with another VNI, or sent plain from another MAC.

use super::*;
use crate::conntrack::TcpState;
use crate::wireguard::{EncryptionMode, Tunnels};
use crate::FlowKey;

const KEY_1: [u8; 32] = [0x11; 32];
const KEY_2: [u8; 32] = [0x22; 32];
/// A third node of cluster2, where rebel-base may move.
const NODE_3: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);

/// What the snapshots of both nodes say.
#[derive(Clone, Copy, Debug)]
struct World {
    /// x-wing may reach only cluster2's rebel-base; rebel-base in cluster2 admits only x-wing.
    policy: bool,
    /// Which of rebel-base's pods (cluster1's, cluster2's) back the service.
    backends: (bool, bool),
    /// cluster2's rebel-base has moved to a third node.
    moved: bool,
    /// The nodes share a segment (hybrid routing then sends plain), with the other's MAC or a wrong
    /// one; or each sits behind the router.
    link: Link,
    hybrid: bool,
    encrypt: bool,
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Routed,
    Segment,
    /// On the segment, first node's view of the second with a stale MAC.
    StaleMac,
}

fn arb_world() -> impl Strategy<Value = World> {
    let link = prop_oneof![
        Just(Link::Routed),
        Just(Link::Segment),
        Just(Link::StaleMac)
    ];
    (
        any::<bool>(),
        (any::<bool>(), any::<bool>()),
        prop::bool::weighted(0.2),
        link,
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(policy, backends, moved, link, hybrid, encrypt)| World {
            policy,
            backends,
            moved,
            link,
            hybrid,
            encrypt,
        })
}

impl World {
    /// Fresh snapshots of node 1 (x-wing, cluster1's rebel-base, the service) and node 2
    /// (cluster2's rebel-base).
    fn tables(&self) -> (Tables, Tables) {
        let local = [(X_WING_PORT, x_wing()), (REBEL_PORT, rebel_c1())];
        let rules_a = if self.policy {
            vec![x_wing_policy()]
        } else {
            vec![]
        };
        let mut a = tables(1, &local, &[rebel_c2()], &rules_a);
        let only_x_wing = super::encryption::only_x_wing();
        let rules_b = if self.policy {
            vec![only_x_wing]
        } else {
            vec![]
        };
        let mut b = tables(2, &[(X_WING_PORT, rebel_c2())], &[x_wing()], &rules_b);
        self.set_backends(&mut a);
        for (t, other, key) in [(&mut a, 2, KEY_2), (&mut b, 1, KEY_1)] {
            t.node.routing = if self.hybrid {
                RoutingMode::Hybrid
            } else {
                RoutingMode::Tunnel
            };
            let link = match self.link {
                Link::Routed => NodeLink::Routed,
                Link::StaleMac if other == 2 => NodeLink::Segment([0x02, 9, 9, 9, 9, 9]),
                Link::Segment | Link::StaleMac => NodeLink::Segment(node_mac(other)),
            };
            t.node.encryption = if self.encrypt {
                EncryptionMode::On
            } else {
                EncryptionMode::Off
            };
            t.nodes
                .upsert(RemoteNode {
                    addr: node_ip(other).into(),
                    cluster: ClusterId::new(other).unwrap(),
                    link,
                    wireguard_key: Some(super::encryption::public(key)),
                })
                .unwrap();
        }
        if self.moved {
            a.nodes
                .upsert(RemoteNode {
                    addr: NODE_3.into(),
                    cluster: ClusterId::new(2).unwrap(),
                    link: NodeLink::Routed,
                    wireguard_key: None,
                })
                .unwrap();
            ipcache_insert(&mut a, &rebel_c2(), Some(NODE_3));
        }
        (a, b)
    }

    /// The next snapshots after `a` and `b`, as the control plane makes them: each a clone of the
    /// last, changed (so a backend taken out of the service is retired, not forgotten).
    fn next(&self, a: &Tables, b: &Tables) -> (Tables, Tables) {
        let (fresh_a, fresh_b) = self.tables();
        let (mut a, mut b) = (a.clone(), b.clone());
        for (t, fresh) in [(&mut a, fresh_a), (&mut b, fresh_b)] {
            t.node = fresh.node;
            t.policy = fresh.policy;
            t.ipcache = fresh.ipcache;
            t.nodes = fresh.nodes;
        }
        self.set_backends(&mut a);
        (a, b)
    }

    fn set_backends(&self, t: &mut Tables) {
        let pods = [rebel_c1(), rebel_c2()];
        let chosen: Vec<(&Pod, BackendState)> = [self.backends.0, self.backends.1]
            .iter()
            .zip(&pods)
            .filter(|(on, _)| **on)
            .map(|(_, pod)| (pod, BackendState::Active))
            .collect();
        add_rebel_service(t, &chosen);
    }
}

/// Who sends a packet, to whom.
#[derive(Clone, Copy, Debug)]
enum Sender {
    /// x-wing to the service's address.
    XWingToService,
    /// x-wing straight to cluster2's rebel-base.
    XWingToRebelC2,
    /// x-wing to cluster1's rebel-base, on its own node.
    XWingToRebelC1,
    /// cluster1's rebel-base answering x-wing.
    RebelC1Answers,
    /// cluster2's rebel-base answering x-wing, from the other node.
    RebelC2Answers,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Send {
        sender: Sender,
        sport: u16,
        syn: bool,
    },
    /// cluster2's rebel-base answers x-wing, and the first node gets the frame forged.
    Forged {
        sport: u16,
        forgery: Forgery,
    },
    NewSnapshot(World),
}

/// How a frame between the nodes is forged on the way.
#[derive(Clone, Copy, Debug)]
enum Forgery {
    /// The outer source: another underlay host (a node of the mesh or not).
    OuterSource(Ipv4Addr),
    /// The VNI: another identity.
    Vni(Identity),
    /// The source MAC, for a frame sent plain.
    SourceMac([u8; 6]),
}

impl Forgery {
    /// Forges a frame the second node sent; `None` for one it does not apply to (an encrypted
    /// datagram: its inside cannot be forged, and its outside is WireGuard's to check).
    fn apply(self, frame: &[u8]) -> Option<Vec<u8>> {
        const VXLAN: [u8; 2] = 8472u16.to_be_bytes();
        let ipv4 = frame.get(12..14)? == [0x08, 0x00];
        let udp = frame.get(14 + 9) == Some(&17);
        let tunnel = ipv4 && udp && frame.get(14 + 20 + 2..14 + 20 + 4)? == VXLAN;
        let mut forged = frame.to_vec();
        match self {
            Forgery::OuterSource(addr) if tunnel => {
                forged[14 + 12..14 + 16].copy_from_slice(&addr.octets());
                fix_ipv4_checksum(&mut forged);
            }
            Forgery::Vni(identity) if tunnel => {
                forged[14 + 20 + 8 + 4..14 + 20 + 8 + 7]
                    .copy_from_slice(&identity.get().to_be_bytes()[1..]);
            }
            Forgery::SourceMac(mac) if ipv4 && !tunnel && !udp => {
                forged[6..12].copy_from_slice(&mac)
            }
            _ => return None,
        }
        Some(forged)
    }
}

fn arb_forgery() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        Just(Forgery::OuterSource(NODE_3)),
        Just(Forgery::OuterSource(Ipv4Addr::new(198, 18, 9, 9))),
        Just(Forgery::OuterSource(node_ip(1))),
        Just(Forgery::Vni(rebel_c2().identity)),
        // Another identity of cluster2, and one of cluster1.
        Just(Forgery::Vni(Identity::new(0x2_0177).unwrap())),
        Just(Forgery::Vni(x_wing().identity)),
        Just(Forgery::SourceMac([0x02, 9, 9, 9, 9, 9])),
        Just(Forgery::SourceMac(node_mac(2))),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let sender = prop_oneof![
        Just(Sender::XWingToService),
        Just(Sender::XWingToRebelC2),
        Just(Sender::XWingToRebelC1),
        Just(Sender::RebelC1Answers),
        Just(Sender::RebelC2Answers),
    ];
    prop_oneof![
        12 => (sender, 40000u16..40004, prop::bool::weighted(0.3))
            .prop_map(|(sender, sport, syn)| Op::Send { sender, sport, syn }),
        3 => (40000u16..40004, arb_forgery())
            .prop_map(|(sport, forgery)| Op::Forged { sport, forgery }),
        1 => arb_world().prop_map(Op::NewSnapshot),
    ]
}

/// A node's worker twice: one takes the fast path, the other every stage for every packet.
struct Twins {
    fast: WorkerState,
    full: WorkerState,
}

impl Twins {
    fn new(key: [u8; 32]) -> Self {
        let (mut fast, mut full) = (state(), state());
        fast.wireguard = Tunnels::new(key);
        full.wireguard = Tunnels::new(key);
        full.fast_path = false;
        Twins { fast, full }
    }

    /// Runs a frame through each twin (its own bytes: an encrypting peer's twins send different
    /// ciphertext) and checks that they agree; returns what each sent.
    fn run(&mut self, t: &Tables, port: PortId, bytes: &Pair) -> Result<Sent, TestCaseError> {
        let (verdict, fast) = run(t, &mut self.fast, port, &bytes.fast);
        let (full_verdict, full) = run(t, &mut self.full, port, &bytes.full);
        prop_assert_eq!(verdict, full_verdict, "verdicts differ");
        let encrypted =
            t.node.encryption != EncryptionMode::Off && verdict == Verdict::Transmit(t.node.uplink);
        if encrypted {
            prop_assert_eq!(fast.len(), full.len(), "lengths differ");
        } else {
            prop_assert_eq!(&fast, &full, "bytes differ");
        }
        self.agree()?;
        Ok((verdict, Pair { fast, full }))
    }

    /// The twins counted the same and logged the same flows.
    fn agree(&mut self) -> Result<(), TestCaseError> {
        prop_assert_eq!(&self.fast.counters, &self.full.counters);
        let fast: Vec<_> = self.fast.flowlog.drain().collect();
        let full: Vec<_> = self.full.flowlog.drain().collect();
        prop_assert_eq!(fast, full, "flow logs differ");
        Ok(())
    }

    /// What each twin sent of its own accord (WireGuard handshakes, packets held for one).
    fn originated(&mut self) -> Result<Vec<Pair>, TestCaseError> {
        let fast = super::encryption::originated(&mut self.fast);
        let full = super::encryption::originated(&mut self.full);
        prop_assert_eq!(fast.len(), full.len(), "originated frames differ");
        Ok(fast
            .into_iter()
            .zip(full)
            .map(|((_, fast), (_, full))| Pair { fast, full })
            .collect())
    }
}

/// The same frame as each twin has it.
#[derive(Clone, Debug)]
struct Pair {
    fast: Vec<u8>,
    full: Vec<u8>,
}

type Sent = (Verdict, Pair);

impl Pair {
    fn both(bytes: Vec<u8>) -> Self {
        Pair {
            fast: bytes.clone(),
            full: bytes,
        }
    }
}

/// Two nodes, each with its twins, handing each other what they send.
struct Mesh {
    a: (Tables, Twins),
    b: (Tables, Twins),
}

impl Mesh {
    fn new(world: World) -> Self {
        let (ta, tb) = world.tables();
        Mesh {
            a: (ta, Twins::new(KEY_1)),
            b: (tb, Twins::new(KEY_2)),
        }
    }

    fn send(&mut self, sender: Sender, sport: u16, syn: bool) -> Result<(), TestCaseError> {
        let (from_b, port, frame) = match sender {
            Sender::XWingToService => (false, X_WING_PORT, tcp(&x_wing(), VIP, sport, 80, syn)),
            Sender::XWingToRebelC2 => (
                false,
                X_WING_PORT,
                tcp(&x_wing(), rebel_c2().ip, sport, 8080, syn),
            ),
            Sender::XWingToRebelC1 => (
                false,
                X_WING_PORT,
                tcp(&x_wing(), rebel_c1().ip, sport, 8080, syn),
            ),
            Sender::RebelC1Answers => (
                false,
                REBEL_PORT,
                tcp(&rebel_c1(), x_wing().ip, 8080, sport, false),
            ),
            Sender::RebelC2Answers => (
                true,
                X_WING_PORT,
                tcp(&rebel_c2(), x_wing().ip, 8080, sport, false),
            ),
        };
        self.hop(from_b, port, Pair::both(frame))?;
        self.settle()
    }

    /// cluster2's rebel-base answers x-wing (a genuine frame through the second node), and the
    /// first node gets what it sent forged.
    fn forged(&mut self, sport: u16, forgery: Forgery) -> Result<(), TestCaseError> {
        let frame = Pair::both(tcp(&rebel_c2(), x_wing().ip, 8080, sport, false));
        let (t, twins) = &mut self.b;
        let (verdict, sent) = twins.run(t, X_WING_PORT, &frame)?;
        let forged = (verdict == Verdict::Transmit(UPLINK))
            .then(|| Some((forgery.apply(&sent.fast)?, forgery.apply(&sent.full)?)))
            .flatten();
        if let Some((fast, full)) = forged {
            let (t, twins) = &mut self.a;
            twins.run(t, UPLINK, &Pair { fast, full })?;
        }
        self.settle()
    }

    /// A frame through one node, and what it sends the other through that one.
    fn hop(&mut self, at_b: bool, port: PortId, frame: Pair) -> Result<(), TestCaseError> {
        let ((t, twins), _) = self.sides(at_b);
        let (verdict, sent) = twins.run(t, port, &frame)?;
        if verdict == Verdict::Transmit(UPLINK) {
            let ((t, twins), _) = self.sides(!at_b);
            twins.run(t, UPLINK, &sent)?;
        }
        Ok(())
    }

    /// Hands each node what the other sent of its own accord until neither sends more.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..6 {
            let mut quiet = true;
            for at_b in [false, true] {
                let ((_, twins), _) = self.sides(at_b);
                for frame in twins.originated()? {
                    quiet = false;
                    let (_, (t, other)) = self.sides(at_b);
                    let (verdict, sent) = other.run(t, UPLINK, &frame)?;
                    if verdict == Verdict::Transmit(UPLINK) {
                        let ((t, twins), _) = self.sides(at_b);
                        twins.run(t, UPLINK, &sent)?;
                    }
                }
            }
            if quiet {
                break;
            }
        }
        Ok(())
    }

    fn sides(&mut self, b: bool) -> (&mut (Tables, Twins), &mut (Tables, Twins)) {
        if b {
            (&mut self.b, &mut self.a)
        } else {
            (&mut self.a, &mut self.b)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_fast_path_forwards_every_packet_as_the_full_pipeline_does(
        world in arb_world(),
        ops in prop::collection::vec(arb_op(), 1..80),
    ) {
        let mut mesh = Mesh::new(world);
        for op in ops {
            match op {
                Op::Send { sender, sport, syn } => mesh.send(sender, sport, syn)?,
                Op::Forged { sport, forgery } => mesh.forged(sport, forgery)?,
                Op::NewSnapshot(world) => {
                    let (a, b) = world.next(&mesh.a.0, &mesh.b.0);
                    mesh.a.0 = a;
                    mesh.b.0 = b;
                }
            }
        }
    }
}

#[test]
fn established_packets_take_the_fast_path_and_a_new_snapshot_is_obeyed_at_once() {
    let world = World {
        policy: false,
        backends: (false, true),
        moved: false,
        link: Link::Routed,
        hybrid: false,
        encrypt: false,
    };
    let (mut a, b) = world.tables();
    let mut s = state();
    let through_service = tcp(&x_wing(), VIP, 40000, 80, false);
    for (i, syn) in [true, false, false, false].into_iter().enumerate() {
        let frame = tcp(&x_wing(), VIP, 40000, 80, syn);
        assert_eq!(
            run(&a, &mut s, X_WING_PORT, &frame).0,
            Verdict::Transmit(UPLINK)
        );
        // The first packet makes the flow, the second its path; the others take it.
        assert_eq!(s.fast_path_packets, i.saturating_sub(1) as u64);
    }
    // The backend leaves for cluster1's pod in a new snapshot: the next packet follows it.
    (a, _) = World {
        backends: (true, false),
        ..world
    }
    .next(&a, &b);
    assert_eq!(
        run(&a, &mut s, X_WING_PORT, &through_service).0,
        Verdict::Transmit(REBEL_PORT)
    );

    // A flow straight to the remote pod, then its node out of reach in tables changed in place
    // (marked so): obeyed at once too.
    let direct = |syn| tcp(&x_wing(), rebel_c2().ip, 40001, 8080, syn);
    for syn in [true, false, false] {
        assert_eq!(
            run(&a, &mut s, X_WING_PORT, &direct(syn)).0,
            Verdict::Transmit(UPLINK)
        );
    }
    let before = s.fast_path_packets;
    assert_eq!(
        run(&a, &mut s, X_WING_PORT, &direct(false)).0,
        Verdict::Transmit(UPLINK)
    );
    assert_eq!(s.fast_path_packets, before + 1);
    a.node.routing = RoutingMode::Native {
        underlay_routes_pods: false,
    };
    a.changed();
    assert_eq!(
        run(&a, &mut s, X_WING_PORT, &direct(false)).0,
        Verdict::Drop(DropReason::NodeOffSegment)
    );
}

#[test]
fn a_reply_tunnelled_by_another_node_neither_rides_the_flows_path_nor_touches_the_flow() {
    let world = World {
        policy: false,
        backends: (false, false),
        moved: false,
        link: Link::Routed,
        hybrid: false,
        encrypt: false,
    };
    let (mut a, b) = world.tables();
    // A third node of cluster2 joins the mesh; rebel-base stays on the second.
    a.nodes
        .upsert(RemoteNode {
            addr: NODE_3.into(),
            cluster: ClusterId::new(2).unwrap(),
            link: NodeLink::Routed,
            wireguard_key: None,
        })
        .unwrap();
    a.changed();
    let (mut sa, mut sb) = (state(), state());
    let syn = tcp(&x_wing(), rebel_c2().ip, 40000, 8080, true);
    let (verdict, wire) = run(&a, &mut sa, X_WING_PORT, &syn);
    assert_eq!(verdict, Verdict::Transmit(UPLINK));
    assert_eq!(
        run(&b, &mut sb, UPLINK, &wire).0,
        Verdict::Transmit(X_WING_PORT)
    );
    let mut answer = |reset: bool| {
        let builder = PacketBuilder::ethernet2(rebel_c2().mac, GATEWAY_MAC)
            .ipv4(rebel_c2().ip.octets(), x_wing().ip.octets(), 64)
            .tcp(8080, 40000, 1, 1024)
            .ack(1);
        let builder = if reset { builder.rst() } else { builder };
        let mut frame = Vec::new();
        builder.write(&mut frame, b"").unwrap();
        let (verdict, wire) = run(&b, &mut sb, X_WING_PORT, &frame);
        assert_eq!(verdict, Verdict::Transmit(UPLINK));
        wire
    };
    // The first answer makes the reply's path, the second rides it.
    for _ in 0..2 {
        let wire = answer(false);
        assert_eq!(
            run(&a, &mut sa, UPLINK, &wire).0,
            Verdict::Transmit(X_WING_PORT)
        );
    }
    assert_eq!(sa.fast_path_packets, 1);

    // The flow's reset, tunnelled by the third node with the second's VNI.
    let reset = answer(true);
    let mut forged = reset.clone();
    forged[14 + 12..14 + 16].copy_from_slice(&NODE_3.octets());
    fix_ipv4_checksum(&mut forged);
    assert_eq!(
        run(&a, &mut sa, UPLINK, &forged).0,
        Verdict::Drop(DropReason::ForeignInnerSource)
    );
    assert_eq!(sa.fast_path_packets, 1);
    let key = FlowKey {
        src: x_wing().ip.into(),
        dst: rebel_c2().ip.into(),
        src_port: 40000,
        dst_port: 8080,
        proto: crate::flow::proto::TCP,
    };
    let entry = *sa.conntrack.lookup(&key, 1_000).unwrap();
    assert_eq!(
        entry.tcp,
        TcpState::Established,
        "the forged reset closed nothing"
    );
    assert_eq!(entry.packets, 3, "nor was it counted");

    // The genuine one rides the path.
    assert_eq!(
        run(&a, &mut sa, UPLINK, &reset).0,
        Verdict::Transmit(X_WING_PORT)
    );
    assert_eq!(sa.fast_path_packets, 2);
    let entry = sa.conntrack.lookup(&key, 1_000).unwrap();
    assert_eq!((entry.tcp, entry.packets), (TcpState::Closing, 4));
}
