//! Datagrams a worker originates: WireGuard messages that answer no frame of the batch (handshake
//! initiations and keepalives from the timers, packets boringtun held until a handshake completed).
//! Preallocated once; a full outbox drops the newest and counts it.

use crate::PortId;

/// How many datagrams wait for the worker's next turn at most.
pub const OUTBOX_FRAMES: usize = 64;
/// Room for one datagram: a pod MTU's packet with its tunnel, WireGuard and outer headers.
pub const OUTBOX_FRAME_LEN: usize = 2048;

#[derive(Debug)]
pub struct Outbox {
    buffers: Vec<Box<[u8]>>,
    queued: Vec<(PortId, usize)>,
    /// Datagrams dropped because the outbox was full.
    pub overflowed: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            buffers: (0..OUTBOX_FRAMES)
                .map(|_| vec![0u8; OUTBOX_FRAME_LEN].into_boxed_slice())
                .collect(),
            queued: Vec::with_capacity(OUTBOX_FRAMES),
            overflowed: 0,
        }
    }
}

impl Outbox {
    /// Lets `write` fill the next free buffer; it returns the datagram's length, or `None` to keep
    /// the buffer free. Counts an overflow when none is free.
    pub fn push(&mut self, port: PortId, write: impl FnOnce(&mut [u8]) -> Option<usize>) {
        let Some(buffer) = self.buffers.get_mut(self.queued.len()) else {
            self.overflowed += 1;
            return;
        };
        if let Some(len) = write(buffer) {
            self.queued.push((port, len.min(OUTBOX_FRAME_LEN)));
        }
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Hands every queued datagram to `send` in order, and empties the outbox.
    pub fn drain(&mut self, mut send: impl FnMut(PortId, &[u8])) {
        for (i, &(port, len)) in self.queued.iter().enumerate() {
            send(port, &self.buffers[i][..len]);
        }
        self.queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_in_order_and_counts_what_did_not_fit() {
        let mut outbox = Outbox::default();
        for i in 0..OUTBOX_FRAMES + 3 {
            outbox.push(PortId(1), |buf| {
                buf[0] = i as u8;
                Some(1)
            });
        }
        outbox.push(PortId(1), |_| None);
        assert_eq!((outbox.len(), outbox.overflowed), (OUTBOX_FRAMES, 4));
        let mut seen = Vec::new();
        outbox.drain(|port, bytes| seen.push((port, bytes[0])));
        assert_eq!(seen.len(), OUTBOX_FRAMES);
        assert_eq!(seen[5], (PortId(1), 5));
        assert!(outbox.is_empty());
    }
}
