//! Prometheus metrics of the agent, served over HTTP on the `metrics` address. Nothing here touches the
//! packet path: each scrape reads what the workers already copied out (pipeline counters, per-port
//! AF_XDP counters), the remote clusters' status board and the local state, as the status socket does.
//! The one metric fed from elsewhere is the snapshot publish latency, observed by [`TimedSink`] around
//! the builder's sink.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_control::local::LocalState;
use meshpath_control::snapshot::SnapshotSink;
use meshpath_dataplane::afxdp::{PortStats, StatsReader};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::stats::{Count, Counters, Forward};
use meshpath_dataplane::{DropReason, PortId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::report::WorkerReport;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the per-port AF_XDP counters come from: the running worker, or a fixed set in tests.
pub trait PortCounters: Send + Sync + 'static {
    fn ports(&self) -> Vec<PortStats>;
}

impl PortCounters for StatsReader {
    fn ports(&self) -> Vec<PortStats> {
        self.read().ports
    }
}

/// Everything a scrape reads; all of it copied out by its owner, none of it locked by a worker.
pub struct MetricsSources<P> {
    pub cluster: String,
    pub node: String,
    /// The port frames from the fabric arrive on; every other port is a pod's.
    pub uplink: PortId,
    pub report: Arc<ArcSwap<WorkerReport>>,
    pub ports: P,
    pub mesh: Option<watch::Receiver<MeshStatus>>,
    pub local: watch::Receiver<Arc<LocalState>>,
}

/// The histogram of the time from a builder batch being taken to its snapshot being stored.
pub fn publish_latency() -> Histogram {
    // 10 µs to ~2.6 s: a small batch takes microseconds, a full remote cluster's first sync far more.
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

/// The registry every metric of the agent is in, prefixed `meshpath_`.
pub fn registry<P: PortCounters>(sources: MetricsSources<P>, latency: Histogram) -> Registry {
    let mut registry = Registry::with_prefix("meshpath");
    registry.register(
        "snapshot_publish_latency_seconds",
        "Time from a builder batch being taken to its table snapshot being stored for the workers",
        latency,
    );
    registry.register_collector(Box::new(Scrape(sources)));
    registry
}

/// The registry in the text exposition format.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Binds the metrics address; a failure names the `metrics` key so the agent stops before it runs.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("`metrics`: cannot listen on {address}"))
}

/// Serves `GET /metrics` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    Ok(())
}

async fn scrape(State(registry): State<Arc<Registry>>) -> axum::response::Response {
    match encode(&registry) {
        Ok(text) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The builder's sink with the publish latency observed on the way through.
pub struct TimedSink<S> {
    inner: S,
    latency: Histogram,
}

impl<S: SnapshotSink> TimedSink<S> {
    pub fn new(inner: S, latency: Histogram) -> Self {
        TimedSink { inner, latency }
    }
}

impl<S: SnapshotSink> SnapshotSink for TimedSink<S> {
    fn publish(&mut self, tables: Arc<Tables>) {
        self.inner.publish(tables);
    }

    fn publish_batch(&mut self, tables: Arc<Tables>, taken: Instant) {
        self.inner.publish(tables);
        self.latency.observe(taken.elapsed().as_secs_f64());
    }
}

/// Which way a frame came in: the port it was received on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromPod,
    FromUplink,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::FromPod => "from_pod",
            Direction::FromUplink => "from_uplink",
        }
    }
}

struct Scrape<P>(MetricsSources<P>);

impl<P> fmt::Debug for Scrape<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrape({}/{})", self.0.cluster, self.0.node)
    }
}

