//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages share their first eight bytes: type, code, checksum,
//! and four bytes whose meaning the type gives (an echo's identifier and sequence, a "fragmentation
//! needed" next-hop MTU, a "packet too big" MTU). The node reads errors to match them to the flow they
//! quote, rewrites echo identifiers when it masquerades, and writes the errors it sends itself.

use super::{checksum, Error};

mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    /// ICMPv4 "fragmentation needed": the next-hop MTU in the low half of the rest.
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = 8;

/// Message types of both families the node treats specially.
pub mod kind {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACHABLE: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAMETER_PROBLEM: u8 = 12;
    /// Code of `V4_DEST_UNREACHABLE`: the datagram needed fragmenting but had DF set.
    pub const V4_CODE_FRAGMENTATION_NEEDED: u8 = 4;
    pub const V6_DEST_UNREACHABLE: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAMETER_PROBLEM: u8 = 4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
}

/// Whether a message of `msg_type` is an error that quotes the packet which caused it.
pub const fn is_error(msg_type: u8, ipv6: bool) -> bool {
    if ipv6 {
        matches!(
            msg_type,
            kind::V6_DEST_UNREACHABLE
                | kind::V6_PACKET_TOO_BIG
                | kind::V6_TIME_EXCEEDED
                | kind::V6_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            msg_type,
            kind::V4_DEST_UNREACHABLE | kind::V4_TIME_EXCEEDED | kind::V4_PARAMETER_PROBLEM
        )
    }
}

/// An ICMP or ICMPv6 message over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Packet::new_unchecked(buffer);
        super::check_len("ICMP", packet.buffer.as_ref().len(), HEADER_LEN)?;
        Ok(packet)
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// An echo request's or reply's identifier.
    pub fn echo_ident(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    /// What follows the header: an error's quoted packet, an echo's data.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets an echo's identifier, keeping the checksum right.
    pub fn set_echo_ident(&mut self, ident: u16) {
        let old = self.echo_ident();
        super::write16(self.buffer.as_mut(), field::ECHO_IDENT.start, ident);
        let sum = checksum::update16(self.checksum(), old, ident);
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Applies an incremental update (ICMPv6: an address of the pseudo-header changed).
    pub fn update_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let sum = update(self.checksum());
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Writes an ICMPv4 "fragmentation needed" header announcing `mtu`; fill the checksum after the
    /// quoted packet is in place.
    pub fn set_fragmentation_needed(&mut self, mtu: u16) {
        let bytes = self.buffer.as_mut();
        bytes[field::TYPE] = kind::V4_DEST_UNREACHABLE;
        bytes[field::CODE] = kind::V4_CODE_FRAGMENTATION_NEEDED;
        bytes[field::REST].fill(0);
        super::write16(bytes, field::NEXT_HOP_MTU.start, mtu);
    }

    /// Writes an ICMPv6 "packet too big" header announcing `mtu`.
    pub fn set_packet_too_big(&mut self, mtu: u32) {
        let bytes = self.buffer.as_mut();
        bytes[field::TYPE] = kind::V6_PACKET_TOO_BIG;
        bytes[field::CODE] = 0;
        super::write32(bytes, field::REST.start, mtu);
    }

    /// ICMPv4's checksum covers the message alone.
    pub fn fill_checksum_v4(&mut self) {
        let bytes = self.buffer.as_mut();
        bytes[field::CHECKSUM].fill(0);
        let sum = checksum::finish(checksum::data(bytes));
        super::write16(bytes, field::CHECKSUM.start, sum);
    }

    /// ICMPv6's checksum covers the pseudo-header too (RFC 4443 §2.3).
    pub fn fill_checksum_v6(&mut self, src: u128, dst: u128) {
        let bytes = self.buffer.as_mut();
        bytes[field::CHECKSUM].fill(0);
        let len = bytes.len() as u32;
        let sum = checksum::combine(&[
            checksum::pseudo_header_v6(src.to_be_bytes(), dst.to_be_bytes(), 58, len),
            checksum::data(bytes),
        ]);
        super::write16(bytes, field::CHECKSUM.start, checksum::finish(sum));
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type};

    #[test]
    fn echo_ident_rewrite_keeps_the_checksum_right() {
        let header = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 7, seq: 1 }),
            b"ping",
        );
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(b"ping");
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_echo_ident(61234);
        let expected = Icmpv4Header::with_checksum(
            Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 61234, seq: 1 }),
            b"ping",
        );
        assert_eq!(packet.checksum(), expected.checksum);
        assert_eq!(packet.echo_ident(), 61234);
    }

    #[test]
    fn fragmentation_needed_is_what_etherparse_reads() {
        let mut bytes = vec![0u8; 8 + 28];
        bytes[8] = 0x45;
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_fragmentation_needed(1450);
        packet.fill_checksum_v4();
        let (header, rest) = Icmpv4Header::from_slice(&bytes).unwrap();
        assert_eq!(
            header.icmp_type,
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1450
                }
            )
        );
        assert_eq!(header.checksum, header.icmp_type.calc_checksum(rest));
    }

    #[test]
    fn packet_too_big_checksum_matches_etherparse() {
        let (src, dst) = (1u128, 2u128);
        let mut bytes = vec![0u8; 8 + 40];
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_packet_too_big(1430);
        packet.fill_checksum_v6(src, dst);
        let (header, rest) = Icmpv6Header::from_slice(&bytes).unwrap();
        assert_eq!(header.icmp_type, Icmpv6Type::PacketTooBig { mtu: 1430 });
        let expected = header
            .icmp_type
            .calc_checksum(src.to_be_bytes(), dst.to_be_bytes(), rest)
            .unwrap();
        assert_eq!(header.checksum, expected);
    }

    #[test]
    fn errors_are_told_from_queries() {
        assert!(is_error(kind::V4_DEST_UNREACHABLE, false));
        assert!(is_error(kind::V4_TIME_EXCEEDED, false));
        assert!(!is_error(kind::V4_ECHO_REQUEST, false));
        assert!(is_error(kind::V6_PACKET_TOO_BIG, true));
        assert!(!is_error(kind::V6_ECHO_REPLY, true));
        assert!(
            !is_error(kind::V4_PARAMETER_PROBLEM, true),
            "12 is no ICMPv6 error"
        );
    }
}
