//! The local source, when it is the Kubernetes API server: whether the server answers
//! (`meshpath_kubernetes_api_reachable`, its last probe) and how often each resource's watch failed
//! (`meshpath_kubernetes_watch_failures_total{resource}`). A directory source has neither.

use std::fmt;

use meshpath_api::local_source::{LocalSourceKind, LocalSourceState};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{encode_family, encode_one, MetricsView};

pub fn encode<V: MetricsView>(view: &V, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let source = view.local_source();
    if source.kind != LocalSourceKind::Kubernetes {
        return Ok(());
    }
    let reachable = source.state != LocalSourceState::Failing && source.server_version.is_some();
    encode_one(
        encoder,
        "meshpath_kubernetes_api_reachable",
        "1 while the API server answers and every watch works; 0 while the last state stays in force without it",
        ConstGauge::new(i64::from(reachable)),
    )?;
    let failures: Vec<_> = source
        .resources
        .iter()
        .map(|r| {
            (
                [("resource", r.resource.as_str())],
                ConstCounter::new(r.failures),
            )
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_kubernetes_watch_failures",
        "Failed lists and watches of a resource since the agent started (each retried with backoff)",
        &failures,
    )
}
