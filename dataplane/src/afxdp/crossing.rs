//! Frames crossing between a node's workers: a worker that received a frame another worker owns
//! ([`crate::steering`]) hands its descriptor over a handoff ring, and the owner runs the pipeline on
//! it and transmits it; the chunk then goes home over a return ring, since only its home worker posts
//! it on fill rings ([`super::sys::Umem`]). One handoff ring and one return ring per ordered pair of
//! workers, each single-producer single-consumer ([`crate::steering::handoff`]).
//!
//! A return ring holds every chunk of its home worker's share, so it is never full: a chunk is never
//! lost on the way home. A full handoff ring drops the frame (`handoff_ring_full`): its owner is
//! saturated, and a queue in front of it would only add latency.
//!
//! A worker asleep in poll(2) is woken through its [`Doorbell`], an eventfd it polls beside its
//! sockets: rung once per burst handed over or sent home, and only while the worker sleeps.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use arrayvec::ArrayVec;

use super::sys::{EventFd, BURST, CHUNK_SIZE};
use crate::steering::handoff::{self, Descriptor};
use crate::PortId;

/// Descriptors a handoff ring holds: a few bursts.
pub const HANDOFF_RING: usize = 4 * BURST;

/// What wakes a sleeping worker: its eventfd, and whether it sleeps.
#[derive(Debug)]
pub struct Doorbell {
    event: EventFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    fn new() -> std::io::Result<Doorbell> {
        Ok(Doorbell {
            event: EventFd::new()?,
            sleeping: AtomicBool::new(false),
        })
    }

    pub(super) fn event(&self) -> &EventFd {
        &self.event
    }

    /// Wakes the worker if it sleeps. Called after descriptors were published: the fence pairs
    /// with the sleeper's, so either it sees them before it sleeps or we see it asleep.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.event.signal();
        }
    }
}

/// A worker's ends of the rings to and from the node's other workers (indexed by worker; its own
/// index holds none).
pub struct Crossing {
    index: u16,
    /// Chunks per worker's share: a chunk's home is its index divided by this.
    share: usize,
    to: Vec<Option<handoff::Sender>>,
    from: Vec<Option<handoff::Receiver>>,
    returns_to: Vec<Option<handoff::Sender>>,
    returns_from: Vec<Option<handoff::Receiver>>,
    doorbells: Vec<Arc<Doorbell>>,
    /// Descriptors of this burst, by owner, with their chunk bases.
    outgoing: Vec<ArrayVec<(Descriptor, u64), BURST>>,
    /// Chunks on their way home, by home worker, not yet on its return ring.
    homeward: Vec<ArrayVec<Descriptor, BURST>>,
}

/// What handing a burst over did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handed {
    pub sent: u64,
    /// Dropped: their owner's ring was full.
    pub ring_full: u64,
}

