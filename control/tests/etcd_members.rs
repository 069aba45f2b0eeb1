//! A cluster's etcd as the 3-member cluster production runs: a remote watcher given every member's
//! endpoint loses the leader's member and goes on from where its watch stood — no re-listing, no
//! withdrawal, nothing missed.

mod common;

use std::net::TcpListener;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{EtcdMember, Pki};
use etcd_client::{Client, Permission};
use meshpath_control::clustermesh::config::RemoteConfig;
use meshpath_control::clustermesh::{spawn_remote, MeshStatus, RemoteOptions, StatusBoard};
use meshpath_control::kvstore::{ClusterConfig, Key, Kind};
use meshpath_control::state::{ClusterState, EndpointInfo, StateEvent};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, ClusterId};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const MEMBERS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three etcd members behind mutual TLS, RBAC on (`root` writes, `remote` reads `cilium/`).
struct EtcdCluster {
    dir: tempfile::TempDir,
    pki: Pki,
    urls: Vec<String>,
    members: Vec<Option<Child>>,
}

impl EtcdCluster {
    async fn start() -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("cluster2");
        let (cert, key) = pki.server();
        std::fs::write(dir.path().join("server.crt"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca_pem).unwrap();
        let urls: Vec<String> = (0..MEMBERS)
            .map(|_| format!("https://127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = (0..MEMBERS)
            .map(|_| format!("http://127.0.0.1:{}", free_port()))
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}={p}"))
            .collect();
        let d = dir.path();
        let members = (0..MEMBERS)
            .map(|i| {
                let log = std::fs::File::create(d.join(format!("m{i}.log"))).unwrap();
                let member = EtcdMember {
                    name: &format!("m{i}"),
                    client_url: &urls[i],
                    peer_url: &peers[i],
                    initial_cluster: &initial.join(","),
                };
                Some(member.spawn(d, log))
            })
            .collect();
        let cluster = EtcdCluster {
            dir,
            pki,
            urls,
            members,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = cluster.client("root", &cluster.urls).await {
                if client.put("health-probe", "", None).await.is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the etcd cluster did not form");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.enable_rbac().await;
        // Until every member has the new auth store ("revision of auth store is old" meanwhile).
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in &cluster.urls {
            let mut client = cluster
                .client("root", std::slice::from_ref(url))
                .await
                .unwrap();
            while client.put("health-probe", "", None).await.is_err() {
                assert!(Instant::now() < deadline, "{url} never took the auth store");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    async fn client(&self, user: &str, urls: &[String]) -> Result<Client, etcd_client::Error> {
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        self.pki.connect(user, &urls).await
    }

    async fn enable_rbac(&self) {
        let client = self.client("root", &self.urls).await.unwrap();
        let mut auth = client.auth_client();
        auth.user_add("root", "unused", None).await.unwrap();
        auth.user_grant_role("root", "root").await.unwrap();
        auth.role_add("remote-read").await.unwrap();
        let read = Permission::read("cilium/").with_prefix();
        auth.role_grant_permission("remote-read", read)
            .await
            .unwrap();
        auth.user_add("remote", "unused", None).await.unwrap();
        auth.user_grant_role("remote", "remote-read").await.unwrap();
        auth.auth_enable().await.unwrap();
    }

    /// The member that leads raft now.
    async fn leader(&self) -> usize {
        for (i, url) in self.urls.iter().enumerate() {
            if self.members[i].is_none() {
                continue;
            }
            let mut client = self
                .client("root", std::slice::from_ref(url))
                .await
                .unwrap();
            let status = client.status().await.unwrap();
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                return i;
            }
        }
        panic!("no leader among the live members");
    }

    fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..MEMBERS {
            self.kill(i);
        }
        let _ = &self.dir;
    }
}

fn endpoint(last: u8) -> EndpointInfo {
    EndpointInfo {
        ip: Addr::from(std::net::Ipv4Addr::new(100, 65, 1, last)),
        identity: meshpath_dataplane::Identity::new(0x2_0000 + 300 + u32::from(last)).unwrap(),
        host_ip: Some(Addr::from(std::net::Ipv4Addr::new(198, 18, 2, 1))),
        namespace: "ns".into(),
        pod_name: format!("pod-{last}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leaders_member_resumes_the_watch_without_relisting_or_withdrawing() {
    let mut etcd = EtcdCluster::start().await;
    let c2 = ClusterName::new("cluster2").unwrap();
    let mut root = etcd.client("root", &etcd.urls).await.unwrap();
    let config = serde_json::to_vec(&ClusterConfig::new(2)).unwrap();
    root.put(Key::ClusterConfig(c2.clone()).to_string(), config, None)
        .await
        .unwrap();
    for kind in Kind::ALL {
        let canary = Key::SyncCanary {
            cluster: c2.clone(),
            kind,
        };
        root.put(canary.to_string(), "2026-11-30T23:00:00Z", None)
            .await
            .unwrap();
    }
    let put = |ep: EndpointInfo| {
        let mut root = root.clone();
        async move {
            let value = serde_json::to_vec(&ep.to_kvstore()).unwrap();
            root.put(Key::Endpoint(ep.ip.ip()).to_string(), value, None)
                .await
                .unwrap();
        }
    };
    put(endpoint(1)).await;

    let remote = RemoteConfig {
        name: c2.clone(),
        path: "/test/cluster2".into(),
        endpoints: etcd.urls.clone(),
        tls: Some(etcd.pki.material("remote")),
        tls_paths: Vec::new(),
        expected_id: ClusterId::new(2),
    };
    let options = RemoteOptions {
        grace: Duration::from_secs(60),
        backoff_min: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        keep_alive: Duration::from_secs(1),
        ..RemoteOptions::default()
    };
    let (tx, mut events) = mpsc::channel(1024);
    let (board, status) = watch::channel(MeshStatus::new());
    let board: StatusBoard = Arc::new(board);
    let cancel = CancellationToken::new();
    let _handle = spawn_remote(
        remote,
        options,
        ClusterState::default(),
        tx,
        board,
        cancel.clone(),
    );
    let mut state = ClusterState::default();
    let mut deletes = 0;
    let mut until = async |what: &str, done: &dyn Fn(&ClusterState) -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&state) {
            tokio::select! {
                Some(ev) = events.recv() => {
                    if matches!(ev.event, StateEvent::Delete(_)) { deletes += 1; }
                    state.apply(ev.event);
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let st = status.borrow().get(&c2).map(|s| s.to_string());
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {st:?}"
            );
        }
    };
    until("the first endpoint", &|s| s.endpoints.len() == 1).await;

    // Kill the leader's member, then the follower the watch may have moved to is still there: the
    // next change reaches the watcher through a live member.
    let leader = etcd.leader().await;
    etcd.kill(leader);
    let live: Vec<String> = (0..MEMBERS)
        .filter(|i| *i != leader)
        .map(|i| etcd.urls[i].clone())
        .collect();
    let mut survivor = etcd.client("root", &live).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = serde_json::to_vec(&endpoint(2).to_kvstore()).unwrap();
    let key = Key::Endpoint(endpoint(2).ip.ip()).to_string();
    while survivor
        .put(key.clone(), value.clone(), None)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no new leader was elected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until("the change made after the leader's loss", &|s| {
        s.endpoints.len() == 2
    })
    .await;
    let remote = status.borrow()[&c2].clone();
    assert_eq!(deletes, 0, "nothing withdrawn");
    assert_eq!(
        remote.listings, 1,
        "the watch was resumed, never listed again from scratch: {remote}"
    );
    assert!(remote.ready && remote.withdrawn_at.is_none(), "{remote}");
    cancel.cancel();
}
