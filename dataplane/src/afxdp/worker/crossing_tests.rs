//! Workers handing frames to each other over one shared UMEM, with the kernel played by the test:
//! every chunk is accounted for after bursts that cross, and a full handoff ring drops and counts.

use super::super::sys::{fake_kernel, RX_OFFSET};
use super::*;

const RING: u32 = BURST as u32;
const A: PortId = PortId(0);
const B: PortId = PortId(1);
/// Frames of this length belong to worker 1, all others to worker 0 (the tests' steering).
const WORKER_1_LEN: u32 = 61;

/// Steers by length and sends every frame from A out of B.
struct ByLength;

impl BatchHandler for ByLength {
    fn handle(&mut self, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
        for (frame, verdict) in frames.iter().zip(verdicts.iter_mut()) {
            *verdict = match frame.port() {
                A => Verdict::Transmit(B),
                _ => Verdict::Drop(DropReason::UnknownPort),
            };
        }
    }

    fn steer(&mut self, frames: &[Frame<'_>], owners: &mut [Owner]) {
        for (frame, owner) in frames.iter().zip(owners.iter_mut()) {
            *owner = Owner::Worker(u16::from(frame.len() == WORKER_1_LEN as usize));
        }
    }
}

/// Two workers on ports A and B (each on its own queue), sharing one UMEM of `chunks` per worker.
fn pair(chunks: u32) -> Vec<Worker> {
    let umems = Umem::shared(chunks, 2).expect("mmap");
    let crossings = Crossing::mesh(2, chunks as usize).expect("eventfds");
    umems
        .into_iter()
        .zip(crossings)
        .enumerate()
        .map(|(w, (umem, crossing))| {
            let port = |id, ifindex| PortConfig {
                id,
                ifindex,
                queue: w as u32,
            };
            let config = WorkerConfig {
                ring_size: RING,
                ..WorkerConfig::new(vec![port(A, 1), port(B, 2)])
            };
            let ports = [A, B]
                .into_iter()
                .map(|id| Port {
                    id,
                    xsk: fake_kernel::socket(RING),
                })
                .collect();
            let mut worker = Worker::assemble(config, umem, ports);
            worker.crossing = Some(crossing);
            worker.reindex();
            worker
        })
        .collect()
}

/// The kernel receives on `port` of `w` one frame of each length in `lens`.
fn receive(w: &mut Worker, port: usize, lens: &[u32]) {
    for &len in lens {
        let base = w.ports[port]
            .xsk
            .kernel_take_fill()
            .expect("a posted buffer");
        assert!(w.ports[port]
            .xsk
            .kernel_receive(base + RX_OFFSET as u64, len));
    }
}

/// The kernel sends and completes everything on every tx ring of `w`; returns how many.
fn complete_all(w: &mut Worker) -> usize {
    let mut done = 0;
    for port in &mut w.ports {
        while let Some(desc) = port.xsk.kernel_take_tx() {
            assert!(port.xsk.kernel_complete(desc.addr));
            done += 1;
        }
    }
    done
}

/// Every chunk of the mapping, counted once: free, held by a worker (rings, batch), waiting to go
/// home, or in a ring between workers.
fn accounted(workers: &[Worker]) -> usize {
    workers
        .iter()
        .map(|w| {
            let flight = w.umem.in_flight();
            let crossing = w.crossing.as_ref().expect("a pair");
            w.umem.free_chunks() + flight.held + flight.returning + crossing.in_rings()
        })
        .sum()
}

fn away(workers: &[Worker]) -> usize {
    workers.iter().map(|w| w.umem.in_flight().away).sum()
}

#[test]
fn frames_cross_to_their_owner_and_every_chunk_comes_home() {
    let chunks = 4 * RING;
    let mut w = pair(chunks);
    let total = 2 * chunks as usize;
    assert_eq!(accounted(&w), total);
    let mut h = (ByLength, ByLength);
    let lens: Vec<u32> = (0..BURST as u32).map(|i| 60 + i % 2).collect();
    receive(&mut w[0], 0, &lens);
    receive(&mut w[1], 0, &lens);
    w[0].poll_once(&mut h.0);
    assert_eq!(
        accounted(&w),
        total,
        "worker 0's half in the ring to worker 1"
    );
    w[1].poll_once(&mut h.1);
    w[0].poll_once(&mut h.0);
    assert_eq!(accounted(&w), total);
    let half = BURST as u64 / 2;
    for (i, worker) in w.iter().enumerate() {
        let s = &worker.stats;
        assert_eq!(
            (s.handed_off, s.received_handoff),
            (half, half),
            "worker {i}"
        );
        assert_eq!(s.ports[0].rx, BURST as u64, "worker {i}");
        assert_eq!(
            s.ports[1].tx, BURST as u64,
            "worker {i}: its own and the handed"
        );
    }
    assert_eq!(
        away(&w),
        2 * half as usize,
        "each half on the other's tx ring"
    );
    assert_eq!(complete_all(&mut w[0]) + complete_all(&mut w[1]), 2 * BURST);
    for _ in 0..2 {
        w[0].poll_once(&mut h.0);
        w[1].poll_once(&mut h.1);
    }
    assert_eq!(accounted(&w), total);
    assert_eq!(away(&w), 0, "every chunk went home");
    for worker in &w {
        let flight = worker.umem.in_flight();
        assert_eq!(
            flight.held,
            2 * RING as usize,
            "only the fill rings hold chunks"
        );
        assert_eq!(
            worker.umem.free_chunks(),
            chunks as usize - 2 * RING as usize
        );
    }
}

#[test]
fn a_full_handoff_ring_drops_counts_and_frees() {
    let chunks = 16 * RING;
    let mut w = pair(chunks);
    let total = 2 * chunks as usize;
    let mut h = ByLength;
    let bursts = HANDOFF_RING / BURST + 1;
    for _ in 0..bursts {
        receive(&mut w[0], 0, &[WORKER_1_LEN; BURST]);
        w[0].poll_once(&mut h);
    }
    let s = &w[0].stats;
    assert_eq!(s.handed_off, HANDOFF_RING as u64);
    let full = s.ports[0].drops[DropReason::HandoffRingFull.index()];
    assert_eq!(full, BURST as u64);
    assert_eq!(
        accounted(&w),
        total,
        "the dropped frames' chunks are free again"
    );
    // Worker 1 takes them all, and sends them: nothing lost or freed twice.
    for _ in 0..bursts {
        w[1].poll_once(&mut h);
    }
    assert_eq!(w[1].stats.received_handoff, HANDOFF_RING as u64);
    assert_eq!(accounted(&w), total);
}

#[test]
fn a_worker_asleep_is_rung_and_one_awake_is_not() {
    let mut w = pair(4 * RING);
    let mut h = ByLength;
    assert!(w[1].crossing.as_ref().expect("a pair").going_to_sleep());
    receive(&mut w[0], 0, &[WORKER_1_LEN; 4]);
    w[0].poll_once(&mut h);
    let mut fds = w[1].pollfds.clone();
    let doorbell = fds.len() - 1;
    assert_eq!(
        sys::poll_readable(&mut fds[doorbell..], 0).expect("poll"),
        1,
        "rung"
    );
    w[1].crossing.as_ref().expect("a pair").woke();
    assert_eq!(
        sys::poll_readable(&mut fds[doorbell..], 0).expect("poll"),
        0,
        "drained"
    );
    // Awake, it is not rung; and with frames waiting it does not go to sleep.
    receive(&mut w[0], 0, &[WORKER_1_LEN; 4]);
    w[0].poll_once(&mut h);
    assert_eq!(
        sys::poll_readable(&mut fds[doorbell..], 0).expect("poll"),
        0
    );
    assert!(!w[1].crossing.as_ref().expect("a pair").going_to_sleep());
}

#[test]
fn chunks_sent_home_wake_their_sleeping_home_worker() {
    let mut w = pair(4 * RING);
    let mut h = ByLength;
    // Worker 0 hands worker 1 a burst; worker 1 sends it out and the kernel completes it.
    receive(&mut w[0], 0, &[WORKER_1_LEN; 4]);
    w[0].poll_once(&mut h);
    w[1].poll_once(&mut h);
    assert_eq!(complete_all(&mut w[1]), 4);
    assert!(w[0].crossing.as_ref().expect("a pair").going_to_sleep());
    w[1].poll_once(&mut h);
    let mut fds = w[0].pollfds.clone();
    let doorbell = fds.len() - 1;
    assert_eq!(
        sys::poll_readable(&mut fds[doorbell..], 0).expect("poll"),
        1,
        "worker 0 rung: its chunks came home"
    );
    let crossing = w[0].crossing.as_ref().expect("a pair");
    crossing.woke();
    assert!(
        !crossing.going_to_sleep(),
        "returned chunks waiting keep it awake"
    );
    w[0].poll_once(&mut h);
    assert_eq!(away(&w), 0);
    assert!(w[0].crossing.as_ref().expect("a pair").going_to_sleep());
}
