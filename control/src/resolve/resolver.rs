//! The resolver: one [`LocalState`] in, the pods' identities and this cluster's mesh view out; the
//! changes of this agent's share of the view ([`node_share`]) since the last one go to the cluster's
//! etcd through the [`Publisher`], when there is one.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshpath_dataplane::policy::IdentityLabels;
use meshpath_dataplane::{ClusterId, Identity};

use super::allocator::IdentitySource;
use super::labels::{identity_labels, label_set};
use super::view::{mesh_view, node_share};
use crate::cluster_name::ClusterName;
use crate::identity_alloc::AllocError;
use crate::kvstore::{LabelError, LabelSet};
use crate::local::{LocalState, ObjectRef};
use crate::publish::{PublishError, Publisher, Upkeep};
use crate::state::{ClusterState, Entry, EntryKey, StateEvent};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("pod {pod}: {source}")]
    Identity { pod: String, source: AllocError },
    #[error("releasing identity `{labels}`: {source}")]
    Release { labels: String, source: AllocError },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("claiming identities again under a new lease: {0}")]
    Reclaim(AllocError),
}

/// The local state with everything the snapshot builder needs resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedLocal {
    pub local: Arc<LocalState>,
    /// Every scheduled pod with an address, and its identity.
    pub pods: BTreeMap<ObjectRef, Identity>,
    /// This cluster's identities with their labels, as policy matches them.
    pub identities: IdentityLabels,
    /// What the mesh sees of this cluster.
    pub state: ClusterState,
    /// Pods left without an identity because a label cannot be written in Cilium's label string.
    pub skipped: Vec<(ObjectRef, LabelError)>,
}

pub struct Resolver<A> {
    cluster: ClusterName,
    cluster_id: ClusterId,
    alloc: A,
    publisher: Option<Publisher>,
    /// Label sets in use and their identities: allocated once, released when no pod uses them.
    held: BTreeMap<LabelSet, Identity>,
    published: ClusterState,
}

impl<A: IdentitySource> Resolver<A> {
    pub fn new(cluster: ClusterName, cluster_id: ClusterId, alloc: A) -> Self {
        Resolver {
            cluster,
            cluster_id,
            alloc,
            publisher: None,
            held: BTreeMap::new(),
            published: ClusterState::default(),
        }
    }

    /// Publishes every resolved state's changes through `publisher`.
    pub fn with_publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    pub fn publisher_mut(&mut self) -> Option<&mut Publisher> {
        self.publisher.as_mut()
    }

    /// Resolves `local`. A publishing failure leaves the unpublished changes for the next call.
    pub async fn resolve(&mut self, local: Arc<LocalState>) -> Result<ResolvedLocal, ResolveError> {
        let mut resolved = ResolvedLocal {
            local: local.clone(),
            ..ResolvedLocal::default()
        };
        let mut used: BTreeMap<LabelSet, Identity> = BTreeMap::new();
        let scheduled = local
            .pods
            .values()
            .filter(|p| p.node.is_some() && !p.ips.is_empty());
        for pod in scheduled {
            let labels = identity_labels(pod, &self.cluster);
            let set = match label_set(&labels) {
                Ok(set) => set,
                Err(err) => {
                    tracing::warn!(pod = %format!("{}/{}", pod.pod.namespace, pod.pod.name), %err, "no identity");
                    resolved.skipped.push((pod.pod.clone(), err));
                    continue;
                }
            };
            let id = self.identity(&set, &pod.pod).await?;
            used.insert(set, id);
            resolved.pods.insert(pod.pod.clone(), id);
            resolved.identities.insert(id, labels);
        }
        self.release_unused(&used).await?;
        let by_id = used.into_iter().map(|(l, id)| (id, l)).collect();
        resolved.state = mesh_view(&local, &resolved.pods, &by_id, self.cluster_id);
        self.publish(&local, &resolved.state).await?;
        Ok(resolved)
    }

