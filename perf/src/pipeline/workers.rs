//! `--workers N`: the established paths on N workers at once, each a thread pinned to a core of its
//! own, with software steering as a node of N workers runs it ([`meshpath_dataplane::steering`]).
//!
//! Frames reach the workers' receive queues without regard to their flow — as on veth, where the
//! queue follows the sender's transmit queue — each flow's requests on one queue and its replies on
//! another, both drawn at random. A worker takes a burst of one direction from its queue, staged in
//! its ring, asks steering for each frame's owner, runs the pipeline over the frames it owns and
//! hands each other frame's descriptor to its owner through a handoff ring; between its own bursts
//! it takes what was handed to it (staged from where the sender received it) and runs the pipeline
//! over that. Each worker's conntrack holds the flows it owns, and no other.
//!
//! The figure is frames per wall-clock second of all workers together, against the same code on one
//! worker (which owns everything, asks steering nothing and hands nothing over, as a node's only
//! worker does): `scaling`. Staging, steering and handoff are inside the timed loop, nothing is
//! subtracted; a handed frame is staged again by its owner, the stand-in here for reading it where
//! the receiving worker's queue put it in a shared UMEM. A figure is refused unless every
//! frame got the verdict it must get and no timed frame made a new conntrack entry — a reply steered
//! to a worker that does not hold its flow would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use meshpath_dataplane::pipeline::{self, Verdict, WorkerState};
use meshpath_dataplane::steering::handoff::{self, Descriptor};
use meshpath_dataplane::steering::{Owner, Steering};
use meshpath_dataplane::testbed::Testbed;
use meshpath_dataplane::{Frame, PortId};
use serde::{Deserialize, Serialize};

use super::ring::{Ring, BURST};
use super::{Traffic, VerdictCount};
use crate::measure;

/// Two workers should do nearly twice the work of one on two cores.
pub const TARGET_SCALING: f64 = 1.8;
/// Descriptors a handoff ring holds: as many as the agent's UMEM has chunks, the most frames a
/// worker can have in flight. A worker whose ring to its owner is full waits for the owner.
const HANDOFF_RING: usize = super::ring::UMEM_CHUNKS;
/// Frames per descriptor index space of one queue (the queue in the top byte of the address).
const QUEUE_SHIFT: u32 = 24;

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkersReport {
    pub workers: u16,
    /// Million frames per second of all workers together, and of one worker on the same frames.
    pub mpps: f64,
    pub mpps_one_worker: f64,
    /// `mpps` / `mpps_one_worker`.
    pub scaling: f64,
    pub target_scaling: f64,
    /// Of the frames the workers received, the share another worker owned and was handed.
    pub handed_off: f64,
    /// The core each worker was pinned to (`null`: not pinned), and the one worker's.
    pub cores: Vec<Option<usize>>,
    pub core_one_worker: Option<usize>,
    /// Frames per timed round (every flow's request and reply).
    pub frames_per_round: usize,
    pub verdicts: VerdictCount,
}

/// One receive queue's frames, in bursts of one direction, and the verdict each must get.
struct Queue<'a> {
    frames: Vec<(PortId, &'a [u8])>,
    expected: Vec<Verdict>,
    /// Where each burst starts in `frames`.
    bursts: Vec<std::ops::Range<usize>>,
}

/// The frames of `traffic` dealt over `n` queues: each flow's request and reply on queues drawn at
/// random, each independently of the other.
fn queues<'a>(traffic: &'a Traffic, n: usize) -> Vec<Queue<'a>> {
    let requests = traffic.requests();
    let replies = traffic.replies();
    let mut queues: Vec<Queue<'a>> = (0..n)
        .map(|_| Queue {
            frames: Vec::new(),
            expected: Vec::new(),
            bursts: Vec::new(),
        })
        .collect();
    let pick = |i: usize, direction: u8| {
        (meshpath_dataplane::hash::hash_one(&(i, direction)) % n as u64) as usize
    };
    for (direction, burst) in [(0u8, &requests), (1u8, &replies)] {
        for (i, (frame, expected)) in burst.frames.iter().zip(&burst.expected).enumerate() {
            let queue = &mut queues[pick(i, direction)];
            queue.frames.push(*frame);
            queue.expected.push(*expected);
        }
    }
    // Requests first, then replies, in bursts that never mix the two.
    for queue in &mut queues {
        let split = queue
            .frames
            .iter()
            .position(|(port, _)| *port == meshpath_dataplane::testbed::UPLINK)
            .unwrap_or(queue.frames.len());
        for (start, end) in [(0, split), (split, queue.frames.len())] {
            let mut at = start;
            while at < end {
                let next = (at + BURST).min(end);
                queue.bursts.push(at..next);
                at = next;
            }
        }
    }
    queues
}

