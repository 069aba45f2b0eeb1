//! Where identities come from: the cluster's etcd ([`IdentityAllocator`], shared by every agent of the
//! cluster) or, standalone and in tests, this process's memory ([`MemoryAllocator`]). Both hand out ids
//! from the cluster's own range, above the reserved ones.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use meshpath_dataplane::{ClusterId, Identity};

use crate::identity_alloc::{AllocError, IdentityAllocator};
use crate::kvstore::LabelSet;

/// Label set → security identity, in one cluster's id range.
pub trait IdentitySource {
    /// The identity of `labels`: the one it already has, else a new one.
    fn allocate(
        &mut self,
        labels: &LabelSet,
    ) -> impl Future<Output = Result<Identity, AllocError>> + Send;

    /// This agent no longer uses `labels`.
    fn release(&mut self, labels: &LabelSet)
        -> impl Future<Output = Result<(), AllocError>> + Send;

    /// Claims every held label set again under `lease` (the agent's old lease was lost); returns the
    /// label sets whose identity changed meanwhile, with the new identity.
    fn reclaim(
        &mut self,
        lease: i64,
    ) -> impl Future<Output = Result<Vec<(LabelSet, Identity)>, AllocError>> + Send;
}

impl IdentitySource for IdentityAllocator {
    fn allocate(
        &mut self,
        labels: &LabelSet,
    ) -> impl Future<Output = Result<Identity, AllocError>> + Send {
        IdentityAllocator::allocate(self, labels)
    }

    fn release(
        &mut self,
        labels: &LabelSet,
    ) -> impl Future<Output = Result<(), AllocError>> + Send {
        IdentityAllocator::release(self, labels)
    }

    fn reclaim(
        &mut self,
        lease: i64,
    ) -> impl Future<Output = Result<Vec<(LabelSet, Identity)>, AllocError>> + Send {
        IdentityAllocator::reclaim(self, lease)
    }
}

/// Identities kept in memory: the lowest free id of the cluster's range (never below 256).
#[derive(Clone, Debug)]
pub struct MemoryAllocator {
    cluster: ClusterId,
    by_labels: BTreeMap<LabelSet, Identity>,
    by_id: BTreeMap<Identity, LabelSet>,
    /// Released ids below `fresh`, reused lowest first.
    free: BTreeSet<u32>,
    /// The lowest id never handed out.
    fresh: u32,
}

impl MemoryAllocator {
    pub fn new(cluster: ClusterId) -> Self {
        MemoryAllocator {
            cluster,
            by_labels: BTreeMap::new(),
            by_id: BTreeMap::new(),
            free: BTreeSet::new(),
            fresh: cluster.first_identity().get().max(256),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn take_lowest_free(&mut self) -> Option<Identity> {
        if let Some(id) = self.free.pop_first() {
            return Identity::new(id);
        }
        let id = Identity::new(self.fresh)
            .filter(|_| self.fresh <= self.cluster.last_identity().get())?;
        self.fresh += 1;
        Some(id)
    }

    fn allocate_now(&mut self, labels: &LabelSet) -> Result<Identity, AllocError> {
        if let Some(id) = self.by_labels.get(labels) {
            return Ok(*id);
        }
        let id = self
            .take_lowest_free()
            .ok_or_else(|| AllocError::Exhausted {
                cluster: self.cluster,
                labels: labels.to_string(),
            })?;
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels.clone());
        Ok(id)
    }
}

impl IdentitySource for MemoryAllocator {
    fn allocate(
        &mut self,
        labels: &LabelSet,
    ) -> impl Future<Output = Result<Identity, AllocError>> + Send {
        std::future::ready(self.allocate_now(labels))
    }

    fn release(
        &mut self,
        labels: &LabelSet,
    ) -> impl Future<Output = Result<(), AllocError>> + Send {
        if let Some(id) = self.by_labels.remove(labels) {
            self.by_id.remove(&id);
            self.free.insert(id.get());
        }
        std::future::ready(Ok(()))
    }

    /// Memory has no lease to lose.
    fn reclaim(
        &mut self,
        _lease: i64,
    ) -> impl Future<Output = Result<Vec<(LabelSet, Identity)>, AllocError>> + Send {
        std::future::ready(Ok(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn labels(app: u16) -> LabelSet {
        LabelSet::parse(&format!("k8s:app=a{app};")).unwrap()
    }

    #[tokio::test]
    async fn same_labels_same_id_in_the_cluster_range() {
        let c = ClusterId::new(3).unwrap();
        let mut alloc = MemoryAllocator::new(c);
        let a = alloc.allocate(&labels(1)).await.unwrap();
        let b = alloc.allocate(&labels(2)).await.unwrap();
        assert_eq!(alloc.allocate(&labels(1)).await.unwrap(), a);
        assert_eq!((a.get(), b.get()), (3 << 16, (3 << 16) + 1));
        alloc.release(&labels(1)).await.unwrap();
        assert_eq!(
            alloc.allocate(&labels(3)).await.unwrap(),
            a,
            "freed ids are reused"
        );
    }

    #[tokio::test]
    async fn a_full_range_is_reported() {
        let mut alloc = MemoryAllocator::new(ClusterId::new(1).unwrap());
        for i in 0..1u32 << 16 {
            let l = LabelSet::parse(&format!("k8s:i={i};")).unwrap();
            alloc.allocate_now(&l).unwrap();
        }
        assert!(matches!(
            alloc.allocate(&labels(0)).await,
            Err(AllocError::Exhausted { .. })
        ));
    }

    proptest! {
        #[test]
        fn ids_are_unique_and_owned(ops in prop::collection::vec((any::<bool>(), 0u16..40), 0..200)) {
            let cluster = ClusterId::new(7).unwrap();
            let mut alloc = MemoryAllocator::new(cluster);
            let mut model: BTreeMap<u16, Identity> = BTreeMap::new();
            for (allocate, app) in ops {
                if allocate {
                    let id = alloc.allocate_now(&labels(app)).unwrap();
                    prop_assert_eq!(id.cluster(), Some(cluster));
                    if let Some(old) = model.insert(app, id) {
                        prop_assert_eq!(old, id);
                    }
                } else {
                    drop(alloc.release(&labels(app)));
                    model.remove(&app);
                }
                let distinct: BTreeSet<Identity> = model.values().copied().collect();
                prop_assert_eq!(distinct.len(), model.len());
                prop_assert_eq!(alloc.len(), model.len());
            }
        }
    }
}
