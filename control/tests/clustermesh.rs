//! ClusterMesh remotes against real etcd servers behind mutual TLS, read as a read-only etcd user.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, Pki};
use meshpath_control::clustermesh::{
    spawn_remote, MeshStatus, RemoteEvent, RemoteLimits, RemoteOptions, RemoteStatus, StatusBoard,
};
use meshpath_control::kvstore::{ClusterConfig, Key, Kind};
use meshpath_control::refusal::{Refusal, RefusalCounts};
use meshpath_control::state::{ClusterState, EndpointInfo, StateEvent};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

fn c2() -> ClusterName {
    ClusterName::new("cluster2").unwrap()
}

fn endpoint(last: u8) -> EndpointInfo {
    EndpointInfo {
        ip: Addr::from(std::net::Ipv4Addr::new(100, 65, 1, last)),
        identity: Identity::new(0x2_0000 + 300 + u32::from(last)).unwrap(),
        host_ip: Some(Addr::from(std::net::Ipv4Addr::new(198, 18, 2, 1))),
        namespace: "ns".into(),
        pod_name: format!("pod-{last}"),
    }
}

async fn put(etcd: &Etcd, key: impl ToString, value: impl Into<Vec<u8>>) {
    let mut client = etcd.client("root").await.unwrap();
    client
        .put(key.to_string(), value.into(), None)
        .await
        .unwrap();
}

async fn delete(etcd: &Etcd, key: impl ToString) {
    let mut client = etcd.client("root").await.unwrap();
    client.delete(key.to_string(), None).await.unwrap();
}

async fn put_endpoint(etcd: &Etcd, ep: &EndpointInfo) {
    put(
        etcd,
        Key::Endpoint(ep.ip.ip()),
        serde_json::to_vec(&ep.to_kvstore()).unwrap(),
    )
    .await;
}

/// What a publisher writes around its state: cluster-config and the four canaries.
async fn announce(etcd: &Etcd, id: u8) {
    put(
        etcd,
        Key::ClusterConfig(c2()),
        serde_json::to_vec(&ClusterConfig::new(id)).unwrap(),
    )
    .await;
    for kind in Kind::ALL {
        put(
            etcd,
            Key::SyncCanary {
                cluster: c2(),
                kind,
            },
            "2026-11-25T11:00:00Z",
        )
        .await;
    }
}

struct Watcher {
    events: mpsc::Receiver<RemoteEvent>,
    status: watch::Receiver<MeshStatus>,
    state: ClusterState,
    deletes: usize,
    cancel: CancellationToken,
    handle: Option<meshpath_control::clustermesh::RemoteHandle>,
}

fn options(grace: Duration) -> RemoteOptions {
    RemoteOptions {
        grace,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(1),
        ..Default::default()
    }
}

impl Watcher {
    fn start(
        config: meshpath_control::clustermesh::config::RemoteConfig,
        options: RemoteOptions,
        seed: ClusterState,
    ) -> Watcher {
        let (tx, events) = mpsc::channel(1024);
        let (board, status) = watch::channel(MeshStatus::new());
        let board: StatusBoard = Arc::new(board);
        let cancel = CancellationToken::new();
        let handle = spawn_remote(config, options, seed.clone(), tx, board, cancel.clone());
        Watcher {
            events,
            status,
            state: seed,
            deletes: 0,
            cancel,
            handle: Some(handle),
        }
    }

    fn status(&self) -> RemoteStatus {
        self.status.borrow().get(&c2()).cloned().unwrap_or_default()
    }

