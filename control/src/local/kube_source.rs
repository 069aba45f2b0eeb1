//! The Kubernetes local source: one kube-runtime watcher per kind, each feeding a reflector store,
//! their events applied to one [`LocalState`] that is published whole once every kind has listed.
//!
//! Events are applied one object at a time, so a pod change costs one translation, not a rebuild;
//! a re-list (after a 410 Gone, for example) replaces that kind's part of the state with the
//! store's content, dropping whatever disappeared meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cilium::CiliumNetworkPolicy;
use super::error::TranslateError;
use super::model::{LocalState, PolicyKind};
use super::object::{KubeObject, LocalObject, ObjectKey};
use super::status::{LocalSourceHandle, SourceError, SourceStatus};

/// Events handled between two publications, at most.
const BATCH: usize = 1024;

/// The kinds watched, by their API resource names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    Nodes,
    Pods,
    Services,
    EndpointSlices,
    NetworkPolicies,
    CiliumNetworkPolicies,
}

impl Watched {
    pub const ALL: [Watched; 6] = [
        Watched::Nodes,
        Watched::Pods,
        Watched::Services,
        Watched::EndpointSlices,
        Watched::NetworkPolicies,
        Watched::CiliumNetworkPolicies,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Watched::Nodes => "nodes",
            Watched::Pods => "pods",
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices.discovery.k8s.io",
            Watched::NetworkPolicies => "networkpolicies.networking.k8s.io",
            Watched::CiliumNetworkPolicies => "ciliumnetworkpolicies.cilium.io",
        }
    }

    fn of(key: &ObjectKey) -> Watched {
        match key {
            ObjectKey::Node(_) => Watched::Nodes,
            ObjectKey::Pod(_) => Watched::Pods,
            ObjectKey::Service(_) => Watched::Services,
            ObjectKey::EndpointSlice(_) => Watched::EndpointSlices,
            ObjectKey::Policy(p) if p.kind == PolicyKind::NetworkPolicy => Watched::NetworkPolicies,
            ObjectKey::Policy(_) => Watched::CiliumNetworkPolicies,
        }
    }
}

/// What one watcher event means for the state.
enum Change {
    Apply(KubeObject),
    Delete(KubeObject),
    /// A (re-)list completed: the kind's complete content.
    Listed(Watched, Vec<KubeObject>),
    Failed(Watched, watcher::Error),
    /// The API server does not serve the kind (a CRD not installed): there are none of it.
    NotServed(Watched),
    /// An event with nothing to do yet (the start of a list, a listed object before the list ends).
    Nothing,
}

pub struct KubeSource;

impl KubeSource {
    /// Watches every kind across all namespaces through `client` until `cancel`. Nothing is
    /// published until every kind has listed once (`status.synced`), so a consumer never sees a
    /// partial cluster.
    pub fn spawn(client: Client, cancel: CancellationToken) -> LocalSourceHandle {
        let streams = vec![
            changes::<Node>(&client, Watched::Nodes, |o| KubeObject::Node(Box::new(o))),
            changes::<Pod>(&client, Watched::Pods, |o| KubeObject::Pod(Box::new(o))),
            changes::<Service>(&client, Watched::Services, |o| {
                KubeObject::Service(Box::new(o))
            }),
            changes::<EndpointSlice>(&client, Watched::EndpointSlices, |o| {
                KubeObject::EndpointSlice(Box::new(o))
            }),
            changes::<NetworkPolicy>(&client, Watched::NetworkPolicies, |o| {
                KubeObject::NetworkPolicy(Box::new(o))
            }),
            changes::<CiliumNetworkPolicy>(&client, Watched::CiliumNetworkPolicies, |o| {
                KubeObject::CiliumNetworkPolicy(Box::new(o))
            }),
        ];
        let (state_tx, state) = watch::channel(Arc::new(LocalState::default()));
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let changes = futures::stream::select_all(streams).ready_chunks(BATCH);
        let task = tokio::spawn(follow(changes, state_tx, status_tx, cancel));
        LocalSourceHandle {
            state,
            status,
            task,
        }
    }
}

