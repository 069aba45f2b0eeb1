//! The flow log as the agent's observe socket streams it and `meshpath observe -o json` prints it:
//! Hubble's `GetFlowsResponse`, one JSON object per line, each a flow or lost events. A flow has
//! Hubble's shape — `flow.time` (RFC 3339), `flow.verdict`, `flow.IP`, `flow.l4`, `flow.source` and
//! `flow.destination` (`identity`, `namespace`, `pod_name`, `cluster_name`, `labels`),
//! `flow.drop_reason_desc`, `flow.traffic_direction`, `flow.node_name` — with Hubble's field names
//! and enum values, fields at their zero value left out as protobuf's JSON does, so that a jq
//! expression written for Hubble's JSON reads meshpath's. What only meshpath knows (how a flow left,
//! the backend a service chose, the stable drop reason) is in `flow.extensions`, in the shape of
//! protobuf's `Any`.
//!
//! The line `meshpath observe` prints is Hubble's compact one: `Nov 14 22:13:20.123: default/x-wing:40000
//! (ID:65792) -> default/rebel-base:80 (ID:131328) to-overlay FORWARDED (TCP Flags: SYN)`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::drop_reason::DropReason;
use crate::forward::ForwardKind;
use crate::identity::Label;

/// One event of the stream: a flow, or events lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowResponse {
    #[serde(flatten)]
    pub event: Event,
    /// The node whose agent saw it.
    pub node_name: String,
    pub time: FlowTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Flow(Box<Flow>),
    LostEvents(LostEvents),
}

impl FlowResponse {
    pub fn flow(&self) -> Option<&Flow> {
        match &self.event {
            Event::Flow(flow) => Some(flow),
            Event::LostEvents(_) => None,
        }
    }
}

/// A moment, to the millisecond; as text RFC 3339 in UTC (`2023-11-14T22:13:20.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTime(pub SystemTime);

impl FlowTime {
    pub fn from_unix_ms(ms: u64) -> FlowTime {
        FlowTime(UNIX_EPOCH + Duration::from_millis(ms))
    }

    pub fn unix_ms(self) -> u64 {
        self.0
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl fmt::Display for FlowTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl FromStr for FlowTime {
    type Err = humantime::TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_rfc3339(text).map(FlowTime)
    }
}

serde_as_text!(FlowTime);

/// One flow the dataplane decided on (a new flow, or a drop), in Hubble's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub time: FlowTime,
    pub verdict: Verdict,
    /// Cilium's numeric drop code, for drops Cilium has too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<u8>,
    #[serde(rename = "IP")]
    pub ip: Ip,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    pub source: Endpoint,
    pub destination: Endpoint,
    #[serde(rename = "Type")]
    pub flow_type: FlowType,
    pub node_name: String,
    pub event_type: EventType,
    pub traffic_direction: TrafficDirection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_observation_point: Option<ObservationPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<HubbleDropReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    #[serde(rename = "Summary")]
    pub summary: String,
    pub extensions: FlowDetails,
}

named_enum! {
    pub enum Verdict ("verdict") {
        Forwarded => "FORWARDED",
        Dropped => "DROPPED",
    }
}

named_enum! {
    pub enum FlowType ("flow type") {
        L3L4 => "L3_L4",
    }
}

named_enum! {
    /// Relative to the pods of the node that saw it: egress leaves a pod, ingress comes to one (or
    /// through the node).
    pub enum TrafficDirection ("traffic direction") {
        Ingress => "INGRESS",
        Egress => "EGRESS",
    }
}

named_enum! {
    /// Where a forwarded flow left the node, as Cilium's trace points name it.
    pub enum ObservationPoint ("observation point") {
        ToEndpoint => "TO_ENDPOINT",
        ToStack => "TO_STACK",
        ToOverlay => "TO_OVERLAY",
        ToNetwork => "TO_NETWORK",
    }
}

impl ObservationPoint {
    /// As `hubble observe` prints it: `to-overlay`.
    pub fn text(self) -> String {
        self.name().to_lowercase().replace('_', "-")
    }

