//! The Cilium docs' cross-cluster example (x-wing, the global service rebel-base, and the policy that
//! lets x-wing reach rebel-base in cluster2 only), read from fixtures as the API server returns them.

use std::net::IpAddr;
use std::path::Path;

use meshpath_control::local::yaml::parse_objects;
use meshpath_control::local::{LocalState, ObjectRef, PolicyKind, PolicyRef, NAMESPACE_LABEL};
use meshpath_dataplane::policy::{DirectionRule, EgressRule, Labels, Peer, CLUSTER_LABEL};
use meshpath_dataplane::{ClusterId, Identity};

fn load(dir: &str) -> LocalState {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut state = LocalState::default();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for parsed in parse_objects(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display())) {
            let (key, object) = parsed.object.translate().unwrap();
            state.set(&key, object);
        }
    }
    state
}

fn at(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn endpoint(name: &str, cluster: &str) -> Labels {
    Labels::new()
        .with("name", name)
        .with(CLUSTER_LABEL, cluster)
        .with(NAMESPACE_LABEL, "default")
}

#[test]
fn pods_service_and_slice_of_the_example() {
    let state = load("cross-cluster");
    assert_eq!(state.pods.len(), 2);
    let rebel = &state.pods[&at("rebel-base-6c8d9f7b54-4kq2m")];
    assert_eq!(rebel.ips, ["100.64.1.23".parse::<IpAddr>().unwrap()]);
    assert_eq!(rebel.node.as_deref(), Some("c1-n1"));
    assert_eq!(
        rebel.labels.get("name").map(String::as_str),
        Some("rebel-base")
    );
    assert!(rebel.ready && !rebel.terminating);
    assert_eq!(rebel.service_account, "default");

    let svc = &state.services[&at("rebel-base")];
    assert!(svc.global && svc.shared);
    assert_eq!(
        svc.cluster_ips,
        ["100.64.255.17".parse::<IpAddr>().unwrap()]
    );
    assert_eq!((svc.ports[0].protocol, svc.ports[0].port), (6, 80));

    let slice = &state.endpoint_slices[&at("rebel-base-x7k2p")];
    assert_eq!(slice.service, at("rebel-base"));
    assert_eq!(
        slice.endpoints[0].pod,
        Some(at("rebel-base-6c8d9f7b54-4kq2m"))
    );
    assert!(slice.endpoints[0].ready);
}

#[test]
fn x_wing_may_reach_rebel_base_in_cluster2_only() {
    let state = load("cross-cluster");
    let key = PolicyRef {
        kind: PolicyKind::CiliumNetworkPolicy,
        policy: at("allow-cross-cluster"),
    };
    let rules = &state.policies[&key].rules;
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert!(rule
        .endpoint_selector
        .matches(&endpoint("x-wing", "cluster1")));
    assert!(!rule
        .endpoint_selector
        .matches(&endpoint("x-wing", "cluster2")));
    let elsewhere = Labels::new()
        .with("name", "x-wing")
        .with(CLUSTER_LABEL, "cluster1")
        .with(NAMESPACE_LABEL, "other");
    assert!(
        !rule.endpoint_selector.matches(&elsewhere),
        "a namespaced policy selects its namespace only"
    );
    assert!(
        rule.ingress.is_none(),
        "ingress is not enforced by this policy"
    );

    let egress: &[EgressRule] = rule.egress.as_deref().unwrap();
    let allows = |labels: &Labels| {
        let peer = Identity::new(0x0002_0100).unwrap();
        egress
            .iter()
            .any(|r| r.allows(peer, Some(labels), ClusterId::new(1).unwrap(), 6, 80))
    };
    assert!(allows(&endpoint("rebel-base", "cluster2")));
    assert!(!allows(&endpoint("rebel-base", "cluster1")));
    assert!(!allows(&endpoint("x-wing", "cluster2")));
    let Peer::Endpoints(sel) = &egress[0].to[0] else {
        panic!("endpoint peer expected")
    };
    assert_eq!(
        sel.match_labels.get(NAMESPACE_LABEL).map(String::as_str),
        Some("default")
    );
}