/// Mpps of `n` workers over `traffic`, best of `rounds`, with the share of frames handed off.
struct Run {
    mpps: f64,
    handed_off: f64,
    cores: Vec<Option<usize>>,
    verdicts: VerdictCount,
}

fn run_workers(
    bed: &Testbed,
    traffic: &Traffic,
    n: u16,
    cores: &[usize],
    rounds: usize,
) -> anyhow::Result<Run> {
    let steering = Steering::new(n).ok_or_else(|| anyhow::anyhow!("no workers"))?;
    let queues = queues(traffic, usize::from(n));
    let capacity = 2 * bed.scale.flows + 1024;
    let mut states = bed.warmed_workers(steering, capacity);
    let mut rings: Vec<Ring> = (0..n).map(|_| Ring::new()).collect();
    let (mut senders, mut receivers) = channels(usize::from(n));
    let frames: usize = queues.iter().map(|q| q.frames.len()).sum();
    let mut best = f64::INFINITY;
    let mut counts = VerdictCount::default();
    let mut handed = 0u64;
    let mut pinned = vec![None; usize::from(n)];
    // What warming left in each worker's conntrack: a timed frame must add nothing (round 0 is
    // checked too, or a frame that met the wrong worker there would be found there later).
    let sizes: Vec<usize> = states.iter().map(|s| s.conntrack.len()).collect();
    // Round 0 warms caches and the fast path, and is not timed.
    for round in 0..=rounds {
        let done = AtomicUsize::new(0);
        let start = Barrier::new(usize::from(n) + 1);
        let results = std::thread::scope(|scope| {
            let workers: Vec<_> = states
                .iter_mut()
                .zip(&mut rings)
                .zip(senders.iter_mut().zip(&mut receivers))
                .enumerate()
                .map(|(me, ((state, ring), (to, from)))| {
                    let lane = Lane {
                        me,
                        steering,
                        bed,
                        queues: &queues,
                        done: &done,
                    };
                    let core = cores.get(me).copied();
                    let start = &start;
                    scope.spawn(move || {
                        let pinned = core.and_then(pin_to_cpu);
                        start.wait();
                        let tally = lane.run(state, ring, to, from);
                        (pinned, Instant::now(), tally)
                    })
                })
                .collect();
            start.wait();
            let began = Instant::now();
            let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            (began, results)
        });
        let (began, results) = results;
        let mut last = began;
        let mut round_counts = VerdictCount::default();
        let mut round_handed = 0;
        for (i, result) in results.into_iter().enumerate() {
            let (core, end, tally) = result.map_err(|_| anyhow::anyhow!("worker {i} panicked"))?;
            pinned[i] = core;
            last = last.max(end);
            round_counts.timed += tally.verdicts.timed;
            round_counts.expected += tally.verdicts.expected;
            round_handed += tally.handed;
        }
        if round == 0 {
            continue;
        }
        let elapsed = last.duration_since(began).max(Duration::from_nanos(1));
        best = best.min(elapsed.as_nanos() as f64 / frames as f64);
        counts.timed += round_counts.timed;
        counts.expected += round_counts.expected;
        handed += round_handed;
    }
    let grown: Vec<(usize, usize)> = states
        .iter()
        .map(|s| s.conntrack.len())
        .zip(sizes)
        .map(|(now, before)| (before, now))
        .filter(|(before, now)| now != before)
        .collect();
    anyhow::ensure!(
        grown.is_empty(),
        "{n} workers: timed frames made new conntrack entries (entries before → after: {grown:?}): a frame met a worker that does not hold its flow"
    );
    anyhow::ensure!(
        counts.expected == counts.timed,
        "{n} workers: only {} of {} timed frames got their verdict",
        counts.expected,
        counts.timed
    );
    Ok(Run {
        mpps: measure::mpps(best),
        handed_off: handed as f64 / counts.timed.max(1) as f64,
        cores: pinned,
        verdicts: counts,
    })
}

