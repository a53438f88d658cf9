//! One virtqueue of either ring format: what the datapath serves.
//!
//! This module owns [`Virtqueue`], a split ([`SplitQueue`]) or packed ([`PackedQueue`]) ring
//! behind the one set of calls the northbound and southbound paths make (take chains, give them
//! back, push and publish used entries, notification suppression, state), so that the datapath is
//! written once for both formats (DESIGN.md §7: "the ring module swapped"). It adds no logic of its
//! own: each call is one `match` on the format, predictable for a queue that never changes format.

use std::sync::Arc;

use super::chain::{DescChain, RunEnd, SingleBuf, Take};
use super::error::{QueueConfigError, VirtqError};
use super::packed::PackedQueue;
use super::split::{AvailMark, QueueConfig, SplitQueue};
use super::RingFeatures;
use crate::mem::dirty::DirtyLog;
use crate::mem::GuestMemory;

/// A virtqueue, device side, in the format its driver negotiated.
#[derive(Debug)]
pub enum Virtqueue {
    /// A split ring (section 2.7).
    Split(SplitQueue),
    /// A packed ring (section 2.8, `VIRTIO_F_RING_PACKED`).
    Packed(PackedQueue),
}

/// Runs `$e` with `$q` bound to the queue, whichever its format.
macro_rules! each {
    ($self:expr, $q:ident => $e:expr) => {
        match $self {
            Virtqueue::Split($q) => $e,
            Virtqueue::Packed($q) => $e,
        }
    };
}

impl From<SplitQueue> for Virtqueue {
    fn from(q: SplitQueue) -> Self {
        Virtqueue::Split(q)
    }
}

impl From<PackedQueue> for Virtqueue {
    fn from(q: PackedQueue) -> Self {
        Virtqueue::Packed(q)
    }
}

impl Virtqueue {
    /// Sets up a packed queue when `cfg.features` has [`RingFeatures::PACKED`], else a split one
    /// (see [`SplitQueue::new`] and [`PackedQueue::new`] for what `cfg`'s addresses are).
    pub fn new(mem: Arc<GuestMemory>, cfg: QueueConfig) -> Result<Self, QueueConfigError> {
        if cfg.features.contains(RingFeatures::PACKED) {
            PackedQueue::new(mem, cfg).map(Virtqueue::Packed)
        } else {
            SplitQueue::new(mem, cfg).map(Virtqueue::Split)
        }
    }

    /// Whether this is a packed ring.
    #[inline]
    pub fn is_packed(&self) -> bool {
        matches!(self, Virtqueue::Packed(_))
    }

    /// The split ring, if it is one.
    pub fn as_split(&self) -> Option<&SplitQueue> {
        match self {
            Virtqueue::Split(q) => Some(q),
            Virtqueue::Packed(_) => None,
        }
    }

    /// The packed ring, if it is one.
    pub fn as_packed(&self) -> Option<&PackedQueue> {
        match self {
            Virtqueue::Packed(q) => Some(q),
            Virtqueue::Split(_) => None,
        }
    }

    /// The configuration it was set up with.
    #[inline]
    pub fn config(&self) -> &QueueConfig {
        each!(self, q => q.config())
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        each!(self, q => q.size())
    }

    /// The guest memory the rings and buffers live in.
    #[inline]
    pub fn memory(&self) -> &Arc<GuestMemory> {
        each!(self, q => q.memory())
    }

    /// Where the next chain is taken from: what vhost-user `GET_VRING_BASE` returns (the free
    /// running avail index of a split ring; index and wrap counter of a packed one).
    #[inline]
    pub fn last_avail_idx(&self) -> u16 {
        each!(self, q => q.last_avail_idx())
    }

    /// Where the next used entry goes (same encodings as [`last_avail_idx`](Self::last_avail_idx)).
    #[inline]
    pub fn used_idx(&self) -> u16 {
        each!(self, q => q.used_idx())
    }

