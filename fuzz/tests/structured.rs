//! The pipeline on generated sequences of real frames (service requests and their tunnelled replies
//! over VXLAN and Geneve, TCP handshakes, ARP, neighbour discovery, IPv6, local traffic, fragments,
//! expiring TTLs), some mutated, on any port, with the clock moving: the fuzz target's invariants hold.
//! Unmutated, each kind of frame reaches the stage it is made for, so the generated inputs test more
//! than the parser's refusals.

use meshpath_dataplane::pipeline::Verdict;
use meshpath_dataplane::testbed::{pod_port, UPLINK};
use meshpath_dataplane::tunnel::TunnelProtocol;
use meshpath_dataplane::{DropReason, PortId};
use meshpath_fuzz::bed::{self, DUAL_STACK_PORT};
use meshpath_fuzz::frames::{self, TcpFlags};
use meshpath_fuzz::input::Record;
use meshpath_fuzz::pipeline::run_records;
use proptest::prelude::*;

/// A frame of a kind, the port it is sent on, and what an unmutated one becomes.
struct Kind {
    name: &'static str,
    port: PortId,
    bytes: Vec<u8>,
    expect: Verdict,
}

fn kinds() -> Vec<Kind> {
    let k = |name, port, bytes, expect| Kind {
        name,
        port,
        bytes,
        expect,
    };
    let pod0 = pod_port(0);
    let reply_to = pod_port(frames::flow(0).pod);
    vec![
        k(
            "service request",
            pod0,
            frames::service_request(0),
            Verdict::Transmit(UPLINK),
        ),
        k(
            "VXLAN service reply",
            UPLINK,
            frames::service_reply(0, TunnelProtocol::Vxlan),
            Verdict::Transmit(reply_to),
        ),
        k(
            "Geneve service reply",
            UPLINK,
            frames::service_reply(0, TunnelProtocol::Geneve),
            Verdict::Transmit(reply_to),
        ),
        k(
            "TCP SYN to a remote backend",
            pod0,
            frames::tcp_to_remote(0, 3, 41000, TcpFlags::Syn),
            Verdict::Transmit(UPLINK),
        ),
        k(
            "its SYN-ACK through the tunnel",
            UPLINK,
            frames::tcp_from_remote(0, 3, 41000, TcpFlags::SynAck),
            Verdict::Transmit(pod0),
        ),
        k(
            "ARP for the gateway",
            pod0,
            frames::arp_request(0),
            Verdict::Transmit(pod0),
        ),
        k(
            "neighbour solicitation",
            DUAL_STACK_PORT,
            frames::neighbour_solicitation(),
            Verdict::Transmit(DUAL_STACK_PORT),
        ),
        k(
            "IPv6 to a remote endpoint",
            DUAL_STACK_PORT,
            frames::udp6_to_remote(),
            Verdict::Transmit(UPLINK),
        ),
        k(
            "pod to pod",
            DUAL_STACK_PORT,
            frames::pod_to_pod(0, 64),
            Verdict::Transmit(pod0),
        ),
        k(
            "TTL 1",
            DUAL_STACK_PORT,
            frames::pod_to_pod(0, 1),
            Verdict::Drop(DropReason::TtlExceeded),
        ),
        k(
            "non-first fragment",
            DUAL_STACK_PORT,
            frames::fragment(),
            Verdict::Drop(DropReason::UnsupportedFragment),
        ),
    ]
}

#[test]
fn each_kind_of_frame_reaches_its_stage() {
    // In order, on one worker: the SYN-ACK follows its SYN.
    let kinds = kinds();
    let mut worker = bed::worker();
    for kind in &kinds {
        let record = Record {
            port: kind.port,
            clock_step: 0,
            new_batch: true,
            bytes: &kind.bytes,
        };
        let verdict = run_records(&mut worker, &[record]);
        assert_eq!(verdict, [kind.expect], "{}", kind.name);
    }
}

/// (kind, port: the kind's or any, clock step, new batch, byte flips, cut from the end)
type Step = (usize, Option<u16>, u8, bool, Vec<(usize, u8)>, usize);

fn step() -> impl Strategy<Value = Step> {
    (
        0usize..11,
        prop::option::weighted(0.2, 0u16..4),
        prop_oneof![6 => Just(0u8), 1 => 1u8..4],
        any::<bool>(),
        prop::collection::vec((0usize..120, any::<u8>()), 0..3),
        prop_oneof![8 => Just(0usize), 1 => 0usize..60],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sequences_of_real_frames_keep_the_pipelines_invariants(steps in prop::collection::vec(step(), 1..24)) {
        let kinds = kinds();
        let frames: Vec<(PortId, u8, bool, Vec<u8>)> = steps
            .iter()
            .map(|(kind, port, clock, batch, flips, cut)| {
                let kind = &kinds[kind % kinds.len()];
                let mut bytes = kind.bytes.clone();
                for (at, x) in flips {
                    if let Some(b) = bytes.get_mut(*at) { *b ^= x; }
                }
                bytes.truncate(bytes.len().saturating_sub(*cut));
                (port.map_or(kind.port, PortId), *clock, *batch, bytes)
            })
            .collect();
        let records: Vec<Record<'_>> = frames
            .iter()
            .map(|(port, clock_step, new_batch, bytes)| Record {
                port: *port,
                clock_step: *clock_step,
                new_batch: *new_batch,
                bytes,
            })
            .collect();
        let verdicts = run_records(&mut bed::worker(), &records);
        prop_assert_eq!(verdicts.len(), records.len());
    }
}
