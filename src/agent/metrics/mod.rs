//! Prometheus metrics of the agent, served over HTTP on the `metrics` address, named as Cilium names
//! the same thing (`cilium_drop_count_total{reason,direction}`, the `cilium_clustermesh_*` family,
//! `cilium_bpf_map_pressure`, `cilium_kvstore_operations_duration_seconds`, `cilium_version`,
//! `cilium_process_*`, `hubble_lost_events_total`) so that Cilium's dashboards and alerts work
//! unchanged, and `meshpath_*` for what Cilium has no metric for. README.md's table maps each, and a
//! test holds the table and the scrape to each other.
//!
//! Nothing here touches the packet path: a scrape reads what the worker already copied out for the
//! status socket (the same [`StatusSources`]), the XDP programs' counters and `/proc/self`. The
//! histograms are fed from elsewhere: the snapshot publish latency by [`TimedSink`] around the
//! builder's sink, the etcd operation latency by the kvstore probe.

mod agent;
mod datapath;
mod mesh;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use meshpath_api::health::Health;
use meshpath_api::local_source::LocalSourceStatus;
use meshpath_api::status::{FlowLogStatus, PortRole, WorkerStatus, XdpStatus};
use meshpath_control::clustermesh::{MeshStatus, RemoteStatus};
use meshpath_control::snapshot::SnapshotSink;
use meshpath_dataplane::afxdp::PortStats;
use meshpath_dataplane::snapshot::Tables;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::control::PublicationMetrics;
use super::kvstore::OperationLatency;
use super::report::WorkerReport;
use super::status::{self, StatusSources};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads: all of it copied out by its owner, none of it locked by a worker.
pub trait MetricsView: Send + Sync + 'static {
    fn cluster(&self) -> &str;
    fn node(&self) -> &str;
    fn report(&self) -> Arc<WorkerReport>;
    /// Each AF_XDP port's counters, with its interface and role.
    fn ports(&self) -> Vec<(PortStats, Option<(String, PortRole)>)>;
    fn xdp(&self) -> Vec<XdpStatus>;
    fn mesh(&self) -> Option<MeshStatus>;
    /// The own cluster's etcd watched for external workloads, where a node has the watch.
    fn external_workloads_watch(&self) -> Option<RemoteStatus>;
    fn global_services(&self) -> u64;
    fn flows(&self) -> FlowLogStatus;
    fn health(&self) -> Health;
    /// Each worker: its frames and its loop's turns so far (its heartbeat).
    fn workers(&self) -> Vec<WorkerStatus>;
    /// Each policy that cannot be enforced as written, with the number of endpoints it denies.
    fn policy_refusals(&self) -> Vec<(String, usize)>;
    fn local_source(&self) -> LocalSourceStatus;
}

impl MetricsView for StatusSources {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn report(&self) -> Arc<WorkerReport> {
        self.workers.report()
    }

    fn ports(&self) -> Vec<(PortStats, Option<(String, PortRole)>)> {
        self.workers
            .read()
            .ports
            .into_iter()
            .map(|p| {
                let named = self.ports.get(p.port);
                (p, named)
            })
            .collect()
    }

    fn xdp(&self) -> Vec<XdpStatus> {
        self.programs.read()
    }

    fn mesh(&self) -> Option<MeshStatus> {
        self.mesh.as_ref().map(|m| m.borrow().clone())
    }

    fn external_workloads_watch(&self) -> Option<RemoteStatus> {
        let board = self.external_watch.as_ref()?.borrow();
        board.values().next().cloned()
    }

    fn global_services(&self) -> u64 {
        status::global_services(&self.local.borrow())
    }

    fn flows(&self) -> FlowLogStatus {
        self.flows.status()
    }

    fn health(&self) -> Health {
        self.health.check()
    }

    fn workers(&self) -> Vec<WorkerStatus> {
        self.workers.each()
    }

    fn policy_refusals(&self) -> Vec<(String, usize)> {
        let tables = self.tables.load();
        let refusals = tables.policy.refusals();
        refusals
            .iter()
            .map(|r| (r.policy.clone(), r.endpoints.len()))
            .collect()
    }

    fn local_source(&self) -> LocalSourceStatus {
        self.source.status()
    }
}

/// The histogram of the time from a builder batch being taken to its snapshot being stored.
pub fn publish_latency() -> Histogram {
    // 10 µs to ~2.6 s: a small batch takes microseconds, a full remote cluster's first sync far more.
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

/// Every metric of the agent.
pub fn registry<V: MetricsView>(
    view: V,
    publish: Histogram,
    kvstore: OperationLatency,
    publication: &PublicationMetrics,
) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "meshpath_snapshot_publish_latency_seconds",
        "Time from a builder batch being taken to its table snapshot being stored for the workers",
        publish,
    );
    registry.register(
        "cilium_kvstore_operations_duration_seconds",
        "Duration of kvstore operation",
        kvstore,
    );
    registry.register_collector(Box::new(Scrape(view)));
    register_publication(&mut registry, publication);
    registry
}

/// This agent's publication into its cluster's etcd: lease recoveries, keys restored, the lead.
fn register_publication(registry: &mut Registry, publication: &PublicationMetrics) {
    registry.register(
        "meshpath_kvstore_lease_recoveries",
        "Times this agent's etcd lease was found lost and everything it publishes written again under a new one",
        publication.lease_recoveries.clone(),
    );
    registry.register(
        "meshpath_kvstore_keys_restored",
        "Keys of this agent found deleted from etcd behind its back and written again",
        publication.keys_restored.clone(),
    );
    registry.register(
        "meshpath_kvstore_clusterwide_leader",
        "1 while this agent is the one that publishes its cluster's cluster-wide records (global services, cluster-config)",
        publication.leading.clone(),
    );
    registry.register(
        "meshpath_kvstore_insecure",
        "1 while this agent reaches its cluster's etcd without mutual TLS (etcd.insecure: true)",
        publication.kvstore_insecure.clone(),
    );
    registry.register(
        "meshpath_identity_gc_deleted",
        "Identities no endpoint used any more that this agent's identity GC deleted, as the elected agent of its cluster",
        publication.identities_collected.clone(),
    );
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

struct Scrape<V>(V);

impl<V: MetricsView> fmt::Debug for Scrape<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrape({}/{})", self.0.cluster(), self.0.node())
    }
}

impl<V: MetricsView> Collector for Scrape<V> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let view = &self.0;
        datapath::encode(view, &mut encoder)?;
        mesh::encode(view, &mut encoder)?;
        source::encode(view, &mut encoder)?;
        agent::encode(view, &mut encoder)
    }
}

/// One metric family: its descriptor, then one sample per label set (none when `family` is empty).
fn encode_family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &[(L, M)],
) -> Result<(), fmt::Error>
where
    L: EncodeLabelSet,
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

/// One metric without labels.
fn encode_one<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}
