//! The operator CLI's output, table and `-o json`, for every command that reads the agent's status
//! socket: the real binary against a fake agent, a test-owned unix socket serving a canned status
//! document built from the interface's types (`meshpath_api`), as the agent builds it.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use meshpath_api::clustermesh::{
    CidrConflict, ClusterMeshStatus, Refusal, RemoteClusterStatus, SyncStatus,
};
use meshpath_api::endpoint::{EndpointOrigin, EndpointRow, EndpointState};
use meshpath_api::health::{Check, CheckKind, CheckName, CheckState, Health};
use meshpath_api::identity::{IdentityRow, Label};
use meshpath_api::kvstore::KvStoreStatus;
use meshpath_api::local_source::{
    LocalSourceKind, LocalSourceState, LocalSourceStatus, WatchedResource,
};
use meshpath_api::node::{NextHop, NodeRow, Reach, TunnelProtocol};
use meshpath_api::policy::{
    AllowRow, DirectionRow, EndpointPolicyRow, PolicyPeer, PolicyRefusalRow,
};
use meshpath_api::service::{BackendInfo, BackendState, ServiceStatus, ServiceType};
use meshpath_api::status::{
    AgentStatus, ConntrackStatus, DataplaneStatus, FlowLogStatus, KernelDrops, PortRole,
    PortStatus, TableSizes,
};
use meshpath_api::version::VersionInfo;
use meshpath_api::{DropReason, ForwardKind};

fn mesh() -> ClusterMeshStatus {
    let remote = RemoteClusterStatus {
        name: "cluster2".into(),
        ready: true,
        connected: true,
        mutual_tls: true,
        endpoints_configured: 1,
        config_retrieved: true,
        cluster_id: Some(2),
        sync_canaries: true,
        synced: SyncStatus {
            nodes: true,
            endpoints: true,
            identities: true,
            services: true,
        },
        nodes: 2,
        endpoints: 4,
        identities: 3,
        services: 1,
        failures: 1,
        ..Default::default()
    };
    let hostile = RemoteClusterStatus {
        name: "cluster3".into(),
        connected: true,
        endpoints_configured: 1,
        refused: [
            (Refusal::ReservedIdentity, 2),
            (Refusal::OverKeyLimit, 7),
            (Refusal::PodCidrOverlap, 1),
        ]
        .into(),
        cidr_conflicts: vec![CidrConflict {
            node: "n1".into(),
            prefix: "10.1.0.0/25".into(),
            other_cluster: "cluster1".into(),
            other_prefix: "10.1.0.0/24".into(),
        }],
        degraded: Some("7 keys ignored past the key limit (250000)".into()),
        ..Default::default()
    };
    [
        ("cluster2".to_owned(), remote),
        ("cluster3".to_owned(), hostile),
    ]
    .into()
}

fn labels(labels: &[&str]) -> Vec<Label> {
    labels.iter().map(|l| l.parse().unwrap()).collect()
}

