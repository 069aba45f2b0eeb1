//! The agent's state in the interface's types (`meshpath_api`): the dataplane's enums mapped name for
//! name, the control plane's remote status field for field. The api crate mirrors these enums so that
//! the agent's readers need not build the dataplane; the tests below keep the mirrors honest.

use std::net::SocketAddr;

use meshpath_api::clustermesh::{
    CidrConflict, ClusterMeshStatus, Refusal, RemoteClusterStatus, RemoteLimits, RemoteUsage,
    SyncStatus, Timestamp,
};
use meshpath_api::encryption::{EncryptionMode, EncryptionStatus, WireguardPeer};
use meshpath_api::flow::{Arrival, Outcome};
use meshpath_api::service::BackendState;
use meshpath_api::status::KernelDrops;
use meshpath_api::{DropReason, ForwardKind};
use meshpath_control::clustermesh::{MeshStatus, RemoteStatus};
use meshpath_dataplane as dp;

pub fn drop_reason(reason: dp::DropReason) -> DropReason {
    use dp::DropReason as D;
    match reason {
        D::InvalidHeader => DropReason::InvalidHeader,
        D::UnsupportedProtocol => DropReason::UnsupportedProtocol,
        D::UnsupportedFragment => DropReason::UnsupportedFragment,
        D::SpoofedSource => DropReason::SpoofedSource,
        D::UnknownPort => DropReason::UnknownPort,
        D::PolicyDenied => DropReason::PolicyDenied,
        D::NoRoute => DropReason::NoRoute,
        D::NoBackend => DropReason::NoBackend,
        D::CtTableFull => DropReason::CtTableFull,
        D::InvalidIdentity => DropReason::InvalidIdentity,
        D::TtlExceeded => DropReason::TtlExceeded,
        D::NoHeadroom => DropReason::NoHeadroom,
        D::FrameTooBig => DropReason::FrameTooBig,
        D::UnansweredNeighbour => DropReason::UnansweredNeighbour,
        D::UnknownTunnelPeer => DropReason::UnknownTunnelPeer,
        D::LinkScope => DropReason::LinkScope,
        D::NatPortExhausted => DropReason::NatPortExhausted,
        D::NoNatMapping => DropReason::NoNatMapping,
        D::UnrelatedIcmpError => DropReason::UnrelatedIcmpError,
        D::ReservedIdentity => DropReason::ReservedIdentity,
        D::IdentityClusterMismatch => DropReason::IdentityClusterMismatch,
        D::ForeignInnerSource => DropReason::ForeignInnerSource,
        D::CtEndpointQuota => DropReason::CtEndpointQuota,
        D::Ipv4MappedAddress => DropReason::Ipv4MappedAddress,
        D::SpoofedUnderlaySource => DropReason::SpoofedUnderlaySource,
        D::NodeOffSegment => DropReason::NodeOffSegment,
        D::NodeMacUnresolved => DropReason::NodeMacUnresolved,
        D::UnencryptedTraffic => DropReason::UnencryptedTraffic,
        D::NodeWithoutKey => DropReason::NodeWithoutKey,
        D::UnknownWireguardPeer => DropReason::UnknownWireguardPeer,
        D::InvalidWireguard => DropReason::InvalidWireguard,
        D::WireguardSourceMismatch => DropReason::WireguardSourceMismatch,
        D::BackendSegmentWithoutFlow => DropReason::BackendSegmentWithoutFlow,
        D::HandoffRingFull => DropReason::HandoffRingFull,
    }
}

pub fn forward_kind(forward: dp::stats::Forward) -> ForwardKind {
    use dp::stats::Forward as F;
    match forward {
        F::LocalPod => ForwardKind::LocalPod,
        F::Tunnel => ForwardKind::Tunnel,
        F::Direct => ForwardKind::Direct,
        F::NeighbourReply => ForwardKind::NeighbourReply,
        F::ToKernel => ForwardKind::ToKernel,
        F::IcmpError => ForwardKind::IcmpError,
        F::Wireguard => ForwardKind::Wireguard,
    }
}