    /// Cilium's trace sub-type.
    fn sub_type(self) -> i32 {
        match self {
            ObservationPoint::ToEndpoint => 0,
            ObservationPoint::ToStack => 3,
            ObservationPoint::ToOverlay => 4,
            ObservationPoint::ToNetwork => 11,
        }
    }

    pub fn of(forward: ForwardKind) -> ObservationPoint {
        match forward {
            ForwardKind::LocalPod | ForwardKind::NeighbourReply | ForwardKind::IcmpError => {
                ObservationPoint::ToEndpoint
            }
            ForwardKind::Tunnel => ObservationPoint::ToOverlay,
            ForwardKind::Direct | ForwardKind::Wireguard => ObservationPoint::ToNetwork,
            ForwardKind::ToKernel => ObservationPoint::ToStack,
        }
    }
}

/// A drop reason as `flow.drop_reason_desc` names it: Hubble's enum value (`POLICY_DENIED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HubbleDropReason(pub DropReason);

impl fmt::Display for HubbleDropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.cilium().hubble)
    }
}

impl FromStr for HubbleDropReason {
    type Err = crate::UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        DropReason::ALL
            .iter()
            .find(|r| r.cilium().hubble == text)
            .map(|r| HubbleDropReason(*r))
            .ok_or_else(|| crate::UnknownName {
                kind: "Hubble drop reason",
                name: text.to_owned(),
            })
    }
}

serde_as_text!(HubbleDropReason);

/// Cilium's monitor message type and sub-type: drops are type 1 (sub-type the drop code), traces
/// type 4 (sub-type the observation point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventType {
    #[serde(rename = "type")]
    pub kind: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub sub_type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub source: IpAddr,
    pub destination: IpAddr,
    #[serde(rename = "ipVersion")]
    pub ip_version: IpVersion,
}

named_enum! {
    pub enum IpVersion ("IP version") {
        V4 => "IPv4",
        V6 => "IPv6",
    }
}

/// The transport of a flow, as Hubble's `Layer4` oneof.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    #[serde(rename = "UDP")]
    Udp(Udp),
    #[serde(rename = "ICMPv4")]
    Icmpv4(Icmp),
    #[serde(rename = "ICMPv6")]
    Icmpv6(Icmp),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub source_port: u16,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub destination_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Udp {
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub source_port: u16,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub destination_port: u16,
}

/// An ICMP message: its type, when the dataplane told it apart, and code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<u8>,
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub code: u8,
}

/// The TCP flags set, as Hubble's `TCPFlags` (those not set are left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct TcpFlags {
    #[serde(default, skip_serializing_if = "is_false")]
    pub fin: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub syn: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub rst: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub ack: bool,
}

impl TcpFlags {
    /// `SYN, ACK`, in Hubble's order.
    pub fn names(&self) -> String {
        let set = [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.fin, "FIN"),
            (self.rst, "RST"),
        ];
        let names: Vec<&str> = set.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        names.join(", ")
    }
}

impl Layer4 {
    pub fn ports(&self) -> (u16, u16) {
        match self {
            Layer4::Tcp(t) => (t.source_port, t.destination_port),
            Layer4::Udp(u) => (u.source_port, u.destination_port),
            Layer4::Icmpv4(_) | Layer4::Icmpv6(_) => (0, 0),
        }
    }

    /// Hubble's summary of it: `TCP Flags: SYN`, `UDP`, `ICMPv4 EchoRequest`.
    pub fn summary(&self) -> String {
        match self {
            Layer4::Tcp(t) => format!(
                "TCP Flags: {}",
                t.flags.map_or(String::new(), |f| f.names())
            ),
            Layer4::Udp(_) => "UDP".to_owned(),
            Layer4::Icmpv4(i) => icmp_summary("ICMPv4", i.kind, false),
            Layer4::Icmpv6(i) => icmp_summary("ICMPv6", i.kind, true),
        }
    }
}

fn icmp_summary(family: &str, kind: Option<u8>, v6: bool) -> String {
    match kind {
        Some(kind) => format!("{family} {}", icmp_name(kind, v6)),
        None => family.to_owned(),
    }
}

