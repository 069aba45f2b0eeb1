//! Stage 3, the ipcache: which identity owns an address, and which node to tunnel to for it.
//!
//! Runs after decap and anti-spoofing, before service load balancing and policy: the pipeline looks up
//! the peer's address here to learn its security identity and, for egress, the node that owns it.
//!
//! Longest-prefix match over both families in the mapped form of [`Addr`] (an IPv4 /n is a /(96+n)).
//! One hash map per prefix length present, probed longest first. Each length's map is split into
//! [`SHARDS`] `Arc`ed shards, so that the control plane's copy-on-write snapshot (`clone` + one change)
//! copies 64 pointers per length and one shard, not the whole table.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::hash::KeyedMap;

use crate::{Addr, ClusterId, Identity};

/// Shards per prefix length: the unit of copy-on-write.
pub const SHARDS: usize = 64;

/// Mapped prefix lengths below this cover more than the IPv4 space: IPv4 lookups never match them, so
/// that `::/0` (world, IPv6) does not swallow IPv4 addresses.
const V4_MAPPED_LEN: u8 = 96;

/// What the ipcache knows about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpCacheEntry {
    pub identity: Identity,
    /// The node that owns the address; `None` for this node or for addresses outside the mesh.
    pub tunnel_endpoint: Option<Addr>,
    pub cluster: Option<ClusterId>,
}

/// Why an ipcache update or a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpCacheError {
    #[error("prefix `{0}`: not an address or address/length")]
    Syntax(String),
    #[error("prefix `{input}`: length {len} is longer than the address")]
    LengthTooLong { input: String, len: u32 },
    #[error("prefix `{0}`: bits set after the prefix length")]
    HostBitsSet(String),
    #[error("ipcache full: {capacity} prefixes")]
    Full { capacity: usize },
}

/// An IPv4 or IPv6 prefix in mapped form. Host bits must be zero: `100.64.1.1/24` is refused rather
/// than silently widened, because it is almost always a typo for a host route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: Addr,
    /// 0..=128 in mapped form.
    len: u8,
}

const fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl IpPrefix {
    /// A prefix from an address and its family's length (0..=32 for IPv4, 0..=128 for IPv6).
    pub fn new(addr: Addr, family_len: u8) -> Result<Self, IpCacheError> {
        let (max, offset) = if addr.is_ipv4() {
            (32, V4_MAPPED_LEN)
        } else {
            (128, 0)
        };
        if family_len > max {
            return Err(IpCacheError::LengthTooLong {
                input: addr.to_string(),
                len: family_len.into(),
            });
        }
        let len = offset + family_len;
        if addr.bits() & !mask(len) != 0 {
            return Err(IpCacheError::HostBitsSet(format!("{addr}/{family_len}")));
        }
        Ok(IpPrefix { addr, len })
    }

    /// A prefix of `len` (0..=128) mapped bits; `None` if `len` is out of range or host bits are set.
    pub const fn mapped(addr: Addr, len: u8) -> Option<Self> {
        if len > 128 || addr.bits() & !mask(len) != 0 {
            None
        } else {
            Some(IpPrefix { addr, len })
        }
    }

    /// The route to one host: /32 or /128.
    pub const fn host(addr: Addr) -> Self {
        IpPrefix { addr, len: 128 }
    }

    pub const fn addr(&self) -> Addr {
        self.addr
    }

    /// The length in the address's own family (IPv4: 0..=32).
    pub const fn family_len(&self) -> u8 {
        if self.addr.is_ipv4() && self.len >= V4_MAPPED_LEN {
            self.len - V4_MAPPED_LEN
        } else {
            self.len
        }
    }

    /// The length in mapped form (IPv4 /n is 96 + n).
    pub const fn mapped_len(&self) -> u8 {
        self.len
    }

    pub const fn contains(&self, addr: Addr) -> bool {
        if addr.is_ipv4() && self.len < V4_MAPPED_LEN {
            return false;
        }
        addr.bits() & mask(self.len) == self.addr.bits()
    }
}

