//! The Kubernetes source's picture of the cluster: the watchers' events applied one object at a time
//! to a [`LocalState`], the kinds that have listed, and what is wrong — objects that do not translate,
//! watches that fail, the API server's answer to the last probe.
//!
//! A watch failure is kept until it is known to be over: a failure the API server itself answered
//! (403 Forbidden, 400) until that kind's next event; a failure to reach it (a refused connection, a
//! timeout, 5xx) also when a probe of the API server that began after it succeeds, since a watch that
//! resumes says nothing until something changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use super::error::TranslateError;
use super::kind::Kind;
use super::model::LocalState;
use super::object::{KubeObject, LocalObject, ObjectKey};
use super::status::{ApiServerHealth, SourceError, SourceStatus};

/// An object as the watcher delivered it: decoded, or why it does not decode (with its key, if its
/// metadata names it).
pub(crate) type Decoded = Result<KubeObject, Box<Undecodable>>;

#[derive(Clone, Debug)]
pub(crate) struct Undecodable {
    pub key: Option<ObjectKey>,
    pub error: TranslateError,
}

/// What one watcher or probe event means for the picture.
pub(crate) enum Change {
    Apply(Kind, Decoded),
    Delete(Kind, Option<ObjectKey>),
    /// A (re-)list completed: the kind's complete content.
    Listed(Kind, Vec<Decoded>),
    Failed(Kind, WatchFailure),
    /// A probe of the API server, begun at `started`: its version, or why it did not answer.
    Probe {
        started: Instant,
        result: Result<String, String>,
    },
    /// An event with nothing to do yet (the start of a list, a listed object before the list ends).
    Nothing,
}

/// Why a watch failed, as far as it matters here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WatchFailure {
    /// 404 on the list: the API server does not serve the kind (its CRD is not installed).
    NotServed,
    /// 410 Gone: the resourceVersion is too old; the watcher re-lists, nothing is wrong.
    Expired,
    /// The API server answered with an error (403 Forbidden, 400 Bad Request, …).
    Refused(String),
    /// The API server could not be reached or did not manage (connection, timeout, 5xx, 429).
    Unreachable(String),
}

struct Failing {
    problem: String,
    /// The server's own answer: over only when the kind works again.
    answered: bool,
    at: Instant,
}

/// The cluster as the watchers tell it, and what is wrong with it.
#[derive(Default)]
pub(crate) struct Mirror {
    pub state: LocalState,
    /// Objects whose current version cannot be translated; their last good version stays.
    untranslatable: BTreeMap<ObjectKey, TranslateError>,
    failing: BTreeMap<Kind, Failing>,
    failures: BTreeMap<Kind, u64>,
    not_served: BTreeSet<Kind>,
    listed: BTreeSet<Kind>,
    api_server: Option<ApiServerHealth>,
    /// The state changed since it was last published.
    pub changed: bool,
}

