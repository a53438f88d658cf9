//! Errors of the virtqueue hot path ([`VirtqError`], `Copy`) and of queue setup
//! ([`QueueConfigError`]).
//!
//! This module owns the error types only; which checks raise them lives in [`super::desc`] and
//! [`super::split`].

use crate::mem::MemoryError;

/// A virtqueue operation failed. Every variant except [`TooManyUsed`](Self::TooManyUsed),
/// [`BadRewind`](Self::BadRewind) and [`LogWithChainsInFlight`](Self::LogWithChainsInFlight)
/// (caller mistakes) is the guest's fault and leaves the queue broken: it is not processed any
/// more, and nothing more is written to its rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VirtqError {
    /// The queue was broken by an earlier error (see [`super::split::SplitQueue::broken`],
    /// [`super::packed::PackedQueue::broken`]).
    #[error("queue is broken")]
    Broken,
    /// The guest's memory file shrank under the switch: its pages were replaced by zero pages
    /// (see [`crate::mem::sigbus`]) and nothing in it can be trusted or written back.
    #[error("guest memory was truncated under the switch")]
    MemoryLost,
    /// A ring field, descriptor table or buffer is outside guest memory.
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    /// The avail idx moved more than the queue size past the last chain taken.
    #[error("avail idx {avail_idx} is more than the queue size ahead of {last_avail}")]
    AvailIdxJump {
        /// The avail idx the guest published.
        avail_idx: u16,
        /// The device's next avail position.
        last_avail: u16,
    },
    /// A descriptor index (a chain head in the avail ring, or a `next` field) is not below the
    /// size of its table.
    #[error("descriptor index {index} out of range (table of {size})")]
    DescIndexOutOfRange {
        /// The index.
        index: u16,
        /// The table's size.
        size: u32,
    },
    /// A descriptor has length zero.
    #[error("descriptor {index} has zero length")]
    ZeroLength {
        /// Index in its table.
        index: u16,
    },
    /// A descriptor's `addr + len` overflows.
    #[error("descriptor {index}: address + length overflows")]
    AddrOverflow {
        /// Index in its table.
        index: u16,
    },
    /// A chain visits more descriptors than its table holds: a loop (section 2.7.5.2: a chain is
    /// at most the queue size long; an indirect one at most its table). In a packed ring: a chain
    /// longer than the slots the device does not hold (it runs into chains in flight, or around
    /// the whole ring).
    #[error("descriptor chain longer than {limit} (a loop)")]
    ChainTooLong {
        /// Most descriptors the chain may visit.
        limit: u32,
    },
    /// The sum of a chain's buffer lengths does not fit in 32 bits.
    #[error("descriptor chain longer than 4 GiB in total")]
    ChainLenOverflow,
    /// A device-readable descriptor follows a device-writable one (section 2.7.4.2).
    #[error("readable descriptor {index} after a writable one")]
    ReadableAfterWritable {
        /// Index in its table.
        index: u16,
    },
    /// `VIRTQ_DESC_F_INDIRECT` without `VIRTIO_RING_F_INDIRECT_DESC` (section 2.7.5.3.1).
    #[error("indirect descriptor but indirect descriptors were not negotiated")]
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table (section 2.7.5.3.1).
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// An indirect descriptor with `VIRTQ_DESC_F_NEXT` (section 2.7.5.3.1).
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect descriptor that is not the chain's head (drivers place it alone).
    #[error("indirect descriptor {index} is not the head of its chain")]
    IndirectNotHead {
        /// Index in the descriptor table.
        index: u16,
    },
    /// An indirect table whose length is zero, not a multiple of 16, or more than
    /// [`super::MAX_QUEUE_SIZE`] descriptors.
    #[error("indirect table of bad length {len}")]
    BadIndirectLen {
        /// The table's length in bytes.
        len: u32,
    },
    /// More used entries pushed than chains taken (caller mistake; the queue is not broken).
    #[error("more used entries than chains in flight")]
    TooManyUsed,
    /// A rewind to a mark that is not behind the current position by at most the chains in
    /// flight (caller mistake; the queue is not broken).
    #[error("rewind to a mark that cannot be restored")]
    BadRewind,
    /// Dirty logging asked to start on a queue with chains taken before it started: their
    /// writable buffers were not recorded, so their writes could not be logged (caller mistake;
    /// the queue is not broken, and does not log). Start logging on a drained queue.
    #[error("dirty logging started with {in_flight} chains in flight")]
    LogWithChainsInFlight {
        /// Chains taken and not yet returned.
        in_flight: u16,
    },
}

impl VirtqError {
    /// Whether this error breaks the queue (the guest's fault) rather than report a caller mistake.
    #[inline]
    pub fn breaks_queue(self) -> bool {
        !matches!(
            self,
            VirtqError::Broken
                | VirtqError::TooManyUsed
                | VirtqError::BadRewind
                | VirtqError::LogWithChainsInFlight { .. }
        )
    }
}

/// A queue could not be set up (section 2.7: sizes and alignments; rings inside guest memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    /// The size is zero, not a power of two, or above [`super::MAX_QUEUE_SIZE`].
    #[error("bad queue size {0}")]
    BadSize(u32),
    /// The descriptor table is not 16-aligned, or not inside one guest region.
    #[error("descriptor table at {0:#x} misaligned or outside guest memory")]
    DescTable(u64),
    /// The avail ring is not 2-aligned, or not inside one guest region.
    #[error("avail ring at {0:#x} misaligned or outside guest memory")]
    AvailRing(u64),
    /// The used ring is not 4-aligned, or not inside one guest region.
    #[error("used ring at {0:#x} misaligned or outside guest memory")]
    UsedRing(u64),
    /// A packed ring's start position (index in bits 0..15, wrap counter in bit 15) has an index
    /// not below the queue size.
    #[error("packed ring base {0:#x} outside the ring")]
    BadBase(u16),
}
