//! The conntrack table's memory: its slot array and each slot's kept paths, allocated without being
//! written, so that a slot costs resident memory only once a flow is first stored in its page. An
//! agent with a table of 262,144 flows and no traffic holds none of its 64 MiB of slots and 64 MiB of
//! paths resident; under load the table grows into them, up to their full size (see
//! [`super::Conntrack::allocated_bytes`]).
//!
//! An empty slot is all zero bytes — what the kernel maps on first touch — so the slot array comes
//! from a zeroed allocation (which the allocator serves from fresh pages it knows are zero rather than
//! by writing them): a slot holds its key's fields with a `used` flag (zero:
//! empty) and its entry uninitialised until stored. The paths are never read before they are
//! written: a slot's `paths` flag says they were. Every `unsafe` of the table is in this file.

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use super::CtEntry;
use crate::pipeline::fastpath::{FlowPaths, Path};
use crate::{Addr, FlowKey};

/// One slot: a flow's key and entry, or nothing. Every field is valid as all zero bytes, and all
/// zero bytes are an empty slot. Exactly two cache lines, as a lookup prefetches them: unaligned,
/// most slots would straddle three ([`CellArray`] places them on line boundaries).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Cell {
    src: Addr,
    dst: Addr,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    /// The slot holds a flow: its key above and `entry` are written.
    used: bool,
    /// The slot's paths are written ([`FlowPaths::default`] at least): they may be read.
    paths: bool,
    entry: MaybeUninit<CtEntry>,
}

impl Cell {
    fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto,
        }
    }

    fn is(&self, key: &FlowKey) -> bool {
        self.src == key.src
            && self.dst == key.dst
            && self.src_port == key.src_port
            && self.dst_port == key.dst_port
            && self.proto == key.proto
    }

    fn entry(&self) -> Option<&CtEntry> {
        // SAFETY: `used` is set only by `put`, which writes the entry in the same statement.
        self.used.then(|| unsafe { self.entry.assume_init_ref() })
    }

    fn entry_mut(&mut self) -> Option<&mut CtEntry> {
        // SAFETY: as in `entry`.
        self.used.then(|| unsafe { self.entry.assume_init_mut() })
    }
}

/// Every slot of one table and its paths.
pub(super) struct Slots {
    cells: CellArray,
    /// Written where the slot's `paths` flag says so; never read elsewhere.
    paths: Box<[MaybeUninit<FlowPaths>]>,
}

