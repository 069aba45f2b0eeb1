//! The remote clusters, with Cilium's metric and label names (`cilium_clustermesh_*`: labels
//! `source_cluster`, `source_node_name`, `target_cluster`), and meshpath's counts of what each
//! remote announced (endpoints, identities, services) and what of it was refused, for which Cilium
//! has no metric; and a node's watch of its own etcd for external workloads
//! (`meshpath_external_workloads_watch_*`).

use std::collections::BTreeMap;
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
    encode_refusals(&mesh, &source, encoder)?;
    if let Some(watch) = view.external_workloads_watch() {
        encode_external_workloads_watch(&watch, &source, encoder)?;
    }
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
        "The readiness status of the remote cluster (0 while degraded past a limit)",
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
        "meshpath_clustermesh_remote_cluster_insecure",
        "1 while the remote cluster is read without mutual TLS (its configuration's insecure: true)",
        |r| i64::from(!r.mutual_tls),
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

/// A node's watch of its own cluster's etcd for the external workloads that joined the cluster.
fn encode_external_workloads_watch(
    watch: &RemoteStatus,
    source: &[(&str, &str); 2],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let families: [(&str, &str, Field); 3] = [
        (
            "meshpath_external_workloads_watch_ready",
            "1 while the watch of this cluster's own etcd for external workloads is connected and synced",
            |r| i64::from(r.ready),
        ),
        (
            "meshpath_external_workloads_watch_failures",
            "The total number of failures of the watch of this cluster's own etcd for external workloads",
            |r| i64::try_from(r.failures).unwrap_or(i64::MAX),
        ),
        (
            "meshpath_external_workloads_watch_insecure",
            "1 while this cluster's own etcd is watched for external workloads without mutual TLS",
            |r| i64::from(!r.mutual_tls),
        ),
    ];
    for (name, help, field) in families {
        encode_family(
            encoder,
            name,
            help,
            &[(*source, ConstGauge::new(field(watch)))],
        )?;
    }
    Ok(())
}

/// Per remote: keys refused now by reason, and pod CIDRs refused for overlapping another cluster's.
fn encode_refusals(
    mesh: &MeshStatus,
    source: &[(&str, &str); 2],
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let [a, b] = *source;
    let refused: Vec<_> = mesh
        .iter()
        .flat_map(|(cluster, r)| {
            r.refused.iter().map(move |(reason, n)| {
                let labels = [
                    a,
                    b,
                    ("target_cluster", cluster.as_str()),
                    ("reason", reason.name()),
                ];
                let n = i64::try_from(*n).unwrap_or(i64::MAX);
                (labels, ConstGauge::new(n))
            })
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_clustermesh_remote_cluster_refused",
        "Keys of the remote refused now, per reason (over_*_limit: ignored since the last listing)",
        &refused,
    )?;
    let mut conflicts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (cluster, r) in mesh {
        for c in &r.cidr_conflicts {
            *conflicts
                .entry((cluster.as_str(), c.other_cluster.as_str()))
                .or_default() += 1;
        }
    }
    let conflicts: Vec<_> = conflicts
        .into_iter()
        .map(|((target, other), n)| {
            let labels = [
                a,
                b,
                ("target_cluster", target),
                ("conflicting_cluster", other),
            ];
            (labels, ConstGauge::new(n))
        })
        .collect();
    encode_family(
        encoder,
        "meshpath_clustermesh_remote_cluster_pod_cidr_conflicts",
        "Pod CIDRs of the remote refused because they overlap another cluster's",
        &conflicts,
    )
}
