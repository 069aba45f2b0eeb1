//! The Kubernetes source against a fake API server behind kube's mock service (tower-test): real
//! list and watch JSON, watch events, a 410 Gone that forces a re-list, and a re-list that drops an
//! object which disappeared meanwhile; a resource the server does not serve. The published
//! LocalState is checked after every step.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use meshpath_control::local::{
    KubeSource, LocalSourceHandle, LocalState, ObjectRef, PolicyKind, PolicyRef,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tower_test::mock;

const WAIT: Duration = Duration::from_secs(10);

const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NETPOLS: &str = "/apis/networking.k8s.io/v1/networkpolicies";
const CNPS: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";

enum Command {
    /// What a list of this resource returns from now on.
    SetList(&'static str, Vec<Value>),
    /// The next watch of this resource returns these events, then ends.
    Watch(&'static str, Vec<Value>),
    /// This resource is not served (its CRD is not installed): 404 Not Found.
    NotServed(&'static str),
}

/// An API server that answers lists from its current lists and holds each watch until the test
/// gives it events, so every step is deterministic.
async fn serve(
    handle: mock::Handle<Request<Body>, Response<Body>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut handle = pin!(handle);
    let mut lists: HashMap<String, Vec<Value>> = HashMap::new();
    let mut waiting: HashMap<String, VecDeque<mock::SendResponse<Response<Body>>>> = HashMap::new();
    let mut queued: HashMap<String, VecDeque<Vec<Value>>> = HashMap::new();
    let mut not_served: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            request = handle.next_request() => {
                let Some((request, send)) = request else { return };
                let path = request.uri().path().to_string();
                if path == "/version" {
                    send.send_response(version());
                } else if not_served.contains(&path) {
                    send.send_response(not_found());
                } else if request.uri().query().unwrap_or_default().contains("watch=true") {
                    match queued.get_mut(&path).and_then(VecDeque::pop_front) {
                        Some(events) => send.send_response(watch_response(&events)),
                        None => waiting.entry(path).or_default().push_back(send),
                    }
                } else {
                    let items = lists.get(&path).cloned().unwrap_or_default();
                    send.send_response(list_response(items));
                }
            }
            command = commands.recv() => match command {
                None => return,
                Some(Command::SetList(path, items)) => drop(lists.insert(path.to_string(), items)),
                Some(Command::NotServed(path)) => not_served.push(path.to_string()),
                Some(Command::Watch(path, events)) => {
                    match waiting.get_mut(path).and_then(VecDeque::pop_front) {
                        Some(send) => send.send_response(watch_response(&events)),
                        None => queued.entry(path.to_string()).or_default().push_back(events),
                    }
                }
            },
        }
    }
}

fn list_response(items: Vec<Value>) -> Response<Body> {
    let rv = items
        .iter()
        .filter_map(|i| {
            i["metadata"]["resourceVersion"]
                .as_str()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(1);
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    Response::new(Body::from(serde_json::to_vec(&list).unwrap()))
}

fn version() -> Response<Body> {
    let info = json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0", "gitCommit": "",
        "gitTreeState": "clean", "buildDate": "", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"});
    Response::new(Body::from(serde_json::to_vec(&info).unwrap()))
}

fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource", "reason": "NotFound", "details": {}, "code": 404});
    let mut response = Response::new(Body::from(serde_json::to_vec(&status).unwrap()));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response
}

/// Newline-delimited watch events, as the API server streams them.
fn watch_response(events: &[Value]) -> Response<Body> {
    let mut body = Vec::new();
    for event in events {
        serde_json::to_writer(&mut body, event).unwrap();
        body.push(b'\n');
    }
    Response::new(Body::from(body))
}

fn event(kind: &str, object: &Value) -> Value {
    json!({"type": kind, "object": object})
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": "too old resource version: 48213 (51000)", "reason": "Expired", "code": 410}})
}

/// The objects of a fixture file as JSON, `List`s unpacked.
fn fixture(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/cross-cluster")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    for value in docs {
        match value["items"].as_array() {
            Some(items) => out.extend(items.iter().cloned()),
            None => out.push(value),
        }
    }
    out
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "c1-n1", "resourceVersion": "47001", "labels": {"kubernetes.io/hostname": "c1-n1"}},
        "spec": {"podCIDR": "100.64.1.0/24", "podCIDRs": ["100.64.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.11"}, {"type": "Hostname", "address": "c1-n1"}]}})
}

