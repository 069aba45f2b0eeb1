//! Why the dataplane dropped a frame, by the stable name the dataplane's `DropReason::name()` gives it.
//! A mirror of that enum, so that readers of the agent need not build the dataplane; the agent's
//! conversion is exhaustive and tested name by name. Add reasons at the end; never rename one.

named_enum! {
    /// The reason a frame did not make it through the pipeline.
    pub enum DropReason ("drop reason") {
        InvalidHeader => "invalid_header",
        UnsupportedProtocol => "unsupported_protocol",
        UnsupportedFragment => "unsupported_fragment",
        SpoofedSource => "spoofed_source",
        UnknownPort => "unknown_port",
        PolicyDenied => "policy_denied",
        NoRoute => "no_route",
        NoBackend => "no_backend",
        CtTableFull => "ct_table_full",
        InvalidIdentity => "invalid_identity",
        TtlExceeded => "ttl_exceeded",
        NoHeadroom => "no_headroom",
        FrameTooBig => "frame_too_big",
        UnansweredNeighbour => "unanswered_neighbour",
        UnknownTunnelPeer => "unknown_tunnel_peer",
        LinkScope => "link_scope",
        NatPortExhausted => "nat_port_exhausted",
        NoNatMapping => "no_nat_mapping",
        UnrelatedIcmpError => "unrelated_icmp_error",
        ReservedIdentity => "reserved_identity",
        IdentityClusterMismatch => "identity_cluster_mismatch",
        ForeignInnerSource => "foreign_inner_source",
        CtEndpointQuota => "ct_endpoint_quota",
        Ipv4MappedAddress => "ipv4_mapped_address",
        SpoofedUnderlaySource => "spoofed_underlay_source",
        NodeOffSegment => "node_off_segment",
        NodeMacUnresolved => "node_mac_unresolved",
        UnencryptedTraffic => "unencrypted_traffic",
        NodeWithoutKey => "node_without_key",
        UnknownWireguardPeer => "unknown_wireguard_peer",
        InvalidWireguard => "invalid_wireguard",
        WireguardSourceMismatch => "wireguard_source_mismatch",
        BackendSegmentWithoutFlow => "backend_segment_without_flow",
        HandoffRingFull => "handoff_ring_full",
    }
}

/// How Cilium (and Hubble) name a drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CiliumName {
    /// Cilium's drop code (`DROP_*` in `bpf/lib/common.h`); none for a reason Cilium does not have.
    pub code: Option<u8>,
    /// Hubble's `DropReason` enum value: `flow.drop_reason_desc` (`POLICY_DENIED`).
    pub hubble: &'static str,
    /// The text Cilium's metrics carry as `reason` and its monitor prints (`Policy denied`).
    pub description: &'static str,
}

