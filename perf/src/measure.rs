//! Timing loops: run a closure over many items, on one pinned core, and report ns per item.

use std::time::Instant;

/// Pins the calling thread to `core` (by index among the cores the OS reports), if it exists.
pub fn pin_to_core(core: usize) -> Option<usize> {
    let ids = core_affinity::get_core_ids()?;
    let id = *ids.get(core)?;
    core_affinity::set_for_current(id).then_some(id.id)
}

/// Nanoseconds per item of `work(items)`, where `work` handles `items` items, best of `rounds`.
/// The best round is the one least disturbed by the rest of the machine.
pub fn ns_per_item(rounds: usize, items: usize, mut work: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_nanos() as f64 / items as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Million packets per second at `ns` per packet.
pub fn mpps(ns: f64) -> f64 {
    if ns > 0.0 {
        1e3 / ns
    } else {
        0.0
    }
}
