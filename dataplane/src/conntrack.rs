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
//! deletion (no tombstones), filled to at most 3/4. The home slot comes from ahash keyed at random per
//! process (no one can aim keys at a neighbourhood), and no flow sits more than `PROBE_LIMIT` slots past
//! its home, so every lookup is bounded and a burst's home slots can be prefetched before any is read. Under
//! pressure the new flow takes the place of the flow of its bucket that matters least — expired, never
//! answered, closing, datagram, in that order — and established TCP is never evicted. Each flow is
//! charged to a local endpoint, and an endpoint past its quota can only displace its own flows. Every
//! eviction and refusal is counted ([`CtStats`]). Expired flows are swept out at the clock's pace, the
//! whole table once every ten seconds whatever the load ([`sweep`]).
//!
//! Beside each slot lie the forwarding decisions of its flow's two directions, the pipeline's fast
//! path ([`FlowPaths`](crate::pipeline::fastpath::FlowPaths), a cache line each): found by the same
//! lookup (the entry says which are kept); an entry stored in a slot starts with none, and a flow's
//! move takes them along.
//!
//! Memory: 258 bytes a slot (128 the slot, 128 its paths, 2 its owner), two slots or more a flow of
//! capacity (the slot count is the power of two above 4/3 of it): the default 262,144 flows take
//! 524,288 slots, 129 MiB. It is allocated at start without being written ([`slots`]): resident
//! only where flows were stored, so a node pays for the flows it has had, up to that ceiling.

mod slots;
mod sweep;

use crate::flow::proto;
use crate::hash::Keyed;
use crate::pipeline::fastpath::Path;
use crate::{Addr, FlowKey};
use slots::Slots;
use sweep::SweepPace;

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
    /// Most flows the table holds.
    pub capacity: usize,
    pub timeouts: Timeouts,
    /// Most flows one local endpoint may hold (`None`: up to the capacity), so that one pod —
    /// or one remote peer flooding one pod — cannot take the whole node's table.
    pub endpoint_quota: Option<usize>,
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
    /// Which of the flow's directions have a path kept beside the entry ([`FlowPaths`]): read with
    /// the entry, so that only a path that is there is loaded.
    pub(crate) kept: Kept,
}

/// Which directions of a flow have a path kept; none for a new entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    original: bool,
    reply: bool,
}

impl Kept {
    pub(crate) fn has(self, reply: bool) -> bool {
        if reply {
            self.reply
        } else {
            self.original
        }
    }

    fn set(&mut self, reply: bool) {
        if reply {
            self.reply = true;
        } else {
            self.original = true;
        }
    }
}

impl CtEntry {
    /// The flow as its first packet came in, for this entry held under `key`: a translated flow's
    /// second entry (keyed by the flow as translated) turned back through its translation, any other
    /// entry's own key. Both entries of a translated flow give the same.
    pub fn first_packet(&self, key: &FlowKey) -> FlowKey {
        match self.nat {
            Some(CtNat {
                addr,
                port,
                kind: NatKind::Frontend,
            }) => FlowKey {
                dst: addr,
                dst_port: port,
                ..*key
            },
            Some(CtNat {
                addr,
                port,
                kind: NatKind::Unmasquerade,
            }) => FlowKey {
                src: addr,
                src_port: port,
                ..*key
            },
            _ => *key,
        }
    }

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
            kept: Kept::default(),
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
            // The pipeline starts a closing or opening tuple's SYN as a new flow; a SYN on an
            // established one leaves it established (the peer's answer settles which it is).
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

/// Why a new flow was not remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtFull {
    /// Its neighbourhood holds only live established flows: nothing may give way.
    #[error("conntrack full: {capacity} flows, none that may be evicted where this one belongs")]
    Table { capacity: usize },
    /// Its endpoint holds its quota of flows, none of which may give way.
    #[error("endpoint's conntrack quota of {quota} flows reached")]
    Quota { quota: usize },
}

