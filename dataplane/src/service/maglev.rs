//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): the lookup table a service picks a new
//! flow's backend from.
//!
//! Every backend gets a permutation of the table's slots from two hashes of its address and port
//! (an offset and a skip); backends take turns claiming their next free slot until the table is full.
//! The same backends always give the same table on every node, and losing one backend moves little
//! more than that backend's own slots.

use super::{Backend, BackendState};

/// The smallest table, so that a service with one or two backends still spreads evenly on change.
pub const MIN_SIZE: usize = 251;
/// The largest table: 65521 is the largest prime below 2^16.
pub const MAX_SIZE: usize = 65_521;
/// Slots per backend the table aims for: Maglev's imbalance stays within about 1% at 100.
pub const SLOTS_PER_BACKEND: usize = 100;

/// A service's Maglev table: slot → index into the service's backend list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaglevTable {
    slots: Box<[u16]>,
}

/// The table size for `backends` backends: a prime ≥ 100 per backend, within [MIN_SIZE, MAX_SIZE].
pub fn table_size(backends: usize) -> usize {
    let wanted = backends
        .saturating_mul(SLOTS_PER_BACKEND)
        .clamp(MIN_SIZE, MAX_SIZE);
    (wanted..=MAX_SIZE)
        .find(|n| is_prime(*n))
        .unwrap_or(MAX_SIZE)
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

fn mix64(mut x: u64) -> u64 {
    // splitmix64's finalizer: every input bit reaches every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn backend_hash(backend: &Backend, seed: u64) -> u64 {
    let bits = backend.addr.bits();
    let h = mix64(seed ^ (bits >> 64) as u64);
    let h = mix64(h ^ bits as u64);
    mix64(h ^ u64::from(backend.port))
}

impl MaglevTable {
    /// The table of size [`table_size`]`(backends.len())` over the Active backends. Sizing by all
    /// backends, not only the active ones, keeps a backend's health change from resizing the table and
    /// so from moving every flow. More than 65536 backends: only the first 65536 are considered.
    pub fn build(backends: &[Backend]) -> Self {
        Self::build_with_size(backends, table_size(backends.len()))
    }

    /// The table of exactly `size` slots (a prime, or the spread suffers) over the Active backends.
    pub fn build_with_size(backends: &[Backend], size: usize) -> Self {
        let active: Vec<(u16, u64, u64)> = backends
            .iter()
            .take(usize::from(u16::MAX) + 1)
            .enumerate()
            .filter(|(_, b)| b.state == BackendState::Active)
            .map(|(i, b)| {
                let m = size as u64;
                let offset = backend_hash(b, 0x6d61_676c_6576_3031) % m;
                let skip = backend_hash(b, 0x736b_6970_5f5f_3032) % (m - 1).max(1) + 1;
                (i as u16, offset, skip)
            })
            .collect();
        if active.is_empty() || size == 0 {
            return MaglevTable::default();
        }
        const EMPTY: u32 = u32::MAX;
        let mut owner = vec![EMPTY; size];
        let mut next = vec![0u64; active.len()];
        let mut filled = 0;
        'fill: loop {
            for ((index, offset, skip), tried) in active.iter().zip(next.iter_mut()) {
                // The backend's next preferred slot that nobody holds yet.
                let cell = loop {
                    if *tried >= size as u64 {
                        // Only a non-prime size gets here: the permutation cycled short of the table.
                        break owner.iter_mut().find(|c| **c == EMPTY);
                    }
                    let slot = ((offset + *tried * skip) % size as u64) as usize;
                    *tried += 1;
                    if let Some(cell) = owner.get_mut(slot).filter(|c| **c == EMPTY) {
                        break Some(cell);
                    }
                };
                if let Some(cell) = cell {
                    *cell = u32::from(*index);
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        MaglevTable {
            slots: owner.into_iter().map(|o| o as u16).collect(),
        }
    }

    /// The backend index for a flow hash; `None` if no backend is active.
    pub fn select(&self, flow_hash: u32) -> Option<u16> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        self.slots.get(flow_hash as usize % len).copied()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slot → backend index, for diagnostics.
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Addr;
    use proptest::prelude::*;

    fn backend(i: u32, state: BackendState) -> Backend {
        Backend {
            addr: Addr::from_v4_bits(0x6440_0100u32.wrapping_add(i)),
            port: 8080,
            state,
            cluster: None,
        }
    }

    fn active(n: u32) -> Vec<Backend> {
        (0..n).map(|i| backend(i, BackendState::Active)).collect()
    }

    #[test]
    fn sizes_are_primes_with_floor_and_cap() {
        assert_eq!(table_size(0), 251);
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(10), 1009);
        assert_eq!(table_size(100_000), MAX_SIZE);
        assert!(is_prime(MAX_SIZE));
    }

    #[test]
    fn any_size_fills_every_slot() {
        for size in [1, 2, 100, 256, 1000] {
            let table = MaglevTable::build_with_size(&active(7), size);
            assert_eq!(table.len(), size);
            assert!(table.slots().iter().all(|s| *s < 7));
        }
    }

    #[test]
    fn empty_or_all_inactive_selects_nothing() {
        assert_eq!(MaglevTable::build(&[]).select(7), None);
        let down = [
            backend(0, BackendState::Unhealthy),
            backend(1, BackendState::Terminating),
        ];
        assert_eq!(MaglevTable::build(&down).select(7), None);
    }

    proptest! {
        #[test]
        fn shares_are_fair(n in 1u32..40, base in any::<u32>()) {
            let backends: Vec<Backend> =
                (0..n).map(|i| backend(base.wrapping_add(i * 977), BackendState::Active)).collect();
            let table = MaglevTable::build(&backends);
            let mut share = vec![0usize; n as usize];
            for slot in table.slots() {
                share[*slot as usize] += 1;
            }
            let fair = table.len() as f64 / n as f64;
            for s in share {
                prop_assert!((s as f64 - fair).abs() <= fair * 0.03 + 1.0, "{} vs fair {}", s, fair);
            }
        }

        #[test]
        fn losing_one_backend_moves_about_its_share(n in 2u32..40, gone in any::<prop::sample::Index>()) {
            let mut backends = active(n);
            let before = MaglevTable::build(&backends);
            let gone = gone.index(n as usize);
            backends[gone].state = BackendState::Unhealthy;
            let after = MaglevTable::build(&backends);
            prop_assert_eq!(before.len(), after.len());
            let moved = before.slots().iter().zip(after.slots()).filter(|(a, b)| a != b).count();
            let bound = before.len() as f64 * (1.0 / n as f64 + 0.05);
            prop_assert!((moved as f64) <= bound, "moved {} of {}", moved, before.len());
            prop_assert!(after.slots().iter().all(|s| *s as usize != gone));
        }

        #[test]
        fn never_picks_an_inactive_backend(states in prop::collection::vec(0u8..3, 0..30), hash in any::<u32>()) {
            let backends: Vec<Backend> = states.iter().enumerate().map(|(i, s)| {
                let state = [BackendState::Active, BackendState::Terminating, BackendState::Unhealthy][*s as usize];
                backend(i as u32, state)
            }).collect();
            let table = MaglevTable::build(&backends);
            let any_active = backends.iter().any(|b| b.state == BackendState::Active);
            prop_assert_eq!(table.select(hash).is_some(), any_active);
            for slot in table.slots() {
                prop_assert_eq!(backends[*slot as usize].state, BackendState::Active);
            }
        }
    }
}