impl<P: PortCounters> Collector for Scrape<P> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let s = &self.0;
        encode_pipeline(&s.report.load().counters, &mut encoder)?;
        encode_ports(&s.ports.ports(), s.uplink, &mut encoder)?;
        let labels = [
            ("source_cluster", s.cluster.as_str()),
            ("source_node_name", s.node.as_str()),
        ];
        if let Some(mesh) = &s.mesh {
            encode_mesh(&mesh.borrow(), &labels, &mut encoder)?;
        }
        let global = s
            .local
            .borrow()
            .services
            .values()
            .filter(|v| v.global)
            .count();
        let family = [(labels, ConstGauge::new(global as i64))];
        encode_family(
            &mut encoder,
            "clustermesh_global_services",
            "Global services of this cluster (service.cilium.io/global)",
            &family,
        )
    }
}

/// Forwards by kind and drops by reason, in packets and bytes, from the pipeline's counters.
fn encode_pipeline(c: &Counters, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let forwarded: Vec<_> = Forward::ALL
        .iter()
        .map(|f| ([("kind", f.name())], c.forwarded(*f)))
        .collect();
    let dropped: Vec<_> = DropReason::ALL
        .iter()
        .map(|r| (("reason", r.name()), c.dropped(*r)))
        .collect();
    for (name, help, value) in [
        (
            "received_packets",
            "Frames the pipeline received",
            c.received.packets,
        ),
        (
            "received_bytes",
            "Bytes of the frames the pipeline received",
            c.received.bytes,
        ),
    ] {
        let counter = ConstCounter::new(value);
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    encode_counts(
        encoder,
        "forwarded",
        "forwarded, by how they left",
        &forwarded,
    )?;
    let bytes: Vec<_> = dropped
        .iter()
        .map(|(l, c)| ([*l], ConstCounter::new(c.bytes)))
        .collect();
    encode_family(
        encoder,
        "dropped_bytes",
        "Bytes dropped by the pipeline, by reason",
        &bytes,
    )
}

/// Drops by reason and direction, and each port's frames, from the AF_XDP worker's per-port counters.
fn encode_ports(
    ports: &[PortStats],
    uplink: PortId,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let direction = |p: &PortStats| match p.port == uplink {
        true => Direction::FromUplink,
        false => Direction::FromPod,
    };
    let mut drops = Vec::new();
    for d in [Direction::FromPod, Direction::FromUplink] {
        let side: Vec<&PortStats> = ports.iter().filter(|p| direction(p) == d).collect();
        for reason in DropReason::ALL {
            let n: u64 = side
                .iter()
                .filter_map(|p| p.drops.get(reason.index()))
                .sum();
            let labels = [("reason", reason.name()), ("direction", d.name())];
            drops.push((labels, ConstCounter::new(n)));
        }
        // The worker's own drop, named as reports name it: frames for the node's kernel, which
        // AF_XDP has no path back to yet.
        let n: u64 = side.iter().map(|p| p.to_kernel_unsupported).sum();
        let labels = [("reason", "to_kernel_unsupported"), ("direction", d.name())];
        drops.push((labels, ConstCounter::new(n)));
    }
    encode_family(
        encoder,
        "dropped_packets",
        "Frames dropped, by reason and by the side they came from",
        &drops,
    )?;
    let ids: Vec<String> = ports.iter().map(|p| p.port.0.to_string()).collect();
    let labelled = |value: fn(&PortStats) -> u64| -> Vec<_> {
        ports
            .iter()
            .zip(&ids)
            .map(|(p, id)| {
                let role = if p.port == uplink { "uplink" } else { "pod" };
                (
                    [("port", id.as_str()), ("role", role)],
                    ConstCounter::new(value(p)),
                )
            })
            .collect()
    };
    encode_family(
        encoder,
        "port_rx_packets",
        "Frames received on a port",
        &labelled(|p| p.rx),
    )?;
    encode_family(
        encoder,
        "port_tx_packets",
        "Frames queued out of a port",
        &labelled(|p| p.tx),
    )?;
    encode_family(
        encoder,
        "port_tx_ring_full",
        "Frames dropped because a port's tx ring was full",
        &labelled(|p| p.tx_ring_full),
    )
}

/// Per remote cluster, with Cilium's metric and label names.
fn encode_mesh(
    mesh: &MeshStatus,
    source: &[(&str, &str); 2],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let clusters = [(*source, ConstGauge::new(mesh.len() as i64))];
    encode_family(
        encoder,
        "clustermesh_remote_clusters",
        "Remote clusters configured",
        &clusters,
    )?;
    type Field = fn(&meshpath_control::clustermesh::RemoteStatus) -> i64;
    let per_remote: [(&str, &str, Field); 6] = [
        (
            "readiness_status",
            "1 when connected, configured and every kind synced",
            |r| i64::from(r.ready),
        ),
        (
            "failures",
            "Connection failures since the agent started",
            |r| i64::try_from(r.failures).unwrap_or(i64::MAX),
        ),
        ("nodes", "Nodes known from the remote cluster", |r| {
            r.nodes as i64
        }),
        (
            "endpoints",
            "Endpoints known from the remote cluster",
            |r| r.endpoints as i64,
        ),
        (
            "identities",
            "Identities known from the remote cluster",
            |r| r.identities as i64,
        ),
        ("services", "Services known from the remote cluster", |r| {
            r.services as i64
        }),
    ];
    for (name, help, field) in per_remote {
        let family: Vec<_> = mesh
            .iter()
            .map(|(cluster, r)| {
                let [a, b] = *source;
                (
                    [a, b, ("target_cluster", cluster.as_str())],
                    ConstGauge::new(field(r)),
                )
            })
            .collect();
        let name = format!("clustermesh_remote_cluster_{name}");
        encode_family(encoder, &name, help, &family)?;
    }
    Ok(())
}

fn encode_counts<L: prometheus_client::encoding::EncodeLabelSet + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &[(L, Count)],
) -> Result<(), fmt::Error> {
    let packets: Vec<_> = family
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.packets)))
        .collect();
    let bytes: Vec<_> = family
        .iter()
        .map(|(l, c)| (*l, ConstCounter::new(c.bytes)))
        .collect();
    encode_family(
        encoder,
        &format!("{name}_packets"),
        &format!("Frames {help}"),
        &packets,
    )?;
    encode_family(
        encoder,
        &format!("{name}_bytes"),
        &format!("Bytes of frames {help}"),
        &bytes,
    )
}