/// Pins the calling thread to CPU `id` — by its number, not by its index among the CPUs the
/// thread may run on: the benchmark's main thread is pinned to one, and threads inherit that.
fn pin_to_cpu(id: usize) -> Option<usize> {
    core_affinity::set_for_current(core_affinity::CoreId { id }).then_some(id)
}

/// The handoff rings: `senders[i][j]` carries worker i's frames to worker j, read by
/// `receivers[j][i]` (none from a worker to itself).
type Senders = Vec<Vec<Option<handoff::Sender>>>;
type Receivers = Vec<Vec<Option<handoff::Receiver>>>;

fn channels(n: usize) -> (Senders, Receivers) {
    let mut senders: Senders = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Receivers = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            let (tx, rx) = handoff::channel(HANDOFF_RING);
            senders[i][j] = Some(tx);
            receivers[j][i] = Some(rx);
        }
    }
    (senders, receivers)
}

/// What a worker shares with the others in a round.
struct Lane<'a> {
    me: usize,
    steering: Steering,
    bed: &'a Testbed,
    queues: &'a [Queue<'a>],
    /// Workers done with their own queue (and so with sending).
    done: &'a AtomicUsize,
}

#[derive(Default)]
struct Tally {
    verdicts: VerdictCount,
    handed: u64,
}

impl Lane<'_> {
    fn run(
        &self,
        state: &mut WorkerState,
        ring: &mut Ring,
        to: &mut [Option<handoff::Sender>],
        from: &mut [Option<handoff::Receiver>],
    ) -> Tally {
        let mut tally = Tally::default();
        let queue = &self.queues[self.me];
        for burst in &queue.bursts {
            self.take_handed(state, ring, from, &mut tally);
            self.own_burst(state, ring, burst.clone(), to, from, &mut tally);
        }
        self.done.fetch_add(1, Ordering::AcqRel);
        let workers = usize::from(self.steering.workers());
        loop {
            let all_done = self.done.load(Ordering::Acquire) == workers;
            let took = self.take_handed(state, ring, from, &mut tally);
            if all_done && took == 0 {
                return tally;
            }
            if took == 0 {
                std::hint::spin_loop();
            }
        }
    }

    /// A burst from this worker's own queue: the frames it owns through the pipeline, the others to
    /// their owners.
    fn own_burst(
        &self,
        state: &mut WorkerState,
        ring: &mut Ring,
        burst: std::ops::Range<usize>,
        to: &mut [Option<handoff::Sender>],
        from: &mut [Option<handoff::Receiver>],
        tally: &mut Tally,
    ) {
        let queue = &self.queues[self.me];
        let count = ring.stage(queue.frames[burst.clone()].iter().copied());
        let tables = &self.bed.tables;
        let mut mine: ArrayVec<(Frame<'_>, Verdict), BURST> = ArrayVec::new();
        let mut theirs: Vec<ArrayVec<Descriptor, BURST>> =
            (0..to.len()).map(|_| ArrayVec::new()).collect();
        let frames = ring.frames(count);
        let mut owners = [Owner::Any; BURST];
        self.steering
            .owners(tables, &frames, &mut owners[..frames.len()]);
        for (k, (frame, owner)) in frames.into_iter().zip(owners).enumerate() {
            let index = burst.start + k;
            let owner = match owner {
                Owner::Worker(w) => usize::from(w),
                Owner::Any => self.me,
            };
            if owner == self.me {
                mine.push((frame, queue.expected[index]));
            } else {
                theirs[owner].push(Descriptor {
                    addr: (self.me as u32) << QUEUE_SHIFT | index as u32,
                    len: frame.len() as u16,
                    port: frame.port(),
                });
            }
        }
        run_pipeline(tables, state, mine, tally);
        for (owner, descriptors) in theirs.iter().enumerate() {
            let Some(sender) = to[owner].as_mut() else {
                continue;
            };
            let mut sent = 0;
            while sent < descriptors.len() {
                sent += sender.send(&descriptors[sent..]);
                if sent < descriptors.len() {
                    // The owner is behind: take what was handed here meanwhile, so that two
                    // workers waiting on each other both make progress.
                    self.take_handed(state, ring, from, tally);
                }
            }
            tally.handed += descriptors.len() as u64;
        }
    }

    /// Up to a burst of frames handed to this worker by each other worker, through the pipeline;
    /// returns how many.
    fn take_handed(
        &self,
        state: &mut WorkerState,
        ring: &mut Ring,
        from: &mut [Option<handoff::Receiver>],
        tally: &mut Tally,
    ) -> usize {
        let mut took = 0;
        let mut descriptors = [Descriptor {
            addr: 0,
            len: 0,
            port: PortId(0),
        }; BURST];
        for receiver in from.iter_mut().flatten() {
            let n = receiver.receive(&mut descriptors);
            if n == 0 {
                continue;
            }
            took += n;
            let located = descriptors[..n].iter().map(|d| {
                let queue = &self.queues[(d.addr >> QUEUE_SHIFT) as usize];
                let index = (d.addr & ((1 << QUEUE_SHIFT) - 1)) as usize;
                (queue.frames[index], queue.expected[index])
            });
            let located: ArrayVec<_, BURST> = located.collect();
            let count = ring.stage(located.iter().map(|(frame, _)| *frame));
            let frames = ring.frames(count);
            let mine = frames
                .into_iter()
                .zip(located.iter().map(|(_, expected)| *expected))
                .collect();
            run_pipeline(&self.bed.tables, state, mine, tally);
        }
        took
    }
}

