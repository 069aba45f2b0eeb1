//! A clustermesh Secret written by Cilium's tooling, mounted as Cilium's agent DaemonSet mounts it (a
//! projected volume: the `cilium-clustermesh` Secret's per-cluster files, and the
//! `clustermesh-apiserver-remote-cert` / `-local-cert` Secrets' certificates as `common-etcd-client*`
//! and `local-etcd-client*`, behind Kubernetes' `..data` symlinks), loaded unchanged and used to read a
//! remote etcd over mutual TLS as its read-only user.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Etcd;
use meshpath_control::clustermesh::config::load_dir;
use meshpath_control::clustermesh::{spawn_remote, MeshStatus, RemoteOptions, StatusBoard};
use meshpath_control::kvstore::{ClusterConfig, Key};
use meshpath_control::state::ClusterState;
use meshpath_control::ClusterName;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Lays `files` out as the kubelet does for a secret volume: a timestamped directory holding them,
/// `..data` pointing at it, and each file name a link through `..data`.
fn project(dir: &Path, files: &[(&str, Vec<u8>)]) {
    let data = dir.join("..2026_11_30_22_00_00.123456789");
    std::fs::create_dir(&data).unwrap();
    for (name, bytes) in files {
        std::fs::write(data.join(name), bytes).unwrap();
    }
    std::os::unix::fs::symlink(data.file_name().unwrap(), dir.join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_written_by_ciliums_tooling_works_unchanged() {
    let etcd = Etcd::start("cluster2").await;
    let mut root = etcd.client("root").await.unwrap();
    let config = serde_json::to_vec(&ClusterConfig::new(2)).unwrap();
    let key = Key::ClusterConfig(ClusterName::new("cluster2").unwrap());
    root.put(key.to_string(), config, None).await.unwrap();

    // What the Helm chart's template writes for a remote with the common client certificate.
    let cluster2 = format!(
        "endpoints:\n- {}\n\
         trusted-ca-file: /var/lib/cilium/clustermesh/common-etcd-client-ca.crt\n\
         key-file: /var/lib/cilium/clustermesh/common-etcd-client.key\n\
         cert-file: /var/lib/cilium/clustermesh/common-etcd-client.crt\n",
        etcd.url
    );
    let remote = etcd.pki.material("remote");
    let local = etcd.pki.material("root");
    let dir = tempfile::tempdir().unwrap();
    project(
        dir.path(),
        &[
            ("cluster2", cluster2.into_bytes()),
            ("common-etcd-client.crt", remote.cert.clone()),
            ("common-etcd-client.key", remote.key.clone()),
            ("common-etcd-client-ca.crt", remote.ca.clone()),
            ("local-etcd-client.crt", local.cert.clone()),
            ("local-etcd-client.key", local.key.clone()),
            ("local-etcd-client-ca.crt", local.ca.clone()),
        ],
    );

    let loaded = load_dir(dir.path(), &ClusterName::new("cluster1").unwrap()).unwrap();
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let names: Vec<String> = loaded
        .config
        .remotes
        .keys()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        names,
        ["cluster2"],
        "certificates and ..data are not remotes"
    );
    let config = loaded.config.remotes.values().next().unwrap().clone();
    assert_eq!(config.tls.as_ref(), Some(&remote), "the common-* files");
    assert!(config.tls_paths.iter().all(|p| p.starts_with(dir.path())));

    let (tx, mut events) = mpsc::channel(64);
    let (board, status) = watch::channel(MeshStatus::new());
    let board: StatusBoard = Arc::new(board);
    let cancel = CancellationToken::new();
    let options = RemoteOptions {
        backoff_min: Duration::from_millis(100),
        ..RemoteOptions::default()
    };
    let _handle = spawn_remote(
        config,
        options,
        ClusterState::default(),
        tx,
        board,
        cancel.clone(),
    );
    let name = ClusterName::new("cluster2").unwrap();
    let mut status = status;
    let connected = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                _ = events.recv() => {}
                changed = status.changed() => changed.unwrap(),
            }
            let board = status.borrow();
            if let Some(remote) = board.get(&name) {
                if remote.connected && remote.config_retrieved {
                    return remote.clone();
                }
            }
        }
    })
    .await
    .expect("cluster2 read with the Secret's certificates");
    assert!(connected.mutual_tls && connected.connected, "{connected}");
    assert_eq!(connected.cluster_id, Some(2));
    cancel.cancel();
}