fn pod(name: &str, ip: &str, ready: &str, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(), "labels": {"name": "x-wing"}},
        "spec": {"nodeName": "c1-n1", "containers": [{"name": "x", "image": "quay.io/cilium/json-mock:v1.3.8"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": ready}]}})
}

fn at(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

async fn until<T: Clone>(rx: &mut watch::Receiver<T>, what: &str, ok: impl FnMut(&T) -> bool) -> T {
    match tokio::time::timeout(WAIT, rx.wait_for(ok)).await {
        Ok(Ok(v)) => v.clone(),
        _ => panic!("timed out waiting for {what}"),
    }
}

#[tokio::test]
async fn lists_watch_events_gone_and_relist() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (commands, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(handle, rx));
    let send = |c| commands.send(c).unwrap();

    let pods = fixture("pods.yaml");
    let svc_and_slice = fixture("rebel-base-service.yaml");
    let cnp = fixture("allow-cross-cluster.yaml").remove(0);
    send(Command::SetList(NODES, vec![node()]));
    send(Command::SetList(PODS, pods.clone()));
    send(Command::SetList(SERVICES, vec![svc_and_slice[0].clone()]));
    send(Command::SetList(SLICES, vec![svc_and_slice[1].clone()]));
    send(Command::SetList(CNPS, vec![cnp.clone()]));
    // NetworkPolicies: the empty list.

    let cancel = CancellationToken::new();
    let client = Client::new(service, "default");
    let LocalSourceHandle {
        mut state,
        mut status,
        task,
    } = KubeSource::spawn(client, cancel.clone());

    // 1. The initial lists, published once every kind has listed.
    let s = until(&mut state, "the initial lists", |s| !s.nodes.is_empty()).await;
    assert_eq!(s.nodes["c1-n1"].pod_cidrs, ["100.64.1.0/24"]);
    assert_eq!(s.pods.len(), 2);
    assert!(s.services[&at("rebel-base")].global);
    assert_eq!(s.endpoint_slices.len(), 1);
    let cnp_key = PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        policy: at("allow-cross-cluster"),
    };
    assert!(s.policies.contains_key(&cnp_key));
    let st = until(&mut status, "the API server probed", |s| {
        s.api_server.is_some()
    })
    .await;
    assert!(st.synced && st.errors.is_empty(), "{:?}", st.errors);
    assert!(st.not_served.is_empty() && st.lost().is_none());
    let api_server = st.api_server.unwrap();
    assert_eq!(api_server.version.as_deref(), Some("v1.37.0"));

    // 2. ADDED: a second x-wing.
    send(Command::Watch(
        PODS,
        vec![event(
            "ADDED",
            &pod("x-wing-2", "100.64.1.30", "False", 49000),
        )],
    ));
    let s = until(&mut state, "the added pod", |s| {
        s.pods.contains_key(&at("x-wing-2"))
    })
    .await;
    assert!(!s.pods[&at("x-wing-2")].ready);

    // 3. MODIFIED: it becomes ready.
    send(Command::Watch(
        PODS,
        vec![event(
            "MODIFIED",
            &pod("x-wing-2", "100.64.1.30", "True", 49001),
        )],
    ));
    until(&mut state, "the pod ready", |s| {
        s.pods.get(&at("x-wing-2")).is_some_and(|p| p.ready)
    })
    .await;

    // 4. DELETED: the policy goes.
    let mut deleted = cnp.clone();
    deleted["metadata"]["resourceVersion"] = json!("49002");
    send(Command::Watch(CNPS, vec![event("DELETED", &deleted)]));
    until(&mut state, "the policy gone", |s| s.policies.is_empty()).await;

    // 5. A NetworkPolicy that cannot be translated: refused, and in the state as such, so that the
    // pods it selects are denied rather than left open.
    let bad = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-office", "namespace": "default", "resourceVersion": "49003"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}});
    send(Command::Watch(NETPOLS, vec![event("ADDED", &bad)]));
    let s = until(&mut state, "the refused policy", |s| !s.policies.is_empty()).await;
    let policy = s.policies.values().next().unwrap();
    let why = policy.refused.clone().unwrap_or_default();
    assert!(
        why.starts_with("NetworkPolicy default/from-office: `spec.ingress[0].from[0].ipBlock`"),
        "{why}"
    );
    assert_eq!(policy.rules.len(), 1);
    assert_eq!(policy.rules[0].ingress, Some(vec![]), "ingress denied");
    assert!(status.borrow().errors.is_empty());

    // 6. 410 Gone on pods; meanwhile the fixture's x-wing pod disappeared. The re-list drops it.
    let before: LocalState = (**state.borrow()).clone();
    let survivors: Vec<Value> = pods
        .iter()
        .filter(|p| p["metadata"]["name"] != "x-wing-7f5b8d6c9d-w8rxt")
        .cloned()
        .chain([pod("x-wing-2", "100.64.1.30", "True", 50000)])
        .collect();
    send(Command::SetList(PODS, survivors));
    // A 410 is no failure: the watcher lists again, and the status never says the source is lost.
    send(Command::Watch(PODS, vec![gone()]));
    let s = until(&mut state, "the re-list", |s| {
        !s.pods.contains_key(&at("x-wing-7f5b8d6c9d-w8rxt"))
    })
    .await;
    assert_eq!(s.pods.len(), 2);
    assert!(
        s.pods.contains_key(&at("rebel-base-6c8d9f7b54-4kq2m"))
            && s.pods.contains_key(&at("x-wing-2"))
    );
    assert_eq!(
        (&s.nodes, &s.services, &s.endpoint_slices),
        (&before.nodes, &before.services, &before.endpoint_slices)
    );
    let st = status.borrow().clone();
    assert!(st.synced && st.errors.is_empty(), "{:?}", st.errors);
    assert!(st.watch_failures.is_empty(), "{:?}", st.watch_failures);
    assert!(
        state
            .borrow()
            .policies
            .values()
            .all(|p| p.refused.is_some()),
        "the refused policy stays"
    );

    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    server.abort();
}

#[tokio::test]
async fn a_cluster_without_the_cilium_crd_syncs_with_no_cilium_policies() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (commands, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(handle, rx));
    commands
        .send(Command::SetList(NODES, vec![node()]))
        .unwrap();
    commands.send(Command::NotServed(CNPS)).unwrap();

    let cancel = CancellationToken::new();
    let LocalSourceHandle {
        mut state,
        mut status,
        task,
    } = KubeSource::spawn(Client::new(service, "default"), cancel.clone());
    let s = until(&mut state, "the state", |s| !s.nodes.is_empty()).await;
    assert!(s.policies.is_empty() && s.pods.is_empty());
    let st = until(&mut status, "synced", |s| s.synced).await;
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    assert_eq!(st.not_served, ["ciliumnetworkpolicies.cilium.io"]);

    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    server.abort();
}
