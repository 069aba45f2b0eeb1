//! Stage 2 and the last stage: tunnels between nodes. [`decap`] runs right after parse on frames from the
//! uplink that came in on the VXLAN or Geneve port; [`encap`] runs after route for frames bound to a pod
//! on another node. The 24-bit VNI carries the sender's security identity, as in Cilium.
//!
//! Both move the frame's head inside its buffer (`Frame::pull_front`/`push_front`): the inner frame is
//! never copied.

use crate::parse::{Parsed, L4};
use crate::wire::{checksum, ethernet, geneve, ipv4, ipv6, udp, vxlan};
use crate::{Addr, DropReason, Frame, Identity};

const ETHERNET_LEN: usize = ethernet::HEADER_LEN;
const UDP_LEN: usize = udp::HEADER_LEN;
/// VXLAN, and Geneve without options, which is all this side sends.
const TUNNEL_LEN: usize = 8;
const UDP: u8 = 17;
/// Linux's default `ip_local_port_range` (32768..=60999): the source ports receivers hash flows by.
const SOURCE_PORT_MIN: u32 = 32768;
const SOURCE_PORT_SPAN: u32 = 61000 - SOURCE_PORT_MIN;

/// The tunnel header kind, chosen by the outer UDP destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TunnelProtocol {
    Vxlan,
    Geneve,
}

impl TunnelProtocol {
    /// Cilium's ports: VXLAN on 8472 (the Linux default, not IANA's 4789), Geneve on 6081.
    pub const fn port(self) -> u16 {
        match self {
            TunnelProtocol::Vxlan => 8472,
            TunnelProtocol::Geneve => 6081,
        }
    }

    pub const fn from_port(port: u16) -> Option<Self> {
        match port {
            8472 => Some(TunnelProtocol::Vxlan),
            6081 => Some(TunnelProtocol::Geneve),
            _ => None,
        }
    }
}

/// What the outer headers said, kept after they are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decapsulated {
    /// The sender's security identity from the VNI; `Identity::UNKNOWN` for VNI 0.
    pub identity: Identity,
    /// The sending node's underlay address.
    pub outer_src: Addr,
}

/// Strips the outer Ethernet, IP, UDP and tunnel headers: the frame then starts at the inner Ethernet
/// header and ends where the outer UDP datagram ended (outer padding is dropped).
pub fn decap(
    frame: &mut Frame<'_>,
    outer: &Parsed,
    protocol: TunnelProtocol,
) -> Result<Decapsulated, DropReason> {
    let inner = Inner::of(frame.data(), outer, protocol)?;
    let identity = Identity::new(inner.vni).ok_or(DropReason::InvalidIdentity)?;
    frame
        .pull_front(inner.start)
        .ok_or(DropReason::InvalidHeader)?;
    frame.truncate(inner.len);
    Ok(Decapsulated {
        identity,
        outer_src: outer.flow.src,
    })
}

/// The frame inside a tunnel frame, read in place: from its Ethernet header to where the outer UDP
/// datagram ends. For worker steering, which looks before the pipeline decapsulates.
pub fn inner<'f>(
    frame: &'f [u8],
    outer: &Parsed,
    protocol: TunnelProtocol,
) -> Result<&'f [u8], DropReason> {
    let inner = Inner::of(frame, outer, protocol)?;
    frame
        .get(inner.start..inner.start + inner.len)
        .ok_or(DropReason::InvalidHeader)
}

/// Where a tunnel frame's inner frame lies, and the VNI it came with.
struct Inner {
    vni: u32,
    start: usize,
    len: usize,
}