pub fn outcome(verdict: dp::flowlog::FlowVerdict) -> Outcome {
    match verdict {
        dp::flowlog::FlowVerdict::Forwarded(how) => Outcome::Forwarded(forward_kind(how)),
        dp::flowlog::FlowVerdict::Dropped(why) => Outcome::Dropped(drop_reason(why)),
    }
}

pub fn direction(direction: dp::flowlog::Direction) -> Arrival {
    match direction {
        dp::flowlog::Direction::FromPod => Arrival::FromPod,
        dp::flowlog::Direction::FromUplink => Arrival::FromUplink,
        dp::flowlog::Direction::FromHost => Arrival::FromHost,
    }
}

pub fn backend_state(state: dp::service::BackendState) -> BackendState {
    match state {
        dp::service::BackendState::Active => BackendState::Active,
        dp::service::BackendState::Terminating => BackendState::Terminating,
        dp::service::BackendState::Unhealthy => BackendState::Unhealthy,
    }
}

pub fn refusal(reason: meshpath_control::refusal::Refusal) -> Refusal {
    use meshpath_control::refusal::Refusal as R;
    match reason {
        R::Malformed => Refusal::Malformed,
        R::WrongCluster => Refusal::WrongCluster,
        R::ReservedIdentity => Refusal::ReservedIdentity,
        R::Ipv4Mapped => Refusal::Ipv4Mapped,
        R::NotShared => Refusal::NotShared,
        R::ValueTooLarge => Refusal::ValueTooLarge,
        R::PodCidrTooShort => Refusal::PodCidrTooShort,
        R::PodCidrOverlap => Refusal::PodCidrOverlap,
        R::EndpointOutsidePodCidrs => Refusal::EndpointOutsidePodCidrs,
        R::HostIpNotANode => Refusal::HostIpNotANode,
        R::BackendNotAnEndpoint => Refusal::BackendNotAnEndpoint,
        R::OverKeyLimit => Refusal::OverKeyLimit,
        R::OverByteLimit => Refusal::OverByteLimit,
        R::OverIdentityLimit => Refusal::OverIdentityLimit,
    }
}

pub fn kernel_drops(k: &dp::afxdp::KernelCounters) -> KernelDrops {
    KernelDrops {
        rx_dropped: k.rx_dropped,
        rx_ring_full: k.rx_ring_full,
        fill_ring_empty: k.fill_ring_empty,
        rx_invalid_descs: k.rx_invalid_descs,
        tx_invalid_descs: k.tx_invalid_descs,
    }
}

