//! Stage 1: parse. Reads the Ethernet, ARP/IP and transport headers of a received frame once, and
//! records what later stages need (the flow, header offsets for in-place rewrites, TCP flags, the kind of
//! ICMP message) in a small `Copy` [`Parsed`]. Nothing is rewritten here.
//!
//! etherparse slices each header; only the ICMPv6 neighbour-solicitation body is read by hand.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType, Ethernet2HeaderSlice, IpNumber,
    Ipv4Slice, Ipv6ExtensionSlice, Ipv6Slice, TcpHeaderSlice, UdpHeaderSlice,
};

use crate::flow::proto;
use crate::{Addr, DropReason, FlowKey};

const ETHERNET_LEN: usize = 14;
const ARP_ETH_IPV4_LEN: usize = 28;
const UDP_LEN: usize = 8;
const ICMP_ECHO_LEN: usize = 8;
/// ICMPv6 header (4), reserved (4), target address (16).
const NEIGHBOUR_SOLICITATION_LEN: usize = 24;
const ND_OPTION_SOURCE_LINK_ADDR: u8 = 1;

/// What stage 1 learnt about a frame: enough to route, filter and rewrite it without parsing again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ethertype: u16,
    pub l3: L3,
    /// Where the ARP or IP header starts, from the frame start.
    pub l3_offset: usize,
    /// Where the transport header starts (after IPv6 extension headers); for ARP, the end of the ARP body.
    pub l4_offset: usize,
    /// The IP packet's length as its header says (ARP: the body's length); bytes of the frame past
    /// `l3_offset + ip_len` are Ethernet padding.
    pub ip_len: usize,
    /// IPv4 TTL or IPv6 hop limit; 0 for ARP.
    pub ttl: u8,
    /// The 5-tuple in the frame's direction. For ARP: sender and target IPv4, ports and protocol 0.
    pub flow: FlowKey,
    pub l4: L4,
}

/// The network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    Arp(ArpInfo),
    Ipv4,
    Ipv6,
}

/// An ARP message for IPv4 over Ethernet, the only kind parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    pub op: ArpOperation,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// ARP frames have none.
    None,
    Tcp(TcpFlags),
    Udp,
    Icmp(IcmpKind),
}

/// The TCP flags conntrack follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const ACK: TcpFlags = TcpFlags(0x10);

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }

    fn of(tcp: &TcpHeaderSlice<'_>) -> TcpFlags {
        let flag = |set: bool, flag: TcpFlags| if set { flag.0 } else { 0 };
        TcpFlags(
            flag(tcp.fin(), Self::FIN)
                | flag(tcp.syn(), Self::SYN)
                | flag(tcp.rst(), Self::RST)
                | flag(tcp.ack(), Self::ACK),
        )
    }
}

/// The ICMP or ICMPv6 messages the pipeline treats differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    EchoRequest,
    EchoReply,
    NeighbourSolicitation {
        target: Ipv6Addr,
        /// The source link-layer address option, if the asker sent one.
        source_mac: Option<[u8; 6]>,
    },
    NeighbourAdvertisement,
    RouterSolicitation,
    Other,
}

impl Parsed {
    /// The UDP destination port, by which the uplink spots tunnel traffic.
    pub fn tunnel_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Udp => Some(self.flow.dst_port),
            _ => None,
        }
    }

    /// Where the IP packet ends: the rest of the frame is padding.
    pub fn l3_end(&self) -> usize {
        self.l3_offset + self.ip_len
    }
}