    /// Folds events into `state` until `done` holds.
    async fn until(&mut self, what: &str, done: impl Fn(&ClusterState, &RemoteStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.state, &self.status()) {
            tokio::select! {
                Some(ev) = self.events.recv() => {
                    assert_eq!(ev.cluster, c2());
                    if matches!(ev.event, StateEvent::Delete(_)) { self.deletes += 1; }
                    assert!(self.state.apply(ev.event), "every event changes the consumer's state: no duplicates");
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; status:\n{}",
                self.status()
            );
        }
    }

    async fn stop(mut self) -> ClusterState {
        let state = self.handle.take().unwrap().stop().await;
        self.cancel.cancel();
        state
    }
}

fn has(ep: &EndpointInfo) -> impl Fn(&ClusterState, &RemoteStatus) -> bool + '_ {
    move |s, _| s.endpoints.get(&ep.ip).map(|v| &**v) == Some(ep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_endpoint_appears_and_disappears_through_a_read_only_user() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", Some(2)),
        options(Duration::from_secs(30)),
        ClusterState::default(),
    );
    w.until("the listed endpoint", has(&endpoint(1))).await;
    w.until("ready", |_, st| st.ready).await;
    let status = w.status();
    assert_eq!(
        (status.cluster_id, status.endpoints, status.failures),
        (Some(2), 1, 0)
    );
    assert!(
        status
            .to_string()
            .starts_with("cluster2: ready, 0 nodes, 1 endpoints"),
        "{status}"
    );

    put_endpoint(&etcd, &endpoint(2)).await;
    w.until("the watched endpoint", has(&endpoint(2))).await;
    delete(&etcd, Key::Endpoint(endpoint(1).ip.ip())).await;
    w.until("the deletion", |s, _| {
        !s.endpoints.contains_key(&endpoint(1).ip)
    })
    .await;
    assert_eq!(w.state.endpoints.len(), 1);

