//! The Kubernetes local source: one kube-runtime watcher per kind, their events applied to one
//! [`LocalState`] (see `kube_mirror`) that is published whole once every kind has listed, and a probe
//! of the API server beside them.
//!
//! What is watched, each cluster-wide, and why:
//! - Nodes: every node's address is a tunnel peer and its pod CIDRs are routes; this node's own Node
//!   object gives its pod CIDRs (`spec.podCIDRs`).
//! - Pods: every pod of the cluster. Cilium's agent watches only its own node's pods
//!   (`spec.nodeName=<node>`) because it learns the rest of its cluster's endpoints from
//!   CiliumEndpoints or, in kvstore mode, from its cluster's etcd. meshpath's agent builds the ipcache
//!   entries of its cluster's other nodes — the identities this node's policy is enforced against, and
//!   the names `meshpath observe` shows — from the pods themselves, so it needs all of them. Watching
//!   only this node's pods comes with reading those entries from the cluster's etcd instead.
//! - Services and EndpointSlices: a pod on this node may call any service, whose backends may be
//!   anywhere.
//! - NetworkPolicies and CiliumNetworkPolicies of every namespace, and CiliumClusterwideNetworkPolicies:
//!   a policy selects this node's pods whatever namespace it is in, and its peers anywhere.
//!
//! `deploy/rbac.yaml` grants exactly `list` and `watch` on these resources (a test holds them to
//! [`Kind::ALL`]); nothing here gets, creates or changes anything.
//!
//! Objects arrive as raw JSON and are decoded here one by one, as the YAML source decodes its
//! documents: an object that does not decode is that object's error, never its kind's whole list
//! (decoding into the typed object inside the watcher would fail the list, and retry it forever).
//!
//! A lost API server: the watchers back off (kube's default, 0.8 s doubling to 30 s) and resume from
//! their last resourceVersion, or re-list after a 410 Gone; the state in force stays — nothing is
//! published until every kind has listed once, and no failure takes an object away — and the status
//! says so ([`SourceStatus::lost`]).

use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicResourceScope;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::{Deserialize, Deserializer, Error as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::TranslateError;
use super::kind::Kind;
use super::kube_mirror::{Change, Decoded, Mirror, Undecodable, WatchFailure};
use super::model::LocalState;
use super::object::ObjectKey;
use super::status::{LocalSourceHandle, SourceStatus};
use super::yaml::decode_value;

/// Events handled between two publications, at most.
const BATCH: usize = 1024;

/// How long one probe of the API server may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
pub struct KubeSourceOptions {
    /// How often the API server is probed (`GET /version`), as Cilium's agent probes its own.
    pub probe_every: Duration,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        KubeSourceOptions {
            probe_every: Duration::from_secs(10),
        }
    }
}

/// Why there is no client for the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error(
        "no in-cluster configuration (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, and the \
         service account under /var/run/secrets/kubernetes.io/serviceaccount): {0}; outside a pod, \
         give a kubeconfig"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("a client of {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
}