impl Crossing {
    /// The crossings of `workers` workers whose shares are `share` chunks each.
    pub fn mesh(workers: u16, share: usize) -> std::io::Result<Vec<Crossing>> {
        let n = usize::from(workers);
        let doorbells = (0..n)
            .map(|_| Doorbell::new().map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut crossings: Vec<Crossing> = (0..n)
            .map(|w| Crossing {
                index: w as u16,
                share,
                to: (0..n).map(|_| None).collect(),
                from: (0..n).map(|_| None).collect(),
                returns_to: (0..n).map(|_| None).collect(),
                returns_from: (0..n).map(|_| None).collect(),
                doorbells: doorbells.clone(),
                outgoing: (0..n).map(|_| ArrayVec::new()).collect(),
                homeward: (0..n).map(|_| ArrayVec::new()).collect(),
            })
            .collect();
        for a in 0..n {
            for b in (0..n).filter(|&b| b != a) {
                let (tx, rx) = handoff::channel(HANDOFF_RING);
                crossings[a].to[b] = Some(tx);
                crossings[b].from[a] = Some(rx);
                // b returns a's chunks: at most a's whole share is ever away.
                let (tx, rx) = handoff::channel(share);
                crossings[b].returns_to[a] = Some(tx);
                crossings[a].returns_from[b] = Some(rx);
            }
        }
        Ok(crossings)
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub(super) fn doorbell(&self) -> &Doorbell {
        &self.doorbells[usize::from(self.index)]
    }

    /// Whether a frame owned by `worker` must cross: it is another worker of this node.
    pub fn crosses(&self, worker: u16) -> bool {
        worker != self.index && usize::from(worker) < self.doorbells.len()
    }

    /// Queues the frame at `addr` (in the chunk at `base`) for `worker`; false if this burst's
    /// queue for it is full (it cannot be: a burst holds no more).
    pub fn queue(&mut self, worker: u16, base: u64, addr: u64, len: usize, port: PortId) -> bool {
        let desc = Descriptor {
            addr: addr as u32,
            len: len as u16,
            port,
        };
        self.outgoing[usize::from(worker)]
            .try_push((desc, base))
            .is_ok()
    }

    /// Hands the queued descriptors to their owners. `sent(base)` is told each chunk that crossed,
    /// `dropped(base)` each that did not fit.
    pub fn hand_over(&mut self, mut sent: impl FnMut(u64), mut dropped: impl FnMut(u64)) -> Handed {
        let mut handed = Handed::default();
        for w in 0..self.outgoing.len() {
            if self.outgoing[w].is_empty() {
                continue;
            }
            let descs: ArrayVec<Descriptor, BURST> =
                self.outgoing[w].iter().map(|(d, _)| *d).collect();
            let n = match &mut self.to[w] {
                Some(tx) => tx.send(&descs),
                None => 0,
            };
            for (i, (_, base)) in self.outgoing[w].drain(..).enumerate() {
                if i < n {
                    sent(base);
                } else {
                    dropped(base);
                }
            }
            handed.sent += n as u64;
            handed.ring_full += (descs.len() - n) as u64;
            if n > 0 {
                self.doorbells[w].ring();
            }
        }
        handed
    }

    /// Takes up to a burst of frames handed here by any worker, as `(base, head, len, port)`.
    pub fn take_handed(&mut self, out: &mut ArrayVec<(u64, usize, usize, PortId), BURST>) {
        let mut descs = [Descriptor {
            addr: 0,
            len: 0,
            port: PortId(0),
        }; BURST];
        for rx in self.from.iter_mut().flatten() {
            let room = out.remaining_capacity();
            let n = rx.receive(&mut descs[..room]);
            for d in &descs[..n] {
                let base = u64::from(d.addr) & !(CHUNK_SIZE as u64 - 1);
                let head = (u64::from(d.addr) - base) as usize;
                out.push((base, head, usize::from(d.len), d.port));
            }
        }
    }

    /// Sends foreign chunks home, a burst at a time, and wakes each home worker that sleeps: a
    /// worker whose chunks are all away has nothing on its fill rings, so nothing else would.
    pub fn send_home(&mut self, chunks: impl Iterator<Item = u64>) {
        for base in chunks {
            let home = (base as usize / CHUNK_SIZE) / self.share.max(1);
            let Some(batch) = self.homeward.get_mut(home) else {
                debug_assert!(false, "chunk {base:#x} has no home");
                continue;
            };
            if batch.is_full() {
                self.flush_home(home);
            }
            self.homeward[home].push(Descriptor {
                addr: base as u32,
                len: 0,
                port: PortId(0),
            });
        }
        for home in 0..self.homeward.len() {
            self.flush_home(home);
        }
    }

    fn flush_home(&mut self, home: usize) {
        let batch = &mut self.homeward[home];
        if batch.is_empty() {
            return;
        }
        if let Some(Some(tx)) = self.returns_to.get_mut(home) {
            let sent = tx.send(batch);
            debug_assert_eq!(
                sent,
                batch.len(),
                "a return ring holds its home's whole share"
            );
        }
        batch.clear();
        self.doorbells[home].ring();
    }

    /// Takes the home chunks other workers returned; `returned(base)` is told each. Returns how many.
    pub fn take_returned(&mut self, mut returned: impl FnMut(u64)) -> usize {
        let mut descs = [Descriptor {
            addr: 0,
            len: 0,
            port: PortId(0),
        }; BURST];
        let mut total = 0;
        for rx in self.returns_from.iter_mut().flatten() {
            loop {
                let n = rx.receive(&mut descs);
                descs[..n].iter().for_each(|d| returned(u64::from(d.addr)));
                total += n;
                if n < BURST {
                    break;
                }
            }
        }
        total
    }

    /// Descriptors in the rings towards this worker, handed or returned and not yet taken.
    pub fn in_rings(&self) -> usize {
        self.from
            .iter()
            .chain(&self.returns_from)
            .flatten()
            .map(|rx| rx.pending())
            .sum()
    }

    /// About to sleep: from now on, a worker that hands frames over or sends chunks home rings.
    /// Returns false (and stays awake) if something came meanwhile.
    pub fn going_to_sleep(&self) -> bool {
        let bell = self.doorbell();
        bell.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.in_rings() > 0 {
            bell.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Woken (or timed out): no rings needed until the next sleep.
    pub fn woke(&self) {
        let bell = self.doorbell();
        bell.sleeping.store(false, Ordering::Relaxed);
        bell.event.drain();
    }
}