/// A watcher on every object of kind `K`, through a reflector store whose content is what a
/// completed list hands on.
fn changes<K>(
    client: &Client,
    watched: Watched,
    wrap: fn(K) -> KubeObject,
) -> BoxStream<'static, Change>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api = Api::<K>::all(client.clone());
    // managedFields are often most of an object's bytes, and the store keeps every object.
    let events = watcher(api, watcher::Config::default()).modify(|o: &mut K| {
        o.meta_mut().managed_fields = None;
    });
    reflector(writer, events)
        .default_backoff()
        .map(move |event| match event {
            Ok(watcher::Event::Apply(o)) => Change::Apply(wrap(o)),
            Ok(watcher::Event::Delete(o)) => Change::Delete(wrap(o)),
            Ok(watcher::Event::InitDone) => {
                let listed = store.state().iter().map(|o| wrap(K::clone(o))).collect();
                Change::Listed(watched, listed)
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Change::Nothing,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.is_not_found() =>
            {
                Change::NotServed(watched)
            }
            Err(e) => Change::Failed(watched, e),
        })
        .boxed()
}

async fn follow(
    mut changes: impl futures::Stream<Item = Vec<Change>> + Unpin,
    state_tx: watch::Sender<Arc<LocalState>>,
    status_tx: watch::Sender<SourceStatus>,
    cancel: CancellationToken,
) {
    let mut mirror = Mirror::default();
    let mut published = false;
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            batch = changes.next() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        for change in batch {
            mirror.apply(change);
        }
        if mirror.synced() && (mirror.changed || !published) {
            // The one full copy per batch: the model is plain maps, shared read-only downstream.
            state_tx.send_replace(Arc::new(mirror.state.clone()));
            mirror.changed = false;
            published = true;
        }
        let status = mirror.status();
        status_tx.send_if_modified(|current| {
            let changed = *current != status;
            if changed {
                *current = status;
            }
            changed
        });
    }
}

/// The cluster as the watchers tell it, and what is wrong with it.
#[derive(Default)]
struct Mirror {
    state: LocalState,
    /// Objects whose current version cannot be translated; their last good version stays.
    untranslatable: BTreeMap<ObjectKey, TranslateError>,
    failing: BTreeMap<Watched, String>,
    listed: BTreeSet<Watched>,
    /// The state changed since it was last published.
    changed: bool,
}

impl Mirror {
    fn synced(&self) -> bool {
        self.listed.len() == Watched::ALL.len()
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Apply(object) => self.put(&object),
            Change::Delete(object) => match object.key() {
                Ok(key) => {
                    self.untranslatable.remove(&key);
                    self.set(&key, None);
                }
                Err(e) => tracing::warn!("deleted object without a name: {e}"),
            },
            Change::Listed(watched, objects) => self.relist(watched, &objects),
            Change::Failed(watched, e) => {
                tracing::warn!(resource = watched.name(), "watch failed, retrying: {e}");
                self.failing.insert(watched, e.to_string());
            }
            Change::NotServed(watched) => {
                // Without the CRD there are no such objects; the list is retried with backoff
                // and takes over once the CRD is installed.
                self.relist(watched, &[]);
                let problem = "not served by the API server (404): none assumed";
                self.failing.insert(watched, problem.to_string());
            }
            Change::Nothing => {}
        }
    }

    fn put(&mut self, object: &KubeObject) {
        match object.translate() {
            Ok((key, local)) => {
                self.failing.remove(&Watched::of(&key));
                self.untranslatable.remove(&key);
                self.set(&key, local);
            }
            Err(e) => match object.key() {
                Ok(key) => drop(self.untranslatable.insert(key, e)),
                Err(e) => tracing::warn!("object without a name: {e}"),
            },
        }
    }

    /// The kind's content is now exactly `objects`: anything else of that kind is gone.
    fn relist(&mut self, watched: Watched, objects: &[KubeObject]) {
        let present: BTreeSet<ObjectKey> = objects.iter().filter_map(|o| o.key().ok()).collect();
        for key in keys_of(&self.state, watched) {
            if !present.contains(&key) {
                self.set(&key, None);
            }
        }
        self.untranslatable
            .retain(|key, _| Watched::of(key) != watched || present.contains(key));
        for object in objects {
            self.put(object);
        }
        self.failing.remove(&watched);
        self.listed.insert(watched);
    }

    fn set(&mut self, key: &ObjectKey, object: Option<LocalObject>) {
        if !self.state.holds(key, object.as_ref()) {
            self.state.set(key, object);
            self.changed = true;
        }
    }

    fn status(&self) -> SourceStatus {
        let watches = self.failing.iter().map(|(w, problem)| SourceError::Watch {
            resource: w.name(),
            problem: problem.clone(),
        });
        let objects = self
            .untranslatable
            .values()
            .cloned()
            .map(SourceError::Object);
        SourceStatus {
            synced: self.synced(),
            errors: watches.chain(objects).collect(),
        }
    }
}

