//! Address translation in place: service DNAT on a flow's way out and reverse NAT on its replies, and
//! masquerading (SNAT to the node's address) of pod traffic leaving the mesh and its replies.
//!
//! The pipeline decides (with [`crate::service`], [`crate::masquerade`] and [`crate::conntrack`]) what
//! to translate to; this module rewrites the bytes through the [`crate::wire`] views: the address, the
//! port (an ICMP echo's identifier), and the IP and transport checksums, updated incrementally (RFC 1624)
//! rather than recomputed over the payload.

use crate::flow::proto;
use crate::parse::{IcmpKind, Parsed, L3, L4};
use crate::wire::{checksum, icmp, ipv4, ipv6, tcp, udp};
use crate::{Addr, DropReason};

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The source: reverse NAT of a service reply, masquerading of a flow leaving the mesh.
    Source,
    /// The destination: DNAT of a service flow, reverse masquerading of a reply.
    Destination,
}

/// Rewrites one end of a parsed TCP, UDP or ICMP echo packet to `addr:port` (for an echo, `port` is its
/// identifier). The address must be of the packet's family: a service whose backend is of another
/// family is refused here, not mistranslated.
pub fn rewrite(
    frame: &mut [u8],
    parsed: &Parsed,
    end: End,
    addr: Addr,
    port: u16,
) -> Result<(), DropReason> {
    if !translatable(parsed) {
        return Err(DropReason::UnsupportedProtocol);
    }
    let l3 = frame
        .get_mut(parsed.l3_offset..)
        .ok_or(DropReason::InvalidHeader)?;
    let change = rewrite_address(l3, parsed.l3, end, addr)?;
    let l4 = frame
        .get_mut(parsed.l4_offset..)
        .ok_or(DropReason::InvalidHeader)?;
    rewrite_port(l4, parsed, end, port, change)
}

/// TCP, UDP and ICMP echoes have ports (identifiers) to translate; nothing else does.
pub fn translatable(parsed: &Parsed) -> bool {
    match parsed.l4 {
        L4::Tcp(_) | L4::Udp => true,
        L4::Icmp(kind) => matches!(kind, IcmpKind::EchoRequest | IcmpKind::EchoReply),
        L4::None => false,
    }
}

/// An address that changed, for the transport checksum's pseudo-header.
#[derive(Clone, Copy)]
pub(crate) enum AddrChange {
    V4(u32, u32),
    V6(u128, u128),
}

impl AddrChange {
    pub(crate) fn update(self, sum: u16) -> u16 {
        match self {
            AddrChange::V4(old, new) => checksum::update32(sum, old, new),
            AddrChange::V6(old, new) => checksum::update128(sum, old, new),
        }
    }
}

/// Rewrites the source or destination of the IP header at the start of `l3`.
pub(crate) fn rewrite_address(
    l3: &mut [u8],
    family: L3,
    end: End,
    addr: Addr,
) -> Result<AddrChange, DropReason> {
    match family {
        L3::Ipv4 => {
            let new = addr.v4_bits().ok_or(DropReason::NoRoute)?;
            let mut ip = ipv4::Packet::new_checked(l3).map_err(DropReason::from)?;
            let old = match end {
                End::Source => ip.src(),
                End::Destination => ip.dst(),
            };
            match end {
                End::Source => ip.set_src(new),
                End::Destination => ip.set_dst(new),
            }
            Ok(AddrChange::V4(old, new))
        }
        L3::Ipv6 => {
            if addr.is_ipv4() {
                return Err(DropReason::NoRoute);
            }
            let new = addr.bits();
            let mut ip = ipv6::Packet::new_checked(l3).map_err(DropReason::from)?;
            let old = match end {
                End::Source => ip.src(),
                End::Destination => ip.dst(),
            };
            match end {
                End::Source => ip.set_src(new),
                End::Destination => ip.set_dst(new),
            }
            Ok(AddrChange::V6(old, new))
        }
        L3::Arp(_) => Err(DropReason::UnsupportedProtocol),
    }
}

