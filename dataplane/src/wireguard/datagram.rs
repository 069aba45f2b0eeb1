//! The outer headers of a WireGuard datagram: Ethernet, IPv4 or IPv6, and UDP from and to port 51871,
//! written in front of a message already in place.

use super::PORT;
use crate::wire::{checksum, ethernet, ipv4, ipv6, udp};
use crate::{Addr, DropReason};

const UDP: u8 = 17;
/// As Linux sends WireGuard's datagrams.
const TTL: u8 = 64;

/// Who a datagram goes from and to, on the link and on the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ends {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// This node's underlay address, of the same family as `dst`.
    pub src: Addr,
    pub dst: Addr,
}

/// The length of the headers in front of the message: Ethernet, IP and UDP.
pub const fn header_len(ipv4: bool) -> usize {
    let ip = if ipv4 {
        ipv4::HEADER_LEN
    } else {
        ipv6::HEADER_LEN
    };
    ethernet::HEADER_LEN + ip + udp::HEADER_LEN
}

/// Writes the headers into `out[..header_len]` for the `message_len` bytes that follow them; returns
/// the datagram's whole length on the wire.
pub fn write(out: &mut [u8], ends: &Ends, message_len: usize) -> Result<usize, DropReason> {
    let ipv4 = ends.dst.is_ipv4();
    if ends.src.is_ipv4() != ipv4 {
        return Err(DropReason::NoRoute);
    }
    let headers = header_len(ipv4);
    let total = headers + message_len;
    let udp_len =
        u16::try_from(udp::HEADER_LEN + message_len).map_err(|_| DropReason::FrameTooBig)?;
    let out = out.get_mut(..total).ok_or(DropReason::NoHeadroom)?;
    let mut eth = ethernet::Frame::new_unchecked(&mut *out);
    eth.set_dst(ends.dst_mac);
    eth.set_src(ends.src_mac);
    let l3 = &mut out[ethernet::HEADER_LEN..];
    let l4_at = match (ends.src.v4_bits(), ends.dst.v4_bits()) {
        (Some(src), Some(dst)) => {
            let repr = ipv4::Repr {
                src,
                dst,
                protocol: UDP,
                payload_len: udp_len,
                ttl: TTL,
            };
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut *l3));
            ipv4::HEADER_LEN
        }
        _ => {
            let repr = ipv6::Repr {
                src: ends.src.bits(),
                dst: ends.dst.bits(),
                next_header: UDP,
                payload_len: udp_len,
                hop_limit: TTL,
                flow_label: 0,
            };
            repr.emit(&mut ipv6::Packet::new_unchecked(&mut *l3));
            ipv6::HEADER_LEN
        }
    };
    let ethertype = if ipv4 {
        ethernet::ETHERTYPE_IPV4
    } else {
        ethernet::ETHERTYPE_IPV6
    };
    ethernet::Frame::new_unchecked(&mut *out).set_ethertype(ethertype);
    let l4 = &mut out[ethernet::HEADER_LEN + l4_at..];
    let mut datagram = udp::Packet::new_unchecked(&mut *l4);
    datagram.set_checksum(0);
    datagram.set_len(udp_len);
    datagram.set_src_port(PORT);
    datagram.set_dst_port(PORT);
    if !ipv4 {
        // RFC 8200 requires a UDP checksum over IPv6; over IPv4 zero says "none".
        let sum = checksum::combine(&[
            checksum::pseudo_header_v6(
                ends.src.bits().to_be_bytes(),
                ends.dst.bits().to_be_bytes(),
                UDP,
                u32::from(udp_len),
            ),
            checksum::data(&l4[..usize::from(udp_len)]),
        ]);
        udp::Packet::new_unchecked(l4).set_checksum(checksum::udp_nonzero(checksum::finish(sum)));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ends(src: Addr, dst: Addr) -> Ends {
        Ends {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src,
            dst,
        }
    }

    #[test]
    fn an_ipv4_datagram_parses_as_udp_51871_with_the_message_behind() {
        let src = Addr::from(Ipv4Addr::new(198, 18, 1, 1));
        let dst = Addr::from(Ipv4Addr::new(198, 18, 2, 1));
        let mut out = vec![0u8; 200];
        let at = header_len(true);
        out[at..at + 5].copy_from_slice(b"hello");
        let len = write(&mut out, &ends(src, dst), 5).unwrap();
        let packet = SlicedPacket::from_ethernet(&out[..len]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(198, 18, 2, 1));
        let Some(TransportSlice::Udp(udp)) = packet.transport else {
            panic!("not UDP")
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (PORT, PORT));
        assert_eq!(udp.payload(), b"hello");
    }

    #[test]
    fn an_ipv6_datagram_carries_a_valid_checksum() {
        let src = Addr::from("fd00::1".parse::<Ipv6Addr>().unwrap());
        let dst = Addr::from("fd00::2".parse::<Ipv6Addr>().unwrap());
        let mut out = vec![0u8; 200];
        let at = header_len(false);
        out[at..at + 3].copy_from_slice(b"abc");
        let len = write(&mut out, &ends(src, dst), 3).unwrap();
        let packet = SlicedPacket::from_ethernet(&out[..len]).unwrap();
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(udp))) =
            (packet.net, packet.transport)
        else {
            panic!("not IPv6/UDP")
        };
        let expected = udp
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), expected);
    }

    #[test]
    fn mixed_families_and_short_buffers_are_refused() {
        let v4 = Addr::from(Ipv4Addr::new(198, 18, 1, 1));
        let v6 = Addr::from("fd00::2".parse::<Ipv6Addr>().unwrap());
        let mut out = vec![0u8; 200];
        assert_eq!(write(&mut out, &ends(v4, v6), 3), Err(DropReason::NoRoute));
        assert_eq!(
            write(&mut out, &ends(v4, v4), 190),
            Err(DropReason::NoHeadroom)
        );
    }
}