impl Slots {
    /// `len` empty slots; none of their memory is written.
    pub(super) fn new(len: usize) -> Slots {
        Slots {
            cells: CellArray::zeroed(len),
            paths: Box::new_uninit_slice(len),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.cells.len()
    }

    /// Bytes allocated for the slots and their paths (resident only where written).
    pub(super) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.cells) + std::mem::size_of_val(&*self.paths)
    }

    /// Whether slot `i` holds no flow (`false` past the end).
    pub(super) fn is_free(&self, i: usize) -> bool {
        self.cells.get(i).is_some_and(|c| !c.used)
    }

    /// The key of the flow in slot `i`.
    pub(super) fn key(&self, i: usize) -> Option<FlowKey> {
        self.cells.get(i).filter(|c| c.used).map(Cell::key)
    }

    /// Whether slot `i` holds the flow of `key`; `None` if it holds none (or is past the end).
    pub(super) fn holds(&self, i: usize, key: &FlowKey) -> Option<bool> {
        let cell = self.cells.get(i)?;
        cell.used.then(|| cell.is(key))
    }

    pub(super) fn entry(&self, i: usize) -> Option<&CtEntry> {
        self.cells.get(i)?.entry()
    }

    pub(super) fn entry_mut(&mut self, i: usize) -> Option<&mut CtEntry> {
        self.cells.get_mut(i)?.entry_mut()
    }

    /// Stores a flow in slot `i` (which must be in range), with no paths.
    pub(super) fn put(&mut self, i: usize, key: FlowKey, entry: CtEntry) -> Option<&mut CtEntry> {
        let cell = self.cells.get_mut(i)?;
        *cell = Cell {
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
            used: true,
            paths: false,
            entry: MaybeUninit::new(entry),
        };
        cell.entry_mut()
    }

    /// Empties slot `i`; returns its flow's entry.
    pub(super) fn take(&mut self, i: usize) -> Option<CtEntry> {
        let cell = self.cells.get_mut(i)?;
        let entry = *cell.entry()?;
        cell.used = false;
        cell.paths = false;
        Some(entry)
    }

    /// Moves the flow of slot `from` with its paths to the empty slot `to`.
    pub(super) fn shift(&mut self, from: usize, to: usize) {
        let (Some(&cell), Some(&paths)) = (self.cells.get(from), self.paths.get(from)) else {
            return;
        };
        if let (Some(dst), Some(dst_paths)) = (self.cells.get_mut(to), self.paths.get_mut(to)) {
            *dst = cell;
            *dst_paths = paths;
        }
        if let Some(src) = self.cells.get_mut(from) {
            src.used = false;
            src.paths = false;
        }
    }

    /// Every flow, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (FlowKey, &CtEntry)> {
        self.cells
            .iter()
            .filter_map(|c| Some((c.key(), c.entry()?)))
    }

    /// The path kept in slot `i` for a direction.
    pub(super) fn path(&self, i: usize, reply: bool) -> Option<Path> {
        let cell = self.cells.get(i)?;
        if !cell.paths {
            return None;
        }
        // SAFETY: the `paths` flag is set only by `set_path`, after it wrote the slot's paths; a move
        // (`shift`) carries the paths with the flag.
        unsafe { self.paths.get(i)?.assume_init_ref() }.get(reply)
    }

    /// Keeps a direction's path in slot `i`.
    pub(super) fn set_path(&mut self, i: usize, reply: bool, path: Path) {
        let (Some(cell), Some(paths)) = (self.cells.get_mut(i), self.paths.get_mut(i)) else {
            return;
        };
        if !cell.paths {
            paths.write(FlowPaths::default());
            cell.paths = true;
        }
        // SAFETY: written just above, or before the flag was set.
        unsafe { paths.assume_init_mut() }.set(reply, path);
    }

    /// Starts loading the first line of slot `i`, and the second (the entry's end).
    pub(super) fn prefetch(&self, i: usize) {
        if let Some(cell) = self.cells.get(i) {
            let start: *const u8 = (cell as *const Cell).cast();
            crate::prefetch::prefetch(start);
            crate::prefetch::prefetch(start.wrapping_add(64));
        }
    }

    /// Starts loading the line of slot `i`'s path for a direction, if it has paths.
    pub(super) fn prefetch_path(&self, i: usize, reply: bool) {
        if !self.cells.get(i).is_some_and(|c| c.paths) {
            return;
        }
        if let Some(paths) = self.paths.get(i) {
            // SAFETY: as in `path`.
            crate::prefetch::prefetch(unsafe { paths.assume_init_ref() }.line(reply));
        }
    }
}

/// `len` empty cells, the first on a cache-line boundary, from a zeroed allocation: the allocator
/// takes fresh pages from the kernel for a large one and writes nothing. The allocation asks for no
/// more than the allocator's own 16-byte alignment, since for a larger one the allocator writes the
/// zeroes itself; it is one line longer, and the cells start at its first line boundary.
struct CellArray {
    base: NonNull<u8>,
    layout: Layout,
    cells: NonNull<Cell>,
    len: usize,
}

// SAFETY: a `CellArray` owns its allocation as a `Box<[Cell]>` would, and `Cell` is `Send + Sync`.
unsafe impl Send for CellArray {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for CellArray {}

impl CellArray {
    fn zeroed(len: usize) -> CellArray {
        let line = std::mem::align_of::<Cell>();
        let layout = std::mem::size_of::<Cell>()
            .checked_mul(len)
            .and_then(|bytes| bytes.checked_add(line))
            .and_then(|bytes| Layout::from_size_align(bytes, 16).ok())
            .unwrap_or_else(|| panic!("{len} conntrack slots do not fit the address space"));
        // SAFETY: the layout's size is at least one line, never zero.
        let base = unsafe { alloc_zeroed(layout) };
        let Some(base) = NonNull::new(base) else {
            handle_alloc_error(layout);
        };
        let offset = base.as_ptr().align_offset(line);
        // SAFETY: `offset` < `line` (the allocation is 16-aligned and `line` a power of two), and
        // the allocation holds `line` bytes beyond `len` cells, so the cells lie inside it.
        let cells = unsafe { base.add(offset) }.cast::<Cell>();
        CellArray {
            base,
            layout,
            cells,
            len,
        }
    }
}

impl std::ops::Deref for CellArray {
    type Target = [Cell];

