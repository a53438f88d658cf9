//! Raw access to mapped guest memory: the only module of this crate with `unsafe`.
//!
//! It owns [`Mapping`], one contiguous host mapping of guest memory (an anonymous mapping with
//! optional guard pages, a shared mapping of a file descriptor as vhost-user `SET_MEM_TABLE` hands
//! it over, or a `vm-memory` [`MmapRegion`] kept alive by its `Arc`), and every load and store
//! into it: byte copies, small fixed-size reads and writes for ring fields and descriptors, and
//! the acquire load / release store of `u16` ring indices. Every method takes an offset into the
//! mapping and checks `offset + len` against the mapping's length (with overflow checks) before it
//! touches a byte, so the safe API above cannot reach outside a mapping.
//!
//! This module must not know guest-physical addresses, virtio, or ring layouts: that is
//! [`crate::mem`] and [`crate::virtio`]. It must not hand out references (`&[u8]`, `&mut [u8]`)
//! into guest memory either: the guest may write any byte at any time, so every access is a
//! volatile or atomic access through a raw pointer, and whatever is read is only a snapshot that the
//! caller validates before use.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use vm_memory::MmapRegion;

/// What keeps a [`Mapping`]'s memory mapped, and how to give it back.
enum Backing {
    /// Mapped by this module with `mmap`; `munmap(base, len)` on drop.
    Owned {
        /// Start of the whole mapping (guard pages included).
        base: *mut u8,
        /// Length of the whole mapping.
        len: usize,
    },
    /// Owned by `vm-memory`; unmapped when the last `Arc` goes.
    VmMemory(#[allow(dead_code)] Arc<MmapRegion>),
}

/// One contiguous host mapping of guest memory, readable and writable, that stays mapped for the
/// mapping's lifetime.
///
/// Invariant: `ptr .. ptr + len` is mapped readable and writable for as long as `self` lives.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    backing: Backing,
    /// For a shared file mapping: its registration for SIGBUS recovery (the file may shrink).
    guard: Option<crate::mem::sigbus::Guard>,
}

// SAFETY: a `Mapping` is a plain address range that stays mapped until drop; it has no
// thread-affine state, and all access through it is volatile/atomic with raw pointers.
unsafe impl Send for Mapping {}
// SAFETY: every method takes `&self` and only performs volatile or atomic accesses through raw
// pointers (never creating references), so concurrent use from several threads is no different
// from the guest writing the memory concurrently, which the API already tolerates.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("host", &(self.ptr as usize as *const u8))
            .field("len", &self.len)
            .field(
                "backing",
                &match self.backing {
                    Backing::Owned { .. } => "owned",
                    Backing::VmMemory(_) => "vm-memory",
                },
            )
            .finish()
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
}

