use std::net::Ipv4Addr;
use std::path::PathBuf;

use arc_swap::ArcSwap;
use meshpath_api::client::ObserveRequest;
use meshpath_api::flow::{Outcome, RenderOptions};
use meshpath_api::flow_filter::{End, Filter, FlowFilters};
use meshpath_api::Client;
use meshpath_control::clustermesh::MeshStatus;
use meshpath_control::local::{LocalPod, LocalState, ObjectRef};
use meshpath_dataplane::endpoint::Endpoint;
use meshpath_dataplane::flow::proto;
use meshpath_dataplane::flowlog::{Direction, FlowVerdict};
use meshpath_dataplane::ipcache::{IpCacheEntry, IpPrefix};
use meshpath_dataplane::parse::{TcpFlags, L4};
use meshpath_dataplane::snapshot::{Capacities, Tables};
use meshpath_dataplane::stats::Forward;
use meshpath_dataplane::{ClusterId, DropReason, FlowKey, Identity};
use tokio::sync::watch;

use super::*;
use crate::agent::endpoints::EndpointDirectory;
use crate::agent::identities::IdentityDirectory;
use meshpath_dataplane::PortId;

const X_WING: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 10);
const REBEL_C2: Ipv4Addr = Ipv4Addr::new(100, 65, 1, 10);

fn identity(id: u32) -> Identity {
    Identity::new(id).unwrap()
}

fn names() -> Names {
    let node = meshpath_dataplane::testbed::node_config();
    let mut t = Tables::empty(node, Capacities::default());
    t.endpoints
        .insert(Endpoint {
            port: PortId(1),
            mac: [2, 0, 0, 1, 1, 0],
            ipv4: Some(X_WING),
            ipv6: None,
            identity: identity(0x1_0100),
            name: "default/x-wing".into(),
        })
        .unwrap();
    let entry = IpCacheEntry {
        identity: identity(0x2_0100),
        tunnel_endpoint: Some(Ipv4Addr::new(198, 18, 2, 1).into()),
        cluster: ClusterId::new(2),
    };
    t.ipcache
        .insert(IpPrefix::host(REBEL_C2.into()), entry)
        .unwrap();
    let c2 = meshpath_control::cluster_name::ClusterName::new("cluster2").unwrap();
    let mut mesh = MeshStatus::new();
    let mut remote = meshpath_control::clustermesh::RemoteStatus::new(&c2, 1);
    remote.cluster_id = Some(2);
    mesh.insert(c2, remote);
    let endpoints = EndpointDirectory::default();
    let pod = ObjectRef {
        namespace: "default".into(),
        name: "p21".into(),
    };
    let local = LocalState {
        pods: [(
            pod.clone(),
            LocalPod {
                pod,
                node: Some("c1-n2".into()),
                labels: Default::default(),
                ips: vec![Ipv4Addr::new(100, 64, 2, 10).into()],
                service_account: "default".into(),
                ready: true,
                terminating: false,
            },
        )]
        .into(),
        ..Default::default()
    };
    endpoints.record_local("cluster1", &local);
    let identities = IdentityDirectory::default();
    let mut labels = meshpath_dataplane::policy::IdentityLabels::new();
    labels.insert(
        identity(0x1_0100),
        meshpath_dataplane::policy::Labels::new().with("app", "x-wing"),
    );
    identities.record_local("cluster1", &labels);
    Names {
        cluster: "cluster1".into(),
        node_name: "cluster1/c1-n1".into(),
        tables: Arc::new(ArcSwap::from_pointee(t)),
        mesh: Some(watch::channel(mesh).1),
        endpoints,
        identities,
    }
}

fn event(src: Ipv4Addr, verdict: FlowVerdict) -> FlowEvent {
    FlowEvent {
        time_ms: 1,
        flow: FlowKey {
            src: src.into(),
            dst: REBEL_C2.into(),
            src_port: 40000,
            dst_port: 80,
            proto: proto::TCP,
        },
        l4: L4::Tcp(TcpFlags::SYN),
        backend: None,
        src_identity: identity(0x1_0100),
        dst_identity: identity(0x2_0100),
        verdict,
        direction: Direction::FromPod,
    }
}