impl Inner {
    fn of(frame: &[u8], outer: &Parsed, protocol: TunnelProtocol) -> Result<Inner, DropReason> {
        if outer.l4 != L4::Udp {
            return Err(DropReason::UnsupportedProtocol);
        }
        let udp = frame
            .get(outer.l4_offset..outer.l3_end())
            .ok_or(DropReason::InvalidHeader)?;
        let udp_len = match udp {
            [_, _, _, _, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(DropReason::InvalidHeader),
        };
        let tunnel = udp.get(UDP_LEN..udp_len).ok_or(DropReason::InvalidHeader)?;
        let (vni, header_len) = tunnel_header(tunnel, protocol)?;
        let len = tunnel.len() - header_len;
        if len < ETHERNET_LEN {
            return Err(DropReason::InvalidHeader);
        }
        Ok(Inner {
            vni,
            start: outer.l4_offset + UDP_LEN + header_len,
            len,
        })
    }
}

/// The VNI and the tunnel header's length, options included.
fn tunnel_header(bytes: &[u8], protocol: TunnelProtocol) -> Result<(u32, usize), DropReason> {
    match protocol {
        TunnelProtocol::Vxlan => {
            let repr = vxlan::Repr::parse(&vxlan::Packet::new_checked(bytes)?)?;
            Ok((repr.vni, repr.header_len()))
        }
        TunnelProtocol::Geneve => {
            let repr = geneve::Repr::parse(&geneve::Packet::new_checked(bytes)?)?;
            // OAM frames are for tunnel endpoints, not for pods; Cilium sends none.
            if repr.oam {
                return Err(DropReason::UnsupportedProtocol);
            }
            Ok((repr.vni, repr.header_len()))
        }
    }
}

/// How to wrap a frame for another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encapsulation {
    pub protocol: TunnelProtocol,
    /// The sender's security identity, sent as the VNI.
    pub vni: Identity,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Outer addresses: this node and the destination node, both IPv4 or both IPv6.
    pub src: Addr,
    pub dst: Addr,
    pub ttl: u8,
}

/// Prepends outer Ethernet, IPv4 or IPv6, UDP and tunnel headers in the frame's headroom.
/// `flow_hash` picks the outer UDP source port so that receivers spread flows over their queues.
pub fn encap(frame: &mut Frame<'_>, enc: &Encapsulation, flow_hash: u32) -> Result<(), DropReason> {
    let outer = match (enc.src.v4_bits(), enc.dst.v4_bits()) {
        (Some(src), Some(dst)) => OuterIp::V4 { src, dst },
        (None, None) => OuterIp::V6 {
            src: enc.src.bits(),
            dst: enc.dst.bits(),
        },
        // The route named a tunnel endpoint of another family than this node's underlay address.
        _ => return Err(DropReason::NoRoute),
    };
    let udp_len = udp::HEADER_LEN + TUNNEL_LEN + frame.len();
    let udp_len = u16::try_from(udp_len).map_err(|_| DropReason::FrameTooBig)?;
    let headers_len = outer.overhead();
    let bytes = frame
        .push_front(headers_len)
        .ok_or(DropReason::NoHeadroom)?;
    let mut eth = ethernet::Frame::new_checked(bytes).map_err(|_| DropReason::NoHeadroom)?;
    eth.set_dst(enc.dst_mac);
    eth.set_src(enc.src_mac);
    eth.set_ethertype(outer.ethertype());
    let l3 = eth.payload_mut();
    let l4 = match outer {
        OuterIp::V4 { src, dst } => {
            let repr = ipv4::Repr {
                src,
                dst,
                protocol: UDP,
                payload_len: udp_len,
                ttl: enc.ttl,
            };
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut *l3));
            &mut l3[ipv4::HEADER_LEN..]
        }
        OuterIp::V6 { src, dst } => {
            // The flow label carries the flow hash too, for routers that hash on it (RFC 6438).
            let repr = ipv6::Repr {
                src,
                dst,
                next_header: UDP,
                payload_len: udp_len,
                hop_limit: enc.ttl,
                flow_label: flow_hash,
            };
            repr.emit(&mut ipv6::Packet::new_unchecked(&mut *l3));
            &mut l3[ipv6::HEADER_LEN..]
        }
    };
    write_udp_and_tunnel(l4, enc, source_port(flow_hash), udp_len);
    if let OuterIp::V6 { src, dst } = outer {
        // RFC 8200 requires a UDP checksum over IPv6; over IPv4 zero is allowed and saves a pass.
        let datagram = l4
            .get(..usize::from(udp_len))
            .ok_or(DropReason::InvalidHeader)?;
        let sum = checksum::combine(&[
            checksum::pseudo_header_v6(
                src.to_be_bytes(),
                dst.to_be_bytes(),
                UDP,
                u32::from(udp_len),
            ),
            checksum::data(datagram),
        ]);
        udp::Packet::new_unchecked(l4).set_checksum(checksum::udp_nonzero(checksum::finish(sum)));
    }
    Ok(())
}

