//! Byte-level views of the headers etherparse does not parse: the tunnel headers (VXLAN, Geneve) read
//! by decapsulation and written by encapsulation, and the Internet checksum every rewrite needs.
//!
//! Each view follows one shape: `Packet<T: AsRef<[u8]>>` over bytes it does not own, `new_checked`
//! checks the length once, getters read straight from the buffer, setters need `T: AsMut<[u8]>`, and a
//! `Repr` holds the decoded meaning with `parse` and `emit`.

pub mod checksum;
pub mod geneve;
pub mod vxlan;

use crate::DropReason;

/// Why a tunnel header was rejected, naming the header and what was wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{header} header: {len} bytes, needs {needed}")]
    Truncated {
        header: &'static str,
        len: usize,
        needed: usize,
    },
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