fn canned() -> AgentStatus {
    AgentStatus {
        cluster: "cluster1".into(),
        cluster_id: Some(1),
        node: "node1".into(),
        dataplane: DataplaneStatus {
            received: 1234,
            forwarded: [(ForwardKind::LocalPod, 1000), (ForwardKind::Tunnel, 200)].into(),
            dropped: [(DropReason::PolicyDenied, 34)].into(),
            ports: vec![PortStatus {
                port: 0,
                interface: Some("uplink".into()),
                role: Some(PortRole::Uplink),
                rx: 1234,
                tx: 1200,
                tx_ring_full: 3,
                kernel: KernelDrops {
                    rx_ring_full: 68,
                    ..Default::default()
                },
            }],
            umem: None,
            workers: vec![],
        },
        tables: TableSizes {
            endpoints: 2,
            ipcache: 9,
            services: 1,
            nodes: 3,
        },
        services: vec![ServiceStatus {
            id: Some(3),
            name: Some("default/web".into()),
            frontend: "10.96.0.10:80/TCP".parse().unwrap(),
            service_type: ServiceType::ClusterIp,
            backends: vec![
                BackendInfo {
                    backend: "10.1.0.3:80".parse().unwrap(),
                    cluster: Some(1),
                    state: BackendState::Active,
                },
                BackendInfo {
                    backend: "10.2.0.3:80".parse().unwrap(),
                    cluster: Some(2),
                    state: BackendState::Terminating,
                },
            ],
        }],
        clustermesh: Some(mesh()),
        external_workloads_watch: None,
        nodes: vec![
            NodeRow {
                cluster: "cluster1".into(),
                name: "node1".into(),
                address: Some("198.18.1.1".parse().unwrap()),
                pod_cidrs: vec!["10.1.0.0/24".parse().unwrap()],
                reach: Some(Reach::Local),
            },
            NodeRow {
                cluster: "cluster2".into(),
                name: "node1".into(),
                address: Some("198.18.2.1".parse().unwrap()),
                pod_cidrs: vec![
                    "10.2.0.0/24".parse().unwrap(),
                    "fd00:2::/64".parse().unwrap(),
                ],
                reach: Some(Reach::Tunnel {
                    protocol: TunnelProtocol::Geneve,
                    next_hop: NextHop::Router,
                }),
            },
        ],
        identities: vec![
            IdentityRow {
                id: 2,
                cluster: None,
                labels: labels(&["reserved:world"]),
            },
            IdentityRow {
                id: 65537,
                cluster: Some("cluster1".into()),
                labels: labels(&[
                    "k8s:app=x-wing",
                    "k8s:io.cilium.k8s.policy.cluster=cluster1",
                ]),
            },
            IdentityRow {
                id: 131073,
                cluster: Some("cluster2".into()),
                labels: labels(&["k8s:app=rebel-base"]),
            },
        ],
        policies: vec![EndpointPolicyRow {
            endpoint: "default/rebel-base".into(),
            identity: 65538,
            ingress: DirectionRow {
                enforced: true,
                allow: vec![AllowRow {
                    peer: PolicyPeer::Identity(131073),
                    ports: vec!["80/TCP".parse().unwrap()],
                }],
                denied_by: vec![],
            },
            egress: DirectionRow {
                enforced: true,
                allow: vec![],
                denied_by: vec![REFUSED.into()],
            },
        }],
        policy_refusals: vec![PolicyRefusalRow {
            policy: "CiliumNetworkPolicy default/office".into(),
            why: "`spec.egress[0]`: unknown field `toCIDR`".into(),
            endpoints: vec![65538],
            ingress: false,
            egress: true,
        }],
        endpoints: vec![EndpointRow {
            id: 2,
            pod: "default/x-wing".into(),
            interface: Some("pod1".into()),
            identity: 65537,
            labels: labels(&[
                "k8s:app=x-wing",
                "k8s:io.cilium.k8s.policy.cluster=cluster1",
            ]),
            ipv4: Some("10.1.0.3".parse().unwrap()),
            ipv6: Some("fd00:1::3".parse().unwrap()),
            ingress_enforced: true,
            egress_enforced: false,
            state: EndpointState::Ready,
            origin: EndpointOrigin::Cni,
        }],
        health: Some(healthy()),
        version: Some(VersionInfo::new("0.1.0", "3f2a9c1d0e4b")),
        kvstore: Some(KvStoreStatus::disabled()),
        local_source: Some(LocalSourceStatus {
            kind: LocalSourceKind::Kubernetes,
            location: "https://10.96.0.1:443/".into(),
            state: LocalSourceState::Ok,
            problem: None,
            server_version: Some("v1.37.0".into()),
            since: None,
            resources: vec![WatchedResource {
                api: "core/v1::Pods".into(),
                resource: "pods".into(),
                served: true,
                failing: None,
                failures: 0,
            }],
            errors: vec![],
        }),
        global_services: 1,
        conntrack: Some(ConntrackStatus {
            entries: 12,
            capacity: 65536,
            ..Default::default()
        }),
        xdp: vec![],
        flows: Some(FlowLogStatus::default()),
        encryption: None,
    }
}

const REFUSED: &str =
    "CiliumNetworkPolicy default/office: `spec.egress[0]`: unknown field `toCIDR`";

fn healthy() -> Health {
    Health::of(vec![Check {
        name: CheckName::Worker,
        kind: CheckKind::Liveness,
        state: CheckState::Ok,
        detail: "beat 1".into(),
    }])
}

/// A fake agent on a fresh socket: every connection gets the canned document, then the socket closes.
fn fake_agent(test: &str) -> PathBuf {
    serve(test, canned())
}

