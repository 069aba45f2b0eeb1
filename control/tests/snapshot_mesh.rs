//! The whole control path with real etcd servers behind mutual TLS: cluster2's agent resolves its local
//! state (identities from its etcd) and publishes it; cluster1's agent watches cluster2 as the read-only
//! `remote` user and builds dataplane snapshots into an `ArcSwap`, as the workers would load them.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use common::Etcd;
use meshpath_control::clustermesh::{spawn_remote, MeshStatus, RemoteOptions, StatusBoard};
use meshpath_control::etcd::{self, EtcdTarget};
use meshpath_control::identity_alloc::IdentityAllocator;
use meshpath_control::local::{LocalNode, LocalPod, LocalState, ObjectRef};
use meshpath_control::publish::Publisher;
use meshpath_control::resolve::{MemoryAllocator, Resolver};
use meshpath_control::snapshot::{run_builder, Change, NodeSpec, SnapshotBuilder};
use meshpath_control::state::ClusterState;
use meshpath_control::ClusterName;
use meshpath_dataplane::snapshot::{Capacities, Tables};
use meshpath_dataplane::{Addr, ClusterId, PortId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn c(n: u8) -> ClusterId {
    ClusterId::new(n).unwrap()
}

fn name(n: u8) -> ClusterName {
    ClusterName::new(&format!("cluster{n}")).unwrap()
}

fn obj(pod: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: pod.into(),
    }
}

/// Cluster `n`'s node `n1` (198.18.n.1, pod CIDR 100.(63+n).1.0/24) with these pods on it.
fn local(n: u8, pods: &[(&str, u8)]) -> Arc<LocalState> {
    let mut state = LocalState::default();
    state.nodes.insert(
        "n1".into(),
        LocalNode {
            name: "n1".into(),
            internal_ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, n, 1))],
            pod_cidrs: vec![format!("100.{}.1.0/24", 63 + n)],
            labels: Default::default(),
            wireguard_pub_key: None,
        },
    );
    for (pod, last) in pods {
        state.pods.insert(
            obj(pod),
            LocalPod {
                pod: obj(pod),
                node: Some("n1".into()),
                labels: [("name".to_string(), pod.to_string())].into(),
                ips: vec![IpAddr::V4(Ipv4Addr::new(100, 63 + n, 1, *last))],
                service_account: "default".into(),
                ready: true,
                terminating: false,
            },
        );
    }
    Arc::new(state)
}

fn spec() -> NodeSpec {
    NodeSpec {
        cluster: name(1),
        cluster_id: c(1),
        node: "n1".into(),
        config: meshpath_dataplane::testbed::node_config(),
        capacities: Capacities::default(),
        ports: BTreeMap::from([(obj("x-wing"), (PortId(1), [2, 0, 0, 1, 1, 10]))]),
        local_affinity_threshold: 0.0,
        policy_limits: Default::default(),
        admission: Default::default(),
        segments: Vec::new(),
        external_workload: false,
    }
}

async fn until(swap: &ArcSwap<Tables>, what: &str, done: impl Fn(&Tables) -> bool) {
    let what = format!("a snapshot with {what}");
    meshpath_testkit::until_async(&what, Duration::from_secs(10), || {
        let held = done(&swap.load());
        async move { meshpath_testkit::wait::check(held, "not yet") }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_published_by_cluster2_reaches_cluster1s_snapshot_and_leaves_it() {
    let etcd2 = Etcd::start("cluster2").await;

    // Cluster2's agent: identities from its etcd, its state published under its lease.
    let root = etcd2.pki.material("root");
    let endpoints = [etcd2.url.clone()];
    let target = EtcdTarget {
        endpoints: &endpoints,
        tls: Some(&root),
        connect_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_secs(1),
    };
    let mut publisher = Publisher::connect(&target, name(2), c(2), "n1", Duration::from_secs(10))
        .await
        .unwrap();
    let kv = etcd::kv_client(&etcd::connect(&target).await.unwrap());
    let alloc = IdentityAllocator::new(kv, c(2), "n1", publisher.lease().id);
    // The only agent of cluster2 leads it: the cluster-config and canaries follow its first round.
    assert!(publisher.upkeep().await.unwrap().leading);
    let mut cluster2 = Resolver::new(name(2), c(2), alloc).with_publisher(publisher);
    let rebel = Addr::from(Ipv4Addr::new(100, 65, 1, 10));
    let published = cluster2
        .resolve(local(2, &[("rebel-base", 10)]))
        .await
        .unwrap();
    let rebel_id = published.pods[&obj("rebel-base")];
    assert_eq!(rebel_id.cluster(), Some(c(2)));

    // Cluster1's agent: its own state resolved in memory, cluster2 watched read-only.
    let mut cluster1 = Resolver::new(name(1), c(1), MemoryAllocator::new(c(1)));
    let resolved = cluster1.resolve(local(1, &[("x-wing", 10)])).await.unwrap();
    let builder = SnapshotBuilder::new(spec());
    let swap = Arc::new(ArcSwap::from(builder.current()));
    let (changes, changes_rx) = mpsc::channel(16);
    let (events, events_rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_builder(
        builder,
        changes_rx,
        events_rx,
        swap.clone(),
        cancel.clone(),
        1024,
    ));
    changes
        .send(Change::Local(Arc::new(resolved)))
        .await
        .unwrap();
    let board: StatusBoard = Arc::new(watch::channel(MeshStatus::new()).0);
    let options = RemoteOptions {
        local_id: Some(c(1)),
        backoff_min: Duration::from_millis(100),
        ..RemoteOptions::default()
    };
    let remote = spawn_remote(
        etcd2.remote_config("cluster2", Some(2)),
        options,
        ClusterState::default(),
        events,
        board,
        cancel.clone(),
    );

    until(&swap, "cluster2's rebel-base", |t| {
        t.ipcache.lookup(rebel).map(|e| e.identity) == Some(rebel_id)
    })
    .await;
    let t = swap.load();
    let entry = t.ipcache.lookup(rebel).unwrap();
    assert_eq!(
        entry.tunnel_endpoint,
        Some(Ipv4Addr::new(198, 18, 2, 1).into())
    );
    assert!(t.nodes.get(Ipv4Addr::new(198, 18, 2, 1).into()).is_some());
    assert_eq!(t.endpoints.len(), 1, "x-wing, attached to port 1");

    cluster2.resolve(local(2, &[])).await.unwrap();
    until(&swap, "rebel-base withdrawn", |t| {
        t.ipcache.lookup(rebel).map(|e| e.identity) != Some(rebel_id)
    })
    .await;
    let t = swap.load();
    let cidr = t.ipcache.lookup(rebel).unwrap();
    assert_eq!(
        (cidr.identity.get(), cidr.tunnel_endpoint),
        (0, Some(Ipv4Addr::new(198, 18, 2, 1).into())),
        "only the node's pod CIDR is left"
    );
    assert!(t
        .ipcache
        .lookup(Ipv4Addr::new(100, 64, 1, 10).into())
        .is_some());

    cancel.cancel();
    remote.stop().await;
    task.await.unwrap();
}
