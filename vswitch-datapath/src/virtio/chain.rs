//! A descriptor chain taken from the avail ring, as host segments (virtio 1.2 spec, section
//! 2.7.5.2 "Message Framing" and 2.7.4.2: readable buffers first, then writable ones).
//!
//! This module owns [`DescChain`], a caller-owned, reusable output buffer that
//! [`super::split::SplitQueue::pop`] fills. It must not read guest memory or rings itself.

use smallvec::SmallVec;

use crate::memory::HostSeg;

/// Segments kept inline in a [`DescChain`] before it spills to the heap (once; a reused chain
/// keeps its capacity). A descriptor that spans regions takes one segment per region.
pub const CHAIN_INLINE_SEGS: usize = 8;

/// The segments of one chain side.
pub type Segments = SmallVec<[HostSeg; CHAIN_INLINE_SEGS]>;

/// One walked descriptor chain: its head index (what the used entry returns) and its
/// device-readable and device-writable parts as host segments, in chain order.
///
/// Reuse one `DescChain` per in-flight packet: `pop` clears it first, so steady-state operation
/// does not allocate.
#[derive(Clone, Debug, Default)]
pub struct DescChain {
    pub(crate) head: u16,
    pub(crate) readable: Segments,
    pub(crate) writable: Segments,
    pub(crate) readable_len: u32,
    pub(crate) writable_len: u32,
    pub(crate) descriptors: u32,
}

impl DescChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn reset(&mut self, head: u16) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.descriptors = 0;
    }

    /// The head descriptor's index: the `id` of this chain's used entry.
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