fn rewrite_port(
    l4: &mut [u8],
    parsed: &Parsed,
    end: End,
    port: u16,
    change: AddrChange,
) -> Result<(), DropReason> {
    let source = end == End::Source;
    match parsed.flow.proto {
        proto::TCP => {
            let mut tcp = tcp::Packet::new_checked(l4).map_err(DropReason::from)?;
            tcp.update_checksum(|sum| change.update(sum));
            if source {
                tcp.set_src_port(port)
            } else {
                tcp.set_dst_port(port)
            }
        }
        proto::UDP => {
            let mut udp = udp::Packet::new_checked(l4).map_err(DropReason::from)?;
            udp.update_checksum(|sum| change.update(sum));
            if source {
                udp.set_src_port(port)
            } else {
                udp.set_dst_port(port)
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let mut icmp = icmp::Packet::new_checked(l4).map_err(DropReason::from)?;
            // Only ICMPv6 sums a pseudo-header.
            if parsed.l3 == L3::Ipv6 {
                icmp.update_checksum(|sum| change.update(sum));
            }
            icmp.set_echo_ident(port);
        }
        _ => return Err(DropReason::UnsupportedProtocol),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn frame(v6: bool, udp: bool, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v6 {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut out = Vec::new();
        if udp {
            ip.udp(1000, 2000).write(&mut out, payload).unwrap();
        } else {
            ip.tcp(1000, 2000, 7, 512).write(&mut out, payload).unwrap();
        }
        out
    }

    /// Recomputes the transport checksum and compares it with the one in the frame.
    fn checksums_hold(bytes: &[u8]) -> bool {
        let sliced = SlicedPacket::from_ethernet(bytes).unwrap();
        let ip = sliced.net.unwrap();
        let ip_ok = match &ip {
            etherparse::NetSlice::Ipv4(v4) => {
                let h = v4.header().to_header();
                h.header_checksum == h.calc_header_checksum()
            }
            _ => true,
        };
        let transport_ok = match (&ip, sliced.transport.unwrap()) {
            (etherparse::NetSlice::Ipv4(v4), TransportSlice::Tcp(t)) => {
                let h = v4.header().to_header();
                t.checksum() == t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap()
            }
            (etherparse::NetSlice::Ipv6(v6), TransportSlice::Tcp(t)) => {
                let h = v6.header().to_header();
                t.checksum() == t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap()
            }
            (etherparse::NetSlice::Ipv4(v4), TransportSlice::Udp(u)) => {
                let h = v4.header().to_header();
                u.checksum() == u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap()
            }
            (etherparse::NetSlice::Ipv6(v6), TransportSlice::Udp(u)) => {
                let h = v6.header().to_header();
                u.checksum() == u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap()
            }
            _ => false,
        };
        ip_ok && transport_ok
    }

    proptest! {
        #[test]
        fn rewrites_keep_every_checksum_right(
            v6 in any::<bool>(),
            udp in any::<bool>(),
            source in any::<bool>(),
            addr in any::<u128>(),
            port in any::<u16>(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = frame(v6, udp, &payload);
            let parsed = parse(&bytes).unwrap();
            let new = if v6 {
                Addr::from(Ipv6Addr::from(addr | 1 << 127))
            } else {
                Addr::from(Ipv4Addr::from(addr as u32))
            };
            let end = if source { End::Source } else { End::Destination };
            rewrite(&mut bytes, &parsed, end, new, port).unwrap();
            let after = parse(&bytes).unwrap();
            let (got_addr, got_port) = match end {
                End::Source => (after.flow.src, after.flow.src_port),
                End::Destination => (after.flow.dst, after.flow.dst_port),
            };
            prop_assert_eq!((got_addr, got_port), (new, port));
            prop_assert!(checksums_hold(&bytes));
        }
    }

    #[test]
    fn refuses_another_family_and_what_has_no_ports() {
        let mut bytes = frame(false, false, b"x");
        let parsed = parse(&bytes).unwrap();
        let v6 = Addr::from("fd00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            rewrite(&mut bytes, &parsed, End::Destination, v6, 80),
            Err(DropReason::NoRoute)
        );
        let mut icmp = Vec::new();
        PacketBuilder::ethernet2([2; 6], [3; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4(etherparse::Icmpv4Type::TimestampRequest(
                etherparse::icmpv4::TimestampMessage::from_bytes([0; 16]),
            ))
            .write(&mut icmp, b"")
            .unwrap();
        let parsed = parse(&icmp).unwrap();
        let v4 = Addr::from(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(
            rewrite(&mut icmp, &parsed, End::Destination, v4, 0),
            Err(DropReason::UnsupportedProtocol)
        );
    }

    #[test]
    fn echo_identifiers_are_translated_with_their_checksums() {
        for v6 in [false, true] {
            let eth = PacketBuilder::ethernet2([2; 6], [3; 6]);
            let mut bytes = Vec::new();
            if v6 {
                eth.ipv6([0xfd; 16], [0x20; 16], 64)
                    .icmpv6_echo_request(7, 1)
                    .write(&mut bytes, b"ping")
                    .unwrap();
            } else {
                eth.ipv4([100, 64, 1, 10], [203, 0, 113, 10], 64)
                    .icmpv4_echo_request(7, 1)
                    .write(&mut bytes, b"ping")
                    .unwrap();
            }
            let parsed = parse(&bytes).unwrap();
            let node = if v6 {
                Addr::from("2001:db8::1".parse::<Ipv6Addr>().unwrap())
            } else {
                Addr::from(Ipv4Addr::new(198, 18, 1, 1))
            };
            rewrite(&mut bytes, &parsed, End::Source, node, 61234).unwrap();
            let after = parse(&bytes).unwrap();
            assert_eq!((after.flow.src, after.flow.src_port), (node, 61234));
            let sliced = SlicedPacket::from_ethernet(&bytes).unwrap();
            match (sliced.net.unwrap(), sliced.transport.unwrap()) {
                (etherparse::NetSlice::Ipv4(ip), TransportSlice::Icmpv4(icmp)) => {
                    let h = ip.header().to_header();
                    assert_eq!(h.header_checksum, h.calc_header_checksum());
                    let want = icmp.icmp_type().calc_checksum(icmp.payload());
                    assert_eq!(icmp.checksum(), want);
                }
                (etherparse::NetSlice::Ipv6(ip), TransportSlice::Icmpv6(icmp)) => {
                    let h = ip.header();
                    let want = icmp
                        .icmp_type()
                        .calc_checksum(h.source(), h.destination(), icmp.payload())
                        .unwrap();
                    assert_eq!(icmp.checksum(), want);
                }
                other => panic!("not an echo: {other:?}"),
            }
        }
    }
}
