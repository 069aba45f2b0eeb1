//! Publishing into a cluster's own etcd, read back by the other cluster's remote watcher; identity
//! allocation by concurrent agents; leases.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Etcd;
use meshpath_control::clustermesh::{
    spawn_remote, MeshStatus, RemoteEvent, RemoteOptions, StatusBoard,
};
use meshpath_control::etcd::EtcdTarget;
use meshpath_control::kvstore::{LabelSet, CLUSTER_LABEL, NAMESPACE_LABEL};
use meshpath_control::publish::{PublishError, Publisher};
use meshpath_control::state::{
    Cidr, ClusterState, EndpointInfo, EntryKey, NodeAddressKind, NodeInfo, ServiceInfo,
    ServiceName, ServicePort, StateEvent,
};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, ClusterId, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn addr(s: &str) -> Addr {
    s.parse::<std::net::IpAddr>().unwrap().into()
}

fn name(c: u8) -> ClusterName {
    ClusterName::new(&format!("cluster{c}")).unwrap()
}

fn id(c: u8) -> ClusterId {
    ClusterId::new(c).unwrap()
}

async fn publisher(etcd: &Etcd, c: u8, node: &str, ttl: Duration) -> Publisher {
    let material = etcd.pki.material("root");
    let endpoints = [etcd.url.clone()];
    let target = EtcdTarget {
        endpoints: &endpoints,
        tls: Some(&material),
        connect_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_secs(1),
    };
    Publisher::connect(&target, name(c), id(c), node, ttl)
        .await
        .unwrap()
}

fn pod_labels(c: u8, app: &str) -> LabelSet {
    let mut labels = LabelSet::new();
    labels.insert("k8s", "app", app).unwrap();
    labels
        .insert("k8s", CLUSTER_LABEL, name(c).as_str())
        .unwrap();
    labels.insert("k8s", NAMESPACE_LABEL, "ns").unwrap();
    labels
}

fn node(c: u8) -> NodeInfo {
    NodeInfo {
        name: format!("c{c}-n1"),
        cluster_id: id(c),
        addresses: vec![(NodeAddressKind::Internal, addr(&format!("198.18.{c}.1")))],
        pod_cidrs: vec![Cidr {
            addr: addr(&format!("100.{}.1.0", 63 + c)),
            prefix_len: 24,
        }],
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: None,
    }
}

/// Cluster 1's view of cluster 2, folded from the watcher's events.
struct View {
    events: mpsc::Receiver<RemoteEvent>,
    status: watch::Receiver<MeshStatus>,
    state: ClusterState,
    /// Service deletions seen: a global service withdrawn, if only for a moment.
    services_withdrawn: usize,
    _cancel: tokio_util::sync::DropGuard,
}

impl View {
    fn of(etcd: &Etcd) -> View {
        let (tx, events) = mpsc::channel(1024);
        let (board, status) = watch::channel(MeshStatus::new());
        let board: StatusBoard = Arc::new(board);
        let cancel = CancellationToken::new();
        let options = RemoteOptions {
            local_id: Some(id(1)),
            backoff_min: Duration::from_millis(100),
            ..Default::default()
        };
        spawn_remote(
            etcd.remote_config("cluster2", Some(2)),
            options,
            ClusterState::default(),
            tx,
            board,
            cancel.clone(),
        );
        View {
            events,
            status,
            state: ClusterState::default(),
            services_withdrawn: 0,
            _cancel: cancel.drop_guard(),
        }
    }

