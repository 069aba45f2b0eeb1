use super::*;
use crate::drop_reason::DropReason;
use crate::flow::{Arrival, FlowFacts, FlowTime, Outcome, Tcp};
use crate::forward::ForwardKind;
use proptest::prelude::*;

fn endpoint(namespace: &str, pod: &str, identity: u32, labels: &[&str]) -> Endpoint {
    Endpoint {
        identity,
        cluster_name: "cluster1".into(),
        namespace: namespace.into(),
        pod_name: pod.into(),
        labels: labels.iter().map(|l| l.parse().unwrap()).collect(),
    }
}

/// default/x-wing-7f → kube-system/coredns-1:53 over TCP, forwarded through the tunnel.
fn flow() -> Flow {
    Flow::new(FlowFacts {
        time: FlowTime::from_unix_ms(1_700_000_000_000),
        node_name: "cluster1/c1-n1".into(),
        outcome: Outcome::Forwarded(ForwardKind::Tunnel),
        arrival: Arrival::FromPod,
        source: (
            "100.64.1.10".parse().unwrap(),
            endpoint(
                "default",
                "x-wing-7f",
                65792,
                &["k8s:app=x-wing", "k8s:tier=front"],
            ),
        ),
        destination: (
            "100.65.2.20".parse().unwrap(),
            endpoint(
                "kube-system",
                "coredns-1",
                131073,
                &["k8s:k8s-app=kube-dns"],
            ),
        ),
        backend: None,
        l4: Some(Layer4::Tcp(Tcp {
            source_port: 40000,
            destination_port: 53,
            flags: None,
        })),
    })
}

fn allow(filters: Vec<Filter>) -> FlowFilters {
    FlowFilters {
        allow: filters,
        deny: vec![],
    }
}

fn pod(end: End, text: &str) -> Filter {
    Filter::Pod {
        end,
        pod: text.parse().unwrap(),
    }
}

#[test]
fn pods_by_prefix_and_namespace_at_either_end() {
    let flow = flow();
    assert!(allow(vec![]).matches(&flow), "no filter: everything");
    assert!(
        allow(vec![pod(End::Either, "x-wing")]).matches(&flow),
        "a prefix"
    );
    assert!(allow(vec![pod(End::Either, "default/x-")]).matches(&flow));
    assert!(
        allow(vec![pod(End::Either, "kube-system/")]).matches(&flow),
        "a namespace"
    );
    assert!(!allow(vec![pod(End::Either, "other/x-wing")]).matches(&flow));
    assert!(allow(vec![pod(End::Destination, "coredns")]).matches(&flow));
    assert!(
        !allow(vec![pod(End::Source, "coredns")]).matches(&flow),
        "directed"
    );
    // Two pods: either; a pod and a verdict: both.
    let either = allow(vec![
        pod(End::Either, "tie-fighter"),
        pod(End::Either, "coredns"),
    ]);
    assert!(either.matches(&flow));
    let both = allow(vec![
        pod(End::Either, "coredns"),
        Filter::Verdict {
            verdict: Verdict::Dropped,
        },
    ]);
    assert!(!both.matches(&flow));
}

#[test]
fn ips_ports_protocols_identities_and_nodes() {
    let flow = flow();
    let ip = |end, text: &str| Filter::Ip {
        end,
        cidr: text.parse().unwrap(),
    };
    assert!(allow(vec![ip(End::Either, "100.65.0.0/16")]).matches(&flow));
    assert!(allow(vec![ip(End::Source, "100.64.1.10/32")]).matches(&flow));
    assert!(!allow(vec![ip(End::Source, "100.65.0.0/16")]).matches(&flow));
    assert!(
        !allow(vec![ip(End::Either, "fd00::/8")]).matches(&flow),
        "another family"
    );
    let port = |end, port| Filter::Port { end, port };
    assert!(allow(vec![port(End::Either, 53)]).matches(&flow));
    assert!(!allow(vec![port(End::Source, 53)]).matches(&flow));
    let protocol = |protocol| Filter::Protocol { protocol };
    assert!(allow(vec![protocol(FilterProtocol::Tcp)]).matches(&flow));
    assert!(!allow(vec![protocol(FilterProtocol::Icmp)]).matches(&flow));
    let identity = Filter::Identity {
        end: End::Destination,
        identity: 131073,
    };
    assert!(allow(vec![identity]).matches(&flow));
    let node = |pattern: &str| Filter::NodeName {
        pattern: pattern.into(),
    };
    assert!(allow(vec![node("cluster1/*")]).matches(&flow));
    assert!(
        allow(vec![node("c1-*")]).matches(&flow),
        "the node part alone"
    );
    assert!(!allow(vec![node("cluster2/*")]).matches(&flow));
}

