//! Every `unsafe` of the AF_XDP layer: the UMEM mapping, the four mmap'ed rings of a socket, and the
//! frames handed out of the UMEM. Above this module everything is safe Rust.
//!
//! Ownership of a UMEM chunk is tracked here, per chunk: free (in the worker's free list), kernel (on a
//! fill or tx ring of one port's socket) or batch (received, lent out as a `Frame`). A chunk becomes a
//! `Frame` only on the kernel → batch transition, so two live frames can never alias one chunk,
//! whatever the kernel returns. Because the kernel side names its port, the chunks a closed socket
//! held are known and come back to the free list ([`Umem::reclaim`]): a port removed from a running
//! worker leaks none.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arrayvec::ArrayVec;

use crate::frame::{Frame, PortId};

/// Size of a UMEM chunk: one frame, aligned mode.
pub const CHUNK_SIZE: usize = 2048;
/// The kernel writes a received frame this far into its chunk (XDP_PACKET_HEADROOM).
pub const RX_OFFSET: usize = 256;
/// Frames per receive burst.
pub const BURST: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    /// On a ring of this port's socket: its fill ring, or its tx ring until completed.
    Kernel(PortId),
    Batch,
    /// A chunk of this worker's share, handed to another worker (with a frame it owns) and not yet
    /// returned.
    Away,
    /// A chunk of another worker's share that this worker does not hold.
    Foreign,
}

/// The packet memory of a node's workers: one anonymous mapping, registered once with the kernel
/// and shared by every socket of every worker (XDP_SHARED_UMEM).
struct Mapping {
    area: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping itself is only an address range; who may touch which chunk of it is decided by
// the `Umem` views' chunk states (one holder per chunk at a time), not by the mapping.
unsafe impl Send for Mapping {}
// SAFETY: as above: the mapping is never read or written through `&Mapping`.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `Mapping::new` with this length; every `Umem` view of it
        // (and so every frame borrowing one) is gone, since they hold this `Arc`. A socket still
        // registered with it keeps its own page references.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

impl Mapping {
    fn new(chunks: u32) -> io::Result<Mapping> {
        let len = chunks as usize * CHUNK_SIZE;
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let area =
            NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { area, len })
    }
}

/// The bytes of UMEM a handoff descriptor's 32-bit address reaches.
const HANDOFF_ADDRESSABLE: u64 = 1 << 32;

/// One worker's view of the packet memory: its share of the chunks (its *home* chunks, the only ones
/// it posts on fill rings), and the state of every chunk as this worker sees it. A frame another
/// worker owns crosses with its chunk ([`Umem::send_away`] → [`Umem::take_in`]); the chunk ends on
/// the other worker's tx ring or is dropped there, and goes back to its home worker over a return
/// ring ([`Umem::take_returns`] → [`Umem::returned`]): each socket's fill and completion rings only
/// ever see chunks of the worker that serves it, and every chunk has one holder at a time.
pub struct Umem {
    map: Arc<Mapping>,
    owner: Vec<Owner>,
    free: Vec<u64>,
    /// This worker's share: chunk indexes `home.start..home.end`.
    home: std::ops::Range<usize>,
    /// Foreign chunks this worker is done with, to go back to their home workers.
    returns: Vec<u64>,
}

