//! Policy rules as the control plane hands them over (translated from CiliumNetworkPolicy): who a rule
//! applies to, and which peers on which ports it allows, per direction.

use crate::flow::proto;
use crate::{ClusterId, Identity};

use super::selector::{LabelSelector, Labels};

/// Cilium's named peer groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    /// Every peer, known or not.
    All,
    /// Outside the mesh.
    World,
    /// The local node.
    Host,
    /// Other nodes' own addresses.
    RemoteNode,
    /// Everything in the local cluster: its endpoints, the host and the other nodes.
    Cluster,
}

/// A set of peers a rule allows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Endpoints (of any cluster) whose identity's labels match; reserved identities have no labels
    /// and so are never selected this way.
    Endpoints(LabelSelector),
    Entity(Entity),
}

impl Peer {
    /// The reference semantics: does this peer set contain `peer`, whose labels are `labels` (`None`
    /// if the identity table does not know it)? The compiler resolves the same sets ahead of time.
    pub fn matches(&self, peer: Identity, labels: Option<&Labels>, local: ClusterId) -> bool {
        match self {
            Peer::Endpoints(selector) => labels.is_some_and(|l| selector.matches(l)),
            Peer::Entity(Entity::All) => true,
            Peer::Entity(Entity::World) => peer == Identity::WORLD,
            Peer::Entity(Entity::Host) => peer == Identity::HOST,
            Peer::Entity(Entity::RemoteNode) => peer == Identity::REMOTE_NODE,
            Peer::Entity(Entity::Cluster) => {
                peer == Identity::HOST
                    || peer == Identity::REMOTE_NODE
                    || (labels.is_some() && peer.cluster() == Some(local))
            }
        }
    }
}

/// Transport protocols a port rule names. `Any` is TCP and UDP, as in Cilium; never ICMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    pub const fn covers(self, ip_proto: u8) -> bool {
        match self {
            Protocol::Tcp => ip_proto == proto::TCP,
            Protocol::Udp => ip_proto == proto::UDP,
            Protocol::Any => ip_proto == proto::TCP || ip_proto == proto::UDP,
        }
    }
}

/// A destination port or range. Port 0 means every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: u16,
    pub end_port: Option<u16>,
}

impl PortRule {
    pub const fn new(protocol: Protocol, port: u16) -> Self {
        PortRule {
            protocol,
            port,
            end_port: None,
        }
    }

    /// The inclusive port range; `None` if `end_port` is below `port`.
    pub const fn range(&self) -> Option<(u16, u16)> {
        match (self.port, self.end_port) {
            (0, _) => Some((0, u16::MAX)),
            (port, None) => Some((port, port)),
            (port, Some(end)) if end >= port => Some((port, end)),
            _ => None,
        }
    }

    pub fn matches(&self, ip_proto: u8, port: u16) -> bool {
        self.protocol.covers(ip_proto)
            && self
                .range()
                .is_some_and(|(lo, hi)| lo <= port && port <= hi)
    }
}

/// An ingress rule: `from` these peers, to these ports of the selected endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IngressRule {
    pub from: Vec<Peer>,
    pub to_ports: Vec<PortRule>,
}

/// An egress rule: `to` these peers, on these of their ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressRule {
    pub to: Vec<Peer>,
    pub to_ports: Vec<PortRule>,
}

/// Either direction's rule. No peers with ports = any peer on those ports; peers with no ports =
/// those peers on everything, ICMP included; neither = nothing.
pub trait DirectionRule {
    fn peers(&self) -> &[Peer];
    fn to_ports(&self) -> &[PortRule];

    /// The reference semantics of one rule.
    fn allows(
        &self,
        peer: Identity,
        labels: Option<&Labels>,
        local: ClusterId,
        ip_proto: u8,
        port: u16,
    ) -> bool {
        let peer_ok = if self.peers().is_empty() {
            !self.to_ports().is_empty()
        } else {
            self.peers().iter().any(|p| p.matches(peer, labels, local))
        };
        let port_ok =
            self.to_ports().is_empty() || self.to_ports().iter().any(|r| r.matches(ip_proto, port));
        peer_ok && port_ok
    }
}

impl DirectionRule for IngressRule {
    fn peers(&self) -> &[Peer] {
        &self.from
    }
    fn to_ports(&self) -> &[PortRule] {
        &self.to_ports
    }
}

impl DirectionRule for EgressRule {
    fn peers(&self) -> &[Peer] {
        &self.to
    }
    fn to_ports(&self) -> &[PortRule] {
        &self.to_ports
    }
}

/// One policy rule. A direction is enforced on an endpoint as soon as one rule selecting it has that
/// direction (`Some`, even empty: deny all); otherwise that direction allows everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub endpoint_selector: LabelSelector,
    pub ingress: Option<Vec<IngressRule>>,
    pub egress: Option<Vec<EgressRule>>,
}
