//! Why something a remote cluster wrote is not believed, and the record of what is refused now.
//!
//! A remote's key is refused when it is received (it does not decode, names another cluster, holds a
//! reserved identity or an IPv4-mapped address, is not shared, is too big, or comes past a limit), or
//! when the snapshot builder admits the remote's state into the tables (a pod CIDR too short or taken,
//! an endpoint outside its cluster's pod CIDRs or on no node of it, a backend that is no endpoint of
//! it). Each [`Refusal`] has a stable name, used alike by `clustermesh status`, metrics and logs.
//! [`Refusals`] keeps what is refused now per key, so that a key refused again and again is counted
//! and logged once, and the log of a storm of refusals is rate-limited.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Why one key or entry of a remote cluster is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// A key or value that does not decode, or that contradicts its key.
    Malformed,
    /// A value naming another cluster (by name or id) than the one whose etcd holds it.
    WrongCluster,
    /// An identity below 256, or outside the remote's `cluster-id << 16` range.
    ReservedIdentity,
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): it would alias the IPv4 address.
    Ipv4Mapped,
    /// A service its cluster does not share (`shared: false`).
    NotShared,
    /// A value bigger than the size limit: never parsed.
    ValueTooLarge,
    /// A pod CIDR shorter than the configured minimum prefix length.
    PodCidrTooShort,
    /// A pod CIDR overlapping one of this cluster, or one another remote claimed first.
    PodCidrOverlap,
    /// An endpoint address outside every admitted pod CIDR of its cluster.
    EndpointOutsidePodCidrs,
    /// An endpoint whose `HostIP` is no node of its cluster.
    HostIpNotANode,
    /// A service backend that is no admitted endpoint of the service's cluster.
    BackendNotAnEndpoint,
    /// A key past the remote's key limit.
    OverKeyLimit,
    /// A key past the remote's byte limit.
    OverByteLimit,
    /// An identity past the remote's identity limit.
    OverIdentityLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 14] = [
        Refusal::Malformed,
        Refusal::WrongCluster,
        Refusal::ReservedIdentity,
        Refusal::Ipv4Mapped,
        Refusal::NotShared,
        Refusal::ValueTooLarge,
        Refusal::PodCidrTooShort,
        Refusal::PodCidrOverlap,
        Refusal::EndpointOutsidePodCidrs,
        Refusal::HostIpNotANode,
        Refusal::BackendNotAnEndpoint,
        Refusal::OverKeyLimit,
        Refusal::OverByteLimit,
        Refusal::OverIdentityLimit,
    ];

    /// The stable name: status lines, the metric's `reason` label, logs.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::WrongCluster => "wrong_cluster",
            Refusal::ReservedIdentity => "reserved_identity",
            Refusal::Ipv4Mapped => "ipv4_mapped",
            Refusal::NotShared => "not_shared",
            Refusal::ValueTooLarge => "value_too_large",
            Refusal::PodCidrTooShort => "pod_cidr_too_short",
            Refusal::PodCidrOverlap => "pod_cidr_overlap",
            Refusal::EndpointOutsidePodCidrs => "endpoint_outside_pod_cidrs",
            Refusal::HostIpNotANode => "host_ip_not_a_node",
            Refusal::BackendNotAnEndpoint => "backend_not_an_endpoint",
            Refusal::OverKeyLimit => "over_key_limit",
            Refusal::OverByteLimit => "over_byte_limit",
            Refusal::OverIdentityLimit => "over_identity_limit",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Refusals per reason.
pub type RefusalCounts = BTreeMap<Refusal, u64>;

/// Adds `more` into `into`, reason by reason.
pub fn add_counts(into: &mut RefusalCounts, more: &RefusalCounts) {
    for (reason, n) in more {
        *into.entry(*reason).or_default() += n;
    }
}

/// At most this many refusal lines per window and remote; the rest are summed into one line.
const LOG_LINES: u32 = 20;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// A log rate limit: 20 lines per 10 seconds.
#[derive(Debug, Default)]
pub struct LogBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// May one more line be logged at `now`? The second value is how many were held back before
    /// this one, to say so when the budget comes back.
    pub fn allow(&mut self, now: Instant) -> (bool, u64) {
        let fresh = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= LOG_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_LINES {
            self.logged += 1;
            (true, std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            (false, 0)
        }
    }
}

/// What of one remote is refused now, by key: each key counted once under its current reason.
#[derive(Debug)]
pub struct Refusals<K> {
    cluster: String,
    now: HashMap<K, Refusal>,
    counts: RefusalCounts,
    log: LogBudget,
}

