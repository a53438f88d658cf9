//! Packet buffers: a preallocated pool with headroom; no allocation per packet.
//!
//! The pool owns one block of memory carved into fixed-size buffers, handed out as [`Packet`]
//! handles. Copy engines write into and read from these buffers while the owning PMD thread keeps
//! working, so the pool never forms a reference to the whole block: each access builds a slice
//! of one buffer only. This module owns that memory and nothing else; it must not know virtio.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;

/// Bytes reserved in front of each packet's data (for headers a port may prepend).
pub const HEADROOM: usize = 128;

/// One packet: a buffer of the pool, its data at `HEADROOM..HEADROOM + len`. Not `Clone`: each
/// buffer has exactly one owner, and only the pool can take it back.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet {
    idx: u32,
    len: u32,
}

impl Packet {
    /// Data length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the packet holds no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's index in its pool (for tracing).
    #[inline]
    pub fn index(&self) -> u32 {
        self.idx
    }
}

/// A fixed set of packet buffers.
pub struct PacketPool {
    base: *mut u8,
    layout: Layout,
    buf_size: usize,
    count: usize,
    free: Vec<u32>,
}

// SAFETY: the pool is a plain owner of its memory block; `Packet` handles carry no pointers, and
// all access goes through `&self`/`&mut self` on the owning thread.
unsafe impl Send for PacketPool {}

impl fmt::Debug for PacketPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketPool")
            .field("buffers", &self.count)
            .field("free", &self.free.len())
            .field("data_room", &self.data_room())
            .finish()
    }
}

impl PacketPool {
    /// A pool of `count` buffers with room for `data_room` bytes of packet data each.
    pub fn new(count: usize, data_room: usize) -> Self {
        let buf_size = (HEADROOM + data_room.max(1)).next_multiple_of(64);
        let layout = Layout::from_size_align(buf_size * count.max(1), 64).expect("pool size overflows");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null(), "packet pool allocation of {} bytes failed", layout.size());
        PacketPool { base, layout, buf_size, count, free: (0..count as u32).rev().collect() }
    }

    /// Takes a free buffer, with length zero; `None` when all are in use.
    #[inline]
    pub fn alloc(&mut self) -> Option<Packet> {
        self.free.pop().map(|idx| Packet { idx, len: 0 })
    }

    /// Gives a buffer back. The caller guarantees no copy into or out of it is still in flight
    /// (the datapath frees packets only after their copies retire).
    #[inline]
    pub fn free(&mut self, p: Packet) {
        debug_assert!((p.idx as usize) < self.count);
        self.free.push(p.idx);
    }

    /// Buffers not in use.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Buffers in all.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.count
    }

    /// Largest packet a buffer holds.
    #[inline]
    pub fn data_room(&self) -> usize {
        self.buf_size - HEADROOM
    }

    /// Sets the packet's length (at most [`data_room`](Self::data_room)).
    #[inline]
    pub fn set_len(&self, p: &mut Packet, len: usize) {
        assert!(len <= self.data_room(), "packet length {len} exceeds data room {}", self.data_room());
        p.len = len as u32;
    }

    /// Address of the packet's data, for copy engines.
    #[inline]
    pub fn data_ptr(&self, p: &Packet) -> *mut u8 {
        debug_assert!((p.idx as usize) < self.count);
        self.base.wrapping_add(p.idx as usize * self.buf_size + HEADROOM)
    }

    /// The packet's data. Call only when no copy into the packet is in flight.
    #[inline]
    pub fn data(&self, p: &Packet) -> &[u8] {
        // SAFETY: the handle names a buffer of this pool (indices come only from `alloc`), its
        // length is at most the data room, and only this one buffer is borrowed.
        unsafe { std::slice::from_raw_parts(self.data_ptr(p), p.len()) }
    }

    /// A copy of `p` in a new buffer (a flooded packet's copy for one more port); `None` when
    /// every buffer is in use. Call only when no copy into `p` is in flight.
    pub fn duplicate(&mut self, p: &Packet) -> Option<Packet> {
        let q = self.alloc()?;
        // SAFETY: both handles name distinct buffers of this pool (`q` was free until now, `p` is
        // owned by the caller), `p.len()` is at most the data room of either, and no copy engine
        // touches `p` (the caller's contract) or `q` (just allocated).
        unsafe { std::ptr::copy_nonoverlapping(self.data_ptr(p), self.data_ptr(&q), p.len()) };
        Some(Packet { idx: q.idx, len: p.len })
    }

    /// The packet's data, writable. Call only when no copy involving the packet is in flight.
    #[inline]
    pub fn data_mut(&mut self, p: &mut Packet) -> &mut [u8] {
        // SAFETY: as in `data`; `&mut Packet` proves the single owner of this buffer is here.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(p), p.len()) }
    }
}

impl Drop for PacketPool {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with this very layout.
        unsafe { dealloc(self.base, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_disjoint_and_recycled() {
        let mut pool = PacketPool::new(4, 2000);
        let mut pkts: Vec<Packet> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        assert!(pool.alloc().is_none(), "pool handed out more buffers than it has");
        for (i, p) in pkts.iter_mut().enumerate() {
            pool.set_len(p, 2000);
            pool.data_mut(p).fill(i as u8);
        }
        for (i, p) in pkts.iter().enumerate() {
            assert!(pool.data(p).iter().all(|&b| b == i as u8), "buffers overlap");
        }
        let p = pkts.pop().unwrap();
        pool.free(p);
        assert_eq!(pool.available(), 1);
        assert!(pool.alloc().is_some());
    }

    #[test]
    fn a_duplicate_has_the_same_bytes_in_its_own_buffer() {
        let mut pool = PacketPool::new(2, 100);
        let mut p = pool.alloc().unwrap();
        pool.set_len(&mut p, 60);
        pool.data_mut(&mut p).iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mut q = pool.duplicate(&p).unwrap();
        assert_ne!(p.index(), q.index());
        assert_eq!(pool.data(&q), pool.data(&p));
        pool.data_mut(&mut q)[0] = 0xee;
        assert_eq!(pool.data(&p)[0], 0, "the copy shares no bytes with the original");
        assert!(pool.duplicate(&p).is_none(), "no buffer left");
    }
}