fn icmp_name(kind: u8, v6: bool) -> String {
    let name = match (v6, kind) {
        (false, 0) | (true, 129) => "EchoReply",
        (false, 8) | (true, 128) => "EchoRequest",
        (false, 3) | (true, 1) => "DestinationUnreachable",
        (false, 11) | (true, 3) => "TimeExceeded",
        (true, 2) => "PacketTooBig",
        (true, 133) => "RouterSolicitation",
        (true, 134) => "RouterAdvertisement",
        (true, 135) => "NeighborSolicitation",
        (true, 136) => "NeighborAdvertisement",
        _ => return format!("type {kind}"),
    };
    name.to_owned()
}

/// One end of a flow, as Hubble's `Endpoint`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

impl Endpoint {
    /// `namespace/pod`, when it is a pod.
    pub fn pod(&self) -> Option<String> {
        (!self.pod_name.is_empty()).then(|| match self.namespace.is_empty() {
            true => self.pod_name.clone(),
            false => format!("{}/{}", self.namespace, self.pod_name),
        })
    }
}

/// What only meshpath knows of a flow, in the shape of protobuf's `Any` (`@type`, then the fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDetails {
    #[serde(rename = "@type")]
    pub type_url: String,
    /// How a forwarded flow left (`local_pod`, `tunnel`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<ForwardKind>,
    /// Why a dropped flow was dropped, by its stable name (`policy_denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DropReason>,
    /// The port it came in on.
    pub arrival: Arrival,
    /// The address the flow was sent to, when a service translated it to `flow.IP.destination`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<SocketAddr>,
}

/// `@type` of [`FlowDetails`].
pub const DETAILS_TYPE: &str = "type.googleapis.com/meshpath.FlowDetails";

named_enum! {
    /// Which side of the node a frame came in from.
    pub enum Arrival ("arrival") {
        /// Sent by a pod of this node.
        FromPod => "from_pod",
        /// Received on the uplink: from another node, or from outside the mesh.
        FromUplink => "from_uplink",
        /// Sent by the node's own stack through the host port.
        FromHost => "from_host",
    }
}

/// What the pipeline made of a flow: forwarded how, or dropped why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Forwarded(ForwardKind),
    Dropped(DropReason),
}

impl Outcome {
    pub const fn verdict(self) -> Verdict {
        match self {
            Outcome::Forwarded(_) => Verdict::Forwarded,
            Outcome::Dropped(_) => Verdict::Dropped,
        }
    }
}

/// A flow's facts, from which its Hubble shape is made.
#[derive(Clone, Debug)]
pub struct FlowFacts {
    pub time: FlowTime,
    pub node_name: String,
    pub outcome: Outcome,
    pub arrival: Arrival,
    pub source: (IpAddr, Endpoint),
    /// The destination as the sender addressed it.
    pub destination: (IpAddr, Endpoint),
    /// The backend a service translated the destination to, and its endpoint.
    pub backend: Option<(SocketAddr, Endpoint)>,
    pub l4: Option<Layer4>,
}