    fn deref(&self) -> &[Cell] {
        // SAFETY: `cells` is aligned for `Cell` and points at `len` cells inside the live
        // allocation, all zero bytes at first (an empty `Cell`) and written only as whole cells.
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for CellArray {
    fn deref_mut(&mut self) -> &mut [Cell] {
        // SAFETY: as in `deref`; `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.cells.as_ptr(), self.len) }
    }
}

impl Drop for CellArray {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated by the global allocator with `layout`, and is freed once.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("len", &self.cells.len())
            .field("used", &self.cells.iter().filter(|c| c.used).count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;

    #[test]
    fn a_slot_is_two_cache_lines_on_line_boundaries() {
        assert_eq!(std::mem::size_of::<Cell>(), 128);
        for len in [1, 3, 64, 4096] {
            let slots = Slots::new(len);
            assert_eq!(slots.cells.as_ptr() as usize % 64, 0, "{len} slots");
            assert_eq!(slots.cells.len(), len);
        }
    }

    #[test]
    fn a_new_table_is_empty_and_its_slots_hold_what_was_put() {
        let mut slots = Slots::new(64);
        assert!((0..64).all(|i| slots.is_free(i) && slots.key(i).is_none()));
        assert!(slots.iter().next().is_none());
        let key = FlowKey {
            src: Addr::from_v4_bits(1),
            dst: Addr::from_v4_bits(2),
            src_port: 3,
            dst_port: 4,
            proto: proto::TCP,
        };
        let entry = CtEntry::new(proto::TCP, 5, &Default::default());
        slots.put(7, key, entry);
        assert_eq!(slots.holds(7, &key), Some(true));
        assert_eq!(slots.holds(7, &key.reversed()), Some(false));
        assert_eq!(slots.holds(8, &key), None);
        assert_eq!(slots.key(7), Some(key));
        assert_eq!(slots.path(7, false), None);
        slots.shift(7, 9);
        assert!(slots.is_free(7) && slots.holds(9, &key) == Some(true));
        assert_eq!(slots.take(9), Some(entry));
        assert!(slots.is_free(9) && slots.take(9).is_none());
        assert!(!slots.is_free(64) && slots.holds(64, &key).is_none());
    }

    /// Resident KiB of the mapping holding `addr`, from /proc/self/smaps.
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-')) {
                if let Some((start, end)) = range.split_once('-') {
                    let (Ok(start), Ok(end)) = (
                        usize::from_str_radix(start, 16),
                        usize::from_str_radix(end, 16),
                    ) else {
                        continue;
                    };
                    inside = (start..end).contains(&addr);
                    continue;
                }
            }
            if let Some(kib) = line.strip_prefix("Rss:").filter(|_| inside) {
                return kib.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn a_large_table_is_resident_only_where_written() {
        // 64 MiB of slots and 64 MiB of paths: mappings of their own.
        let mut slots = Slots::new(1 << 19);
        let cells = slots.cells.as_ptr() as usize;
        let paths = slots.paths.as_ptr() as usize;
        // Neighbouring mappings may have merged into theirs; nothing near 64 MiB is resident.
        assert!(resident_kib(cells) < 8 << 10, "{} KiB", resident_kib(cells));
        assert!(resident_kib(paths) < 8 << 10, "{} KiB", resident_kib(paths));
        let entry = CtEntry::new(proto::UDP, 0, &Default::default());
        for i in (0..1 << 19).step_by(1 << 12) {
            slots.put(i, FlowKey::default(), entry);
        }
        // 128 slots written, 128 pages.
        assert!(resident_kib(cells) < 8 << 10, "{} KiB", resident_kib(cells));
        assert!(slots.iter().count() == 128);
    }
}
