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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