fn flow_of(names: &Names, e: &FlowEvent) -> meshpath_api::flow::Flow {
    let tables = names.tables.load();
    let mesh = names.mesh.as_ref().map(|m| m.borrow().clone());
    let view = View {
        tables: &tables,
        mesh: mesh.as_ref(),
    };
    names.flow(&view, 1_700_000_000_123, e)
}

#[test]
fn names_local_pods_remote_clusters_and_spoofers() {
    let names = names();
    let denied = event(X_WING, FlowVerdict::Dropped(DropReason::PolicyDenied));
    let flow = flow_of(&names, &denied);
    assert_eq!(flow.source.pod().as_deref(), Some("default/x-wing"));
    assert_eq!(flow.source.cluster_name, "cluster1");
    assert_eq!(flow.source.labels[0].to_string(), "k8s:app=x-wing");
    assert_eq!(flow.destination.cluster_name, "cluster2");
    assert_eq!(flow.destination.identity, 0x2_0100);
    assert_eq!(
        flow.outcome(),
        Some(Outcome::Dropped(meshpath_api::DropReason::PolicyDenied))
    );
    assert_eq!(flow.summary, "TCP Flags: SYN");
    let response = FlowResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        event: Event::Flow(Box::new(flow)),
    };
    let line = meshpath_api::flow::render(&response, RenderOptions::default());
    assert_eq!(
        line,
        "Nov 14 22:13:20.123: default/x-wing:40000 (ID:65792) <> 100.65.1.10:80 (ID:131328) Policy denied DROPPED (TCP Flags: SYN)"
    );

    let liar = Ipv4Addr::new(100, 64, 1, 99);
    let spoofed = event(liar, FlowVerdict::Dropped(DropReason::SpoofedSource));
    let flow = flow_of(&names, &spoofed);
    assert_eq!(flow.ip.source, liar);
    assert_eq!(
        flow.source.pod_name, "x-wing",
        "named by its port's identity"
    );

    let mut other_node = event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel));
    other_node.flow.dst = Ipv4Addr::new(100, 64, 2, 10).into();
    let flow = flow_of(&names, &other_node);
    assert_eq!(flow.destination.pod().as_deref(), Some("default/p21"));
    assert_eq!(flow.is_reply, Some(false));

    // A service flow: the destination is the backend the service chose, named.
    let mut balanced = event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel));
    balanced.flow.dst = Ipv4Addr::new(100, 64, 255, 10).into();
    balanced.backend = Some((Ipv4Addr::new(100, 64, 2, 10).into(), 8080));
    let flow = flow_of(&names, &balanced);
    assert_eq!(flow.ip.destination, Ipv4Addr::new(100, 64, 2, 10));
    assert_eq!(flow.destination.pod_name, "p21");
    assert_eq!(flow.ports(), (40000, 8080));
    assert_eq!(
        flow.extensions.service,
        Some("100.64.255.10:80".parse().unwrap())
    );
}

fn no_ports() -> KernelDrops {
    KernelDrops {
        ports: Box::new(Vec::new),
        interfaces: Default::default(),
    }
}

struct Observed {
    status: PathBuf,
    sink: FlowSink,
    cancel: CancellationToken,
}

async fn observed(test: &str) -> Observed {
    let dir = std::env::temp_dir().join(format!("meshpath-observe-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = dir.join("agent.sock");
    let (sink, source) = channel();
    let hub = FlowHub::default();
    let cancel = CancellationToken::new();
    tokio::spawn(collect(
        source,
        names(),
        no_ports(),
        hub.clone(),
        cancel.clone(),
    ));
    let path = meshpath_api::client::observe_socket(&status);
    let listener = socket::bind(&path, socket::Access::default()).unwrap();
    tokio::spawn({
        let cancel = cancel.clone();
        async move { serve(listener, &path, hub, cancel).await.unwrap() }
    });
    Observed {
        status,
        sink,
        cancel,
    }
}

async fn read(status: PathBuf, request: ObserveRequest, max: usize) -> Vec<FlowResponse> {
    tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        Client::new(&status)
            .observe(&request, |e| {
                events.push(e);
                events.len() < max
            })
            .unwrap();
        events
    })
    .await
    .unwrap()
}

