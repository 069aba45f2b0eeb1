//! The seed corpus: real frames and real Cilium values, one file per seed under `corpus/TARGET/`.
//! `cargo test` checks that the files are what this module makes (`MESHPATH_WRITE_SEEDS=1` rewrites
//! them) and replays every file of `corpus/` and `regressions/` through its target.

use meshpath_dataplane::testbed::UPLINK;
use meshpath_dataplane::tunnel::TunnelProtocol;
use meshpath_dataplane::PortId;

use crate::bed::DUAL_STACK_PORT;
use crate::control::{encode_kv, KvOp};
use crate::frames::{self, TcpFlags};
use crate::input::{encode, Record};

/// (target, seed name, bytes).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, frame) in single_frames() {
        seeds.push(("parse", name, frame));
    }
    for (name, records) in sequences() {
        seeds.push(("pipeline", name, records));
    }
    for (name, bytes) in tunnel_payloads() {
        seeds.push(("tunnel", name, bytes));
    }
    for (name, bytes) in wireguard_inputs() {
        seeds.push(("wireguard", name, bytes));
    }
    for (name, bytes) in control_inputs() {
        seeds.push(("control", name, bytes));
    }
    seeds
}

fn single_frames() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("udp-service-request", frames::service_request(0)),
        (
            "vxlan-reply",
            frames::service_reply(0, TunnelProtocol::Vxlan),
        ),
        (
            "geneve-reply",
            frames::service_reply(1, TunnelProtocol::Geneve),
        ),
        ("tcp-syn", frames::tcp_to_remote(0, 3, 40000, TcpFlags::Syn)),
        ("arp-request", frames::arp_request(0)),
        ("neighbour-solicitation", frames::neighbour_solicitation()),
        ("udp6", frames::udp6_to_remote()),
        ("ipv4-fragment", frames::fragment()),
    ]
}

fn rec(port: PortId, clock_step: u8, new_batch: bool, bytes: &[u8]) -> Record<'_> {
    Record {
        port,
        clock_step,
        new_batch,
        bytes,
    }
}

fn sequences() -> Vec<(&'static str, Vec<u8>)> {
    let pod0 = PortId(1);
    let request = frames::service_request(2);
    let reply = frames::service_reply(2, TunnelProtocol::Vxlan);
    let geneve_reply = frames::service_reply(2, TunnelProtocol::Geneve);
    let syn = frames::tcp_to_remote(0, 3, 41000, TcpFlags::Syn);
    let syn_ack = frames::tcp_from_remote(0, 3, 41000, TcpFlags::SynAck);
    let ack = frames::tcp_to_remote(0, 3, 41000, TcpFlags::Ack);
    let fin = frames::tcp_to_remote(0, 3, 41000, TcpFlags::FinAck);
    let rst = frames::tcp_from_remote(0, 3, 41000, TcpFlags::Rst);
    let arp = frames::arp_request(1);
    let ns = frames::neighbour_solicitation();
    let udp6 = frames::udp6_to_remote();
    let local = frames::pod_to_pod(0, 64);
    let expiring = frames::pod_to_pod(1, 1);
    vec![
        (
            "service-request-and-replies",
            encode(&[
                rec(pod0, 0, true, &request),
                rec(UPLINK, 0, true, &reply),
                rec(UPLINK, 1, true, &geneve_reply),
                rec(UPLINK, 2, true, &reply),
            ]),
        ),
        (
            "tcp-handshake-and-close",
            encode(&[
                rec(pod0, 0, true, &syn),
                rec(UPLINK, 0, true, &syn_ack),
                rec(pod0, 0, true, &ack),
                rec(pod0, 1, true, &fin),
                rec(UPLINK, 0, false, &rst),
                rec(pod0, 3, true, &ack),
            ]),
        ),
        (
            "neighbours-ipv6-and-local",
            encode(&[
                rec(PortId(2), 0, true, &arp),
                rec(DUAL_STACK_PORT, 0, false, &ns),
                rec(DUAL_STACK_PORT, 0, false, &udp6),
                rec(DUAL_STACK_PORT, 0, false, &local),
                rec(DUAL_STACK_PORT, 0, false, &expiring),
                rec(DUAL_STACK_PORT, 0, false, &frames::fragment()),
            ]),
        ),
    ]
}

