//! A descriptor chain taken from the avail ring, as host segments (virtio 1.2 spec, section
//! 2.7.5.2 "Message Framing" and 2.7.4.2: readable buffers first, then writable ones).
//!
//! This module owns [`DescChain`], a caller-owned, reusable output buffer that
//! [`super::split::SplitQueue::pop`] and [`super::packed::PackedQueue::pop`] fill. It must not
//! read rings itself; it only translates the buffers of descriptors its callers checked.

use super::desc::Descriptor;
use super::error::VirtqError;
use crate::mem::{GuestMemory, HostSeg, RegionHint};

/// Segments a new [`DescChain`] has room for on each side before it grows (once: a reused chain
/// keeps its capacity). A descriptor that spans regions takes one segment per region.
pub const CHAIN_INLINE_SEGS: usize = 8;

/// The segments of one chain side. A `Vec`, not a `SmallVec`: chains are reused, so it allocates
/// once, and clearing and pushing stay a compare and a store on the per-packet path.
pub type Segments = Vec<HostSeg>;

/// The guest-physical writable buffers `(gpa, len)` of a chain, as its descriptors give them
/// (dirty logging: what the device may write, in chain order). Empty, and never allocated, unless
/// the queue logs.
pub(crate) type GuestBufs = Vec<(u64, u32)>;

/// A chain of one direct descriptor, as the fast paths take it
/// ([`SplitQueue::pop_rx_singles`](super::split::SplitQueue::pop_rx_singles) device-writable,
/// [`SplitQueue::pop_tx_singles`](super::split::SplitQueue::pop_tx_singles) device-readable): its
/// head (the used entry's id) and its buffer, translated and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SingleBuf {
    /// The descriptor's index.
    pub head: u16,
    /// Its buffer in host memory (never empty, inside one region).
    pub seg: HostSeg,
}

/// Why a fast-path run of single-buffer chains
/// ([`SplitQueue::pop_rx_singles`](super::split::SplitQueue::pop_rx_singles),
/// [`SplitQueue::pop_tx_singles`](super::split::SplitQueue::pop_tx_singles)) ended: what the
/// caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// It took as many chains as asked, or the caller said the last one was its last.
    Full,
    /// The guest had made no more chains available at a fresh load of the avail idx: `pop` would
    /// find none either, and need not load it once more to learn so.
    Empty,
    /// The next chain is `pop`'s: a chain of another kind, a buffer shorter than asked, a chain
    /// the checks refuse (`pop` gives the typed error), or a queue the fast path does not serve
    /// (broken, logging dirty pages, packed).
    Other,
}

/// What the caller of a single-buffer run says of the next buffer, given its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Take it, and look at the next.
    Yes,
    /// Take it, and end the run ([`RunEnd::Full`]): it completes what the caller needs, so the
    /// run reads no further descriptor and does not load the avail idx again.
    Last,
    /// Leave it, and end the run before it ([`RunEnd::Other`]).
    No,
}

/// What the southbound path reads of a taken TX chain, whichever way it was taken: a walked
/// [`DescChain`], or a [`SingleBuf`] (one readable segment). Generic code over it compiles, for
/// the single buffer, to the one-segment case alone.
pub(crate) trait ReadChain {
    /// The used entry's id.
    fn head(&self) -> u16;
    /// The device-readable segments, in order.
    fn readable(&self) -> &[HostSeg];
    /// Their total length.
    fn readable_len(&self) -> u32;
}

impl ReadChain for DescChain {
    #[inline(always)]
    fn head(&self) -> u16 {
        self.head
    }
    #[inline(always)]
    fn readable(&self) -> &[HostSeg] {
        &self.readable
    }
    #[inline(always)]
    fn readable_len(&self) -> u32 {
        self.readable_len
    }
}

impl ReadChain for SingleBuf {
    #[inline(always)]
    fn head(&self) -> u16 {
        self.head
    }
    #[inline(always)]
    fn readable(&self) -> &[HostSeg] {
        std::slice::from_ref(&self.seg)
    }
    #[inline(always)]
    fn readable_len(&self) -> u32 {
        self.seg.len()
    }
}

