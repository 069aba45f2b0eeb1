//! Byte-level views of the headers the node reads and rewrites in place: Ethernet, IPv4, IPv6, UDP, TCP
//! and ICMP for NAT, hop limits, encapsulation and the ICMP errors the node sends; the tunnel headers
//! (VXLAN, Geneve) that etherparse does not parse; and the Internet checksum every rewrite needs.
//! Parsing a received frame once, into what later stages need, is [`crate::parse`]'s job (with
//! etherparse); these views are for writing, and for reading what a rewrite touches.
//!
//! Each view follows one shape: `Packet<T: AsRef<[u8]>>` over bytes it does not own, `new_checked`
//! checks the length once, getters read straight from the buffer, setters need `T: AsMut<[u8]>`, and a
//! `Repr` holds the decoded meaning with `parse` and `emit`.

pub mod checksum;
pub mod ethernet;
pub mod geneve;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

use crate::DropReason;

/// Why a header was rejected, naming the header and what was wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{header} header: {len} bytes, needs {needed}")]
    Truncated {
        header: &'static str,
        len: usize,
        needed: usize,
    },
    #[error("{header} header: malformed (version or header length)")]
    Malformed { header: &'static str },
    #[error("VXLAN header: flags {flags:#04x} lack the I (valid VNI) bit")]
    VxlanNoVni { flags: u8 },
    #[error("Geneve header: version {version}, only 0 is defined")]
    GeneveVersion { version: u8 },
    #[error("Geneve header: protocol type {protocol:#06x}, only Ethernet (0x6558) is carried")]
    GeneveProtocol { protocol: u16 },
    #[error("Geneve option at byte {offset}: length runs past the options ({options_len} bytes)")]
    GeneveOptionLength { offset: usize, options_len: usize },
    #[error("Geneve option class {class:#06x} type {kind:#04x}: critical and unknown")]
    GeneveCriticalOption { class: u16, kind: u8 },
}

impl From<Error> for DropReason {
    fn from(err: Error) -> Self {
        match err {
            Error::GeneveProtocol { .. } | Error::GeneveCriticalOption { .. } => {
                DropReason::UnsupportedProtocol
            }
            _ => DropReason::InvalidHeader,
        }
    }
}

/// A 24-bit VNI is stored in the top three bytes of a 32-bit big-endian word.
fn read_vni(bytes: [u8; 3]) -> u32 {
    u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])
}

fn write_vni(vni: u32) -> [u8; 3] {
    let [_, a, b, c] = vni.to_be_bytes();
    [a, b, c]
}

fn check_len(header: &'static str, len: usize, needed: usize) -> Result<(), Error> {
    if len < needed {
        return Err(Error::Truncated {
            header,
            len,
            needed,
        });
    }
    Ok(())
}

/// Reads `N` bytes of a range the caller's view has length-checked.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn read16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(&bytes[at..at + 2]))
}

fn read32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(&bytes[at..at + 4]))
}

fn write16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn write32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}