impl FromStr for IpPrefix {
    type Err = IpCacheError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || IpCacheError::Syntax(s.to_string());
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| syntax())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
            None => max,
        };
        if len > max {
            return Err(IpCacheError::LengthTooLong {
                input: s.to_string(),
                len,
            });
        }
        // `len <= 128` was checked just above. An IPv6 text of a mapped address (`::ffff:a.b.c.d/n`)
        // already counts in mapped bits.
        let mapped_len = if ip.is_ipv4() {
            V4_MAPPED_LEN + len as u8
        } else {
            len as u8
        };
        IpPrefix::mapped(Addr::from(ip), mapped_len)
            .ok_or_else(|| IpCacheError::HostBitsSet(s.to_string()))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.family_len())
    }
}

type Shard = Arc<KeyedMap<u128, IpCacheEntry>>;

/// All prefixes of one mapped length.
#[derive(Clone, Debug)]
struct Level {
    len: u8,
    mask: u128,
    count: usize,
    shards: Box<[Shard]>,
}

impl Level {
    fn new(len: u8) -> Self {
        Level {
            len,
            mask: mask(len),
            count: 0,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    fn shard_of(key: u128) -> usize {
        (crate::hash::hash_one(&key) >> 58) as usize % SHARDS
    }

    fn get(&self, key: u128) -> Option<&IpCacheEntry> {
        self.shards.get(Self::shard_of(key))?.get(&key)
    }

    fn shard_mut(&mut self, key: u128) -> Option<&mut KeyedMap<u128, IpCacheEntry>> {
        self.shards.get_mut(Self::shard_of(key)).map(Arc::make_mut)
    }
}

/// The address → identity table of one snapshot. Bounded: at most `capacity` prefixes.
#[derive(Clone, Debug)]
pub struct IpCache {
    /// Present lengths only, longest first.
    levels: Vec<Level>,
    len: usize,
    capacity: usize,
}

impl IpCache {
    pub fn new(capacity: usize) -> Self {
        IpCache {
            levels: Vec::new(),
            len: 0,
            capacity,
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

    /// The entry of the longest prefix that contains `addr`.
    pub fn lookup(&self, addr: Addr) -> Option<&IpCacheEntry> {
        let floor = if addr.is_ipv4() { V4_MAPPED_LEN } else { 0 };
        self.levels
            .iter()
            .take_while(|level| level.len >= floor)
            .find_map(|level| level.get(addr.bits() & level.mask))
    }

    /// The entry stored for exactly this prefix.
    pub fn get(&self, prefix: &IpPrefix) -> Option<&IpCacheEntry> {
        let level = self.levels.iter().find(|l| l.len == prefix.len)?;
        level.get(prefix.addr.bits())
    }

    /// Adds or replaces a prefix; returns the entry it replaced. A new prefix beyond capacity is refused.
    pub fn insert(
        &mut self,
        prefix: IpPrefix,
        entry: IpCacheEntry,
    ) -> Result<Option<IpCacheEntry>, IpCacheError> {
        let exists = self.get(&prefix).is_some();
        if !exists && self.len >= self.capacity {
            return Err(IpCacheError::Full {
                capacity: self.capacity,
            });
        }
        let at = match self.levels.iter().position(|l| l.len <= prefix.len) {
            Some(at) if self.levels.get(at).is_some_and(|l| l.len == prefix.len) => at,
            Some(at) => {
                self.levels.insert(at, Level::new(prefix.len));
                at
            }
            None => {
                self.levels.push(Level::new(prefix.len));
                self.levels.len() - 1
            }
        };
        let Some(level) = self.levels.get_mut(at) else {
            return Ok(None);
        };
        let old = level
            .shard_mut(prefix.addr.bits())
            .and_then(|s| s.insert(prefix.addr.bits(), entry));
        if old.is_none() {
            level.count += 1;
            self.len += 1;
        }
        Ok(old)
    }

    /// Removes a prefix; returns its entry if it was present.
    pub fn remove(&mut self, prefix: &IpPrefix) -> Option<IpCacheEntry> {
        let at = self.levels.iter().position(|l| l.len == prefix.len)?;
        let level = self.levels.get_mut(at)?;
        level.get(prefix.addr.bits())?;
        let old = level
            .shard_mut(prefix.addr.bits())?
            .remove(&prefix.addr.bits())?;
        level.count -= 1;
        self.len -= 1;
        if level.count == 0 {
            self.levels.remove(at);
        }
        Some(old)
    }

    /// Every prefix and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpPrefix, &IpCacheEntry)> {
        self.levels.iter().flat_map(|level| {
            level.shards.iter().flat_map(move |shard| {
                shard.iter().map(move |(bits, entry)| {
                    (
                        IpPrefix {
                            addr: Addr::from_v6_bits(*bits),
                            len: level.len,
                        },
                        entry,
                    )
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn entry(id: u32) -> IpCacheEntry {
        IpCacheEntry {
            identity: Identity::new(id).unwrap(),
            tunnel_endpoint: None,
            cluster: None,
        }
    }

    fn a(s: &str) -> Addr {
        s.parse::<IpAddr>().unwrap().into()
    }

    #[test]
    fn parses_and_displays_both_families() {
        assert_eq!(p("100.64.1.0/24").to_string(), "100.64.1.0/24");
        assert_eq!(p("100.64.1.0/24").mapped_len(), 120);
        assert_eq!(p("fd00::/64").to_string(), "fd00::/64");
        assert_eq!(p("100.64.1.7").family_len(), 32);
        assert_eq!(p("fd00::7").family_len(), 128);
        assert_eq!(p("0.0.0.0/0").mapped_len(), 96);
        assert_eq!(p("::ffff:10.0.0.0/104"), p("10.0.0.0/8"));
        assert!(matches!(
            "::ffff:0:0/80".parse::<IpPrefix>(),
            Err(IpCacheError::HostBitsSet(_))
        ));
    }

    #[test]
    fn refuses_bad_prefixes() {
        assert!(matches!(
            "100.64.1.1/24".parse::<IpPrefix>(),
            Err(IpCacheError::HostBitsSet(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<IpPrefix>(),
            Err(IpCacheError::LengthTooLong { .. })
        ));
        assert!(matches!(
            "fd00::/129".parse::<IpPrefix>(),
            Err(IpCacheError::LengthTooLong { .. })
        ));
        for bad in ["", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "fd00::/x", "/8"] {
            assert!(
                matches!(bad.parse::<IpPrefix>(), Err(IpCacheError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn longest_prefix_wins_and_families_stay_apart() {
        let mut cache = IpCache::new(16);
        cache.insert(p("0.0.0.0/0"), entry(2)).unwrap();
        cache.insert(p("::/0"), entry(3)).unwrap();
        cache.insert(p("100.64.0.0/10"), entry(10)).unwrap();
        cache.insert(p("100.64.1.0/24"), entry(24)).unwrap();
        cache.insert(p("100.64.1.10"), entry(32)).unwrap();
        let id = |cache: &IpCache, s| cache.lookup(a(s)).map(|e| e.identity.get());
        assert_eq!(id(&cache, "100.64.1.10"), Some(32));
        assert_eq!(id(&cache, "100.64.1.11"), Some(24));
        assert_eq!(id(&cache, "100.65.0.1"), Some(10));
        assert_eq!(id(&cache, "8.8.8.8"), Some(2));
        assert_eq!(id(&cache, "2001:db8::1"), Some(3));
        cache.remove(&p("0.0.0.0/0")).unwrap();
        assert_eq!(id(&cache, "8.8.8.8"), None, "::/0 must not match IPv4");
    }

    #[test]
    fn bounded_and_replace_does_not_count() {
        let mut cache = IpCache::new(2);
        cache.insert(p("10.0.0.1"), entry(1)).unwrap();
        cache.insert(p("10.0.0.2"), entry(2)).unwrap();
        assert_eq!(cache.insert(p("10.0.0.1"), entry(5)), Ok(Some(entry(1))));
        assert_eq!(
            cache.insert(p("10.0.0.3"), entry(3)),
            Err(IpCacheError::Full { capacity: 2 })
        );
        assert_eq!(cache.remove(&p("10.0.0.2")), Some(entry(2)));
        assert_eq!(cache.remove(&p("10.0.0.2")), None);
        assert!(cache.insert(p("10.0.0.3"), entry(3)).is_ok());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn clone_is_copy_on_write() {
        let mut old = IpCache::new(8);
        old.insert(p("10.0.0.0/8"), entry(8)).unwrap();
        let mut new = old.clone();
        new.insert(p("10.0.0.0/8"), entry(9)).unwrap();
        new.insert(p("10.1.0.0/16"), entry(16)).unwrap();
        assert_eq!(old.lookup(a("10.1.0.1")).map(|e| e.identity.get()), Some(8));
        assert_eq!(
            new.lookup(a("10.1.0.1")).map(|e| e.identity.get()),
            Some(16)
        );
        assert_eq!(new.lookup(a("10.2.0.1")).map(|e| e.identity.get()), Some(9));
    }

    fn arb_prefix() -> impl Strategy<Value = IpPrefix> {
        // Few distinct high bits so that prefixes nest and collide often.
        let v4 = (0u32..4, any::<u32>(), 0u8..=32).prop_map(|(hi, lo, len)| {
            let bits = (hi << 30) | (lo >> 2);
            let bits = if len == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - len))
            };
            IpPrefix::new(Addr::from_v4_bits(bits), len).unwrap()
        });
        let v6 = (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(hi, lo, len)| {
            let bits = (hi << 126) | (lo >> 2);
            IpPrefix::new(Addr::from_v6_bits(bits & mask(len)), len).unwrap()
        });
        prop_oneof![3 => v4, 1 => v6]
    }

    fn arb_addr() -> impl Strategy<Value = Addr> {
        prop_oneof![
            (0u32..4, any::<u32>()).prop_map(|(hi, lo)| Addr::from_v4_bits((hi << 30) | (lo >> 2))),
            (0u128..4, any::<u128>())
                .prop_map(|(hi, lo)| Addr::from_v6_bits((hi << 126) | (lo >> 2))),
        ]
    }

    fn oracle(prefixes: &[(IpPrefix, u32)], addr: Addr) -> Option<u32> {
        // Later inserts of the same prefix replace earlier ones.
        let mut best: Option<(u8, u32)> = None;
        for (prefix, id) in prefixes {
            if prefix.contains(addr) && best.is_none_or(|(len, _)| prefix.len >= len) {
                best = Some((prefix.len, *id));
            }
        }
        best.map(|(_, id)| id)
    }

    proptest! {
        #[test]
        fn prefix_text_round_trips(prefix in arb_prefix(), junk in "[0-9a-f:./]{0,24}") {
            prop_assert_eq!(prefix.to_string().parse::<IpPrefix>(), Ok(prefix));
            if let Ok(parsed) = junk.parse::<IpPrefix>() {
                prop_assert!(parsed.contains(parsed.addr()));
                prop_assert_eq!(parsed.to_string().parse::<IpPrefix>(), Ok(parsed));
            }
        }

        #[test]
        fn agrees_with_linear_lpm(
            prefixes in prop::collection::vec((arb_prefix(), 1u32..1000), 0..60),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            addrs in prop::collection::vec(arb_addr(), 1..60),
        ) {
            let mut cache = IpCache::new(usize::MAX);
            let mut model: Vec<(IpPrefix, u32)> = Vec::new();
            for (prefix, id) in &prefixes {
                cache.insert(*prefix, entry(*id)).unwrap();
                model.retain(|(q, _)| q != prefix);
                model.push((*prefix, *id));
            }
            let snapshot = cache.clone();
            for index in removed {
                if model.is_empty() { break; }
                let (prefix, id) = model.remove(index.index(model.len()));
                prop_assert_eq!(cache.remove(&prefix), Some(entry(id)));
            }
            prop_assert_eq!(cache.len(), model.len());
            prop_assert_eq!(cache.iter().count(), model.len());
            // Random addresses mostly miss; each prefix's own address is a sure hit.
            let probes = addrs.iter().copied().chain(model.iter().map(|(p, _)| p.addr()));
            for addr in probes {
                prop_assert_eq!(cache.lookup(addr).map(|e| e.identity.get()), oracle(&model, addr));
            }
            let mut full: Vec<(IpPrefix, u32)> = Vec::new();
            for (prefix, id) in &prefixes {
                full.retain(|(q, _)| q != prefix);
                full.push((*prefix, *id));
            }
            for (prefix, id) in &full {
                let hit = snapshot.lookup(prefix.addr()).map(|e| e.identity.get());
                prop_assert_eq!(hit, oracle(&full, prefix.addr()));
                prop_assert_eq!(snapshot.get(prefix), Some(&entry(*id)));
            }
        }
    }
}
