use std::collections::BTreeSet;
use std::time::Duration;

use meshpath_api::health::{Check, CheckKind, CheckName, CheckState};
use meshpath_api::local_source::{LocalSourceKind, LocalSourceState, WatchedResource};
use meshpath_control::clustermesh::{CidrConflict, RemoteStatus};
use meshpath_control::refusal::Refusal;
use meshpath_control::ClusterName;
use meshpath_dataplane::conntrack::CtStats;
use meshpath_dataplane::stats::{Counters, Forward};
use meshpath_dataplane::{DropReason, PortId, Verdict};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::*;
use crate::agent::kvstore::{operation_latency, OperationLabels};
use crate::agent::report::{ConntrackReport, Traffic, TrafficDirection, WireguardReport};

/// A node that forwarded and dropped, with one remote cluster, one global service and one program.
struct Fixture {
    report: Arc<WorkerReport>,
    ports: Vec<(PortStats, Option<(String, PortRole)>)>,
    mesh: MeshStatus,
    external_workloads_watch: Option<RemoteStatus>,
}

impl MetricsView for Fixture {
    fn cluster(&self) -> &str {
        "cluster1"
    }

    fn node(&self) -> &str {
        "c1-n1"
    }

    fn report(&self) -> Arc<WorkerReport> {
        self.report.clone()
    }

    fn ports(&self) -> Vec<(PortStats, Option<(String, PortRole)>)> {
        self.ports.clone()
    }

    fn xdp(&self) -> Vec<XdpStatus> {
        vec![XdpStatus {
            interface: "uplink".into(),
            role: PortRole::Uplink,
            pass: 10,
            to_xsk: 20,
            dropped_no_socket: 3,
            dropped_unknown_peer: 4,
            error: None,
        }]
    }

    fn mesh(&self) -> Option<MeshStatus> {
        Some(self.mesh.clone())
    }

    fn external_workloads_watch(&self) -> Option<RemoteStatus> {
        self.external_workloads_watch.clone()
    }

    fn global_services(&self) -> u64 {
        1
    }

    fn flows(&self) -> FlowLogStatus {
        FlowLogStatus {
            kept: 5,
            capacity: 1024,
            seen: 9,
            lost: 2,
        }
    }

    fn health(&self) -> Health {
        Health::of(vec![Check {
            name: CheckName::Worker,
            kind: CheckKind::Liveness,
            state: CheckState::Ok,
            detail: String::new(),
        }])
    }

    fn workers(&self) -> Vec<WorkerStatus> {
        (0..2)
            .map(|i| WorkerStatus {
                index: i,
                core: u32::from(i),
                queue: u32::from(i),
                rx: 100 + u64::from(i),
                tx: 90,
                handed_off: 7,
                received_handoff: 6,
                loop_turns: 777 + u64::from(i),
            })
            .collect()
    }

    fn policy_refusals(&self) -> Vec<(String, usize)> {
        vec![("CiliumNetworkPolicy default/office".into(), 1)]
    }

    fn local_source(&self) -> LocalSourceStatus {
        LocalSourceStatus {
            kind: LocalSourceKind::Kubernetes,
            location: "https://198.18.1.254:6443/".into(),
            state: LocalSourceState::Failing,
            problem: Some("watching pods: connection refused".into()),
            server_version: Some("v1.37.0".into()),
            since: None,
            resources: vec![WatchedResource {
                api: "core/v1::Pods".into(),
                resource: "pods".into(),
                served: true,
                failing: Some("connection refused".into()),
                failures: 3,
            }],
            errors: vec![],
        }
    }
}

fn port(id: u16, role: PortRole, interface: &str) -> (PortStats, Option<(String, PortRole)>) {
    let mut p = PortStats::new(PortId(id));
    p.rx = 7;
    (p, Some((interface.into(), role)))
}