impl Mirror {
    pub fn synced(&self) -> bool {
        self.listed.len() == Kind::ALL.len()
    }

    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Apply(kind, object) => {
                self.working(kind);
                self.put(object);
            }
            Change::Delete(kind, key) => {
                self.working(kind);
                match key {
                    Some(key) => {
                        self.untranslatable.remove(&key);
                        self.set(&key, None);
                    }
                    None => tracing::warn!(kind = %kind, "deleted object without a name"),
                }
            }
            Change::Listed(kind, objects) => {
                self.not_served.remove(&kind);
                self.relist(kind, objects);
            }
            Change::Failed(kind, failure) => self.failed(kind, failure),
            Change::Probe { started, result } => self.probed(started, result),
            Change::Nothing => {}
        }
    }

    /// The kind delivered an event: whatever failed of it works again.
    fn working(&mut self, kind: Kind) {
        if self.failing.remove(&kind).is_some() {
            tracing::info!(resource = kind.resource(), "watch works again");
        }
    }

    fn failed(&mut self, kind: Kind, failure: WatchFailure) {
        let resource = kind.resource();
        let (problem, answered) = match failure {
            WatchFailure::Expired => {
                tracing::info!(
                    resource,
                    "resourceVersion expired (410 Gone): listing again"
                );
                return;
            }
            WatchFailure::NotServed => {
                // Without the CRD there are no such objects; the list is retried with backoff and
                // takes over once the CRD is installed.
                if self.not_served.insert(kind) {
                    tracing::info!(resource, "not served by the API server (404): none assumed");
                }
                self.relist(kind, Vec::new());
                return;
            }
            WatchFailure::Refused(problem) => (problem, true),
            WatchFailure::Unreachable(problem) => (problem, false),
        };
        tracing::warn!(
            resource,
            "watch failed, retrying with backoff; the last state stays: {problem}"
        );
        *self.failures.entry(kind).or_default() += 1;
        self.failing.insert(
            kind,
            Failing {
                problem,
                answered,
                at: Instant::now(),
            },
        );
    }

    fn probed(&mut self, started: Instant, result: Result<String, String>) {
        let now = SystemTime::now();
        let reachable = result.is_ok();
        let since = match &self.api_server {
            Some(last) if last.reachable == reachable => last.since,
            _ => now,
        };
        if result.is_ok() {
            self.failing.retain(|_, f| f.answered || f.at > started);
        }
        let (version, error) = match result {
            Ok(version) => (Some(version), None),
            Err(error) => {
                let version = self.api_server.as_ref().and_then(|a| a.version.clone());
                (version, Some(error))
            }
        };
        self.api_server = Some(ApiServerHealth {
            reachable,
            version,
            error,
            since,
            checked_at: now,
        });
    }

    fn put(&mut self, object: Decoded) {
        let (key, error) = match object {
            Ok(object) => match object.translate() {
                Ok((key, local)) => {
                    self.untranslatable.remove(&key);
                    return self.set(&key, local);
                }
                Err(error) => (object.key().ok(), error),
            },
            Err(undecodable) => (undecodable.key, undecodable.error),
        };
        match key {
            Some(key) => drop(self.untranslatable.insert(key, error)),
            None => tracing::warn!("object without a name: {error}"),
        }
    }

    /// The kind's content is now exactly `objects`: anything else of that kind is gone.
    fn relist(&mut self, kind: Kind, objects: Vec<Decoded>) {
        let present: BTreeSet<ObjectKey> = objects
            .iter()
            .filter_map(|o| match o {
                Ok(object) => object.key().ok(),
                Err(u) => u.key.clone(),
            })
            .collect();
        for key in keys_of(&self.state, kind) {
            if !present.contains(&key) {
                self.set(&key, None);
            }
        }
        self.untranslatable
            .retain(|key, _| key.kind() != kind || present.contains(key));
        for object in objects {
            self.put(object);
        }
        self.working(kind);
        self.listed.insert(kind);
    }

    fn set(&mut self, key: &ObjectKey, object: Option<LocalObject>) {
        if !self.state.holds(key, object.as_ref()) {
            self.state.set(key, object);
            self.changed = true;
        }
    }

    pub fn status(&self) -> SourceStatus {
        let watches = self.failing.iter().map(|(kind, f)| SourceError::Watch {
            resource: kind.resource(),
            problem: f.problem.clone(),
        });
        let objects = self
            .untranslatable
            .values()
            .cloned()
            .map(SourceError::Object);
        SourceStatus {
            synced: self.synced(),
            errors: watches.chain(objects).collect(),
            api_server: self.api_server.clone(),
            not_served: self.not_served.iter().map(|k| k.resource()).collect(),
            watch_failures: self
                .failures
                .iter()
                .map(|(k, n)| (k.resource(), *n))
                .collect(),
        }
    }
}