impl Flow {
    /// The flow in Hubble's shape: the destination is the backend a service chose (the flow's
    /// address after translation, as Hubble shows it), the service's address in the extensions.
    pub fn new(facts: FlowFacts) -> Flow {
        let (src_ip, source) = facts.source;
        let (mut dst_ip, mut destination) = facts.destination;
        let mut l4 = facts.l4;
        let service = facts.backend.map(|(backend, endpoint)| {
            let service = SocketAddr::new(dst_ip, l4.map_or(0, |l| l.ports().1));
            (dst_ip, destination) = (backend.ip(), endpoint);
            set_destination_port(&mut l4, backend.port());
            service
        });
        let (forward, reason) = match facts.outcome {
            Outcome::Forwarded(how) => (Some(how), None),
            Outcome::Dropped(why) => (None, Some(why)),
        };
        let point = forward.map(ObservationPoint::of);
        let event_type = match (point, reason) {
            (Some(point), _) => EventType {
                kind: 4,
                sub_type: point.sub_type(),
            },
            (None, reason) => EventType {
                kind: 1,
                sub_type: reason.and_then(|r| r.cilium().code).map_or(0, i32::from),
            },
        };
        Flow {
            time: facts.time,
            verdict: facts.outcome.verdict(),
            drop_reason: reason.and_then(|r| r.cilium().code),
            ip: Ip {
                source: src_ip,
                destination: dst_ip,
                ip_version: match src_ip.is_ipv4() {
                    true => IpVersion::V4,
                    false => IpVersion::V6,
                },
            },
            l4,
            source,
            destination,
            flow_type: FlowType::L3L4,
            node_name: facts.node_name,
            event_type,
            traffic_direction: match facts.arrival {
                Arrival::FromPod => TrafficDirection::Egress,
                Arrival::FromUplink | Arrival::FromHost => TrafficDirection::Ingress,
            },
            trace_observation_point: point,
            drop_reason_desc: reason.map(HubbleDropReason),
            // Only new flows are logged forwarded; a drop may be of either direction.
            is_reply: forward.map(|_| false),
            summary: l4.map_or_else(String::new, |l| l.summary()),
            extensions: FlowDetails {
                type_url: DETAILS_TYPE.to_owned(),
                forward,
                reason,
                arrival: facts.arrival,
                service,
            },
        }
    }

    /// Forwarded how, or dropped why.
    pub fn outcome(&self) -> Option<Outcome> {
        match (
            self.verdict,
            self.extensions.forward,
            self.extensions.reason,
        ) {
            (Verdict::Forwarded, Some(how), _) => Some(Outcome::Forwarded(how)),
            (Verdict::Dropped, _, Some(why)) => Some(Outcome::Dropped(why)),
            _ => None,
        }
    }

    pub fn ports(&self) -> (u16, u16) {
        self.l4.map_or((0, 0), |l| l.ports())
    }

    /// The IP protocol's name: `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, or none.
    pub fn protocol(&self) -> Option<&'static str> {
        self.l4.map(|l| match l {
            Layer4::Tcp(_) => "TCP",
            Layer4::Udp(_) => "UDP",
            Layer4::Icmpv4(_) => "ICMPv4",
            Layer4::Icmpv6(_) => "ICMPv6",
        })
    }
}

fn set_destination_port(l4: &mut Option<Layer4>, port: u16) {
    match l4 {
        Some(Layer4::Tcp(t)) => t.destination_port = port,
        Some(Layer4::Udp(u)) => u.destination_port = port,
        _ => {}
    }
}

/// Events that did not make it into the stream, or frames the kernel dropped before the dataplane
/// saw them, as Hubble's `LostEvent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    pub source: LostEventSource,
    /// As protobuf's JSON writes a uint64: a string.
    #[serde(with = "u64_as_text")]
    pub num_events_lost: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i32>,
    /// The interface whose AF_XDP socket lost them, for the kernel's losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

named_enum! {
    pub enum LostEventSource ("lost event source") {
        /// Hubble's: the queue from the dataplane worker to the agent's flow log was full.
        ObserverEventsQueue => "OBSERVER_EVENTS_QUEUE",
        /// Hubble's: the agent's ring of recent events moved on before this observer read them.
        HubbleRingBuffer => "HUBBLE_RING_BUFFER",
        /// meshpath's: frames the kernel dropped because the socket's rx ring was full.
        AfXdpRxRingFull => "AF_XDP_RX_RING_FULL",
        /// meshpath's: frames that found no buffer in the socket's fill ring.
        AfXdpFillRingEmpty => "AF_XDP_FILL_RING_EMPTY",
        /// meshpath's: frames the kernel dropped on the socket for another reason.
        AfXdpRxDropped => "AF_XDP_RX_DROPPED",
        /// meshpath's: descriptors the kernel refused.
        AfXdpInvalidDescs => "AF_XDP_INVALID_DESCS",
    }
}

mod u64_as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// A string, or a number (what a JSON writer other than protobuf's may write).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

fn is_zero_u8(n: &u8) -> bool {
    *n == 0
}

fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How `meshpath observe` prints an event.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    /// `[node]` after the time, as `hubble observe --print-node-name`.
    pub node_name: bool,
}

