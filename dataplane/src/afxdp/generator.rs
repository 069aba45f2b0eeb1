//! A traffic port for benchmarks: one AF_XDP socket on a UMEM of its own that transmits frames it
//! writes itself (a generator) and receives frames only to look at them (a sink). It stands outside the
//! packet path, at both of its ends: the frames it sends enter a node, the frames it receives left one.
//!
//! A [`super::Worker`] only ever transmits what it received, so it cannot originate traffic; this port
//! can. It keeps its own rings, as [`super::sys`] does for workers, with the same `// SAFETY:` rules.
//! Half the UMEM is for transmit (a free list refilled from the completion ring), half sits on the
//! fill ring, each received chunk going straight back to it once looked at.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{AfXdpError, BURST, CHUNK_SIZE, RX_OFFSET};

/// One AF_XDP socket (copy mode, need_wakeup) with its own UMEM, for generating and sinking traffic.
pub struct TrafficPort {
    // Declared first so the socket closes before its rings and UMEM are unmapped.
    fd: OwnedFd,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    umem: Mapping,
    /// Chunks free for transmit.
    free: Vec<u64>,
}

// SAFETY: the UMEM and ring mappings are owned by this value and reached only through `&mut self`.
unsafe impl Send for TrafficPort {}

impl TrafficPort {
    /// Binds a socket on (`ifindex`, `queue`) in the calling thread's namespace, with `ring_size`
    /// slots (a power of two, at least one burst) per ring.
    pub fn bind(ifindex: u32, queue: u32, ring_size: u32) -> Result<TrafficPort, AfXdpError> {
        if !ring_size.is_power_of_two() || ring_size < BURST as u32 {
            return Err(AfXdpError::RingSize(ring_size));
        }
        let chunks = ring_size * 2;
        let umem = Mapping::anonymous(chunks as usize * CHUNK_SIZE)
            .map_err(|source| AfXdpError::Umem { chunks, source })?;
        let bind_err = |source| AfXdpError::Bind {
            ifindex,
            queue,
            shared: false,
            source,
        };
        let (fd, [rx, tx], [fill, comp]) =
            open_socket(&umem, ifindex, queue, ring_size).map_err(bind_err)?;
        let mut port = TrafficPort {
            fd,
            rx,
            tx,
            fill,
            comp,
            umem,
            free: (0..u64::from(ring_size))
                .map(|i| i * CHUNK_SIZE as u64)
                .collect(),
        };
        for i in u64::from(ring_size)..u64::from(chunks) {
            port.fill.push(i * CHUNK_SIZE as u64);
        }
        port.fill.publish();
        Ok(port)
    }

    /// Transmits up to `max` frames (at most one burst), each written by `write` into a chunk-sized
    /// buffer that returns its length (0 stops early). Returns how many were queued; fewer than asked
    /// when the tx ring or the free chunks run out.
    pub fn send(&mut self, max: usize, mut write: impl FnMut(&mut [u8]) -> usize) -> usize {
        self.reclaim();
        let mut sent = 0;
        while sent < max.min(BURST) && self.tx.has_room() {
            let Some(&addr) = self.free.last() else { break };
            let len = write(self.umem.chunk_mut(addr, RX_OFFSET));
            if len == 0 || len > CHUNK_SIZE - RX_OFFSET {
                break;
            }
            self.free.pop();
            self.tx.push(libc::xdp_desc {
                addr: addr + RX_OFFSET as u64,
                len: len as u32,
                options: 0,
            });
            sent += 1;
        }
        self.tx.publish();
        if self.tx.needs_wakeup() {
            self.kick_tx();
        }
        sent
    }

    /// Receives up to one burst, showing each frame to `look`, and gives the chunks back to the kernel.
    /// Returns how many frames arrived.
    pub fn receive(&mut self, mut look: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < BURST {
            let Some(desc) = self.rx.pop() else { break };
            let base = desc.addr & !(CHUNK_SIZE as u64 - 1);
            if let Some(frame) = self.umem.frame(desc.addr, desc.len) {
                look(frame);
            }
            // The fill ring holds every rx chunk, so there is room for the one just taken off rx;
            // an address that is not ours is not handed back.
            if (base as usize) < self.umem.len {
                self.fill.push(base);
            }
            n += 1;
        }
        self.rx.release();
        self.fill.publish();
        if self.fill.needs_wakeup() {
            self.kick_rx();
        }
        n
    }

    /// Frames queued for transmit that the kernel has not completed yet.
    pub fn tx_in_flight(&mut self) -> usize {
        self.reclaim();
        self.tx.mask as usize + 1 - self.free.len()
    }