fn keys_of(state: &LocalState, kind: Kind) -> Vec<ObjectKey> {
    match kind {
        Kind::Node => state.nodes.keys().cloned().map(ObjectKey::Node).collect(),
        Kind::Pod => state.pods.keys().cloned().map(ObjectKey::Pod).collect(),
        Kind::Service => state
            .services
            .keys()
            .cloned()
            .map(ObjectKey::Service)
            .collect(),
        Kind::EndpointSlice => state
            .endpoint_slices
            .keys()
            .cloned()
            .map(ObjectKey::EndpointSlice)
            .collect(),
        Kind::NetworkPolicy | Kind::CiliumNetworkPolicy | Kind::CiliumClusterwideNetworkPolicy => {
            state
                .policies
                .keys()
                .map(|p| ObjectKey::Policy(p.clone()))
                .filter(|k| k.kind() == kind)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
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

    fn key(i: u8) -> Option<ObjectKey> {
        pod(i, 0, false).key().ok()
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
        Fail(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u8..3, any::<bool>()).prop_map(|(i, v, h)| Op::Apply(i, v, h)),
            (0u8..6).prop_map(Op::Delete),
            prop::collection::vec((0u8..6, 0u8..3), 0..4).prop_map(Op::Relist),
            any::<bool>().prop_map(Op::Fail),
        ]
    }

    proptest! {
        /// Whatever the events — failures among them — the mirrored pods are what translating the
        /// cluster's current pods from scratch gives: a failure never takes anything away.
        #[test]
        fn mirror_equals_a_fresh_translation(ops in prop::collection::vec(op(), 0..24)) {
            let mut mirror = Mirror::default();
            let mut cluster: BTreeMap<u8, (u8, bool)> = BTreeMap::new();
            let mut last = LocalState::default();
            for op in ops {
                match op {
                    Op::Apply(i, v, h) => {
                        cluster.insert(i, (v, h));
                        mirror.apply(Change::Apply(Kind::Pod, Ok(pod(i, v, h))));
                    }
                    Op::Delete(i) => {
                        cluster.remove(&i);
                        mirror.apply(Change::Delete(Kind::Pod, key(i)));
                    }
                    Op::Relist(list) => {
                        cluster = list.iter().map(|&(i, v)| (i, (v, false))).collect();
                        let objects = cluster.iter().map(|(&i, &(v, h))| Ok(pod(i, v, h))).collect();
                        mirror.apply(Change::Listed(Kind::Pod, objects));
                    }
                    Op::Fail(answered) => {
                        let failure = match answered {
                            true => WatchFailure::Refused("403 Forbidden".into()),
                            false => WatchFailure::Unreachable("connection refused".into()),
                        };
                        mirror.apply(Change::Failed(Kind::Pod, failure));
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

    fn listed_all(mirror: &mut Mirror) {
        for kind in Kind::ALL {
            mirror.apply(Change::Listed(kind, vec![]));
        }
    }

    #[test]
    fn nothing_is_synced_until_every_kind_listed() {
        let mut mirror = Mirror::default();
        for kind in &Kind::ALL[..6] {
            mirror.apply(Change::Listed(*kind, vec![]));
            assert!(!mirror.synced());
        }
        mirror.apply(Change::Failed(
            Kind::CiliumClusterwideNetworkPolicy,
            WatchFailure::NotServed,
        ));
        let status = mirror.status();
        assert!(
            mirror.synced() && status.synced,
            "a kind not served lists as none"
        );
        assert_eq!(
            status.not_served,
            ["ciliumclusterwidenetworkpolicies.cilium.io"]
        );
        assert_eq!(status.lost(), None, "a CRD not installed is no failure");
    }

    fn probe(mirror: &mut Mirror, started: Instant, ok: bool) {
        let result = match ok {
            true => Ok("v1.37.0".to_string()),
            false => Err("connection refused".to_string()),
        };
        mirror.apply(Change::Probe { started, result });
    }

    #[test]
    fn a_lost_connection_is_over_when_a_later_probe_answers() {
        let mut mirror = Mirror::default();
        listed_all(&mut mirror);
        let before = Instant::now();
        probe(&mut mirror, before, true);
        assert_eq!(mirror.status().lost(), None);
        let unreachable = WatchFailure::Unreachable("connection refused".into());
        mirror.apply(Change::Failed(Kind::Pod, unreachable));
        probe(&mut mirror, before, true);
        let lost = mirror
            .status()
            .lost()
            .expect("a probe begun before the failure says nothing");
        assert!(lost.contains("watching pods: connection refused"), "{lost}");
        probe(&mut mirror, Instant::now(), false);
        let status = mirror.status();
        assert!(
            status.lost().unwrap().contains("API server"),
            "{:?}",
            status.lost()
        );
        assert_eq!(status.watch_failures, [("pods", 1)]);
        probe(&mut mirror, Instant::now(), true);
        assert_eq!(
            mirror.status().lost(),
            None,
            "reachable again, the watch resumes"
        );
    }

    #[test]
    fn a_refusal_is_over_only_when_its_kind_works_again() {
        let mut mirror = Mirror::default();
        listed_all(&mut mirror);
        let forbidden = "403 Forbidden: pods is forbidden".to_string();
        mirror.apply(Change::Failed(Kind::Pod, WatchFailure::Refused(forbidden)));
        probe(&mut mirror, Instant::now(), true);
        assert!(mirror.status().lost().unwrap().contains("forbidden"));
        mirror.apply(Change::Failed(Kind::Pod, WatchFailure::Expired));
        assert_eq!(
            mirror.status().watch_failures,
            [("pods", 1)],
            "410 is no failure"
        );
        mirror.apply(Change::Listed(Kind::Pod, vec![]));
        assert_eq!(mirror.status().lost(), None);
    }

    #[test]
    fn an_object_that_does_not_decode_is_its_own_error() {
        let mut mirror = Mirror::default();
        mirror.apply(Change::Apply(Kind::Pod, Ok(pod(1, 0, false))));
        let bad = Undecodable {
            key: key(1),
            error: TranslateError {
                object: "Pod default/p1".into(),
                field: String::new(),
                problem: "invalid type".into(),
            },
        };
        mirror.apply(Change::Apply(Kind::Pod, Err(Box::new(bad))));
        assert_eq!(mirror.state.pods.len(), 1, "its last good version stays");
        let errors = mirror.status().errors;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "Pod default/p1: invalid type");
        mirror.apply(Change::Delete(Kind::Pod, key(1)));
        assert!(mirror.state.pods.is_empty() && mirror.status().errors.is_empty());
    }
}