/// An event as one line, in `hubble observe`'s compact form.
pub fn render(event: &FlowResponse, options: RenderOptions) -> String {
    match &event.event {
        Event::Flow(flow) => render_flow(flow, options),
        Event::LostEvents(lost) => render_lost(lost),
    }
}

fn render_flow(flow: &Flow, options: RenderOptions) -> String {
    let (src_port, dst_port) = flow.ports();
    let node = match options.node_name {
        true => format!(" [{}]", flow.node_name),
        false => String::new(),
    };
    let arrow = match flow.is_reply {
        Some(false) => "->",
        Some(true) => "<-",
        None => "<>",
    };
    format!(
        "{}{node}: {} {} {arrow} {} {} {} {} ({})",
        stamp(flow.time),
        host(flow.ip.source, src_port, &flow.source),
        identity(flow.source.identity),
        host(flow.ip.destination, dst_port, &flow.destination),
        identity(flow.destination.identity),
        kind(flow),
        flow.verdict,
        flow.summary,
    )
}

/// An event as `hubble observe -o dict` prints it: one field per line (no separator).
pub fn render_dict(event: &FlowResponse, options: RenderOptions) -> String {
    let Event::Flow(flow) = &event.event else {
        return format!(
            "  TIMESTAMP: {}\n    SUMMARY: {}\n",
            stamp(event.time),
            render(event, options)
        );
    };
    let (src_port, dst_port) = flow.ports();
    let node = match options.node_name {
        true => format!("       NODE: {}\n", flow.node_name),
        false => String::new(),
    };
    format!(
        "  TIMESTAMP: {}\n{node}     SOURCE: {}\nDESTINATION: {}\n       TYPE: {}\n    VERDICT: {}\n    SUMMARY: {}\n",
        stamp(flow.time),
        host(flow.ip.source, src_port, &flow.source),
        host(flow.ip.destination, dst_port, &flow.destination),
        kind(flow),
        flow.verdict,
        flow.summary,
    )
}

/// The TYPE column: the observation point of a forwarded flow, the drop reason of a dropped one.
fn kind(flow: &Flow) -> String {
    match (flow.trace_observation_point, flow.extensions.reason) {
        (Some(point), _) => point.text(),
        (None, Some(reason)) => reason.cilium().description.to_owned(),
        (None, None) => "UNKNOWN".to_owned(),
    }
}

fn render_lost(lost: &LostEvents) -> String {
    match (&lost.interface, lost.cpu) {
        (Some(interface), _) => format!(
            "EVENTS LOST: {} {interface} {}",
            lost.source, lost.num_events_lost
        ),
        (None, cpu) => format!(
            "EVENTS LOST: {} CPU({}) {}",
            lost.source,
            cpu.unwrap_or(0),
            lost.num_events_lost
        ),
    }
}

/// `namespace/pod:port`, or the address and port (`[fd00::1]:80`), as Hubble names hosts.
fn host(ip: IpAddr, port: u16, endpoint: &Endpoint) -> String {
    let name = endpoint.pod().unwrap_or_else(|| ip.to_string());
    match (port, endpoint.pod_name.is_empty() && ip.is_ipv6()) {
        (0, _) => name,
        (_, true) => format!("[{name}]:{port}"),
        (_, false) => format!("{name}:{port}"),
    }
}

/// `(ID:65792)`, or the reserved identity's name: `(world)`.
fn identity(id: u32) -> String {
    match id {
        1 => "(host)".to_owned(),
        2 => "(world)".to_owned(),
        6 => "(remote-node)".to_owned(),
        id => format!("(ID:{id})"),
    }
}

/// Go's `time.StampMilli` in UTC, as `hubble observe` prints times: `Nov 14 22:13:20.123`.
fn stamp(time: FlowTime) -> String {
    let text = humantime::format_rfc3339_millis(time.0).to_string();
    // `2023-11-14T22:13:20.123Z`
    let month = text
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("???");
    let day: u32 = text.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(0);
    let clock = text.get(11..23).unwrap_or_default();
    format!("{month} {day:>2} {clock}")
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
