//! Every `address:port/protocol` that is some service's frontend or backend: what worker steering
//! ([`crate::steering`]) asks of both ends of every frame, so that a backend's reply meets the worker
//! its client's request was steered to, and what policy asks of a non-SYN segment from a backend.
//!
//! Steering asks it of every frame, so its lookup is built to be prefetched across a burst: the key
//! is hashed once ([`ServiceEnds::probe`]), the hash names the cache line the key lives in (three
//! keys a line, probing on to the next line only past a line that overflowed), and a burst starts
//! loading every frame's line before it reads any ([`ServiceEnds::prefetch`]). A map keyed through a
//! hasher gives no address before the lookup; at 10k services × 10 backends its lookups were a cache
//! miss or two each.
//!
//! Counted, not a set: one endpoint may back several services, and an address may be one service's
//! frontend and another's backend; a key goes only when its last holder lets it go. Split into
//! `Arc`ed shards like the frontend map, so a change copies the shards it touches, never the whole.

use std::sync::Arc;

use super::Backend;
use crate::Addr;

const SHARDS: usize = 64;

/// Keys a line holds: three of 20 bytes and the line's overflow mark fill its 64 bytes.
const WAYS: usize = 3;

/// An `address:port/protocol` as a frame names it: a frontend's or a backend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
}

/// What an end is to the services that hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Frontend,
    Backend,
}

/// A key as a line stores it: 4-byte aligned, so that three fit a cache line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
struct Slot {
    addr: [u32; 4],
    port: u16,
    proto: u8,
    /// [`FRONTEND`] and [`BACKEND`] bits; none: the slot is free.
    roles: u8,
}

const FRONTEND: u8 = 1;
const BACKEND: u8 = 2;

impl Slot {
    fn of(key: &EndKey) -> Slot {
        let bits = key.addr.bits();
        Slot {
            addr: [
                (bits >> 96) as u32,
                (bits >> 64) as u32,
                (bits >> 32) as u32,
                bits as u32,
            ],
            port: key.port,
            proto: key.proto,
            roles: 0,
        }
    }

    fn holds(&self, key: &Slot) -> bool {
        self.roles != 0 && self.addr == key.addr && self.port == key.port && self.proto == key.proto
    }
}

#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line {
    slots: [Slot; WAYS],
    /// A key whose hash names this line was stored further on: lookups probe on past it.
    overflowed: u32,
}

/// How many services hold a slot's key, and how.
#[derive(Clone, Copy, Debug, Default)]
struct Holders {
    frontend: u32,
    backend: u32,
}

#[derive(Clone, Debug, Default)]
struct Shard {
    /// A power of two of lines (none while empty).
    lines: Box<[Line]>,
    holders: Box<[[Holders; WAYS]]>,
    len: usize,
    /// Lines whose overflow mark is set: marks outlive the keys that set them (a key let go does
    /// not clear them), so past half the lines the shard is placed again, the marks made anew.
    marked: usize,
}

/// A key hashed, and where its lookup starts: made once per frame for its prefetch and its lookup.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    hash: u64,
    slot: Slot,
}

impl Probe {
    fn shard(&self) -> usize {
        (self.hash >> 58) as usize % SHARDS
    }
}

#[derive(Clone, Debug)]
pub(super) struct ServiceEnds {
    shards: Box<[Arc<Shard>]>,
}