/// One walked descriptor chain: its head index (what the used entry returns) and its
/// device-readable and device-writable parts as host segments, in chain order.
///
/// Reuse one `DescChain` per in-flight packet: `pop` clears it first, so steady-state operation
/// does not allocate.
#[derive(Clone, Debug)]
pub struct DescChain {
    pub(crate) head: u16,
    pub(crate) readable: Segments,
    pub(crate) writable: Segments,
    /// The writable descriptors' guest-physical buffers, recorded only by a queue that logs dirty
    /// pages (empty otherwise).
    pub(crate) writable_gpa: GuestBufs,
    pub(crate) readable_len: u32,
    pub(crate) writable_len: u32,
    pub(crate) descriptors: u32,
}

impl Default for DescChain {
    fn default() -> Self {
        DescChain {
            head: 0,
            readable: Vec::with_capacity(CHAIN_INLINE_SEGS),
            writable: Vec::with_capacity(CHAIN_INLINE_SEGS),
            writable_gpa: Vec::new(),
            readable_len: 0,
            writable_len: 0,
            descriptors: 0,
        }
    }
}

impl DescChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline(always)]
    pub(crate) fn reset(&mut self, head: u16) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.writable_gpa.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.descriptors = 0;
    }

    /// Makes this the chain of one direct descriptor `head` whose buffer is `seg`.
    #[inline(always)]
    pub(crate) fn set_single(&mut self, head: u16, seg: HostSeg, writable: bool) {
        self.reset(head);
        self.descriptors = 1;
        if writable {
            self.writable.push(seg);
            self.writable_len = seg.len();
        } else {
            self.readable.push(seg);
            self.readable_len = seg.len();
        }
    }

    /// Appends the buffer of checked descriptor `d` (found at `index` of its table): translates
    /// it into host segments on its side, refuses a readable buffer after a writable one (section
    /// 2.7.4.2, 2.8.4) and totals that overflow 32 bits, and with `log_gpa` records a writable
    /// buffer's guest-physical range. Used by the packed ring's walk (the split ring walks inline).
    #[inline]
    pub(crate) fn add_buffer(
        &mut self,
        mem: &GuestMemory,
        d: &Descriptor,
        index: u16,
        hint: &mut RegionHint,
        log_gpa: bool,
    ) -> Result<(), VirtqError> {
        self.descriptors += 1;
        if d.is_write_only() {
            self.writable_len = self.writable_len.checked_add(d.len()).ok_or(VirtqError::ChainLenOverflow)?;
            mem.translate(d.addr(), d.len(), hint, &mut self.writable)?;
            if log_gpa {
                self.writable_gpa.push((d.addr(), d.len()));
            }
        } else {
            // Zero-length descriptors are refused, so a non-zero writable length means one was seen.
            if self.writable_len != 0 {
                return Err(VirtqError::ReadableAfterWritable { index });
            }
            self.readable_len = self.readable_len.checked_add(d.len()).ok_or(VirtqError::ChainLenOverflow)?;
            mem.translate(d.addr(), d.len(), hint, &mut self.readable)?;
        }
        if self.readable_len.checked_add(self.writable_len).is_none() {
            return Err(VirtqError::ChainLenOverflow);
        }
        Ok(())
    }

    /// The `id` of this chain's used entry: the head descriptor's index (split ring), or the
    /// buffer id of the chain's last descriptor (packed ring, section 2.8.6).
    #[inline]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The device-readable buffers (what the guest sends: TX header and packet), in order.
    #[inline]
    pub fn readable(&self) -> &[HostSeg] {
        &self.readable
    }

    /// The device-writable buffers (where the device writes: RX header and packet), in order.
    #[inline]
    pub fn writable(&self) -> &[HostSeg] {
        &self.writable
    }

    /// Total bytes of the readable part.
    #[inline]
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }

    /// Total bytes of the writable part.
    #[inline]
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }

    /// How many buffer descriptors the chain had (an indirect table's entries, not the descriptor
    /// pointing to it).
    #[inline]
    pub fn descriptors(&self) -> u32 {
        self.descriptors
    }
}