/// Waits (with a deadline) until the collector kept `n` events.
async fn kept(status: &Path, n: usize) -> Vec<FlowResponse> {
    for _ in 0..250 {
        let events = read(status.to_owned(), ObserveRequest::default(), usize::MAX).await;
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!("the collector never kept {n} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_kept_flows_then_follows_new_ones() {
    let o = observed("follow").await;
    o.sink.send(event(
        X_WING,
        FlowVerdict::Dropped(DropReason::PolicyDenied),
    ));
    let first = kept(&o.status, 1).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (each, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let status = o.status.clone();
    let follower = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let request = ObserveRequest {
            follow: true,
            ..Default::default()
        };
        Client::new(&status)
            .observe(&request, |e| {
                events.push(e);
                let _ = each.send(());
                events.len() < 2
            })
            .unwrap();
        events
    });
    // The new flow is sent once the follower has had the kept one: it must come after it.
    tokio::time::timeout(Duration::from_secs(5), arrived.recv())
        .await
        .expect("the kept flow arrives first");
    o.sink
        .send(event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel)));
    let followed = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the new flow arrives")
        .unwrap();
    let verdicts: Vec<_> = followed
        .iter()
        .filter_map(|e| e.flow().map(|f| f.verdict.name()))
        .collect();
    assert_eq!(verdicts, ["DROPPED", "FORWARDED"]);
    o.cancel.cancel();
}

/// The agent filters: only what the request wants crosses the socket, and only the last N of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_filters_and_keeps_to_the_last_n() {
    let o = observed("filters").await;
    for n in 0..5u16 {
        let mut e = event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel));
        e.flow.dst_port = 1000 + n;
        o.sink.send(e);
    }
    o.sink.send(event(
        X_WING,
        FlowVerdict::Dropped(DropReason::PolicyDenied),
    ));
    kept(&o.status, 6).await;
    let dropped = ObserveRequest {
        filters: FlowFilters {
            allow: vec![Filter::Verdict {
                verdict: meshpath_api::flow::Verdict::Dropped,
            }],
            deny: vec![],
        },
        ..Default::default()
    };
    let events = read(o.status.clone(), dropped, usize::MAX).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].flow().unwrap().verdict.name(), "DROPPED");
    let last_two_forwarded = ObserveRequest {
        last: Some(2),
        filters: FlowFilters {
            allow: vec![],
            deny: vec![Filter::Verdict {
                verdict: meshpath_api::flow::Verdict::Dropped,
            }],
        },
        ..Default::default()
    };
    let events = read(o.status.clone(), last_two_forwarded, usize::MAX).await;
    let ports: Vec<u16> = events
        .iter()
        .filter_map(|e| e.flow())
        .map(|f| f.ports().1)
        .collect();
    assert_eq!(ports, [1003, 1004]);
    let to_pod = ObserveRequest {
        filters: FlowFilters {
            allow: vec![Filter::Pod {
                end: End::Source,
                pod: "default/x-".parse().unwrap(),
            }],
            deny: vec![],
        },
        since: Some(FlowTime::from_unix_ms(unix_ms(SystemTime::now()) + 60_000)),
        ..Default::default()
    };
    assert!(
        read(o.status.clone(), to_pod, usize::MAX).await.is_empty(),
        "none since then"
    );
    o.cancel.cancel();
}

/// Events the queue could not take are reported in the stream, as Hubble reports lost events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_shows_as_lost_events() {
    let o = observed("lost").await;
    // Faster than the collector drains it, until it overflows.
    for _ in 0..100 * QUEUE {
        o.sink
            .send(event(X_WING, FlowVerdict::Forwarded(Forward::Tunnel)));
        if o.sink.lost.load(Ordering::Relaxed) >= 10 {
            break;
        }
    }
    let mut lost = 0;
    for _ in 0..250 {
        let events = read(o.status.clone(), ObserveRequest::default(), usize::MAX).await;
        lost = events
            .iter()
            .filter_map(|e| match &e.event {
                Event::LostEvents(l) if l.source == LostEventSource::ObserverEventsQueue => {
                    Some(l.num_events_lost)
                }
                _ => None,
            })
            .sum();
        if lost > 0 {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(lost >= 10, "the queue's losses are in the stream: {lost}");
    o.cancel.cancel();
}
