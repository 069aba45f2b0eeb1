//! Where the timed frames sit: a ring of UMEM-sized chunks as large as the agent's UMEM (4096 chunks
//! of 2048 bytes, 8 MiB), each burst staged in the next 64 chunks as a receive ring would hand them
//! over. A frame is therefore as cold as the ring makes it, never one of a few hot slots.

use arrayvec::ArrayVec;
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::{Frame, PortId};

/// Frames per burst: what a worker takes from one port's rx ring at a time.
pub const BURST: usize = 64;
/// The agent worker's UMEM: chunks and their size.
pub const UMEM_CHUNKS: usize = 4096;
pub const CHUNK: usize = 2048;
const _: () = assert!(UMEM_CHUNKS % BURST == 0, "a burst never wraps the ring");

pub struct Ring {
    umem: Vec<u8>,
    /// The first chunk of the burst staged last.
    base: usize,
    lens: [usize; BURST],
    ports: [PortId; BURST],
}

impl Ring {
    pub fn new() -> Ring {
        Ring {
            umem: vec![0; UMEM_CHUNKS * CHUNK],
            base: UMEM_CHUNKS - BURST,
            lens: [0; BURST],
            ports: [PortId(0); BURST],
        }
    }

    /// Copies up to a burst of `frames` into the ring's next chunks, as the NIC would; returns how
    /// many. A frame longer than a chunk leaves is cut (the benchmark's frames are 60–110 bytes).
    pub fn stage<'a>(&mut self, frames: impl Iterator<Item = (PortId, &'a [u8])>) -> usize {
        self.base = (self.base + BURST) % UMEM_CHUNKS;
        let start = self.base * CHUNK;
        let chunks = self.umem[start..start + BURST * CHUNK].chunks_mut(CHUNK);
        let mut n = 0;
        for ((chunk, (port, bytes)), (len, p)) in chunks
            .zip(frames)
            .zip(self.lens.iter_mut().zip(self.ports.iter_mut()))
        {
            let room = &mut chunk[HEADROOM..];
            let take = bytes.len().min(room.len());
            room[..take].copy_from_slice(&bytes[..take]);
            *len = take;
            *p = port;
            n += 1;
        }
        n
    }

    /// The `n` frames staged last.
    pub fn frames(&mut self, n: usize) -> ArrayVec<Frame<'_>, BURST> {
        let start = self.base * CHUNK;
        self.umem[start..start + BURST * CHUNK]
            .chunks_mut(CHUNK)
            .zip(self.lens.iter().zip(&self.ports))
            .take(n)
            .filter_map(|(chunk, (len, port))| Frame::new(chunk, HEADROOM, *len, *port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_burst_takes_the_next_chunks_round_the_whole_ring() {
        let mut ring = Ring::new();
        let mut bases = Vec::new();
        for round in 0..UMEM_CHUNKS / BURST + 1 {
            let bytes = [round as u8; 60];
            let n = ring.stage((0..BURST).map(|_| (PortId(3), &bytes[..])));
            assert_eq!(n, BURST);
            bases.push(ring.base);
            let frames = ring.frames(n);
            assert_eq!(frames.len(), BURST);
            assert!(frames
                .iter()
                .all(|f| f.data() == bytes && f.port() == PortId(3)));
        }
        assert_eq!(bases[0], 0);
        assert_eq!(bases[1], BURST);
        assert_eq!(bases[UMEM_CHUNKS / BURST], 0, "the ring wraps after a UMEM");
    }

    #[test]
    fn a_short_burst_stages_what_it_has() {
        let mut ring = Ring::new();
        let bytes = [1u8; 60];
        assert_eq!(ring.stage((0..5).map(|_| (PortId(1), &bytes[..]))), 5);
        assert_eq!(ring.frames(5).len(), 5);
    }
}