fn fixture() -> Fixture {
    let mut counters = Counters::default();
    counters.count_received(100);
    counters.count_forward(Forward::Tunnel, 150);
    let mut traffic = Traffic::default();
    traffic.record(TrafficDirection::Egress, Verdict::Transmit(PortId(0)), 150);
    traffic.record(
        TrafficDirection::Ingress,
        Verdict::Drop(DropReason::PolicyDenied),
        60,
    );
    let conntrack = ConntrackReport {
        entries: 16384,
        capacity: 65536,
        stats: CtStats {
            evicted_unreplied: 5,
            refused_quota: 1,
            ..Default::default()
        },
    };
    let mut uplink = port(0, PortRole::Uplink, "uplink");
    uplink.0.kernel.rx_ring_full = 68;
    uplink.0.tx_ring_full = 2;
    let mut pod = port(2, PortRole::Pod, "pod1");
    pod.0.to_kernel_unsupported = 4;
    let c2 = ClusterName::new("cluster2").unwrap();
    let mut remote = RemoteStatus {
        ready: true,
        failures: 3,
        nodes: 2,
        endpoints: 12,
        identities: 5,
        services: 1,
        last_failure: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        ..RemoteStatus::new(&c2, 1)
    };
    remote.set_refused_on_receipt([(Refusal::ReservedIdentity, 4)].into());
    remote.set_refused_on_admission([(Refusal::PodCidrOverlap, 1)].into());
    remote.cidr_conflicts = vec![CidrConflict {
        node: "n1".into(),
        prefix: "100.64.1.0/25".into(),
        other_cluster: "cluster1".into(),
        other_prefix: "100.64.1.0/24".into(),
    }];
    Fixture {
        report: Arc::new(WorkerReport {
            counters,
            conntrack,
            traffic,
            wireguard: wireguard(),
        }),
        ports: vec![uplink, port(1, PortRole::Host, "meshpath_net"), pod],
        mesh: MeshStatus::from([(c2, remote)]),
        external_workloads_watch: Some(RemoteStatus {
            failures: 2,
            ..RemoteStatus::new(&ClusterName::new("cluster1").unwrap(), 1)
        }),
    }
}

fn scrape_text(view: Fixture, publish: Histogram) -> String {
    let kvstore = operation_latency();
    kvstore
        .get_or_create(&OperationLabels {
            action: "Status".into(),
            kind: "read".into(),
            outcome: "success".into(),
            scope: "cluster".into(),
        })
        .observe(0.002);
    let publication = PublicationMetrics::default();
    publication.lease_recoveries.inc();
    encode(&registry(view, publish, kvstore, &publication)).unwrap()
}

