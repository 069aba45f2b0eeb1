//! A remote cluster's state as last seen, and the events that keep a consumer in step with it across
//! reconnections: after a full relisting, entries that vanished while we were away are deleted — but only
//! once the remote's sync canary for that kind says its listing was complete, so that a remote agent
//! still repopulating its etcd does not make us withdraw live entries.

use std::collections::HashSet;

use super::limits::{footprint, held_footprint, Usage};
use super::status::SyncStatus;
use crate::kvstore::Kind;
use crate::state::{ClusterState, Entry, EntryKey, StateEvent};

#[derive(Debug, Default)]
pub struct Mirror {
    state: ClusterState,
    stale: HashSet<EntryKey>,
    synced: SyncStatus,
    /// What `state` holds, kept in step with it.
    usage: Usage,
}

impl Mirror {
    /// Starts from what a previous watcher of the same cluster had emitted.
    pub fn new(seed: ClusterState) -> Self {
        let mut mirror = Mirror {
            state: seed,
            ..Default::default()
        };
        mirror.recount();
        mirror
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    fn recount(&mut self) {
        self.usage = Usage::default();
        for entry in self.state.entries() {
            let identity = matches!(entry, Entry::Identity(..));
            self.usage.add(identity, footprint(&entry));
        }
    }

    pub fn into_state(self) -> ClusterState {
        self.state
    }

    pub fn synced(&self) -> SyncStatus {
        self.synced
    }

    /// A full listing: upserts for what is new or changed now, deletes for leftovers of each kind
    /// whose canary is already in `synced` (the others wait for [`Mirror::mark_synced`]).
    pub fn resync(&mut self, listed: ClusterState, synced: SyncStatus) -> Vec<StateEvent> {
        self.stale = Kind::ALL
            .iter()
            .flat_map(|kind| self.state.keys_of(*kind))
            .filter(|key| !listed.contains(key))
            .collect();
        let mut events: Vec<StateEvent> = listed
            .entries()
            .filter(|entry| !self.state.holds(entry))
            .map(StateEvent::Upsert)
            .collect();
        for event in &events {
            self.state.apply(event.clone());
        }
        self.recount();
        self.synced = SyncStatus::default();
        for kind in Kind::ALL.into_iter().filter(|k| synced.get(*k)) {
            events.extend(self.mark_synced(kind));
        }
        events
    }

    pub fn upsert(&mut self, entry: Entry) -> Option<StateEvent> {
        let key = entry.key();
        self.stale.remove(&key);
        let identity = matches!(entry, Entry::Identity(..));
        let old = held_footprint(&self.state, &key);
        let new = footprint(&entry);
        if !self.state.upsert(entry.clone()) {
            return None;
        }
        if let Some(old) = old {
            self.usage.remove(identity, old);
        }
        self.usage.add(identity, new);
        Some(StateEvent::Upsert(entry))
    }

    pub fn delete(&mut self, key: EntryKey) -> Option<StateEvent> {
        self.stale.remove(&key);
        let old = held_footprint(&self.state, &key)?;
        self.state.remove(&key);
        self.usage.remove(matches!(key, EntryKey::Identity(_)), old);
        Some(StateEvent::Delete(key))
    }

    /// The remote finished writing `kind`: what we still hold of it from before is gone.
    pub fn mark_synced(&mut self, kind: Kind) -> Vec<StateEvent> {
        self.synced.set(kind, true);
        let gone: Vec<EntryKey> = self
            .stale
            .iter()
            .filter(|k| k.kind() == kind)
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|key| self.delete(key))
            .collect()
    }

    /// The connection is lost: entries stay (grace period), sync status does not.
    pub fn disconnected(&mut self) {
        self.synced = SyncStatus::default();
    }

    /// Deletes for everything: the grace period is over, or the remote was configured away.
    pub fn withdraw(&mut self) -> Vec<StateEvent> {
        self.stale.clear();
        let keys: Vec<EntryKey> = Kind::ALL
            .iter()
            .flat_map(|k| self.state.keys_of(*k))
            .collect();
        keys.into_iter()
            .filter_map(|key| self.delete(key))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvstore::LabelSet;
    use meshpath_dataplane::Identity;
    use proptest::prelude::*;

    fn identity(n: u32) -> Entry {
        Entry::Identity(
            Identity::new(0x2_0000 + n).unwrap(),
            LabelSet::parse(&format!("k8s:n={n};")).unwrap(),
        )
    }

    fn state_of(ids: &[u32]) -> ClusterState {
        let mut state = ClusterState::default();
        for n in ids {
            state.upsert(identity(*n));
        }
        state
    }

    fn all_synced() -> SyncStatus {
        SyncStatus {
            nodes: true,
            endpoints: true,
            identities: true,
            services: true,
        }
    }

    #[test]
    fn leftovers_wait_for_the_canary() {
        let mut mirror = Mirror::new(state_of(&[1, 2]));
        let events = mirror.resync(state_of(&[2, 3]), SyncStatus::default());
        assert_eq!(events, vec![StateEvent::Upsert(identity(3))]);
        assert_eq!(
            mirror.state().identities.len(),
            3,
            "1 is kept until identities are synced"
        );
        let events = mirror.mark_synced(Kind::Identities);
        assert_eq!(events, vec![StateEvent::Delete(identity(1).key())]);
        assert!(mirror.synced().identities && !mirror.synced().nodes);
    }

    #[test]
    fn a_leftover_put_again_before_the_canary_is_not_deleted() {
        let mut mirror = Mirror::new(state_of(&[1]));
        mirror.resync(ClusterState::default(), SyncStatus::default());
        assert_eq!(mirror.upsert(identity(1)), None, "unchanged");
        assert!(mirror.mark_synced(Kind::Identities).is_empty());
        assert_eq!(mirror.state(), &state_of(&[1]));
    }

    #[test]
    fn withdraw_deletes_everything_once() {
        let mut mirror = Mirror::new(state_of(&[1, 2]));
        assert_eq!(mirror.withdraw().len(), 2);
        assert!(mirror.withdraw().is_empty());
        assert!(mirror.state().is_empty());
    }

    proptest! {
        /// A consumer that folds the events ends with exactly the remote's state: no duplicates, no leftovers.
        #[test]
        fn consumer_converges_to_the_listing(before in proptest::collection::vec(0u32..20, 0..15), after in proptest::collection::vec(0u32..20, 0..15), canary_in_listing in any::<bool>()) {
            let mut consumer = state_of(&before);
            let mut mirror = Mirror::new(consumer.clone());
            let synced = if canary_in_listing { all_synced() } else { SyncStatus::default() };
            let mut events = mirror.resync(state_of(&after), synced);
            if !canary_in_listing {
                events.extend(mirror.mark_synced(Kind::Identities));
            }
            for event in events {
                prop_assert!(consumer.apply(event));
            }
            prop_assert_eq!(&consumer, &state_of(&after));
            prop_assert_eq!(mirror.state(), &consumer);
            let fresh = Mirror::new(consumer.clone());
            prop_assert_eq!(mirror.usage(), fresh.usage(), "usage kept in step with the state");
        }
    }
}