// SAFETY: the view owns its chunk states; the chunks it holds are reached only through `&mut self`
// or frames that borrow it, and moving it to the worker thread moves that ownership.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps `chunks` chunks of packet memory, all free: the memory of a node's only worker.
    pub fn new(chunks: u32) -> io::Result<Umem> {
        Ok(Umem::shared(chunks, 1)?.remove(0))
    }

    /// Maps `workers` × `chunks` chunks and cuts them into one view per worker, each with a share
    /// of `chunks` free chunks of its own.
    pub fn shared(chunks: u32, workers: u16) -> io::Result<Vec<Umem>> {
        let total = chunks
            .checked_mul(u32::from(workers))
            .ok_or_else(|| io::Error::other("UMEM too large"))?;
        if workers > 1 && u64::from(total) * CHUNK_SIZE as u64 > HANDOFF_ADDRESSABLE {
            return Err(io::Error::other(format!(
                "{total} chunks of {CHUNK_SIZE} bytes: workers hand frames over by 32-bit UMEM \
                 address, so a shared UMEM holds at most 4 GiB (fewer cores or smaller rings)"
            )));
        }
        let map = Arc::new(Mapping::new(total)?);
        let per = chunks as usize;
        Ok((0..usize::from(workers))
            .map(|w| {
                let home = w * per..(w + 1) * per;
                let mut owner = vec![Owner::Foreign; total as usize];
                owner[home.clone()].fill(Owner::Free);
                Umem {
                    map: map.clone(),
                    owner,
                    free: home
                        .clone()
                        .rev()
                        .map(|i| (i * CHUNK_SIZE) as u64)
                        .collect(),
                    home,
                    returns: Vec::with_capacity(total as usize - per),
                }
            })
            .collect())
    }

    /// The start of the mapping and its length, for the kernel's registration.
    fn area(&self) -> (NonNull<u8>, usize) {
        (self.map.area, self.map.len)
    }

    fn is_home(&self, base: u64) -> bool {
        self.chunk_of(base).is_some_and(|i| self.home.contains(&i))
    }

    /// A chunk this worker is done with: back on its free list, or on the way to its home worker.
    fn release(&mut self, base: u64, from: Owner) -> bool {
        let to = if self.is_home(base) {
            Owner::Free
        } else {
            Owner::Foreign
        };
        if !self.hand_over(base, from, to) {
            return false;
        }
        match to {
            Owner::Free => self.free.push(base),
            _ => self.returns.push(base),
        }
        true
    }

    fn chunk_of(&self, addr: u64) -> Option<usize> {
        let index = usize::try_from(addr).ok()? / CHUNK_SIZE;
        (index < self.owner.len()).then_some(index)
    }

    /// Moves a chunk between owners; false if it was not `from` (a descriptor we did not hand out).
    fn hand_over(&mut self, addr: u64, from: Owner, to: Owner) -> bool {
        match self.chunk_of(addr).and_then(|i| self.owner.get_mut(i)) {
            Some(owner) if *owner == from => {
                *owner = to;
                true
            }
            _ => false,
        }
    }

    /// Posts free chunks on the fill ring of `port`'s socket `xsk` until it is full or the free list
    /// is empty.
    pub fn fill(&mut self, xsk: &mut Xsk, port: PortId) -> usize {
        let mut posted = 0;
        while xsk.fill.has_room() {
            let Some(base) = self.free.pop() else { break };
            let marked = self.hand_over(base, Owner::Free, Owner::Kernel(port));
            debug_assert!(marked, "free list holds only free chunks");
            xsk.fill.push(base);
            posted += 1;
        }
        xsk.fill.publish();
        posted
    }

    /// Takes transmitted chunks back from the completion ring of `port`'s socket `xsk`; returns how
    /// many.
    pub fn complete(&mut self, xsk: &mut Xsk, port: PortId) -> usize {
        let mut done = 0;
        while let Some(addr) = xsk.comp.pop() {
            let base = addr & !(CHUNK_SIZE as u64 - 1);
            if self.release(base, Owner::Kernel(port)) {
                done += 1;
            }
        }
        xsk.comp.release();
        done
    }

    /// Receives up to [`BURST`] frames from `xsk` as frames of `port`, with the chunk base of each
    /// frame in `bases` at the same index. Returns how many descriptors were refused (not ours, or
    /// out of their chunk), which are lost.
    pub fn receive<'a>(
        &'a mut self,
        xsk: &mut Xsk,
        port: PortId,
        bases: &mut ArrayVec<u64, BURST>,
        frames: &mut ArrayVec<Frame<'a>, BURST>,
    ) -> usize {
        let mut refused = 0;
        let mut accepted: ArrayVec<(u64, usize, usize), BURST> = ArrayVec::new();
        while !accepted.is_full() {
            let Some(desc) = xsk.rx.pop() else { break };
            let base = desc.addr & !(CHUNK_SIZE as u64 - 1);
            let head = (desc.addr - base) as usize;
            let fits = head + desc.len as usize <= CHUNK_SIZE;
            if fits && self.hand_over(base, Owner::Kernel(port), Owner::Batch) {
                accepted.push((base, head, desc.len as usize));
            } else {
                refused += 1;
            }
        }
        xsk.rx.release();
        self.frames_of(&accepted, port, bases, frames);
        refused
    }

    /// Takes in frames another worker handed over (`(base, head, len)` each, with the port they came
    /// in on), as [`Umem::receive`] takes in received ones. A descriptor of a chunk this worker holds
    /// already is refused; returns how many were.
    pub fn take_in<'a>(
        &'a mut self,
        handed: &[(u64, usize, usize, PortId)],
        bases: &mut ArrayVec<u64, BURST>,
        frames: &mut ArrayVec<Frame<'a>, BURST>,
    ) -> usize {
        let mut refused = 0;
        let mut accepted: ArrayVec<(u64, usize, usize, PortId), BURST> = ArrayVec::new();
        for &(base, head, len, port) in handed.iter().take(BURST) {
            let fits = base % CHUNK_SIZE as u64 == 0 && head + len <= CHUNK_SIZE;
            let from = if self.is_home(base) {
                Owner::Away
            } else {
                Owner::Foreign
            };
            if fits && self.hand_over(base, from, Owner::Batch) {
                accepted.push((base, head, len, port));
            } else {
                refused += 1;
            }
        }
        let area = self.map.area;
        for (base, head, len, port) in accepted {
            // SAFETY: `base` is the start of a chunk inside the mapping (chunk_of checked it). The
            // chunk just moved away/foreign → batch in this view: its last holder, the worker that
            // handed it over, dropped its frame of it before publishing the descriptor and touches
            // it no more (it marks it away or foreign in its own view), and the handoff ring's
            // release/acquire orders its writes before ours. No other slice of it is live; the
            // slices borrow `&'a mut self`.
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(area.as_ptr().add(base as usize), CHUNK_SIZE)
            };
            if let Some(frame) = Frame::new(chunk, head, len, port) {
                bases.push(base);
                frames.push(frame);
            }
        }
        refused
    }

    fn frames_of<'a>(
        &'a mut self,
        accepted: &[(u64, usize, usize)],
        port: PortId,
        bases: &mut ArrayVec<u64, BURST>,
        frames: &mut ArrayVec<Frame<'a>, BURST>,
    ) {
        let area = self.map.area;
        for &(base, head, len) in accepted {
            // SAFETY: `base` is the start of a chunk inside the mapping (chunk_of checked it) and the
            // chunk just moved kernel → batch, which happens once per reception: no other slice of
            // this chunk is live. The slices live as long as `&'a mut self`, so the UMEM can neither
            // be unmapped nor hand the chunk to the kernel (fill/transmit need `&mut self`) meanwhile.
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(area.as_ptr().add(base as usize), CHUNK_SIZE)
            };
            if let Some(frame) = Frame::new(chunk, head, len, port) {
                bases.push(base);
                frames.push(frame);
            }
        }
    }

    /// Gives up a batch chunk whose frame goes to another worker: this view reaches it no more until
    /// it comes back (a home chunk is away until returned). False if it was no batch chunk.
    pub fn send_away(&mut self, base: u64) -> bool {
        let to = if self.is_home(base) {
            Owner::Away
        } else {
            Owner::Foreign
        };
        self.hand_over(base, Owner::Batch, to)
    }

    /// Foreign chunks this worker is done with, to hand back to their home workers; emptied.
    pub fn take_returns(&mut self) -> std::vec::Drain<'_, u64> {
        self.returns.drain(..)
    }

    /// A home chunk another worker returned: free again. False if it was not away.
    pub fn returned(&mut self, base: u64) -> bool {
        if !self.hand_over(base, Owner::Away, Owner::Free) {
            return false;
        }
        self.free.push(base);
        true
    }

    /// Lends a free chunk to write a new frame into (a traffic generator's): its base and its bytes.
    /// The chunk is the batch's until it is [`Umem::transmit`]ted or [`Umem::recycle`]d.
    pub fn lend(&mut self) -> Option<(u64, &mut [u8])> {
        let base = self.free.pop()?;
        if !self.hand_over(base, Owner::Free, Owner::Batch) {
            return None;
        }
        // SAFETY: `base` is the start of a chunk inside the mapping (it came from the free list, which
        // holds only chunk bases) and the chunk just moved free → batch: no other slice of it is live,
        // and the kernel does not own it. The slice borrows `&mut self`, so the UMEM can neither be
        // unmapped nor give the chunk to the kernel while it is written.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(self.map.area.as_ptr().add(base as usize), CHUNK_SIZE)
        };
        Some((base, chunk))
    }

    /// Queues the frame at `addr` (`len` bytes, inside the chunk at `base`) on the tx ring of `port`'s
    /// socket `xsk`. Returns false if the ring is full: the chunk is then freed (a ring-full drop).
    pub fn transmit(
        &mut self,
        xsk: &mut Xsk,
        port: PortId,
        base: u64,
        addr: u64,
        len: u32,
    ) -> bool {
        if !xsk.tx.has_room() {
            self.recycle(base);
            return false;
        }
        if self.hand_over(base, Owner::Batch, Owner::Kernel(port)) {
            xsk.tx.push(libc::xdp_desc {
                addr,
                len,
                options: 0,
            });
        }
        true
    }

    /// Gives a received chunk back (the frame was dropped): to the free list, or to its home worker.
    pub fn recycle(&mut self, base: u64) {
        self.release(base, Owner::Batch);
    }

    /// Takes back every chunk `port`'s socket held (its fill ring, its tx ring not yet completed),
    /// once that socket is closed: the kernel no longer reaches them. Returns how many.
    pub fn reclaim(&mut self, port: PortId) -> usize {
        let held: Vec<u64> = (0..self.owner.len())
            .filter(|&i| self.owner[i] == Owner::Kernel(port))
            .map(|i| (i * CHUNK_SIZE) as u64)
            .collect();
        held.into_iter()
            .filter(|&base| self.release(base, Owner::Kernel(port)))
            .count()
    }

    /// Chunks on the rings of a socket that is none of `ports`: lost to the worker (none, unless a
    /// removed port's chunks were not reclaimed).
    pub fn orphaned(&self, ports: impl Fn(PortId) -> bool) -> usize {
        self.owner
            .iter()
            .filter(|o| matches!(o, Owner::Kernel(p) if !ports(*p)))
            .count()
    }

    #[cfg(test)]
    fn held_by(&self, port: PortId) -> usize {
        self.owner
            .iter()
            .filter(|o| **o == Owner::Kernel(port))
            .count()
    }

    /// Chunks in the free list, lent to nobody.
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }

    /// Chunks of this worker's share.
    pub fn chunks(&self) -> usize {
        self.home.len()
    }

    /// Chunks this worker holds (on its sockets' rings or in a batch), its own or another's, and its
    /// home chunks away at other workers: with the free ones and those on return rings, every chunk
    /// of the mapping is counted exactly once across a node's workers.
    #[cfg(test)]
    pub fn in_flight(&self) -> ChunkCount {
        let mut count = ChunkCount::default();
        for owner in &self.owner {
            match owner {
                Owner::Kernel(_) | Owner::Batch => count.held += 1,
                Owner::Away => count.away += 1,
                Owner::Free | Owner::Foreign => {}
            }
        }
        count.returning = self.returns.len();
        count
    }
}