fn wireguard_inputs() -> Vec<(&'static str, Vec<u8>)> {
    // Bit 0 of the first byte: through a session (set) or raw (clear); the rest: the node of remote
    // endpoint j. Through a session: the IP packet the node sends, as it sends it in tunnel routing
    // (a VXLAN datagram) — here the tunnel seeds' real frames with their outer IP header.
    let mut seeds = vec![
        (
            "raw-initiation",
            [&[0u8, 1, 0, 0, 0][..], &[0u8; 144]].concat(),
        ),
        ("raw-data", [&[0u8, 4, 0, 0, 0][..], &[0u8; 60]].concat()),
    ];
    let backend = crate::bed::bed().backend_of(&frames::flow(0));
    let reply = frames::service_reply(0, TunnelProtocol::Vxlan);
    if let Some(packet) = reply.get(14..) {
        let mut bytes = vec![1 | (backend as u8) << 1];
        bytes.extend_from_slice(packet);
        seeds.push(("session-vxlan-reply", bytes));
    }
    seeds
}

fn tunnel_payloads() -> Vec<(&'static str, Vec<u8>)> {
    // The tunnel target adds the outer headers itself: its seeds are the bytes after the outer UDP
    // header of real tunnelled frames, behind the byte that picks the protocol (bit 0) and the
    // sending node (the rest: the node of remote endpoint j, which sent the frame).
    let backend = |f: usize| crate::bed::bed().backend_of(&frames::flow(f));
    let mut seeds = Vec::new();
    for (name, protocol, j, frame) in [
        (
            "vxlan-reply",
            0u8,
            backend(0),
            frames::service_reply(0, TunnelProtocol::Vxlan),
        ),
        (
            "geneve-reply",
            1u8,
            backend(1),
            frames::service_reply(1, TunnelProtocol::Geneve),
        ),
        (
            "vxlan-syn-ack",
            0u8,
            3,
            frames::tcp_from_remote(0, 3, 41000, TcpFlags::SynAck),
        ),
    ] {
        if let Some(payload) = frame.get(14 + 20 + 8..) {
            let mut bytes = vec![protocol | (j as u8) << 1];
            bytes.extend_from_slice(payload);
            seeds.push((name, bytes));
        }
    }
    seeds
}

/// Cilium's documented values, as a remote cluster3's etcd holds them.
const NODE: &str = r#"{"Name":"node-2","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"},{"Type":"CiliumInternalIP","IP":"10.244.1.130"}],"IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"////AA=="},"IPv6AllocCIDR":null,"IPv4HealthIP":"","IPv6HealthIP":"","ClusterID":3,"Source":"custom-resource","EncryptionKey":0,"Labels":{"kubernetes.io/hostname":"node-2"},"Annotations":null,"NodeIdentity":0,"WireguardPubKey":"","BootID":"4bbc1a2b-bd8f-4b2a-9a0e-9f0c6d1e1c11"}"#;
const ENDPOINT: &str = r#"{"IP":"10.244.1.74","Mask":null,"HostIP":"172.18.0.3","ID":196915,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"rebel-base-5f575fcc5d-7zqkc"}"#;
const IDENTITY: &str = "k8s:app.kubernetes.io/name=rebel-base;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.cilium.k8s.policy.serviceaccount=default;k8s:io.kubernetes.pod.namespace=default;k8s:name=rebel-base;";
const SERVICE: &str = r#"{"cluster":"cluster3","namespace":"default","name":"rebel-base","frontends":{"10.96.215.105":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.244.1.74":{"http":{"Protocol":"TCP","Port":80}}},"labels":{},"selector":{"name":"rebel-base"},"includeExternal":true,"shared":true,"clusterID":3}"#;
const CLUSTER_CONFIG: &str =
    r#"{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}"#;
const REMOTE_FILE: &str = "endpoints:\n- https://cluster3.mesh.cilium.io:2379\ntrusted-ca-file: ca.crt\ncert-file: client.crt\nkey-file: client.key\n";

fn control_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let put = |key: &'static str, value: &'static str| KvOp {
        delete: false,
        key: key.as_bytes(),
        value: value.as_bytes(),
    };
    let etcd = encode_kv(&[
        put("cilium/cluster-config/cluster3", CLUSTER_CONFIG),
        put("cilium/state/nodes/v1/cluster3/node-2", NODE),
        put("cilium/state/identities/v1/id/196915", IDENTITY),
        put("cilium/state/ip/v1/default/10.244.1.74", ENDPOINT),
        put(
            "cilium/state/services/v1/cluster3/default/rebel-base",
            SERVICE,
        ),
        put(
            "cilium/synced/cluster3/cilium/state/ip/v1",
            "2026-11-25T11:00:00Z",
        ),
        KvOp {
            delete: true,
            key: b"cilium/state/ip/v1/default/10.244.1.74",
            value: b"",
        },
    ]);
    let with = |select: u8, bytes: &[u8]| [&[select][..], bytes].concat();
    vec![
        ("remote-etcd", with(0, &etcd)),
        ("labels", with(1, IDENTITY.as_bytes())),
        (
            "key",
            with(2, b"cilium/state/services/v1/cluster3/default/rebel-base"),
        ),
        ("clustermesh-config", with(3, REMOTE_FILE.as_bytes())),
    ]
}