/// The bytes encapsulation adds in front of a frame to `peer`: what the underlay MTU must leave room for.
pub fn overhead(peer: Addr) -> usize {
    if peer.is_ipv4() {
        OuterIp::V4 { src: 0, dst: 0 }.overhead()
    } else {
        OuterIp::V6 { src: 0, dst: 0 }.overhead()
    }
}

#[derive(Clone, Copy)]
enum OuterIp {
    V4 { src: u32, dst: u32 },
    V6 { src: u128, dst: u128 },
}

impl OuterIp {
    const fn header_len(self) -> usize {
        match self {
            OuterIp::V4 { .. } => ipv4::HEADER_LEN,
            OuterIp::V6 { .. } => ipv6::HEADER_LEN,
        }
    }

    /// Outer Ethernet, IP, UDP and tunnel headers.
    const fn overhead(self) -> usize {
        ethernet::HEADER_LEN + self.header_len() + udp::HEADER_LEN + TUNNEL_LEN
    }

    const fn ethertype(self) -> u16 {
        match self {
            OuterIp::V4 { .. } => ethernet::ETHERTYPE_IPV4,
            OuterIp::V6 { .. } => ethernet::ETHERTYPE_IPV6,
        }
    }
}

/// Spreads the hash over the source port range as Linux's `udp_flow_src_port` does.
fn source_port(flow_hash: u32) -> u16 {
    let offset = (u64::from(flow_hash) * u64::from(SOURCE_PORT_SPAN)) >> 32;
    (SOURCE_PORT_MIN + offset as u32) as u16
}

