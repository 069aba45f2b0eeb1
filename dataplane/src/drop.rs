//! Why a frame was dropped: one enum, one stable name per reason, one counter per reason.
//!
//! The names are part of the interface: metrics labels, `meshpath observe` and the CLI print them, and
//! operators grep for them. Add reasons at the end; never rename one.

use std::fmt;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// The reason a frame did not make it through the pipeline.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The stable name: metrics label, CLI and flow log.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    InvalidHeader => "invalid_header": "A header is truncated, malformed or inconsistent with the frame length.",
    UnsupportedProtocol => "unsupported_protocol": "An ethertype or IP protocol the pipeline does not forward.",
    UnsupportedFragment => "unsupported_fragment": "A non-first IP fragment: it carries no ports to apply policy to.",
    SpoofedSource => "spoofed_source": "A pod sent with a source MAC or IP that is not its own.",
    UnknownPort => "unknown_port": "The frame arrived on a port no endpoint is bound to.",
    PolicyDenied => "policy_denied": "Identity policy does not allow this flow.",
    NoRoute => "no_route": "No local endpoint, remote node or kernel route owns the destination.",
    NoBackend => "no_backend": "The service has no backend that may take a new flow.",
    CtTableFull => "ct_table_full": "Conntrack is full where the new flow belongs, of established connections only: new flows are refused.",
    InvalidIdentity => "invalid_identity": "A tunnel frame carries an identity that no cluster may send.",
    TtlExceeded => "ttl_exceeded": "The IPv4 TTL or IPv6 hop limit ran out.",
    NoHeadroom => "no_headroom": "The frame buffer has no room in front for the tunnel headers.",
    FrameTooBig => "frame_too_big": "The frame would exceed the link MTU after encapsulation.",
    UnansweredNeighbour => "unanswered_neighbour": "An ARP/ND message the pods' gateway does not answer: gratuitous, DAD, replies, router solicitations.",
    UnknownTunnelPeer => "unknown_tunnel_peer": "A tunnel frame from an address that is no node of the mesh.",
    LinkScope => "link_scope": "Link-scoped IPv6 traffic (from a link-local address) that is no neighbour discovery: never routed.",
    NatPortExhausted => "nat_port_exhausted": "No masquerade port is free for a new flow leaving the mesh to this destination.",
    NoNatMapping => "no_nat_mapping": "A frame to the node's masquerade ports that answers no masqueraded flow.",
    UnrelatedIcmpError => "unrelated_icmp_error": "An ICMP error quoting a packet of no flow conntrack knows.",
    ReservedIdentity => "reserved_identity": "A tunnel frame whose VNI is a reserved identity, other than remote-node from the sending node itself.",
    IdentityClusterMismatch => "identity_cluster_mismatch": "A tunnel frame whose identity belongs to another cluster than its sending node.",
    ForeignInnerSource => "foreign_inner_source": "A tunnel frame whose inner source address does not belong to the node that sent it.",
    CtEndpointQuota => "ct_endpoint_quota": "The local endpoint of a new flow holds its quota of conntrack entries, none of which may give way.",
    Ipv4MappedAddress => "ipv4_mapped_address": "An IPv6 packet from or to an IPv4-mapped address (::ffff:a.b.c.d), which would pass for IPv4.",
    SpoofedUnderlaySource => "spoofed_underlay_source": "A plain frame from the underlay (native or hybrid routing) whose source belongs to a node of the mesh or its pods, but that did not come from that node's MAC on our segment.",
    NodeOffSegment => "node_off_segment": "Native routing to a node behind the underlay router, which the configuration does not say routes pod CIDRs.",
    NodeMacUnresolved => "node_mac_unresolved": "A node on our segment whose MAC is not resolved yet: native routing can neither send to it nor believe its plain frames.",
    UnencryptedTraffic => "unencrypted_traffic": "Strict encryption: a frame from a node of the mesh that did not come through WireGuard.",
    NodeWithoutKey => "node_without_key": "Strict encryption: the destination node publishes no WireGuard key, so nothing may be sent to it.",
    UnknownWireguardPeer => "unknown_wireguard_peer": "A WireGuard datagram from an address that is no node of the mesh with a key, or while encryption is off.",
    InvalidWireguard => "invalid_wireguard": "A WireGuard datagram that is malformed, fails authentication or replay checks, or a handshake with another key than the node's.",
    WireguardSourceMismatch => "wireguard_source_mismatch": "A packet decrypted from one node's tunnel whose source belongs to another node, or to none.",
    BackendSegmentWithoutFlow => "backend_segment_without_flow": "A TCP segment (no SYN) from a service backend's address and port that answers no flow conntrack knows (conntrack lost it, as when an agent is killed): delivered untranslated it would make the client reset the connection. The client's next segment makes the flow again.",
    HandoffRingFull => "handoff_ring_full": "A frame received by one worker for a flow another worker owns, when the ring that hands frames to that worker was full (the owner is saturated).",
}

impl DropReason {
    pub const COUNT: usize = Self::ALL.len();

    /// Index into per-reason counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_snake_case_and_indices_dense() {
        let names: HashSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert!(reason
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }
}