    async fn identity(
        &mut self,
        set: &LabelSet,
        pod: &ObjectRef,
    ) -> Result<Identity, ResolveError> {
        if let Some(id) = self.held.get(set) {
            return Ok(*id);
        }
        let id = self
            .alloc
            .allocate(set)
            .await
            .map_err(|source| ResolveError::Identity {
                pod: format!("{}/{}", pod.namespace, pod.name),
                source,
            })?;
        self.held.insert(set.clone(), id);
        Ok(id)
    }

    async fn release_unused(
        &mut self,
        used: &BTreeMap<LabelSet, Identity>,
    ) -> Result<(), ResolveError> {
        let unused: Vec<LabelSet> = self
            .held
            .keys()
            .filter(|l| !used.contains_key(*l))
            .cloned()
            .collect();
        for labels in unused {
            self.alloc
                .release(&labels)
                .await
                .map_err(|source| ResolveError::Release {
                    labels: labels.to_string(),
                    source,
                })?;
            self.held.remove(&labels);
        }
        Ok(())
    }

    /// Sends the difference between this agent's share of `state` and what it last published.
    /// Identities are in etcd already (allocation writes them); nodes are not deleted here, their keys
    /// expire with the lease.
    async fn publish(
        &mut self,
        local: &LocalState,
        state: &ClusterState,
    ) -> Result<(), ResolveError> {
        let Some(publisher) = self.publisher.as_mut() else {
            return Ok(());
        };
        let share = node_share(local, state, publisher.node(), publisher.leads());
        for event in self.published.diff(&share) {
            match &event {
                StateEvent::Upsert(Entry::Node(n)) => publisher.publish_node(n).await?,
                StateEvent::Upsert(Entry::Endpoint(e)) => publisher.publish_endpoint(e).await?,
                StateEvent::Upsert(Entry::Service(s)) => publisher.publish_service(s).await?,
                StateEvent::Delete(EntryKey::Endpoint(ip)) => {
                    publisher.withdraw_endpoint(*ip).await?
                }
                StateEvent::Delete(EntryKey::Service(n)) => publisher.withdraw_service(n).await?,
                _ => {}
            }
            self.published.apply(event);
        }
        publisher.finish_round().await?;
        Ok(())
    }

    /// The publisher's periodic care ([`Publisher::upkeep`]), and what it means for the resolver: the
    /// identity claims follow a new lease, and a change of lead makes the global services this agent's
    /// to write (all of them, again) or no longer its own. `None` without a publisher. Resolve the
    /// current local state again when [`Upkeep::lead_changed`] or `lease_recovered`.
    pub async fn upkeep(&mut self) -> Result<Option<Upkeep>, ResolveError> {
        let Some(publisher) = self.publisher.as_mut() else {
            return Ok(None);
        };
        let upkeep = publisher.upkeep().await?;
        if upkeep.lease_recovered {
            let lease = publisher.lease().id;
            let changed = self
                .alloc
                .reclaim(lease)
                .await
                .map_err(ResolveError::Reclaim)?;
            for (labels, id) in changed {
                self.held.insert(labels, id);
            }
        }
        if upkeep.lead_changed() {
            self.published.services.clear();
        }
        Ok(Some(upkeep))
    }

    /// Stops for good (an external workload leaving the mesh): its lease revoked, so that its node,
    /// endpoints and identity claims go at once (see [`Publisher::close`]).
    pub async fn close(mut self) -> Result<(), ResolveError> {
        match self.publisher.take() {
            Some(publisher) => Ok(publisher.close().await?),
            None => Ok(()),
        }
    }

    /// Stops publishing: the lead is given up, this agent's own keys expire with its lease (see
    /// [`Publisher::leave`]).
    pub async fn leave(mut self) -> Result<(), ResolveError> {
        match self.publisher.take() {
            Some(publisher) => Ok(publisher.leave().await?),
            None => Ok(()),
        }
    }
}

