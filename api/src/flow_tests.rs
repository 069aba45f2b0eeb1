use super::*;

fn endpoint(identity: u32, cluster: &str, pod: Option<(&str, &str)>, labels: &[&str]) -> Endpoint {
    Endpoint {
        identity,
        cluster_name: cluster.to_owned(),
        namespace: pod.map_or(String::new(), |p| p.0.to_owned()),
        pod_name: pod.map_or(String::new(), |p| p.1.to_owned()),
        labels: labels.iter().map(|l| l.parse().unwrap()).collect(),
    }
}

/// x-wing in cluster1 to the rebel-base service, balanced to a backend in cluster2.
fn facts(outcome: Outcome) -> FlowFacts {
    FlowFacts {
        time: FlowTime::from_unix_ms(1_700_000_000_123),
        node_name: "cluster1/c1-n1".into(),
        outcome,
        arrival: Arrival::FromPod,
        source: (
            "100.64.1.10".parse().unwrap(),
            endpoint(
                0x1_0100,
                "cluster1",
                Some(("default", "x-wing")),
                &["k8s:app=x-wing"],
            ),
        ),
        destination: ("100.64.255.10".parse().unwrap(), Endpoint::default()),
        backend: Some((
            "100.65.1.10:8080".parse().unwrap(),
            endpoint(
                0x2_0100,
                "cluster2",
                Some(("default", "rebel-base")),
                &["k8s:app=rebel-base"],
            ),
        )),
        l4: Some(Layer4::Tcp(Tcp {
            source_port: 40000,
            destination_port: 80,
            flags: Some(TcpFlags {
                syn: true,
                ..Default::default()
            }),
        })),
    }
}

fn response(outcome: Outcome) -> FlowResponse {
    let flow = Flow::new(facts(outcome));
    FlowResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        event: Event::Flow(Box::new(flow)),
    }
}

