//! Which `address:port/protocol` is some service's backend: what worker steering
//! ([`crate::steering`]) asks of a frame, so that a backend's reply meets the worker its client's
//! request was steered to.
//!
//! Counted, not a set: one endpoint may back several services, and it stops being a backend only
//! when the last of them lets it go. Split into `Arc`ed shards like the frontend map, so a change
//! copies the shards it touches and never the whole index.

use std::sync::Arc;

use crate::hash::KeyedMap;

use super::Backend;
use crate::Addr;

const SHARDS: usize = 64;

/// A backend as a frame names it: its address, port and the service's IP protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
}

type Shard = Arc<KeyedMap<BackendKey, u32>>;

#[derive(Clone, Debug)]
pub(super) struct BackendIndex {
    shards: Box<[Shard]>,
}

impl Default for BackendIndex {
    fn default() -> Self {
        BackendIndex {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

fn shard_of(key: &BackendKey) -> usize {
    (crate::hash::hash_one(key) >> 58) as usize % SHARDS
}

impl BackendIndex {
    pub fn contains(&self, key: &BackendKey) -> bool {
        self.shards
            .get(shard_of(key))
            .is_some_and(|shard| shard.contains_key(key))
    }

    /// A service's backends went from `old` (of protocol `old_proto`) to `new` (of `new_proto`).
    pub fn replace(&mut self, old: (&[Backend], u8), new: (&[Backend], u8)) {
        let keys = |(backends, proto): (&[Backend], u8)| -> Vec<BackendKey> {
            let mut keys: Vec<BackendKey> = backends
                .iter()
                .map(|b| BackendKey {
                    addr: b.addr,
                    port: b.port,
                    proto,
                })
                .collect();
            // A service listing one endpoint twice holds one reference to it.
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let (old, new) = (keys(old), keys(new));
        for key in old.iter().filter(|k| new.binary_search(k).is_err()) {
            self.release(key);
        }
        for key in new.iter().filter(|k| old.binary_search(k).is_err()) {
            self.hold(key);
        }
    }

    fn hold(&mut self, key: &BackendKey) {
        if let Some(shard) = self.shards.get_mut(shard_of(key)) {
            *Arc::make_mut(shard).entry(*key).or_insert(0) += 1;
        }
    }

    fn release(&mut self, key: &BackendKey) {
        let Some(shard) = self.shards.get_mut(shard_of(key)) else {
            return;
        };
        let map = Arc::make_mut(shard);
        if let Some(count) = map.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                map.remove(key);
            }
        }
    }
}
