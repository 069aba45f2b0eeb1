//! Per-worker connection tracking: the state of every flow this worker has seen.
//!
//! Sits beside service load balancing and NAT in the packet path: a frame's 5-tuple is looked up here
//! before policy (an established flow skips policy and keeps its service backend), and a new flow that
//! policy allows is inserted here. Each worker owns its table mutably; nothing is shared or locked.
//!
//! Service flows use two entries, as Cilium does: the forward entry keyed by the original tuple
//! (client→VIP) carries [`NatKind::Backend`], the chosen backend; the entry keyed by the translated tuple
//! (client→backend) carries [`NatKind::Frontend`], the VIP that replies (backend→client, looked up by
//! their reverse) get as their source again. Masqueraded flows likewise: [`NatKind::Masquerade`] on
//! the original tuple (pod→outside), [`NatKind::Unmasquerade`] on the translated one (node:port→outside).
//!
//! The table is open addressing over a power-of-two slot array with linear probing and backward-shift
//! deletion (no tombstones), filled to at most 3/4 so that every probe meets an empty slot.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

use crate::flow::proto;
use crate::{Addr, FlowKey};

/// TCP header flag bits, as in the 13th byte of the header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// How long an idle flow lives, by state. Defaults are Cilium's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_ms: u64,
    pub tcp_established_ms: u64,
    pub tcp_closing_ms: u64,
    pub udp_ms: u64,
    pub icmp_ms: u64,
    pub other_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_ms: 60_000,
            tcp_established_ms: 21_600_000,
            tcp_closing_ms: 10_000,
            udp_ms: 60_000,
            icmp_ms: 60_000,
            other_ms: 60_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most flows the table holds; inserts beyond it fail with [`CtFull`].
    pub capacity: usize,
    pub timeouts: Timeouts,
}

/// Where a TCP flow is in its life; `NotTcp` for every other protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    NotTcp,
    /// SYN seen, handshake not finished.
    Opening,
    Established,
    /// FIN or RST seen.
    Closing,
}

/// Which way a flow's translation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Forward entry, keyed client→VIP: rewrite the destination to the backend `addr:port`.
    Backend,
    /// Entry keyed client→backend: on replies, restore the VIP `addr:port` as the source.
    Frontend,
    /// Forward entry of a masqueraded flow, keyed pod→outside: rewrite the source to the node's
    /// `addr:port`.
    Masquerade,
    /// Entry keyed node:port→outside: on replies, restore the pod's `addr:port` as the destination.
    Unmasquerade,
}

/// The address translation a flow's entry stands for. Flat rather than an enum of targets so that it
/// fits 32 bytes and a table slot two cache lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtNat {
    pub addr: Addr,
    pub port: u16,
    pub kind: NatKind,
}

impl CtNat {
    /// The forward entry's backend.
    pub const fn backend(addr: Addr, port: u16) -> Self {
        CtNat {
            addr,
            port,
            kind: NatKind::Backend,
        }
    }

    /// The service frontend replies are translated back to.
    pub const fn frontend(addr: Addr, port: u16) -> Self {
        CtNat {
            addr,
            port,
            kind: NatKind::Frontend,
        }
    }

    /// The node's `addr:port` a masqueraded flow leaves from.
    pub const fn masquerade(addr: Addr, port: u16) -> Self {
        CtNat {
            addr,
            port,
            kind: NatKind::Masquerade,
        }
    }

    /// The pod's `addr:port` replies to a masqueraded flow are translated back to.
    pub const fn unmasquerade(addr: Addr, port: u16) -> Self {
        CtNat {
            addr,
            port,
            kind: NatKind::Unmasquerade,
        }
    }
}

/// One tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// The flow is dead at or after this time.
    pub expires_ms: u64,
    pub tcp: TcpState,
    /// A packet of the reverse direction has been seen.
    pub seen_reply: bool,
    pub nat: Option<CtNat>,
    /// The service (`ServiceId`'s value) the flow was balanced by.
    pub service: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
}

impl CtEntry {
    /// A fresh entry for a flow of protocol `proto` first seen at `now_ms`.
    pub fn new(proto: u8, now_ms: u64, timeouts: &Timeouts) -> Self {
        let (tcp, ttl) = match proto {
            proto::TCP => (TcpState::Opening, timeouts.tcp_syn_ms),
            proto::UDP => (TcpState::NotTcp, timeouts.udp_ms),
            proto::ICMP | proto::ICMPV6 => (TcpState::NotTcp, timeouts.icmp_ms),
            _ => (TcpState::NotTcp, timeouts.other_ms),
        };
        CtEntry {
            expires_ms: now_ms.saturating_add(ttl),
            tcp,
            seen_reply: false,
            nat: None,
            service: None,
            packets: 0,
            bytes: 0,
        }
    }