/// No flow sits more than this many slots past its home slot: every lookup and insert is bounded,
/// whatever keys anyone chooses, and a full neighbourhood makes a flow give way rather than the probe
/// run on.
const PROBE_LIMIT: usize = 32;
/// Slots a full table sweeps for expired flows before a live one is given up for a new one.
const SWEEP_WHEN_FULL: usize = 256;

/// A key's home slot in one table, from [`Conntrack::home_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Home(usize);

/// Which local endpoint a flow is charged to (its port), for the per-endpoint quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Owner(pub u16);

/// What the table did under pressure, by kind: flows given up to make room, and refusals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Live flows never answered (a SYN flood, a scan) evicted for a new one.
    pub evicted_unreplied: u64,
    /// Live TCP flows closing evicted for a new one.
    pub evicted_closing: u64,
    /// Live UDP, ICMP or other flows evicted for a new one.
    pub evicted_datagram: u64,
    /// New flows refused: their neighbourhood held only live established TCP flows.
    pub refused_full: u64,
    /// New flows refused: their endpoint held its quota of flows that could not give way.
    pub refused_quota: u64,
}

/// One worker's connection tracking table: open addressing over a power-of-two slot array, the home
/// slot from a hash keyed at random per process ([`crate::hash`]).
#[derive(Debug)]
pub struct Conntrack {
    /// Each slot's flow and forwarding decisions (the paths apart: only the fast path reads them).
    slots: Slots,
    /// Each slot's owner's port, apart: lookups never read it, and a slot stays two cache lines.
    owners: Box<[u16]>,
    /// log2 of the slot count.
    bits: u32,
    len: usize,
    capacity: usize,
    quota: usize,
    /// Flows per owner.
    owned: Vec<u32>,
    gc_cursor: usize,
    pace: SweepPace,
    timeouts: Timeouts,
    hasher: Keyed,
    stats: CtStats,
}

