//! Counters of the AF_XDP layer, per port and per worker. The worker owns plain counters and publishes
//! them once per batch into atomics; readers get copied-out [`WorkerStats`], never a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::sys::KernelCounters;
use crate::{DropReason, PortId};

/// One port's counters as seen by readers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStats {
    pub port: PortId,
    /// Frames received from the kernel on this port.
    pub rx: u64,
    /// Frames queued for transmit out of this port.
    pub tx: u64,
    /// Frames that found this port's tx ring full and were dropped.
    pub tx_ring_full: u64,
    /// Receive descriptors the kernel returned that we never posted, or out of their chunk.
    pub rx_refused: u64,
    /// Frames received here and dropped by the handler, by reason (index: [`DropReason::index`]).
    pub drops: [u64; DropReason::COUNT],
    /// Frames received here that the handler gave to the kernel: no path to the kernel yet, so
    /// they are dropped and counted here (named `to_kernel_unsupported` in reports).
    pub to_kernel_unsupported: u64,
    /// Frames received here for a port this worker does not own.
    pub tx_unknown_port: u64,
    /// The kernel's counters of this port's socket (rx ring full, fill ring empty, ...), refreshed
    /// every [`super::worker::KERNEL_COUNTERS_EVERY`], busy or idle.
    pub kernel: KernelCounters,
}

impl PortStats {
    /// All-zero counters of `port`.
    pub fn new(port: PortId) -> PortStats {
        PortStats {
            port,
            rx: 0,
            tx: 0,
            tx_ring_full: 0,
            rx_refused: 0,
            drops: [0; DropReason::COUNT],
            to_kernel_unsupported: 0,
            tx_unknown_port: 0,
            kernel: KernelCounters::default(),
        }
    }

    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum::<u64>()
            + self.tx_ring_full
            + self.to_kernel_unsupported
            + self.tx_unknown_port
    }
}

/// A worker's counters: its ports and its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Non-empty receive bursts handled.
    pub batches: u64,
    /// Times the worker slept in poll(2) because no port had frames.
    pub idle_polls: u64,
    /// Times a tx ring asked for, and got, a sendto kick (need_wakeup).
    pub tx_kicks: u64,
    /// Times a fill ring asked for, and got, a recvfrom kick (need_wakeup).
    pub rx_kicks: u64,
    /// Frames received here whose flow another worker owns, handed to it.
    pub handed_off: u64,
    /// Frames another worker received and handed here, to the flow's owner.
    pub received_handoff: u64,
    pub umem: UmemStats,
    pub ports: Vec<PortStats>,
}

/// The worker's packet memory, in chunks, as of its last count (every
/// [`super::worker::KERNEL_COUNTERS_EVERY`] and after every port change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UmemStats {
    pub chunks: u64,
    /// In the worker's free list: on no ring and in no batch.
    pub free: u64,
    /// On the rings of a socket that is no port of the worker any more: leaked. Always 0.
    pub orphaned: u64,
}

impl WorkerStats {
    pub fn rx(&self) -> u64 {
        self.ports.iter().map(|p| p.rx).sum()
    }

    pub fn tx(&self) -> u64 {
        self.ports.iter().map(|p| p.tx).sum()
    }

    pub fn port(&self, port: PortId) -> Option<&PortStats> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// A node's workers' counters as one: summed, each port's over every worker that serves it.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in workers {
            total.batches += w.batches;
            total.idle_polls += w.idle_polls;
            total.tx_kicks += w.tx_kicks;
            total.rx_kicks += w.rx_kicks;
            total.handed_off += w.handed_off;
            total.received_handoff += w.received_handoff;
            total.umem.chunks += w.umem.chunks;
            total.umem.free += w.umem.free;
            total.umem.orphaned += w.umem.orphaned;
            for p in &w.ports {
                match total.ports.iter_mut().find(|t| t.port == p.port) {
                    Some(t) => t.add(p),
                    None => total.ports.push(p.clone()),
                }
            }
        }
        total
    }
}

impl PortStats {
    fn add(&mut self, other: &PortStats) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.tx_ring_full += other.tx_ring_full;
        self.rx_refused += other.rx_refused;
        self.to_kernel_unsupported += other.to_kernel_unsupported;
        self.tx_unknown_port += other.tx_unknown_port;
        for (d, o) in self.drops.iter_mut().zip(other.drops) {
            *d += o;
        }
        let (k, o) = (&mut self.kernel, other.kernel);
        k.rx_dropped += o.rx_dropped;
        k.rx_ring_full += o.rx_ring_full;
        k.fill_ring_empty += o.fill_ring_empty;
        k.rx_invalid_descs += o.rx_invalid_descs;
        k.tx_invalid_descs += o.tx_invalid_descs;
    }
}

const PORT_FIELDS: usize = 11 + DropReason::COUNT;
const WORKER_FIELDS: usize = 9;

/// The published copy: written by the worker only, read by anyone. Its layout (which ports, in which
/// order) is swapped whole when the worker's ports change, so a reader never pairs one port's name
/// with another's counters.
#[derive(Debug)]
pub(crate) struct SharedStats {
    layout: ArcSwap<Layout>,
    /// Turns of the worker's loop; beaten every turn, apart from the counters.
    heartbeat: AtomicU64,
}