/// A client of the API server `kubeconfig` names (its current context, or `context`), or, without
/// one, of the pod's own service account; with the server's URL.
pub async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<(Client, String), KubeClientError> {
    let config = match kubeconfig {
        None => kube::Config::incluster().map_err(KubeClientError::InCluster)?,
        Some(path) => {
            let failed = |source| KubeClientError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(failed)?;
            let options = kube::config::KubeConfigOptions {
                context: context.map(str::to_owned),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(failed)?
        }
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| KubeClientError::Client {
        url: url.clone(),
        source,
    })?;
    Ok((client, url))
}

pub struct KubeSource;

impl KubeSource {
    /// Watches every kind through `client` until `cancel`. Nothing is published until every kind has
    /// listed once (`status.synced`), so a consumer never sees a partial cluster.
    pub fn spawn(client: Client, cancel: CancellationToken) -> LocalSourceHandle {
        Self::spawn_with(client, KubeSourceOptions::default(), cancel)
    }

    pub fn spawn_with(
        client: Client,
        options: KubeSourceOptions,
        cancel: CancellationToken,
    ) -> LocalSourceHandle {
        let mut streams = watchers(&client);
        streams.push(probes(client, options.probe_every));
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

/// A kind, as a type: what [`Raw`] is an object of.
pub trait KindMarker: Clone + Debug + Send + Sync + 'static {
    const KIND: Kind;
}

/// The watched kinds: a marker type each, the list of them, and one watcher each.
macro_rules! watched {
    ($($marker:ident => $kind:ident),* $(,)?) => {
        $(
            #[derive(Clone, Debug)]
            pub struct $marker;
            impl KindMarker for $marker {
                const KIND: Kind = Kind::$kind;
            }
        )*

        /// The kinds the source watches (every one of [`Kind::ALL`]; `deploy/rbac.yaml` grants these).
        pub const WATCHED: &[Kind] = &[$(Kind::$kind),*];

        fn watchers(client: &Client) -> Vec<BoxStream<'static, Change>> {
            vec![$(changes::<$marker>(client)),*]
        }
    };
}

watched! {
    NodeKind => Node,
    PodKind => Pod,
    ServiceKind => Service,
    EndpointSliceKind => EndpointSlice,
    NetworkPolicyKind => NetworkPolicy,
    CiliumNetworkPolicyKind => CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicyKind => CiliumClusterwideNetworkPolicy,
}

/// An object of kind `M` as the API server sent it: its metadata (which the watcher reads for the
/// resourceVersion) and the whole object, decoded later by the source itself.
#[derive(Clone, Debug)]
pub struct Raw<M> {
    metadata: ObjectMeta,
    object: serde_json::Value,
    kind: PhantomData<M>,
}

impl<'de, M> Deserialize<'de> for Raw<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = serde_json::Value::deserialize(deserializer)?;
        let metadata = match object.get("metadata") {
            Some(meta) => ObjectMeta::deserialize(meta).map_err(D::Error::custom)?,
            None => ObjectMeta::default(),
        };
        Ok(Raw {
            metadata,
            object,
            kind: PhantomData,
        })
    }
}

impl<M: KindMarker> kube::Resource for Raw<M> {
    type DynamicType = ();
    type Scope = DynamicResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        M::KIND.name().into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        M::KIND.group().into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        M::KIND.version().into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        M::KIND.plural().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<M: KindMarker> Raw<M> {
    fn key(&self) -> Option<ObjectKey> {
        let name = self.metadata.name.clone()?;
        Some(ObjectKey::new(
            M::KIND,
            self.metadata.namespace.as_deref(),
            name,
        ))
    }

    fn decode(self) -> Decoded {
        decode_value(M::KIND, &self.object).map_err(|problem| {
            let key = self.key();
            let object = match &key {
                Some(key) => key.to_string(),
                None => format!("{} without a name", M::KIND),
            };
            Box::new(Undecodable {
                key,
                error: TranslateError {
                    object,
                    field: String::new(),
                    problem: format!("does not decode as a {}: {problem}", M::KIND),
                },
            })
        })
    }
}

/// A watcher on every object of kind `M`, its events as changes; a completed list hands on the kind's
/// whole content.
fn changes<M: KindMarker>(client: &Client) -> BoxStream<'static, Change> {
    let api = Api::<Raw<M>>::all(client.clone());
    let mut listing: Vec<Decoded> = Vec::new();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |event| match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                Change::Nothing
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing.push(o.decode());
                Change::Nothing
            }
            Ok(watcher::Event::InitDone) => Change::Listed(M::KIND, std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(o)) => Change::Apply(M::KIND, o.decode()),
            Ok(watcher::Event::Delete(o)) => Change::Delete(M::KIND, o.key()),
            Err(e) => Change::Failed(M::KIND, failure(&e)),
        })
        .boxed()
}

