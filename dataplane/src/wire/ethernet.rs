//! The Ethernet II header: the MACs every routed frame is re-addressed with, and the ethertype.

use super::Error;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// An Ethernet II header over a byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let frame = Frame::new_unchecked(buffer);
        super::check_len("Ethernet", frame.buffer.as_ref().len(), HEADER_LEN)?;
        Ok(frame)
    }

    pub fn dst(&self) -> [u8; 6] {
        super::array(&self.buffer.as_ref()[field::DST])
    }

    pub fn src(&self) -> [u8; 6] {
        super::array(&self.buffer.as_ref()[field::SRC])
    }

    pub fn ethertype(&self) -> u16 {
        super::read16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    pub fn set_ethertype(&mut self, ethertype: u16) {
        super::write16(self.buffer.as_mut(), field::ETHERTYPE.start, ethertype);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_header() {
        let mut bytes = [0u8; 15];
        let mut frame = Frame::new_checked(&mut bytes[..]).unwrap();
        frame.set_dst([1, 2, 3, 4, 5, 6]);
        frame.set_src([7, 8, 9, 10, 11, 12]);
        frame.set_ethertype(ETHERTYPE_IPV6);
        assert_eq!(frame.dst(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(frame.src(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(frame.ethertype(), ETHERTYPE_IPV6);
        assert_eq!(frame.payload().len(), 1);
        assert_eq!(&bytes[12..14], &[0x86, 0xdd]);
    }

    #[test]
    fn rejects_a_short_buffer() {
        assert!(Frame::new_checked(&[0u8; 13][..]).is_err());
    }
}