/// A fake agent serving `status` to every connection.
fn serve(test: &str, status: AgentStatus) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mp-cli-{}-{test}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let body = serde_json::to_vec(&status).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(&body);
        }
    });
    path
}

fn meshpath(socket: &PathBuf, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("meshpath runs")
}

/// Runs a command in table form; its stdout.
fn table(socket: &PathBuf, args: &[&str]) -> String {
    let out = meshpath(socket, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command with `-o json`; its stdout parsed.
fn json(socket: &PathBuf, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
    let out = meshpath(socket, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

fn has_line(text: &str, words: &[&str]) -> bool {
    text.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        words.iter().all(|w| fields.contains(w))
    })
}

#[test]
fn status() {
    let socket = fake_agent("status");
    let text = table(&socket, &["status"]);
    assert!(has_line(&text, &["Node:", "cluster1/node1"]), "{text}");
    assert!(
        text.contains("2 endpoints, 9 ipcache entries, 1 services, 3 nodes"),
        "{text}"
    );
    assert!(has_line(&text, &["Received:", "1234"]), "{text}");
    assert!(has_line(&text, &["Forwarded:", "200", "tunnel"]), "{text}");
    assert!(
        has_line(&text, &["Dropped:", "34", "policy_denied"]),
        "{text}"
    );
    assert!(
        has_line(&text, &["0", "uplink", "uplink", "1234", "1200", "3", "68"]),
        "per port, with the kernel's drops: {text}"
    );
    assert!(
        has_line(
            &text,
            &[
                "ClusterMesh:",
                "1/2",
                "remote",
                "clusters",
                "ready,",
                "1",
                "global-services"
            ]
        ),
        "{text}"
    );
    assert!(has_line(&text, &["KVStore:", "Ok", "Disabled"]), "{text}");
    assert!(
        has_line(
            &text,
            &[
                "Kubernetes:",
                "Ok",
                "v1.37.0",
                "at",
                "https://10.96.0.1:443/"
            ]
        ),
        "{text}"
    );
    assert!(
        has_line(&text, &["Kubernetes", "APIs:", r#"["core/v1::Pods"]"#]),
        "{text}"
    );
    assert_eq!(
        json(&socket, &["status"])["local_source"]["state"],
        "ok",
        "the status's JSON carries the source"
    );
    assert!(
        has_line(&text, &["Meshpath:", "Ok", "0.1.0", "(0.1.0-3f2a9c1d0e4b)"]),
        "{text}"
    );
    assert!(text.contains("Conntrack:     12/65536 entries"), "{text}");
    assert_eq!(table(&socket, &["status", "--brief"]), "OK\n");
    assert!(
        text.contains("Policy:        refused CiliumNetworkPolicy default/office — 1 endpoint(s) denied egress: `spec.egress[0]`: unknown field `toCIDR`\n"),
        "{text}"
    );
    let doc = json(&socket, &["status"]);
    assert_eq!(doc["cluster"], "cluster1");
    assert_eq!(doc["policy_refusals"][0]["endpoints"][0], 65538);
    assert_eq!(doc["dataplane"]["received"], 1234);
    assert_eq!(doc["dataplane"]["dropped"]["policy_denied"], 34);
    assert_eq!(doc["tables"]["ipcache"], 9);
    assert_eq!(doc["clustermesh"]["cluster2"]["ready"], true);
    let back: AgentStatus = serde_json::from_value(doc).expect("the interface's type");
    assert_eq!(back.identities.len(), 3);
    assert_eq!(back.policies, canned().policies);
}

#[test]
fn service_list() {
    let socket = fake_agent("service");
    let text = table(&socket, &["service", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID  Frontend           Service Type  Backend"),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &[
                "3",
                "10.96.0.10:80/TCP",
                "ClusterIP",
                "1",
                "=>",
                "10.1.0.3:80/TCP",
                "(active)"
            ]
        ),
        "{text}"
    );
    assert!(
        has_line(&text, &["2", "=>", "10.2.0.3:80/TCP", "(terminating)"]),
        "{text}"
    );
    let doc = json(&socket, &["service", "list"]);
    assert_eq!(doc[0]["id"], 3);
    assert_eq!(doc[0]["type"], "ClusterIP");
    assert_eq!(doc[0]["frontend"], "10.96.0.10:80/TCP");
    assert_eq!(doc[0]["backends"][1]["cluster"], 2);
    assert_eq!(doc[0]["backends"][1]["state"], "terminating");
}

#[test]
fn endpoint_list() {
    let socket = fake_agent("endpoint");
    let text = table(&socket, &["endpoint", "list"]);
    assert!(
        has_line(&text, &["ENDPOINT", "POLICY", "(ingress)", "IDENTITY"]),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &[
                "2",
                "Enabled",
                "Disabled",
                "65537",
                "k8s:app=x-wing",
                "fd00:1::3",
                "10.1.0.3",
                "ready"
            ]
        ),
        "{text}"
    );
    assert!(
        has_line(&text, &["k8s:io.cilium.k8s.policy.cluster=cluster1"]),
        "{text}"
    );
    let doc = json(&socket, &["endpoint", "list"]);
    assert_eq!(doc[0]["pod"], "default/x-wing");
    assert_eq!(doc[0]["labels"][0], "k8s:app=x-wing");
}

#[test]
fn version_of_client_and_agent() {
    let socket = fake_agent("version");
    let text = table(&socket, &["version"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("Client: 0.1.0 (0.1.0-"), "{text}");
    assert_eq!(lines[1], "Agent:  0.1.0 (0.1.0-3f2a9c1d0e4b)");
    let doc = json(&socket, &["version"]);
    assert_eq!(doc["agent"]["commit"], "3f2a9c1d0e4b");
    assert_eq!(doc["client"]["version"], env!("CARGO_PKG_VERSION"));
    let commit = doc["client"]["commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 12, "{commit}");
    let gone = std::env::temp_dir().join(format!("mp-cli-{}-no-agent.sock", std::process::id()));
    let out = meshpath(&gone, &["version"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Client: 0.1.0") && text.contains("Agent:  unavailable: no agent answers"),
        "{text}"
    );
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("clustermesh"),
            "{shell}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .arg("man")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(".ie"),
        "roff on stdout"
    );
    let dir = std::env::temp_dir().join(format!("mp-cli-{}-man", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(dir.join("meshpath-observe.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_list() {
    let socket = fake_agent("node");
    let text = table(&socket, &["node", "list"]);
    assert!(
        has_line(&text, &["NODE", "ADDRESS", "POD", "CIDRS", "REACHED"]),
        "{text}"
    );
    assert!(
        has_line(
            &text,
            &["cluster1/node1", "198.18.1.1", "10.1.0.0/24", "local"]
        ),
        "{text}"
    );
    assert!(has_line(
        &text,
        &[
            "cluster2/node1",
            "198.18.2.1",
            "10.2.0.0/24,fd00:2::/64",
            "geneve",
            "tunnel",
            "via",
            "router"
        ]
    ));
    let doc = json(&socket, &["node", "list"]);
    assert_eq!(doc.as_array().map(Vec::len), Some(2));
    assert_eq!(doc[1]["cluster"], "cluster2");
    assert_eq!(doc[1]["pod_cidrs"][1], "fd00:2::/64");
    assert_eq!(doc[1]["reach"]["mode"], "tunnel");
    assert_eq!(doc[1]["reach"]["protocol"], "geneve");
}

#[test]
fn clustermesh_status() {
    let socket = fake_agent("clustermesh");
    // cluster3 is degraded: the command says so in full, and exits 1 as not all remotes are ready.
    let out = meshpath(&socket, &["clustermesh", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("ClusterMesh: 1/2 clusters ready\n"),
        "{text}"
    );
    let cluster3 = text.split("  cluster3: ").nth(1).unwrap_or_default();
    assert!(cluster3.starts_with("degraded, 0 nodes"), "{text}");
    for line in [
        "  └ refused: 7 over_key_limit, 1 pod_cidr_overlap, 2 reserved_identity\n",
        "  └ pod CIDR 10.1.0.0/25 of node n1 refused: overlaps cluster1's 10.1.0.0/24\n",
        "  └ degraded: 7 keys ignored past the key limit (250000)\n",
    ] {
        assert!(cluster3.contains(line), "{line}: {text}");
    }
    assert!(
        text.contains(
            "cluster2: ready, 2 nodes, 4 endpoints, 3 identities, 1 services, 1 failures"
        ),
        "{text}"
    );
    assert!(
        text.contains("cluster2: ready") && text.contains("  └ etcd: connected=true, mutual TLS\n"),
        "{text}"
    );
    assert!(
        text.contains("  └ etcd: connected=true, INSECURE (no client certificate)\n"),
        "cluster3 is read without TLS: {text}"
    );
    assert!(text.contains("cluster-id=2"), "{text}");
    let out = meshpath(&socket, &["clustermesh", "status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["cluster2"]["connected"], true);
    assert_eq!(doc["cluster2"]["identities"], 3);
    assert_eq!(doc["cluster2"]["synced"]["services"], true);
    assert_eq!(doc["cluster3"]["refused"]["over_key_limit"], 7);
    assert_eq!(
        doc["cluster3"]["cidr_conflicts"][0]["other_cluster"],
        "cluster1"
    );
}

#[test]
fn identity_list() {
    let socket = fake_agent("identity");
    let text = table(&socket, &["identity", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(has_line(lines[0], &["ID", "CLUSTER", "LABELS"]), "{text}");
    assert!(
        has_line(&text, &["65537", "cluster1", "k8s:app=x-wing"]),
        "{text}"
    );
    assert!(
        has_line(&text, &["k8s:io.cilium.k8s.policy.cluster=cluster1"]),
        "{text}"
    );
    assert!(
        has_line(&text, &["131073", "cluster2", "k8s:app=rebel-base"]),
        "{text}"
    );
    assert!(has_line(&text, &["2", "-", "reserved:world"]), "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    let doc = json(&socket, &["identity", "list"]);
    assert_eq!(doc[0]["id"], 2);
    assert_eq!(doc[0]["cluster"], serde_json::Value::Null);
    assert_eq!(doc[1]["id"], 65537);
    assert_eq!(doc[1]["labels"][0], "k8s:app=x-wing");
    assert_eq!(doc[2]["cluster"], "cluster2");
}

#[test]
fn policy_get() {
    let socket = fake_agent("policy");
    let text = table(&socket, &["policy", "get"]);
    let want = ["ENDPOINT", "IDENTITY", "DIRECTION", "PEER", "PORTS"];
    assert!(has_line(&text, &want), "{text}");
    let ingress = [
        "default/rebel-base",
        "65538",
        "ingress",
        "131073",
        "80/TCP",
        "k8s:app=rebel-base",
    ];
    assert!(has_line(&text, &ingress), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("egress") && l.ends_with(&format!("none (refused: {REFUSED})"))),
        "{text}"
    );
    let doc = json(&socket, &["policy", "get"]);
    assert_eq!(doc[0]["endpoint"], "default/rebel-base");
    assert_eq!(doc[0]["ingress"]["enforced"], true);
    assert_eq!(doc[0]["ingress"]["allow"][0]["peer"], "131073");
    assert_eq!(doc[0]["ingress"]["allow"][0]["ports"][0], "80/TCP");
    assert_eq!(doc[0]["egress"]["enforced"], true);
    assert_eq!(doc[0]["egress"]["denied_by"][0], REFUSED);
}

#[test]
fn an_unhealthy_agent_exits_non_zero_and_says_why() {
    let mut sick = canned();
    sick.health = Some(Health::of(vec![Check {
        name: CheckName::Worker,
        kind: CheckKind::Liveness,
        state: CheckState::Failing,
        detail: "no progress for 7.0s (at beat 12)".into(),
    }]));
    let socket = serve("sick", sick);
    let out = meshpath(&socket, &["status", "--brief"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "Failing: worker: no progress for 7.0s (at beat 12)\n");
    let out = meshpath(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Meshpath:      Failing: worker"));
    // Waiting for a health that does not come gives up in time, still saying why.
    let out = meshpath(
        &socket,
        &["status", "--brief", "--wait", "--wait-duration", "1s"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Failing: worker"));
}

#[test]
fn waiting_for_an_agent_that_comes_up() {
    let socket = std::env::temp_dir().join(format!("mp-cli-{}-late.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let waiting = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args([
            "status",
            "--brief",
            "--wait",
            "--wait-duration",
            "20s",
            "--socket",
        ])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let served = serve("late", canned());
    std::fs::rename(&served, &socket).unwrap();
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    let _ = std::fs::remove_file(&socket);
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let mut many = canned();
    many.nodes = (0..5000)
        .map(|i| NodeRow {
            cluster: "cluster1".into(),
            name: format!("node{i}"),
            address: Some("198.18.1.1".parse().unwrap()),
            pod_cidrs: vec!["10.1.0.0/24".parse().unwrap()],
            reach: None,
        })
        .collect();
    let socket = serve("pipe", many);
    let script = format!(
        "{} node list -o json --socket {} | head -n 3",
        env!("CARGO_BIN_EXE_meshpath"),
        socket.display()
    );
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        out.status.success(),
        "meshpath's own exit status is 0: {:?}",
        out.status
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn missing_socket_is_a_clear_error() {
    let socket = std::env::temp_dir().join(format!("mp-cli-{}-none.sock", std::process::id()));
    for args in [
        &["status"][..],
        &["identity", "list"],
        &["policy", "get", "-o", "json"],
    ] {
        let out = meshpath(&socket, args);
        assert!(!out.status.success(), "{args:?} succeeded without an agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no agent answers on"), "{stderr}");
        assert!(stderr.contains(&*socket.to_string_lossy()), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// A fake agent's observe socket beside `status`: reads the request line, answers `events`.
fn serve_flows(status: &std::path::Path, events: Vec<String>) {
    use std::io::BufRead;
    let path = meshpath_api::client::observe_socket(status);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut request = String::new();
            let _ = std::io::BufReader::new(&stream).read_line(&mut request);
            let mut stream = stream;
            for event in &events {
                let _ = writeln!(stream, "{event}");
            }
        }
    });
}

fn flow_line(node: &str, time: &str, pod: &str) -> String {
    format!(
        r#"{{"flow":{{"time":"{time}","verdict":"FORWARDED","IP":{{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"}},"l4":{{"UDP":{{"source_port":1,"destination_port":53}}}},"source":{{"identity":65537,"namespace":"default","pod_name":"{pod}"}},"destination":{{"identity":2}},"Type":"L3_L4","node_name":"{node}","event_type":{{"type":4}},"traffic_direction":"EGRESS","trace_observation_point":"TO_OVERLAY","is_reply":false,"Summary":"UDP","extensions":{{"@type":"type.googleapis.com/meshpath.FlowDetails","forward":"tunnel","arrival":"from_pod"}}}},"node_name":"{node}","time":"{time}"}}"#
    )
}

/// `--socket` once per agent: every agent's flows merged in time order, each line with its node.
#[test]
fn observe_merges_agents_in_time_order() {
    let dir = std::env::temp_dir().join(format!("mp-cli-{}-merge", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    serve_flows(
        &a,
        vec![
            flow_line("cluster1/n1", "2025-01-31T12:00:01.000Z", "a1"),
            flow_line("cluster1/n1", "2025-01-31T12:00:03.000Z", "a3"),
        ],
    );
    serve_flows(
        &b,
        vec![
            flow_line("cluster2/n1", "2025-01-31T12:00:02.000Z", "b2"),
            flow_line("cluster2/n1", "2025-01-31T12:00:04.000Z", "b4"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["observe", "--all", "-o", "json", "--socket"])
        .arg(&a)
        .arg("--socket")
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["flow"]["source"]["pod_name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pods, ["a1", "b2", "a3", "b4"]);
    // Followed, the streams are merged as they come (these end, so all comes out, in order).
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["observe", "-f", "-o", "json", "--socket"])
        .arg(&a)
        .arg("--socket")
        .arg(&b)
        .output()
        .unwrap();
    let followed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["flow"]["source"]["pod_name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(followed, ["a1", "b2", "a3", "b4"]);
    // The last N of all of them; the node of each line.
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["observe", "--last", "2"])
        .env(
            "MESHPATH_SOCKET",
            format!("{},{}", a.display(), b.display()),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("Jan 31 12:00:03.000 [cluster1/n1]: default/a3:1 (ID:65537) -> 10.0.0.2:53 (world) to-overlay FORWARDED (UDP)"), "{text}");
    assert!(lines[1].contains("[cluster2/n1]: default/b4:1"), "{text}");
    // One agent down: the others are shown, the missing one named, the exit status says so.
    let gone = dir.join("gone.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_meshpath"))
        .args(["observe", "--all", "--socket"])
        .arg(&a)
        .arg("--socket")
        .arg(&gone)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent answers on"));
    let _ = std::fs::remove_dir_all(&dir);
}