#[test]
fn label_selectors_as_kubernetes_writes_them() {
    let flow = flow();
    let label = |end, text: &str| Filter::Label {
        end,
        selector: text.parse().unwrap(),
    };
    for (selector, end, expected) in [
        ("app=x-wing", End::Either, true),
        ("k8s:app=x-wing", End::Source, true),
        ("other:app=x-wing", End::Source, false),
        ("app=x-wing,tier in (front,back)", End::Source, true),
        ("app=x-wing,tier notin (front)", End::Source, false),
        ("app!=x-wing", End::Source, false),
        ("!app", End::Destination, true),
        ("k8s-app", End::Destination, true),
        ("app==x-wing", End::Destination, false),
    ] {
        let got = allow(vec![label(end, selector)]).matches(&flow);
        assert_eq!(got, expected, "{selector} at {end}");
    }
    for bad in ["", "app in x", "app in (a", "a b=c", ")"] {
        assert!(bad.parse::<LabelSelector>().is_err(), "{bad}");
    }
}

#[test]
fn not_leaves_out_what_matches() {
    let flow = flow();
    let filters = FlowFilters {
        allow: vec![pod(End::Either, "x-wing")],
        deny: vec![Filter::Port {
            end: End::Either,
            port: 53,
        }],
    };
    assert!(!filters.matches(&flow));
    let mut dropped = flow.clone();
    dropped.verdict = Verdict::Dropped;
    dropped.extensions.reason = Some(DropReason::PolicyDenied);
    let not_forwarded = FlowFilters {
        allow: vec![],
        deny: vec![Filter::Verdict {
            verdict: Verdict::Forwarded,
        }],
    };
    assert!(!not_forwarded.matches(&flow));
    assert!(not_forwarded.matches(&dropped));
}

#[test]
fn filters_travel_as_json() {
    let filters = FlowFilters {
        allow: vec![
            pod(End::Source, "default/x-wing"),
            Filter::Label {
                end: End::Either,
                selector: "app in (a,b)".parse().unwrap(),
            },
        ],
        deny: vec![Filter::Verdict {
            verdict: Verdict::Dropped,
        }],
    };
    let json = serde_json::to_string(&filters).unwrap();
    assert!(
        json.contains(r#""kind":"pod","end":"source","pod":"default/x-wing""#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<FlowFilters>(&json).unwrap(), filters);
}

proptest! {
    #[test]
    fn any_selector_or_pod_text_parses_or_fails_cleanly(text in "\\PC{0,40}") {
        let _ = text.parse::<LabelSelector>();
        let _ = text.parse::<PodPattern>();
    }

    #[test]
    fn cidrs_hold_what_they_should(addr: u32, other: u32, len in 0u8..=32) {
        let net = std::net::Ipv4Addr::from(addr);
        let cidr = Cidr { address: net.into(), prefix_len: len };
        prop_assert!(contains(&cidr, net.into()));
        let shift = 32 - u32::from(len);
        let same = len == 0 || (addr >> shift) == (other >> shift);
        prop_assert_eq!(contains(&cidr, std::net::Ipv4Addr::from(other).into()), same);
    }
}