/// Resolves `local` from identities known from before, with no allocator (this cluster's etcd has not
/// answered yet): a pod whose labels have no known identity is left out until one can be allocated;
/// nothing is published.
pub fn resolve_known(
    local: Arc<LocalState>,
    known: &BTreeMap<LabelSet, Identity>,
    cluster: &ClusterName,
    cluster_id: ClusterId,
) -> ResolvedLocal {
    let mut resolved = ResolvedLocal {
        local: local.clone(),
        ..ResolvedLocal::default()
    };
    let mut used: BTreeMap<Identity, LabelSet> = BTreeMap::new();
    let scheduled = local
        .pods
        .values()
        .filter(|p| p.node.is_some() && !p.ips.is_empty());
    for pod in scheduled {
        let labels = identity_labels(pod, cluster);
        let Some(id) = label_set(&labels).ok().and_then(|set| {
            let id = *known.get(&set)?;
            used.insert(id, set);
            Some(id)
        }) else {
            continue;
        };
        resolved.pods.insert(pod.pod.clone(), id);
        resolved.identities.insert(id, labels);
    }
    resolved.state = mesh_view(&local, &resolved.pods, &used, cluster_id);
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::LocalPod;
    use crate::resolve::MemoryAllocator;
    use std::net::Ipv4Addr;

    fn pod(name: &str, app: &str, last: u8) -> LocalPod {
        LocalPod {
            pod: ObjectRef {
                namespace: "default".into(),
                name: name.into(),
            },
            node: Some("n1".into()),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![Ipv4Addr::new(100, 64, 1, last).into()],
            service_account: "default".into(),
            ready: true,
            terminating: false,
        }
    }

    fn local(pods: &[LocalPod]) -> Arc<LocalState> {
        let mut state = LocalState::default();
        for p in pods {
            state.pods.insert(p.pod.clone(), p.clone());
        }
        Arc::new(state)
    }

    #[tokio::test]
    async fn pods_with_the_same_labels_share_an_identity_and_unused_ones_are_released() {
        let c = ClusterId::new(2).unwrap();
        let mut resolver = Resolver::new(
            ClusterName::new("cluster2").unwrap(),
            c,
            MemoryAllocator::new(c),
        );
        let mut unscheduled = pod("u", "web", 9);
        unscheduled.node = None;
        let mut bad = pod("bad", "x;y", 8);
        bad.labels.insert("k".into(), "a;b".into());
        let first = resolver
            .resolve(local(&[
                pod("a", "web", 1),
                pod("b", "web", 2),
                pod("c", "db", 3),
                unscheduled,
                bad,
            ]))
            .await
            .unwrap();
        assert_eq!(first.pods.len(), 3);
        assert_eq!(first.skipped.len(), 1);
        assert_eq!(first.identities.len(), 2);
        let web = first.pods.values().next().copied().unwrap();
        assert_eq!(web.cluster(), Some(c));
        assert_eq!(first.state.endpoints.len(), 3);
        assert_eq!(first.state.identities.len(), 2);
        let second = resolver
            .resolve(local(&[pod("a", "web", 1)]))
            .await
            .unwrap();
        assert_eq!(second.identities.keys().collect::<Vec<_>>(), vec![&web]);
        assert_eq!(resolver.alloc.len(), 1, "db's identity was released");
    }

    #[tokio::test]
    async fn known_identities_resolve_without_an_allocator_and_unknown_pods_wait() {
        let cluster = ClusterName::new("cluster1").unwrap();
        let id = ClusterId::new(1).unwrap();
        let mut resolver = Resolver::new(cluster.clone(), id, MemoryAllocator::new(id));
        let two = local(&[pod("a", "x-wing", 10), pod("b", "rebel", 11)]);
        let online = resolver.resolve(two.clone()).await.unwrap();
        let known: BTreeMap<LabelSet, Identity> = online
            .state
            .identities
            .iter()
            .map(|(id, labels)| (labels.clone(), *id))
            .collect();
        assert_eq!(resolve_known(two.clone(), &known, &cluster, id), online);

        let three = local(&[
            pod("a", "x-wing", 10),
            pod("b", "rebel", 11),
            pod("c", "new", 12),
        ]);
        let offline = resolve_known(three, &known, &cluster, id);
        assert_eq!(
            offline.pods.len(),
            2,
            "the pod with new labels waits for the allocator"
        );
        assert_eq!(offline.identities.len(), 2);
    }
}
