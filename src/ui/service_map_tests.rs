use super::*;
use meshpath_api::flow::FlowResponse;

/// Flows the four agents of the demo's lab logged (`meshpath observe -o json`, one of each kind):
/// x-wing calling rebel-base through the global service in both clusters, the denial of the
/// cross-cluster policy, and the pods' IPv6 router solicitations the dataplane drops.
const DEMO: &str = include_str!("testdata/demo-flows.jsonl");

fn demo_flows() -> Vec<Flow> {
    DEMO.lines()
        .map(|line| serde_json::from_str::<FlowResponse>(line).unwrap())
        .filter_map(|event| event.flow().cloned())
        .collect()
}

fn map_of(flows: &[Flow]) -> MapView {
    let mut map = ServiceMap::default();
    flows.iter().for_each(|f| map.add(f));
    map.view()
}

fn edge<'a>(view: &'a MapView, from: &str, to: &str, verdict: Verdict) -> Vec<&'a Edge> {
    view.edges
        .iter()
        .filter(|e| e.from == from && e.to == to && e.verdict == verdict)
        .collect()
}

#[test]
fn the_demo_aggregates_into_workloads_and_edges() {
    let flows = demo_flows();
    assert_eq!(flows.len(), 21);
    let view = map_of(&flows);
    assert_eq!(view.flows, 21);
    let ids: Vec<&str> = view.workloads.iter().map(|w| w.id.as_str()).collect();
    for id in [
        "cluster1/default/x-wing",
        "cluster1/default/rebel-base",
        "cluster2/default/x-wing",
        "cluster2/default/rebel-base",
        "unknown",
    ] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    // x-wing of cluster1 to rebel-base of cluster2 through the service: logged by the node that
    // sent it and by the one that delivered it, one edge of two flows.
    let across = edge(
        &view,
        "cluster1/default/x-wing",
        "cluster2/default/rebel-base",
        Verdict::Forwarded,
    );
    assert_eq!(across.len(), 1, "{across:?}");
    assert_eq!(
        (across[0].port, across[0].protocol, across[0].flows),
        (8080, "TCP", 2)
    );
    assert_eq!(across[0].services, ["100.64.255.10:80".parse().unwrap()]);
    assert_eq!(across[0].colour, EdgeColour::Forwarded);
    assert_eq!(across[0].reason, None);

    let denied = edge(
        &view,
        "cluster1/default/x-wing",
        "cluster1/default/rebel-base",
        Verdict::Dropped,
    );
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].reason, Some(DropReason::PolicyDenied));
    assert_eq!(denied[0].reason_text, Some("Policy denied"));
    assert_eq!(denied[0].colour, EdgeColour::Denied);
    assert_eq!(denied[0].css, "#e03131");
    // Forwarded and denied between the same two workloads stay two edges.
    let allowed = edge(
        &view,
        "cluster1/default/x-wing",
        "cluster1/default/rebel-base",
        Verdict::Forwarded,
    );
    assert_eq!(allowed.len(), 1);
}

#[test]
fn drops_of_other_reasons_are_edges_of_their_own() {
    let view = map_of(&demo_flows());
    let solicitations: Vec<&Edge> = view
        .edges
        .iter()
        .filter(|e| e.from == "cluster1/default/x-wing" && e.to == "unknown")
        .collect();
    let mut reasons: Vec<DropReason> = solicitations.iter().filter_map(|e| e.reason).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [DropReason::LinkScope, DropReason::UnansweredNeighbour]
    );
    assert!(solicitations
        .iter()
        .all(|e| e.colour == EdgeColour::Dropped && e.protocol == "ICMPv6" && e.port == 0));
}

