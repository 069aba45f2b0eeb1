//! Real frames of every kind the pipeline handles on the bed, built with etherparse or by the dataplane
//! itself (encapsulation): the seeds of the sequence targets and the material of the property tests.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, PacketBuilder,
};
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::testbed::{self, Flow, GATEWAY_MAC, NODE_MAC};
use meshpath_dataplane::tunnel::{self, Encapsulation, TunnelProtocol};
use meshpath_dataplane::{Addr, Frame, Identity};

use crate::bed::{self, DUAL_STACK_MAC, DUAL_STACK_V4, DUAL_STACK_V6, REMOTE_V6};

/// The MAC a remote node sends from.
const REMOTE_NODE_MAC: [u8; 6] = [0x02, 0, 0, 2, 0, 1];
const LINK_LOCAL_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The testbed's service flow `f`.
pub fn flow(f: usize) -> Flow {
    let flows = &bed::bed().flows;
    flows[f % flows.len()]
}

/// A pod's UDP request to the frontend of its flow's service.
pub fn service_request(f: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 128];
    let len = bed::bed().request(&flow(f), &mut buf);
    buf.truncate(len);
    buf
}

/// The backend's reply to flow `f`, tunnelled back from its node with `protocol`.
pub fn service_reply(f: usize, protocol: TunnelProtocol) -> Vec<u8> {
    let bed = bed::bed();
    let flow = flow(f);
    let backend = bed.backend_of(&flow);
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 2, 2, 2], GATEWAY_MAC)
        .ipv4(
            testbed::remote_ip(backend).octets(),
            testbed::pod_ip(flow.pod).octets(),
            64,
        )
        .udp(testbed::BACKEND_PORT, flow.src_port)
        .write(&mut inner, &[0u8; 18])
        .expect("a frame fits");
    from_node(&inner, backend, protocol)
}

/// `inner`, encapsulated by remote endpoint `j`'s node with its identity as the VNI, as that node's
/// pipeline would send it to ours.
pub fn from_node(inner: &[u8], j: usize, protocol: TunnelProtocol) -> Vec<u8> {
    let identity = bed::bed()
        .tables
        .ipcache
        .lookup(testbed::remote_ip(j).into())
        .map_or(Identity::UNKNOWN, |e| e.identity);
    let mut buf = vec![0u8; HEADROOM + inner.len()];
    buf[HEADROOM..].copy_from_slice(inner);
    let Some(mut frame) = Frame::new(&mut buf, HEADROOM, inner.len(), testbed::UPLINK) else {
        return Vec::new();
    };
    let encapsulation = Encapsulation {
        protocol,
        vni: identity,
        src_mac: REMOTE_NODE_MAC,
        dst_mac: NODE_MAC,
        src: Addr::from(testbed::remote_node(j)),
        dst: Addr::from(testbed::node_ip()),
        ttl: 64,
    };
    match tunnel::encap(&mut frame, &encapsulation, 0x5eed) {
        Ok(()) => frame.data().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// A TCP segment from pod `pod` to remote endpoint `j`'s backend port.
pub fn tcp_to_remote(pod: usize, j: usize, sport: u16, flags: TcpFlags) -> Vec<u8> {
    tcp(
        testbed::pod_mac(pod),
        GATEWAY_MAC,
        testbed::pod_ip(pod),
        testbed::remote_ip(j),
        (sport, testbed::BACKEND_PORT),
        flags,
    )
}

/// Remote endpoint `j`'s answer to [`tcp_to_remote`], tunnelled from its node.
pub fn tcp_from_remote(pod: usize, j: usize, dport: u16, flags: TcpFlags) -> Vec<u8> {
    let inner = tcp(
        [0x02, 0, 0, 2, 2, 2],
        GATEWAY_MAC,
        testbed::remote_ip(j),
        testbed::pod_ip(pod),
        (testbed::BACKEND_PORT, dport),
        flags,
    );
    from_node(&inner, j, TunnelProtocol::Vxlan)
}

/// TCP flags of a segment.
#[derive(Clone, Copy, Debug)]
pub enum TcpFlags {
    Syn,
    SynAck,
    Ack,
    FinAck,
    Rst,
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    (sport, dport): (u16, u16),
    flags: TcpFlags,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64_000);
    let b = match flags {
        TcpFlags::Syn => b.syn(),
        TcpFlags::SynAck => b.syn().ack(1001),
        TcpFlags::Ack => b.ack(1001),
        TcpFlags::FinAck => b.fin().ack(1001),
        TcpFlags::Rst => b.rst(),
    };
    let mut out = Vec::new();
    b.write(&mut out, b"payload").expect("a frame fits");
    out
}

/// The dual-stack pod (under no policy) to pod `to` on this node, UDP.
pub fn pod_to_pod(to: usize, ttl: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(DUAL_STACK_MAC, GATEWAY_MAC)
        .ipv4(DUAL_STACK_V4.octets(), testbed::pod_ip(to).octets(), ttl)
        .udp(5353, 53)
        .write(&mut out, b"query")
        .expect("a frame fits");
    out
}

/// Pod `pod` asks who has its gateway's address.
pub fn arp_request(pod: usize) -> Vec<u8> {
    let mac = testbed::pod_mac(pod);
    let gateway = [100, 64, 1, 1];
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &mac,
        &testbed::pod_ip(pod).octets(),
        &[0; 6],
        &gateway,
    )
    .expect("an Ethernet/IPv4 ARP request");
    let mut out = Vec::new();
    Ethernet2Header {
        source: mac,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .write(&mut out)
    .expect("a header fits");
    arp.write(&mut out).expect("a packet fits");
    out
}

/// The dual-stack pod's neighbour solicitation for its link-local gateway.
pub fn neighbour_solicitation() -> Vec<u8> {
    let target = LINK_LOCAL_GATEWAY.octets();
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
    let mut body = Vec::from(&target[..]);
    // Source link-layer address option: type 1, 1 unit of 8 bytes.
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&DUAL_STACK_MAC);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(DUAL_STACK_MAC, [0x33, 0x33, 0xff, 0, 0, 1])
        .ipv6(DUAL_STACK_V6.octets(), solicited.octets(), 255)
        .icmpv6_raw(135, 0, [0; 4])
        .write(&mut out, &body)
        .expect("a frame fits");
    out
}

/// The dual-stack pod's UDP datagram to the remote IPv6 endpoint.
pub fn udp6_to_remote() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(DUAL_STACK_MAC, GATEWAY_MAC)
        .ipv6(DUAL_STACK_V6.octets(), REMOTE_V6.octets(), 64)
        .udp(40000, testbed::BACKEND_PORT)
        .write(&mut out, b"over six")
        .expect("a frame fits");
    out
}

/// A non-first IPv4 fragment from the dual-stack pod.
pub fn fragment() -> Vec<u8> {
    let mut out = pod_to_pod(0, 64);
    // Flags and fragment offset: offset 8 (64 bytes), no more fragments.
    out[14 + 6..14 + 8].copy_from_slice(&8u16.to_be_bytes());
    let sum = ipv4_checksum(&out[14..34]);
    out[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    out
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, pair) in header.chunks(2).enumerate() {
        if i != 5 {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
