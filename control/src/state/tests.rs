//! The model: events fold into a state, diffs turn one state into another, and values convert both ways.

use super::*;
use crate::cluster_name::ClusterName;
use crate::kvstore::{Key, Origin, Record};
use proptest::prelude::*;

pub(crate) fn c2() -> ClusterId {
    ClusterId::new(2).unwrap()
}

pub(crate) fn endpoint(last: u8, id: u32) -> EndpointInfo {
    EndpointInfo {
        ip: Addr::from(std::net::Ipv4Addr::new(100, 65, 1, last)),
        identity: Identity::new(0x2_0000 + id).unwrap(),
        host_ip: Some(Addr::from(std::net::Ipv4Addr::new(198, 18, 2, 1))),
        namespace: "ns".into(),
        pod_name: format!("pod-{last}"),
    }
}

pub(crate) fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        cluster_id: c2(),
        addresses: vec![
            (
                NodeAddressKind::CiliumInternal,
                "100.65.1.1".parse::<std::net::IpAddr>().unwrap().into(),
            ),
            (
                NodeAddressKind::Internal,
                "198.18.2.1".parse::<std::net::IpAddr>().unwrap().into(),
            ),
        ],
        pod_cidrs: vec![Cidr {
            addr: "100.65.1.0".parse::<std::net::IpAddr>().unwrap().into(),
            prefix_len: 24,
        }],
        health_ips: vec![],
        encryption_key: 0,
        wireguard_pub_key: Some("key".into()),
    }
}

pub(crate) fn service() -> ServiceInfo {
    let port = |ip: &str, port| ServicePort {
        addr: ip.parse::<std::net::IpAddr>().unwrap().into(),
        port_name: "http".into(),
        protocol: 6,
        port,
    };
    ServiceInfo {
        name: ServiceName {
            namespace: "ns-alpha".into(),
            name: "echo".into(),
        },
        frontends: vec![port("100.65.255.10", 80)],
        backends: vec![port("100.65.1.10", 8080), port("100.65.1.11", 8080)],
        shared: true,
        include_external: true,
        selector: vec![("app".into(), "echo".into())],
    }
}

#[test]
fn upsert_reports_change_only_when_something_changed() {
    let mut state = ClusterState::default();
    assert!(state.upsert(Entry::Endpoint(endpoint(1, 1).into())));
    assert!(!state.upsert(Entry::Endpoint(endpoint(1, 1).into())));
    assert!(state.upsert(Entry::Endpoint(endpoint(1, 2).into())));
    assert_eq!(state.count(Kind::Endpoints), 1);
    assert!(state.remove(&EntryKey::Endpoint(endpoint(1, 2).ip)));
    assert!(!state.remove(&EntryKey::Endpoint(endpoint(1, 2).ip)));
}

#[test]
fn the_tunnel_address_is_the_internal_ip() {
    assert_eq!(
        node("n1").tunnel_addr().map(|a| a.to_string()),
        Some("198.18.2.1".into())
    );
}

#[test]
fn model_to_kvstore_and_back_is_lossless() {
    let name = ClusterName::new("cluster2").unwrap();
    let origin = Origin {
        name: &name,
        id: c2(),
    };
    let cases = [
        (
            Key::Node {
                cluster: name.clone(),
                node: "n1".into(),
            },
            serde_json::to_vec(&node("n1").to_kvstore(&name)),
            Entry::Node(node("n1").into()),
        ),
        (
            Key::Endpoint(endpoint(7, 3).ip.ip()),
            serde_json::to_vec(&endpoint(7, 3).to_kvstore()),
            Entry::Endpoint(endpoint(7, 3).into()),
        ),
        (
            Key::Service {
                cluster: name.clone(),
                namespace: "ns-alpha".into(),
                name: "echo".into(),
            },
            serde_json::to_vec(&service().to_kvstore(&name, c2())),
            Entry::Service(service().into()),
        ),
    ];
    for (key, value, expected) in cases {
        let record = Record::decode(&key, &value.unwrap(), origin).unwrap();
        assert_eq!(Entry::from_record(&key, record).unwrap(), Some(expected));
    }
}

#[test]
fn a_node_with_a_broken_mask_is_refused_naming_its_key() {
    let name = ClusterName::new("cluster2").unwrap();
    let key = Key::Node {
        cluster: name.clone(),
        node: "n1".into(),
    };
    let mut value = node("n1").to_kvstore(&name);
    value.ipv4_alloc_cidr.as_mut().unwrap().mask = vec![255, 0, 255, 0];
    let record = Record::Node(value);
    let err = Entry::from_record(&key, record).unwrap_err();
    assert_eq!(err.key, "cilium/state/nodes/v1/cluster2/n1");
}

fn any_state() -> impl Strategy<Value = ClusterState> {
    let endpoints = proptest::collection::vec((any::<u8>(), 0u32..4), 0..20);
    let nodes = proptest::collection::vec("n[0-4]", 0..4);
    (endpoints, nodes, any::<bool>()).prop_map(|(eps, nodes, with_service)| {
        let mut state = ClusterState::default();
        for (last, id) in eps {
            state.upsert(Entry::Endpoint(endpoint(last, id).into()));
            state.upsert(Entry::Identity(
                Identity::new(0x2_0000 + id).unwrap(),
                LabelSet::new(),
            ));
        }
        for n in nodes {
            state.upsert(Entry::Node(node(&n).into()));
        }
        if with_service {
            state.upsert(Entry::Service(service().into()));
        }
        state
    })
}

proptest! {
    #[test]
    fn applying_a_diff_yields_the_new_state(old in any_state(), new in any_state()) {
        let mut state = old.clone();
        let events = old.diff(&new);
        for event in events.clone() {
            prop_assert!(state.apply(event), "every event of a diff changes something");
        }
        prop_assert_eq!(&state, &new);
        prop_assert!(new.diff(&state).is_empty());
    }
}

#[test]
fn a_services_ports_of_one_name_share_one_name() {
    let name = ClusterName::new("cluster2").unwrap();
    let key = Key::Service {
        cluster: name.clone(),
        namespace: "ns-alpha".into(),
        name: "echo".into(),
    };
    let value = serde_json::to_vec(&service().to_kvstore(&name, c2())).unwrap();
    let origin = Origin {
        name: &name,
        id: c2(),
    };
    let record = Record::decode(&key, &value, origin).unwrap();
    let Some(Entry::Service(read)) = Entry::from_record(&key, record).unwrap() else {
        panic!("a service record reads as a service");
    };
    let names: Vec<&std::sync::Arc<str>> = read
        .frontends
        .iter()
        .chain(&read.backends)
        .map(|p| &p.port_name)
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| &***n == "http"));
    assert!(names.windows(2).all(|w| std::sync::Arc::ptr_eq(w[0], w[1])));
}