    fn reclaim(&mut self) {
        while let Some(addr) = self.comp.pop() {
            self.free.push(addr & !(CHUNK_SIZE as u64 - 1));
        }
        self.comp.release();
    }

    fn kick_tx(&self) {
        // SAFETY: a zero-length sendto with no buffer is the documented AF_XDP tx kick.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }

    fn kick_rx(&self) {
        // SAFETY: a zero-length recvfrom with no buffer is the documented AF_XDP rx wakeup.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}

impl AsFd for TrafficPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A private anonymous or socket-backed mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> io::Result<Mapping> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        // SAFETY: an anonymous mapping with no address hint touches no existing memory.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, flags, -1, 0) };
        Mapping::made(ptr, len)
    }

    fn ring(fd: &OwnedFd, len: usize, pgoff: u64) -> io::Result<Mapping> {
        let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
        let off = pgoff as libc::off_t;
        // SAFETY: maps the ring the kernel set up for this socket at its documented page offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                PROT_RW,
                flags,
                fd.as_raw_fd(),
                off,
            )
        };
        Mapping::made(ptr, len)
    }

    fn made(ptr: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }

    /// The chunk holding `addr` from byte `from` on, for writing a frame to transmit.
    fn chunk_mut(&mut self, addr: u64, from: usize) -> &mut [u8] {
        let start = (addr as usize).min(self.len.saturating_sub(CHUNK_SIZE)) + from.min(CHUNK_SIZE);
        let len = CHUNK_SIZE - from.min(CHUNK_SIZE);
        // SAFETY: start + len stays inside the mapping (clamped above); the chunk is on our free list,
        // so neither the kernel nor another slice uses it, and `&mut self` keeps it ours meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>().add(start), len) }
    }

    /// The received frame at `addr`, if the descriptor lies inside one chunk of the mapping.
    fn frame(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        let chunk_end = (start / CHUNK_SIZE + 1) * CHUNK_SIZE;
        if end > chunk_end || end > self.len {
            return None;
        }
        // SAFETY: [start, end) lies inside the mapping; the kernel filled this chunk and published it
        // on the rx ring, and gets it back only after we stop looking (it is pushed to fill after).
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(start), len as usize)
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made with this length and no slice of it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

const PROT_RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

/// One side of a ring shared with the kernel; indices are free-running u32s masked into the slots.
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    slots: NonNull<T>,
    mask: u32,
    /// Our index (producer for fill/tx, consumer for rx/comp) and the last seen index of the kernel.
    local: u32,
    remote: u32,
    _map: Mapping,
}