/// A view's chunks that are not free ([`Umem::in_flight`]).
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkCount {
    /// Held by this worker: on its rings or in a batch.
    pub held: usize,
    /// Its home chunks at other workers (held there, or on the way back).
    pub away: usize,
    /// Foreign chunks waiting to be returned.
    pub returning: usize,
}

/// One side of a ring shared with the kernel: indices are free-running u32s, masked into `slots`.
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    slots: NonNull<T>,
    mask: u32,
    /// Our own index (producer for fill/tx, consumer for rx/comp), published in batches.
    local: u32,
    /// Last seen index of the other side.
    remote: u32,
    map: NonNull<libc::c_void>,
    map_len: usize,
}

impl<T: Copy> Ring<T> {
    fn needs_wakeup(&self) -> bool {
        // SAFETY: `flags` points into our live ring mapping, written by the kernel atomically.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & mask` < ring size, and the mapping holds that many slots.
        unsafe { self.slots.as_ptr().add((index & self.mask) as usize) }
    }

    // Producer side (fill, tx).
    fn has_room(&mut self) -> bool {
        if self.local.wrapping_sub(self.remote) <= self.mask {
            return true;
        }
        // SAFETY: as in needs_wakeup; Acquire pairs with the kernel's release of the slots.
        self.remote = unsafe { self.consumer.as_ref() }.load(Ordering::Acquire);
        self.local.wrapping_sub(self.remote) <= self.mask
    }

