//! A remote's etcd compacted during an outage: the watcher's watch position is gone from the
//! history, so only a full re-list brings it back to the truth. Real etcd behind mutual TLS, reached
//! through a partition the test cuts and restores (stalled connections, as a network partition).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, Partition};
use etcd_client::{CompactionOptions, WatchOptions};
use meshpath_control::clustermesh::{
    spawn_remote, MeshStatus, RemoteEvent, RemoteOptions, RemoteStatus, StatusBoard,
};
use meshpath_control::kvstore::{ClusterConfig, Key, Kind};
use meshpath_control::state::{ClusterState, EndpointInfo, StateEvent};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn c2() -> ClusterName {
    ClusterName::new("cluster2").unwrap()
}

fn endpoint(last: u8, id: u32) -> EndpointInfo {
    EndpointInfo {
        ip: Addr::from(std::net::Ipv4Addr::new(100, 65, 1, last)),
        identity: Identity::new(0x2_0000 + id).unwrap(),
        host_ip: Some(Addr::from(std::net::Ipv4Addr::new(198, 18, 2, 1))),
        namespace: "ns".into(),
        pod_name: format!("pod-{last}"),
    }
}

/// The remote's etcd as its publisher keeps it; returns the revision after the write.
async fn put(etcd: &Etcd, key: impl ToString, value: impl Into<Vec<u8>>) -> i64 {
    let mut client = etcd.client("root").await.unwrap();
    let resp = client
        .put(key.to_string(), value.into(), None)
        .await
        .unwrap();
    resp.header().unwrap().revision()
}

async fn put_endpoint(etcd: &Etcd, ep: &EndpointInfo) -> i64 {
    let value = serde_json::to_vec(&ep.to_kvstore()).unwrap();
    put(etcd, Key::Endpoint(ep.ip.ip()), value).await
}

/// Folds the watcher's events into the state a consumer holds.
struct View {
    events: mpsc::Receiver<RemoteEvent>,
    status: watch::Receiver<MeshStatus>,
    state: ClusterState,
    deletes: usize,
}

impl View {
    fn status(&self) -> RemoteStatus {
        self.status.borrow().get(&c2()).cloned().unwrap_or_default()
    }

    async fn until(&mut self, what: &str, done: impl Fn(&ClusterState, &RemoteStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&self.state, &self.status()) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}: {}",
                self.status()
            );
            // Wake on an event or on a status change, whichever comes first.
            tokio::select! {
                Some(ev) = self.events.recv() => {
                    if matches!(ev.event, StateEvent::Delete(_)) { self.deletes += 1; }
                    assert!(self.state.apply(ev.event), "no duplicate events");
                }
                _ = self.status.changed() => {}
                _ = tokio::time::sleep(left) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_compacted_during_an_outage_is_replaced_by_a_full_relist() {
    let etcd = Etcd::start("cluster2").await;
    let config = serde_json::to_vec(&ClusterConfig::new(2)).unwrap();
    put(&etcd, Key::ClusterConfig(c2()), config).await;
    for kind in Kind::ALL {
        let canary = Key::SyncCanary {
            cluster: c2(),
            kind,
        };
        put(&etcd, canary, "2026-11-25T11:00:00Z").await;
    }
    let (one, two) = (endpoint(1, 301), endpoint(2, 302));
    put_endpoint(&etcd, &one).await;
    put_endpoint(&etcd, &two).await;

    let partition = Partition::start(&etcd.url).await;
    let mut remote = etcd.remote_config("cluster2", Some(2));
    remote.endpoints = vec![partition.url.clone()];
    let options = RemoteOptions {
        grace: Duration::from_secs(120),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..Default::default()
    };
    let (tx, events) = mpsc::channel(1024);
    let (board, status) = watch::channel(MeshStatus::new());
    let board: StatusBoard = Arc::new(board);
    let cancel = CancellationToken::new();
    let handle = spawn_remote(remote, options, ClusterState::default(), tx, board, cancel);
    let mut view = View {
        events,
        status,
        state: ClusterState::default(),
        deletes: 0,
    };
    view.until("both endpoints", |s, st| s.endpoints.len() == 2 && st.ready)
        .await;

    // The outage: the watcher loses its etcd while the remote changes and compacts its history.
    partition.cut();
    view.until("the disconnect", |_, st| !st.connected).await;
    let mut root = etcd.client("root").await.unwrap();
    let seen = root.get("health-probe", None).await.unwrap();
    let seen = seen.header().unwrap().revision();
    root.delete(Key::Endpoint(one.ip.ip()).to_string(), None)
        .await
        .unwrap();
    let moved = endpoint(2, 312);
    put_endpoint(&etcd, &moved).await;
    let three = endpoint(3, 303);
    let last = put_endpoint(&etcd, &three).await;
    root.compact(last, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    // Where the watcher's watch stood is history no more: etcd refuses to watch from it.
    let watch = WatchOptions::new()
        .with_prefix()
        .with_start_revision(seen + 1);
    let mut stream = root.watch("cilium/", Some(watch)).await.unwrap();
    let mut refused = stream.message().await.unwrap().expect("a watch response");
    if refused.created() && !refused.canceled() {
        refused = stream.message().await.unwrap().expect("the cancellation");
    }
    assert!(
        refused.canceled() && refused.compact_revision() > seen,
        "revision {} was compacted: {refused:?}",
        seen + 1
    );

    partition.restore();
    view.until("the re-listed state", |s, st| {
        st.ready
            && s.endpoints.len() == 2
            && s.endpoints.get(&moved.ip).map(|e| &**e) == Some(&moved)
            && s.endpoints.get(&three.ip).map(|e| &**e) == Some(&three)
    })
    .await;
    assert!(!view.state.endpoints.contains_key(&one.ip));
    assert_eq!(
        view.deletes, 1,
        "the endpoint deleted during the outage, once"
    );
    assert!(view.status().failures >= 1);

    // The watch that follows the re-list carries on from the new history.
    let four = endpoint(4, 304);
    put_endpoint(&etcd, &four).await;
    view.until("a change after the re-list", |s, _| {
        s.endpoints.get(&four.ip).map(|e| &**e) == Some(&four)
    })
    .await;
    handle.stop().await;
}