fn write_udp_and_tunnel(l4: &mut [u8], enc: &Encapsulation, src_port: u16, udp_len: u16) {
    let mut datagram = udp::Packet::new_unchecked(&mut *l4);
    // "No checksum" first, so the port setters leave it alone rather than update garbage.
    datagram.set_checksum(0);
    datagram.set_len(udp_len);
    datagram.set_src_port(src_port);
    datagram.set_dst_port(enc.protocol.port());
    let tunnel = &mut l4[udp::HEADER_LEN..];
    let vni = enc.vni.get();
    match enc.protocol {
        TunnelProtocol::Vxlan => {
            vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(tunnel))
        }
        TunnelProtocol::Geneve => geneve::Repr {
            vni,
            oam: false,
            options_len: 0,
        }
        .emit(&mut geneve::Packet::new_unchecked(tunnel)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{PortId, HEADROOM};
    use crate::parse::parse;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NODE_A: [u8; 4] = [198, 18, 1, 10];
    const NODE_B: [u8; 4] = [198, 18, 1, 11];

    /// A pod-to-pod UDP frame as a pod would send it.
    fn inner_frame() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([100, 64, 1, 10], [100, 64, 2, 20], 64)
            .udp(5000, 53)
            .write(&mut out, b"query")
            .unwrap();
        out
    }

    /// An outer IPv4/UDP frame built by etherparse around a tunnel header and the inner frame.
    fn outer_frame(dst_port: u16, tunnel_header: &[u8], inner: &[u8]) -> Vec<u8> {
        let payload = [tunnel_header, inner].concat();
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2])
            .ipv4(NODE_A, NODE_B, 64)
            .udp(41234, dst_port)
            .write(&mut out, &payload)
            .unwrap();
        out
    }

    /// Runs parse and decap over `bytes` placed after the usual headroom.
    fn decap_bytes(
        bytes: &[u8],
        protocol: TunnelProtocol,
    ) -> Result<(Decapsulated, Vec<u8>), DropReason> {
        let mut buf = vec![0u8; HEADROOM + bytes.len()];
        buf[HEADROOM..].copy_from_slice(bytes);
        let mut frame = Frame::new(&mut buf, HEADROOM, bytes.len(), PortId(0)).unwrap();
        let outer = parse(frame.data())?;
        let decapsulated = decap(&mut frame, &outer, protocol)?;
        Ok((decapsulated, frame.data().to_vec()))
    }

    #[test]
    fn ports_are_ciliums() {
        assert_eq!(TunnelProtocol::from_port(8472), Some(TunnelProtocol::Vxlan));
        assert_eq!(
            TunnelProtocol::from_port(6081),
            Some(TunnelProtocol::Geneve)
        );
        assert_eq!(TunnelProtocol::from_port(4789), None);
        assert_eq!(TunnelProtocol::Geneve.port(), 6081);
    }

    #[test]
    fn vxlan_frame_decaps_to_the_inner_frame() {
        let inner = inner_frame();
        // RFC 7348 §5: I flag, VNI 0x020001 (an identity of cluster 2).
        let mut bytes = outer_frame(8472, &[0x08, 0, 0, 0, 0x02, 0x00, 0x01, 0], &inner);
        bytes.extend_from_slice(&[0; 6]); // outer Ethernet padding is not part of the inner frame
        let (d, got) = decap_bytes(&bytes, TunnelProtocol::Vxlan).unwrap();
        assert_eq!(got, inner);
        assert_eq!(d.identity.get(), 0x02_0001);
        assert_eq!(d.outer_src, Addr::from(Ipv4Addr::from(NODE_A)));
    }

    #[test]
    fn vxlan_vni_zero_is_the_unknown_identity() {
        let bytes = outer_frame(8472, &[0x08, 0, 0, 0, 0, 0, 0, 0], &inner_frame());
        let (d, _) = decap_bytes(&bytes, TunnelProtocol::Vxlan).unwrap();
        assert_eq!(d.identity, Identity::UNKNOWN);
    }

    #[test]
    fn vxlan_frame_without_the_i_flag_is_invalid() {
        let bytes = outer_frame(8472, &[0x00, 0, 0, 0, 0x02, 0x00, 0x01, 0], &inner_frame());
        assert_eq!(
            decap_bytes(&bytes, TunnelProtocol::Vxlan),
            Err(DropReason::InvalidHeader)
        );
    }

    #[test]
    fn geneve_frame_with_an_option_decaps() {
        let inner = inner_frame();
        let header = [
            0x02, 0x00, 0x65, 0x58, 0x03, 0x00, 0x07,
            0x00, // 2 words of options, VNI 0x030007
            0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe,
            0xef, // non-critical option, 1 word of data
        ];
        let bytes = outer_frame(6081, &header, &inner);
        let (d, got) = decap_bytes(&bytes, TunnelProtocol::Geneve).unwrap();
        assert_eq!((got, d.identity.get()), (inner, 0x03_0007));
        let mut critical = header;
        critical[10] |= 0x80;
        let bytes = outer_frame(6081, &critical, &inner_frame());
        assert_eq!(
            decap_bytes(&bytes, TunnelProtocol::Geneve),
            Err(DropReason::UnsupportedProtocol)
        );
    }

    #[test]
    fn too_short_for_an_inner_ethernet_header_is_invalid() {
        let bytes = outer_frame(8472, &[0x08, 0, 0, 0, 0, 0, 1, 0], &[0; 13]);
        assert_eq!(
            decap_bytes(&bytes, TunnelProtocol::Vxlan),
            Err(DropReason::InvalidHeader)
        );
        let tcp = inner_frame(); // not UDP
        let mut buf = tcp.clone();
        let mut frame = Frame::new(&mut buf, 0, tcp.len(), PortId(0)).unwrap();
        let mut outer = parse(&tcp).unwrap();
        outer.l4 = L4::Tcp(Default::default());
        assert_eq!(
            decap(&mut frame, &outer, TunnelProtocol::Vxlan),
            Err(DropReason::UnsupportedProtocol)
        );
    }

    #[test]
    fn encap_without_headroom_fails_and_leaves_the_frame() {
        let inner = inner_frame();
        let mut buf = inner.clone();
        let mut frame = Frame::new(&mut buf, 0, inner.len(), PortId(0)).unwrap();
        let enc = encapsulation(TunnelProtocol::Vxlan, 7, false);
        assert_eq!(encap(&mut frame, &enc, 1), Err(DropReason::NoHeadroom));
        assert_eq!(frame.data(), &inner[..]);
    }

    #[test]
    fn source_port_stays_in_linux_range() {
        assert_eq!(source_port(0), 32768);
        assert_eq!(source_port(u32::MAX), 60999);
        assert_ne!(source_port(0x8000_0000), source_port(0x8100_0000));
    }

    fn encapsulation(protocol: TunnelProtocol, vni: u32, v6: bool) -> Encapsulation {
        let (src, dst) = if v6 {
            (
                Addr::from("fd00::a".parse::<Ipv6Addr>().unwrap()),
                Addr::from("fd00::b".parse::<Ipv6Addr>().unwrap()),
            )
        } else {
            (Ipv4Addr::from(NODE_A).into(), Ipv4Addr::from(NODE_B).into())
        };
        Encapsulation {
            protocol,
            vni: Identity::new(vni).unwrap(),
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 1, 2],
            src,
            dst,
            ttl: 64,
        }
    }

    fn protocol() -> impl Strategy<Value = TunnelProtocol> {
        prop_oneof![Just(TunnelProtocol::Vxlan), Just(TunnelProtocol::Geneve)]
    }

    fn addresses() -> impl Strategy<Value = (Addr, Addr)> {
        prop_oneof![
            (any::<u32>(), any::<u32>())
                .prop_map(|(s, d)| (Addr::from_v4_bits(s), Addr::from_v4_bits(d))),
            // Skip the IPv4-mapped range: those are IPv4 addresses in this representation.
            (any::<u128>(), any::<u128>()).prop_map(|(s, d)| (
                Addr::from_v6_bits(s | 1 << 127),
                Addr::from_v6_bits(d | 1 << 127)
            )),
        ]
    }

    proptest! {
        #[test]
        fn encap_then_decap_gives_back_the_inner_frame(
            inner in proptest::collection::vec(any::<u8>(), 14..300),
            protocol in protocol(),
            vni in 0u32..=Identity::MAX,
            (src, dst) in addresses(),
            ttl in 1u8..,
            hash in any::<u32>(),
        ) {
            let mut buf = vec![0u8; HEADROOM + inner.len()];
            buf[HEADROOM..].copy_from_slice(&inner);
            let mut frame = Frame::new(&mut buf, HEADROOM, inner.len(), PortId(0)).unwrap();
            let enc = Encapsulation { src, dst, ttl, ..encapsulation(protocol, vni, false) };
            encap(&mut frame, &enc, hash).unwrap();

            let outer = parse(frame.data()).unwrap();
            prop_assert_eq!(outer.tunnel_port(), Some(protocol.port()));
            prop_assert_eq!((outer.flow.src, outer.flow.dst, outer.ttl), (src, dst, ttl));
            prop_assert!((32768..=60999).contains(&outer.flow.src_port));
            check_outer_checksums(frame.data(), src.is_ipv4());

            let d = decap(&mut frame, &outer, protocol).unwrap();
            prop_assert_eq!(frame.data(), &inner[..]);
            prop_assert_eq!((d.identity.get(), d.outer_src), (vni, src));
            prop_assert_eq!(frame.headroom(), HEADROOM);
        }

        #[test]
        fn decap_never_panics_on_mutated_tunnel_frames(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            protocol in protocol(),
        ) {
            let mut bytes = outer_frame(protocol.port(), &[0x08, 0, 0x65, 0x58, 0, 0, 1, 0], &inner_frame());
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            if let Ok((_, inner)) = decap_bytes(&bytes, protocol) {
                prop_assert!(inner.len() >= ETHERNET_LEN);
            }
        }
    }

    /// Checks the outer IPv4 header checksum, and the UDP checksum over IPv6, with etherparse.
    fn check_outer_checksums(bytes: &[u8], v4: bool) {
        let packet = etherparse::SlicedPacket::from_ethernet(bytes).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP")
        };
        match packet.net {
            Some(etherparse::NetSlice::Ipv4(ip)) if v4 => {
                let header = ip.header().to_header();
                assert_eq!(header.header_checksum, header.calc_header_checksum());
                assert!(header.dont_fragment);
                assert_eq!(udp.checksum(), 0);
            }
            Some(etherparse::NetSlice::Ipv6(ip)) if !v4 => {
                let header = ip.header().to_header();
                let expected = udp
                    .to_header()
                    .calc_checksum_ipv6(&header, udp.payload())
                    .unwrap();
                assert_eq!(udp.checksum(), expected);
            }
            other => panic!("unexpected outer IP: {other:?}"),
        }
    }
}
