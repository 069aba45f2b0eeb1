//! The IPv4 header (RFC 791): read by the pipeline's rewrites, written in place by NAT, TTL decrement,
//! tunnel encapsulation and the ICMP errors the node sends back. The header checksum is kept right by
//! every setter that changes a covered field (RFC 1624), so no caller recomputes it.

use super::{checksum, Error};

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// The length of a header without options.
pub const HEADER_LEN: usize = 20;
const FLAG_DONT_FRAGMENT: u16 = 0x4000;

/// An IPv4 packet over a byte buffer that holds at least its whole header.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view over a buffer holding a version 4 header with its options.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        super::check_len("IPv4", len, HEADER_LEN)?;
        if self.buffer.as_ref()[field::VER_IHL] >> 4 != 4 || self.header_len() < HEADER_LEN {
            return Err(Error::Malformed { header: "IPv4" });
        }
        super::check_len("IPv4", len, self.header_len())
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn dont_fragment(&self) -> bool {
        super::read16(self.buffer.as_ref(), field::FLG_OFF.start) & FLAG_DONT_FRAGMENT != 0
    }

    /// More fragments follow, or this is a later fragment: the payload is not the whole datagram.
    pub fn is_fragment(&self) -> bool {
        super::read16(self.buffer.as_ref(), field::FLG_OFF.start) & 0x3fff != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn src(&self) -> u32 {
        super::read32(self.buffer.as_ref(), field::SRC.start)
    }

    pub fn dst(&self) -> u32 {
        super::read32(self.buffer.as_ref(), field::DST.start)
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }

    /// The bytes after the header (up to the end of the buffer, not of `total_len`).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source address, keeping the header checksum right.
    pub fn set_src(&mut self, src: u32) {
        let old = self.src();
        super::write32(self.buffer.as_mut(), field::SRC.start, src);
        self.update_checksum32(old, src);
    }

    /// Sets the destination address, keeping the header checksum right.
    pub fn set_dst(&mut self, dst: u32) {
        let old = self.dst();
        super::write32(self.buffer.as_mut(), field::DST.start, dst);
        self.update_checksum32(old, dst);
    }

    /// Sets the TTL, keeping the header checksum right (TTL shares a word with the protocol).
    pub fn set_ttl(&mut self, ttl: u8) {
        let protocol = u16::from(self.protocol());
        let old = u16::from(self.ttl()) << 8 | protocol;
        self.buffer.as_mut()[field::TTL] = ttl;
        let sum = checksum::update16(self.checksum(), old, u16::from(ttl) << 8 | protocol);
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Sets the total length, keeping the header checksum right.
    pub fn set_total_len(&mut self, len: u16) {
        let old = self.total_len();
        super::write16(self.buffer.as_mut(), field::LENGTH.start, len);
        let sum = checksum::update16(self.checksum(), old, len);
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        let len = self.header_len();
        let bytes = self.buffer.as_mut();
        bytes[field::CHECKSUM].fill(0);
        let sum = checksum::finish(checksum::data(&bytes[..len]));
        super::write16(bytes, field::CHECKSUM.start, sum);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[len..]
    }

    fn update_checksum32(&mut self, old: u32, new: u32) {
        let sum = checksum::update32(self.checksum(), old, new);
        super::write16(self.buffer.as_mut(), field::CHECKSUM.start, sum);
    }
}

/// A header without options, as this node writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: u32,
    pub dst: u32,
    pub protocol: u8,
    pub payload_len: u16,
    pub ttl: u8,
}

impl Repr {
    /// Writes the header (DF set, identification 0 as RFC 6864 allows for atomic datagrams) with its
    /// checksum into the first `HEADER_LEN` bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let bytes = packet.buffer.as_mut();
        bytes[field::VER_IHL] = 0x45;
        bytes[1] = 0;
        let total = self.payload_len.saturating_add(HEADER_LEN as u16);
        super::write16(bytes, field::LENGTH.start, total);
        super::write16(bytes, field::IDENT.start, 0);
        super::write16(bytes, field::FLG_OFF.start, FLAG_DONT_FRAGMENT);
        bytes[field::TTL] = self.ttl;
        bytes[field::PROTOCOL] = self.protocol;
        super::write32(bytes, field::SRC.start, self.src);
        super::write32(bytes, field::DST.start, self.dst);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(ttl: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut header =
            etherparse::Ipv4Header::new(100, ttl, etherparse::IpNumber::TCP, src, dst).unwrap();
        header.header_checksum = header.calc_header_checksum();
        header.to_bytes().to_vec()
    }

    #[test]
    fn reads_what_etherparse_wrote() {
        let bytes = header(64, [10, 0, 0, 1], [10, 0, 0, 2]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 120);
        assert_eq!((packet.ttl(), packet.protocol()), (64, 6));
        assert_eq!(packet.src(), 0x0a00_0001);
        assert_eq!(packet.dst(), 0x0a00_0002);
        assert!(packet.dont_fragment());
        assert!(packet.verify_checksum());
    }

    #[test]
    fn rejects_short_buffers_bad_versions_and_short_ihl() {
        assert!(Packet::new_checked(&[0x45u8; 19][..]).is_err());
        let mut bytes = header(64, [1, 1, 1, 1], [2, 2, 2, 2]);
        bytes[0] = 0x65;
        assert!(Packet::new_checked(&bytes[..]).is_err());
        bytes[0] = 0x44;
        assert!(Packet::new_checked(&bytes[..]).is_err());
        bytes[0] = 0x46;
        assert!(
            Packet::new_checked(&bytes[..]).is_err(),
            "options past the buffer"
        );
    }

    #[test]
    fn emit_writes_a_header_etherparse_accepts() {
        let mut bytes = [0u8; 20];
        let repr = Repr {
            src: 0xc612_0101,
            dst: 0x6440_010a,
            protocol: 1,
            payload_len: 36,
            ttl: 64,
        };
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        let (parsed, _) = etherparse::Ipv4Header::from_slice(&bytes).unwrap();
        assert_eq!(parsed.total_len, 56);
        assert_eq!(parsed.header_checksum, parsed.calc_header_checksum());
        assert!(parsed.dont_fragment);
    }

    proptest! {
        #[test]
        fn setters_keep_the_checksum_right(
            ttl in any::<u8>(), src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            new_src in any::<u32>(), new_dst in any::<u32>(), new_ttl in any::<u8>(), len in 20u16..,
        ) {
            let mut bytes = header(ttl, src, dst);
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            packet.set_src(new_src);
            packet.set_dst(new_dst);
            packet.set_ttl(new_ttl);
            packet.set_total_len(len);
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!((packet.src(), packet.dst(), packet.ttl(), packet.total_len()),
                (new_src, new_dst, new_ttl, len));
        }

        #[test]
        fn new_checked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.payload(), packet.verify_checksum(), packet.dont_fragment());
            }
        }
    }
}
