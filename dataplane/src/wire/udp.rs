//! The UDP header (RFC 768): ports and checksum rewritten in place by NAT, length by encapsulation.
//! An IPv4 UDP checksum of zero means "none" and stays none through every rewrite.

use super::{checksum, Error};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = 8;
/// Where the checksum sits, for code that completes or verifies transport checksums generically.
pub const CHECKSUM_AT: usize = field::CHECKSUM.start;

/// A UDP header over a byte buffer.
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
        super::check_len("UDP", packet.buffer.as_ref().len(), HEADER_LEN)?;
        Ok(packet)
    }

    pub fn src_port(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// The length field: header and payload, in bytes.
    #[allow(clippy::len_without_is_empty)] // a header field, not a collection
    pub fn len(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn checksum(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port, updating a present checksum.
    pub fn set_src_port(&mut self, port: u16) {
        let old = self.src_port();
        super::write16(self.buffer.as_mut(), field::SRC_PORT.start, port);
        self.update_checksum(|sum| checksum::update16(sum, old, port));
    }

    /// Sets the destination port, updating a present checksum.
    pub fn set_dst_port(&mut self, port: u16) {
        let old = self.dst_port();
        super::write16(self.buffer.as_mut(), field::DST_PORT.start, port);
        self.update_checksum(|sum| checksum::update16(sum, old, port));
    }

    pub fn set_len(&mut self, len: u16) {
        super::write16(self.buffer.as_mut(), field::LENGTH.start, len);
    }

    pub fn set_checksum(&mut self, sum: u16) {
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Applies an incremental update (an address of the pseudo-header changed) to a present checksum;
    /// a result of zero is sent as 0xffff, since zero means "none".
    pub fn update_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let old = self.checksum();
        if old != 0 {
            self.set_checksum(checksum::udp_nonzero(update(old)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rewrites_keep_the_checksum_right_and_none_stays_none() {
        let ip =
            etherparse::Ipv4Header::new(13, 64, etherparse::IpNumber::UDP, [1; 4], [2; 4]).unwrap();
        let udp = etherparse::UdpHeader::with_ipv4_checksum(1000, 53, &ip, b"hello").unwrap();
        let mut bytes = udp.to_bytes().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_src_port(61000);
        packet.set_dst_port(5353);
        let expected = etherparse::UdpHeader::with_ipv4_checksum(61000, 5353, &ip, b"hello")
            .unwrap()
            .checksum;
        assert_eq!(packet.checksum(), expected);
        packet.set_checksum(0);
        packet.set_src_port(1);
        assert_eq!(packet.checksum(), 0);
        assert_eq!(packet.len(), 13);
    }
}
