//! The IPv6 fixed header (RFC 8200): read and rewritten in place like [`super::ipv4`]. It has no
//! checksum of its own; its addresses enter the transport checksums through the pseudo-header.

use super::Error;

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

pub const HEADER_LEN: usize = 40;
/// The smallest MTU every IPv6 link carries: an ICMPv6 error never exceeds it (RFC 4443 §2.4).
pub const MIN_MTU: usize = 1280;

/// An IPv6 packet over a byte buffer that holds at least the fixed header.
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
        super::check_len("IPv6", packet.buffer.as_ref().len(), HEADER_LEN)?;
        if packet.buffer.as_ref()[0] >> 4 != 6 {
            return Err(Error::Malformed { header: "IPv6" });
        }
        Ok(packet)
    }

    pub fn payload_len(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::PAYLOAD_LEN.start)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> u128 {
        u128::from_be_bytes(super::array(&self.buffer.as_ref()[field::SRC]))
    }

    pub fn dst(&self) -> u128 {
        u128::from_be_bytes(super::array(&self.buffer.as_ref()[field::DST]))
    }

    /// The bytes after the fixed header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src(&mut self, src: u128) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&src.to_be_bytes());
    }

    pub fn set_dst(&mut self, dst: u128) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&dst.to_be_bytes());
    }

    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_payload_len(&mut self, len: u16) {
        super::write16(self.buffer.as_mut(), field::PAYLOAD_LEN.start, len);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A fixed header as this node writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: u128,
    pub dst: u128,
    pub next_header: u8,
    pub payload_len: u16,
    pub hop_limit: u8,
    /// The low 20 bits label the flow (RFC 6437).
    pub flow_label: u32,
}

impl Repr {
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let bytes = packet.buffer.as_mut();
        super::write32(
            bytes,
            field::VER_TC_FLOW.start,
            6 << 28 | (self.flow_label & 0x000f_ffff),
        );
        super::write16(bytes, field::PAYLOAD_LEN.start, self.payload_len);
        bytes[field::NEXT_HEADER] = self.next_header;
        bytes[field::HOP_LIMIT] = self.hop_limit;
        packet.set_src(self.src);
        packet.set_dst(self.dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emit_then_read_matches_etherparse() {
        let mut bytes = [0u8; 40];
        let repr = Repr {
            src: 0xfd00_0000_0000_0000_0000_0000_0000_0001,
            dst: 0xfd00_0000_0000_0000_0000_0000_0000_0002,
            next_header: 58,
            payload_len: 48,
            hop_limit: 64,
            flow_label: 0x1_2345,
        };
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        let (parsed, _) = etherparse::Ipv6Header::from_slice(&bytes).unwrap();
        assert_eq!(parsed.payload_length, 48);
        assert_eq!(parsed.hop_limit, 64);
        assert_eq!(parsed.flow_label.value(), 0x1_2345);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((packet.src(), packet.dst()), (repr.src, repr.dst));
        assert_eq!(packet.next_header(), 58);
    }

    #[test]
    fn rejects_short_buffers_and_other_versions() {
        assert!(Packet::new_checked(&[0x60u8; 39][..]).is_err());
        assert!(Packet::new_checked(&[0x40u8; 40][..]).is_err());
    }

    proptest! {
        #[test]
        fn new_checked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.payload(), packet.src(), packet.dst(), packet.payload_len());
            }
        }
    }
}