/// Runs the pipeline over `frames` and counts the verdicts that are what each frame must get.
fn run_pipeline(
    tables: &meshpath_dataplane::snapshot::Tables,
    state: &mut WorkerState,
    frames: ArrayVec<(Frame<'_>, Verdict), BURST>,
    tally: &mut Tally,
) {
    if frames.is_empty() {
        return;
    }
    let mut batch: ArrayVec<Frame<'_>, BURST> = ArrayVec::new();
    let mut expected: ArrayVec<Verdict, BURST> = ArrayVec::new();
    for (frame, verdict) in frames {
        batch.push(frame);
        expected.push(verdict);
    }
    let mut verdicts = [Verdict::ToKernel; BURST];
    let verdicts = &mut verdicts[..batch.len()];
    pipeline::process(tables, state, 1, &mut batch, verdicts);
    tally.verdicts.timed += batch.len() as u64;
    let right = verdicts.iter().zip(&expected).filter(|(v, e)| v == e);
    tally.verdicts.expected += right.count() as u64;
}

/// `workers` workers on cores `0..workers`, against one worker on `core`.
pub fn scaling(
    bed: &Testbed,
    traffic: &Traffic,
    workers: u16,
    core: usize,
    rounds: usize,
) -> anyhow::Result<WorkersReport> {
    let one = run_workers(bed, traffic, 1, &[core], rounds)?;
    let cores: Vec<usize> = (0..usize::from(workers)).collect();
    let many = run_workers(bed, traffic, workers, &cores, rounds)?;
    Ok(WorkersReport {
        workers,
        mpps: many.mpps,
        mpps_one_worker: one.mpps,
        scaling: many.mpps / one.mpps,
        target_scaling: TARGET_SCALING,
        handed_off: many.handed_off,
        cores: many.cores,
        core_one_worker: one.cores.first().copied().flatten(),
        frames_per_round: 2 * traffic.len(),
        verdicts: many.verdicts,
    })
}

impl WorkersReport {
    pub fn lines(&self) -> Vec<String> {
        let cores: Vec<String> = self
            .cores
            .iter()
            .map(|c| c.map_or("unpinned".into(), |c| c.to_string()))
            .collect();
        let verdict = if self.scaling >= self.target_scaling {
            "met".to_string()
        } else {
            format!("missed by {:.2}", self.target_scaling - self.scaling)
        };
        vec![
            String::new(),
            format!(
                "{} workers (cores {}), software steering: both established directions, each flow's request and reply on receive queues drawn at random, {} frames a round, best of the rounds",
                self.workers,
                cores.join(", "),
                self.frames_per_round
            ),
            format!(
                "  {:.2} Mpps together against {:.2} Mpps of one worker (core {}) on the same frames; {:.0} % of frames handed to their owner; staging, steering and handoff timed on both sides",
                self.mpps,
                self.mpps_one_worker,
                self.core_one_worker.map_or("unpinned".into(), |c| c.to_string()),
                100.0 * self.handed_off
            ),
            format!(
                "target scaling ≥ {:.1}: {:.2}, {verdict}; verdicts as expected {} of {}",
                self.target_scaling, self.scaling, self.verdicts.expected, self.verdicts.timed
            ),
        ]
    }
}
