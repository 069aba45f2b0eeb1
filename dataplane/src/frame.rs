//! A frame as the pipeline sees it: bytes in a buffer it does not own, with room in front for tunnel
//! headers and room behind for nothing (frames only shrink or grow at the front).
//!
//! The AF_XDP layer maps a UMEM chunk into this shape; tests and benchmarks use a plain `Vec<u8>`.

/// Bytes reserved in front of a received frame so that encapsulation never copies.
/// VXLAN over IPv6 needs 70 bytes and Geneve with options more; 256 matches XDP's own headroom.
pub const HEADROOM: usize = 256;

/// Which port of this node a frame came in on or goes out of: the uplink or a pod-facing veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// A frame in a buffer: `buf[head..tail]` is the frame, `buf[..head]` is free headroom.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    head: usize,
    tail: usize,
    port: PortId,
}

impl<'a> Frame<'a> {
    /// A frame of `len` bytes at `buf[head..head + len]`, received on `port`.
    /// Returns `None` if the range does not lie inside `buf`.
    pub fn new(buf: &'a mut [u8], head: usize, len: usize, port: PortId) -> Option<Self> {
        let tail = head.checked_add(len)?;
        (tail <= buf.len()).then_some(Frame {
            buf,
            head,
            tail,
            port,
        })
    }

    /// The port the frame arrived on.
    pub fn port(&self) -> PortId {
        self.port
    }

    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Offset of the frame's first byte in the underlying buffer.
    pub fn head(&self) -> usize {
        self.head
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.tail]
    }

    /// Grows the frame by `n` bytes at the front (for tunnel headers); `None` if the headroom is short.
    pub fn push_front(&mut self, n: usize) -> Option<&mut [u8]> {
        let head = self.head.checked_sub(n)?;
        self.head = head;
        Some(&mut self.buf[head..self.tail])
    }

    /// Removes `n` bytes from the front (tunnel decapsulation); `None` if the frame is shorter.
    pub fn pull_front(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.len() {
            return None;
        }
        self.head += n;
        Some(&mut self.buf[self.head..self.tail])
    }

    /// Room behind the frame that [`Frame::set_len`] may grow into.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.tail
    }

    /// Sets the frame's length, growing into the tailroom or shrinking; `None` if it does not fit.
    /// Bytes gained at the end are whatever the buffer held: the caller writes them.
    pub fn set_len(&mut self, len: usize) -> Option<&mut [u8]> {
        let tail = self.head.checked_add(len)?;
        if tail > self.buf.len() {
            return None;
        }
        self.tail = tail;
        Some(&mut self.buf[self.head..tail])
    }

    /// Cuts the frame to `len` bytes (drops Ethernet padding behind the IP packet).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.tail = self.head + len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_move_the_head_within_the_buffer() {
        let mut buf = vec![0u8; 16];
        buf[8..12].copy_from_slice(&[1, 2, 3, 4]);
        let mut frame = Frame::new(&mut buf, 8, 4, PortId(3)).unwrap();
        assert_eq!(frame.data(), &[1, 2, 3, 4]);
        frame
            .push_front(2)
            .unwrap()
            .copy_from_slice(&[9, 9, 1, 2, 3, 4]);
        assert_eq!((frame.headroom(), frame.len()), (6, 6));
        assert!(frame.push_front(7).is_none(), "more than the headroom");
        assert_eq!(frame.pull_front(5).unwrap(), &[4]);
        assert!(frame.pull_front(2).is_none(), "more than the frame");
        assert_eq!(frame.port(), PortId(3));
        assert_eq!(frame.tailroom(), 4);
        assert_eq!(frame.set_len(5).unwrap(), &[4, 0, 0, 0, 0]);
        assert!(frame.set_len(6).is_none(), "more than the tailroom");
    }

    #[test]
    fn new_rejects_a_range_outside_the_buffer() {
        let mut buf = vec![0u8; 8];
        assert!(Frame::new(&mut buf, 4, 5, PortId(0)).is_none());
        assert!(Frame::new(&mut buf, usize::MAX, 2, PortId(0)).is_none());
    }
}