#[derive(Debug)]
struct Layout {
    ports: Vec<PortId>,
    cells: Vec<AtomicU64>,
}

impl Layout {
    fn new(ports: Vec<PortId>) -> Layout {
        let cells = (0..WORKER_FIELDS + ports.len() * PORT_FIELDS)
            .map(|_| AtomicU64::new(0))
            .collect();
        Layout { ports, cells }
    }
}

impl SharedStats {
    pub(crate) fn new(ports: Vec<PortId>) -> SharedStats {
        SharedStats {
            layout: ArcSwap::from_pointee(Layout::new(ports)),
            heartbeat: AtomicU64::new(0),
        }
    }

    /// The worker's ports changed: `stats` (its counters, in its new port order) become the copy.
    pub(crate) fn relayout(&self, stats: &WorkerStats) {
        let layout = Layout::new(stats.ports.iter().map(|p| p.port).collect());
        store(&layout, stats);
        self.layout.store(Arc::new(layout));
    }

    /// The worker's loop made its `turns`-th turn (the worker is the only writer).
    pub(crate) fn beat(&self, turns: u64) {
        self.heartbeat.store(turns, Ordering::Relaxed);
    }

    pub(crate) fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Ordering::Relaxed)
    }

    pub(crate) fn publish(&self, stats: &WorkerStats) {
        store(&self.layout.load(), stats);
    }

    pub(crate) fn read(&self) -> WorkerStats {
        let layout = self.layout.load();
        let mut cells = layout.cells.iter().map(|c| c.load(Ordering::Relaxed));
        let mut next = || cells.next().unwrap_or(0);
        let (batches, idle_polls, tx_kicks, rx_kicks) = (next(), next(), next(), next());
        let (handed_off, received_handoff) = (next(), next());
        let umem = UmemStats {
            chunks: next(),
            free: next(),
            orphaned: next(),
        };
        let ports = layout
            .ports
            .iter()
            .map(|&port| {
                let mut p = PortStats {
                    port,
                    rx: next(),
                    tx: next(),
                    tx_ring_full: next(),
                    rx_refused: next(),
                    to_kernel_unsupported: next(),
                    tx_unknown_port: next(),
                    kernel: KernelCounters {
                        rx_dropped: next(),
                        rx_ring_full: next(),
                        fill_ring_empty: next(),
                        rx_invalid_descs: next(),
                        tx_invalid_descs: next(),
                    },
                    drops: [0; DropReason::COUNT],
                };
                p.drops.iter_mut().for_each(|d| *d = next());
                p
            })
            .collect();
        WorkerStats {
            batches,
            idle_polls,
            tx_kicks,
            rx_kicks,
            handed_off,
            received_handoff,
            umem,
            ports,
        }
    }
}

fn store(layout: &Layout, stats: &WorkerStats) {
    let values = [
        stats.batches,
        stats.idle_polls,
        stats.tx_kicks,
        stats.rx_kicks,
        stats.handed_off,
        stats.received_handoff,
        stats.umem.chunks,
        stats.umem.free,
        stats.umem.orphaned,
    ]
    .into_iter()
    .chain(stats.ports.iter().flat_map(|p| {
        [
            p.rx,
            p.tx,
            p.tx_ring_full,
            p.rx_refused,
            p.to_kernel_unsupported,
            p.tx_unknown_port,
            p.kernel.rx_dropped,
            p.kernel.rx_ring_full,
            p.kernel.fill_ring_empty,
            p.kernel.rx_invalid_descs,
            p.kernel.tx_invalid_descs,
        ]
        .into_iter()
        .chain(p.drops)
    }));
    for (cell, value) in layout.cells.iter().zip(values) {
        cell.store(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn publish_then_read_returns_the_same_counters(
            worker in any::<[u64; 9]>(),
            ports in proptest::collection::vec((any::<[u64; 11]>(), any::<[u64; DropReason::COUNT]>()), 0..5),
        ) {
            let stats = WorkerStats {
                batches: worker[0],
                idle_polls: worker[1],
                tx_kicks: worker[2],
                rx_kicks: worker[3],
                handed_off: worker[7],
                received_handoff: worker[8],
                umem: UmemStats { chunks: worker[4], free: worker[5], orphaned: worker[6] },
                ports: ports
                    .iter()
                    .enumerate()
                    .map(|(i, (v, drops))| PortStats {
                        port: PortId(i as u16 * 3),
                        rx: v[0], tx: v[1], tx_ring_full: v[2], rx_refused: v[3],
                        to_kernel_unsupported: v[4], tx_unknown_port: v[5], drops: *drops,
                        kernel: KernelCounters {
                            rx_dropped: v[6], rx_ring_full: v[7], fill_ring_empty: v[8],
                            rx_invalid_descs: v[9], tx_invalid_descs: v[10],
                        },
                    })
                    .collect(),
            };
            let shared = SharedStats::new(stats.ports.iter().map(|p| p.port).collect());
            shared.publish(&stats);
            prop_assert_eq!(shared.read(), stats.clone());
            // A port goes: the copy follows the worker's new order, with each port's own counters.
            let mut fewer = stats.clone();
            if !fewer.ports.is_empty() {
                fewer.ports.remove(0);
            }
            shared.relayout(&fewer);
            prop_assert_eq!(shared.read(), fewer);
        }
    }
}
