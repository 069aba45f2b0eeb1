//! A traffic port for benchmarks: one AF_XDP socket on a UMEM of its own that transmits frames it
//! writes itself (a generator) and receives frames only to look at them (a sink). It stands outside the
//! packet path, at both of its ends: the frames it sends enter a node, the frames it receives left one.
//!
//! A [`super::Worker`] only ever transmits what it received, so it cannot originate traffic; this port
//! can. It is built on the same [`super::sys`] UMEM and socket as the workers: half the UMEM sits on
//! the fill ring, the other half is lent out for frames to transmit and comes back on completion.

use std::os::fd::{AsFd, BorrowedFd};

use arrayvec::ArrayVec;

use super::sys::{BindOptions, Umem, Xsk};
use super::{AfXdpError, BURST, RX_OFFSET};
use crate::PortId;

/// The one port of a traffic port's UMEM.
const PORT: PortId = PortId(0);

/// One AF_XDP socket (copy mode, need_wakeup) with its own UMEM, for generating and sinking traffic.
pub struct TrafficPort {
    // Declared before `umem` so the socket closes before the UMEM is unmapped.
    xsk: Xsk,
    umem: Umem,
    /// Frames transmitted whose chunks the kernel has not completed yet.
    in_flight: usize,
}

impl TrafficPort {
    /// Binds a socket on (`ifindex`, `queue`) in the calling thread's namespace, with `ring_size`
    /// slots (a power of two, at least one burst) per ring.
    pub fn bind(ifindex: u32, queue: u32, ring_size: u32) -> Result<TrafficPort, AfXdpError> {
        if !ring_size.is_power_of_two() || ring_size < BURST as u32 {
            return Err(AfXdpError::RingSize(ring_size));
        }
        let chunks = ring_size * 2;
        let mut umem = Umem::new(chunks).map_err(|source| AfXdpError::Umem { chunks, source })?;
        let options = BindOptions {
            ifindex,
            queue,
            ring_size,
            copy: true,
        };
        let mut xsk = Xsk::bind(&umem, None, options).map_err(|source| AfXdpError::Bind {
            ifindex,
            queue,
            shared: false,
            source,
        })?;
        umem.fill(&mut xsk, PORT);
        Ok(TrafficPort {
            xsk,
            umem,
            in_flight: 0,
        })
    }

    /// Transmits up to `max` frames (at most one burst), each written by `write` into a chunk-sized
    /// buffer that returns its length (0 stops early). Returns how many were queued; fewer than asked
    /// when the tx ring or the free chunks run out.
    pub fn send(&mut self, max: usize, mut write: impl FnMut(&mut [u8]) -> usize) -> usize {
        self.reclaim();
        let mut sent = 0;
        while sent < max.min(BURST) {
            let Some((base, chunk)) = self.umem.lend() else {
                break;
            };
            let room = chunk.len() - RX_OFFSET;
            let len = write(&mut chunk[RX_OFFSET..]);
            if len == 0 || len > room {
                self.umem.recycle(base);
                break;
            }
            let addr = base + RX_OFFSET as u64;
            if !self
                .umem
                .transmit(&mut self.xsk, PORT, base, addr, len as u32)
            {
                break;
            }
            sent += 1;
        }
        self.in_flight += sent;
        self.xsk.flush_tx();
        sent
    }

    /// Receives up to one burst, showing each frame to `look`, and gives the chunks back to the kernel.
    /// Returns how many frames arrived.
    pub fn receive(&mut self, mut look: impl FnMut(&[u8])) -> usize {
        let mut bases = ArrayVec::<u64, BURST>::new();
        let mut frames = ArrayVec::new();
        self.umem
            .receive(&mut self.xsk, PORT, &mut bases, &mut frames);
        let n = frames.len();
        for frame in &frames {
            look(frame.data());
        }
        drop(frames);
        for base in bases {
            self.umem.recycle(base);
        }
        self.umem.fill(&mut self.xsk, PORT);
        if self.xsk.fill_needs_wakeup() {
            self.xsk.kick_rx();
        }
        n
    }

    /// Frames queued for transmit that the kernel has not completed yet.
    pub fn tx_in_flight(&mut self) -> usize {
        self.reclaim();
        self.in_flight
    }

    fn reclaim(&mut self) {
        let done = self.umem.complete(&mut self.xsk, PORT);
        self.in_flight = self.in_flight.saturating_sub(done);
    }
}

impl AsFd for TrafficPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.xsk.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_size_that_is_not_a_power_of_two_is_refused() {
        assert!(matches!(
            TrafficPort::bind(1, 0, 100),
            Err(AfXdpError::RingSize(100))
        ));
        assert!(matches!(
            TrafficPort::bind(1, 0, 16),
            Err(AfXdpError::RingSize(16))
        ));
    }

    /// As root: frames sent on one end of a veth pair in a private namespace arrive at the other.
    #[test]
    fn sent_frames_reach_the_peer_and_their_chunks_come_back() {
        if !meshpath_testkit::needs_root("sent_frames_reach_the_peer_and_their_chunks_come_back") {
            return;
        }
        let arrived = std::thread::spawn(|| {
            // SAFETY: moves only this thread (and the `ip` it spawns) into a new network namespace,
            // which goes away with the thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            ip(&[
                "link", "add", "gen0", "type", "veth", "peer", "name", "peer0",
            ]);
            ip(&["link", "set", "gen0", "up"]);
            ip(&["link", "set", "peer0", "up"]);
            let index = ifindex_of("gen0");
            let mut port = TrafficPort::bind(index, 0, 64).expect("bind on the veth");
            let frame = [0x02u8; 60];
            let mut sent = 0;
            let wait = std::time::Duration::from_secs(10);
            let _ = meshpath_testkit::until("200 frames sent and completed", wait, || {
                sent += port.send(200 - sent, |chunk| {
                    chunk[..60].copy_from_slice(&frame);
                    60
                });
                let in_flight = port.tx_in_flight();
                meshpath_testkit::wait::check(sent == 200 && in_flight == 0, (sent, in_flight))
            });
            assert_eq!(
                sent, 200,
                "a 64-slot ring sends 200 frames only if completions free chunks"
            );
            assert_eq!(port.tx_in_flight(), 0, "every chunk came back");
            rx_packets("peer0")
        })
        .join()
        .expect("the namespace thread");
        assert!(arrived >= 200, "the peer received {arrived} of 200 frames");
    }

    fn ip(args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("iproute2");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ifindex_of(name: &str) -> u32 {
        let out = ip(&["-o", "link", "show", name]);
        out.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .expect("an index")
    }

    fn rx_packets(name: &str) -> u64 {
        let out = ip(&["-s", "-o", "link", "show", name]);
        // "... RX: bytes packets ...\    <bytes> <packets> ..."
        let after = out
            .split("RX:")
            .nth(1)
            .and_then(|s| s.split('\\').nth(1))
            .unwrap_or("");
        after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}
