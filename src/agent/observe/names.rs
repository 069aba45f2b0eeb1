//! Naming a flow event: each end's pod (this node's by its endpoint, the rest of this cluster's and
//! the remote clusters' by the endpoint directory, which remote kvstore values fill with the pod's
//! namespace and name), cluster, identity and the identity's labels, in Hubble's shape.

use std::sync::Arc;

use arc_swap::ArcSwap;
use meshpath_api::flow::{Endpoint, Flow, FlowFacts, FlowTime, Icmp, Layer4, Tcp, TcpFlags, Udp};
use meshpath_control::clustermesh::MeshStatus;
use meshpath_dataplane::flow::proto;
use meshpath_dataplane::flowlog::{Direction, FlowEvent};
use meshpath_dataplane::parse::{IcmpKind, TcpFlags as DpTcpFlags, L4};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::{Addr, Identity};
use tokio::sync::watch;

use crate::agent::convert;
use crate::agent::endpoints::EndpointDirectory;
use crate::agent::identities::IdentityDirectory;

/// What names the ends of a flow.
pub struct Names {
    pub cluster: String,
    /// `cluster/node`, as Hubble names nodes in a cluster mesh.
    pub node_name: String,
    pub tables: Arc<ArcSwap<Tables>>,
    pub mesh: Option<watch::Receiver<MeshStatus>>,
    pub endpoints: EndpointDirectory,
    pub identities: IdentityDirectory,
}

/// What the control plane knows at the time a batch of events is named.
pub struct View<'a> {
    pub tables: &'a Tables,
    pub mesh: Option<&'a MeshStatus>,
}

impl Names {
    pub fn flow(&self, view: &View<'_>, wall_ms: u64, e: &FlowEvent) -> Flow {
        let outcome = convert::outcome(e.verdict);
        let backend = e.backend.map(|(addr, port)| {
            let endpoint = self.endpoint(view, addr, e.dst_identity);
            (convert::socket_addr(addr, port), endpoint)
        });
        // Before translation the destination is the service; its identity is the backend's.
        let destination = match backend {
            Some(_) => Endpoint::default(),
            None => self.endpoint(view, e.flow.dst, e.dst_identity),
        };
        Flow::new(FlowFacts {
            time: FlowTime::from_unix_ms(wall_ms),
            node_name: self.node_name.clone(),
            outcome,
            arrival: convert::direction(e.direction),
            source: (e.flow.src.ip(), self.source(view, e)),
            destination: (e.flow.dst.ip(), destination),
            backend,
            l4: layer4(e),
        })
    }

    /// A pod's frame whose source address is not its own (spoofed) is still named after the pod
    /// that sent it: the local endpoint of its identity.
    fn source(&self, view: &View<'_>, e: &FlowEvent) -> Endpoint {
        let mut endpoint = self.endpoint(view, e.flow.src, e.src_identity);
        if endpoint.pod_name.is_empty() && e.direction == Direction::FromPod {
            let sender = view
                .tables
                .endpoints
                .iter()
                .find(|ep| ep.identity == e.src_identity);
            if let Some(sender) = sender {
                self.name_pod(&mut endpoint, &self.cluster, &sender.name);
            }
        }
        endpoint
    }

    fn name_pod(&self, endpoint: &mut Endpoint, cluster: &str, name: &str) {
        let (namespace, pod) = name.split_once('/').unwrap_or(("", name));
        endpoint.cluster_name = cluster.to_owned();
        endpoint.namespace = namespace.to_owned();
        endpoint.pod_name = pod.to_owned();
    }

    /// This node's pods by their endpoint, every other pod the agent knows by the endpoint
    /// directory, anything else by its ipcache entry's cluster.
    fn endpoint(&self, view: &View<'_>, addr: Addr, identity: Identity) -> Endpoint {
        let mut endpoint = Endpoint {
            identity: identity.get(),
            labels: self.identities.labels(identity.get()),
            ..Endpoint::default()
        };
        if let Some(local) = view.tables.endpoints.by_addr(addr) {
            self.name_pod(&mut endpoint, &self.cluster, &local.name);
        } else if let Some(pod) = self.endpoints.get(addr.ip()) {
            endpoint.cluster_name = pod.cluster;
            endpoint.namespace = pod.namespace;
            endpoint.pod_name = pod.pod;
        } else if let Some(id) = view.tables.ipcache.lookup(addr).and_then(|e| e.cluster) {
            endpoint.cluster_name = match view.tables.node.cluster == id {
                true => self.cluster.clone(),
                false => view
                    .mesh
                    .and_then(|m| m.values().find(|r| r.cluster_id == Some(id.get())))
                    .map_or_else(|| format!("cluster-id-{id}"), |r| r.name.clone()),
            };
        }
        endpoint
    }
}

/// The transport of the event as Hubble's `Layer4`.
fn layer4(e: &FlowEvent) -> Option<Layer4> {
    let (src, dst) = (e.flow.src_port, e.flow.dst_port);
    match (e.flow.proto, e.l4) {
        (proto::TCP, l4) => Some(Layer4::Tcp(Tcp {
            source_port: src,
            destination_port: dst,
            flags: match l4 {
                L4::Tcp(flags) => Some(tcp_flags(flags)),
                _ => None,
            },
        })),
        (proto::UDP, _) => Some(Layer4::Udp(Udp {
            source_port: src,
            destination_port: dst,
        })),
        (proto::ICMP, l4) => Some(Layer4::Icmpv4(icmp(l4, false))),
        (proto::ICMPV6, l4) => Some(Layer4::Icmpv6(icmp(l4, true))),
        _ => None,
    }
}

fn tcp_flags(flags: DpTcpFlags) -> TcpFlags {
    TcpFlags {
        fin: flags.contains(DpTcpFlags::FIN),
        syn: flags.contains(DpTcpFlags::SYN),
        rst: flags.contains(DpTcpFlags::RST),
        ack: flags.contains(DpTcpFlags::ACK),
    }
}

/// The message's type, for the kinds the dataplane tells apart.
fn icmp(l4: L4, v6: bool) -> Icmp {
    let kind = match (l4, v6) {
        (L4::Icmp(IcmpKind::EchoRequest), false) => Some(8),
        (L4::Icmp(IcmpKind::EchoReply), false) => Some(0),
        (L4::Icmp(IcmpKind::EchoRequest), true) => Some(128),
        (L4::Icmp(IcmpKind::EchoReply), true) => Some(129),
        (L4::Icmp(IcmpKind::RouterSolicitation), true) => Some(133),
        (L4::Icmp(IcmpKind::NeighbourSolicitation { .. }), true) => Some(135),
        (L4::Icmp(IcmpKind::NeighbourAdvertisement), true) => Some(136),
        _ => None,
    };
    Icmp { kind, code: 0 }
}