impl DropReason {
    /// Cilium's name for this reason where Cilium has the same one (so that its dashboards, alerts and
    /// `jq` filters find it); for the reasons only meshpath has, names in Cilium's style.
    pub const fn cilium(self) -> CiliumName {
        use DropReason::*;
        let (code, hubble, description) = match self {
            InvalidHeader => (Some(134), "INVALID_PACKET_DROPPED", "Invalid packet"),
            UnsupportedProtocol => (None, "UNSUPPORTED_PROTOCOL", "Unsupported protocol"),
            UnsupportedFragment => (
                Some(157),
                "IP_FRAGMENTATION_NOT_SUPPORTED",
                "IP fragmentation not supported",
            ),
            SpoofedSource => (Some(132), "INVALID_SOURCE_IP", "Invalid source ip"),
            UnknownPort => (None, "UNKNOWN_PORT", "Unknown port"),
            PolicyDenied => (Some(133), "POLICY_DENIED", "Policy denied"),
            NoRoute => (
                Some(150),
                "UNKNOWN_L3_TARGET_ADDRESS",
                "Unknown L3 target address",
            ),
            NoBackend => (
                Some(158),
                "SERVICE_BACKEND_NOT_FOUND",
                "Service backend not found",
            ),
            CtTableFull => (
                Some(155),
                "CT_MAP_INSERTION_FAILED",
                "CT: Map insertion failed",
            ),
            InvalidIdentity => (Some(171), "INVALID_IDENTITY", "Invalid identity"),
            TtlExceeded => (Some(196), "TTL_EXCEEDED", "TTL exceeded"),
            NoHeadroom => (None, "NO_HEADROOM", "No headroom for encapsulation"),
            FrameTooBig => (None, "FRAME_TOO_BIG", "Frame too big for the underlay"),
            UnansweredNeighbour => (
                None,
                "UNANSWERED_NEIGHBOUR",
                "Neighbour message not answered",
            ),
            UnknownTunnelPeer => (Some(172), "UNKNOWN_SENDER", "Unknown sender"),
            LinkScope => (None, "LINK_SCOPE", "Link-scoped traffic not routed"),
            NatPortExhausted => (
                None,
                "NAT_PORT_EXHAUSTED",
                "No port left for NAT masquerade",
            ),
            NoNatMapping => (
                Some(167),
                "NO_MAPPING_FOR_NAT_MASQUERADE",
                "No mapping for NAT masquerade",
            ),
            UnrelatedIcmpError => (None, "UNRELATED_ICMP_ERROR", "ICMP error of no known flow"),
            ReservedIdentity => (None, "RESERVED_IDENTITY", "Reserved identity from a tunnel"),
            IdentityClusterMismatch => (
                None,
                "IDENTITY_CLUSTER_MISMATCH",
                "Identity of another cluster than the sender's",
            ),
            ForeignInnerSource => (
                None,
                "FOREIGN_INNER_SOURCE",
                "Inner source not of the sending node",
            ),
            CtEndpointQuota => (None, "CT_ENDPOINT_QUOTA", "CT: Endpoint quota reached"),
            Ipv4MappedAddress => (None, "IPV4_MAPPED_ADDRESS", "IPv4-mapped IPv6 address"),
            SpoofedUnderlaySource => (
                None,
                "SPOOFED_UNDERLAY_SOURCE",
                "Plain source not from its node's MAC",
            ),
            NodeOffSegment => (
                None,
                "NODE_OFF_SEGMENT",
                "Node off the segment in native routing",
            ),
            NodeMacUnresolved => (None, "NODE_MAC_UNRESOLVED", "Node MAC not resolved"),
            UnencryptedTraffic => (Some(195), "UNENCRYPTED_TRAFFIC", "Traffic is unencrypted"),
            NodeWithoutKey => (None, "NODE_WITHOUT_KEY", "Node publishes no WireGuard key"),
            UnknownWireguardPeer => (
                None,
                "UNKNOWN_WIREGUARD_PEER",
                "WireGuard datagram from no known peer",
            ),
            InvalidWireguard => (None, "INVALID_WIREGUARD", "Invalid WireGuard message"),
            WireguardSourceMismatch => (
                None,
                "WIREGUARD_SOURCE_MISMATCH",
                "Decrypted source not of the WireGuard peer",
            ),
            BackendSegmentWithoutFlow => (
                None,
                "BACKEND_SEGMENT_WITHOUT_FLOW",
                "Backend segment of no known flow",
            ),
            HandoffRingFull => (
                None,
                "HANDOFF_RING_FULL",
                "Handoff ring to the flow's worker full",
            ),
        };
        CiliumName {
            code,
            hubble,
            description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reason has names of its own: no two share a metric label or a Hubble value, and those
    /// of meshpath's own reasons are the stable name in upper case.
    #[test]
    fn cilium_names_are_unique_and_follow_the_stable_names() {
        let mut hubble = std::collections::HashSet::new();
        let mut descriptions = std::collections::HashSet::new();
        for reason in DropReason::ALL {
            let c = reason.cilium();
            assert!(hubble.insert(c.hubble), "{reason}: {}", c.hubble);
            assert!(
                descriptions.insert(c.description),
                "{reason}: {}",
                c.description
            );
            if c.code.is_none() {
                assert_eq!(c.hubble, reason.name().to_uppercase());
            }
        }
        assert_eq!(
            DropReason::PolicyDenied.cilium().description,
            "Policy denied"
        );
    }

    #[test]
    fn serialised_by_name_and_parsed_back() {
        for reason in DropReason::ALL {
            let json = serde_json::to_string(reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.name()));
            assert_eq!(serde_json::from_str::<DropReason>(&json).unwrap(), *reason);
        }
        let error = serde_json::from_str::<DropReason>("\"cosmic_ray\"").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown drop reason `cosmic_ray`"),
            "{error}"
        );
    }

    #[test]
    fn map_keys_by_name_in_name_order() {
        let counts: std::collections::BTreeMap<DropReason, u64> =
            [(DropReason::SpoofedSource, 2), (DropReason::NoRoute, 1)].into();
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(json, r#"{"no_route":1,"spoofed_source":2}"#);
        assert_eq!(
            serde_json::from_str::<std::collections::BTreeMap<DropReason, u64>>(&json).unwrap(),
            counts
        );
    }
}