/// Hints the CPU to bring the cache line holding host address `addr` in (a guest buffer about to
/// be copied). Any address is allowed: a prefetch reads nothing architecturally and never faults.
#[inline]
pub fn prefetch_host(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` has no architectural effect (it loads no value and never faults, even
    // for an unmapped address); SSE, which it needs, is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(addr as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Whether the CPU has PREFETCHW (CPUID 0x8000_0001, ECX bit 8), asked once.
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 no, 2 yes
    match KNOWN.load(Ordering::Relaxed) {
        0 => {
            #[allow(unused_unsafe)] // `__cpuid` is safe on newer toolchains
            // SAFETY: CPUID is available on every x86_64 CPU; leaf 0x8000_0000 gives the highest
            // extended leaf, so 0x8000_0001 is asked only where it exists.
            let yes = unsafe {
                use core::arch::x86_64::__cpuid;
                __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
            };
            KNOWN.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
        k => k == 2,
    }
}

/// Hints the CPU to bring the first two cache lines at host address `addr` in for writing (a
/// guest buffer about to be filled: the header and the start of the packet), so their ownership
/// is on its way before the first store. Any address is allowed, as for [`prefetch_host`].
#[inline]
pub fn prefetch_host_write(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        // SAFETY: the CPU has PREFETCHW (checked above); a prefetch has no architectural effect:
        // it loads no value and never faults, even for an unmapped address.
        unsafe {
            core::arch::asm!(
                "prefetchw byte ptr [{0}]",
                "prefetchw byte ptr [{0} + 64]",
                in(reg) addr,
                options(nostack, preserves_flags, readonly)
            )
        };
    } else {
        prefetch_host(addr);
        prefetch_host(addr.wrapping_add(64));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

fn round_up(v: usize, to: usize) -> Option<usize> {
    v.checked_add(to - 1).map(|x| x & !(to - 1))
}

impl Mapping {
    /// Maps `len` bytes of zeroed anonymous memory. With `guard`, the mapping is preceded and
    /// followed by an inaccessible page, so a stray access next to it faults instead of reaching
    /// other memory (what the test guest uses to prove bounds checks).
    pub fn anonymous(len: usize, guard: bool) -> io::Result<Mapping> {
        let page = page_size();
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let inner =
            round_up(len, page).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "length overflows"))?;
        let g = if guard { page } else { 0 };
        let total =
            inner.checked_add(2 * g).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "length overflows"))?;
        let prot = if guard { libc::PROT_NONE } else { libc::PROT_READ | libc::PROT_WRITE };
        // SAFETY: an anonymous private mapping at an address of the kernel's choice does not
        // alias any existing Rust object; the result is checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        // SAFETY: `g <= total`, so `base + g` is inside the mapping just created.
        let ptr = unsafe { base.add(g) };
        let m = Mapping { ptr, len, backing: Backing::Owned { base, len: total }, guard: None };
        if guard {
            // SAFETY: `ptr .. ptr + inner` lies inside the mapping created above (between the two
            // guard pages) and is page aligned; changing its protection affects only that mapping.
            let rc = unsafe { libc::mprotect(ptr.cast(), inner, libc::PROT_READ | libc::PROT_WRITE) };
            if rc != 0 {
                return Err(io::Error::last_os_error()); // `m` drops and unmaps
            }
        }
        Ok(m)
    }

    /// Maps `len` bytes of the file `fd` starting at byte `offset`, shared (`MAP_SHARED`), as
    /// vhost-user memory regions are. `offset` need not be page aligned.
    pub fn from_fd(fd: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Mapping> {
        let page = page_size();
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        let delta = (offset % page as u64) as usize;
        let file_off = offset - delta as u64;
        let total =
            len.checked_add(delta).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "length overflows"))?;
        let file_off = libc::off_t::try_from(file_off)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: a new shared mapping at an address of the kernel's choice does not alias any
        // Rust object; the result is checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                file_off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let mut m = Mapping {
            // SAFETY: `delta < page <= total`, inside the mapping just created.
            ptr: unsafe { base.add(delta) },
            len,
            backing: Backing::Owned { base, len: total },
            guard: None,
        };
        // The frontend keeps the file and may shrink it: register before first use.
        m.guard = Some(crate::mem::sigbus::guard(base as usize, total)?); // on error `m` unmaps
        Ok(m)
    }

    /// Uses a `vm-memory` mapping, keeping it mapped through its `Arc`.
    pub fn from_mmap_region(region: Arc<MmapRegion>) -> io::Result<Mapping> {
        let (ptr, len) = (region.as_ptr(), region.size());
        if ptr.is_null() || len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        if region.prot() & (libc::PROT_READ | libc::PROT_WRITE) != libc::PROT_READ | libc::PROT_WRITE {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "vm-memory region is not readable and writable"));
        }
        Ok(Mapping { ptr, len, backing: Backing::VmMemory(region), guard: None })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file behind this mapping shrank under it: its pages were replaced by zero
    /// pages when an access faulted (see [`crate::mem::sigbus`]), and what it holds is not the guest's.
    #[inline]
    pub fn lost(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.lost())
    }

    /// Never true (an empty mapping cannot be built); here for API symmetry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host virtual address of the first byte.
    #[inline]
    pub fn host_addr(&self) -> usize {
        self.ptr as usize
    }

    /// A pointer to `off .. off + len` when that range lies inside the mapping.
    #[inline]
    fn range(&self, off: usize, len: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= end <= self.len`, so the result is inside (or one past) the mapping.
        Some(unsafe { self.ptr.add(off) })
    }

    /// Offset of the host range `host .. host + len` inside this mapping, if it lies inside.
    #[inline]
    pub fn offset_of_host(&self, host: usize, len: usize) -> Option<usize> {
        let off = host.checked_sub(self.ptr as usize)?;
        let end = off.checked_add(len)?;
        (end <= self.len).then_some(off)
    }

    /// Copies `dst.len()` bytes from offset `off`. `false` (and nothing copied) when the range is
    /// not inside the mapping.
    #[inline]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(src) = self.range(off, dst.len()) else {
            return false;
        };
        // SAFETY: `src .. src + dst.len()` is inside the mapping (checked by `range`), which stays
        // mapped while `self` lives; `dst` is a distinct Rust buffer, so they do not overlap. The
        // guest may write the source concurrently: the copy may then be torn, which callers treat
        // as untrusted bytes anyway.
        unsafe { std::ptr::copy_nonoverlapping(src.cast_const(), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` to offset `off`. `false` (and nothing written) when the range is not inside the
    /// mapping.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) -> bool {
        let Some(dst) = self.range(off, src.len()) else {
            return false;
        };
        // SAFETY: `dst .. dst + src.len()` is inside the mapping (checked by `range`), mapped
        // writable while `self` lives; `src` is a Rust buffer, never a reference into a mapping,
        // so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }

    /// Reads `N` bytes at `off` with volatile accesses: 8 bytes at a time when the address is
    /// 8-aligned and `N` a multiple of 8 (a descriptor is two loads), else 4, else 1.
    #[inline(always)]
    pub fn read_array<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p = self.range(off, N)?;
        let mut v = [0u8; N];
        if N % 8 == 0 && p as usize % 8 == 0 {
            let mut i = 0;
            while i < N {
                // SAFETY: `p .. p + N` is inside the mapping (checked by `range`), `p + i` is
                // 8-aligned and `i + 8 <= N`; the destination is a local array of `N` bytes.
                unsafe {
                    let x = p.add(i).cast::<u64>().read_volatile();
                    v.as_mut_ptr().add(i).cast::<u64>().write_unaligned(x);
                }
                i += 8;
            }
        } else if N % 4 == 0 && p as usize % 4 == 0 {
            let mut i = 0;
            while i < N {
                // SAFETY: as above, with 4-byte accesses at 4-aligned addresses.
                unsafe {
                    let x = p.add(i).cast::<u32>().read_volatile();
                    v.as_mut_ptr().add(i).cast::<u32>().write_unaligned(x);
                }
                i += 4;
            }
        } else {
            for (i, b) in v.iter_mut().enumerate() {
                // SAFETY: `p + i` is inside the mapping (`i < N`, range checked).
                *b = unsafe { p.add(i).read_volatile() };
            }
        }
        Some(v)
    }

    /// Reads the two little-endian `u64` words at `off` (a split-ring descriptor) with two
    /// volatile loads; `None` when the range is outside the mapping or not 8-aligned.
    #[inline(always)]
    pub fn read_u64_pair(&self, off: usize) -> Option<[u64; 2]> {
        let p = self.range(off, 16)?;
        if p as usize % 8 != 0 {
            return None;
        }
        // SAFETY: `p .. p + 16` is inside the mapping (checked by `range`) and 8-aligned, so both
        // `u64` loads are in bounds and aligned; every bit pattern is a valid `u64`.
        unsafe {
            let q = p.cast::<u64>();
            Some([u64::from_le(q.read_volatile()), u64::from_le(q.add(1).read_volatile())])
        }
    }

    /// Writes two little-endian `u32` words at `off` (a split-ring used element) with two
    /// volatile stores; `false` (nothing written) when outside the mapping or not 4-aligned.
    #[inline(always)]
    pub fn write_u32_pair(&self, off: usize, v: [u32; 2]) -> bool {
        let Some(p) = self.range(off, 8) else {
            return false;
        };
        if p as usize % 4 != 0 {
            return false;
        }
        // SAFETY: `p .. p + 8` is inside the writable mapping (checked by `range`) and 4-aligned,
        // so both `u32` stores are in bounds and aligned.
        unsafe {
            let q = p.cast::<u32>();
            q.write_volatile(v[0].to_le());
            q.add(1).write_volatile(v[1].to_le());
        }
        true
    }

    /// Writes `N` bytes at `off` with volatile accesses, as wide as in
    /// [`read_array`](Self::read_array) (a used element at its 4-aligned slot is two stores).
    #[inline(always)]
    pub fn write_array<const N: usize>(&self, off: usize, v: [u8; N]) -> bool {
        let Some(p) = self.range(off, N) else {
            return false;
        };
        if N % 8 == 0 && p as usize % 8 == 0 {
            let mut i = 0;
            while i < N {
                // SAFETY: `p .. p + N` is inside the writable mapping (checked by `range`), `p + i`
                // is 8-aligned and `i + 8 <= N`; the source is a local array of `N` bytes.
                unsafe {
                    let x = v.as_ptr().add(i).cast::<u64>().read_unaligned();
                    p.add(i).cast::<u64>().write_volatile(x);
                }
                i += 8;
            }
        } else if N % 4 == 0 && p as usize % 4 == 0 {
            let mut i = 0;
            while i < N {
                // SAFETY: as above, with 4-byte accesses at 4-aligned addresses.
                unsafe {
                    let x = v.as_ptr().add(i).cast::<u32>().read_unaligned();
                    p.add(i).cast::<u32>().write_volatile(x);
                }
                i += 4;
            }
        } else {
            for (i, b) in v.iter().enumerate() {
                // SAFETY: `p + i` is inside the writable mapping (`i < N`, range checked).
                unsafe { p.add(i).write_volatile(*b) };
            }
        }
        true
    }

    /// Sets the bits of `mask` in the byte at `off` atomically (the shared dirty log, which the
    /// frontend reads and clears concurrently). False if `off` is outside the mapping.
    #[inline]
    pub fn fetch_or_u8(&self, off: usize, mask: u8) -> bool {
        let Some(p) = self.range(off, 1) else {
            return false;
        };
        // SAFETY: `p` is inside the mapping (checked by `range`) and stays mapped while `self`
        // lives; `AtomicU8` has alignment 1; the other party (QEMU's log sync) accesses the log
        // with atomic operations too.
        unsafe { std::sync::atomic::AtomicU8::from_ptr(p) }.fetch_or(mask, Ordering::Release);
        true
    }

    /// Swaps the byte at `off` for `v` atomically and returns the old value (the frontend's side
    /// of the dirty log: a sync takes the marks and clears them in one step). `None` if `off` is
    /// outside the mapping.
    #[inline]
    pub fn swap_u8(&self, off: usize, v: u8) -> Option<u8> {
        let p = self.range(off, 1)?;
        // SAFETY: as in `fetch_or_u8`.
        Some(unsafe { std::sync::atomic::AtomicU8::from_ptr(p) }.swap(v, Ordering::AcqRel))
    }

    /// Loads the byte at `off` (tests of the dirty log).
    #[inline]
    pub fn load_u8(&self, off: usize) -> Option<u8> {
        let p = self.range(off, 1)?;
        // SAFETY: as in `fetch_or_u8`.
        Some(unsafe { std::sync::atomic::AtomicU8::from_ptr(p) }.load(Ordering::Acquire))
    }

    /// A 2-byte aligned `u16` slot at `off`, as a pointer to an atomic.
    #[inline]
    fn atomic_u16(&self, off: usize) -> Option<&AtomicU16> {
        let p = self.range(off, 2)?;
        if (p as usize) % std::mem::align_of::<AtomicU16>() != 0 {
            return None;
        }
        // SAFETY: `p` is inside the mapping (checked by `range`), aligned for `AtomicU16`
        // (checked above), and stays mapped for the returned borrow of `self`. The other party
        // (the guest) accesses ring indices only with atomic or volatile accesses of the same
        // size, as the virtio memory model requires, and every access from this crate to this
        // slot goes through an atomic.
        Some(unsafe { AtomicU16::from_ptr(p.cast::<u16>()) })
    }

    /// Loads a little-endian `u16` at `off` with `Acquire` ordering (avail idx, used idx).
    #[inline]
    pub fn load_u16_acquire(&self, off: usize) -> Option<u16> {
        Some(u16::from_le(self.atomic_u16(off)?.load(Ordering::Acquire)))
    }

    /// Hints the CPU to bring the cache line at `off` in (no effect when `off` is outside the
    /// mapping). Reads nothing and cannot fault.
    #[inline]
    pub fn prefetch(&self, off: usize) {
        if let Some(p) = self.range(off, 1) {
            prefetch_host(p as usize);
        }
    }

    /// Loads a little-endian `u16` at `off`, relaxed (ring entries and flags read after an
    /// acquire of the index that published them, or after a fence).
    #[inline]
    pub fn load_u16(&self, off: usize) -> Option<u16> {
        Some(u16::from_le(self.atomic_u16(off)?.load(Ordering::Relaxed)))
    }

    /// Stores a little-endian `u16` at `off` with `Release` ordering, publishing every earlier
    /// write (used elements before used idx, avail entries before avail idx).
    #[inline]
    pub fn store_u16_release(&self, off: usize, v: u16) -> bool {
        match self.atomic_u16(off) {
            Some(a) => {
                a.store(v.to_le(), Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Stores a little-endian `u16` at `off`, relaxed (event-idx fields, flags).
    #[inline]
    pub fn store_u16(&self, off: usize, v: u16) -> bool {
        match self.atomic_u16(off) {
            Some(a) => {
                a.store(v.to_le(), Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregistered first: once unmapped, the addresses may be reused by anything.
        drop(self.guard.take());
        if let Backing::Owned { base, len } = self.backing {
            // SAFETY: `base .. base + len` is exactly the mapping this value created and owns;
            // no reference into it survives (none is ever handed out), and `HostSeg`s of it are
            // plain numbers that are re-checked against live mappings before use.
            unsafe { libc::munmap(base.cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_the_mapping_are_refused() {
        let m = Mapping::anonymous(100, true).unwrap();
        let mut buf = [0u8; 8];
        assert!(m.read_bytes(92, &mut buf));
        assert!(!m.read_bytes(93, &mut buf));
        assert!(!m.read_bytes(usize::MAX - 2, &mut buf));
        assert!(!m.write_bytes(99, &[1, 2]));
        assert!(m.read_array::<16>(85).is_none());
        assert!(m.load_u16_acquire(99).is_none());
        assert!(m.load_u16_acquire(1).is_none(), "misaligned");
        assert!(m.store_u16_release(98, 7));
        assert_eq!(m.load_u16(98), Some(7));
    }
}