/// The paths a jq expression written for Hubble's JSON uses read meshpath's.
#[test]
fn json_in_hubbles_shape() {
    let denied = response(Outcome::Dropped(DropReason::PolicyDenied));
    let json: serde_json::Value = serde_json::to_value(&denied).unwrap();
    let flow = &json["flow"];
    assert_eq!(json["node_name"], "cluster1/c1-n1");
    assert_eq!(json["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(flow["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(flow["verdict"], "DROPPED");
    assert_eq!(flow["drop_reason"], 133);
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(flow["event_type"]["type"], 1);
    assert_eq!(flow["event_type"]["sub_type"], 133);
    assert_eq!(flow["traffic_direction"], "EGRESS");
    assert_eq!(flow["node_name"], "cluster1/c1-n1");
    assert_eq!(flow["Type"], "L3_L4");
    assert_eq!(flow["IP"]["source"], "100.64.1.10");
    assert_eq!(
        flow["IP"]["destination"], "100.65.1.10",
        "after translation"
    );
    assert_eq!(flow["IP"]["ipVersion"], "IPv4");
    assert_eq!(flow["l4"]["TCP"]["source_port"], 40000);
    assert_eq!(flow["l4"]["TCP"]["destination_port"], 8080);
    assert_eq!(flow["l4"]["TCP"]["flags"]["SYN"], true);
    assert_eq!(
        flow["l4"]["TCP"]["flags"].get("ACK"),
        None,
        "false is left out"
    );
    assert_eq!(flow["source"]["pod_name"], "x-wing");
    assert_eq!(flow["source"]["namespace"], "default");
    assert_eq!(flow["source"]["identity"], 0x1_0100);
    assert_eq!(flow["source"]["labels"][0], "k8s:app=x-wing");
    assert_eq!(flow["destination"]["cluster_name"], "cluster2");
    assert_eq!(flow["destination"]["pod_name"], "rebel-base");
    assert_eq!(flow["Summary"], "TCP Flags: SYN");
    assert_eq!(flow["extensions"]["@type"], DETAILS_TYPE);
    assert_eq!(flow["extensions"]["reason"], "policy_denied");
    assert_eq!(flow["extensions"]["service"], "100.64.255.10:80");
    assert_eq!(flow.get("is_reply"), None, "a drop may be either way");
    assert_eq!(flow.get("trace_observation_point"), None);
    let line = serde_json::to_string(&denied).unwrap();
    assert!(!line.contains('\n'));
    assert_eq!(serde_json::from_str::<FlowResponse>(&line).unwrap(), denied);

    let forwarded = response(Outcome::Forwarded(ForwardKind::Tunnel));
    let json: serde_json::Value = serde_json::to_value(&forwarded).unwrap();
    assert_eq!(json["flow"]["verdict"], "FORWARDED");
    assert_eq!(json["flow"]["trace_observation_point"], "TO_OVERLAY");
    assert_eq!(json["flow"]["is_reply"], false);
    assert_eq!(json["flow"]["event_type"]["type"], 4);
    assert_eq!(json["flow"].get("drop_reason_desc"), None);
    assert_eq!(json["flow"]["extensions"]["forward"], "tunnel");
    let flow = forwarded.flow().unwrap();
    assert_eq!(
        flow.outcome(),
        Some(Outcome::Forwarded(ForwardKind::Tunnel))
    );
}

#[test]
fn meshpaths_own_drop_reasons_keep_their_names() {
    let quota = response(Outcome::Dropped(DropReason::CtEndpointQuota));
    let json: serde_json::Value = serde_json::to_value(&quota).unwrap();
    assert_eq!(json["flow"]["drop_reason_desc"], "CT_ENDPOINT_QUOTA");
    assert_eq!(
        json["flow"].get("drop_reason"),
        None,
        "Cilium has no code for it"
    );
    assert_eq!(json["flow"]["event_type"].get("sub_type"), None);
    for reason in DropReason::ALL {
        let text = HubbleDropReason(*reason).to_string();
        assert_eq!(
            text.parse::<HubbleDropReason>(),
            Ok(HubbleDropReason(*reason))
        );
    }
}

#[test]
fn one_line_like_hubble_observe() {
    let denied = response(Outcome::Dropped(DropReason::PolicyDenied));
    assert_eq!(
        render(&denied, RenderOptions::default()),
        "Nov 14 22:13:20.123: default/x-wing:40000 (ID:65792) <> default/rebel-base:8080 (ID:131328) Policy denied DROPPED (TCP Flags: SYN)"
    );
    let forwarded = response(Outcome::Forwarded(ForwardKind::Tunnel));
    assert_eq!(
        render(&forwarded, RenderOptions { node_name: true }),
        "Nov 14 22:13:20.123 [cluster1/c1-n1]: default/x-wing:40000 (ID:65792) -> default/rebel-base:8080 (ID:131328) to-overlay FORWARDED (TCP Flags: SYN)"
    );
    let mut ping = facts(Outcome::Forwarded(ForwardKind::LocalPod));
    ping.backend = None;
    ping.destination = (
        "fd00::9".parse().unwrap(),
        endpoint(2, "", None, &["reserved:world"]),
    );
    ping.l4 = Some(Layer4::Icmpv6(Icmp {
        kind: Some(128),
        code: 0,
    }));
    let ping = Flow::new(ping);
    let line = render_flow(&ping, RenderOptions::default());
    assert!(
        line.ends_with("-> fd00::9 (world) to-endpoint FORWARDED (ICMPv6 EchoRequest)"),
        "{line}"
    );
}

#[test]
fn lost_events_as_hubble_shows_them() {
    let lost = FlowResponse {
        event: Event::LostEvents(LostEvents {
            source: LostEventSource::ObserverEventsQueue,
            num_events_lost: 12,
            cpu: None,
            interface: None,
        }),
        node_name: "cluster1/c1-n1".into(),
        time: FlowTime::from_unix_ms(1_700_000_000_000),
    };
    let json: serde_json::Value = serde_json::to_value(&lost).unwrap();
    assert_eq!(json["lost_events"]["source"], "OBSERVER_EVENTS_QUEUE");
    assert_eq!(
        json["lost_events"]["num_events_lost"], "12",
        "a uint64, as protobuf writes it"
    );
    assert_eq!(json.get("flow"), None);
    assert_eq!(
        render(&lost, RenderOptions::default()),
        "EVENTS LOST: OBSERVER_EVENTS_QUEUE CPU(0) 12"
    );
    let back: FlowResponse = serde_json::from_value(json).unwrap();
    assert_eq!(back, lost);
    let number = r#"{"lost_events":{"source":"AF_XDP_RX_RING_FULL","num_events_lost":68,"interface":"uplink"},"node_name":"n","time":"2023-11-14T22:13:20Z"}"#;
    let kernel: FlowResponse = serde_json::from_str(number).unwrap();
    assert_eq!(
        render(&kernel, RenderOptions::default()),
        "EVENTS LOST: AF_XDP_RX_RING_FULL uplink 68"
    );
}

#[test]
fn times_to_the_millisecond() {
    let t: FlowTime = "2023-11-14T22:13:20.123Z".parse().unwrap();
    assert_eq!(t.unix_ms(), 1_700_000_000_123);
    assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
    assert_eq!(
        stamp(FlowTime::from_unix_ms(1_709_251_200_007)),
        "Mar  1 00:00:00.007"
    );
    assert!("yesterday".parse::<FlowTime>().is_err());
}