    fn push(&mut self, item: T) {
        // SAFETY: has_room() was true, so the kernel is done with this slot; it reads it only after
        // `publish` stores the producer index with Release.
        unsafe { self.slot(self.local).write(item) };
        self.local = self.local.wrapping_add(1);
    }

    /// Whether the kernel has not consumed everything we produced.
    fn has_outstanding(&mut self) -> bool {
        // SAFETY: as in needs_wakeup.
        self.remote = unsafe { self.consumer.as_ref() }.load(Ordering::Acquire);
        self.local != self.remote
    }

    fn publish(&mut self) {
        // SAFETY: as in needs_wakeup.
        unsafe { self.producer.as_ref() }.store(self.local, Ordering::Release);
    }

    // Consumer side (rx, comp).
    fn pop(&mut self) -> Option<T> {
        if self.local == self.remote {
            // SAFETY: as in needs_wakeup; Acquire pairs with the kernel's release of the slots.
            self.remote = unsafe { self.producer.as_ref() }.load(Ordering::Acquire);
            if self.local == self.remote {
                return None;
            }
        }
        // SAFETY: the slot lies between our consumer index and the kernel's producer index, so the
        // kernel wrote it and will not touch it until `release` moves the consumer index past it.
        let item = unsafe { self.slot(self.local).read() };
        self.local = self.local.wrapping_add(1);
        Some(item)
    }