impl<T: Copy> Ring<T> {
    fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        producer_side: bool,
    ) -> io::Result<Ring<T>> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::ring(fd, len, pgoff)?;
        let base = map.ptr.as_ptr().cast::<u8>();
        // SAFETY: the kernel's offsets lie inside the mapping of `len` bytes it described.
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        let (producer, consumer) = (
            at(off.producer).cast::<AtomicU32>(),
            at(off.consumer).cast::<AtomicU32>(),
        );
        // SAFETY: both indices are in the live mapping; Acquire sees the kernel's initial values.
        let (p, c) = unsafe {
            (
                producer.as_ref().load(Ordering::Acquire),
                consumer.as_ref().load(Ordering::Acquire),
            )
        };
        let (local, remote) = if producer_side { (p, c) } else { (c, p) };
        Ok(Ring {
            producer,
            consumer,
            flags: at(off.flags).cast(),
            slots: at(off.desc).cast(),
            mask: size - 1,
            local,
            remote,
            _map: map,
        })
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: `flags` points into our live ring mapping, written by the kernel atomically.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask` < ring size, and the mapping holds that many slots.
        unsafe { self.slots.as_ptr().add((index & self.mask) as usize) }
    }

    fn has_room(&mut self) -> bool {
        if self.local.wrapping_sub(self.remote) <= self.mask {
            return true;
        }
        // SAFETY: as in needs_wakeup; Acquire pairs with the kernel's release of the slots.
        self.remote = unsafe { self.consumer.as_ref() }.load(Ordering::Acquire);
        self.local.wrapping_sub(self.remote) <= self.mask
    }

    fn push(&mut self, item: T) {
        // SAFETY: callers checked has_room (or hold fewer items than slots), so the kernel is done
        // with this slot; it reads it only after `publish` stores the producer index with Release.
        unsafe { self.slot(self.local).write(item) };
        self.local = self.local.wrapping_add(1);
    }

    fn publish(&mut self) {
        // SAFETY: as in needs_wakeup.
        unsafe { self.producer.as_ref() }.store(self.local, Ordering::Release);
    }

    fn pop(&mut self) -> Option<T> {
        if self.local == self.remote {
            // SAFETY: as in needs_wakeup; Acquire pairs with the kernel's release of the slots.
            self.remote = unsafe { self.producer.as_ref() }.load(Ordering::Acquire);
            if self.local == self.remote {
                return None;
            }
        }
        // SAFETY: the slot lies between our consumer index and the kernel's producer index, so the
        // kernel wrote it and leaves it alone until `release` moves the consumer index past it.
        let item = unsafe { self.slot(self.local).read() };
        self.local = self.local.wrapping_add(1);
        Some(item)
    }

    fn release(&mut self) {
        // SAFETY: as in needs_wakeup.
        unsafe { self.consumer.as_ref() }.store(self.local, Ordering::Release);
    }
}

type Socket = (OwnedFd, [Ring<libc::xdp_desc>; 2], [Ring<u64>; 2]);

/// Opens the socket, registers `umem`, sizes and maps the four rings and binds to (ifindex, queue).
fn open_socket(umem: &Mapping, ifindex: u32, queue: u32, n: u32) -> io::Result<Socket> {
    // SAFETY: plain socket(2); on success the fd is new and owned by nobody else.
    let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just returned by socket(2).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let reg = libc::xdp_umem_reg {
        addr: umem.ptr.as_ptr() as u64,
        len: umem.len as u64,
        chunk_size: CHUNK_SIZE as u32,
        headroom: 0,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
    for opt in [
        libc::XDP_RX_RING,
        libc::XDP_TX_RING,
        libc::XDP_UMEM_FILL_RING,
        libc::XDP_UMEM_COMPLETION_RING,
    ] {
        setsockopt(&fd, opt, &n)?;
    }
    // SAFETY: xdp_mmap_offsets is plain integers; all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut off_len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` is a writable xdp_mmap_offsets of the stated length.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&raw mut off).cast(),
            &mut off_len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let rx = Ring::map(&fd, &off.rx, n, libc::XDP_PGOFF_RX_RING as u64, false)?;
    let tx = Ring::map(&fd, &off.tx, n, libc::XDP_PGOFF_TX_RING as u64, true)?;
    let fill = Ring::map(&fd, &off.fr, n, libc::XDP_UMEM_PGOFF_FILL_RING, true)?;
    let comp = Ring::map(&fd, &off.cr, n, libc::XDP_UMEM_PGOFF_COMPLETION_RING, false)?;
    // SAFETY: sockaddr_xdp is plain integers; all-zero is a valid value.
    let mut addr: libc::sockaddr_xdp = unsafe { std::mem::zeroed() };
    addr.sxdp_family = libc::AF_XDP as u16;
    addr.sxdp_ifindex = ifindex;
    addr.sxdp_queue_id = queue;
    addr.sxdp_flags = libc::XDP_USE_NEED_WAKEUP | libc::XDP_COPY;
    let addr_len = std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_xdp of the stated length.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), addr_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, [rx, tx], [fill, comp]))
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live T of the stated length, only read by the kernel.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            len,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

    #[test]
    fn a_received_descriptor_is_shown_only_inside_its_chunk() {
        let map = Mapping::anonymous(4 * CHUNK_SIZE).expect("mmap");
        assert_eq!(map.frame(RX_OFFSET as u64, 60).map(<[u8]>::len), Some(60));
        assert!(
            map.frame((CHUNK_SIZE - 10) as u64, 60).is_none(),
            "crosses into the next chunk"
        );
        assert!(
            map.frame((4 * CHUNK_SIZE) as u64, 1).is_none(),
            "beyond the UMEM"
        );
        assert!(map.frame(u64::MAX, 1).is_none());
    }

    /// As root: frames sent on one end of a veth pair in a private namespace arrive at the other.
    #[test]
    fn sent_frames_reach_the_peer_and_their_chunks_come_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: AF_XDP sockets need root");
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
            for _ in 0..100 {
                sent += port.send(200 - sent, |chunk| {
                    chunk[..60].copy_from_slice(&frame);
                    60
                });
                if sent == 200 && port.tx_in_flight() == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
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

    #[test]
    fn a_chunk_to_write_stays_inside_the_umem() {
        let mut map = Mapping::anonymous(2 * CHUNK_SIZE).expect("mmap");
        assert_eq!(
            map.chunk_mut(CHUNK_SIZE as u64, RX_OFFSET).len(),
            CHUNK_SIZE - RX_OFFSET
        );
        assert_eq!(
            map.chunk_mut(u64::MAX, 0).len(),
            CHUNK_SIZE,
            "clamped to the last chunk"
        );
    }
}