    /// Chains taken and not yet pushed as used.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        each!(self, q => q.in_flight())
    }

    /// Whether an error broke the queue.
    #[inline]
    pub fn is_broken(&self) -> bool {
        each!(self, q => q.is_broken())
    }

    /// The error that broke the queue, if any.
    #[inline]
    pub fn broken(&self) -> Option<VirtqError> {
        each!(self, q => q.broken())
    }

    /// Breaks the queue if its guest memory was lost; then, or if it was broken, an error.
    #[inline]
    pub fn check_memory(&mut self) -> Result<(), VirtqError> {
        each!(self, q => q.check_memory())
    }

    /// Starts, replaces or stops dirty logging (see [`SplitQueue::set_dirty_log`]).
    pub fn set_dirty_log(&mut self, log: Option<Arc<DirtyLog>>) -> Result<(), VirtqError> {
        each!(self, q => q.set_dirty_log(log))
    }

    /// Whether dirty logging is on.
    pub fn is_logging(&self) -> bool {
        each!(self, q => q.is_logging())
    }

    /// Prefetch hint for the next `n` chains' descriptors.
    #[inline]
    pub fn prefetch(&mut self, n: usize) {
        each!(self, q => q.prefetch(n))
    }

    /// Write-prefetch hint for the buffer `ahead` chains (slots, on a packed ring) past the next.
    #[inline]
    pub fn prefetch_buffer(&mut self, ahead: u16) {
        each!(self, q => q.prefetch_buffer(ahead))
    }

    /// Takes the next available chain (see [`SplitQueue::pop`], [`PackedQueue::pop`]).
    #[inline]
    pub fn pop(&mut self, chain: &mut DescChain) -> Result<bool, VirtqError> {
        each!(self, q => q.pop(chain))
    }

    /// Takes up to `chains.len()` available chains into the front of `chains`, as that many
    /// [`pop`](Self::pop)s would (see [`SplitQueue::pop_burst`]): returns how many were taken and
    /// whether the burst ended on a guest error (the chains taken before it are good).
    #[inline]
    pub fn pop_burst(&mut self, chains: &mut [DescChain]) -> (usize, Result<(), VirtqError>) {
        each!(self, q => q.pop_burst(chains))
    }

    /// The host->guest fast path: see [`SplitQueue::pop_rx_singles`] and
    /// [`PackedQueue::pop_singles`].
    #[inline]
    pub fn pop_rx_singles(
        &mut self,
        out: &mut Vec<SingleBuf>,
        max: usize,
        accept: impl FnMut(u32) -> Take,
    ) -> (usize, RunEnd) {
        match self {
            Virtqueue::Split(q) => q.pop_rx_singles(out, max, accept),
            Virtqueue::Packed(q) => q.pop_singles(out, max, accept, true),
        }
    }

    /// The guest->host fast path: see [`SplitQueue::pop_tx_singles`] and
    /// [`PackedQueue::pop_singles`].
    #[inline]
    pub fn pop_tx_singles(&mut self, out: &mut Vec<SingleBuf>, max: usize) -> (usize, RunEnd) {
        match self {
            Virtqueue::Split(q) => q.pop_tx_singles(out, max),
            Virtqueue::Packed(q) => q.pop_singles(out, max, |_| Take::Yes, false),
        }
    }

    /// The current take position, to [`rewind`](Self::rewind) to.
    #[inline]
    pub fn mark(&self) -> AvailMark {
        each!(self, q => q.mark())
    }

    /// Gives back every chain taken since `mark`; returns how many.
    #[inline]
    pub fn rewind(&mut self, mark: AvailMark) -> Result<u16, VirtqError> {
        each!(self, q => q.rewind(mark))
    }

    /// Gives back the last `n` chains taken.
    #[inline]
    pub fn give_back(&mut self, n: u16) -> Result<(), VirtqError> {
        each!(self, q => q.give_back(n))
    }

    /// Returns the oldest chain in flight as used (`head` its id, `len` bytes written; see
    /// [`PackedQueue::push_used`] for in-order batches), invisible until
    /// [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) -> Result<(), VirtqError> {
        each!(self, q => q.push_used(head, len))
    }

    /// Writes one used element per entry, in order: see [`SplitQueue::push_used_run`] (a packed
    /// ring pushes them one by one).
    #[inline]
    pub fn push_used_run(&mut self, entries: impl ExactSizeIterator<Item = (u16, u32)>) -> Result<(), VirtqError> {
        match self {
            Virtqueue::Split(q) => q.push_used_run(entries),
            Virtqueue::Packed(q) => entries.into_iter().try_for_each(|(id, len)| q.push_used(id, len)),
        }
    }

    /// Makes every pushed used chain visible (one release store); returns how many chains.
    #[inline]
    pub fn publish_used(&mut self) -> Result<u16, VirtqError> {
        each!(self, q => q.publish_used())
    }

    /// Whether the guest wants an interrupt for what was published since the last call.
    #[inline]
    pub fn needs_notify(&mut self) -> Result<bool, VirtqError> {
        each!(self, q => q.needs_notify())
    }

    /// Declares that the device only reads this queue's buffers (a TX queue): a packed ring then
    /// ignores `WRITE` flags (see [`PackedQueue::set_read_only`]); a split ring checks them as
    /// before.
    pub fn set_read_only(&mut self, read_only: bool) {
        if let Virtqueue::Packed(q) = self {
            q.set_read_only(read_only);
        }
    }

    /// Asks the guest to kick the device when it adds buffers, or not.
    pub fn set_kicks(&mut self, enabled: bool) -> Result<(), VirtqError> {
        each!(self, q => q.set_kicks(enabled))
    }
}
