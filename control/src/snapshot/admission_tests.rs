//! What of a remote's state the builder admits into the tables: its pod CIDRs (long enough, nobody
//! else's), its endpoints (inside them, on one of its nodes) and its service backends (its endpoints).

use std::net::Ipv4Addr;
use std::sync::Arc;

use meshpath_dataplane::ipcache::IpPrefix;
use meshpath_dataplane::{Addr, ClusterId, Identity};
use tokio::sync::watch;

use super::tests::*;
use super::*;
use crate::clustermesh::{MeshStatus, RemoteEvent, RemoteStatus};
use crate::local::Affinity;
use crate::refusal::{Refusal, RefusalCounts};
use crate::state::*;
use crate::ClusterName;

fn name(c: u8) -> ClusterName {
    ClusterName::new(&format!("cluster{c}")).unwrap()
}

fn ev(c: u8, event: StateEvent) -> Change {
    Change::Remote(RemoteEvent {
        cluster: name(c),
        event,
    })
}

fn cidr(text: &str) -> Cidr {
    crate::resolve::parse_cidr(text).unwrap()
}

fn node_at(c: u8, n: &str, addr: Ipv4Addr, cidrs: &[&str]) -> Change {
    ev(
        c,
        StateEvent::Upsert(Entry::Node(
            NodeInfo {
                name: n.into(),
                cluster_id: ClusterId::new(c).unwrap(),
                addresses: vec![(NodeAddressKind::Internal, addr.into())],
                pod_cidrs: cidrs.iter().map(|t| cidr(t)).collect(),
                health_ips: vec![],
                encryption_key: 0,
                wireguard_pub_key: None,
            }
            .into(),
        )),
    )
}

fn gone_node(c: u8, n: &str) -> Change {
    ev(c, StateEvent::Delete(EntryKey::Node(n.into())))
}

fn endpoint_at(c: u8, ip: Ipv4Addr, host: Option<Ipv4Addr>) -> Change {
    ev(
        c,
        StateEvent::Upsert(Entry::Endpoint(
            EndpointInfo {
                ip: ip.into(),
                identity: Identity::new((u32::from(c) << 16) + 0x100).unwrap(),
                host_ip: host.map(Addr::from),
                namespace: "default".into(),
                pod_name: format!("p-{ip}"),
            }
            .into(),
        )),
    )
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn counts(pairs: &[(Refusal, u64)]) -> RefusalCounts {
    pairs.iter().copied().collect()
}

/// The cluster whose entry the ipcache has for `addr`, and its tunnel endpoint.
fn owner(builder: &SnapshotBuilder, addr: Ipv4Addr) -> Option<(Option<u8>, Option<Addr>)> {
    let tables = builder.current();
    let entry = tables.ipcache.lookup(addr.into())?;
    Some((entry.cluster.map(ClusterId::get), entry.tunnel_endpoint))
}

#[tokio::test]
async fn an_endpoint_outside_its_clusters_pod_cidrs_is_refused_until_a_node_holds_it() {
    let mut builder = built(true, Affinity::None).await;
    let stray = v4(100, 65, 7, 10);
    builder.apply([endpoint_at(2, stray, Some(NODE_C2))]);
    assert_eq!(owner(&builder, stray), None);
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[(Refusal::EndpointOutsidePodCidrs, 1)])
    );
    builder.apply([node_at(2, "n7", v4(198, 18, 2, 7), &["100.65.7.0/24"])]);
    assert_eq!(
        owner(&builder, stray),
        Some((Some(2), Some(NODE_C2.into())))
    );
    assert_eq!(builder.refused(&name(2)), counts(&[]));
    builder.apply([gone_node(2, "n7")]);
    assert_eq!(owner(&builder, stray), None, "its pod CIDR gone, it goes");
}

#[tokio::test]
async fn a_host_ip_that_is_no_node_of_the_cluster_is_refused() {
    let mut builder = built(true, Affinity::None).await;
    let pod = v4(100, 65, 1, 20);
    // 198.18.1.2 is a node address of cluster1, not of cluster2.
    builder.apply([endpoint_at(2, pod, Some(v4(198, 18, 1, 2)))]);
    let host = IpPrefix::host(pod.into());
    assert_eq!(builder.current().ipcache.get(&host), None, "no /32 for it");
    assert_eq!(
        owner(&builder, pod),
        Some((Some(2), Some(NODE_C2.into()))),
        "only its pod CIDR's entry: to the node that holds the CIDR"
    );
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[(Refusal::HostIpNotANode, 1)])
    );
    builder.apply([node_at(2, "n2", v4(198, 18, 1, 2), &["100.65.2.0/24"])]);
    assert_eq!(
        owner(&builder, pod),
        Some((Some(2), Some(v4(198, 18, 1, 2).into())))
    );
    assert_eq!(builder.refused(&name(2)), counts(&[]));
    // Without a HostIP, the node holding its pod CIDR carries it.
    builder.apply([endpoint_at(2, pod, None)]);
    assert_eq!(owner(&builder, pod), Some((Some(2), Some(NODE_C2.into()))));
}