/// One metric family: its descriptor, then one sample per label set.
fn encode_family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &[(L, M)],
) -> Result<(), fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let Some((_, first)) = family.first() else {
        return Ok(());
    };
    let kind: MetricType = first.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in family {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_control::clustermesh::RemoteStatus;
    use meshpath_control::local::{Affinity, LocalService, ObjectRef};
    use meshpath_control::ClusterName;
    use meshpath_dataplane::gateway::Gateway;
    use meshpath_dataplane::route::{RoutingMode, Underlay};
    use meshpath_dataplane::snapshot::{Capacities, NodeConfig};
    use meshpath_dataplane::tunnel::TunnelProtocol;
    use meshpath_dataplane::ClusterId;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct FixedPorts(Vec<PortStats>);

    impl PortCounters for FixedPorts {
        fn ports(&self) -> Vec<PortStats> {
            self.0.clone()
        }
    }

    fn service(name: &str, global: bool) -> (ObjectRef, LocalService) {
        let service = ObjectRef {
            namespace: "default".into(),
            name: name.into(),
        };
        let value = LocalService {
            service: service.clone(),
            cluster_ips: vec![],
            ports: vec![],
            selector: Default::default(),
            global,
            shared: true,
            affinity: Affinity::None,
        };
        (service, value)
    }

    /// A node that forwarded and dropped some frames, with one remote cluster and one global service.
    fn sources(ports: Vec<PortStats>) -> MetricsSources<FixedPorts> {
        let mut counters = Counters::default();
        counters.count_received(100);
        counters.count_forward(Forward::Tunnel, 150);
        counters.count_drop(DropReason::PolicyDenied, 60);
        let c2 = ClusterName::new("cluster2").unwrap();
        let remote = RemoteStatus {
            ready: true,
            failures: 3,
            nodes: 2,
            endpoints: 12,
            identities: 5,
            services: 1,
            ..RemoteStatus::new(&c2, 1)
        };
        let (_, mesh) = watch::channel(MeshStatus::from([(c2, remote)]));
        let local = LocalState {
            services: [service("rebel-base", true), service("local-only", false)].into(),
            ..Default::default()
        };
        let (_, local) = watch::channel(Arc::new(local));
        MetricsSources {
            cluster: "cluster1".into(),
            node: "c1-n1".into(),
            uplink: PortId(0),
            report: Arc::new(ArcSwap::from_pointee(WorkerReport {
                counters,
                ..Default::default()
            })),
            ports: FixedPorts(ports),
            mesh: Some(mesh),
            local,
        }
    }

    fn tables() -> Tables {
        let node = NodeConfig {
            cluster: ClusterId::new(1).unwrap(),
            ipv4: Some([198, 18, 1, 1].into()),
            ipv6: None,
            uplink: PortId(0),
            underlay: Underlay {
                mac: [2, 0, 0, 0, 0, 1],
                router_mac: [2, 0, 0, 0, 0, 0xfe],
                mtu: 1500,
            },
            gateway: Gateway {
                mac: [2, 0, 0, 0, 0, 2],
            },
            routing: RoutingMode::Tunnel,
            tunnel: TunnelProtocol::Vxlan,
            host: None,
            masquerade: None,
        };
        let small = Capacities {
            endpoints: 1,
            ipcache: 1,
            services: 1,
            nodes: 1,
        };
        Tables::empty(node, small)
    }

    fn port(id: u16, rx: u64, drops: &[(DropReason, u64)]) -> PortStats {
        let mut p = PortStats::new(PortId(id));
        p.rx = rx;
        for (reason, n) in drops {
            p.drops[reason.index()] = *n;
        }
        p
    }

    fn scrape_text(ports: Vec<PortStats>, latency: Histogram) -> String {
        encode(&registry(sources(ports), latency)).unwrap()
    }

    #[test]
    fn a_scrape_shows_every_family_with_its_labels() {
        let ports = vec![
            port(0, 7, &[(DropReason::NoRoute, 2)]),
            port(1, 5, &[(DropReason::PolicyDenied, 1)]),
            PortStats {
                to_kernel_unsupported: 4,
                ..port(2, 4, &[(DropReason::PolicyDenied, 2)])
            },
        ];
        let latency = publish_latency();
        let tables = Arc::new(tables());
        let (tx, rx) = watch::channel(tables.clone());
        let mut sink = TimedSink::new(tx, latency.clone());
        let next = Arc::new(self::tests::tables());
        sink.publish_batch(next.clone(), Instant::now());
        assert!(Arc::ptr_eq(&rx.borrow(), &next));
        let text = scrape_text(ports, latency);
        let source = r#"source_cluster="cluster1",source_node_name="c1-n1""#;
        for line in [
            "meshpath_received_packets_total 1".to_owned(),
            "meshpath_received_bytes_total 100".into(),
            r#"meshpath_forwarded_packets_total{kind="tunnel"} 1"#.into(),
            r#"meshpath_forwarded_bytes_total{kind="tunnel"} 150"#.into(),
            r#"meshpath_forwarded_packets_total{kind="local_pod"} 0"#.into(),
            r#"meshpath_dropped_bytes_total{reason="policy_denied"} 60"#.into(),
            r#"meshpath_dropped_packets_total{reason="policy_denied",direction="from_pod"} 3"#
                .into(),
            r#"meshpath_dropped_packets_total{reason="to_kernel_unsupported",direction="from_pod"} 4"#
                .into(),
            r#"meshpath_dropped_packets_total{reason="to_kernel_unsupported",direction="from_uplink"} 0"#
                .into(),
            r#"meshpath_dropped_packets_total{reason="no_route",direction="from_uplink"} 2"#.into(),
            r#"meshpath_dropped_packets_total{reason="no_route",direction="from_pod"} 0"#.into(),
            r#"meshpath_port_rx_packets_total{port="0",role="uplink"} 7"#.into(),
            r#"meshpath_port_rx_packets_total{port="1",role="pod"} 5"#.into(),
            format!("meshpath_clustermesh_remote_clusters{{{source}}} 1"),
            format!(
                r#"meshpath_clustermesh_remote_cluster_readiness_status{{{source},target_cluster="cluster2"}} 1"#
            ),
            format!(
                r#"meshpath_clustermesh_remote_cluster_failures{{{source},target_cluster="cluster2"}} 3"#
            ),
            format!(
                r#"meshpath_clustermesh_remote_cluster_nodes{{{source},target_cluster="cluster2"}} 2"#
            ),
            format!(
                r#"meshpath_clustermesh_remote_cluster_endpoints{{{source},target_cluster="cluster2"}} 12"#
            ),
            format!(
                r#"meshpath_clustermesh_remote_cluster_services{{{source},target_cluster="cluster2"}} 1"#
            ),
            format!("meshpath_clustermesh_global_services{{{source}}} 1"),
            "meshpath_snapshot_publish_latency_seconds_count 1".into(),
            "# TYPE meshpath_dropped_packets counter".into(),
            "# TYPE meshpath_snapshot_publish_latency_seconds histogram".into(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn a_publish_without_its_batch_time_is_not_timed() {
        let latency = publish_latency();
        let tables = Arc::new(tables());
        let (tx, rx) = watch::channel(Arc::new(self::tests::tables()));
        let mut sink = TimedSink::new(tx, latency.clone());
        sink.publish(tables.clone());
        assert!(Arc::ptr_eq(&rx.borrow(), &tables));
        let text = scrape_text(vec![], latency);
        assert!(
            text.contains("meshpath_snapshot_publish_latency_seconds_count 0\n"),
            "{text}"
        );
    }

    #[test]
    fn the_latency_runs_from_the_batch_being_taken() {
        let latency = publish_latency();
        let (tx, _rx) = watch::channel(Arc::new(tables()));
        let mut sink = TimedSink::new(tx, latency.clone());
        let taken = Instant::now() - std::time::Duration::from_millis(50);
        sink.publish_batch(Arc::new(tables()), taken);
        let text = scrape_text(vec![], latency);
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("meshpath_snapshot_publish_latency_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((0.05..1.0).contains(&sum), "{sum}");
        let bucket = r#"meshpath_snapshot_publish_latency_seconds_bucket{le="0.01024"} 0"#;
        assert!(text.lines().any(|l| l == bucket), "{text}");
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_registry_over_http() {
        let listener = bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let registry = Arc::new(registry(sources(vec![]), publish_latency()));
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
            response.contains("meshpath_clustermesh_global_services{"),
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
        #[test]
        fn drops_are_summed_per_direction(
            uplink in proptest::collection::vec(0u64..1 << 40, DropReason::COUNT),
            pods in proptest::collection::vec(
                proptest::collection::vec(0u64..1 << 40, DropReason::COUNT), 0..4),
        ) {
            let mut ports = vec![PortStats::new(PortId(0))];
            ports[0].drops.copy_from_slice(&uplink);
            for (i, drops) in pods.iter().enumerate() {
                let mut p = PortStats::new(PortId(1 + i as u16));
                p.drops.copy_from_slice(drops);
                ports.push(p);
            }
            let text = scrape_text(ports, publish_latency());
            for reason in DropReason::ALL {
                let from_pod: u64 = pods.iter().map(|d| d[reason.index()]).sum();
                let expected = [
                    ("from_uplink", uplink[reason.index()]),
                    ("from_pod", from_pod),
                ];
                for (direction, n) in expected {
                    let line = format!(
                        r#"meshpath_dropped_packets_total{{reason="{}",direction="{direction}"}} {n}"#,
                        reason.name()
                    );
                    prop_assert!(text.lines().any(|l| l == line), "missing {}", line);
                }
            }
        }
    }
}
