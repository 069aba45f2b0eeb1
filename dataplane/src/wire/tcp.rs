//! The TCP header (RFC 9293), as far as the node rewrites it: ports, with the checksum updated in place.

use super::{checksum, Error};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Range<usize> = 16..18;
}

pub const HEADER_LEN: usize = 20;
/// Where the checksum sits, for code that completes or verifies transport checksums generically.
pub const CHECKSUM_AT: usize = field::CHECKSUM.start;

/// A TCP header over a byte buffer that holds at least its fixed part.
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
        super::check_len("TCP", packet.buffer.as_ref().len(), HEADER_LEN)?;
        Ok(packet)
    }

    pub fn src_port(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    pub fn dst_port(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn checksum(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, port: u16) {
        let old = self.src_port();
        super::write16(self.buffer.as_mut(), field::SRC_PORT.start, port);
        self.update_checksum(|sum| checksum::update16(sum, old, port));
    }

    pub fn set_dst_port(&mut self, port: u16) {
        let old = self.dst_port();
        super::write16(self.buffer.as_mut(), field::DST_PORT.start, port);
        self.update_checksum(|sum| checksum::update16(sum, old, port));
    }

    pub fn set_checksum(&mut self, sum: u16) {
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Applies an incremental update (an address of the pseudo-header changed).
    pub fn update_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let sum = update(self.checksum());
        self.set_checksum(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rewrites_keep_the_checksum_right() {
        let ip =
            etherparse::Ipv4Header::new(24, 64, etherparse::IpNumber::TCP, [1; 4], [2; 4]).unwrap();
        let mut tcp = etherparse::TcpHeader::new(40000, 80, 7, 1024);
        tcp.syn = true;
        tcp.checksum = tcp.calc_checksum_ipv4(&ip, b"four").unwrap();
        let mut bytes = tcp.to_bytes().to_vec();
        let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_src_port(61001);
        packet.set_dst_port(8080);
        let mut expected = etherparse::TcpHeader::new(61001, 8080, 7, 1024);
        expected.syn = true;
        assert_eq!(
            packet.checksum(),
            expected.calc_checksum_ipv4(&ip, b"four").unwrap()
        );
        assert_eq!(packet.flags(), 0x02);
    }
}
