//! The hashing of every table keyed by what pods, the wire or remote clusters choose (conntrack, the
//! ipcache, services, endpoints, nodes, policy): ahash keyed with a seed drawn at random once per
//! process, so that no one can choose keys that collide in our tables (hash flooding) — FxHash, fast
//! as it is, is unkeyed and open to that. Tables keep a copy of the process's keyed state and hash
//! without a lock or an atomic per lookup.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

static SEED: OnceLock<ahash::RandomState> = OnceLock::new();

/// The process's keyed hasher builder.
#[derive(Clone, Debug)]
pub struct Keyed(ahash::RandomState);

impl Default for Keyed {
    fn default() -> Self {
        Keyed(SEED.get_or_init(ahash::RandomState::new).clone())
    }
}

impl BuildHasher for Keyed {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

impl Keyed {
    pub fn hash<T: Hash + ?Sized>(&self, value: &T) -> u64 {
        self.0.hash_one(value)
    }
}

/// `value` hashed with the process's keyed state, for code that picks a shard before it has a table.
pub fn hash_one<T: Hash + ?Sized>(value: &T) -> u64 {
    SEED.get_or_init(ahash::RandomState::new).hash_one(value)
}

pub type KeyedMap<K, V> = HashMap<K, V, Keyed>;
pub type KeyedSet<K> = HashSet<K, Keyed>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_per_process_and_not_a_fixed_one() {
        let (a, b) = (Keyed::default(), Keyed::default());
        assert_eq!(a.hash(&42u64), b.hash(&42u64), "tables of a process agree");
        // An unkeyed hash gives a value known in advance; two processes' seeds differ, so the best a
        // test can check is that it is no constant function of the key.
        let values: HashSet<u64> = (0u64..64).map(|k| a.hash(&k)).collect();
        assert_eq!(values.len(), 64);
        assert_ne!(
            a.hash(&0u64),
            ahash::RandomState::with_seeds(0, 0, 0, 0).hash_one(0u64)
        );
    }
}