impl Default for ServiceEnds {
    fn default() -> Self {
        ServiceEnds {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

impl ServiceEnds {
    pub fn probe(key: &EndKey) -> Probe {
        Probe {
            hash: crate::hash::hash_one(key),
            slot: Slot::of(key),
        }
    }

    /// Starts loading the line where `probe`'s lookup begins.
    pub fn prefetch(&self, probe: &Probe) {
        if let Some(shard) = self.shards.get(probe.shard()) {
            if let Some(line) = shard.line(probe.hash) {
                crate::prefetch::prefetch(line);
            }
        }
    }

    /// Whether some service holds the probed key as its frontend or one of its backends.
    pub fn is_end(&self, probe: &Probe) -> bool {
        self.roles(probe) != 0
    }

    pub fn is_backend(&self, key: &EndKey) -> bool {
        self.roles(&Self::probe(key)) & BACKEND != 0
    }

    fn roles(&self, probe: &Probe) -> u8 {
        let Some(shard) = self.shards.get(probe.shard()) else {
            return 0;
        };
        shard
            .find(probe)
            .and_then(|(line, way)| shard.lines.get(line)?.slots.get(way))
            .map_or(0, |slot| slot.roles)
    }

    /// A service's backends went from `old` (of protocol `old_proto`) to `new` (of `new_proto`).
    pub fn replace_backends(&mut self, old: (&[Backend], u8), new: (&[Backend], u8)) {
        let keys = |(backends, proto): (&[Backend], u8)| -> Vec<EndKey> {
            let mut keys: Vec<EndKey> = backends
                .iter()
                .map(|b| EndKey {
                    addr: b.addr,
                    port: b.port,
                    proto,
                })
                .collect();
            // A service listing one endpoint twice holds it once.
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (old, new) = (keys(old), keys(new));
        for key in old.iter().filter(|k| new.binary_search(k).is_err()) {
            self.release(key, Role::Backend);
        }
        for key in new.iter().filter(|k| old.binary_search(k).is_err()) {
            self.hold(key, Role::Backend);
        }
    }

    /// One more service holds `key` as `role`.
    pub fn hold(&mut self, key: &EndKey, role: Role) {
        let probe = Self::probe(key);
        if let Some(shard) = self.shards.get_mut(probe.shard()) {
            Arc::make_mut(shard).hold(&probe, role);
        }
    }

    /// One service fewer holds `key` as `role`; the key goes with its last holder.
    pub fn release(&mut self, key: &EndKey, role: Role) {
        let probe = Self::probe(key);
        if let Some(shard) = self.shards.get_mut(probe.shard()) {
            if shard.find(&probe).is_some() {
                Arc::make_mut(shard).release(&probe, role);
            }
        }
    }
}

impl Shard {
    fn home(&self, hash: u64) -> usize {
        (hash as usize) & (self.lines.len().wrapping_sub(1))
    }

    fn line(&self, hash: u64) -> Option<&Line> {
        self.lines.get(self.home(hash))
    }

    /// Where the probed key is: its line and way.
    fn find(&self, probe: &Probe) -> Option<(usize, usize)> {
        let mut at = self.home(probe.hash);
        for _ in 0..self.lines.len() {
            let line = self.lines.get(at)?;
            if let Some(way) = line.slots.iter().position(|s| s.holds(&probe.slot)) {
                return Some((at, way));
            }
            if line.overflowed == 0 {
                return None;
            }
            at = (at + 1) & (self.lines.len() - 1);
        }
        None
    }

    fn hold(&mut self, probe: &Probe, role: Role) {
        let (line, way) = match self.find(probe) {
            Some(found) => found,
            None => {
                if (self.len + 1) * 4 > self.lines.len() * WAYS * 3 {
                    self.rebuild((self.lines.len() * 2).max(4));
                } else if self.marked * 2 > self.lines.len() {
                    self.rebuild(self.lines.len());
                }
                self.len += 1;
                self.place(probe)
            }
        };
        let (Some(slot), Some(holders)) = (
            self.lines.get_mut(line).and_then(|l| l.slots.get_mut(way)),
            self.holders.get_mut(line).and_then(|h| h.get_mut(way)),
        ) else {
            return;
        };
        match role {
            Role::Frontend => holders.frontend += 1,
            Role::Backend => holders.backend += 1,
        }
        slot.roles = roles_of(holders);
    }

    fn release(&mut self, probe: &Probe, role: Role) {
        let Some((line, way)) = self.find(probe) else {
            return;
        };
        let (Some(slot), Some(holders)) = (
            self.lines.get_mut(line).and_then(|l| l.slots.get_mut(way)),
            self.holders.get_mut(line).and_then(|h| h.get_mut(way)),
        ) else {
            return;
        };
        let count = match role {
            Role::Frontend => &mut holders.frontend,
            Role::Backend => &mut holders.backend,
        };
        *count = count.saturating_sub(1);
        slot.roles = roles_of(holders);
        if slot.roles == 0 {
            // The slot is free again; overflow marks stay until the shard is placed again.
            *holders = Holders::default();
            self.len -= 1;
        }
    }

    /// Stores the probed key in the first free slot from its home line on (the table has room:
    /// [`Self::hold`] grows it first); marks every full line passed.
    fn place(&mut self, probe: &Probe) -> (usize, usize) {
        let mask = self.lines.len() - 1;
        let mut at = self.home(probe.hash);
        loop {
            let line = &mut self.lines[at];
            if let Some(way) = line.slots.iter().position(|s| s.roles == 0) {
                line.slots[way] = probe.slot;
                return (at, way);
            }
            if line.overflowed == 0 {
                line.overflowed = 1;
                self.marked += 1;
            }
            at = (at + 1) & mask;
        }
    }

    /// `lines` lines (a power of two), every key placed again from its hash.
    fn rebuild(&mut self, lines: usize) {
        self.marked = 0;
        let old_lines = std::mem::replace(&mut self.lines, vec![Line::default(); lines].into());
        let old_holders = std::mem::replace(
            &mut self.holders,
            vec![[Holders::default(); WAYS]; lines].into(),
        );
        for (line, holders) in old_lines.iter().zip(old_holders.iter()) {
            for (slot, held) in line.slots.iter().zip(holders) {
                if slot.roles == 0 {
                    continue;
                }
                let probe = Probe {
                    hash: crate::hash::hash_one(&slot.key()),
                    slot: *slot,
                };
                let (at, way) = self.place(&probe);
                self.holders[at][way] = *held;
            }
        }
    }
}

impl Slot {
    fn key(&self) -> EndKey {
        let [a, b, c, d] = self.addr.map(u128::from);
        EndKey {
            addr: Addr::from_v6_bits(a << 96 | b << 64 | c << 32 | d),
            port: self.port,
            proto: self.proto,
        }
    }
}

fn roles_of(holders: &Holders) -> u8 {
    let frontend = if holders.frontend > 0 { FRONTEND } else { 0 };
    let backend = if holders.backend > 0 { BACKEND } else { 0 };
    frontend | backend
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn key(i: u16) -> EndKey {
        EndKey {
            addr: Addr::from_v4_bits(0x0a00_0000 | u32::from(i % 7)),
            port: 8000 + i / 7,
            proto: 6,
        }
    }

    #[test]
    fn a_line_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Line>(), 64);
        assert_eq!(std::mem::align_of::<Line>(), 64);
    }

    #[test]
    fn a_hundred_thousand_ends_are_all_found_and_gone_when_let_go() {
        let mut ends = ServiceEnds::default();
        let keys: Vec<EndKey> = (0..100_000u32)
            .map(|i| EndKey {
                addr: Addr::from_v4_bits(0x6440_0000 + i),
                port: 8080,
                proto: 6,
            })
            .collect();
        for k in &keys {
            ends.hold(k, Role::Backend);
        }
        assert!(keys.iter().all(|k| ends.is_backend(k)));
        assert!(keys.iter().all(|k| ends.is_end(&ServiceEnds::probe(k))));
        let other = EndKey {
            port: 8081,
            ..keys[0]
        };
        assert!(!ends.is_end(&ServiceEnds::probe(&other)));
        for k in &keys {
            ends.release(k, Role::Backend);
        }
        assert!(keys.iter().all(|k| !ends.is_backend(k)));
        assert!(ends.shards.iter().all(|s| s.len == 0));
    }

    #[test]
    fn churn_at_a_constant_size_keeps_lookups_short() {
        let probe = |i: u32| {
            ServiceEnds::probe(&EndKey {
                addr: Addr::from_v4_bits(i),
                port: 80,
                proto: 17,
            })
        };
        let mut shard = Shard::default();
        for i in 0..3000 {
            shard.hold(&probe(i), Role::Backend);
        }
        for i in 3000..23_000 {
            shard.release(&probe(i - 3000), Role::Backend);
            shard.hold(&probe(i), Role::Backend);
            assert!(
                shard.marked * 2 <= shard.lines.len() + 64,
                "{} of {} lines marked",
                shard.marked,
                shard.lines.len()
            );
        }
        assert_eq!(shard.len, 3000);
        assert!((20_000..23_000).all(|i| shard.find(&probe(i)).is_some()));
        assert!((0..20_000)
            .step_by(7)
            .all(|i| shard.find(&probe(i)).is_none()));
    }

    proptest! {
        /// Held and let go in any order, as frontend and as backend, it answers as a count of each.
        #[test]
        fn answers_as_counted_roles(
            ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0u16..60), 0..400)
        ) {
            let mut ends = ServiceEnds::default();
            let mut model: BTreeMap<EndKey, (u32, u32)> = BTreeMap::new();
            for (hold, frontend, i) in ops {
                let before = ends.clone();
                let (k, role) = (key(i), if frontend { Role::Frontend } else { Role::Backend });
                let counts = model.entry(k).or_default();
                let count = if frontend { &mut counts.0 } else { &mut counts.1 };
                if hold {
                    *count += 1;
                    ends.hold(&k, role);
                } else {
                    *count = count.saturating_sub(1);
                    ends.release(&k, role);
                }
                for j in 0..60 {
                    let (f, b) = model.get(&key(j)).copied().unwrap_or_default();
                    prop_assert_eq!(ends.is_backend(&key(j)), b > 0);
                    prop_assert_eq!(ends.is_end(&ServiceEnds::probe(&key(j))), f > 0 || b > 0);
                }
                // A change copies the one shard it touches; a clone keeps sharing the others.
                let copied = before.shards.iter().zip(&ends.shards).filter(|(a, b)| !Arc::ptr_eq(a, b));
                prop_assert!(copied.count() <= 1);
            }
        }
    }
}
