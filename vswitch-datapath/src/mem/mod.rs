//! Guest memory: the regions a virtio driver shares with the device, and every translation from a
//! guest-physical address to host memory.
//!
//! This module owns [`GuestMemory`] (a small sorted array of [`GuestRegion`]s, immutable once
//! built), the hot-path translation of a guest range into [`HostSeg`]s (a range that spans regions
//! becomes several segments), and checked reads and writes at guest addresses. Every guest address
//! and every `addr + len` is checked, overflow included, so nothing can reach outside a region.
//! It must not know virtio (rings, descriptors) and holds no `unsafe`: raw loads and stores are
//! the crate-private `access` module's.
//!
//! Regions come from vhost-user `SET_MEM_TABLE` (a file descriptor mapped at an offset:
//! [`GuestRegion::from_fd`]), from `vm-memory` ([`GuestMemory::from_vm_memory`]), or from an
//! in-process test guest ([`GuestRegion::anonymous`]). A memory-table change builds a new
//! `GuestMemory`; queues and in-flight copies of the old one must be drained first.
//!
//! Submodules: `access` (crate-private: the mappings and their raw loads and stores, the only
//! `unsafe` here), [`dirty`] (the live-migration dirty log), [`sigbus`] (surviving a guest file
//! that shrinks under its mapping).

pub(crate) mod access;
pub mod dirty;
pub mod sigbus;

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::mem::access::Mapping;