#[tokio::test]
async fn a_pod_cidr_shorter_than_the_minimum_is_refused() {
    let mut builder = built(true, Affinity::None).await;
    let wide = v4(10, 200, 0, 10);
    builder.apply([
        node_at(2, "wide", v4(198, 18, 2, 9), &["10.0.0.0/8"]),
        endpoint_at(2, wide, Some(v4(198, 18, 2, 9))),
    ]);
    assert_eq!(owner(&builder, wide), None, "neither the /8 nor its pod");
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[
            (Refusal::PodCidrTooShort, 1),
            (Refusal::EndpointOutsidePodCidrs, 1)
        ])
    );
    let mut spec = spec();
    spec.admission.min_pod_cidr_ipv4 = 8;
    let mut lenient = SnapshotBuilder::new(spec);
    lenient.apply([
        node_at(2, "wide", v4(198, 18, 2, 9), &["10.0.0.0/8"]),
        endpoint_at(2, wide, Some(v4(198, 18, 2, 9))),
    ]);
    assert_eq!(
        owner(&lenient, wide),
        Some((Some(2), Some(v4(198, 18, 2, 9).into())))
    );
    for zero in ["0.0.0.0/0", "::/0"] {
        let mut builder = SnapshotBuilder::new(super::tests::spec());
        builder.apply([node_at(2, "n0", v4(198, 18, 2, 9), &[zero])]);
        assert_eq!(
            builder.refused(&name(2)),
            counts(&[(Refusal::PodCidrTooShort, 1)]),
            "{zero}"
        );
    }
}

#[tokio::test]
async fn a_remote_prefix_inside_a_local_one_is_refused_and_the_local_cluster_keeps_it() {
    let mut builder = built(true, Affinity::None).await;
    // A /25 inside cluster1's 100.64.1.0/24 would win the longest-prefix match.
    let inside = v4(100, 64, 1, 200);
    builder.apply([
        node_at(2, "n9", v4(198, 18, 2, 9), &["100.64.1.128/25"]),
        endpoint_at(2, inside, Some(v4(198, 18, 2, 9))),
    ]);
    assert_eq!(owner(&builder, inside), Some((Some(1), None)), "cluster1's");
    assert_eq!(owner(&builder, X_WING), Some((Some(1), None)));
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[
            (Refusal::PodCidrOverlap, 1),
            (Refusal::EndpointOutsidePodCidrs, 1)
        ])
    );
    let conflicts = builder.cidr_conflicts(&name(2));
    assert_eq!(
        conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["pod CIDR 100.64.1.128/25 of node n9 refused: overlaps cluster1's 100.64.1.0/24"]
    );
    // A remote supernet of a local prefix is refused as well.
    builder.apply([node_at(2, "n8", v4(198, 18, 2, 8), &["100.64.0.0/16"])]);
    assert_eq!(builder.refused(&name(2))[&Refusal::PodCidrOverlap], 2);
}

#[tokio::test]
async fn between_two_remotes_the_first_to_claim_a_prefix_keeps_it() {
    let mut builder = SnapshotBuilder::new(spec());
    let shared = v4(100, 70, 1, 10);
    // cluster3 claims first; cluster2 sorts first by name but comes later.
    builder.apply([
        node_at(3, "a", v4(198, 18, 3, 1), &["100.70.1.0/24"]),
        endpoint_at(3, shared, Some(v4(198, 18, 3, 1))),
    ]);
    builder.apply([
        node_at(2, "b", v4(198, 18, 2, 1), &["100.70.0.0/16"]),
        endpoint_at(2, shared, Some(v4(198, 18, 2, 1))),
    ]);
    assert_eq!(
        owner(&builder, shared),
        Some((Some(3), Some(v4(198, 18, 3, 1).into())))
    );
    assert_eq!(
        owner(&builder, v4(100, 70, 9, 9)),
        None,
        "cluster2's /16 is refused whole"
    );
    let conflict = &builder.cidr_conflicts(&name(2))[0];
    assert_eq!(
        (
            conflict.other_cluster.as_str(),
            conflict.other_prefix.as_str()
        ),
        ("cluster3", "100.70.1.0/24")
    );
    assert!(builder.refused(&name(3)).is_empty());
    // cluster3 lets go: cluster2's claim is next.
    builder.apply([gone_node(3, "a")]);
    assert_eq!(
        owner(&builder, shared),
        Some((Some(2), Some(v4(198, 18, 2, 1).into())))
    );
    assert_eq!(
        owner(&builder, v4(100, 70, 9, 9)),
        Some((Some(2), Some(v4(198, 18, 2, 1).into())))
    );
    assert!(builder.cidr_conflicts(&name(2)).is_empty());
    assert_eq!(
        builder.refused(&name(3)),
        counts(&[(Refusal::EndpointOutsidePodCidrs, 1)])
    );
}