fn keys_of(state: &LocalState, watched: Watched) -> Vec<ObjectKey> {
    match watched {
        Watched::Nodes => state.nodes.keys().cloned().map(ObjectKey::Node).collect(),
        Watched::Pods => state.pods.keys().cloned().map(ObjectKey::Pod).collect(),
        Watched::Services => state
            .services
            .keys()
            .cloned()
            .map(ObjectKey::Service)
            .collect(),
        Watched::EndpointSlices => state
            .endpoint_slices
            .keys()
            .cloned()
            .map(ObjectKey::EndpointSlice)
            .collect(),
        Watched::NetworkPolicies | Watched::CiliumNetworkPolicies => state
            .policies
            .keys()
            .map(|p| ObjectKey::Policy(p.clone()))
            .filter(|k| Watched::of(k) == watched)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod(i: u8, version: u8, host_network: bool) -> KubeObject {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {"v": version.to_string()}},
            "spec": {"containers": [], "hostNetwork": host_network},
            "status": {"podIPs": [{"ip": format!("100.64.1.{i}")}]}
        }))
        .unwrap();
        KubeObject::Pod(Box::new(pod))
    }

    fn fresh(objects: &BTreeMap<u8, (u8, bool)>) -> LocalState {
        let mut state = LocalState::default();
        for (&i, &(v, host)) in objects {
            let (key, object) = pod(i, v, host).translate().unwrap();
            state.set(&key, object);
        }
        state
    }

    #[derive(Clone, Debug)]
    enum Op {
        Apply(u8, u8, bool),
        Delete(u8),
        Relist(Vec<(u8, u8)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u8..3, any::<bool>()).prop_map(|(i, v, h)| Op::Apply(i, v, h)),
            (0u8..6).prop_map(Op::Delete),
            prop::collection::vec((0u8..6, 0u8..3), 0..4).prop_map(Op::Relist),
        ]
    }

    proptest! {
        /// Whatever the events, the mirrored pods are what translating the cluster's current pods
        /// from scratch gives.
        #[test]
        fn mirror_equals_a_fresh_translation(ops in prop::collection::vec(op(), 0..24)) {
            let mut mirror = Mirror::default();
            let mut cluster: BTreeMap<u8, (u8, bool)> = BTreeMap::new();
            let mut last = LocalState::default();
            for op in ops {
                match op {
                    Op::Apply(i, v, h) => {
                        cluster.insert(i, (v, h));
                        mirror.apply(Change::Apply(pod(i, v, h)));
                    }
                    Op::Delete(i) => {
                        cluster.remove(&i);
                        mirror.apply(Change::Delete(pod(i, 0, false)));
                    }
                    Op::Relist(list) => {
                        cluster = list.iter().map(|&(i, v)| (i, (v, false))).collect();
                        let objects = cluster.iter().map(|(&i, &(v, h))| pod(i, v, h)).collect();
                        mirror.apply(Change::Listed(Watched::Pods, objects));
                    }
                }
                let expected = fresh(&cluster);
                prop_assert_eq!(mirror.changed, mirror.state != last, "changed flag");
                prop_assert_eq!(&mirror.state, &expected);
                mirror.changed = false;
                last = expected;
            }
        }
    }

    #[test]
    fn nothing_is_synced_until_every_kind_listed() {
        let mut mirror = Mirror::default();
        for watched in &Watched::ALL[..5] {
            mirror.apply(Change::Listed(*watched, vec![]));
            assert!(!mirror.synced());
        }
        mirror.apply(Change::Listed(Watched::CiliumNetworkPolicies, vec![]));
        assert!(mirror.synced() && mirror.status().synced);
    }
}
