//! The stand-in API server against real clients over HTTPS: kube-rs's own client for the protocol
//! (list with limit/continue, selectors, watch events, bookmarks, 410 Gone, 403 Forbidden), and the
//! agent's Kubernetes source (meshpath_control's KubeSource, with the kubeconfig the stand-in wrote)
//! through a restart of the stand-in, a 410 that makes it list again, and an RBAC without a rule.

use std::path::Path;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use meshpath_control::local::{kube_client, KubeSource, LocalSourceHandle, LocalState, ObjectRef};
use meshpath_lab::apiserver::{ApiServer, Options, DEPLOYED_RBAC};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: c1-n1, containers: [{{name: c, image: none}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
    )
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: c1-n1}\n\
    spec: {podCIDR: 100.64.1.0/24, podCIDRs: [100.64.1.0/24]}\n\
    status: {addresses: [{type: InternalIP, address: 198.18.1.1}]}\n---\n";

fn service(ready: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [100.64.1.10], conditions: {{ready: {ready}, serving: {ready}, terminating: false}}}}]\n---\n"
    )
}

fn write(dir: &Path, text: &str) {
    let temporary = dir.join(".lab.yaml.tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(temporary, dir.join("lab.yaml")).unwrap();
}

struct Lab {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    options: Options,
}

impl Lab {
    fn new(objects: &str, rbac: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        write(&state, objects);
        let options = Options {
            state_dir: state.clone(),
            data_dir: dir.path().join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            rbac: rbac.to_owned(),
            bookmark_every: Duration::from_millis(200),
        };
        Lab {
            _dir: dir,
            state,
            options,
        }
    }

    async fn start(&mut self) -> ApiServer {
        let server = ApiServer::start(self.options.clone()).await.unwrap();
        // A restart serves on the same address, as a real server's does.
        self.options.listen = server.addr;
        server
    }
}

async fn client(server: &ApiServer) -> Client {
    kube_client(Some(&server.kubeconfig), None).await.unwrap().0
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin),
) -> WatchEvent<Pod> {
    tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("an event in time")
        .unwrap()
        .expect("the watch goes on")
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

#[tokio::test]
async fn kube_clients_list_watch_and_are_refused_as_by_a_real_server() {
    let mut lab = Lab::new(
        &(pod("a", "web", "100.64.1.10") + &pod("b", "db", "100.64.1.11")),
        DEPLOYED_RBAC,
    );
    let server = lab.start().await;
    let pods: Api<Pod> = Api::all(client(&server).await);

    // LIST: pages of one, then selectors.
    let first = pods.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(first.items.iter().map(name).collect::<Vec<_>>(), ["a"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    let second = pods
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(second.items.iter().map(name).collect::<Vec<_>>(), ["b"]);
    assert!(second.metadata.continue_.is_none_or(|c| c.is_empty()));
    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.iter().map(name).collect::<Vec<_>>(), ["a"]);
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=c1-n2"))
        .await
        .unwrap();
    assert!(on_node.items.is_empty());
    let rv = first.metadata.resource_version.clone().unwrap();

    // WATCH from the list's version: a file change is ADDED, MODIFIED, DELETED.
    let mut events = pods
        .watch(&WatchParams::default().timeout(60).disable_bookmarks(), &rv)
        .await
        .unwrap()
        .boxed();
    write(
        &lab.state,
        &(pod("a", "web", "100.64.1.10") + &pod("c", "web", "100.64.1.12")),
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_event(&mut events).await {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", name(&p))),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", name(&p))),
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["ADDED c", "DELETED b"]);
    write(
        &lab.state,
        &(pod("a", "web", "100.64.1.10") + &pod("c", "db", "100.64.1.12")),
    );
    match next_event(&mut events).await {
        WatchEvent::Modified(p) => assert_eq!(p.metadata.labels.unwrap()["app"], "db"),
        other => panic!("unexpected {other:?}"),
    }

    // BOOKMARK, when asked for (kube asks by default), at the current version.
    let now = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut bookmarked = pods
        .watch(&WatchParams::default().timeout(60), &now)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut bookmarked).await {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("unexpected {other:?}"),
    }

    // 410 Gone: a version from before the compaction.
    server.compact();
    let mut gone = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next_event(&mut gone).await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("unexpected {other:?}"),
    }

    // 403 Forbidden: what deploy/rbac.yaml does not grant, with a Status as RBAC writes it.
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason, s.message),
        other => panic!("not an API error: {other}"),
    };
    let (code, reason, message) = refused(pods.get("a").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(
        message.contains("cannot get resource \"pods\""),
        "{message}"
    );
    let secrets: Api<Secret> = Api::all(client(&server).await);
    let (code, _, message) = refused(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403, "{message}");

    // Without the token: 401.
    let anonymous = {
        let mut config = kube::Config::new(format!("https://{}", server.addr).parse().unwrap());
        config.root_cert = Some(vec![pem_der(
            &std::fs::read(server.kubeconfig.with_file_name("ca.crt")).unwrap(),
        )]);
        Api::<Pod>::all(Client::try_from(config).unwrap())
    };
    assert_eq!(
        refused(anonymous.list(&ListParams::default()).await.unwrap_err()).0,
        401
    );
    server.stop().await;
}

