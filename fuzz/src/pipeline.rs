//! The pipeline fed a sequence of frames (see [`crate::input`]) on the bed: batches of up to a burst
//! and a half, the clock moving between them, one worker's conntrack carried through the sequence.
//!
//! Invariants: no panic; every frame gets one verdict and is counted once, forwarded or dropped; a
//! transmitted frame leaves through a port of the node, with an Ethernet header, inside its buffer;
//! conntrack never holds more than its capacity.

use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::pipeline::{self, Verdict, BURST};
use meshpath_dataplane::{Frame, WorkerState};

use crate::bed;
use crate::input::{self, Record, CLOCK_STEPS};

/// More than a burst, so that a batch is cut into bursts too.
const MAX_BATCH: usize = BURST + BURST / 2;
/// Room behind a frame, as an AF_XDP chunk has.
const TAILROOM: usize = 256;

pub fn run(data: &[u8]) {
    let records: Vec<Record<'_>> = input::records(data).collect();
    let mut worker = bed::worker();
    run_records(&mut worker, &records);
}

/// Runs `records` through `worker` from clock 1 s on; returns each frame's verdict, in order.
pub fn run_records(worker: &mut WorkerState, records: &[Record<'_>]) -> Vec<Verdict> {
    let mut now = 1_000;
    let mut verdicts = Vec::with_capacity(records.len());
    let mut start = 0;
    while start < records.len() {
        let end = batch_end(records, start);
        now += CLOCK_STEPS[usize::from(records[start].clock_step & 3)];
        verdicts.extend(run_batch(worker, now, &records[start..end]));
        start = end;
    }
    verdicts
}

/// Where the batch starting at `start` ends: before a record that starts a new one, or when full.
fn batch_end(records: &[Record<'_>], start: usize) -> usize {
    let mut end = start + 1;
    while end < records.len() && end - start < MAX_BATCH && !records[end].new_batch {
        end += 1;
    }
    end
}

fn run_batch(worker: &mut WorkerState, now: u64, records: &[Record<'_>]) -> Vec<Verdict> {
    let tables = &bed::bed().tables;
    let mut bufs: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let mut buf = vec![0u8; HEADROOM + r.bytes.len() + TAILROOM];
            buf[HEADROOM..HEADROOM + r.bytes.len()].copy_from_slice(r.bytes);
            buf
        })
        .collect();
    let capacities: Vec<usize> = bufs.iter().map(Vec::len).collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(records)
        .filter_map(|(buf, r)| Frame::new(buf, HEADROOM, r.bytes.len(), r.port))
        .collect();
    assert_eq!(frames.len(), records.len(), "every record fits its buffer");
    let received = worker.counters.received.packets;
    let counted = worker.counters.total_forwarded() + worker.counters.total_dropped();
    let mut verdicts = vec![Verdict::ToKernel; frames.len()];
    pipeline::process(tables, worker, now, &mut frames, &mut verdicts);

    let n = frames.len() as u64;
    let c = &worker.counters;
    assert_eq!(
        c.received.packets,
        received + n,
        "every frame received once"
    );
    assert_eq!(
        c.total_forwarded() + c.total_dropped(),
        counted + n,
        "every frame counted once, forwarded or dropped"
    );
    for ((frame, verdict), capacity) in frames.iter().zip(&verdicts).zip(capacities) {
        if let Verdict::Transmit(port) = verdict {
            assert!(
                bed::has_port(*port),
                "transmitted to {port:?}, no port of the node"
            );
            assert!(
                frame.len() >= 14,
                "a transmitted frame has an Ethernet header"
            );
            assert!(frame.head() + frame.len() <= capacity, "inside its buffer");
        }
    }
    assert!(worker.conntrack.len() <= worker.conntrack.capacity());
    verdicts
}