    pub const fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms <= now_ms
    }

    /// Counts a packet of `len` bytes.
    pub fn count(&mut self, len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len as u64);
    }

    /// Advances a TCP flow's state by a segment's flags and renews its expiry.
    pub fn observe_tcp(&mut self, flags: u8, is_reply: bool, now_ms: u64, timeouts: &Timeouts) {
        use tcp_flags::{ACK, FIN, RST, SYN};
        self.seen_reply |= is_reply;
        self.tcp = if flags & (FIN | RST) != 0 {
            TcpState::Closing
        } else if flags & SYN != 0 && flags & ACK == 0 && !is_reply {
            // A new SYN on a closing or stale tuple is the port being reused.
            match self.tcp {
                TcpState::Established => TcpState::Established,
                _ => TcpState::Opening,
            }
        } else if self.tcp == TcpState::Opening
            && self.seen_reply
            && flags & ACK != 0
            && flags & SYN == 0
        {
            TcpState::Established
        } else {
            self.tcp
        };
        let ttl = match self.tcp {
            TcpState::Established => timeouts.tcp_established_ms,
            TcpState::Closing => timeouts.tcp_closing_ms,
            TcpState::Opening | TcpState::NotTcp => timeouts.tcp_syn_ms,
        };
        self.expires_ms = now_ms.saturating_add(ttl);
    }

    /// Renews a UDP, ICMP or other flow's expiry.
    pub fn observe_other(&mut self, proto: u8, is_reply: bool, now_ms: u64, timeouts: &Timeouts) {
        self.seen_reply |= is_reply;
        let ttl = match proto {
            proto::UDP => timeouts.udp_ms,
            proto::ICMP | proto::ICMPV6 => timeouts.icmp_ms,
            _ => timeouts.other_ms,
        };
        self.expires_ms = now_ms.saturating_add(ttl);
    }
}

/// The table is full of live flows: the caller drops the frame with `DropReason::CtTableFull`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("conntrack full: {capacity} live flows")]
pub struct CtFull {
    pub capacity: usize,
}

/// How many occupied slots past its home an insert into a full table looks at for an expired flow.
const EVICT_WINDOW: usize = 32;
/// Slots a full table's insert sweeps (as `gc` does) when the probe window held no expired flow:
/// bounds the cost of a refused insert while letting a table of expired flows recover without `gc`.
const SWEEP_WHEN_FULL: usize = 256;

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: FlowKey,
    entry: CtEntry,
}

/// One worker's connection tracking table.
#[derive(Debug)]
pub struct Conntrack {
    slots: Box<[Option<Slot>]>,
    /// log2 of the slot count.
    bits: u32,
    len: usize,
    capacity: usize,
    gc_cursor: usize,
    timeouts: Timeouts,
}

