//! How much of a remote cluster this agent holds: a remote may be huge or hostile, so its keys, the
//! memory its entries take and its identities are bounded. Past a limit the excess is ignored — the
//! first keys in listing order (nodes, identities, endpoints, services, each in key order), then the
//! first to arrive while watched — and the remote is marked degraded until a listing fits again.

use serde::{Deserialize, Serialize};

use crate::kvstore::LabelSet;
use crate::refusal::Refusal;
use crate::state::{ClusterState, EndpointInfo, Entry, EntryKey, NodeInfo, ServiceInfo};

/// The bounds on one remote cluster. The defaults hold a cluster of 100k endpoints, 10k services,
/// the 65,536 identities a cluster id's range can hold and a few thousand nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLimits {
    /// Keys held, of every kind, refused ones included (they are remembered to count them once).
    pub max_keys: usize,
    /// Memory the remote's entries take here, as estimated from their decoded size.
    pub max_bytes: usize,
    pub max_identities: usize,
    /// A value bigger than this is refused unread.
    pub max_value_bytes: usize,
}

impl Default for RemoteLimits {
    fn default() -> Self {
        RemoteLimits {
            max_keys: 250_000,
            max_bytes: 256 << 20,
            max_identities: 65_536,
            max_value_bytes: 1 << 20,
        }
    }
}

/// What a remote holds against its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub keys: usize,
    pub bytes: usize,
    pub identities: usize,
}

impl Usage {
    /// Takes `entry` if it fits, replacing what its key held (`old`: that entry's footprint);
    /// otherwise the limit it would pass.
    pub fn admit(
        &mut self,
        limits: &RemoteLimits,
        entry: &Entry,
        old: Option<usize>,
    ) -> Result<(), Refusal> {
        let mut next = *self;
        let identity = matches!(entry, Entry::Identity(..));
        if let Some(old) = old {
            next.remove(identity, old);
        }
        next.add(identity, footprint(entry));
        next.check(limits)?;
        *self = next;
        Ok(())
    }

    /// Takes a refused key, remembered so that it is counted and logged once.
    pub fn admit_refused(&mut self, limits: &RemoteLimits, key: &str) -> Result<(), Refusal> {
        let mut next = *self;
        next.add(false, refused_footprint(key));
        next.check(limits)?;
        *self = next;
        Ok(())
    }

    /// Counts an entry (of `bytes`) in, whatever the limits.
    pub fn add(&mut self, identity: bool, bytes: usize) {
        self.keys += 1;
        self.bytes += bytes;
        self.identities += usize::from(identity);
    }

    pub fn remove(&mut self, identity: bool, bytes: usize) {
        self.keys = self.keys.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if identity {
            self.identities = self.identities.saturating_sub(1);
        }
    }

    /// Counts a remembered refused key in, whatever the limits.
    pub fn add_refused(&mut self, key: &str) {
        self.add(false, refused_footprint(key));
    }

    pub fn remove_refused(&mut self, key: &str) {
        self.remove(false, refused_footprint(key));
    }

    /// Both together.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            keys: self.keys + other.keys,
            bytes: self.bytes + other.bytes,
            identities: self.identities + other.identities,
        }
    }

    fn check(&self, limits: &RemoteLimits) -> Result<(), Refusal> {
        if self.keys > limits.max_keys {
            Err(Refusal::OverKeyLimit)
        } else if self.bytes > limits.max_bytes {
            Err(Refusal::OverByteLimit)
        } else if self.identities > limits.max_identities {
            Err(Refusal::OverIdentityLimit)
        } else {
            Ok(())
        }
    }
}

/// Bookkeeping a remembered key costs beside its text.
const PER_KEY: usize = 64;

fn refused_footprint(key: &str) -> usize {
    PER_KEY + key.len()
}

/// An entry's size in memory, estimated: its struct, its strings and lists, and a map slot.
pub fn footprint(entry: &Entry) -> usize {
    match entry {
        Entry::Node(n) => node_footprint(n),
        Entry::Endpoint(e) => endpoint_footprint(e),
        Entry::Identity(_, labels) => identity_footprint(labels),
        Entry::Service(s) => service_footprint(s),
    }
}

/// The footprint of what `state` holds at `key`, if anything.
pub fn held_footprint(state: &ClusterState, key: &EntryKey) -> Option<usize> {
    match key {
        EntryKey::Node(name) => state.nodes.get(name).map(|n| node_footprint(n)),
        EntryKey::Endpoint(ip) => state.endpoints.get(ip).map(|e| endpoint_footprint(e)),
        EntryKey::Identity(id) => state.identities.get(id).map(identity_footprint),
        EntryKey::Service(name) => state.services.get(name).map(|s| service_footprint(s)),
    }
}

fn node_footprint(n: &NodeInfo) -> usize {
    PER_KEY
        + std::mem::size_of_val(n)
        + n.name.len()
        + n.addresses.len() * 48
        + n.pod_cidrs.len() * 24
        + n.health_ips.len() * 16
        + n.wireguard_pub_key.as_ref().map_or(0, String::len)
}

