//! The whole ClusterMesh side: a configuration directory followed live, remotes started, re-keyed and
//! removed without a restart, against a real etcd behind mutual TLS.

mod common;

use std::time::Duration;

use common::{Etcd, Pki};
use meshpath_control::clustermesh::config_watch::watch_config_dir;
use meshpath_control::clustermesh::{run_clustermesh, MeshStatus, RemoteEvent, RemoteOptions};
use meshpath_control::kvstore::{ClusterConfig, Key, Kind};
use meshpath_control::state::{ClusterState, EndpointInfo};
use meshpath_control::ClusterName;
use meshpath_dataplane::{Addr, ClusterId, Identity};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

fn c(n: u8) -> ClusterName {
    ClusterName::new(&format!("cluster{n}")).unwrap()
}

async fn fold_until(
    events: &mut mpsc::Receiver<RemoteEvent>,
    state: &mut ClusterState,
    status: &watch::Receiver<MeshStatus>,
    what: &str,
    done: impl Fn(&ClusterState, &MeshStatus) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done(state, &status.borrow()) {
        tokio::select! {
            Some(ev) = events.recv() => { assert!(state.apply(ev.event)); }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let shown: Vec<String> = status.borrow().values().map(|s| s.to_string()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            shown.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remotes_follow_the_configuration_directory() {
    let etcd = Etcd::start("cluster2").await;
    let mut root = etcd.client("root").await.unwrap();
    root.put(
        Key::ClusterConfig(c(2)).to_string(),
        serde_json::to_vec(&ClusterConfig::new(2)).unwrap(),
        None,
    )
    .await
    .unwrap();
    for kind in Kind::ALL {
        root.put(
            Key::SyncCanary {
                cluster: c(2),
                kind,
            }
            .to_string(),
            "2026-11-25T11:00:00Z",
            None,
        )
        .await
        .unwrap();
    }
    let ep = EndpointInfo {
        ip: Addr::from(std::net::Ipv4Addr::new(100, 65, 1, 10)),
        identity: Identity::new(0x2_0100).unwrap(),
        host_ip: Some(Addr::from(std::net::Ipv4Addr::new(198, 18, 2, 1))),
        namespace: "ns".into(),
        pod_name: "echo".into(),
    };
    root.put(
        Key::Endpoint(ep.ip.ip()).to_string(),
        serde_json::to_vec(&ep.to_kvstore()).unwrap(),
        None,
    )
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let remote = etcd.pki.material("remote");
    std::fs::write(d.join("ca.crt"), Pki::new("stranger").ca_pem).unwrap();
    std::fs::write(d.join("remote.crt"), &remote.cert).unwrap();
    std::fs::write(d.join("remote.key"), &remote.key).unwrap();
    let file = format!(
        "endpoints:\n- {}\ntrusted-ca-file: ca.crt\ncert-file: remote.crt\nkey-file: remote.key\ncluster-id: 2\n",
        etcd.url
    );
    std::fs::write(d.join("cluster2"), &file).unwrap();
    std::fs::write(
        d.join("cluster1"),
        "endpoints:\n- https://own.cluster:2379\n",
    )
    .unwrap();

    let cancel = CancellationToken::new();
    let config = watch_config_dir(d.to_owned(), c(1), cancel.clone()).unwrap();
    let options = RemoteOptions {
        local_id: ClusterId::new(1),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(300),
        ..Default::default()
    };
    let (tx, mut events) = mpsc::channel(1024);
    let mesh = run_clustermesh(config.config.clone(), options, tx, cancel.clone());
    let mut state = ClusterState::default();

    fold_until(
        &mut events,
        &mut state,
        &mesh.status,
        "the refusal",
        |_, st| {
            st.get(&c(2)).is_some_and(|s| {
                s.last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("UnknownIssuer")
            })
        },
    )
    .await;
    assert!(
        !mesh.status.borrow().contains_key(&c(1)),
        "the agent's own cluster is not a remote"
    );

    // Re-key without a restart: the right CA replaces the wrong one.
    std::fs::write(d.join("ca.crt"), &etcd.pki.ca_pem).unwrap();
    fold_until(
        &mut events,
        &mut state,
        &mesh.status,
        "the endpoint",
        |s, st| {
            s.endpoints.get(&ep.ip).map(|v| &**v) == Some(&ep)
                && st.get(&c(2)).is_some_and(|s| s.ready)
        },
    )
    .await;

    // Removing the file withdraws the cluster at once.
    std::fs::remove_file(d.join("cluster2")).unwrap();
    fold_until(
        &mut events,
        &mut state,
        &mesh.status,
        "the withdrawal",
        |s, st| s.is_empty() && st.is_empty(),
    )
    .await;

    cancel.cancel();
    mesh.task.await.unwrap();
    config.task.await.unwrap();
}