#[test]
fn a_scrape_shows_every_family_with_cilium_names_and_labels() {
    let text = scrape_text(fixture(), publish_latency());
    let source = r#"source_cluster="cluster1",source_node_name="c1-n1""#;
    for line in [
        r#"cilium_drop_count_total{reason="Policy denied",direction="INGRESS"} 1"#.to_owned(),
        r#"cilium_drop_bytes_total{reason="Policy denied",direction="INGRESS"} 60"#.into(),
        r#"cilium_drop_count_total{reason="Policy denied",direction="EGRESS"} 0"#.into(),
        r#"cilium_drop_count_total{reason="No path to the kernel",direction="EGRESS"} 4"#.into(),
        r#"cilium_drop_count_total{reason="TX ring full",direction="EGRESS"} 2"#.into(),
        r#"cilium_forward_count_total{direction="EGRESS"} 1"#.into(),
        r#"cilium_forward_bytes_total{direction="EGRESS"} 150"#.into(),
        r#"cilium_bpf_map_pressure{map_name="conntrack"} 0.25"#.into(),
        "meshpath_conntrack_entries 16384".into(),
        r#"meshpath_conntrack_evictions_total{kind="unreplied"} 5"#.into(),
        r#"meshpath_conntrack_refusals_total{reason="quota"} 1"#.into(),
        "meshpath_received_packets_total 1".into(),
        r#"meshpath_forwarded_bytes_total{kind="tunnel"} 150"#.into(),
        r#"meshpath_port_rx_packets_total{port="0",interface="uplink",role="uplink"} 7"#.into(),
        r#"meshpath_port_kernel_drops_total{port="0",interface="uplink",role="uplink",reason="rx_ring_full"} 68"#.into(),
        r#"meshpath_xdp_verdicts_total{interface="uplink",role="uplink",verdict="dropped_no_socket"} 3"#.into(),
        format!("cilium_clustermesh_remote_clusters{{{source}}} 1"),
        format!(r#"cilium_clustermesh_remote_cluster_readiness_status{{{source},target_cluster="cluster2"}} 1"#),
        format!(r#"cilium_clustermesh_remote_cluster_failures{{{source},target_cluster="cluster2"}} 3"#),
        format!(r#"cilium_clustermesh_remote_cluster_nodes{{{source},target_cluster="cluster2"}} 2"#),
        format!(r#"cilium_clustermesh_remote_cluster_last_failure_ts{{{source},target_cluster="cluster2"}} 1700000000"#),
        format!(r#"meshpath_clustermesh_remote_cluster_endpoints{{{source},target_cluster="cluster2"}} 12"#),
        format!("cilium_clustermesh_global_services{{{source}}} 1"),
        format!("meshpath_external_workloads_watch_ready{{{source}}} 0"),
        format!("meshpath_external_workloads_watch_failures{{{source}}} 2"),
        format!(r#"meshpath_clustermesh_remote_cluster_refused{{{source},target_cluster="cluster2",reason="reserved_identity"}} 4"#),
        format!(r#"meshpath_clustermesh_remote_cluster_refused{{{source},target_cluster="cluster2",reason="pod_cidr_overlap"}} 1"#),
        format!(r#"meshpath_clustermesh_remote_cluster_pod_cidr_conflicts{{{source},target_cluster="cluster2",conflicting_cluster="cluster1"}} 1"#),
        r#"meshpath_policy_refused_endpoints{policy="CiliumNetworkPolicy default/office"} 1"#.into(),
        r#"hubble_lost_events_total{source="observer_events_queue"} 2"#.into(),
        "meshpath_flows_logged_total 9".into(),
        "meshpath_agent_live 1".into(),
        "meshpath_kubernetes_api_reachable 0".into(),
        r#"meshpath_kubernetes_watch_failures_total{resource="pods"} 3"#.into(),
        r#"meshpath_worker_loop_turns_total{worker="0"} 777"#.into(),
        r#"meshpath_worker_loop_turns_total{worker="1"} 778"#.into(),
        r#"meshpath_worker_packets_total{worker="1",kind="rx"} 101"#.into(),
        r#"meshpath_worker_packets_total{worker="0",kind="handed_off"} 7"#.into(),
        r#"meshpath_worker_packets_total{worker="0",kind="received_handoff"} 6"#.into(),
        r#"meshpath_worker_packets_total{worker="1",kind="tx"} 90"#.into(),
        r#"cilium_kvstore_operations_duration_seconds_count{action="Status",kind="read",outcome="success",scope="cluster"} 1"#.into(),
        "meshpath_snapshot_publish_latency_seconds_count 0".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    let version = text
        .lines()
        .find(|l| l.starts_with("cilium_version{"))
        .unwrap_or_default();
    assert!(
        version.contains(r#"version="0.1.0""#) && version.ends_with(" 1"),
        "{version}"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with("cilium_process_resident_memory_bytes ")));
}

/// Every family a scrape shows is in README.md's table, and every one the table names is shown.
#[test]
fn metric_names_match_the_readme_table() {
    let text = scrape_text(fixture(), publish_latency());
    let scraped: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            let family = ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|_| name.contains("_seconds"));
            family.unwrap_or(name).to_owned()
        })
        .collect();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let documented = readme_metric_names(&readme);
    let undocumented: Vec<_> = scraped.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&scraped).collect();
    assert!(
        undocumented.is_empty(),
        "scraped but not in README.md's table: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "in README.md's table but not scraped: {missing:?}"
    );
}

/// The names in the first column of README.md's metrics table, `{a,b}` expanded.
fn readme_metric_names(readme: &str) -> BTreeSet<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("README.md has a Metrics section");
    let mut names = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = row.split('|').nth(1).unwrap_or_default();
        for quoted in cell.split('`').skip(1).step_by(2) {
            names.extend(expand(quoted));
        }
    }
    names
}

fn expand(pattern: &str) -> Vec<String> {
    let Some((head, rest)) = pattern.split_once('{') else {
        return vec![pattern.to_owned()];
    };
    let Some((alternatives, tail)) = rest.split_once('}') else {
        return vec![pattern.to_owned()];
    };
    alternatives
        .split(',')
        .flat_map(|a| expand(&format!("{head}{a}{tail}")))
        .collect()
}

#[test]
fn readme_patterns_expand() {
    assert_eq!(
        expand("meshpath_port_{rx,tx}_packets_total"),
        [
            "meshpath_port_rx_packets_total",
            "meshpath_port_tx_packets_total"
        ]
    );
}

#[test]
fn a_publish_without_its_batch_time_is_not_timed() {
    let latency = publish_latency();
    let (tx, rx) = watch::channel(Arc::new(tables()));
    let mut sink = TimedSink::new(tx, latency.clone());
    let next = Arc::new(tables());
    sink.publish(next.clone());
    assert!(Arc::ptr_eq(&rx.borrow(), &next));
    let text = scrape_text(fixture(), latency.clone());
    assert!(
        text.contains("meshpath_snapshot_publish_latency_seconds_count 0\n"),
        "{text}"
    );
    let taken = Instant::now() - Duration::from_millis(50);
    sink.publish_batch(Arc::new(tables()), taken);
    let text = scrape_text(fixture(), latency);
    let sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("meshpath_snapshot_publish_latency_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        (0.05..1.0).contains(&sum),
        "from the batch being taken: {sum}"
    );
}

fn tables() -> Tables {
    use meshpath_dataplane::snapshot::Capacities;
    let node = meshpath_dataplane::testbed::node_config();
    let small = Capacities {
        endpoints: 1,
        ipcache: 1,
        services: 1,
        nodes: 1,
    };
    Tables::empty(node, small)
}

#[tokio::test]
async fn the_endpoint_serves_the_registry_over_http() {
    let listener = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let registry = Arc::new(registry(
        fixture(),
        publish_latency(),
        operation_latency(),
        &PublicationMetrics::default(),
    ));
    let cancel = CancellationToken::new();
    let server = tokio::spawn(serve(listener, registry, cancel.clone()));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    assert!(
        response.contains("cilium_clustermesh_global_services{"),
        "{response}"
    );
    cancel.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_address_in_use_is_refused_naming_the_key() {
    let taken = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let error = bind(taken.local_addr().unwrap()).await.unwrap_err();
    assert!(
        format!("{error:#}").starts_with("`metrics`: cannot listen on"),
        "{error:#}"
    );
}

proptest! {
    /// The worker's own drops land on the direction their port sends: what a pod port gave the
    /// kernel is egress, what the uplink's full tx ring dropped is egress too, and the rest ingress.
    #[test]
    fn worker_drops_are_summed_per_direction(
        ports in proptest::collection::vec((0u64..1 << 40, 0u64..1 << 40, 0usize..3), 0..6),
    ) {
        let roles = [PortRole::Uplink, PortRole::Host, PortRole::Pod];
        let mut fixture = fixture();
        fixture.ports = ports
            .iter()
            .enumerate()
            .map(|(i, (to_kernel, ring_full, role))| {
                let (mut p, named) = port(i as u16, roles[*role], "x");
                p.to_kernel_unsupported = *to_kernel;
                p.tx_ring_full = *ring_full;
                (p, named)
            })
            .collect();
        let sum = |pod: bool, field: fn(&(u64, u64, usize)) -> u64| -> u64 {
            ports.iter().filter(|p| (p.2 == 2) == pod).map(field).sum()
        };
        let expected = [
            ("No path to the kernel", "EGRESS", sum(true, |p| p.0)),
            ("No path to the kernel", "INGRESS", sum(false, |p| p.0)),
            ("TX ring full", "EGRESS", sum(false, |p| p.1)),
            ("TX ring full", "INGRESS", sum(true, |p| p.1)),
        ];
        let text = scrape_text(fixture, publish_latency());
        for (reason, direction, n) in expected {
            let line = format!(r#"cilium_drop_count_total{{reason="{reason}",direction="{direction}"}} {n}"#);
            prop_assert!(text.lines().any(|l| l == line), "missing {}", line);
        }
    }
}

/// The Grafana dashboard in deploy/ queries only metrics the agent exports.
#[test]
fn the_dashboard_queries_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let exported = readme_metric_names(&readme);
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
    {
        let expr = target["expr"].as_str().unwrap_or_default();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| {
                ["cilium_", "meshpath_", "hubble_"]
                    .iter()
                    .any(|p| w.starts_with(p))
            })
            .collect();
        assert!(!names.is_empty(), "{expr}");
        for name in names {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                exported.contains(family),
                "{family} in `{expr}` is not exported"
            );
        }
    }
}

/// A strict node with one peer that has a session and one still handshaking.
fn wireguard() -> WireguardReport {
    use meshpath_dataplane::wireguard::{EncryptionMode, PeerReport, PublicKey, WireguardStats};
    let peer = |last: u8, age: Option<u64>| PeerReport {
        addr: std::net::Ipv4Addr::new(198, 18, 1, last).into(),
        key: PublicKey([last; 32]),
        last_handshake: age.map(std::time::Duration::from_secs),
        tx_bytes: 100,
        rx_bytes: 200,
    };
    WireguardReport {
        mode: EncryptionMode::Strict,
        public_key: Some(PublicKey([1; 32])),
        stats: WireguardStats {
            encrypted: 5,
            decrypted: 6,
            handshakes_initiated: 2,
            held: 1,
            outbox_overflowed: 0,
        },
        peers: vec![peer(2, Some(12)), peer(3, None)],
    }
}

#[test]
fn wireguard_peers_show_their_state_and_the_mode_its_name() {
    let text = scrape_text(fixture(), publish_latency());
    for line in [
        "meshpath_encryption_mode{mode=\"strict\"} 1",
        "meshpath_wireguard_peer_established{peer=\"198.18.1.2\"} 1",
        "meshpath_wireguard_peer_established{peer=\"198.18.1.3\"} 0",
        "meshpath_wireguard_peer_handshake_age_seconds{peer=\"198.18.1.2\"} 12.0",
        "meshpath_wireguard_packets_total{kind=\"encrypted\"} 5",
        "meshpath_wireguard_handshakes_initiated_total 2",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(!text.contains("handshake_age_seconds{peer=\"198.18.1.3\"}"));
}