/// A guest memory access that failed its checks. Hot path: `Copy`, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The guest address is in no region.
    #[error("guest address {addr:#x} is not in guest memory")]
    Unmapped {
        /// First guest address that is not mapped.
        addr: u64,
    },
    /// `addr + len` overflows the guest address space.
    #[error("guest range {addr:#x} + {len:#x} overflows")]
    Overflow {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// An object that must lie in one region (a ring, an index) spans two, or is misaligned.
    #[error("guest object at {addr:#x} is misaligned or spans regions")]
    NotContiguous {
        /// Start of the object.
        addr: u64,
    },
    /// A host segment does not belong to this guest memory (stale, or from another memory).
    #[error("host segment is not inside this guest memory")]
    ForeignSegment,
    /// A gather or scatter ran out of segment or buffer space.
    #[error("segments hold {have} bytes, {need} needed")]
    Short {
        /// Bytes available.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Building guest memory failed (control plane).
#[derive(Debug, thiserror::Error)]
pub enum MemoryConfigError {
    /// Mapping the region failed.
    #[error("cannot map guest region: {0}")]
    Map(#[from] std::io::Error),
    /// A region's guest range overflows the guest address space.
    #[error("guest region {gpa:#x} + {len:#x} overflows")]
    Overflow {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Two regions overlap in guest-physical space.
    #[error("guest regions at {a:#x} and {b:#x} overlap")]
    Overlap {
        /// Start of one region.
        a: u64,
        /// Start of the other.
        b: u64,
    },
    /// No region was given.
    #[error("guest memory has no region")]
    Empty,
}

/// One contiguous guest-physical range and the host mapping behind it.
#[derive(Debug)]
pub struct GuestRegion {
    gpa: u64,
    map: Mapping,
}

impl GuestRegion {
    /// `len` bytes of zeroed anonymous memory at guest address `gpa`.
    pub fn anonymous(gpa: u64, len: usize) -> Result<Self, MemoryConfigError> {
        Self::new(gpa, Mapping::anonymous(len, false)?)
    }

    /// Like [`anonymous`](Self::anonymous), with an inaccessible guard page on each side of the
    /// host mapping: an access just outside the region faults instead of reaching other memory.
    pub fn anonymous_guarded(gpa: u64, len: usize) -> Result<Self, MemoryConfigError> {
        Self::new(gpa, Mapping::anonymous(len, true)?)
    }

    /// `len` bytes of the file `fd` from byte `offset`, mapped shared, at guest address `gpa` (a
    /// vhost-user `SET_MEM_TABLE` region: `guest_phys_addr`, `memory_size`, `mmap_offset`).
    pub fn from_fd(gpa: u64, len: usize, fd: BorrowedFd<'_>, offset: u64) -> Result<Self, MemoryConfigError> {
        Self::new(gpa, Mapping::from_fd(fd, offset, len)?)
    }

    /// A `vm-memory` mapping at guest address `gpa`, kept alive by its `Arc`.
    pub fn from_mmap_region(gpa: u64, region: Arc<vm_memory::MmapRegion>) -> Result<Self, MemoryConfigError> {
        Self::new(gpa, Mapping::from_mmap_region(region)?)
    }

    fn new(gpa: u64, map: Mapping) -> Result<Self, MemoryConfigError> {
        let len = map.len() as u64;
        if gpa.checked_add(len).is_none() {
            return Err(MemoryConfigError::Overflow { gpa, len });
        }
        Ok(GuestRegion { gpa, map })
    }

    /// Guest-physical address of the first byte.
    #[inline]
    pub fn guest_addr(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true: an empty region cannot be built.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Host virtual address of the first byte (what an SVA copy engine or a memory registration
    /// needs).
    #[inline]
    pub fn host_addr(&self) -> usize {
        self.map.host_addr()
    }

    /// Offset of `gpa` in this region, if it is inside.
    #[inline]
    fn offset_of(&self, gpa: u64) -> Option<usize> {
        let off = gpa.checked_sub(self.gpa)?;
        (off < self.map.len() as u64).then_some(off as usize)
    }

    /// The mapping (crate-internal raw access).
    #[inline]
    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }
}

/// A piece of a guest buffer in host memory: a host virtual address and a length, inside one
/// guest region.
///
/// Only translation makes one, so a `HostSeg` always came from some [`GuestMemory`]; the copy
/// helpers of `GuestMemory` still check that it lies in *their* regions before touching it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSeg {
    host: usize,
    len: u32,
    /// The region it was translated in (where the copy helpers look first).
    region: u32,
}

impl HostSeg {
    /// Host virtual address of the first byte (the IOVA for an SVA engine).
    #[inline]
    pub fn host_addr(&self) -> usize {
        self.host
    }

    /// Length in bytes (never zero).
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: translation never makes an empty segment.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A caller-held cache of the region that the last lookup hit, so that consecutive lookups in the
/// same region skip the search. Any value is valid (a stale hint only costs a search).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionHint(usize);

/// Where a contiguous guest object lives: region index and offset in it (resolved once, e.g. for a
/// ring at queue setup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) region: usize,
    pub(crate) offset: usize,
}

/// The guest's memory: regions sorted by guest address, non-overlapping. Immutable once built;
/// `Send + Sync`, shared by the queues (and threads) of one guest through an `Arc`.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Box<[GuestRegion]>,
}

impl GuestMemory {
    /// Builds guest memory from regions in any order; they must not overlap.
    pub fn new(mut regions: Vec<GuestRegion>) -> Result<Self, MemoryConfigError> {
        if regions.is_empty() {
            return Err(MemoryConfigError::Empty);
        }
        regions.sort_by_key(|r| r.gpa);
        for w in regions.windows(2) {
            // `new` checked that `gpa + len` does not overflow.
            if w[0].gpa + w[0].len() as u64 > w[1].gpa {
                return Err(MemoryConfigError::Overlap { a: w[0].gpa, b: w[1].gpa });
            }
        }
        Ok(GuestMemory { regions: regions.into_boxed_slice() })
    }

    /// Builds guest memory over the regions of a `vm-memory` `GuestMemoryMmap` (sharing its
    /// mappings).
    pub fn from_vm_memory(mem: &GuestMemoryMmap) -> Result<Self, MemoryConfigError> {
        let regions = mem
            .iter()
            .map(|r| GuestRegion::from_mmap_region(r.start_addr().0, r.get_mmap()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(regions)
    }

    /// The regions, sorted by guest address.
    #[inline]
    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    /// Whether a region's file shrank under the switch (see [`crate::mem::sigbus`]): what the memory
    /// holds is no longer the guest's, and the queues on it must stop. One atomic load per region.
    #[inline]
    pub fn lost(&self) -> bool {
        self.regions.iter().any(|r| r.mapping().lost())
    }

    #[inline]
    pub(crate) fn region(&self, idx: usize) -> &GuestRegion {
        &self.regions[idx]
    }

    /// Index of the region holding `gpa`, trying `hint` first.
    #[inline]
    fn find(&self, gpa: u64, hint: &mut RegionHint) -> Result<usize, MemoryError> {
        if let Some(r) = self.regions.get(hint.0) {
            if r.offset_of(gpa).is_some() {
                return Ok(hint.0);
            }
        }
        let i = self.regions.partition_point(|r| r.gpa <= gpa);
        if i > 0 && self.regions[i - 1].offset_of(gpa).is_some() {
            hint.0 = i - 1;
            return Ok(i - 1);
        }
        Err(MemoryError::Unmapped { addr: gpa })
    }

    /// Translates the guest range `gpa .. gpa + len` and appends its host segments to `out`, one
    /// per region it touches. On error `out` is left as it was. A zero `len` appends nothing.
    #[inline]
    pub fn translate(
        &self,
        gpa: u64,
        len: u32,
        hint: &mut RegionHint,
        out: &mut Vec<HostSeg>,
    ) -> Result<(), MemoryError> {
        let start = out.len();
        let r = self.translate_inner(gpa, len, hint, out);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    fn translate_inner(
        &self,
        gpa: u64,
        len: u32,
        hint: &mut RegionHint,
        out: &mut Vec<HostSeg>,
    ) -> Result<(), MemoryError> {
        if gpa.checked_add(len as u64).is_none() {
            return Err(MemoryError::Overflow { addr: gpa, len: len as u64 });
        }
        let (mut cur, mut left) = (gpa, len as u64);
        while left > 0 {
            let idx = self.find(cur, hint)?;
            let r = &self.regions[idx];
            let off = (cur - r.gpa) as usize;
            let take = left.min((r.len() - off) as u64);
            out.push(HostSeg { host: r.host_addr() + off, len: take as u32, region: idx as u32 });
            cur += take;
            left -= take;
        }
        Ok(())
    }

    /// The host segment of `gpa .. gpa + len` if it lies inside one region (`None` otherwise,
    /// also for `len == 0`): the single-segment fast path of [`translate`](Self::translate).
    #[inline(always)]
    pub fn translate_one(&self, gpa: u64, len: u32, hint: &mut RegionHint) -> Option<HostSeg> {
        let idx = self.find(gpa, hint).ok()?;
        let r = &self.regions[idx];
        // `find` proved `off < r.len()`.
        let off = (gpa - r.gpa) as usize;
        if len == 0 || len as usize > r.len() - off {
            return None;
        }
        Some(HostSeg { host: r.host_addr() + off, len, region: idx as u32 })
    }

    /// Resolves a guest object of `len` bytes at `gpa` that must lie in one region with its host
    /// address aligned to `align` (rings, ring indices).
    pub(crate) fn place(&self, gpa: u64, len: usize, align: usize) -> Result<Place, MemoryError> {
        if gpa.checked_add(len as u64).is_none() {
            return Err(MemoryError::Overflow { addr: gpa, len: len as u64 });
        }
        let idx = self.find(gpa, &mut RegionHint::default())?;
        let r = &self.regions[idx];
        let offset = (gpa - r.gpa) as usize;
        if offset + len > r.len() || (r.host_addr() + offset) % align != 0 {
            return Err(MemoryError::NotContiguous { addr: gpa });
        }
        Ok(Place { region: idx, offset })
    }

    /// Copies guest memory at `gpa` into `dst` (the range may span regions).
    pub fn read(&self, gpa: u64, dst: &mut [u8]) -> Result<(), MemoryError> {
        self.walk(gpa, dst.len(), |map, off, at| {
            let end = at + (dst.len() - at).min(map.len() - off);
            let ok = map.read_bytes(off, &mut dst[at..end]);
            debug_assert!(ok, "range checked by walk");
            end - at
        })
    }

    /// Copies `src` into guest memory at `gpa` (the range may span regions). Nothing is written
    /// unless the whole range is mapped.
    pub fn write(&self, gpa: u64, src: &[u8]) -> Result<(), MemoryError> {
        self.walk(gpa, src.len(), |map, off, at| {
            let end = at + (src.len() - at).min(map.len() - off);
            let ok = map.write_bytes(off, &src[at..end]);
            debug_assert!(ok, "range checked by walk");
            end - at
        })
    }

    /// Checks that `gpa .. gpa + len` is mapped, then calls `f(mapping, offset, done)` per region
    /// piece; `f` returns how many bytes it handled.
    fn walk(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(&Mapping, usize, usize) -> usize,
    ) -> Result<(), MemoryError> {
        if gpa.checked_add(len as u64).is_none() {
            return Err(MemoryError::Overflow { addr: gpa, len: len as u64 });
        }
        let mut hint = RegionHint::default();
        // Check the whole range first so a failing write leaves memory untouched.
        let (mut cur, mut left) = (gpa, len as u64);
        while left > 0 {
            let r = &self.regions[self.find(cur, &mut hint)?];
            let take = left.min(r.len() as u64 - (cur - r.gpa));
            cur += take;
            left -= take;
        }
        let (mut cur, mut at) = (gpa, 0usize);
        while at < len {
            let r = &self.regions[self.find(cur, &mut hint)?];
            let n = f(&r.map, (cur - r.gpa) as usize, at);
            at += n;
            cur += n as u64;
        }
        Ok(())
    }

    /// Reads `N` bytes at `gpa` (a descriptor, a header); the range may span regions.
    #[inline]
    pub fn read_array<const N: usize>(&self, gpa: u64, hint: &mut RegionHint) -> Result<[u8; N], MemoryError> {
        let idx = self.find(gpa, hint)?;
        let r = &self.regions[idx];
        if let Some(v) = r.map.read_array::<N>((gpa - r.gpa) as usize) {
            return Ok(v);
        }
        let mut buf = [0u8; N];
        self.read(gpa, &mut buf)?;
        Ok(buf)
    }

    /// Loads the little-endian `u16` at `gpa` with `Acquire` ordering. It must be 2-aligned.
    pub fn load_u16_acquire(&self, gpa: u64) -> Result<u16, MemoryError> {
        let p = self.place(gpa, 2, 2)?;
        self.regions[p.region].map.load_u16_acquire(p.offset).ok_or(MemoryError::NotContiguous { addr: gpa })
    }

    /// Stores the little-endian `u16` at `gpa` with `Release` ordering. It must be 2-aligned.
    pub fn store_u16_release(&self, gpa: u64, v: u16) -> Result<(), MemoryError> {
        let p = self.place(gpa, 2, 2)?;
        if self.regions[p.region].map.store_u16_release(p.offset, v) {
            Ok(())
        } else {
            Err(MemoryError::NotContiguous { addr: gpa })
        }
    }

    /// Region index and offset of a host segment, if it lies inside one of this memory's regions
    /// (the region it was translated in is tried first: one range check).
    #[inline]
    fn locate(&self, seg: HostSeg) -> Result<(usize, usize), MemoryError> {
        if let Some(r) = self.regions.get(seg.region as usize) {
            if let Some(off) = r.map.offset_of_host(seg.host, seg.len as usize) {
                return Ok((seg.region as usize, off));
            }
        }
        self.locate_slow(seg)
    }

    #[cold]
    fn locate_slow(&self, seg: HostSeg) -> Result<(usize, usize), MemoryError> {
        for (i, r) in self.regions.iter().enumerate() {
            if let Some(off) = r.map.offset_of_host(seg.host, seg.len as usize) {
                return Ok((i, off));
            }
        }
        Err(MemoryError::ForeignSegment)
    }

    /// Gathers the first `dst.len()` bytes of `segs` into `dst` (a header, a small packet, a CPU
    /// copy). Fails with [`MemoryError::Short`] when the segments hold fewer bytes, and with
    /// [`MemoryError::ForeignSegment`] for a segment not in this memory.
    #[inline]
    pub fn gather(&self, segs: &[HostSeg], dst: &mut [u8]) -> Result<(), MemoryError> {
        // The common case, a header in the first segment: one check, one copy. (Nothing to
        // copy needs no segment, not even a valid one.)
        if dst.is_empty() {
            return Ok(());
        }
        if let Some(&s) = segs.first() {
            if s.len as usize >= dst.len() {
                let (idx, off) = self.locate(s)?;
                self.regions[idx].map.read_bytes(off, dst);
                return Ok(());
            }
        }
        self.gather_slow(segs, dst)
    }

    #[cold]
    #[inline(never)]
    fn gather_slow(&self, segs: &[HostSeg], dst: &mut [u8]) -> Result<(), MemoryError> {
        let mut at = 0;
        for &s in segs {
            if at == dst.len() {
                break;
            }
            let (idx, off) = self.locate(s)?;
            let n = (s.len as usize).min(dst.len() - at);
            self.regions[idx].map.read_bytes(off, &mut dst[at..at + n]);
            at += n;
        }
        if at < dst.len() {
            return Err(MemoryError::Short { have: at, need: dst.len() });
        }
        Ok(())
    }

    /// Scatters `src` into `segs`, in order (an RX packet, a header). Nothing is written unless
    /// every segment is in this memory and they hold at least `src.len()` bytes.
    #[inline(always)]
    pub fn scatter(&self, src: &[u8], segs: &[HostSeg]) -> Result<(), MemoryError> {
        if src.is_empty() {
            return Ok(());
        }
        if let Some(&s) = segs.first() {
            if s.len as usize >= src.len() {
                let (idx, off) = self.locate(s)?;
                self.regions[idx].map.write_bytes(off, src);
                return Ok(());
            }
        }
        self.scatter_slow(src, segs)
    }

    #[cold]
    #[inline(never)]
    fn scatter_slow(&self, src: &[u8], segs: &[HostSeg]) -> Result<(), MemoryError> {
        let mut have = 0usize;
        for &s in segs {
            if have >= src.len() {
                break;
            }
            self.locate(s)?;
            have += s.len as usize;
        }
        if have < src.len() {
            return Err(MemoryError::Short { have, need: src.len() });
        }
        let mut at = 0;
        for &s in segs {
            if at == src.len() {
                break;
            }
            let (idx, off) = self.locate(s)?;
            let n = (s.len as usize).min(src.len() - at);
            self.regions[idx].map.write_bytes(off, &src[at..at + n]);
            at += n;
        }
        Ok(())
    }
}