#[tokio::test]
async fn only_backends_that_are_the_clusters_endpoints_are_balanced_to() {
    let mut builder = built(true, Affinity::None).await;
    let elsewhere = v4(100, 64, 1, 11); // cluster1's own rebel-base
    let service = ServiceInfo {
        name: ServiceName {
            namespace: "default".into(),
            name: "rebel-base".into(),
        },
        frontends: vec![],
        backends: [REBEL_C2, elsewhere, v4(100, 65, 1, 99)]
            .into_iter()
            .map(|ip| ServicePort {
                addr: ip.into(),
                port_name: "http".into(),
                protocol: 6,
                port: 8080,
            })
            .collect(),
        shared: true,
        include_external: true,
        selector: vec![],
    };
    builder.apply([ev(2, StateEvent::Upsert(Entry::Service(service.into())))]);
    let t = builder.current();
    let remote: Vec<Ipv4Addr> = states(&t)
        .into_iter()
        .map(|(ip, _)| ip)
        .filter(|ip| *ip != REBEL_C1)
        .collect();
    assert_eq!(remote, vec![REBEL_C2], "only cluster2's endpoint");
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[(Refusal::BackendNotAnEndpoint, 1)])
    );
    // The missing endpoint appears: the backend is taken.
    builder.apply([endpoint_at(2, v4(100, 65, 1, 99), Some(NODE_C2))]);
    assert_eq!(states(&builder.current()).len(), 3);
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[(Refusal::BackendNotAnEndpoint, 1)]),
        "100.64.1.11 is still no endpoint of cluster2"
    );
}

#[tokio::test]
async fn refusals_and_conflicts_reach_the_status_board() {
    let (board, status) = watch::channel(MeshStatus::new());
    let mut receipt = RemoteStatus::new(&name(2), 1);
    receipt.set_refused_on_receipt(counts(&[(Refusal::Malformed, 2)]));
    board.send_modify(|b| {
        b.insert(name(2), receipt);
    });
    let builder = built(true, Affinity::None).await;
    let mut builder = builder.with_status_board(Arc::new(board));
    builder.apply([node_at(2, "n9", v4(198, 18, 2, 9), &["100.64.1.0/24"])]);
    let seen = status.borrow()[&name(2)].clone();
    assert_eq!(
        seen.refused,
        counts(&[(Refusal::Malformed, 2), (Refusal::PodCidrOverlap, 1)])
    );
    assert_eq!(seen.cidr_conflicts.len(), 1);
    assert!(seen.to_string().contains(
        "└ pod CIDR 100.64.1.0/24 of node n9 refused: overlaps cluster1's 100.64.1.0/24"
    ));
}

#[tokio::test]
async fn a_refused_claim_given_up_is_forgotten_even_if_another_cluster_claims_the_prefix() {
    let mut builder = SnapshotBuilder::new(spec());
    builder.apply([node_at(3, "a", v4(198, 18, 3, 1), &["100.70.1.0/24"])]);
    builder.apply([node_at(2, "b", v4(198, 18, 2, 1), &["100.70.1.0/24"])]);
    assert_eq!(
        builder.refused(&name(2)),
        counts(&[(Refusal::PodCidrOverlap, 1)])
    );
    // cluster2 gives the prefix up while cluster3 still holds it.
    builder.apply([node_at(2, "b", v4(198, 18, 2, 1), &["100.71.1.0/24"])]);
    assert!(builder.refused(&name(2)).is_empty());
    assert!(builder.cidr_conflicts(&name(2)).is_empty());
}