impl Conntrack {
    pub fn new(config: ConntrackConfig) -> Self {
        let wanted = config
            .capacity
            .saturating_add(config.capacity.div_ceil(3))
            .max(8);
        let slots = wanted
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        Conntrack {
            slots: vec![None; slots].into_boxed_slice(),
            bits: slots.trailing_zeros(),
            len: 0,
            capacity: config.capacity.min(slots / 4 * 3),
            gc_cursor: 0,
            timeouts: config.timeouts,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: &FlowKey) -> usize {
        (FxBuildHasher.hash_one(key) >> (64 - self.bits)) as usize
    }

    /// The slot holding `key`, expired or not.
    fn find(&self, key: &FlowKey) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some(slot) if slot.key == *key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Starts loading the slot where a lookup of `key` begins; a batch prefetches all its keys before
    /// it looks any up.
    pub fn prefetch(&self, key: &FlowKey) {
        if let Some(slot) = self.slots.get(self.home(key)) {
            let start: *const u8 = (slot as *const Option<Slot>).cast();
            crate::prefetch::prefetch(start);
            crate::prefetch::prefetch(start.wrapping_add(64));
        }
    }

    /// Whether `key` has a live entry; expired ones are left for `gc`.
    pub fn is_live(&self, key: &FlowKey, now_ms: u64) -> bool {
        self.find(key)
            .and_then(|i| self.slots.get(i)?.as_ref())
            .is_some_and(|slot| !slot.entry.is_expired(now_ms))
    }

    /// The live entry of `key`. An expired entry is removed and not returned.
    pub fn lookup(&mut self, key: &FlowKey, now_ms: u64) -> Option<&mut CtEntry> {
        let i = self.find(key)?;
        if self.slots.get(i)?.as_ref()?.entry.is_expired(now_ms) {
            self.remove_at(i);
            return None;
        }
        self.slots.get_mut(i)?.as_mut().map(|slot| &mut slot.entry)
    }

    /// Adds a flow or replaces its entry. A full table first evicts an expired flow near the key's
    /// home slot, else sweeps the next `SWEEP_WHEN_FULL` slots from the gc cursor; if neither frees a
    /// slot the insert fails.
    pub fn insert(
        &mut self,
        key: FlowKey,
        entry: CtEntry,
        now_ms: u64,
    ) -> Result<&mut CtEntry, CtFull> {
        let full = CtFull {
            capacity: self.capacity,
        };
        let i = match self.find(&key) {
            Some(i) => i,
            None => {
                if self.len >= self.capacity
                    && !self.evict_near(&key, now_ms)
                    && self.gc(now_ms, SWEEP_WHEN_FULL) == 0
                {
                    return Err(full);
                }
                let i = self.free_slot(&key).ok_or(full)?;
                self.len += 1;
                i
            }
        };
        let slot = self.slots.get_mut(i).ok_or(full)?;
        Ok(&mut slot.insert(Slot { key, entry }).entry)
    }

    /// Removes a flow; returns its entry, expired or not.
    pub fn remove(&mut self, key: &FlowKey) -> Option<CtEntry> {
        let i = self.find(key)?;
        self.remove_at(i)
    }

    /// Sweeps up to `budget` slots from where the last sweep stopped, removing expired flows.
    /// Returns how many it removed.
    pub fn gc(&mut self, now_ms: u64, budget: usize) -> usize {
        let mask = self.mask();
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            let i = self.gc_cursor;
            // A removal shifts a later flow into this slot: look at it again before moving on.
            while self
                .slots
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.entry.is_expired(now_ms))
            {
                self.remove_at(i);
                removed += 1;
            }
            self.gc_cursor = (i + 1) & mask;
        }
        removed
    }

    /// Every flow, live or expired, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &CtEntry)> {
        self.slots
            .iter()
            .flatten()
            .map(|slot| (&slot.key, &slot.entry))
    }

    fn free_slot(&self, key: &FlowKey) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        for _ in 0..self.slots.len() {
            if self.slots.get(i)?.is_none() {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Removes the first expired flow among the `EVICT_WINDOW` slots from `key`'s home.
    fn evict_near(&mut self, key: &FlowKey, now_ms: u64) -> bool {
        let mask = self.mask();
        let mut i = self.home(key);
        for _ in 0..EVICT_WINDOW {
            match self.slots.get(i).and_then(Option::as_ref) {
                None => return false,
                Some(slot) if slot.entry.is_expired(now_ms) => return self.remove_at(i).is_some(),
                Some(_) => i = (i + 1) & mask,
            }
        }
        false
    }

    /// Empties slot `hole` and shifts back the flows after it that probed past it.
    fn remove_at(&mut self, mut hole: usize) -> Option<CtEntry> {
        let mask = self.mask();
        let removed = self.slots.get_mut(hole)?.take()?.entry;
        self.len -= 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(slot) = self.slots.get(j).and_then(Option::as_ref) else {
                break;
            };
            let home = self.home(&slot.key);
            // The flow at j may fill the hole only if the hole lies on its probe path home..=j.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                let moved = self.slots.get_mut(j).and_then(Option::take);
                if let Some(dst) = self.slots.get_mut(hole) {
                    *dst = moved;
                }
                hole = j;
            }
        }
        Some(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::time::Instant;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: Addr::from_v4_bits(0x6440_0000 | (i >> 8)),
            dst: Addr::from_v4_bits(0x6441_0001),
            src_port: 10_000 + (i & 0xff) as u16,
            dst_port: 80,
            proto: proto::TCP,
        }
    }

    fn config(capacity: usize) -> ConntrackConfig {
        ConntrackConfig {
            capacity,
            timeouts: Timeouts::default(),
        }
    }

    fn entry(expires_ms: u64) -> CtEntry {
        CtEntry {
            expires_ms,
            ..CtEntry::new(proto::UDP, 0, &Timeouts::default())
        }
    }

    #[test]
    fn full_of_live_flows_refuses_then_recovers_after_expiry() {
        let mut ct = Conntrack::new(config(100));
        for i in 0..100 {
            ct.insert(key(i), entry(1_000), 0).unwrap();
        }
        assert_eq!(ct.len(), 100);
        assert_eq!(
            ct.insert(key(500), entry(1_000), 10),
            Err(CtFull { capacity: 100 })
        );
        // Replacing an existing flow is not an insert.
        assert!(ct.insert(key(5), entry(2_000), 10).is_ok());
        assert_eq!(ct.gc(999, usize::MAX), 0);
        assert_eq!(ct.gc(1_000, usize::MAX), 99);
        for i in 500..599 {
            ct.insert(key(i), entry(5_000), 1_000).unwrap();
        }
        assert_eq!(ct.len(), 100);
    }

    #[test]
    fn full_table_evicts_an_expired_flow_near_home() {
        let mut ct = Conntrack::new(config(100));
        for i in 0..100 {
            ct.insert(key(i), entry(1_000), 0).unwrap();
        }
        // Without gc: each insert evicts an expired flow from its probe window or sweeps some.
        for i in 500..600 {
            ct.insert(key(i), entry(9_000), 2_000).unwrap();
        }
        assert_eq!(ct.len(), 100);
        assert!(ct.iter().all(|(_, e)| e.expires_ms == 9_000));
        assert_eq!(
            ct.insert(key(700), entry(9_000), 2_000),
            Err(CtFull { capacity: 100 })
        );
    }

    #[test]
    fn a_slot_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 128);
    }

    #[test]
    fn service_flow_entries_round_trip() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(config(10));
        let (vip, backend) = (
            Addr::from_v4_bits(0x6440_ff01),
            Addr::from_v4_bits(0x6441_0105),
        );
        let forward = key(1);
        let translated = FlowKey {
            dst: backend,
            dst_port: 8080,
            ..forward
        };
        let svc = |nat| CtEntry {
            nat: Some(nat),
            service: Some(7),
            ..CtEntry::new(proto::TCP, 0, &t)
        };
        ct.insert(forward, svc(CtNat::backend(backend, 8080)), 0)
            .unwrap();
        ct.insert(translated, svc(CtNat::frontend(vip, 80)), 0)
            .unwrap();
        let reply = translated.reversed();
        let restore = ct.lookup(&reply.reversed(), 1).and_then(|e| e.nat);
        assert_eq!(
            restore,
            Some(CtNat {
                addr: vip,
                port: 80,
                kind: NatKind::Frontend
            })
        );
        let chosen = ct.lookup(&forward, 1).and_then(|e| e.nat);
        assert_eq!(
            chosen.map(|n| (n.addr, n.port, n.kind)),
            Some((backend, 8080, NatKind::Backend))
        );
    }

    #[test]
    fn expired_entry_is_removed_on_lookup() {
        let mut ct = Conntrack::new(config(10));
        ct.insert(key(1), entry(100), 0).unwrap();
        assert!(ct.lookup(&key(1), 99).is_some());
        assert!(ct.lookup(&key(1), 100).is_none());
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn tcp_state_follows_the_handshake_and_close() {
        use tcp_flags::*;
        let t = Timeouts::default();
        let mut e = CtEntry::new(proto::TCP, 0, &t);
        e.observe_tcp(SYN, false, 0, &t);
        assert_eq!((e.tcp, e.expires_ms), (TcpState::Opening, t.tcp_syn_ms));
        e.observe_tcp(SYN | ACK, true, 1, &t);
        assert_eq!(e.tcp, TcpState::Opening);
        assert!(e.seen_reply);
        e.observe_tcp(ACK, false, 2, &t);
        assert_eq!(
            (e.tcp, e.expires_ms),
            (TcpState::Established, 2 + t.tcp_established_ms)
        );
        e.observe_tcp(FIN | ACK, true, 3, &t);
        assert_eq!(
            (e.tcp, e.expires_ms),
            (TcpState::Closing, 3 + t.tcp_closing_ms)
        );
        e.observe_tcp(SYN, false, 4, &t);
        assert_eq!(e.tcp, TcpState::Opening, "a reused port starts over");
        let mut rst = CtEntry::new(proto::TCP, 0, &t);
        rst.observe_tcp(RST, true, 5, &t);
        assert_eq!(rst.tcp, TcpState::Closing);
        let mut udp = CtEntry::new(proto::UDP, 0, &t);
        udp.observe_other(proto::UDP, true, 7, &t);
        assert_eq!(
            (udp.tcp, udp.seen_reply, udp.expires_ms),
            (TcpState::NotTcp, true, 7 + t.udp_ms)
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u64),
        Lookup(u32),
        Remove(u32),
        Gc(usize),
        Tick(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..48, 1u64..50).prop_map(|(k, ttl)| Op::Insert(k, ttl)),
            3 => (0u32..48).prop_map(Op::Lookup),
            1 => (0u32..48).prop_map(Op::Remove),
            1 => (0usize..20).prop_map(Op::Gc),
            2 => (0u64..20).prop_map(Op::Tick),
        ]
    }

    /// Drops from the model the expired flows the table no longer holds (evicted or swept).
    fn reconcile(ct: &Conntrack, model: &mut HashMap<FlowKey, CtEntry>) {
        model.retain(|k, _| ct.find(k).is_some());
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_map_model(capacity in 1usize..24, ops in prop::collection::vec(arb_op(), 1..200)) {
            let mut ct = Conntrack::new(config(capacity));
            let mut model: HashMap<FlowKey, CtEntry> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                let before = model.len();
                match op {
                    Op::Insert(k, ttl) => {
                        let e = entry(now + ttl);
                        match ct.insert(key(k), e, now) {
                            Ok(stored) => {
                                prop_assert_eq!(*stored, e);
                                let replaced = model.insert(key(k), e).is_some();
                                reconcile(&ct, &mut model);
                                if !replaced && before >= capacity {
                                    prop_assert!(model.len() <= before, "evicted at least one");
                                }
                            }
                            Err(_) => {
                                prop_assert!(!model.contains_key(&key(k)));
                                prop_assert_eq!(ct.len(), capacity);
                            }
                        }
                    }
                    Op::Lookup(k) => {
                        let want = model.get(&key(k)).filter(|e| !e.is_expired(now)).copied();
                        prop_assert_eq!(ct.lookup(&key(k), now).map(|e| *e), want);
                        if want.is_none() { model.remove(&key(k)); }
                    }
                    Op::Remove(k) => prop_assert_eq!(ct.remove(&key(k)), model.remove(&key(k))),
                    Op::Gc(budget) => {
                        let removed = ct.gc(now, budget);
                        reconcile(&ct, &mut model);
                        prop_assert_eq!(before - model.len(), removed);
                        prop_assert!(model.values().all(|e| !e.is_expired(now) || budget < ct.slots.len()));
                    }
                    Op::Tick(dt) => now += dt,
                }
                prop_assert!(ct.len() <= capacity);
                prop_assert_eq!(ct.len(), model.len());
                prop_assert_eq!(ct.iter().count(), model.len());
                for (k, e) in &model {
                    prop_assert_eq!(ct.find(k).and_then(|i| ct.slots[i].map(|s| s.entry)), Some(*e));
                }
            }
            ct.gc(now, usize::MAX);
            prop_assert!(ct.iter().all(|(_, e)| !e.is_expired(now)));
        }
    }

    /// Figures for the report: `cargo test -p meshpath-dataplane --release -- --ignored --nocapture conntrack`.
    #[test]
    #[ignore]
    fn measure_100k_live_flows() {
        let n = 100_000u32;
        let mut ct = Conntrack::new(config(131_072));
        for i in 0..n {
            ct.insert(key(i), entry(u64::MAX), 0).unwrap();
        }
        let rounds = 10_000_000u32;
        let start = Instant::now();
        let mut hits = 0u32;
        for i in 0..rounds {
            let k = key(i.wrapping_mul(2_654_435_761) % n);
            hits += std::hint::black_box(ct.lookup(std::hint::black_box(&k), 1)).is_some() as u32;
        }
        let per = start.elapsed().as_nanos() as f64 / rounds as f64;
        assert_eq!(hits, rounds);
        let slot = std::mem::size_of::<Option<Slot>>();
        println!(
            "conntrack: hit among {n} live flows: {per:.1} ns; {} slots x {slot} B = {:.1} B per flow at capacity",
            ct.slots.len(),
            (ct.slots.len() * slot) as f64 / ct.capacity() as f64
        );
    }
}
