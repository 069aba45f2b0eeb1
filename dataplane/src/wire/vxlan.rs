//! The VXLAN header (RFC 7348), as Cilium uses it on UDP 8472: the 24-bit VNI carries the sender's
//! security identity. Read by decapsulation, written by encapsulation.

use super::{read_vni, write_vni, Error};

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

/// The length of a VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

/// A VXLAN header over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without a length check; getters may then panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view over a buffer long enough for the header.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                header: "VXLAN",
                len,
                needed: HEADER_LEN,
            });
        }
        Ok(())
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        read_vni([
            b[field::VNI.start],
            b[field::VNI.start + 1],
            b[field::VNI.start + 2],
        ])
    }

    /// The bytes after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags and zeroes the reserved bytes around them.
    pub fn set_flags(&mut self, flags: u8) {
        let b = self.buffer.as_mut();
        b[field::FLAGS] = flags;
        b[1..4].fill(0);
    }

    /// Sets the VNI (its low 24 bits) and zeroes the reserved byte after it.
    pub fn set_vni(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[field::VNI].copy_from_slice(&write_vni(vni));
        b[field::VNI.end] = 0;
    }
}

/// What a VXLAN header says: the VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
}

impl Repr {
    /// Reads a checked header; a header without the I flag carries no VNI and is rejected.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        let flags = packet.flags();
        if flags & FLAG_VNI == 0 {
            return Err(Error::VxlanNoVni { flags });
        }
        Ok(Repr { vni: packet.vni() })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into a checked packet.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_VNI);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7348 §5: flags 0x08, 24 reserved bits, VNI, 8 reserved bits.
    #[test]
    fn reads_the_rfc_layout() {
        let bytes = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xaa];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Ok(Repr { vni: 0x12_3456 }));
        assert_eq!(packet.payload(), &[0xaa]);
    }

    #[test]
    fn rejects_a_header_without_the_i_flag() {
        let bytes = [0x00, 0, 0, 0, 0x12, 0x34, 0x56, 0];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::VxlanNoVni { flags: 0 }));
    }

    #[test]
    fn rejects_a_short_buffer() {
        assert!(matches!(
            Packet::new_checked(&[0x08u8; 7][..]),
            Err(Error::Truncated {
                len: 7,
                needed: 8,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(vni in 0u32..=0xff_ffff, junk in any::<[u8; 8]>()) {
            let mut bytes = junk;
            let mut packet = Packet::new_checked(&mut bytes[..]).unwrap();
            Repr { vni }.emit(&mut packet);
            prop_assert_eq!(Repr::parse(&packet), Ok(Repr { vni }));
            prop_assert_eq!(bytes, {
                let mut expected = [0x08, 0, 0, 0, 0, 0, 0, 0];
                expected[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
                expected
            });
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
            }
        }
    }
}