    async fn until(&mut self, what: &str, done: impl Fn(&ClusterState) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(&self.state) {
            tokio::select! {
                Some(ev) = self.events.recv() => {
                    if matches!(ev.event, StateEvent::Delete(EntryKey::Service(_))) {
                        self.services_withdrawn += 1;
                    }
                    self.state.apply(ev.event);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let status = self
                .status
                .borrow()
                .get(&name(2))
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}:\n{status}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cluster2_publishes_cluster1_sees_and_sees_go() {
    let (etcd1, etcd2) = tokio::join!(Etcd::start("cluster1"), Etcd::start("cluster2"));
    let mut p1 = publisher(&etcd1, 1, "c1-n1", Duration::from_secs(10)).await;
    p1.publish_node(&node(1)).await.unwrap();
    assert!(p1.upkeep().await.unwrap().leading);
    p1.mark_synced().await.unwrap();

    let mut p2 = publisher(&etcd2, 2, "c2-n1", Duration::from_secs(10)).await;
    p2.publish_node(&node(2)).await.unwrap();
    assert!(p2.upkeep().await.unwrap().leading);
    let labels = pod_labels(2, "echo");
    let identity = p2.identity(&labels).await.unwrap();
    assert_eq!(identity.cluster(), Some(id(2)));
    let ep = EndpointInfo {
        ip: addr("100.65.1.10"),
        identity,
        host_ip: Some(addr("198.18.2.1")),
        namespace: "ns".into(),
        pod_name: "echo-1".into(),
    };
    p2.publish_endpoint(&ep).await.unwrap();
    let svc = ServiceInfo {
        name: ServiceName {
            namespace: "ns".into(),
            name: "echo".into(),
        },
        frontends: vec![ServicePort {
            addr: addr("100.65.255.10"),
            port_name: "http".into(),
            protocol: 6,
            port: 80,
        }],
        backends: vec![ServicePort {
            addr: ep.ip,
            port_name: "http".into(),
            protocol: 6,
            port: 8080,
        }],
        shared: true,
        include_external: true,
        selector: vec![],
    };
    p2.publish_service(&svc).await.unwrap();
    p2.mark_synced().await.unwrap();

    let mut view = View::of(&etcd2);
    view.until("cluster 2's state", |s| {
        s.endpoints.get(&ep.ip).map(|v| &**v) == Some(&ep)
            && s.nodes.get("c2-n1").map(|v| &**v) == Some(&node(2))
            && s.identities.get(&identity) == Some(&labels)
            && s.services.get(&svc.name).map(|v| &**v) == Some(&svc)
    })
    .await;
    assert!(view.status.borrow()[&name(2)].ready);

    p2.withdraw_endpoint(ep.ip).await.unwrap();
    view.until("the endpoint to go", |s| !s.endpoints.contains_key(&ep.ip))
        .await;
    let unshared = ServiceInfo {
        shared: false,
        ..svc.clone()
    };
    p2.publish_service(&unshared).await.unwrap();
    view.until("the unshared service to go", |s| s.services.is_empty())
        .await;

    // The agent goes away: its lease is revoked and its keys vanish from cluster 1's view.
    p2.publish_endpoint(&ep).await.unwrap();
    view.until("the endpoint back", |s| s.endpoints.contains_key(&ep.ip))
        .await;
    p2.close().await.unwrap();
    view.until("the agent's keys to go", |s| {
        s.endpoints.is_empty() && s.nodes.is_empty()
    })
    .await;
    assert_eq!(
        view.state.identities.len(),
        1,
        "identity master keys outlive one agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_never_disagree_on_identities() {
    let etcd = Etcd::start("cluster2").await;
    let nodes = ["c2-n1", "c2-n2", "c2-n3", "c2-n4"];
    let mut agents = Vec::new();
    for node in nodes {
        agents.push(publisher(&etcd, 2, node, Duration::from_secs(10)).await);
    }
    // Every agent asks for the same label set at the same moment: a barrier before each one, so the
    // transactions of all agents race on one value prefix and one candidate id every time.
    let apps: Vec<String> = (0..12).map(|i| format!("app{i}")).collect();
    let start = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    // Collected, so that every agent is spawned before the first is awaited.
    let runs: Vec<_> = agents
        .into_iter()
        .map(|mut agent| {
            let (apps, start) = (apps.clone(), start.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for app in apps {
                    start.wait().await;
                    got.push((
                        app.clone(),
                        agent.identity(&pod_labels(2, &app)).await.unwrap(),
                    ));
                }
                (agent, got)
            })
        })
        .collect();
    let mut by_app: std::collections::BTreeMap<String, Identity> = Default::default();
    let mut agents = Vec::new();
    for run in runs {
        let (agent, got) = run.await.unwrap();
        agents.push(agent);
        for (app, identity) in got {
            assert_eq!(
                *by_app.entry(app.clone()).or_insert(identity),
                identity,
                "{app} got two identities"
            );
        }
    }
    let ids: std::collections::BTreeSet<Identity> = by_app.values().copied().collect();
    assert_eq!(
        ids.len(),
        apps.len(),
        "two label sets share an identity: {by_app:?}"
    );
    assert!(ids
        .iter()
        .all(|i| i.cluster() == Some(id(2)) && !i.is_reserved()));

    // The master keys hold the label strings, in Cilium's layout; every agent holds its own claim on
    // every label set, with the one id.
    let mut client = etcd.client("root").await.unwrap();
    for (app, identity) in &by_app {
        for node in nodes {
            let claim = format!(
                "cilium/state/identities/v1/value/{}/{node}",
                pod_labels(2, app)
            );
            let resp = client.get(claim.clone(), None).await.unwrap();
            assert_eq!(
                resp.kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap().to_owned()),
                Some(identity.to_string()),
                "{claim}"
            );
        }
    }
    let first = by_app["app0"];
    let resp = client
        .get(format!("cilium/state/identities/v1/id/{first}"), None)
        .await
        .unwrap();
    assert_eq!(
        resp.kvs()[0].value_str().unwrap(),
        pod_labels(2, "app0").to_string()
    );

    // Every agent gone: the label set keeps its id for the next agent.
    for agent in agents {
        agent.close().await.unwrap();
    }
    let mut late = publisher(&etcd, 2, "c2-n5", Duration::from_secs(10)).await;
    assert_eq!(late.identity(&pod_labels(2, "app0")).await.unwrap(), first);
    let fresh = late.identity(&pod_labels(2, "new")).await.unwrap();
    assert!(!ids.contains(&fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_alive_beyond_its_ttl_and_across_an_etcd_restart() {
    let mut etcd = Etcd::start("cluster2").await;
    let ttl = Duration::from_secs(2);
    let mut p = publisher(&etcd, 2, "c2-n1", ttl).await;
    p.publish_node(&node(2)).await.unwrap();
    kept_for_two_ttls(&etcd, ttl, "from the start").await;
    etcd.restart().await;
    kept_for_two_ttls(&etcd, ttl, "after the restart").await;
    assert!(!*p.lease().lost.borrow());
}

/// Looks at the node key again and again for two TTLs: it must be there every time, which only
/// renewals of its lease can make true.
async fn kept_for_two_ttls(etcd: &Etcd, ttl: Duration, when: &str) {
    let node_key = "cilium/state/nodes/v1/cluster2/c2-n1";
    let client = etcd.client("root").await.unwrap();
    let start = tokio::time::Instant::now();
    let what = format!("two TTLs with the node key kept, {when}");
    meshpath_testkit::until_async(&what, ttl * 5, || {
        let mut client = client.clone();
        async move {
            let held = client.get(node_key, None).await.unwrap().kvs().len();
            let elapsed = start.elapsed();
            assert_eq!(held, 1, "the key vanished {elapsed:?} {when}");
            meshpath_testkit::wait::check(elapsed >= ttl * 2, elapsed)
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_noticed_and_everything_republished() {
    let etcd = Etcd::start("cluster2").await;
    let mut p = publisher(&etcd, 2, "c2-n1", Duration::from_secs(3)).await;
    p.publish_node(&node(2)).await.unwrap();
    let labels = pod_labels(2, "echo");
    let identity = p.identity(&labels).await.unwrap();

    // An operator (or a long partition) kills the lease: the keys go.
    let mut root = etcd.client("root").await.unwrap();
    root.lease_revoke(p.lease().id).await.unwrap();
    let node_key = "cilium/state/nodes/v1/cluster2/c2-n1";
    assert!(root.get(node_key, None).await.unwrap().kvs().is_empty());
    let mut lost = p.lease().lost.clone();
    tokio::time::timeout(Duration::from_secs(5), lost.wait_for(|l| *l))
        .await
        .expect("loss noticed")
        .unwrap();

    assert!(
        p.recover_lease().await.unwrap().is_empty(),
        "the identity is kept"
    );
    assert_eq!(root.get(node_key, None).await.unwrap().kvs().len(), 1);
    let claim = format!("cilium/state/identities/v1/value/{labels}/c2-n1");
    let resp = root.get(claim, None).await.unwrap();
    assert_eq!(resp.kvs()[0].value_str().unwrap(), identity.to_string());
    assert_eq!(resp.kvs()[0].lease(), p.lease().id);
    assert!(!*p.lease().lost.borrow());
}

fn node_named(name: &str, last: u8) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        addresses: vec![(NodeAddressKind::Internal, addr(&format!("198.18.2.{last}")))],
        pod_cidrs: vec![Cidr {
            addr: addr(&format!("100.65.{last}.0")),
            prefix_len: 24,
        }],
        ..node(2)
    }
}

fn endpoint(identity: Identity, ip: &str, host: &str) -> EndpointInfo {
    EndpointInfo {
        ip: addr(ip),
        identity,
        host_ip: Some(addr(host)),
        namespace: "ns".into(),
        pod_name: format!("echo-{ip}"),
    }
}

fn service(backends: &[Addr]) -> ServiceInfo {
    let port = |addr, port| ServicePort {
        addr,
        port_name: "http".into(),
        protocol: 6,
        port,
    };
    ServiceInfo {
        name: ServiceName {
            namespace: "ns".into(),
            name: "echo".into(),
        },
        frontends: vec![port(addr("100.65.255.10"), 80)],
        backends: backends.iter().map(|b| port(*b, 8080)).collect(),
        shared: true,
        include_external: true,
        selector: vec![],
    }
}

const SERVICE_KEY: &str = "cilium/state/services/v1/cluster2/ns/echo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_takes_away_only_its_own_and_the_lead_moves_without_a_gap() {
    let etcd = Etcd::start("cluster2").await;
    let ttl = Duration::from_secs(2);
    let mut a = publisher(&etcd, 2, "c2-n1", ttl).await;
    let mut b = publisher(&etcd, 2, "c2-n2", ttl).await;
    assert!(a.upkeep().await.unwrap().leading);
    assert!(!b.upkeep().await.unwrap().leading, "one leader per cluster");
    let identity = a.identity(&pod_labels(2, "echo")).await.unwrap();
    let (ep_a, ep_b) = (
        endpoint(identity, "100.65.1.10", "198.18.2.1"),
        endpoint(identity, "100.65.2.10", "198.18.2.2"),
    );
    a.publish_node(&node_named("c2-n1", 1)).await.unwrap();
    b.publish_node(&node_named("c2-n2", 2)).await.unwrap();
    a.publish_endpoint(&ep_a).await.unwrap();
    b.publish_endpoint(&ep_b).await.unwrap();
    let svc = service(&[ep_a.ip, ep_b.ip]);
    assert!(
        matches!(
            b.publish_service(&svc).await,
            Err(PublishError::NotLeader { .. })
        ),
        "a follower writes no cluster-wide record"
    );
    a.publish_service(&svc).await.unwrap();
    a.finish_round().await.unwrap();

    let mut view = View::of(&etcd);
    view.until("both agents' state", |s| {
        s.nodes.len() == 2
            && s.endpoints.len() == 2
            && s.services.get(&svc.name).map(|v| &**v) == Some(&svc)
    })
    .await;
    let mut root = etcd.client("root").await.unwrap();
    let old_lease = root.get(SERVICE_KEY, None).await.unwrap().kvs()[0].lease();

    // A stops as for a restart: it resigns the lead, its own keys expire with its lease.
    a.leave().await.unwrap();
    view.until("the stopped agent's own keys to go", |s| {
        s.nodes.keys().collect::<Vec<_>>() == ["c2-n2"] && s.endpoints.len() == 1
    })
    .await;
    assert!(view.state.endpoints.contains_key(&ep_b.ip));
    let upkeep = b.upkeep().await.unwrap();
    assert!(upkeep.leading && upkeep.lead_changed(), "{upkeep:?}");
    // The resolver writes every service again when the lead changes hands.
    b.publish_service(&svc).await.unwrap();
    b.finish_round().await.unwrap();
    let new_lease = root.get(SERVICE_KEY, None).await.unwrap().kvs()[0].lease();
    assert_ne!(new_lease, old_lease, "the new leader holds the service");

    // Past the old leader's records lease, the service is still there and was never withdrawn.
    meshpath_testkit::until_async("the old records lease to expire", ttl * 10, || {
        let mut root = root.clone();
        async move {
            let ttl = root
                .lease_time_to_live(old_lease, None)
                .await
                .unwrap()
                .ttl();
            meshpath_testkit::wait::check(ttl <= 0, ttl)
        }
    })
    .await
    .unwrap();
    assert_eq!(root.get(SERVICE_KEY, None).await.unwrap().kvs().len(), 1);
    // A change of the service after that, seen by the watcher, comes after any withdrawal it saw.
    let only_b = service(&[ep_b.ip]);
    b.publish_service(&only_b).await.unwrap();
    view.until("the service's change", |s| {
        s.services.get(&svc.name).map(|v| &**v) == Some(&only_b)
    })
    .await;
    assert_eq!(view.services_withdrawn, 0, "the service left for a moment");
    let config = root
        .get("cilium/cluster-config/cluster2", None)
        .await
        .unwrap();
    assert_eq!(
        config.kvs()[0].lease(),
        new_lease,
        "cluster-config is the leader's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_come_back_unchanged_ones_are_left_alone_and_a_lost_lease_is_replaced() {
    let etcd = Etcd::start("cluster2").await;
    let mut p = publisher(&etcd, 2, "c2-n1", Duration::from_secs(10)).await;
    assert!(p.upkeep().await.unwrap().leading);
    let identity = p.identity(&pod_labels(2, "echo")).await.unwrap();
    let ep = endpoint(identity, "100.65.1.10", "198.18.2.1");
    p.publish_node(&node(2)).await.unwrap();
    p.publish_endpoint(&ep).await.unwrap();
    p.publish_service(&service(&[ep.ip])).await.unwrap();
    p.finish_round().await.unwrap();

    let node_key = "cilium/state/nodes/v1/cluster2/c2-n1";
    let ep_key = "cilium/state/ip/v1/default/100.65.1.10";
    let config_key = "cilium/cluster-config/cluster2";
    let mut root = etcd.client("root").await.unwrap();
    let revisions = async |root: &mut etcd_client::Client| {
        let mut revs = Vec::new();
        for key in [node_key, ep_key, config_key, SERVICE_KEY] {
            let resp = root.get(key, None).await.unwrap();
            revs.push(resp.kvs().first().map(|kv| kv.mod_revision()));
        }
        revs
    };
    let before = revisions(&mut root).await;
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let upkeep = p.upkeep().await.unwrap();
    assert_eq!((upkeep.keys_restored, upkeep.lead_changed()), (0, false));
    assert_eq!(revisions(&mut root).await, before, "nothing rewritten");

    // An operator deletes an own key and a cluster-wide one: both come back, the others stay as they were.
    root.delete(node_key, None).await.unwrap();
    root.delete(config_key, None).await.unwrap();
    assert_eq!(p.upkeep().await.unwrap().keys_restored, 2);
    let after = revisions(&mut root).await;
    assert!(after[0].is_some() && after[2].is_some(), "{after:?}");
    assert_eq!((after[1], after[3]), (before[1], before[3]));
    let node_lease = root.get(node_key, None).await.unwrap().kvs()[0].lease();
    assert_eq!(node_lease, p.lease().id);

    // The lease is revoked behind the agent's back: upkeep grants a new one and writes everything again.
    let old = p.lease().id;
    root.lease_revoke(old).await.unwrap();
    let upkeep = p.upkeep().await.unwrap();
    assert!(upkeep.lease_recovered && upkeep.leading, "{upkeep:?}");
    assert_ne!(p.lease().id, old);
    for key in [node_key, ep_key] {
        let resp = root.get(key, None).await.unwrap();
        assert_eq!(resp.kvs()[0].lease(), p.lease().id, "{key}");
    }
    let claim = format!(
        "cilium/state/identities/v1/value/{}/c2-n1",
        pod_labels(2, "echo")
    );
    let resp = root.get(claim, None).await.unwrap();
    assert_eq!(
        resp.kvs()[0].lease(),
        p.lease().id,
        "the identity claim follows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_collects_identities_nobody_claims_after_a_grace_round() {
    let etcd = Etcd::start("cluster2").await;
    let ttl = Duration::from_secs(10);
    let mut leader = publisher(&etcd, 2, "c2-n1", ttl)
        .await
        .with_identity_gc_every(Duration::ZERO);
    let mut follower = publisher(&etcd, 2, "c2-n2", ttl)
        .await
        .with_identity_gc_every(Duration::ZERO);
    let (old, shared, back) = (
        pod_labels(2, "web-5d8f9c7b6"),
        pod_labels(2, "db"),
        pod_labels(2, "cache"),
    );
    let old_id = leader.identity(&old).await.unwrap();
    let shared_id = leader.identity(&shared).await.unwrap();
    assert_eq!(follower.identity(&shared).await.unwrap(), shared_id);
    let back_id = leader.identity(&back).await.unwrap();
    // The rollout's old pods are gone; db moved off the leader's node; cache went away for a while.
    leader.release_identity(&old).await.unwrap();
    leader.release_identity(&shared).await.unwrap();
    leader.release_identity(&back).await.unwrap();

    let master = |id: Identity| format!("cilium/state/identities/v1/id/{id}");
    let mut root = etcd.client("root").await.unwrap();
    let first = leader.upkeep().await.unwrap();
    assert!(first.leading);
    let round = first.gc.expect("the leader runs a round");
    assert_eq!((round.alive, round.marked, round.deleted), (1, 2, 0));
    let second = follower.upkeep().await.unwrap();
    assert_eq!(second.gc, None, "a follower collects nothing");

    // cache comes back within the grace period: it keeps its identity.
    assert_eq!(follower.identity(&back).await.unwrap(), back_id);
    let round = leader.upkeep().await.unwrap().gc.unwrap();
    assert_eq!((round.alive, round.deleted), (2, 1), "{round:?}");
    assert!(root
        .get(master(old_id), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
    for kept in [shared_id, back_id] {
        assert_eq!(root.get(master(kept), None).await.unwrap().kvs().len(), 1);
    }
    // The freed id is handed out again.
    let next = follower
        .identity(&pod_labels(2, "web-7c9d4f5b8"))
        .await
        .unwrap();
    assert_eq!(next, old_id, "the range is not used up by rollouts");
}