pub fn socket_addr(addr: dp::Addr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

pub fn clustermesh(mesh: &MeshStatus) -> ClusterMeshStatus {
    mesh.iter()
        .map(|(name, remote)| (name.to_string(), remote_cluster(remote)))
        .collect()
}

pub fn remote_cluster(r: &RemoteStatus) -> RemoteClusterStatus {
    RemoteClusterStatus {
        name: r.name.clone(),
        ready: r.ready,
        connected: r.connected,
        mutual_tls: r.mutual_tls,
        listings: r.listings,
        watch_resumes: r.watch_resumes,
        endpoints_configured: r.endpoints_configured as u64,
        config_retrieved: r.config_retrieved,
        cluster_id: r.cluster_id,
        sync_canaries: r.sync_canaries,
        synced: SyncStatus {
            nodes: r.synced.nodes,
            endpoints: r.synced.endpoints,
            identities: r.synced.identities,
            services: r.synced.services,
        },
        nodes: r.nodes as u64,
        endpoints: r.endpoints as u64,
        identities: r.identities as u64,
        services: r.services as u64,
        refused: r
            .refused
            .iter()
            .map(|(reason, n)| (refusal(*reason), *n))
            .collect(),
        cidr_conflicts: r
            .cidr_conflicts
            .iter()
            .map(|c| CidrConflict {
                node: c.node.clone(),
                prefix: c.prefix.clone(),
                other_cluster: c.other_cluster.clone(),
                other_prefix: c.other_prefix.clone(),
            })
            .collect(),
        degraded: r.degraded.clone(),
        usage: RemoteUsage {
            keys: r.usage.keys as u64,
            bytes: r.usage.bytes as u64,
            identities: r.usage.identities as u64,
        },
        limits: RemoteLimits {
            max_keys: r.limits.max_keys as u64,
            max_bytes: r.limits.max_bytes as u64,
            max_identities: r.limits.max_identities as u64,
            max_value_bytes: r.limits.max_value_bytes as u64,
        },
        failures: r.failures,
        last_failure: r.last_failure.map(Timestamp),
        last_error: r.last_error.clone(),
        connected_since: r.connected_since.map(Timestamp),
        disconnected_since: r.disconnected_since.map(Timestamp),
        withdrawn_at: r.withdrawn_at.map(Timestamp),
    }
}

/// The worker's WireGuard report as the status shows it.
pub fn encryption(report: &super::report::WireguardReport) -> EncryptionStatus {
    use base64::Engine;
    let base64 =
        |key: &dp::wireguard::PublicKey| base64::engine::general_purpose::STANDARD.encode(key.0);
    EncryptionStatus {
        mode: match report.mode {
            dp::wireguard::EncryptionMode::Off => EncryptionMode::Off,
            dp::wireguard::EncryptionMode::On => EncryptionMode::On,
            dp::wireguard::EncryptionMode::Strict => EncryptionMode::Strict,
        },
        public_key: report.public_key.as_ref().map(base64),
        peers: report
            .peers
            .iter()
            .map(|p| WireguardPeer {
                address: p.addr.ip().to_string(),
                public_key: base64(&p.key),
                last_handshake_seconds: p.last_handshake.map(|age| age.as_secs()),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
            })
            .collect(),
        encrypted: report.stats.encrypted,
        decrypted: report.stats.decrypted,
        handshakes_initiated: report.stats.handshakes_initiated,
        held: report.stats.held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn every_drop_reason_maps_to_its_own_name() {
        let mapped: HashSet<DropReason> = dp::DropReason::ALL
            .iter()
            .map(|r| {
                assert_eq!(drop_reason(*r).name(), r.name());
                drop_reason(*r)
            })
            .collect();
        assert_eq!(
            mapped.len(),
            DropReason::ALL.len(),
            "the mirror has no extra reasons"
        );
    }

    #[test]
    fn every_forward_kind_maps_to_its_own_name() {
        for f in dp::stats::Forward::ALL {
            assert_eq!(forward_kind(f).name(), f.name());
        }
        assert_eq!(dp::stats::Forward::ALL.len(), ForwardKind::ALL.len());
        for d in [
            dp::flowlog::Direction::FromPod,
            dp::flowlog::Direction::FromUplink,
        ] {
            assert_eq!(direction(d).name(), d.name());
        }
    }

    #[test]
    fn every_refusal_maps_to_its_own_name() {
        use meshpath_control::refusal::Refusal as R;
        for r in R::ALL {
            assert_eq!(refusal(r).name(), r.name());
        }
        assert_eq!(R::ALL.len(), Refusal::ALL.len());
    }

    /// The status document's clustermesh section as it was when it was `RemoteStatus` serialised.
    #[test]
    fn remote_status_keeps_its_json() {
        let name = meshpath_control::ClusterName::new("cluster2").unwrap();
        let mut remote = RemoteStatus::new(&name, 2);
        remote.ready = true;
        remote.cluster_id = Some(2);
        remote.synced.services = true;
        remote.nodes = 3;
        remote.failures = 1;
        remote.last_failure = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        remote.set_refused_on_receipt([(meshpath_control::refusal::Refusal::NotShared, 2)].into());
        remote.degraded = Some("3 keys ignored past the key limit (250000)".into());
        remote.limits = Default::default();
        let mut mesh = MeshStatus::new();
        mesh.insert(name, remote);
        let before = serde_json::to_value(&mesh).unwrap();
        let after = serde_json::to_value(clustermesh(&mesh)).unwrap();
        assert_eq!(before, after);
    }
}