    fn release(&mut self) {
        // SAFETY: as in needs_wakeup.
        unsafe { self.consumer.as_ref() }.store(self.local, Ordering::Release);
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map_ring` with this length and nothing else refers to it.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

/// Most tx kicks per flush: enough for a burst in copy mode, bounded so one port cannot hog a turn.
const MAX_TX_KICKS: usize = 4;

/// An AF_XDP socket bound to (interface, queue) with its rx/tx rings and its own fill/completion
/// rings (one pair per device queue, also when the UMEM is shared).
pub struct Xsk {
    fd: OwnedFd,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
}

// SAFETY: the rings are mappings owned by this value, used only through `&mut self`.
unsafe impl Send for Xsk {}

/// How to bind a socket.
#[derive(Clone, Copy, Debug)]
pub struct BindOptions {
    pub ifindex: u32,
    pub queue: u32,
    pub ring_size: u32,
    /// Force copy mode (veth has no zero-copy); otherwise the kernel binds zero-copy where the
    /// driver has it and falls back to copy where it has not ([`Xsk::mode`] says which it chose).
    pub copy: bool,
}

/// How a socket's frames move between the driver and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver receives into and sends from the UMEM itself.
    ZeroCopy,
    /// The kernel copies each frame between the driver's buffers and the UMEM.
    Copy,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::ZeroCopy => "zero-copy",
            XdpMode::Copy => "copy",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Xsk {
    /// Opens a socket on `opts`, registering `umem` with it, or — with `share` — binding to the UMEM
    /// already registered with that socket (XDP_SHARED_UMEM).
    pub fn bind(umem: &Umem, share: Option<BorrowedFd<'_>>, opts: BindOptions) -> io::Result<Xsk> {
        let (area, len) = umem.area();
        let registration = libc::xdp_umem_reg {
            addr: area.as_ptr() as u64,
            len: len as u64,
            chunk_size: CHUNK_SIZE as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        match share {
            None => Xsk::open(Some(&registration), None, opts),
            Some(share) => Xsk::open(None, Some(share), opts),
        }
    }

    /// Opens a socket on `opts` bound to the UMEM already registered with `share` (XDP_SHARED_UMEM):
    /// what adds a port to a running worker, whose UMEM this thread cannot reach.
    pub fn bind_shared(share: BorrowedFd<'_>, opts: BindOptions) -> io::Result<Xsk> {
        Xsk::open(None, Some(share), opts)
    }

    fn open(
        registration: Option<&libc::xdp_umem_reg>,
        share: Option<BorrowedFd<'_>>,
        opts: BindOptions,
    ) -> io::Result<Xsk> {
        // SAFETY: plain socket(2); on success the fd is new and owned by nobody else.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if let Some(reg) = registration {
            setsockopt(&fd, libc::XDP_UMEM_REG, reg)?;
        }
        let n = opts.ring_size;
        for opt in [
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
        ] {
            setsockopt(&fd, opt, &n)?;
        }
        let mut off: libc::xdp_mmap_offsets = zeroed_offsets();
        let mut off_len = size_of_u32::<libc::xdp_mmap_offsets>();
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
        let rx = map_ring(
            &fd,
            &off.rx,
            n,
            libc::XDP_PGOFF_RX_RING as u64,
            Side::Consumer,
        )?;
        let tx = map_ring(
            &fd,
            &off.tx,
            n,
            libc::XDP_PGOFF_TX_RING as u64,
            Side::Producer,
        )?;
        let fill = map_ring(
            &fd,
            &off.fr,
            n,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            Side::Producer,
        )?;
        let comp = map_ring(
            &fd,
            &off.cr,
            n,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            Side::Consumer,
        )?;
        let mut flags = libc::XDP_USE_NEED_WAKEUP;
        if opts.copy {
            flags |= libc::XDP_COPY;
        }
        let mut addr: libc::sockaddr_xdp = zeroed_sockaddr();
        addr.sxdp_family = libc::AF_XDP as u16;
        addr.sxdp_ifindex = opts.ifindex;
        addr.sxdp_queue_id = opts.queue;
        if let Some(share) = share {
            // The kernel refuses mode and wakeup flags here: a sharing socket inherits the owner's.
            flags = libc::XDP_SHARED_UMEM;
            addr.sxdp_shared_umem_fd = share.as_raw_fd() as u32;
        }
        addr.sxdp_flags = flags;
        // SAFETY: `addr` is a valid sockaddr_xdp of the stated length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of_u32::<libc::sockaddr_xdp>(),
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Xsk {
            fd,
            rx,
            tx,
            fill,
            comp,
        })
    }

    /// Publishes queued tx descriptors; kicks the kernel with sendto only if descriptors are still
    /// waiting and it asked for a wakeup (copy mode sends a bounded batch per kick, so a backlog
    /// needs kicks on later turns too). Returns whether a kick was made.
    pub fn flush_tx(&mut self) -> bool {
        self.tx.publish();
        let mut kicks = 0;
        // In copy mode one kick sends a bounded batch (the kernel's per-socket budget, 32): a burst
        // of 64 needs more than one, or the ring fills while the worker sleeps.
        while kicks < MAX_TX_KICKS && self.tx.has_outstanding() && self.tx.needs_wakeup() {
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
            kicks += 1;
        }
        kicks > 0
    }
}

impl Xsk {
    /// Whether the kernel asked for a wakeup to take buffers from the fill ring (need_wakeup).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// The rx-side kick: a non-blocking zero-length recvfrom.
    pub fn kick_rx(&self) {
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

/// The kernel's own counters of one socket (XDP_STATISTICS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Frames the kernel dropped for this socket (no room in the UMEM, or other errors).
    pub rx_dropped: u64,
    /// Frames dropped because our rx ring was full: the worker fell behind.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived: we did not post buffers fast enough.
    pub fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

impl Xsk {
    /// Reads the kernel's counters of this socket (one getsockopt; not for the per-packet path).
    pub fn kernel_counters(&self) -> io::Result<KernelCounters> {
        // SAFETY: xdp_statistics is plain integers; all-zero is a valid value.
        let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of_u32::<libc::xdp_statistics>();
        // SAFETY: `stats` is writable for `len` bytes.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelCounters {
            rx_dropped: stats.rx_dropped,
            rx_ring_full: stats.rx_ring_full,
            fill_ring_empty: stats.rx_fill_ring_empty_descs,
            rx_invalid_descs: stats.rx_invalid_descs,
            tx_invalid_descs: stats.tx_invalid_descs,
        })
    }
}

impl Xsk {
    /// The mode the kernel bound this socket in (XDP_OPTIONS; one getsockopt).
    pub fn mode(&self) -> io::Result<XdpMode> {
        // SAFETY: xdp_options is a plain integer; all-zero is a valid value.
        let mut options: libc::xdp_options = unsafe { std::mem::zeroed() };
        let mut len = size_of_u32::<libc::xdp_options>();
        // SAFETY: `options` is writable for `len` bytes.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_OPTIONS,
                (&raw mut options).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(if options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            XdpMode::ZeroCopy
        } else {
            XdpMode::Copy
        })
    }
}

// asm-generic/socket.h; the libc crate does not carry them for Linux.
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

impl Xsk {
    /// Asks the kernel to busy-poll this socket's device queue from our rx kicks (recvfrom) for up to
    /// `usecs` and `budget` frames, instead of waiting for interrupts.
    pub fn prefer_busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        for (opt, value) in [
            (SO_PREFER_BUSY_POLL, 1),
            (SO_BUSY_POLL, usecs),
            (SO_BUSY_POLL_BUDGET, budget),
        ] {
            // SAFETY: `value` is a live u32 of the stated length, only read by the kernel.
            let ret = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const value).cast(),
                    size_of_u32::<u32>(),
                )
            };
            if ret != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl AsFd for Xsk {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; returns how many are ready.
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable pollfd array of the given length.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        };
    }
    Ok(ret as usize)
}

/// An eventfd: what one worker writes to wake another that sleeps in poll(2).
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2); on success the fd is new and owned by nobody else.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2).
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable. A failure (the counter full: it is readable already) is moot.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to an eventfd we own.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Makes it unreadable again (non-blocking: nothing to read is fine).
    pub fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into `count`, which is 8 bytes and writable.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut count).cast(), 8) };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn size_of_u32<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

fn zeroed_offsets() -> libc::xdp_mmap_offsets {
    // SAFETY: xdp_mmap_offsets is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn zeroed_sockaddr() -> libc::sockaddr_xdp {
    // SAFETY: sockaddr_xdp is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the stated length, only read by the kernel.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            size_of_u32::<T>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Producer,
    Consumer,
}

fn map_ring<T>(
    fd: &OwnedFd,
    off: &libc::xdp_ring_offset,
    size: u32,
    pgoff: u64,
    side: Side,
) -> io::Result<Ring<T>> {
    let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
    // SAFETY: maps the ring the kernel set up for this socket at the documented page offset.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff as libc::off_t,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let map = NonNull::new(map).ok_or_else(|| io::Error::other("mmap returned null"))?;
    // SAFETY: the kernel laid the ring out in this mapping at the offsets it reported.
    Ok(unsafe { ring_in(map, map_len, off, size, side) })
}

/// The ring laid out at `off` in the mapping `map` of `map_len` bytes, which it owns from now on.
///
/// # Safety
/// `map` is a live mapping of `map_len` bytes, owned by nobody else, holding the producer, consumer
/// and flags words and `size` slots of `T` at the offsets of `off`.
unsafe fn ring_in<T>(
    map: NonNull<libc::c_void>,
    map_len: usize,
    off: &libc::xdp_ring_offset,
    size: u32,
    side: Side,
) -> Ring<T> {
    let at = |offset: u64| {
        // SAFETY: the kernel's offsets lie inside the mapping of `map_len` bytes.
        unsafe { NonNull::new_unchecked(map.as_ptr().cast::<u8>().add(offset as usize)) }
    };
    let producer: NonNull<AtomicU32> = at(off.producer).cast();
    let consumer: NonNull<AtomicU32> = at(off.consumer).cast();
    // SAFETY: both indices are in the live mapping; Acquire sees the kernel's initial values.
    let (prod, cons) = unsafe {
        (
            producer.as_ref().load(Ordering::Acquire),
            consumer.as_ref().load(Ordering::Acquire),
        )
    };
    Ring {
        producer,
        consumer,
        flags: at(off.flags).cast(),
        slots: at(off.desc).cast(),
        mask: size - 1,
        local: if side == Side::Producer { prod } else { cons },
        remote: if side == Side::Producer { cons } else { prod },
        map,
        map_len,
    }
}

/// The kernel's side of a socket, played by a test: rings in anonymous memory laid out as the
/// kernel lays them out, so that the worker's error paths (refused descriptors, a full tx ring, an
/// empty fill ring) can be driven exactly.
#[cfg(test)]
pub(super) mod fake_kernel {
    use super::*;

    const OFFSETS: libc::xdp_ring_offset = libc::xdp_ring_offset {
        producer: 0,
        consumer: 64,
        desc: 192,
        flags: 128,
    };

    fn anonymous_ring<T>(size: u32, side: Side) -> Ring<T> {
        let map_len = OFFSETS.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        let map = NonNull::new(map).expect("mmap returned null");
        // SAFETY: a fresh zeroed mapping of map_len bytes, owned by the ring, holding the words and
        // `size` slots at OFFSETS.
        unsafe { ring_in(map, map_len, &OFFSETS, size, side) }
    }

    /// A socket whose kernel is the test: /dev/null stands in for the fd (kicks and counters fail
    /// harmlessly), and no ring asks for a wakeup.
    pub fn socket(ring_size: u32) -> Xsk {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        Xsk {
            fd,
            rx: anonymous_ring(ring_size, Side::Consumer),
            tx: anonymous_ring(ring_size, Side::Producer),
            fill: anonymous_ring(ring_size, Side::Producer),
            comp: anonymous_ring(ring_size, Side::Consumer),
        }
    }

    impl<T: Copy> Ring<T> {
        /// The kernel consuming what we produced (fill, tx).
        fn peer_pop(&self) -> Option<T> {
            // SAFETY: both index words live in the ring's mapping.
            let (prod, cons) = unsafe {
                (
                    self.producer.as_ref().load(Ordering::Acquire),
                    self.consumer.as_ref().load(Ordering::Acquire),
                )
            };
            if prod == cons {
                return None;
            }
            // SAFETY: the slot lies between the consumer and producer indices: we published it.
            let item = unsafe { self.slot(cons).read() };
            // SAFETY: as above.
            unsafe { self.consumer.as_ref() }.store(cons.wrapping_add(1), Ordering::Release);
            Some(item)
        }

        /// The kernel producing for us (rx, completion); false if the ring is full.
        fn peer_push(&self, item: T) -> bool {
            // SAFETY: both index words live in the ring's mapping.
            let (prod, cons) = unsafe {
                (
                    self.producer.as_ref().load(Ordering::Acquire),
                    self.consumer.as_ref().load(Ordering::Acquire),
                )
            };
            if prod.wrapping_sub(cons) > self.mask {
                return false;
            }
            // SAFETY: the slot is outside what we may read until the producer index moves past it.
            unsafe { self.slot(prod).write(item) };
            // SAFETY: as above.
            unsafe { self.producer.as_ref() }.store(prod.wrapping_add(1), Ordering::Release);
            true
        }
    }

    impl Xsk {
        /// The kernel takes a buffer from the fill ring.
        pub fn kernel_take_fill(&mut self) -> Option<u64> {
            self.fill.peer_pop()
        }

        /// The kernel hands a received frame of `len` bytes at `addr` to the rx ring.
        pub fn kernel_receive(&mut self, addr: u64, len: u32) -> bool {
            self.rx.peer_push(libc::xdp_desc {
                addr,
                len,
                options: 0,
            })
        }

        /// The kernel takes a frame to send from the tx ring.
        pub fn kernel_take_tx(&mut self) -> Option<libc::xdp_desc> {
            self.tx.peer_pop()
        }

        /// The kernel reports a sent frame's buffer on the completion ring.
        pub fn kernel_complete(&mut self, addr: u64) -> bool {
            self.comp.peer_push(addr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_sockets_chunks_come_back_and_no_others() {
        let mut umem = Umem::new(8).expect("mmap");
        let (mut a, mut b) = (fake_kernel::socket(4), fake_kernel::socket(4));
        assert_eq!(umem.fill(&mut a, PortId(1)), 4);
        assert_eq!(umem.fill(&mut b, PortId(2)), 4);
        assert_eq!(umem.free_chunks(), 0);
        // The kernel receives one frame on b and the worker sends it out of a: a's tx ring holds it.
        let base = b.kernel_take_fill().expect("a posted buffer");
        assert!(b.kernel_receive(base + RX_OFFSET as u64, 60));
        let (mut bases, mut frames) = (ArrayVec::new(), ArrayVec::new());
        assert_eq!(umem.receive(&mut b, PortId(2), &mut bases, &mut frames), 0);
        drop(frames);
        assert!(umem.transmit(&mut a, PortId(1), base, base + RX_OFFSET as u64, 60));
        assert_eq!((umem.held_by(PortId(1)), umem.held_by(PortId(2))), (5, 3));
        drop(a);
        assert_eq!(umem.reclaim(PortId(1)), 5, "its fill ring and its tx ring");
        assert_eq!(umem.free_chunks(), 5);
        assert_eq!(umem.held_by(PortId(2)), 3, "the other port keeps its own");
        assert_eq!(umem.reclaim(PortId(1)), 0, "nothing twice");
        assert_eq!(umem.orphaned(|p| p == PortId(2)), 0);
        assert_eq!(umem.orphaned(|_| false), 3, "b's, were b gone unreclaimed");
    }

    #[test]
    fn a_shared_umem_beyond_what_a_handoff_address_reaches_is_refused() {
        let per_worker = (HANDOFF_ADDRESSABLE / CHUNK_SIZE as u64 / 2) as u32;
        let err = Umem::shared(per_worker + 1, 2)
            .err()
            .expect("refused before mapping");
        assert!(err.to_string().contains("at most 4 GiB"), "{err}");
    }

    #[test]
    fn a_lent_chunk_is_writable_and_comes_back_when_recycled() {
        let mut umem = Umem::new(2).expect("mmap");
        let (base, chunk) = umem.lend().expect("a free chunk");
        assert_eq!(chunk.len(), CHUNK_SIZE);
        chunk[RX_OFFSET] = 7;
        let (other, _) = umem.lend().expect("the second chunk");
        assert_ne!(base, other);
        assert!(umem.lend().is_none(), "both chunks are lent");
        umem.recycle(base);
        assert_eq!(umem.free_chunks(), 1);
        let (again, chunk) = umem.lend().expect("the recycled chunk");
        assert_eq!((again, chunk[RX_OFFSET]), (base, 7));
    }

    #[test]
    fn a_chunk_changes_owner_only_from_the_state_it_is_in() {
        let mut umem = Umem::new(4).expect("mmap");
        assert_eq!(umem.free_chunks(), 4);
        // Recycling a chunk that was never received must not put it on the free list twice.
        umem.recycle(0);
        assert_eq!(umem.free_chunks(), 4);
        assert!(
            !umem.hand_over(4 * CHUNK_SIZE as u64, Owner::Free, Owner::Kernel(PortId(0))),
            "beyond the UMEM"
        );
        let base = umem.free.pop().expect("a free chunk");
        let port = PortId(3);
        assert!(umem.hand_over(base, Owner::Free, Owner::Kernel(port)));
        assert!(
            !umem.hand_over(base, Owner::Free, Owner::Batch),
            "already the kernel's"
        );
        assert!(
            !umem.hand_over(base, Owner::Kernel(PortId(4)), Owner::Batch),
            "another port's socket never held it"
        );
        assert!(umem.hand_over(base, Owner::Kernel(port), Owner::Batch));
        umem.recycle(base);
        umem.recycle(base);
        assert_eq!(umem.free_chunks(), 4, "recycled once");
    }
}
