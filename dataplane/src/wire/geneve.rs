//! The Geneve header (RFC 8926), as Cilium uses it on UDP 6081: the 24-bit VNI carries the sender's
//! security identity and the payload is an Ethernet frame. Read by decapsulation, written by
//! encapsulation. Options are skipped by length; none is understood, so a critical one is refused.

use super::{read_vni, write_vni, Error};

mod field {
    use core::ops::Range;
    pub const VER_OPT_LEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: Range<usize> = 2..4;
    pub const VNI: Range<usize> = 4..7;
    pub const OPTIONS: usize = 8;
}

/// The length of the fixed part of a Geneve header.
pub const HEADER_LEN: usize = 8;
/// Protocol type for an Ethernet payload ("Transparent Ethernet Bridging").
pub const PROTOCOL_ETHERNET: u16 = 0x6558;
const FLAG_OAM: u8 = 0x80;
const FLAG_CRITICAL: u8 = 0x40;
/// In an option's type byte: the receiver must understand the option or drop the packet.
const OPTION_CRITICAL: u8 = 0x80;
const OPTION_HEADER_LEN: usize = 4;

/// A Geneve header, options included, over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without a length check; getters may then panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view over a buffer long enough for the fixed header and the options it announces.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated {
                header: "Geneve",
                len,
                needed: HEADER_LEN,
            });
        }
        let needed = self.header_len();
        if len < needed {
            return Err(Error::Truncated {
                header: "Geneve",
                len,
                needed,
            });
        }
        Ok(())
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] >> 6
    }

    /// The options' length in bytes (the field counts 4-byte words).
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPT_LEN] & 0x3f) * 4
    }

    /// The header's length including options: where the inner frame starts.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }

    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }

    pub fn protocol(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::PROTOCOL.start], b[field::PROTOCOL.start + 1]])
    }

    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        read_vni([
            b[field::VNI.start],
            b[field::VNI.start + 1],
            b[field::VNI.start + 2],
        ])
    }

    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 0 and the options' length in bytes (a multiple of 4, at most 252).
    pub fn set_options_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_OPT_LEN] = ((len / 4) & 0x3f) as u8;
    }

    /// Sets the O and C flags and clears the reserved bits.
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        let flags = if oam { FLAG_OAM } else { 0 } | if critical { FLAG_CRITICAL } else { 0 };
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    pub fn set_protocol(&mut self, protocol: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&protocol.to_be_bytes());
    }

    /// Sets the VNI (its low 24 bits) and zeroes the reserved byte after it.
    pub fn set_vni(&mut self, vni: u32) {
        let b = self.buffer.as_mut();
        b[field::VNI].copy_from_slice(&write_vni(vni));
        b[field::VNI.end] = 0;
    }
}

/// What a Geneve header says that the dataplane acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
    pub oam: bool,
    /// Bytes of options between the fixed header and the inner frame.
    pub options_len: usize,
}

impl Repr {
    /// Reads a checked header: version 0, an Ethernet payload, well-formed options, none critical.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        let version = packet.version();
        if version != 0 {
            return Err(Error::GeneveVersion { version });
        }
        let protocol = packet.protocol();
        if protocol != PROTOCOL_ETHERNET {
            return Err(Error::GeneveProtocol { protocol });
        }
        check_options(packet.options())?;
        Ok(Repr {
            vni: packet.vni(),
            oam: packet.oam(),
            options_len: packet.options_len(),
        })
    }

    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len
    }

    /// Writes the fixed header into a checked packet; the caller writes `options_len` bytes of options.
    /// The C flag is never set: this dataplane sends no critical options.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_options_len(self.options_len);
        packet.set_flags(self.oam, false);
        packet.set_protocol(PROTOCOL_ETHERNET);
        packet.set_vni(self.vni);
    }
}

/// Walks the options by their lengths. No option is known here, so a critical one is refused; the
/// header's C flag is only a hint that one is present (RFC 8926 §3.5) and the walk is the authority.
fn check_options(options: &[u8]) -> Result<(), Error> {
    let mut offset = 0;
    while let Some(header) = options.get(offset..offset + OPTION_HEADER_LEN) {
        let (class, kind, len) = match *header {
            [c0, c1, kind, len] => (
                u16::from_be_bytes([c0, c1]),
                kind,
                usize::from(len & 0x1f) * 4,
            ),
            _ => {
                return Err(Error::GeneveOptionLength {
                    offset,
                    options_len: options.len(),
                })
            }
        };
        offset += OPTION_HEADER_LEN + len;
        if offset > options.len() {
            return Err(Error::GeneveOptionLength {
                offset,
                options_len: options.len(),
            });
        }
        if kind & OPTION_CRITICAL != 0 {
            return Err(Error::GeneveCriticalOption { class, kind });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A header with one 8-byte option (class 0x0102, type 0x03, 4 bytes of data), VNI 0x020001.
    const WITH_OPTION: [u8; 17] = [
        0x02, 0x00, 0x65, 0x58, 0x02, 0x00, 0x01, 0x00, // fixed header, opt len 2 words
        0x01, 0x02, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef, // option, length 1 word
        0xaa, // inner frame
    ];

    #[test]
    fn skips_an_option_by_length() {
        let packet = Packet::new_checked(&WITH_OPTION[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr {
                vni: 0x02_0001,
                oam: false,
                options_len: 8
            }
        );
        assert_eq!(packet.payload(), &[0xaa]);
    }

    #[test]
    fn refuses_a_critical_option() {
        let mut bytes = WITH_OPTION;
        bytes[1] = FLAG_CRITICAL;
        bytes[10] |= OPTION_CRITICAL;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::GeneveCriticalOption {
                class: 0x0102,
                kind: 0x83
            })
        );
    }

    #[test]
    fn refuses_an_option_longer_than_the_options() {
        let mut bytes = WITH_OPTION;
        bytes[11] = 2;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(matches!(
            Repr::parse(&packet),
            Err(Error::GeneveOptionLength { .. })
        ));
    }

    #[test]
    fn refuses_other_versions_and_payloads() {
        let mut bytes = WITH_OPTION;
        bytes[0] |= 0x40;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::GeneveVersion { version: 1 })
        );
        let mut bytes = WITH_OPTION;
        bytes[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::GeneveProtocol { protocol: 0x0800 })
        );
    }

    #[test]
    fn refuses_options_past_the_buffer() {
        assert!(matches!(
            Packet::new_checked(&WITH_OPTION[..12]),
            Err(Error::Truncated {
                len: 12,
                needed: 16,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn emit_then_parse_round_trips(vni in 0u32..=0xff_ffff, oam in any::<bool>(), junk in any::<[u8; 8]>()) {
            let mut bytes = junk;
            // The junk may announce options the buffer lacks: emit over an unchecked view, then check.
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            let repr = Repr { vni, oam, options_len: 0 };
            repr.emit(&mut packet);
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet), Ok(repr));
            prop_assert_eq!(bytes[7], 0);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                if let Ok(repr) = Repr::parse(&packet) {
                    prop_assert!(repr.header_len() <= bytes.len());
                }
            }
        }
    }
}