fn endpoint_footprint(e: &EndpointInfo) -> usize {
    PER_KEY + std::mem::size_of_val(e) + e.namespace.len() + e.pod_name.len()
}

fn identity_footprint(labels: &LabelSet) -> usize {
    let labels: usize = labels
        .iter()
        .map(|(k, v)| 3 * 24 + k.len() + v.source.len() + v.value.len())
        .sum();
    PER_KEY + 32 + labels
}

fn service_footprint(s: &ServiceInfo) -> usize {
    let ports = |ports: &[crate::state::ServicePort]| -> usize {
        ports.iter().map(|p| 48 + p.port_name.len()).sum()
    };
    let selector: usize = s.selector.iter().map(|(k, v)| 48 + k.len() + v.len()).sum();
    PER_KEY
        + std::mem::size_of_val(s)
        + s.name.namespace.len()
        + s.name.name.len()
        + ports(&s.frontends)
        + ports(&s.backends)
        + selector
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_dataplane::{Addr, Identity};
    use proptest::prelude::*;

    fn endpoint(i: u32, name_len: usize) -> Entry {
        Entry::Endpoint(
            EndpointInfo {
                ip: Addr::from_v4_bits(0x0a00_0000 + i),
                identity: Identity::new(0x2_0100).unwrap(),
                host_ip: None,
                namespace: "ns".into(),
                pod_name: "p".repeat(name_len),
            }
            .into(),
        )
    }

    fn identity(i: u32) -> Entry {
        Entry::Identity(
            Identity::new(0x2_0100 + i).unwrap(),
            LabelSet::parse("k8s:app=a;").unwrap(),
        )
    }

    #[test]
    fn each_limit_refuses_what_passes_it_and_keeps_what_was_taken() {
        let limits = RemoteLimits {
            max_keys: 3,
            max_bytes: usize::MAX,
            max_identities: 1,
            max_value_bytes: 1 << 20,
        };
        let mut usage = Usage::default();
        assert_eq!(usage.admit(&limits, &identity(0), None), Ok(()));
        assert_eq!(
            usage.admit(&limits, &identity(1), None),
            Err(Refusal::OverIdentityLimit)
        );
        assert_eq!(usage.admit(&limits, &endpoint(0, 1), None), Ok(()));
        assert_eq!(usage.admit_refused(&limits, "cilium/bad"), Ok(()));
        assert_eq!(
            usage.admit(&limits, &endpoint(1, 1), None),
            Err(Refusal::OverKeyLimit)
        );
        // Replacing a held key needs no new slot.
        let old = Some(footprint(&endpoint(0, 1)));
        assert_eq!(usage.admit(&limits, &endpoint(0, 2), old), Ok(()));
        assert_eq!((usage.keys, usage.identities), (3, 1));
        usage.remove_refused("cilium/bad");
        assert_eq!(usage.admit(&limits, &endpoint(1, 1), None), Ok(()));
    }

    #[test]
    fn the_byte_limit_counts_what_an_entry_holds() {
        let small = footprint(&endpoint(0, 1));
        let limits = RemoteLimits {
            max_bytes: 3 * small,
            ..RemoteLimits::default()
        };
        let mut usage = Usage::default();
        assert_eq!(
            usage.admit(&limits, &endpoint(0, 10_000), None),
            Err(Refusal::OverByteLimit)
        );
        for i in 0..3 {
            assert_eq!(usage.admit(&limits, &endpoint(i, 1), None), Ok(()));
        }
        assert_eq!(
            usage,
            Usage {
                keys: 3,
                bytes: 3 * small,
                identities: 0
            }
        );
    }

    proptest! {
        /// Whatever is admitted and removed, usage stays within the limits and returns to zero.
        #[test]
        fn usage_stays_within_limits(ops in prop::collection::vec((0u32..6, any::<bool>(), 0usize..300), 0..80)) {
            let limits = RemoteLimits { max_keys: 4, max_bytes: 2000, max_identities: 2, max_value_bytes: 1 };
            let mut usage = Usage::default();
            let mut held: std::collections::HashMap<u32, Entry> = Default::default();
            for (i, is_identity, len) in ops {
                let entry = if is_identity { identity(i) } else { endpoint(i + 100, len) };
                let key = if is_identity { i } else { i + 100 };
                if held.contains_key(&key) && len % 3 == 0 {
                    let old = held.remove(&key).unwrap();
                    usage.remove(is_identity, footprint(&old));
                } else if usage.admit(&limits, &entry, held.get(&key).map(footprint)).is_ok() {
                    held.insert(key, entry);
                }
                prop_assert!(usage.keys <= 4 && usage.bytes <= 2000 && usage.identities <= 2);
                prop_assert_eq!(usage.keys, held.len());
            }
            for entry in held.values() {
                usage.remove(matches!(entry, Entry::Identity(..)), footprint(entry));
            }
            prop_assert_eq!(usage, Usage::default());
        }
    }
}