    // The remote user really is read-only: RBAC is on.
    let mut reader = etcd.client("remote").await.unwrap();
    let err = reader
        .put("cilium/state/ip/v1/default/100.65.1.9", "{}", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_the_wrong_ca_is_refused_with_a_clear_status() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let mut config = etcd.remote_config("cluster2", Some(2));
    let stranger = Pki::new("stranger");
    config.tls.as_mut().unwrap().ca = stranger.ca_pem.clone().into_bytes();
    let mut w = Watcher::start(
        config,
        options(Duration::from_secs(30)),
        ClusterState::default(),
    );
    w.until("a failure", |_, st| st.failures >= 1).await;
    let status = w.status();
    assert!(!status.connected && !status.ready && !status.config_retrieved);
    println!("{status}");
    let error = status.last_error.clone().unwrap();
    assert!(error.contains(&etcd.url), "names the endpoint: {error}");
    assert!(
        error.to_lowercase().contains("certificate"),
        "says why: {error}"
    );
    assert!(w.state.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_claiming_another_cluster_are_rejected_and_counted() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    let node = r#"{"Name":"n1","Cluster":"cluster9","IPAddresses":[],"ClusterID":2}"#;
    put(&etcd, "cilium/state/nodes/v1/cluster2/n1", node).await;
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", None),
        options(Duration::from_secs(30)),
        ClusterState::default(),
    );
    w.until("ready", |_, st| st.ready).await;
    assert_eq!(w.status().refused, refused(&[(Refusal::WrongCluster, 1)]));
    let foreign_identity = "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cluster9;";
    put(
        &etcd,
        "cilium/state/identities/v1/id/131073",
        foreign_identity,
    )
    .await;
    let mut bad_ep = endpoint(3).to_kvstore();
    bad_ep.id = 0x3_0001;
    put(
        &etcd,
        Key::Endpoint(endpoint(3).ip.ip()),
        serde_json::to_vec(&bad_ep).unwrap(),
    )
    .await;
    put_endpoint(&etcd, &endpoint(4)).await;
    w.until("the good endpoint", has(&endpoint(4))).await;
    let counts = [(Refusal::WrongCluster, 2), (Refusal::ReservedIdentity, 1)];
    w.until("the refusals counted", |_, st| {
        st.refused == refused(&counts)
    })
    .await;
    assert!(
        w.state.nodes.is_empty() && w.state.identities.is_empty() && w.state.endpoints.len() == 1
    );
    // The same bad value again is the same refusal: counted once.
    put(&etcd, "cilium/state/nodes/v1/cluster2/n1", node).await;
    put_endpoint(&etcd, &endpoint(5)).await;
    w.until("the next endpoint", has(&endpoint(5))).await;
    assert_eq!(w.status().refused, refused(&counts));
    let text = w.status().to_string();
    assert!(
        text.contains("└ refused: 2 wrong_cluster, 1 reserved_identity"),
        "{text}"
    );
    // A refused key deleted is no longer refused.
    delete(&etcd, "cilium/state/nodes/v1/cluster2/n1").await;
    let counts = [(Refusal::WrongCluster, 1), (Refusal::ReservedIdentity, 1)];
    w.until("the deletion", |_, st| st.refused == refused(&counts))
        .await;
    w.stop().await;
}

fn refused(counts: &[(Refusal, u64)]) -> RefusalCounts {
    counts.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_value_overwritten_by_a_refused_one_is_withdrawn() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", None),
        options(Duration::from_secs(30)),
        ClusterState::default(),
    );
    w.until("the endpoint", has(&endpoint(1))).await;
    let mut reserved = endpoint(1).to_kvstore();
    reserved.id = 6;
    put(
        &etcd,
        Key::Endpoint(endpoint(1).ip.ip()),
        serde_json::to_vec(&reserved).unwrap(),
    )
    .await;
    w.until("the withdrawal", |s, _| s.endpoints.is_empty())
        .await;
    assert_eq!(
        w.status().refused,
        refused(&[(Refusal::ReservedIdentity, 1)])
    );
    // Put right again, it is taken again and no longer refused.
    put_endpoint(&etcd, &endpoint(1)).await;
    w.until("the endpoint back", has(&endpoint(1))).await;
    w.until("no refusal", |_, st| st.refused.is_empty()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_past_its_key_limit_is_degraded_and_keeps_the_first_keys() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    for last in 1..=5 {
        put_endpoint(&etcd, &endpoint(last)).await;
    }
    let limits = RemoteLimits {
        max_keys: 3,
        ..RemoteLimits::default()
    };
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", None),
        RemoteOptions {
            limits,
            ..options(Duration::from_secs(30))
        },
        ClusterState::default(),
    );
    w.until("the first three endpoints", |s, st| {
        s.endpoints.len() == 3 && st.connected && st.synced.all()
    })
    .await;
    // Key order: 100.65.1.1, .2, .3 come first.
    for last in 1..=3 {
        assert!(has(&endpoint(last))(&w.state, &w.status()), "{last}");
    }
    let status = w.status();
    assert!(!status.ready, "degraded is not ready");
    assert_eq!(status.refused, refused(&[(Refusal::OverKeyLimit, 2)]));
    let text = status.to_string();
    assert!(
        text.contains("└ degraded: 2 keys ignored past the key limit (3)"),
        "{text}"
    );
    assert!(text.contains("└ limits: 3/3 keys"), "{text}");
    // While watched, a new key past the limit is ignored too; a replaced one is not new.
    put_endpoint(&etcd, &endpoint(9)).await;
    let mut moved = endpoint(2);
    moved.pod_name = "moved".into();
    put_endpoint(&etcd, &moved).await;
    w.until("the replacement", has(&moved)).await;
    assert_eq!(w.state.endpoints.len(), 3);
    assert_eq!(w.status().refused, refused(&[(Refusal::OverKeyLimit, 3)]));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_announcing_an_unexpected_id_is_refused() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 7).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let config = etcd.remote_config("cluster2", Some(2));
    let mut w = Watcher::start(
        config,
        options(Duration::from_secs(30)),
        ClusterState::default(),
    );
    w.until("a failure", |_, st| st.failures >= 1).await;
    let error = w.status().last_error.unwrap();
    assert!(
        error.contains("announces id 7") && error.contains("expects 2"),
        "{error}"
    );
    assert!(w.state.is_empty());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_changing_its_id_while_watched_is_dropped_after_the_grace_period() {
    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let config = etcd.remote_config("cluster2", None);
    let mut w = Watcher::start(
        config,
        options(Duration::from_millis(1000)),
        ClusterState::default(),
    );
    w.until("the endpoint", has(&endpoint(1))).await;
    let config = serde_json::to_vec(&ClusterConfig::new(9)).unwrap();
    put(&etcd, Key::ClusterConfig(c2()), config).await;
    w.until("the refusal", |_, st| !st.connected && st.failures >= 1)
        .await;
    let error = w.status().last_error.unwrap();
    assert!(error.contains("announces id 9"), "{error}");
    w.until("the withdrawal", |s, _| s.is_empty()).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_remote_is_kept_for_the_grace_period_then_withdrawn_then_resynced() {
    let mut etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    put_endpoint(&etcd, &endpoint(2)).await;
    let grace = Duration::from_millis(1500);
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", Some(2)),
        options(grace),
        ClusterState::default(),
    );
    w.until("both endpoints", |s, st| s.endpoints.len() == 2 && st.ready)
        .await;

    etcd.kill();
    let killed = tokio::time::Instant::now();
    w.until("the disconnect", |_, st| !st.connected).await;
    assert!(!w.status().ready);
    w.until("the withdrawal", |s, _| s.is_empty()).await;
    assert!(
        killed.elapsed() >= grace,
        "kept during the grace period ({:?})",
        killed.elapsed()
    );
    let status = w.status();
    assert!(status.withdrawn_at.is_some());
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("withdrawn after"),
        "{status}"
    );

    etcd.restart().await;
    w.until("the full resync", |s, st| {
        s.endpoints.len() == 2 && st.ready
    })
    .await;
    assert_eq!(
        w.state.endpoints.get(&endpoint(1).ip).map(|v| &**v),
        Some(&endpoint(1))
    );
    assert!(w.status().withdrawn_at.is_none());
    assert_eq!(w.deletes, 2);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_keeps_entries_and_the_resync_leaves_no_leftovers() {
    let mut etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    put_endpoint(&etcd, &endpoint(2)).await;
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", Some(2)),
        options(Duration::from_secs(60)),
        ClusterState::default(),
    );
    w.until("both endpoints", |s, st| s.endpoints.len() == 2 && st.ready)
        .await;

    // Kill and restart: entries stay, nothing is deleted, the resync finds everything again.
    etcd.kill();
    w.until("the disconnect", |_, st| !st.connected).await;
    etcd.restart().await;
    w.until("reconnection", |_, st| st.ready).await;
    assert_eq!((w.deletes, w.state.endpoints.len()), (0, 2));
    assert!(w.status().failures >= 1);

    // Changes made while no watcher runs: a new watcher seeded with the old state must delete the
    // leftover, add the newcomer and repeat nothing.
    let seed = w.stop().await;
    delete(&etcd, Key::Endpoint(endpoint(1).ip.ip())).await;
    put_endpoint(&etcd, &endpoint(3)).await;
    let mut w = Watcher::start(
        etcd.remote_config("cluster2", Some(2)),
        options(Duration::from_secs(60)),
        seed,
    );
    w.until("the resync", |s, st| {
        st.ready && s.endpoints.len() == 2 && s.endpoints.contains_key(&endpoint(3).ip)
    })
    .await;
    assert!(!w.state.endpoints.contains_key(&endpoint(1).ip));
    assert_eq!(w.deletes, 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_starts_from_what_was_known_and_its_listing_corrects_it() {
    use meshpath_control::clustermesh::config::MeshConfig;
    use meshpath_control::clustermesh::run_clustermesh_from;
    use meshpath_control::state::Entry;

    let etcd = Etcd::start("cluster2").await;
    announce(&etcd, 2).await;
    put_endpoint(&etcd, &endpoint(1)).await;
    let mut known = ClusterState::default();
    known.upsert(Entry::Endpoint(endpoint(1).into()));
    known.upsert(Entry::Endpoint(endpoint(9).into()));
    let mut config = MeshConfig::default();
    config
        .remotes
        .insert(c2(), etcd.remote_config("cluster2", Some(2)));
    let (_config_tx, config_rx) = watch::channel(config);
    let (tx, mut events) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let mesh = run_clustermesh_from(
        config_rx,
        options(Duration::from_secs(60)),
        [(c2(), known)].into(),
        tx,
        cancel.clone(),
    );
    let mut state = ClusterState::default();
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while state.endpoints.len() != 1
        || state.endpoints.contains_key(&endpoint(9).ip)
        || order.len() < 3
    {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the known entries, then the listing's correction")
            .expect("the mesh runs");
        order.push(matches!(event.event, StateEvent::Upsert(_)));
        state.apply(event.event);
    }
    assert_eq!(order[..2], [true, true], "both known endpoints come first");
    assert_eq!(
        state.endpoints.get(&endpoint(1).ip).map(|v| &**v),
        Some(&endpoint(1)),
        "the one still there stays"
    );
    cancel.cancel();
    let _ = mesh.task.await;
}
