//! Address translation in place: service DNAT on a flow's way out and reverse NAT on its replies.
//!
//! Stage 5 decides (with [`crate::service`] and [`crate::conntrack`]) what to translate to; this module
//! rewrites the bytes: the address, the port, and the IP and transport checksums, updated incrementally
//! (RFC 1624) rather than recomputed over the payload. Only TCP and UDP are translated: services are
//! TCP or UDP frontends.

use crate::flow::proto;
use crate::parse::{Parsed, L3};
use crate::wire::checksum;
use crate::{Addr, DropReason};

/// Which end of the flow to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The source: reverse NAT of a reply.
    Source,
    /// The destination: DNAT of a service flow.
    Destination,
}

const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV6_SRC: usize = 8;

/// Rewrites one end of a parsed TCP or UDP packet to `addr:port`. The address must be of the packet's
/// family: a service whose backend is of another family is refused here, not mistranslated.
pub fn rewrite(
    frame: &mut [u8],
    parsed: &Parsed,
    end: End,
    addr: Addr,
    port: u16,
) -> Result<(), DropReason> {
    let l4_checksum_at = match parsed.flow.proto {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    let (old_addr, old_port) = match end {
        End::Source => (parsed.flow.src, parsed.flow.src_port),
        End::Destination => (parsed.flow.dst, parsed.flow.dst_port),
    };
    let changed = match parsed.l3 {
        L3::Ipv4 => rewrite_ipv4(frame, parsed.l3_offset, end, old_addr, addr)?,
        L3::Ipv6 => rewrite_ipv6(frame, parsed.l3_offset, end, old_addr, addr)?,
        L3::Arp(_) => return Err(DropReason::UnsupportedProtocol),
    };
    let l4 = parsed.l4_offset;
    let port_at = l4 + if end == End::Source { 0 } else { 2 };
    put16(frame, port_at, port)?;
    let old = get16(frame, l4 + l4_checksum_at)?;
    // An IPv4 UDP checksum of zero means "none": it stays none.
    if parsed.flow.proto == proto::UDP && old == 0 && parsed.l3 == L3::Ipv4 {
        return Ok(());
    }
    let mut sum = changed.update(old);
    sum = checksum::update16(sum, old_port, port);
    if parsed.flow.proto == proto::UDP {
        sum = checksum::udp_nonzero(sum);
    }
    put16(frame, l4 + l4_checksum_at, sum)
}

/// An address that changed, for the transport checksum's pseudo-header.
enum AddrChange {
    V4(u32, u32),
    V6(u128, u128),
}

impl AddrChange {
    fn update(&self, sum: u16) -> u16 {
        match *self {
            AddrChange::V4(old, new) => checksum::update32(sum, old, new),
            AddrChange::V6(old, new) => checksum::update128(sum, old, new),
        }
    }
}

fn rewrite_ipv4(
    frame: &mut [u8],
    l3: usize,
    end: End,
    old: Addr,
    new: Addr,
) -> Result<AddrChange, DropReason> {
    let (old, new) = match (old.v4_bits(), new.v4_bits()) {
        (Some(old), Some(new)) => (old, new),
        _ => return Err(DropReason::NoRoute),
    };
    let at = l3 + IPV4_SRC + if end == End::Source { 0 } else { 4 };
    put32(frame, at, new)?;
    let header_sum = get16(frame, l3 + IPV4_CHECKSUM)?;
    put16(
        frame,
        l3 + IPV4_CHECKSUM,
        checksum::update32(header_sum, old, new),
    )?;
    Ok(AddrChange::V4(old, new))
}

fn rewrite_ipv6(
    frame: &mut [u8],
    l3: usize,
    end: End,
    old: Addr,
    new: Addr,
) -> Result<AddrChange, DropReason> {
    if old.is_ipv4() || new.is_ipv4() {
        return Err(DropReason::NoRoute);
    }
    let (old, new) = (old.bits(), new.bits());
    let at = l3 + IPV6_SRC + if end == End::Source { 0 } else { 16 };
    frame
        .get_mut(at..at + 16)
        .ok_or(DropReason::InvalidHeader)?
        .copy_from_slice(&new.to_be_bytes());
    Ok(AddrChange::V6(old, new))
}

fn get16(frame: &[u8], at: usize) -> Result<u16, DropReason> {
    match frame.get(at..at + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(DropReason::InvalidHeader),
    }
}

fn put16(frame: &mut [u8], at: usize, value: u16) -> Result<(), DropReason> {
    let bytes = frame.get_mut(at..at + 2).ok_or(DropReason::InvalidHeader)?;
    bytes.copy_from_slice(&value.to_be_bytes());
    Ok(())
}

fn put32(frame: &mut [u8], at: usize, value: u32) -> Result<(), DropReason> {
    let bytes = frame.get_mut(at..at + 4).ok_or(DropReason::InvalidHeader)?;
    bytes.copy_from_slice(&value.to_be_bytes());
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
    fn refuses_another_family_and_non_tcp_udp() {
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
            .icmpv4_echo_request(1, 1)
            .write(&mut icmp, b"ping")
            .unwrap();
        let parsed = parse(&icmp).unwrap();
        let v4 = Addr::from(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(
            rewrite(&mut icmp, &parsed, End::Destination, v4, 0),
            Err(DropReason::UnsupportedProtocol)
        );
    }
}
