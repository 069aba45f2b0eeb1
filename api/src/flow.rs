//! One flow the dataplane decided on, as the agent's observe socket streams it and `meshpath observe`
//! prints it: one JSON object per line, or one line like `hubble observe`'s.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::drop_reason::DropReason;
use crate::forward::ForwardKind;
use crate::protocol::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Wall clock, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node whose worker saw it.
    pub node: String,
    pub source: Peer,
    pub destination: Peer,
    pub protocol: Protocol,
    /// As JSON, two fields: `verdict` and `reason`.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The port it came in on.
    pub direction: Direction,
    /// The backend the service translated the destination to.
    pub backend: Option<SocketAddr>,
}

/// What the pipeline made of a flow: forwarded how, or dropped why. As JSON `"verdict": "dropped",
/// "reason": "policy_denied"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
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

    /// How it was forwarded (`local_pod`, `tunnel`, …) or why it was dropped (`policy_denied`, …).
    pub const fn reason(self) -> &'static str {
        match self {
            Outcome::Forwarded(how) => how.name(),
            Outcome::Dropped(why) => why.name(),
        }
    }
}

named_enum! {
    pub enum Verdict ("verdict") {
        Forwarded => "forwarded",
        Dropped => "dropped",
    }
}

named_enum! {
    /// Which side of the node a frame came in from.
    pub enum Direction ("direction") {
        /// Sent by a pod of this node.
        FromPod => "from_pod",
        /// Received on the uplink: from another node, or from outside the mesh.
        FromUplink => "from_uplink",
        /// Sent by the node's own stack through the host port.
        FromHost => "from_host",
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub ip: IpAddr,
    pub port: u16,
    pub identity: u32,
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Peer {
    /// `cluster/namespace/pod`, `cluster/address (identity N)` or the address.
    pub fn name(&self) -> String {
        match (&self.cluster, &self.namespace, &self.pod) {
            (Some(c), Some(ns), Some(pod)) => format!("{c}/{ns}/{pod}"),
            (Some(c), _, _) => format!("{c}/{} (identity {})", self.ip, self.identity),
            _ => self.ip.to_string(),
        }
    }
}

/// Which flows `meshpath observe` prints.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// `name` or `namespace/name`.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub cluster: Option<String>,
    pub verdict: Option<Verdict>,
}

impl FlowFilter {
    /// A flow passes when either end matches every peer filter given, and its verdict matches.
    pub fn matches(&self, flow: &Flow) -> bool {
        let end = |p: &Peer| {
            let pod = self.pod.as_deref().is_none_or(|want| {
                let full = format!(
                    "{}/{}",
                    p.namespace.as_deref().unwrap_or(""),
                    p.pod.as_deref().unwrap_or("")
                );
                p.pod.as_deref() == Some(want) || full == want
            });
            let ns = self
                .namespace
                .as_deref()
                .is_none_or(|n| p.namespace.as_deref() == Some(n));
            let cluster = self
                .cluster
                .as_deref()
                .is_none_or(|c| p.cluster.as_deref() == Some(c));
            pod && ns && cluster
        };
        let verdict = self.verdict.is_none_or(|v| flow.outcome.verdict() == v);
        verdict && (end(&flow.source) || end(&flow.destination))
    }
}

/// A flow as one line, like `hubble observe`:
/// `time  src → dst  proto ports  VERDICT (reason)  via backend`.
pub fn render(flow: &Flow) -> String {
    let ports = match flow.protocol.has_ports() {
        true => format!(" {} → {}", flow.source.port, flow.destination.port),
        false => String::new(),
    };
    let via = flow.backend.map_or(String::new(), |b| format!("  via {b}"));
    format!(
        "{}  {} → {}  {}{ports}  {} ({}){via}",
        clock(flow.time_ms),
        flow.source.name(),
        flow.destination.name(),
        flow.protocol,
        flow.outcome.verdict().name().to_uppercase(),
        flow.outcome.reason(),
    )
}

/// `HH:MM:SS.mmm` (UTC).
fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, port: u16, named: Option<(&str, &str, &str)>) -> Peer {
        Peer {
            ip: ip.parse().unwrap(),
            port,
            identity: 0x2_0100,
            cluster: named.map(|n| n.0.to_owned()),
            namespace: named.map(|n| n.1.to_owned()),
            pod: named.map(|n| n.2.to_owned()),
        }
    }

    fn flow(outcome: Outcome) -> Flow {
        Flow {
            time_ms: 1_700_000_000_123,
            node: "c1-n1".into(),
            source: peer(
                "100.64.1.10",
                40000,
                Some(("cluster1", "default", "x-wing")),
            ),
            destination: Peer {
                cluster: Some("cluster2".into()),
                ..peer("100.65.1.10", 80, None)
            },
            protocol: Protocol::Tcp,
            outcome,
            direction: Direction::FromPod,
            backend: Some("100.65.1.10:8080".parse().unwrap()),
        }
    }

    #[test]
    fn json_has_verdict_and_reason_side_by_side() {
        let denied = flow(Outcome::Dropped(DropReason::PolicyDenied));
        let json: serde_json::Value = serde_json::to_value(&denied).unwrap();
        assert_eq!(json["verdict"], "dropped");
        assert_eq!(json["reason"], "policy_denied");
        assert_eq!(json["direction"], "from_pod");
        assert_eq!(json["protocol"], "TCP");
        assert_eq!(json["source"]["ip"], "100.64.1.10");
        assert_eq!(json["backend"], "100.65.1.10:8080");
        let line = serde_json::to_string(&denied).unwrap();
        assert_eq!(serde_json::from_str::<Flow>(&line).unwrap(), denied);
        let mixed = line.replace("policy_denied", "tunnel");
        assert!(
            serde_json::from_str::<Flow>(&mixed).is_err(),
            "a dropped flow has a drop reason"
        );
    }

    #[test]
    fn one_line_like_hubble() {
        let line = render(&flow(Outcome::Dropped(DropReason::PolicyDenied)));
        assert!(
            line.starts_with(
                "22:13:20.123  cluster1/default/x-wing → cluster2/100.65.1.10 (identity 131328)"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("TCP 40000 → 80  DROPPED (policy_denied)  via 100.65.1.10:8080"),
            "{line}"
        );
        let mut ping = flow(Outcome::Forwarded(ForwardKind::Tunnel));
        ping.protocol = Protocol::Icmpv4;
        ping.backend = None;
        assert!(render(&ping).ends_with("ICMPv4  FORWARDED (tunnel)"));
    }

    #[test]
    fn filters_by_either_end_and_verdict() {
        let flow = flow(Outcome::Forwarded(ForwardKind::Tunnel));
        let filter =
            |pod: Option<&str>, cluster: Option<&str>, verdict: Option<Verdict>| FlowFilter {
                pod: pod.map(String::from),
                namespace: None,
                cluster: cluster.map(String::from),
                verdict,
            };
        assert!(filter(None, None, None).matches(&flow));
        assert!(filter(Some("x-wing"), None, Some(Verdict::Forwarded)).matches(&flow));
        assert!(filter(Some("default/x-wing"), Some("cluster1"), None).matches(&flow));
        assert!(
            filter(None, Some("cluster2"), None).matches(&flow),
            "the destination's cluster"
        );
        assert!(!filter(Some("x-wing"), Some("cluster2"), None).matches(&flow));
        assert!(!filter(Some("tie-fighter"), None, None).matches(&flow));
        assert!(!filter(None, None, Some(Verdict::Dropped)).matches(&flow));
    }
}