/// Parses a frame that starts with an Ethernet II header.
pub fn parse(frame: &[u8]) -> Result<Parsed, DropReason> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| DropReason::InvalidHeader)?;
    let link = Link {
        eth_src: eth.source(),
        eth_dst: eth.destination(),
        ethertype: eth.ether_type(),
    };
    let body = frame.get(ETHERNET_LEN..).ok_or(DropReason::InvalidHeader)?;
    match link.ethertype {
        EtherType::IPV4 => parse_ipv4(link, body),
        EtherType::IPV6 => parse_ipv6(link, body),
        EtherType::ARP => parse_arp(link, body),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

struct Link {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ethertype: EtherType,
}

/// What the transport header yields.
struct Transport {
    src_port: u16,
    dst_port: u16,
    l4: L4,
}

/// The IP-level facts shared by both families.
struct Network {
    l3: L3,
    src: Addr,
    dst: Addr,
    ttl: u8,
    ip_len: usize,
    header_len: usize,
    protocol: u8,
}

fn assemble(link: Link, net: Network, transport: Transport) -> Parsed {
    Parsed {
        eth_src: link.eth_src,
        eth_dst: link.eth_dst,
        ethertype: link.ethertype.0,
        l3: net.l3,
        l3_offset: ETHERNET_LEN,
        l4_offset: ETHERNET_LEN + net.header_len,
        ip_len: net.ip_len,
        ttl: net.ttl,
        flow: FlowKey {
            src: net.src,
            dst: net.dst,
            src_port: transport.src_port,
            dst_port: transport.dst_port,
            proto: net.protocol,
        },
        l4: transport.l4,
    }
}

fn parse_ipv4(link: Link, body: &[u8]) -> Result<Parsed, DropReason> {
    let ip = Ipv4Slice::from_slice(body).map_err(|_| DropReason::InvalidHeader)?;
    let header = ip.header();
    if header.fragments_offset().value() != 0 {
        return Err(DropReason::UnsupportedFragment);
    }
    let payload = ip.payload();
    let ip_len = usize::from(header.total_len());
    let protocol = payload.ip_number;
    let transport = parse_transport(protocol, payload.payload, payload.fragmented, false)?;
    let net = Network {
        l3: L3::Ipv4,
        src: Addr::from_v4_bits(u32::from_be_bytes(header.source())),
        dst: Addr::from_v4_bits(u32::from_be_bytes(header.destination())),
        ttl: header.ttl(),
        ip_len,
        header_len: ip_len - payload.payload.len(),
        protocol: protocol.0,
    };
    Ok(assemble(link, net, transport))
}

fn parse_ipv6(link: Link, body: &[u8]) -> Result<Parsed, DropReason> {
    let ip = Ipv6Slice::from_slice(body).map_err(|_| DropReason::InvalidHeader)?;
    let header = ip.header();
    // A zero payload length announces a jumbogram, which Ethernet cannot carry.
    if header.payload_length() == 0 {
        return Err(DropReason::InvalidHeader);
    }
    let payload = ip.payload();
    if payload.fragmented && !is_first_fragment(&ip) {
        return Err(DropReason::UnsupportedFragment);
    }
    let ip_len = 40 + usize::from(header.payload_length());
    let (src, dst) = (
        Addr::from_v6_bits(u128::from_be_bytes(header.source())),
        Addr::from_v6_bits(u128::from_be_bytes(header.destination())),
    );
    // Addresses are kept in one 16-byte form in which IPv4 is mapped: a mapped IPv6 address would
    // be taken for the IPv4 address (anti-spoofing, conntrack, policy), so it is refused here.
    if src.is_ipv4() || dst.is_ipv4() {
        return Err(DropReason::Ipv4MappedAddress);
    }
    let protocol = payload.ip_number;
    let transport = parse_transport(protocol, payload.payload, payload.fragmented, true)?;
    let net = Network {
        l3: L3::Ipv6,
        src,
        dst,
        ttl: header.hop_limit(),
        ip_len,
        header_len: ip_len - payload.payload.len(),
        protocol: protocol.0,
    };
    Ok(assemble(link, net, transport))
}

fn is_first_fragment(ip: &Ipv6Slice<'_>) -> bool {
    ip.extensions().clone().into_iter().all(|ext| match ext {
        Ipv6ExtensionSlice::Fragment(fragment) => fragment.fragment_offset().value() == 0,
        _ => true,
    })
}

fn parse_arp(link: Link, body: &[u8]) -> Result<Parsed, DropReason> {
    let arp = ArpPacketSlice::from_slice(body).map_err(|_| DropReason::InvalidHeader)?;
    if arp.hw_addr_type() != ArpHardwareId::ETHERNET
        || arp.proto_addr_type() != EtherType::IPV4
        || arp.hw_addr_size() != 6
        || arp.proto_addr_size() != 4
    {
        return Err(DropReason::UnsupportedProtocol);
    }
    let info = ArpInfo {
        op: arp.operation(),
        sender_mac: array(arp.sender_hw_addr())?,
        sender_ip: Ipv4Addr::from(array::<4>(arp.sender_protocol_addr())?),
        target_ip: Ipv4Addr::from(array::<4>(arp.target_protocol_addr())?),
    };
    let net = Network {
        l3: L3::Arp(info),
        src: info.sender_ip.into(),
        dst: info.target_ip.into(),
        ttl: 0,
        ip_len: ARP_ETH_IPV4_LEN,
        header_len: ARP_ETH_IPV4_LEN,
        protocol: 0,
    };
    let transport = Transport {
        src_port: 0,
        dst_port: 0,
        l4: L4::None,
    };
    Ok(assemble(link, net, transport))
}

/// `fragmented`: a first fragment, whose UDP length may exceed the bytes at hand.
fn parse_transport(
    protocol: IpNumber,
    payload: &[u8],
    fragmented: bool,
    ipv6: bool,
) -> Result<Transport, DropReason> {
    match (protocol.0, ipv6) {
        (proto::TCP, _) => {
            let tcp = TcpHeaderSlice::from_slice(payload).map_err(|_| DropReason::InvalidHeader)?;
            Ok(Transport {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                l4: L4::Tcp(TcpFlags::of(&tcp)),
            })
        }
        (proto::UDP, _) => parse_udp(payload, fragmented),
        (proto::ICMP, false) => parse_icmpv4(payload),
        (proto::ICMPV6, true) => parse_icmpv6(payload),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

fn parse_udp(payload: &[u8], fragmented: bool) -> Result<Transport, DropReason> {
    let udp = UdpHeaderSlice::from_slice(payload).map_err(|_| DropReason::InvalidHeader)?;
    let len = usize::from(udp.length());
    if len < UDP_LEN || (!fragmented && len > payload.len()) {
        return Err(DropReason::InvalidHeader);
    }
    Ok(Transport {
        src_port: udp.source_port(),
        dst_port: udp.destination_port(),
        l4: L4::Udp,
    })
}

fn parse_icmpv4(payload: &[u8]) -> Result<Transport, DropReason> {
    let header = payload
        .get(..ICMP_ECHO_LEN)
        .ok_or(DropReason::InvalidHeader)?;
    let kind = match header[0] {
        8 => IcmpKind::EchoRequest,
        0 => IcmpKind::EchoReply,
        _ => IcmpKind::Other,
    };
    Ok(icmp_transport(kind, header))
}

fn parse_icmpv6(payload: &[u8]) -> Result<Transport, DropReason> {
    let header = payload
        .get(..ICMP_ECHO_LEN)
        .ok_or(DropReason::InvalidHeader)?;
    let kind = match header[0] {
        128 => IcmpKind::EchoRequest,
        129 => IcmpKind::EchoReply,
        133 => IcmpKind::RouterSolicitation,
        135 => parse_neighbour_solicitation(payload)?,
        136 => IcmpKind::NeighbourAdvertisement,
        _ => IcmpKind::Other,
    };
    Ok(icmp_transport(kind, header))
}

/// Echo messages carry their identifier in both ports so that a reply is the request's reverse flow.
fn icmp_transport(kind: IcmpKind, header: &[u8]) -> Transport {
    let id = match (kind, header) {
        (IcmpKind::EchoRequest | IcmpKind::EchoReply, [_, _, _, _, hi, lo, ..]) => {
            u16::from_be_bytes([*hi, *lo])
        }
        _ => 0,
    };
    Transport {
        src_port: id,
        dst_port: id,
        l4: L4::Icmp(kind),
    }
}

/// RFC 4861 §4.3: the target address, then options in units of 8 bytes (a zero length is invalid).
fn parse_neighbour_solicitation(icmp: &[u8]) -> Result<IcmpKind, DropReason> {
    let target = icmp
        .get(8..NEIGHBOUR_SOLICITATION_LEN)
        .ok_or(DropReason::InvalidHeader)?;
    let mut options = icmp.get(NEIGHBOUR_SOLICITATION_LEN..).unwrap_or_default();
    let mut source_mac = None;
    while let [kind, len, ..] = *options {
        let len = usize::from(len) * 8;
        let option = options
            .get(..len)
            .filter(|_| len > 0)
            .ok_or(DropReason::InvalidHeader)?;
        if kind == ND_OPTION_SOURCE_LINK_ADDR {
            source_mac = option.get(2..8).map(array).transpose()?;
        }
        options = options.get(len..).unwrap_or_default();
    }
    Ok(IcmpKind::NeighbourSolicitation {
        target: Ipv6Addr::from(array::<16>(target)?),
        source_mac,
    })
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DropReason> {
    bytes.try_into().map_err(|_| DropReason::InvalidHeader)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etherparse::{
        ArpEthIpv4Packet, IpFragOffset, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader,
        Ipv6Header, PacketBuilder,
    };
    use proptest::prelude::*;

    pub(crate) const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Tcp {
            syn: bool,
            ack: bool,
            fin: bool,
            rst: bool,
        },
        Udp,
        EchoRequest,
        EchoReply,
    }

    /// A frame built by etherparse; `src`/`dst` are 4 or 16 bytes.
    fn frame(
        src: &[u8],
        dst: &[u8],
        kind: Kind,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let ip = match (<[u8; 4]>::try_from(src), <[u8; 4]>::try_from(dst)) {
            (Ok(s), Ok(d)) => eth.ipv4(s, d, 64),
            _ => eth.ipv6(src.try_into().unwrap(), dst.try_into().unwrap(), 64),
        };
        let v6 = src.len() == 16;
        let mut out = Vec::new();
        match kind {
            Kind::Tcp { syn, ack, fin, rst } => {
                let mut tcp = ip.tcp(sport, dport, 1, 1000);
                if syn {
                    tcp = tcp.syn();
                }
                if ack {
                    tcp = tcp.ack(1);
                }
                if fin {
                    tcp = tcp.fin();
                }
                if rst {
                    tcp = tcp.rst();
                }
                tcp.write(&mut out, payload).unwrap()
            }
            Kind::Udp => ip.udp(sport, dport).write(&mut out, payload).unwrap(),
            Kind::EchoRequest if v6 => ip
                .icmpv6_echo_request(sport, 7)
                .write(&mut out, payload)
                .unwrap(),
            Kind::EchoReply if v6 => ip
                .icmpv6_echo_reply(sport, 7)
                .write(&mut out, payload)
                .unwrap(),
            Kind::EchoRequest => ip
                .icmpv4_echo_request(sport, 7)
                .write(&mut out, payload)
                .unwrap(),
            Kind::EchoReply => ip
                .icmpv4_echo_reply(sport, 7)
                .write(&mut out, payload)
                .unwrap(),
        }
        out
    }

    fn addr(bytes: &[u8]) -> Addr {
        match <[u8; 4]>::try_from(bytes) {
            Ok(v4) => Ipv4Addr::from(v4).into(),
            Err(_) => Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap()).into(),
        }
    }

    #[test]
    fn udp_frame_gives_flow_offsets_and_tunnel_port() {
        let mut bytes = frame(
            &[198, 18, 1, 10],
            &[198, 18, 2, 20],
            Kind::Udp,
            40000,
            8472,
            &[1, 2, 3],
        );
        bytes.resize(60, 0); // Ethernet padding
        let p = parse(&bytes).unwrap();
        assert_eq!((p.eth_src, p.eth_dst, p.ethertype), (MAC_A, MAC_B, 0x0800));
        assert_eq!(
            (p.l3, p.l3_offset, p.l4_offset, p.ip_len, p.ttl),
            (L3::Ipv4, 14, 34, 31, 64)
        );
        assert_eq!(p.l3_end(), 45);
        assert_eq!(p.flow.src.to_string(), "198.18.1.10");
        assert_eq!(
            (p.flow.src_port, p.flow.dst_port, p.flow.proto),
            (40000, 8472, proto::UDP)
        );
        assert_eq!(p.tunnel_port(), Some(8472));
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_refused_both_ways() {
        let mapped: [u8; 16] = "::ffff:100.64.1.10".parse::<Ipv6Addr>().unwrap().octets();
        let plain: [u8; 16] = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
        for (src, dst) in [(mapped, plain), (plain, mapped)] {
            let bytes = frame(&src, &dst, Kind::Udp, 1, 2, b"x");
            assert_eq!(parse(&bytes), Err(DropReason::Ipv4MappedAddress));
        }
        assert!(parse(&frame(&plain, &plain, Kind::Udp, 1, 2, b"x")).is_ok());
    }

    #[test]
    fn echo_request_and_reply_are_reverse_flows() {
        let (a, b) = ([100, 64, 1, 10], [100, 65, 1, 10]);
        let req = parse(&frame(&a, &b, Kind::EchoRequest, 0x1234, 0, &[])).unwrap();
        let rep = parse(&frame(&b, &a, Kind::EchoReply, 0x1234, 0, &[])).unwrap();
        assert_eq!(req.l4, L4::Icmp(IcmpKind::EchoRequest));
        assert_eq!(rep.l4, L4::Icmp(IcmpKind::EchoReply));
        assert_eq!((req.flow.src_port, req.flow.dst_port), (0x1234, 0x1234));
        assert_eq!(req.flow.reversed(), rep.flow);
        assert_eq!(req.tunnel_port(), None);
    }

    #[test]
    fn arp_request_gives_sender_and_target() {
        let arp = ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: MAC_A,
            sender_ipv4: [100, 64, 1, 10],
            target_mac: [0; 6],
            target_ipv4: [100, 64, 1, 1],
        };
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2(MAC_A, [0xff; 6])
            .arp(arp.into())
            .write(&mut bytes)
            .unwrap();
        let p = parse(&bytes).unwrap();
        let L3::Arp(info) = p.l3 else {
            panic!("not ARP: {p:?}")
        };
        assert_eq!(info.op, ArpOperation::REQUEST);
        assert_eq!(info.sender_mac, MAC_A);
        assert_eq!(info.sender_ip, Ipv4Addr::new(100, 64, 1, 10));
        assert_eq!(info.target_ip, Ipv4Addr::new(100, 64, 1, 1));
        assert_eq!((p.ethertype, p.l4, p.ip_len), (0x0806, L4::None, 28));
        bytes[15] = 6; // hardware type IEEE 802
        assert_eq!(parse(&bytes), Err(DropReason::UnsupportedProtocol));
    }

    fn ipv4_fragment(offset: u16, more: bool) -> Vec<u8> {
        let mut header =
            Ipv4Header::new(0, 64, IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2]).unwrap();
        header.fragment_offset = IpFragOffset::try_new(offset).unwrap();
        header.more_fragments = more;
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv4(header, Default::default()))
            .udp(5, 6)
            .write(&mut out, &[0; 16])
            .unwrap();
        out
    }

    fn ipv6_fragment(offset: u16, more: bool) -> Vec<u8> {
        let header = Ipv6Header {
            source: [1; 16],
            destination: [2; 16],
            hop_limit: 9,
            ..Default::default()
        };
        let exts = Ipv6Extensions {
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::UDP,
                IpFragOffset::try_new(offset).unwrap(),
                more,
                77,
            )),
            ..Default::default()
        };
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv6(header, exts))
            .udp(5, 6)
            .write(&mut out, &[0; 16])
            .unwrap();
        out
    }

    #[test]
    fn first_fragments_parse_and_later_ones_are_refused() {
        let first = parse(&ipv4_fragment(0, true)).unwrap();
        assert_eq!((first.flow.src_port, first.flow.dst_port), (5, 6));
        assert_eq!(
            parse(&ipv4_fragment(3, false)),
            Err(DropReason::UnsupportedFragment)
        );
        let first = parse(&ipv6_fragment(0, true)).unwrap();
        assert_eq!((first.l4_offset, first.flow.dst_port), (14 + 48, 6));
        assert_eq!(
            parse(&ipv6_fragment(3, true)),
            Err(DropReason::UnsupportedFragment)
        );
    }

    #[test]
    fn vlan_and_unknown_protocols_are_unsupported() {
        let mut bytes = frame(&[10, 0, 0, 1], &[10, 0, 0, 2], Kind::Udp, 1, 2, &[]);
        bytes[23] = 47; // GRE
        assert_eq!(parse(&bytes), Err(DropReason::UnsupportedProtocol));
        bytes[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(parse(&bytes), Err(DropReason::UnsupportedProtocol));
    }

    #[test]
    fn inconsistent_lengths_are_invalid() {
        let bytes = frame(&[10, 0, 0, 1], &[10, 0, 0, 2], Kind::Udp, 1, 2, &[9; 10]);
        assert_eq!(
            parse(&bytes[..bytes.len() - 1]),
            Err(DropReason::InvalidHeader)
        );
        let mut long_udp = bytes.clone();
        long_udp[38..40].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&long_udp), Err(DropReason::InvalidHeader));
        assert_eq!(parse(&bytes[..13]), Err(DropReason::InvalidHeader));
    }

    /// An NS built by hand from RFC 4861 §4.3, with an optional source link-layer address option.
    pub(crate) fn neighbour_solicitation(
        src: Ipv6Addr,
        target: Ipv6Addr,
        sllao: Option<[u8; 6]>,
    ) -> Vec<u8> {
        let mut body = target.octets().to_vec();
        if let Some(mac) = sllao {
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&mac);
        }
        let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1);
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, [0x33, 0x33, 0xff, 0, 0, 1])
            .ipv6(src.octets(), solicited_node.octets(), 255)
            .icmpv6_raw(135, 0, [0; 4])
            .write(&mut out, &body)
            .unwrap();
        out
    }

    #[test]
    fn neighbour_solicitation_gives_target_and_source_mac() {
        let src: Ipv6Addr = "fd00::10".parse().unwrap();
        let target: Ipv6Addr = "fd00::1".parse().unwrap();
        let p = parse(&neighbour_solicitation(src, target, Some(MAC_A))).unwrap();
        assert_eq!(
            p.l4,
            L4::Icmp(IcmpKind::NeighbourSolicitation {
                target,
                source_mac: Some(MAC_A)
            })
        );
        let p = parse(&neighbour_solicitation(src, target, None)).unwrap();
        assert_eq!(
            p.l4,
            L4::Icmp(IcmpKind::NeighbourSolicitation {
                target,
                source_mac: None
            })
        );
        let mut zero_len_option = neighbour_solicitation(src, target, Some(MAC_A));
        let at = zero_len_option.len() - 7;
        zero_len_option[at] = 0;
        assert_eq!(parse(&zero_len_option), Err(DropReason::InvalidHeader));
    }

    fn ip_bytes() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| (s.to_vec(), d.to_vec())),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| (s.to_vec(), d.to_vec())),
        ]
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            any::<[bool; 4]>().prop_map(|[syn, ack, fin, rst]| Kind::Tcp { syn, ack, fin, rst }),
            Just(Kind::Udp),
            Just(Kind::EchoRequest),
            Just(Kind::EchoReply),
        ]
    }

    fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            ip_bytes(),
            kind(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|((s, d), k, sp, dp, payload)| frame(&s, &d, k, sp, dp, &payload))
    }

    proptest! {
        #[test]
        fn valid_frames_parse_to_their_flow(
            (src, dst) in ip_bytes(), kind in kind(), sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64), padding in 0usize..20,
        ) {
            let mut bytes = frame(&src, &dst, kind, sport, dport, &payload);
            let ip_len = bytes.len() - 14;
            bytes.resize(bytes.len() + padding, 0);
            let p = parse(&bytes).unwrap();
            let v6 = src.len() == 16;
            prop_assert_eq!(p.l3, if v6 { L3::Ipv6 } else { L3::Ipv4 });
            prop_assert_eq!((p.l3_offset, p.l4_offset, p.ip_len), (14, if v6 { 54 } else { 34 }, ip_len));
            prop_assert_eq!((p.flow.src, p.flow.dst), (addr(&src), addr(&dst)));
            let (ports, proto, l4) = match kind {
                Kind::Tcp { syn, ack, fin, rst } => {
                    let mut flags = TcpFlags::default();
                    for (set, flag) in [(syn, TcpFlags::SYN), (ack, TcpFlags::ACK), (fin, TcpFlags::FIN), (rst, TcpFlags::RST)] {
                        if set { flags = flags.union(flag); }
                    }
                    ((sport, dport), proto::TCP, L4::Tcp(flags))
                }
                Kind::Udp => ((sport, dport), proto::UDP, L4::Udp),
                Kind::EchoRequest | Kind::EchoReply => {
                    let icmp = if matches!(kind, Kind::EchoRequest) { IcmpKind::EchoRequest } else { IcmpKind::EchoReply };
                    ((sport, sport), if v6 { proto::ICMPV6 } else { proto::ICMP }, L4::Icmp(icmp))
                }
            };
            prop_assert_eq!((p.flow.src_port, p.flow.dst_port, p.flow.proto), (ports.0, ports.1, proto));
            prop_assert_eq!(p.l4, l4);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic_and_stay_in_bounds(
            bytes in valid_frame(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = bytes;
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(1));
            if let Ok(p) = parse(&bytes) {
                prop_assert!(p.l3_offset <= p.l4_offset && p.l4_offset <= p.l3_end());
                prop_assert!(p.l3_end() <= bytes.len());
            }
        }
    }
}
