//! Handing a frame to the worker that owns its flow: a bounded single-producer single-consumer ring
//! of frame descriptors between two workers, one per ordered pair of workers. The frame stays where
//! it is (the workers share one UMEM); only its descriptor crosses, a burst at a time.
//!
//! Lock-free and without `unsafe`: every slot is an atomic word, the producer publishes a burst
//! with one release store of its tail and the consumer frees it with one release store of its head.
//! Each side keeps the other's index as last seen and reads it again only when the ring looks full
//! (or empty), so a burst costs two shared cache lines at most.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::PortId;

/// A frame as one worker hands it to another: where it is in the UMEM, how long, and the port it
/// came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub addr: u32,
    pub len: u16,
    pub port: PortId,
}

impl Descriptor {
    fn pack(self) -> u64 {
        u64::from(self.addr) << 32 | u64::from(self.len) << 16 | u64::from(self.port.0)
    }

    fn unpack(word: u64) -> Descriptor {
        Descriptor {
            addr: (word >> 32) as u32,
            len: (word >> 16) as u16,
            port: PortId(word as u16),
        }
    }
}

/// An index on a cache line of its own, so that the producer's and the consumer's never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Index(AtomicUsize);

#[derive(Debug)]
struct Ring {
    slots: Box<[AtomicU64]>,
    mask: usize,
    /// Next slot the consumer reads; written by the consumer only.
    head: Index,
    /// Next slot the producer writes; written by the producer only.
    tail: Index,
}

/// The producing end: the worker that received frames another worker owns.
#[derive(Debug)]
pub struct Sender {
    ring: Arc<Ring>,
    tail: usize,
    /// The consumer's head as last read.
    head: usize,
}

/// The consuming end: the owner.
#[derive(Debug)]
pub struct Receiver {
    ring: Arc<Ring>,
    head: usize,
    /// The producer's tail as last read.
    tail: usize,
}

/// A ring of `capacity` descriptors (rounded up to a power of two, at least 2).
pub fn channel(capacity: usize) -> (Sender, Receiver) {
    let capacity = capacity.max(2).next_power_of_two();
    let ring = Arc::new(Ring {
        slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
        mask: capacity - 1,
        head: Index::default(),
        tail: Index::default(),
    });
    let sender = Sender {
        ring: ring.clone(),
        tail: 0,
        head: 0,
    };
    let receiver = Receiver {
        ring,
        head: 0,
        tail: 0,
    };
    (sender, receiver)
}

impl Sender {
    /// Queues as many of `frames` as there is room for, in order; returns how many. The rest are
    /// the caller's to drop and count.
    pub fn send(&mut self, frames: &[Descriptor]) -> usize {
        let capacity = self.ring.slots.len();
        if self.tail - self.head + frames.len() > capacity {
            self.head = self.ring.head.0.load(Ordering::Acquire);
        }
        let room = capacity - (self.tail - self.head);
        let n = room.min(frames.len());
        for (i, frame) in frames.iter().take(n).enumerate() {
            let slot = &self.ring.slots[(self.tail + i) & self.ring.mask];
            slot.store(frame.pack(), Ordering::Relaxed);
        }
        if n > 0 {
            self.tail += n;
            self.ring.tail.0.store(self.tail, Ordering::Release);
        }
        n
    }
}

impl Receiver {
    /// Takes up to `out.len()` descriptors, oldest first; returns how many.
    pub fn receive(&mut self, out: &mut [Descriptor]) -> usize {
        if self.tail - self.head < out.len() {
            self.tail = self.ring.tail.0.load(Ordering::Acquire);
        }
        let n = (self.tail - self.head).min(out.len());
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            let word = self.ring.slots[(self.head + i) & self.ring.mask].load(Ordering::Relaxed);
            *slot = Descriptor::unpack(word);
        }
        if n > 0 {
            self.head += n;
            self.ring.head.0.store(self.head, Ordering::Release);
        }
        n
    }

    /// Descriptors queued and not yet taken, as last published.
    pub fn pending(&self) -> usize {
        self.ring.tail.0.load(Ordering::Acquire) - self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(i: u32) -> Descriptor {
        Descriptor {
            addr: i.wrapping_mul(2048),
            len: (i % 2048) as u16,
            port: PortId((i % 7) as u16),
        }
    }

    #[test]
    fn a_full_ring_takes_what_fits_and_the_rest_after_the_consumer_frees_room() {
        let (mut tx, mut rx) = channel(8);
        let frames: Vec<Descriptor> = (0..12).map(d).collect();
        assert_eq!(tx.send(&frames), 8);
        assert_eq!(tx.send(&frames[8..]), 0, "full");
        let mut out = [d(0); 5];
        assert_eq!(rx.receive(&mut out), 5);
        assert_eq!(out.to_vec(), frames[..5].to_vec());
        assert_eq!(tx.send(&frames[8..]), 4);
        let mut rest = [d(0); 16];
        assert_eq!(rx.receive(&mut rest), 7);
        assert_eq!(rest[..7].to_vec(), frames[5..].to_vec());
        assert_eq!(rx.receive(&mut rest), 0, "empty");
    }

    #[test]
    fn every_descriptor_crosses_threads_once_and_in_order() {
        let (mut tx, mut rx) = channel(64);
        const N: u32 = 200_000;
        let producer = std::thread::spawn(move || {
            let mut next = 0;
            while next < N {
                let burst: Vec<Descriptor> = (next..N.min(next + 32)).map(d).collect();
                next += tx.send(&burst) as u32;
                std::hint::spin_loop();
            }
        });
        let mut expected = 0;
        let mut out = [d(0); 32];
        while expected < N {
            let n = rx.receive(&mut out);
            for got in &out[..n] {
                assert_eq!(*got, d(expected));
                expected += 1;
            }
            std::hint::spin_loop();
        }
        producer.join().expect("no panic");
        assert_eq!(rx.pending(), 0);
    }

    proptest! {
        #[test]
        fn agrees_with_a_queue(ops in prop::collection::vec((any::<bool>(), 0usize..20), 0..100), cap in 1usize..40) {
            let (mut tx, mut rx) = channel(cap);
            let capacity = cap.max(2).next_power_of_two();
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u32;
            for (send, n) in ops {
                if send {
                    let burst: Vec<Descriptor> = (next..next + n as u32).map(d).collect();
                    let sent = tx.send(&burst);
                    prop_assert_eq!(sent, n.min(capacity - model.len()));
                    model.extend(burst[..sent].iter().copied());
                    next += sent as u32;
                } else {
                    let mut out = vec![d(0); n];
                    let got = rx.receive(&mut out);
                    let want: Vec<Descriptor> = (0..got).filter_map(|_| model.pop_front()).collect();
                    prop_assert_eq!(got, n.min(got + model.len()));
                    prop_assert_eq!(out[..got].to_vec(), want);
                }
            }
        }

        #[test]
        fn a_descriptor_packs_and_unpacks(addr in any::<u32>(), len in any::<u16>(), port in any::<u16>()) {
            let desc = Descriptor { addr, len, port: PortId(port) };
            prop_assert_eq!(Descriptor::unpack(desc.pack()), desc);
        }
    }
}