#[test]
fn verdicts_map_to_their_colours() {
    assert_eq!(
        EdgeColour::of(Verdict::Forwarded, None),
        EdgeColour::Forwarded
    );
    // A forwarded flow has no reason; one given is no drop.
    assert_eq!(
        EdgeColour::of(Verdict::Forwarded, Some(DropReason::PolicyDenied)),
        EdgeColour::Forwarded
    );
    assert_eq!(
        EdgeColour::of(Verdict::Dropped, Some(DropReason::PolicyDenied)),
        EdgeColour::Denied
    );
    for reason in DropReason::ALL
        .iter()
        .filter(|r| **r != DropReason::PolicyDenied)
    {
        assert_eq!(
            EdgeColour::of(Verdict::Dropped, Some(*reason)),
            EdgeColour::Dropped
        );
    }
    assert_eq!(EdgeColour::of(Verdict::Dropped, None), EdgeColour::Dropped);
    let css: Vec<&str> = [
        EdgeColour::Forwarded,
        EdgeColour::Denied,
        EdgeColour::Dropped,
    ]
    .iter()
    .map(|c| c.css())
    .collect();
    assert_eq!(css, ["#2f9e44", "#e03131", "#f08c00"]);
    assert_eq!(
        serde_json::to_value(EdgeColour::Denied).unwrap(),
        "denied",
        "the page's CSS classes"
    );
}

#[test]
fn workloads_are_named_by_their_app_label_or_pod() {
    let flows = demo_flows();
    let x_wing = Workload::of(&flows[0].source);
    assert_eq!(
        (x_wing.id.as_str(), x_wing.kind, x_wing.name.as_str()),
        ("cluster1/default/x-wing", WorkloadKind::Pod, "x-wing")
    );
    let mut unlabelled = flows[0].source.clone();
    unlabelled.labels.clear();
    assert_eq!(Workload::of(&unlabelled).name, "p1-1");
    let mut app = flows[0].source.clone();
    app.labels.push("k8s:app=fighter".parse().unwrap());
    assert_eq!(Workload::of(&app).name, "fighter", "app wins over name");
    let reserved = |identity| {
        Workload::of(&Endpoint {
            identity,
            ..Default::default()
        })
    };
    assert_eq!(reserved(2).kind, WorkloadKind::World);
    assert_eq!(reserved(1).id, "host");
    assert_eq!(reserved(6).id, "remote-node");
    assert_eq!(reserved(0).id, "unknown");
    assert_eq!(reserved(70000).id, "identity:70000");
}

/// Hundreds of workloads talking to each other cost the page at most MAX_EDGES edges: the least
/// recently seen give way, counted, and the workloads only they touched go with them.
#[test]
fn edges_are_bounded_and_the_oldest_give_way() {
    let template = demo_flows()
        .into_iter()
        .find(|f| f.verdict == Verdict::Forwarded)
        .unwrap();
    let mut map = ServiceMap::default();
    let total = MAX_EDGES * 3;
    for i in 0..total {
        let mut flow = template.clone();
        flow.source.labels.clear();
        flow.source.pod_name = format!("client-{i}");
        flow.time = FlowTime::from_unix_ms(1_700_000_000_000 + i as u64);
        map.add(&flow);
    }
    let view = map.view();
    assert!(view.edges.len() <= MAX_EDGES, "{}", view.edges.len());
    assert_eq!(view.evicted_edges as usize, total - view.edges.len());
    assert_eq!(view.flows as usize, total);
    // The newest stayed.
    let newest = format!("cluster1/default/client-{}", total - 1);
    assert!(view.edges.iter().any(|e| e.from == newest));
    assert!(!view
        .edges
        .iter()
        .any(|e| e.from == "cluster1/default/client-0"));
    assert_eq!(
        view.workloads.len(),
        view.edges.len() + 1,
        "clients and one server"
    );
    assert!(map.workloads.len() <= MAX_EDGES + 1);
}

#[test]
fn services_per_edge_are_bounded() {
    let template = demo_flows()
        .into_iter()
        .find(|f| f.extensions.service.is_some())
        .unwrap();
    let mut map = ServiceMap::default();
    for port in 1..=10 {
        let mut flow = template.clone();
        flow.extensions.service = Some(SocketAddr::new("100.64.255.10".parse().unwrap(), port));
        map.add(&flow);
    }
    let view = map.view();
    assert_eq!(view.edges.len(), 1);
    assert_eq!(view.edges[0].flows, 10);
    assert_eq!(view.edges[0].services.len(), MAX_SERVICES_PER_EDGE);
}
