//! The remote clusters, with Cilium's metric and label names (`cilium_clustermesh_*`: labels
//! `source_cluster`, `source_node_name`, `target_cluster`), and meshpath's counts of what each
//! remote announced (endpoints, identities, services) for which Cilium has no metric.

use std::fmt;
use std::time::UNIX_EPOCH;

use meshpath_control::clustermesh::{MeshStatus, RemoteStatus};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{encode_family, MetricsView};

pub fn encode<V: MetricsView>(view: &V, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    let source = [
        ("source_cluster", view.cluster()),
        ("source_node_name", view.node()),
    ];
    let mesh = view.mesh().unwrap_or_default();
    let clusters = [(source, ConstGauge::new(mesh.len() as i64))];
    encode_family(
        encoder,
        "cilium_clustermesh_remote_clusters",
        "The total number of remote clusters meshed with the local cluster",
        &clusters,
    )?;
    encode_remotes(&mesh, &source, encoder)?;
    let global = [(source, ConstGauge::new(view.global_services() as i64))];
    encode_family(
        encoder,
        "cilium_clustermesh_global_services",
        "The total number of global services in the cluster mesh",
        &global,
    )
}

type Field = fn(&RemoteStatus) -> i64;

/// Per remote cluster: Cilium's families, then meshpath's.
const PER_REMOTE: [(&str, &str, Field); 8] = [
    (
        "cilium_clustermesh_remote_cluster_readiness_status",
        "The readiness status of the remote cluster",
        |r| i64::from(r.ready),
    ),
    (
        "cilium_clustermesh_remote_cluster_failures",
        "The total number of failures related to the remote cluster",
        |r| i64::try_from(r.failures).unwrap_or(i64::MAX),
    ),
    (
        "cilium_clustermesh_remote_cluster_nodes",
        "The total number of nodes in the remote cluster",
        |r| r.nodes as i64,
    ),
    (
        "cilium_clustermesh_remote_cluster_last_failure_ts",
        "The timestamp of the last failure of the remote cluster",
        |r| {
            r.last_failure
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64)
        },
    ),
    (
        "meshpath_clustermesh_remote_cluster_endpoints",
        "Endpoints known from the remote cluster",
        |r| r.endpoints as i64,
    ),
    (
        "meshpath_clustermesh_remote_cluster_identities",
        "Identities known from the remote cluster",
        |r| r.identities as i64,
    ),
    (
        "meshpath_clustermesh_remote_cluster_services",
        "Services known from the remote cluster",
        |r| r.services as i64,
    ),
    (
        "meshpath_clustermesh_remote_cluster_rejected",
        "Values from the remote cluster refused since the agent started",
        |r| i64::try_from(r.rejected).unwrap_or(i64::MAX),
    ),
];

fn encode_remotes(
    mesh: &MeshStatus,
    source: &[(&str, &str); 2],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    for (name, help, field) in PER_REMOTE {
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
        encode_family(encoder, name, help, &family)?;
    }
    Ok(())
}