/// The DER inside a PEM certificate.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .unwrap()
        .to_vec()
}

async fn until(
    state: &mut watch::Receiver<std::sync::Arc<LocalState>>,
    what: &str,
    ok: impl FnMut(&std::sync::Arc<LocalState>) -> bool,
) {
    if tokio::time::timeout(WAIT, state.wait_for(ok))
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}");
    }
}

fn at(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn the_agents_source_follows_the_stand_in_through_restarts_and_410() {
    let objects = |pods: &str, ready: bool| format!("{NODE}{pods}{}", service(ready));
    let mut lab = Lab::new(
        &objects(&pod("a", "web", "100.64.1.10"), true),
        DEPLOYED_RBAC,
    );
    let server = lab.start().await;
    let cancel = CancellationToken::new();
    let LocalSourceHandle {
        mut state,
        status,
        task,
    } = KubeSource::spawn(client(&server).await, cancel.clone());
    until(&mut state, "the first lists", |s| {
        s.pods.contains_key(&at("a"))
    })
    .await;
    assert_eq!(state.borrow().nodes["c1-n1"].pod_cidrs, ["100.64.1.0/24"]);
    let st = status.borrow().clone();
    assert!(
        st.synced && st.errors.is_empty() && st.lost().is_none(),
        "{st:?}"
    );

    // A pod added and removed; a backend turning not ready.
    write(
        &lab.state,
        &objects(
            &(pod("a", "web", "100.64.1.10") + &pod("b", "web", "100.64.1.11")),
            true,
        ),
    );
    until(&mut state, "the added pod", |s| {
        s.pods.contains_key(&at("b"))
    })
    .await;
    write(&lab.state, &objects(&pod("a", "web", "100.64.1.10"), false));
    until(
        &mut state,
        "the removed pod and the backend not ready",
        |s| {
            !s.pods.contains_key(&at("b"))
                && s.endpoint_slices
                    .values()
                    .all(|slice| slice.endpoints.iter().all(|e| !e.ready))
        },
    )
    .await;

    // The stand-in goes away: the last state stays, the status says it is lost.
    let before = state.borrow().clone();
    server.stop().await;
    let mut watching = status.clone();
    let lost = tokio::time::timeout(WAIT, watching.wait_for(|s| s.lost().is_some()))
        .await
        .is_ok();
    assert!(lost, "the status says the API server is lost");
    assert_eq!(*state.borrow(), before, "nothing taken away meanwhile");

    // It comes back with no change meanwhile: the watches resume, and follow new changes.
    let server = lab.start().await;
    write(&lab.state, &objects(&pod("a", "web", "100.64.1.10"), true));
    until(&mut state, "the backend ready again", |s| {
        s.endpoint_slices
            .values()
            .all(|slice| slice.endpoints.iter().all(|e| e.ready))
    })
    .await;
    let back = tokio::time::timeout(WAIT, watching.wait_for(|s| s.lost().is_none()))
        .await
        .is_ok();
    assert!(back, "{:?}", status.borrow());

    // It comes back after a change it made while down, with no history before: 410, a new list.
    server.stop().await;
    write(&lab.state, &objects(&pod("c", "web", "100.64.1.12"), true));
    let server = lab.start().await;
    until(
        &mut state,
        "the change made while the server was down",
        |s| s.pods.contains_key(&at("c")) && !s.pods.contains_key(&at("a")),
    )
    .await;

    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_kind_the_cluster_role_does_not_grant_keeps_the_source_from_syncing() {
    let without_slices = DEPLOYED_RBAC.replace(
        "  - apiGroups: [discovery.k8s.io]\n    resources: [endpointslices]\n    verbs: [list, watch]\n",
        "",
    );
    assert_ne!(without_slices, DEPLOYED_RBAC, "the rule is there to remove");
    let mut lab = Lab::new(&format!("{NODE}{}", service(true)), &without_slices);
    let server = lab.start().await;
    let cancel = CancellationToken::new();
    let handle = KubeSource::spawn(client(&server).await, cancel.clone());
    let mut status = handle.status.clone();
    let refused = tokio::time::timeout(WAIT, status.wait_for(|s| s.lost().is_some()))
        .await
        .is_ok();
    assert!(refused);
    let st = status.borrow().clone();
    let lost = st.lost().unwrap();
    assert!(!st.synced, "never a partial cluster");
    assert!(
        lost.contains("endpointslices.discovery.k8s.io") && lost.contains("403"),
        "{lost}"
    );
    assert!(handle.state.borrow().nodes.is_empty(), "nothing published");
    cancel.cancel();
    server.stop().await;
}