/// What a watcher's error means.
fn failure(error: &watcher::Error) -> WatchFailure {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404 => {
            return WatchFailure::NotServed
        }
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s,
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => return WatchFailure::Unreachable(chain(e)),
        watcher::Error::NoResourceVersion => return WatchFailure::Unreachable(error.to_string()),
    };
    let problem = format!("{} {}: {}", status.code, status.reason, status.message);
    match status.code {
        410 => WatchFailure::Expired,
        408 | 429 => WatchFailure::Unreachable(problem),
        400..=499 => WatchFailure::Refused(problem),
        _ => WatchFailure::Unreachable(problem),
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// The API server's version every `every`, the first at once.
fn probes(client: Client, every: Duration) -> BoxStream<'static, Change> {
    futures::stream::unfold((client, true), move |(client, first)| async move {
        if !first {
            tokio::time::sleep(every).await;
        }
        let started = Instant::now();
        let result = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(info)) => Ok(info.git_version),
            Ok(Err(kube::Error::Api(s))) => Err(format!("{} {}: {}", s.code, s.reason, s.message)),
            Ok(Err(e)) => Err(chain(&e)),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        Some((Change::Probe { started, result }, (client, false)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_object_keeps_everything_and_reads_its_metadata() {
        let value = serde_json::json!({"metadata": {"name": "web", "namespace": "shop",
            "resourceVersion": "42"}, "spec": {"ports": [{"port": 80}]}});
        let raw: Raw<ServiceKind> = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            kube::Resource::meta(&raw).resource_version.as_deref(),
            Some("42")
        );
        assert_eq!(raw.object, value);
        assert_eq!(
            raw.key().map(|k| k.to_string()).as_deref(),
            Some("Service shop/web")
        );
        assert_eq!(
            <Raw<EndpointSliceKind> as kube::Resource>::url_path(&(), None),
            "/apis/discovery.k8s.io/v1/endpointslices"
        );
        assert_eq!(
            <Raw<CiliumClusterwideNetworkPolicyKind> as kube::Resource>::url_path(&(), None),
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies"
        );
    }

    #[test]
    fn an_object_that_does_not_decode_names_itself() {
        let value = serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
            "spec": {"ports": "eighty"}});
        let raw: Raw<ServiceKind> = serde_json::from_value(value).unwrap();
        let error = raw.decode().unwrap_err();
        assert_eq!(
            error.key.map(|k| k.to_string()).as_deref(),
            Some("Service shop/web")
        );
        assert!(
            error
                .error
                .to_string()
                .starts_with("Service shop/web: does not decode as a Service: "),
            "{}",
            error.error
        );
    }

    #[test]
    fn every_kind_is_watched() {
        let mut watched = WATCHED.to_vec();
        watched.sort();
        assert_eq!(watched, Kind::ALL);
    }

    /// `deploy/rbac.yaml` grants exactly `list` and `watch` on each watched kind's resource, nothing
    /// else, to the service account the DaemonSet runs as.
    #[test]
    fn the_cluster_role_grants_exactly_what_the_source_watches() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml"));
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(text).unwrap();
        let of_kind = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap();
        let mut granted = std::collections::BTreeSet::new();
        for rule in of_kind("ClusterRole")["rules"].as_array().unwrap() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(verbs, ["list", "watch"], "{rule}");
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    let pair = (
                        group.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                    );
                    assert!(granted.insert(pair), "granted twice: {rule}");
                }
            }
        }
        let watched: std::collections::BTreeSet<(String, String)> = WATCHED
            .iter()
            .map(|k| (k.group().to_string(), k.plural().to_string()))
            .collect();
        assert_eq!(granted, watched);
        let binding = of_kind("ClusterRoleBinding");
        assert_eq!(
            binding["roleRef"]["name"],
            of_kind("ClusterRole")["metadata"]["name"]
        );
        let account = of_kind("ServiceAccount");
        assert_eq!(binding["subjects"][0]["name"], account["metadata"]["name"]);
        assert_eq!(
            binding["subjects"][0]["namespace"],
            account["metadata"]["namespace"]
        );
        let daemonset = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/daemonset.yaml"
        ));
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(daemonset).unwrap();
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        assert_eq!(
            ds["metadata"]["namespace"],
            account["metadata"]["namespace"]
        );
        assert_eq!(
            ds["spec"]["template"]["spec"]["serviceAccountName"],
            account["metadata"]["name"]
        );
    }

    #[test]
    fn errors_are_classified_by_what_the_server_said() {
        let status = |code: u16, reason: &str| {
            Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "m".into(),
                ..Default::default()
            })
        };
        let list = |code, reason| {
            watcher::Error::InitialListFailed(kube::Error::Api(status(code, reason)))
        };
        assert_eq!(failure(&list(404, "NotFound")), WatchFailure::NotServed);
        assert_eq!(
            failure(&list(403, "Forbidden")),
            WatchFailure::Refused("403 Forbidden: m".into())
        );
        assert_eq!(
            failure(&watcher::Error::WatchError(status(410, "Expired"))),
            WatchFailure::Expired
        );
        assert!(matches!(
            failure(&list(503, "ServiceUnavailable")),
            WatchFailure::Unreachable(_)
        ));
        let watch_404 = watcher::Error::WatchError(status(404, "NotFound"));
        assert!(matches!(failure(&watch_404), WatchFailure::Refused(_)));
    }
}