impl<K: Hash + Eq + fmt::Display> Refusals<K> {
    pub fn new(cluster: impl Into<String>) -> Self {
        Refusals {
            cluster: cluster.into(),
            now: HashMap::new(),
            counts: RefusalCounts::new(),
            log: LogBudget::default(),
        }
    }

    /// `key` is refused for `reason`; `detail` says why in words. Logs (within the budget) only when
    /// the key was not refused for this reason already. Returns whether it was new.
    pub fn refuse(&mut self, key: K, reason: Refusal, detail: impl FnOnce() -> String) -> bool {
        if self.now.get(&key) == Some(&reason) {
            return false;
        }
        let (log, held_back) = self.log.allow(Instant::now());
        if log {
            tracing::warn!(
                cluster = %self.cluster,
                %key,
                reason = reason.name(),
                detail = %detail(),
                "clustermesh: remote entry refused"
            );
        }
        if held_back > 0 {
            tracing::warn!(cluster = %self.cluster, held_back, "clustermesh: more refusals were not logged");
        }
        if let Some(old) = self.now.insert(key, reason) {
            self.uncount(old);
        }
        *self.counts.entry(reason).or_default() += 1;
        true
    }

    /// `key` is no longer refused (admitted, or gone). Returns whether it was refused.
    pub fn clear(&mut self, key: &K) -> bool {
        match self.now.remove(key) {
            Some(old) => {
                self.uncount(old);
                true
            }
            None => false,
        }
    }

    /// Forgets every key not kept by `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let gone: Vec<Refusal> = self
            .now
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(_, r)| *r)
            .collect();
        self.now.retain(|k, _| keep(k));
        for reason in gone {
            self.uncount(reason);
        }
    }

    /// The keys refused now.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.now.keys()
    }

    pub fn reason(&self, key: &K) -> Option<Refusal> {
        self.now.get(key).copied()
    }

    /// Keys refused now, per reason.
    pub fn counts(&self) -> &RefusalCounts {
        &self.counts
    }

    pub fn len(&self) -> usize {
        self.now.len()
    }

    pub fn is_empty(&self) -> bool {
        self.now.is_empty()
    }

    fn uncount(&mut self, reason: Refusal) {
        if let Some(n) = self.counts.get_mut(&reason) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let mut names: Vec<&str> = Refusal::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Refusal::ALL.len());
        let json = serde_json::to_string(&Refusal::EndpointOutsidePodCidrs).unwrap();
        assert_eq!(json, "\"endpoint_outside_pod_cidrs\"");
    }

    #[test]
    fn a_key_refused_again_is_counted_and_logged_once() {
        let mut refusals = Refusals::new("cluster2");
        let detail = || "why".to_owned();
        assert!(refusals.refuse("k1", Refusal::Malformed, detail));
        assert!(
            !refusals.refuse("k1", Refusal::Malformed, detail),
            "the same refusal again is neither new nor logged"
        );
        assert!(refusals.refuse("k1", Refusal::ReservedIdentity, detail));
        assert_eq!(
            refusals.counts(),
            &RefusalCounts::from([(Refusal::ReservedIdentity, 1)])
        );
        refusals.refuse("k2", Refusal::ReservedIdentity, String::new);
        assert_eq!(refusals.counts()[&Refusal::ReservedIdentity], 2);
        assert!(refusals.clear(&"k1"));
        assert!(!refusals.clear(&"k1"));
        refusals.retain(|k| *k != "k2");
        assert!(refusals.counts().is_empty() && refusals.is_empty());
    }

    #[test]
    fn the_log_budget_holds_back_a_storm_and_says_so() {
        let mut budget = LogBudget::default();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| budget.allow(t0).0).count();
        assert_eq!(allowed, LOG_LINES as usize);
        assert_eq!(budget.allow(t0 + LOG_WINDOW), (true, 1000 - 20));
        assert_eq!(budget.allow(t0 + LOG_WINDOW).1, 0);
    }

    proptest! {
        /// The counts are always those of the keys refused now.
        #[test]
        fn counts_follow_the_keys(ops in prop::collection::vec((0u8..8, prop::option::of(0usize..4)), 0..60)) {
            let mut refusals = Refusals::new("c");
            let mut model: HashMap<u8, Refusal> = HashMap::new();
            for (key, reason) in ops {
                match reason {
                    Some(i) => {
                        refusals.refuse(key, Refusal::ALL[i], String::new);
                        model.insert(key, Refusal::ALL[i]);
                    }
                    None => {
                        refusals.clear(&key);
                        model.remove(&key);
                    }
                }
            }
            let mut want = RefusalCounts::new();
            for reason in model.values() {
                *want.entry(*reason).or_default() += 1;
            }
            prop_assert_eq!(refusals.counts(), &want);
        }
    }
}