/// Which flows give way first when a neighbourhood (or an endpoint's quota) is full: lower goes
/// first; established TCP never.
fn eviction_rank(entry: &CtEntry, now_ms: u64) -> Option<u8> {
    if entry.is_expired(now_ms) {
        return Some(0);
    }
    match entry.tcp {
        _ if !entry.seen_reply => Some(1),
        TcpState::Closing => Some(2),
        TcpState::NotTcp => Some(3),
        TcpState::Opening | TcpState::Established => None,
    }
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
        let capacity = config.capacity.min(slots / 4 * 3);
        Conntrack {
            slots: Slots::new(slots),
            // Zeroed, as the slots: resident only where written.
            owners: vec![0; slots].into_boxed_slice(),
            bits: slots.trailing_zeros(),
            len: 0,
            capacity,
            quota: config.endpoint_quota.unwrap_or(capacity).max(1),
            owned: Vec::new(),
            gc_cursor: 0,
            pace: SweepPace::default(),
            timeouts: config.timeouts,
            hasher: Keyed::default(),
            stats: CtStats::default(),
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

    /// Bytes allocated for the slots, their paths and owners: 258 per slot, 2 slots or more per
    /// flow of capacity. Allocated at start without being written, they become resident page by
    /// page as flows are stored: none for a table that never held a flow, all of them once flows
    /// are spread over every page (about one flow per 32 slots).
    pub fn allocated_bytes(&self) -> usize {
        self.slots.bytes() + std::mem::size_of_val(&*self.owners)
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn stats(&self) -> CtStats {
        self.stats
    }

    /// The flows charged to `owner`.
    pub fn owned_by(&self, owner: Owner) -> usize {
        self.owned
            .get(usize::from(owner.0))
            .map_or(0, |&n| n as usize)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: &FlowKey) -> usize {
        (self.hasher.hash(key) >> (64 - self.bits)) as usize
    }

    /// Where a key's probe starts, hashed once for its prefetch and its lookup.
    pub(crate) fn home_of(&self, key: &FlowKey) -> Home {
        Home(self.home(key))
    }

    /// The slots a key may be in: its home and the next `PROBE_LIMIT - 1`.
    fn window(&self, key: &FlowKey) -> impl Iterator<Item = usize> {
        self.window_from(self.home(key))
    }

    fn window_from(&self, home: usize) -> impl Iterator<Item = usize> {
        let mask = self.mask();
        (0..PROBE_LIMIT.min(self.slots.len())).map(move |d| (home + d) & mask)
    }

    /// The slot holding `key`, expired or not.
    fn find(&self, key: &FlowKey) -> Option<usize> {
        self.find_from(self.home(key), key)
    }

    fn find_from(&self, home: usize, key: &FlowKey) -> Option<usize> {
        for i in self.window_from(home) {
            match self.slots.holds(i, key) {
                None => return None,
                Some(true) => return Some(i),
                Some(false) => {}
            }
        }
        None
    }

    /// Starts loading the slot where a lookup of `key` begins; a batch prefetches all its keys before
    /// it looks any up.
    pub fn prefetch(&self, key: &FlowKey) {
        self.prefetch_home(self.home_of(key));
    }

    /// [`Conntrack::prefetch`] of a key hashed already.
    pub(crate) fn prefetch_home(&self, home: Home) {
        self.slots.prefetch(home.0);
    }

    /// Starts loading the path kept in `slot` for a direction, once a lookup found it there.
    pub(crate) fn prefetch_path(&self, slot: usize, reply: bool) {
        self.slots.prefetch_path(slot, reply);
    }

    /// Whether `key` has a live entry; expired ones are left for `gc`.
    pub fn is_live(&self, key: &FlowKey, now_ms: u64) -> bool {
        self.find(key)
            .and_then(|i| self.slots.entry(i))
            .is_some_and(|entry| !entry.is_expired(now_ms))
    }

    /// The live entry of `key`. An expired entry is removed and not returned.
    pub fn lookup(&mut self, key: &FlowKey, now_ms: u64) -> Option<&mut CtEntry> {
        let i = self.find_live(key, now_ms)?;
        self.slots.entry_mut(i)
    }

    /// The live entry of `key`, whose probe starts at `home` ([`Conntrack::home_of`]), with its
    /// slot.
    pub(crate) fn lookup_slot(
        &mut self,
        home: Home,
        key: &FlowKey,
        now_ms: u64,
    ) -> Option<(usize, &mut CtEntry)> {
        let i = self.find_live_from(home.0, key, now_ms)?;
        Some((i, self.slots.entry_mut(i)?))
    }

    /// The live entry of `key`, found at `slot` if it is still there, else looked up.
    pub(crate) fn entry_at(
        &mut self,
        slot: usize,
        key: &FlowKey,
        now_ms: u64,
    ) -> Option<&mut CtEntry> {
        let there = self.slots.holds(slot, key) == Some(true)
            && self
                .slots
                .entry(slot)
                .is_some_and(|entry| !entry.is_expired(now_ms));
        if there {
            return self.slots.entry_mut(slot);
        }
        self.lookup(key, now_ms)
    }

    /// The path kept for a direction of the flow of `key`, which a lookup found in `slot` (if the
    /// flow is still there).
    pub(crate) fn path(&self, slot: usize, key: &FlowKey, reply: bool) -> Option<Path> {
        let kept = self.slots.entry(slot)?.kept.has(reply);
        if self.slots.holds(slot, key) != Some(true) || !kept {
            return None;
        }
        self.slots.path(slot, reply)
    }

    /// The slot of `key`'s live entry; an expired one is removed.
    fn find_live(&mut self, key: &FlowKey, now_ms: u64) -> Option<usize> {
        self.find_live_from(self.home(key), key, now_ms)
    }

    fn find_live_from(&mut self, home: usize, key: &FlowKey, now_ms: u64) -> Option<usize> {
        let i = self.find_from(home, key)?;
        if self.slots.entry(i)?.is_expired(now_ms) {
            self.remove_at(i);
            return None;
        }
        Some(i)
    }

    /// Keeps a direction's path beside the entry of `key` that `lookup_with_path` found in `slot`,
    /// if that entry is still there with the translation `nat` the path was made with.
    pub(crate) fn keep_path(
        &mut self,
        slot: usize,
        key: &FlowKey,
        nat: Option<CtNat>,
        reply: bool,
        path: Path,
    ) {
        let same_nat = self.slots.entry(slot).is_some_and(|e| e.nat == nat);
        if self.slots.holds(slot, key) != Some(true) || !same_nat {
            return;
        }
        self.slots.set_path(slot, reply, path);
        if let Some(entry) = self.slots.entry_mut(slot) {
            entry.kept.set(reply);
        }
    }

    /// Adds a flow charged to no endpoint in particular (see [`Conntrack::insert_for`]).
    pub fn insert(
        &mut self,
        key: FlowKey,
        entry: CtEntry,
        now_ms: u64,
    ) -> Result<&mut CtEntry, CtFull> {
        self.insert_for(Owner::default(), key, entry, now_ms)
    }

    /// Adds a flow charged to `owner`, or replaces its entry. Room is made, if needed, by giving up
    /// the flow of the key's neighbourhood (past its quota, of `owner`'s flows there) that matters
    /// least: expired, then never answered, then closing, then datagram flows; established TCP never.
    pub fn insert_for(
        &mut self,
        owner: Owner,
        key: FlowKey,
        entry: CtEntry,
        now_ms: u64,
    ) -> Result<&mut CtEntry, CtFull> {
        let i = match self.find(&key) {
            Some(i) => {
                let previous = self.owners[i];
                self.uncharge(Owner(previous));
                i
            }
            None => {
                let i = self.make_room(owner, &key, now_ms)?;
                self.len += 1;
                i
            }
        };
        self.charge(owner);
        self.owners[i] = owner.0;
        let full = CtFull::Table {
            capacity: self.capacity,
        };
        // A stored entry has no paths yet, whatever the one it was copied from had.
        let entry = CtEntry {
            kept: Kept::default(),
            ..entry
        };
        self.slots.put(i, key, entry).ok_or(full)
    }

    /// A free slot in `key`'s neighbourhood, made by an eviction if need be.
    fn make_room(&mut self, owner: Owner, key: &FlowKey, now_ms: u64) -> Result<usize, CtFull> {
        let over_quota = |ct: &Self| ct.quota < ct.capacity && ct.owned_by(owner) >= ct.quota;
        if self.len >= self.capacity || over_quota(self) {
            // Expired flows anywhere make room before a live one here is given up.
            self.gc(now_ms, SWEEP_WHEN_FULL);
        }
        let over_quota = over_quota(self);
        if !over_quota && self.len < self.capacity {
            if let Some(free) = self.free_slot(key) {
                return Ok(free);
            }
        }
        // Past its quota an endpoint gives up one of its own flows; otherwise anyone's may go.
        let victim = self
            .window(key)
            .filter_map(|i| {
                let entry = self.slots.entry(i)?;
                let mine = self.owners[i] == owner.0;
                let rank = eviction_rank(entry, now_ms)?;
                (!over_quota || mine).then_some((rank, entry.expires_ms, i))
            })
            .min();
        let Some((rank, _, i)) = victim else {
            return Err(self.refuse(over_quota));
        };
        match rank {
            0 => {}
            1 => self.stats.evicted_unreplied += 1,
            2 => self.stats.evicted_closing += 1,
            _ => self.stats.evicted_datagram += 1,
        }
        self.remove_at(i);
        // The hole may have moved down the run, out of reach: then nothing fits after all.
        self.free_slot(key).ok_or_else(|| self.refuse(false))
    }

    fn refuse(&mut self, over_quota: bool) -> CtFull {
        if over_quota {
            self.stats.refused_quota += 1;
            CtFull::Quota { quota: self.quota }
        } else {
            self.stats.refused_full += 1;
            CtFull::Table {
                capacity: self.capacity,
            }
        }
    }

    fn charge(&mut self, owner: Owner) {
        let i = usize::from(owner.0);
        if self.owned.len() <= i {
            self.owned.resize(i + 1, 0);
        }
        self.owned[i] += 1;
    }

    fn uncharge(&mut self, owner: Owner) {
        if let Some(n) = self.owned.get_mut(usize::from(owner.0)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Removes a flow; returns its entry, expired or not.
    pub fn remove(&mut self, key: &FlowKey) -> Option<CtEntry> {
        let i = self.find(key)?;
        self.remove_at(i)
    }

    /// Sweeps the share of the table the clock has made due since the last call ([`sweep`]),
    /// removing expired flows. Returns how many it removed.
    pub fn sweep(&mut self, now_ms: u64) -> usize {
        let budget = self.pace.due(now_ms, self.slots.len());
        self.gc(now_ms, budget)
    }

    /// Sweeps up to `budget` slots from where the last sweep stopped, removing expired flows.
    /// Returns how many it removed.
    pub fn gc(&mut self, now_ms: u64, budget: usize) -> usize {
        let mask = self.mask();
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            let i = self.gc_cursor;
            // A removal shifts a later flow into this slot: look at it again before moving on.
            while self.slots.entry(i).is_some_and(|e| e.is_expired(now_ms)) {
                self.remove_at(i);
                removed += 1;
            }
            self.gc_cursor = (i + 1) & mask;
        }
        removed
    }

    /// Every flow, live or expired, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (FlowKey, &CtEntry)> {
        self.slots.iter()
    }

    fn free_slot(&self, key: &FlowKey) -> Option<usize> {
        self.window(key).find(|&i| self.slots.is_free(i))
    }

    /// Empties slot `hole` and shifts back the flows after it that probed past it.
    fn remove_at(&mut self, mut hole: usize) -> Option<CtEntry> {
        let mask = self.mask();
        let removed = self.slots.take(hole)?;
        self.len -= 1;
        self.uncharge(Owner(self.owners[hole]));
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(key) = self.slots.key(j) else {
                break;
            };
            let home = self.home(&key);
            // The flow at j may fill the hole only if the hole lies on its probe path home..=j.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                // The flow's paths move with it.
                self.slots.shift(j, hole);
                self.owners[hole] = self.owners[j];
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
            endpoint_quota: None,
        }
    }

    /// A UDP flow that was answered, living until `expires_ms`.
    fn entry(expires_ms: u64) -> CtEntry {
        CtEntry {
            expires_ms,
            seen_reply: true,
            ..CtEntry::new(proto::UDP, 0, &Timeouts::default())
        }
    }

    fn established(expires_ms: u64) -> CtEntry {
        CtEntry {
            expires_ms,
            tcp: TcpState::Established,
            seen_reply: true,
            ..CtEntry::new(proto::TCP, 0, &Timeouts::default())
        }
    }

    /// Keys with the same home slot in `ct`, found by trying: the hash is keyed, so no fixed list is.
    fn same_home(ct: &Conntrack, n: usize) -> Vec<FlowKey> {
        let target = ct.home(&key(0));
        (0..)
            .map(key)
            .filter(|k| ct.home(k) == target)
            .take(n)
            .collect()
    }

    #[test]
    fn a_full_neighbourhood_gives_way_expired_then_unreplied_then_closing_then_datagrams_never_established(
    ) {
        // Keys that all have one home, in a table far from full: their neighbourhood fills.
        let mut ct = Conntrack::new(config(1024));
        let keys = same_home(&ct, PROBE_LIMIT + 5);
        let t = Timeouts::default();
        let kinds = [
            established(10_000),
            CtEntry {
                tcp: TcpState::Closing,
                seen_reply: true,
                ..established(10_000)
            },
            entry(10_000),
            CtEntry {
                seen_reply: false,
                ..CtEntry::new(proto::TCP, 0, &t)
            },
            established(5),
        ];
        for (i, k) in keys.iter().take(PROBE_LIMIT).enumerate() {
            let e = if i < kinds.len() {
                kinds[i]
            } else {
                established(10_000)
            };
            ct.insert(*k, e, 0).unwrap();
        }
        let newcomer = |i: usize| keys[PROBE_LIMIT + i];
        ct.insert(newcomer(0), established(10_000), 10).unwrap();
        assert!(ct.find(&keys[4]).is_none(), "the expired one went first");
        ct.insert(newcomer(1), established(10_000), 10).unwrap();
        assert!(ct.find(&keys[3]).is_none(), "then the unanswered one");
        ct.insert(newcomer(2), established(10_000), 10).unwrap();
        assert!(ct.find(&keys[1]).is_none(), "then the closing one");
        ct.insert(newcomer(3), established(10_000), 10).unwrap();
        assert!(ct.find(&keys[2]).is_none(), "then the datagram flow");
        assert_eq!(
            ct.insert(newcomer(4), established(10_000), 10),
            Err(CtFull::Table { capacity: 1024 }),
            "established connections are never given up"
        );
        let stats = ct.stats();
        assert_eq!(
            (
                stats.evicted_unreplied,
                stats.evicted_closing,
                stats.evicted_datagram,
                stats.refused_full
            ),
            (1, 1, 1, 1)
        );
        assert!(ct.find(&keys[0]).is_some());
    }

    #[test]
    fn an_endpoint_past_its_quota_displaces_only_its_own_flows() {
        let mut ct = Conntrack::new(ConntrackConfig {
            endpoint_quota: Some(4),
            ..config(1024)
        });
        let (greedy, other) = (Owner(7), Owner(8));
        let unanswered = CtEntry::new(proto::TCP, 0, &Timeouts::default());
        for i in 0..4 {
            ct.insert_for(greedy, key(i), unanswered, 0).unwrap();
        }
        ct.insert_for(other, key(100), established(10_000), 0)
            .unwrap();
        assert_eq!(ct.owned_by(greedy), 4);
        // A fifth flow of the greedy pod takes the place of one of its own unanswered ones — only if
        // one shares its bucket; otherwise it is refused, never taking another pod's room.
        for i in 10..40 {
            match ct.insert_for(greedy, key(i), established(10_000), 0) {
                Ok(_) => assert_eq!(ct.owned_by(greedy), 4),
                Err(e) => assert_eq!(e, CtFull::Quota { quota: 4 }),
            }
        }
        assert_eq!(ct.owned_by(greedy), 4);
        assert!(ct.find(&key(100)).is_some(), "the other pod's flow stays");
        assert!(ct.stats().refused_quota > 0);
        assert_eq!(ct.owned_by(other), 1);
        ct.remove(&key(100));
        assert_eq!(ct.owned_by(other), 0);
    }

    #[test]
    fn a_table_of_expired_flows_takes_new_ones_without_gc() {
        let mut ct = Conntrack::new(config(100));
        for i in 0..100 {
            let _ = ct.insert(key(i), entry(1_000), 0);
        }
        for i in 500..600 {
            ct.insert(key(i), entry(9_000), 2_000).unwrap();
        }
        assert!(ct.len() <= 100);
        assert!(ct.iter().filter(|(_, e)| e.expires_ms == 9_000).count() == 100);
    }

    #[test]
    fn the_default_table_allocates_258_bytes_a_slot_two_slots_a_flow() {
        let ct = Conntrack::new(config(262_144));
        assert_eq!(ct.capacity(), 262_144);
        assert_eq!(ct.allocated_bytes(), 524_288 * 258);
        // Just past 3/4 of a power of two, the slots double.
        assert_eq!(
            Conntrack::new(config(3 << 16)).allocated_bytes(),
            (1 << 18) * 258
        );
        assert_eq!(
            Conntrack::new(config((3 << 16) + 1)).allocated_bytes(),
            (1 << 19) * 258
        );
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
        /// Key, time to live, whether it is an established TCP flow, owner.
        Insert(u32, u64, bool, u16),
        Lookup(u32),
        Remove(u32),
        Gc(usize),
        Tick(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..64, 1u64..50, any::<bool>(), 0u16..3)
                .prop_map(|(k, ttl, est, owner)| Op::Insert(k, ttl, est, owner)),
            3 => (0u32..64).prop_map(Op::Lookup),
            1 => (0u32..64).prop_map(Op::Remove),
            1 => (0usize..40).prop_map(Op::Gc),
            2 => (0u64..20).prop_map(Op::Tick),
        ]
    }

    /// Drops from the model the flows the table let go (evicted or swept): each must have expired by
    /// `now`, or been evictable and counted as evicted — a live established flow never vanishes.
    fn reconcile(
        ct: &Conntrack,
        model: &mut HashMap<FlowKey, CtEntry>,
        now: u64,
        evictions: &mut u64,
    ) -> Result<(), TestCaseError> {
        let gone: Vec<FlowKey> = model
            .keys()
            .filter(|k| ct.find(k).is_none())
            .copied()
            .collect();
        for k in gone {
            let e = model.remove(&k).expect("listed from the model");
            match eviction_rank(&e, now) {
                Some(0) => {}
                Some(_) => *evictions += 1,
                None => prop_assert!(false, "live flow {:?} {:?} vanished at {}", k, e, now),
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_map_model(
            capacity in 1usize..40,
            quota in proptest::option::of(1usize..20),
            ops in prop::collection::vec(arb_op(), 1..200),
        ) {
            let mut ct = Conntrack::new(ConntrackConfig { endpoint_quota: quota, ..config(capacity) });
            let mut model: HashMap<FlowKey, CtEntry> = HashMap::new();
            let mut evictions = 0u64;
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(k, ttl, est, owner) => {
                        let e = if est { established(now + ttl) } else { entry(now + ttl) };
                        match ct.insert_for(Owner(owner), key(k), e, now) {
                            Ok(stored) => {
                                prop_assert_eq!(*stored, e);
                                model.insert(key(k), e);
                            }
                            Err(_) => prop_assert!(ct.find(&key(k)).is_none()),
                        }
                        reconcile(&ct, &mut model, now, &mut evictions)?;
                    }
                    Op::Lookup(k) => {
                        let want = model.get(&key(k)).filter(|e| !e.is_expired(now)).copied();
                        prop_assert_eq!(ct.lookup(&key(k), now).map(|e| *e), want);
                        if want.is_none() { model.remove(&key(k)); }
                    }
                    Op::Remove(k) => prop_assert_eq!(ct.remove(&key(k)), model.remove(&key(k))),
                    Op::Gc(budget) => {
                        let before = model.len();
                        let removed = ct.gc(now, budget);
                        reconcile(&ct, &mut model, now, &mut evictions)?;
                        prop_assert_eq!(before - model.len(), removed);
                    }
                    Op::Tick(dt) => now += dt,
                }
                let stats = ct.stats();
                prop_assert_eq!(evictions, stats.evicted_unreplied + stats.evicted_closing + stats.evicted_datagram);
                prop_assert!(ct.len() <= ct.capacity());
                prop_assert_eq!(ct.len(), model.len());
                prop_assert_eq!(ct.iter().count(), model.len());
                let owned: usize = (0..3).map(|o| ct.owned_by(Owner(o))).sum();
                prop_assert_eq!(owned, ct.len());
                for (k, e) in &model {
                    prop_assert_eq!(ct.find(k).and_then(|i| ct.slots.entry(i).copied()), Some(*e));
                }
            }
            ct.gc(now, usize::MAX);
            prop_assert!(ct.iter().all(|(_, e)| !e.is_expired(now)));
        }
    }
}
