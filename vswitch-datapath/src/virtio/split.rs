//! The device side of a split virtqueue (virtio 1.2 spec, section 2.7 "Split Virtqueues").
//!
//! This module owns [`SplitQueue`]: the three ring areas in guest memory (descriptor table, avail
//! ring, used ring), the device's positions in them, taking chains from the avail ring
//! ([`SplitQueue::pop`], walking direct and indirect chains into host segments), returning them on
//! the used ring (batched: [`SplitQueue::push_used`] then one [`SplitQueue::publish_used`]),
//! notification suppression (event idx, `VIRTQ_AVAIL_F_NO_INTERRUPT`, `VIRTQ_USED_F_NO_NOTIFY`),
//! and the broken state. It must not know packets, headers or copy engines, and it never touches a
//! payload byte: it hands out segments.
//!
//! # The guest is untrusted
//!
//! Every value read from the rings is checked before use; any violation returns a
//! [`VirtqError`] and leaves the queue broken: every later call returns [`VirtqError::Broken`] and
//! writes nothing. Breaking one queue never affects another queue on the same memory. Nothing is
//! written to guest memory while taking a chain, so a chain that fails half-way leaves no trace.
//!
//! # Memory ordering (section 2.7.13, 2.7.7)
//!
//! - The avail idx is loaded with `Acquire`; the ring entries and descriptors it publishes are read
//!   after it.
//! - Used elements are written first, then the used idx is stored with `Release`
//!   ([`publish_used`](SplitQueue::publish_used)), so the guest never sees an index before the
//!   elements it covers.
//! - [`needs_notify`](SplitQueue::needs_notify) issues a full fence between that store and its
//!   load of `used_event` / the avail flags (a store-load order that release/acquire alone do not
//!   give), matching the driver's fence between writing `used_event` and re-reading the used idx.
//! - [`set_kicks`](SplitQueue::set_kicks) does the same between enabling kicks and the caller's
//!   re-check of the avail ring.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};

use super::chain::{DescChain, RunEnd, SingleBuf, Take};
use super::desc::{DescContext, DescFlags, Descriptor, RawDescriptor, DESC_SIZE};
use super::error::{QueueConfigError, VirtqError};
use super::{vring_need_event, RingFeatures, MAX_QUEUE_SIZE};
use smallvec::SmallVec;

use crate::mem::access::{prefetch_host_write, Mapping};
use crate::mem::dirty::DirtyLog;
use crate::mem::{GuestMemory, MemoryError, Place, RegionHint};

/// Where a split queue's rings are and how it starts (what vhost-user `SET_VRING_NUM`,
/// `SET_VRING_ADDR` and `SET_VRING_BASE` carry, with ring addresses already guest-physical).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Queue size: a power of two, 1 ..= [`MAX_QUEUE_SIZE`].
    pub size: u16,
    /// Guest-physical address of the descriptor table (16-aligned, `16 * size` bytes).
    pub desc_table: u64,
    /// Guest-physical address of the avail ring (2-aligned, `6 + 2 * size` bytes).
    pub avail_ring: u64,
    /// Guest-physical address of the used ring (4-aligned, `6 + 8 * size` bytes).
    pub used_ring: u64,
    /// Negotiated ring features.
    pub features: RingFeatures,
    /// The first avail index to take (0 for a fresh queue; `SET_VRING_BASE` on reconnect).
    pub avail_base: u16,
}

/// Byte size of a descriptor table of `size` entries (section 2.7).
pub fn desc_table_len(size: u16) -> usize {
    DESC_SIZE * size as usize
}

/// Byte size of an avail ring of `size` entries, `used_event` included (section 2.7.6).
pub fn avail_ring_len(size: u16) -> usize {
    6 + 2 * size as usize
}

/// Byte size of a used ring of `size` entries, `avail_event` included (section 2.7.8).
pub fn used_ring_len(size: u16) -> usize {
    6 + 8 * size as usize
}

/// Offsets inside the avail ring: `le16 flags; le16 idx; le16 ring[size]; le16 used_event;`.
const AVAIL_FLAGS: usize = 0;
const AVAIL_IDX: usize = 2;
const AVAIL_RING: usize = 4;
/// Offsets inside the used ring: `le16 flags; le16 idx; {le32 id; le32 len} ring[size];
/// le16 avail_event;`.
const USED_FLAGS: usize = 0;
const USED_IDX: usize = 2;
const USED_RING: usize = 4;
const USED_ELEM: usize = 8;

/// A position in the avail ring, to [`rewind`](SplitQueue::rewind) to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvailMark(pub(super) u16);

/// The device side of one split virtqueue. Owned by one PMD thread; holds its guest memory.
#[derive(Debug)]
pub struct SplitQueue {
    mem: Arc<GuestMemory>,
    cfg: QueueConfig,
    mask: u16,
    desc: Place,
    avail: Place,
    used: Place,
    /// Next avail index to take.
    last_avail: u16,
    /// The avail idx as last loaded from the guest.
    avail_cache: u16,
    /// Next used index to write (entries below it and at or above `published` are not visible).
    used_next: u16,
    /// Used idx as last stored to the guest.
    published: u16,
    /// Used idx when the guest was last considered for a notification.
    signalled: u16,
    /// Chains taken and not yet returned on the used ring.
    in_flight: u16,
    /// Whether the device asks for kicks (the spec's initial state; [`set_kicks`](Self::set_kicks)).
    /// With event idx, `avail_event` follows `last_avail` only while this holds: a stale one is
    /// how a polling device tells the driver not to kick (section 2.7.10).
    kicks: bool,
    hint: RegionHint,
    broken: Option<VirtqError>,
    /// Live migration: the dirty log, and per descriptor head the guest-physical writable
    /// buffers of the chain taken under it (recorded by `pop` only while logging).
    log: Option<Arc<DirtyLog>>,
    written: Box<[Written]>,
}

/// The guest-physical writable buffers `(gpa, len)` of one taken chain (dirty logging; inline:
/// an RX chain has one or two).
type Written = SmallVec<[(u64, u32); 2]>;

impl SplitQueue {
    /// Sets up a queue on `mem`: checks the size and that each ring lies, aligned, inside one
    /// guest region (section 2.7, table "Virtqueue Part Alignment"). The used idx starts from what
    /// the used ring holds.
    pub fn new(mem: Arc<GuestMemory>, cfg: QueueConfig) -> Result<Self, QueueConfigError> {
        let size = cfg.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueConfigError::BadSize(size as u32));
        }
        let desc = mem
            .place(cfg.desc_table, desc_table_len(size), 16)
            .map_err(|_| QueueConfigError::DescTable(cfg.desc_table))?;
        let avail = mem
            .place(cfg.avail_ring, avail_ring_len(size), 2)
            .map_err(|_| QueueConfigError::AvailRing(cfg.avail_ring))?;
        let used =
            mem.place(cfg.used_ring, used_ring_len(size), 4).map_err(|_| QueueConfigError::UsedRing(cfg.used_ring))?;
        let used_idx = mem
            .region(used.region)
            .mapping()
            .load_u16_acquire(used.offset + USED_IDX)
            .ok_or(QueueConfigError::UsedRing(cfg.used_ring))?;
        Ok(SplitQueue {
            mem,
            cfg,
            mask: size - 1,
            desc,
            avail,
            used,
            last_avail: cfg.avail_base,
            avail_cache: cfg.avail_base,
            used_next: used_idx,
            published: used_idx,
            signalled: used_idx,
            in_flight: 0,
            kicks: true,
            hint: RegionHint::default(),
            broken: None,
            log: None,
            written: Box::default(),
        })
    }

    /// Starts (`Some`), replaces or stops (`None`) dirty logging (live migration). While logging,
    /// every device write the ring learns of is marked, by construction: `pop` records the
    /// guest-physical buffers of each writable descriptor of the chain it takes (as the
    /// descriptors give them, not translated back from host addresses), `push_used(head, len)`
    /// marks the first `len` bytes of those buffers (whatever wrote them: an engine, a CPU
    /// fallback, a retry) before the entry can be published, and every store into the used ring
    /// (elements, used idx, flags, avail_event) marks its page after the store. Mark only after
    /// the bytes landed: call `push_used` only once the copies into the chain have retired.
    ///
    /// Logging can only start on a queue with no chain in flight (a drained or new queue): the
    /// buffers of chains taken before it started were not recorded, and their writes would go
    /// unlogged. Such a request fails with [`VirtqError::LogWithChainsInFlight`] and changes
    /// nothing. Replacing one log by another, or stopping, is always possible.
    pub fn set_dirty_log(&mut self, log: Option<Arc<DirtyLog>>) -> Result<(), VirtqError> {
        if log.is_some() && self.log.is_none() && self.in_flight != 0 {
            return Err(VirtqError::LogWithChainsInFlight { in_flight: self.in_flight });
        }
        if log.is_some() && self.written.is_empty() {
            self.written = vec![SmallVec::new(); self.cfg.size as usize].into_boxed_slice();
        }
        self.log = log;
        Ok(())
    }

    /// Whether dirty logging is on.
    pub fn is_logging(&self) -> bool {
        self.log.is_some()
    }

    /// Marks `len` bytes of the used ring at `off` from its start, if logging.
    #[inline]
    fn log_used(&self, off: usize, len: u64) {
        if let Some(log) = &self.log {
            log.mark(self.cfg.used_ring + off as u64, len);
        }
    }

    /// Records the guest-physical writable buffers of `chain` under its head (logging only;
    /// `pop_single` or `walk_chain` collected them from the descriptors).
    #[cold]
    fn record_written(&mut self, chain: &DescChain) {
        if let Some(w) = self.written.get_mut(chain.head() as usize) {
            w.clear();
            w.extend_from_slice(&chain.writable_gpa);
        }
    }

    /// Marks the first `len` bytes of what chain `head` can be written at (logging only).
    #[cold]
    fn log_written(&self, head: u16, len: u32) {
        let (Some(log), Some(w)) = (&self.log, self.written.get(head as usize)) else { return };
        let mut left = len;
        for &(gpa, n) in w {
            if left == 0 {
                break;
            }
            let take = n.min(left);
            log.mark(gpa, take as u64);
            left -= take;
        }
    }

    /// The configuration it was set up with.
    #[inline]
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// The guest memory the rings and buffers live in.
    #[inline]
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Next avail index to take (what vhost-user `GET_VRING_BASE` returns).
    #[inline]
    pub fn last_avail_idx(&self) -> u16 {
        self.last_avail
    }

    /// Next used index to write (entries pushed but not yet published included).
    #[inline]
    pub fn used_idx(&self) -> u16 {
        self.used_next
    }

    /// Chains taken and not yet pushed to the used ring.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether an error broke the queue.
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Breaks the queue if its guest memory was lost (a file truncated under its mapping, see
    /// [`crate::mem::sigbus`]); then, or if it was broken before, an error. Call once per burst.
    #[inline]
    pub fn check_memory(&mut self) -> Result<(), VirtqError> {
        if self.broken.is_none() && self.mem.lost() {
            return Err(self.fail(VirtqError::MemoryLost));
        }
        self.check()
    }

    /// The error that broke the queue, if any.
    #[inline]
    pub fn broken(&self) -> Option<VirtqError> {
        self.broken
    }

    #[inline]
    fn avail_map(&self) -> &Mapping {
        self.mem.region(self.avail.region).mapping()
    }

    #[inline]
    fn used_map(&self) -> &Mapping {
        self.mem.region(self.used.region).mapping()
    }

    #[inline]
    fn check(&self) -> Result<(), VirtqError> {
        match self.broken {
            Some(_) => Err(VirtqError::Broken),
            None => Ok(()),
        }
    }

    /// Records a guest error (breaking the queue) and returns it.
    #[cold]
    fn fail(&mut self, e: VirtqError) -> VirtqError {
        if e.breaks_queue() {
            self.broken = Some(e);
        }
        e
    }

    /// Loads the avail idx (`Acquire`) and checks it moved at most the queue size ahead.
    fn refresh_avail(&mut self) -> Result<(), VirtqError> {
        let off = self.avail.offset + AVAIL_IDX;
        let idx = self
            .avail_map()
            .load_u16_acquire(off)
            .ok_or(VirtqError::Memory(MemoryError::NotContiguous { addr: self.cfg.avail_ring }))?;
        if idx.wrapping_sub(self.last_avail) > self.cfg.size {
            return Err(VirtqError::AvailIdxJump { avail_idx: idx, last_avail: self.last_avail });
        }
        self.avail_cache = idx;
        Ok(())
    }

    /// How many chains the guest has made available and the device has not taken. Loads the avail
    /// idx (`Acquire`).
    pub fn avail_count(&mut self) -> Result<u16, VirtqError> {
        self.check()?;
        if let Err(e) = self.refresh_avail() {
            return Err(self.fail(e));
        }
        Ok(self.avail_cache.wrapping_sub(self.last_avail))
    }

    /// Takes the next available chain into `chain` (cleared first) and returns `Ok(true)`, or
    /// `Ok(false)` when the avail ring is empty. The avail idx is loaded only when the chains
    /// seen at the last load are used up.
    ///
    /// On a guest error the queue breaks, the error is returned, and `chain` holds nothing useful;
    /// nothing is written to guest memory.
    pub fn pop(&mut self, chain: &mut DescChain) -> Result<bool, VirtqError> {
        self.check()?;
        if !self.any_available()? {
            return Ok(false);
        }
        self.take(chain, self.log.is_some())?;
        Ok(true)
    }

    /// Whether the guest has made a chain available past `last_avail`, loading the avail idx only
    /// when the cached one is used up. An avail idx that jumped breaks the queue.
    #[inline(always)]
    fn any_available(&mut self) -> Result<bool, VirtqError> {
        if self.avail_cache == self.last_avail {
            if let Err(e) = self.refresh_avail() {
                return Err(self.fail(e));
            }
        }
        Ok(self.avail_cache != self.last_avail)
    }

    /// Takes the chain at the avail position, which the guest has made available (the caller
    /// checked `last_avail != avail_cache` on a queue that is not broken): [`pop`](Self::pop)'s
    /// work after those checks, shared with [`pop_burst`](Self::pop_burst).
    #[inline(always)]
    fn take(&mut self, chain: &mut DescChain, log: bool) -> Result<(), VirtqError> {
        let slot = (self.last_avail & self.mask) as usize;
        let Some(head) = self.avail_map().load_u16(self.avail.offset + AVAIL_RING + 2 * slot) else {
            let addr = self.cfg.avail_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        };
        if !self.pop_single(head, log, chain) {
            let mut hint = self.hint;
            let r = walk_chain(&self.mem, self.desc, self.cfg.size, self.cfg.features, &mut hint, head, log, chain);
            self.hint = hint;
            if let Err(e) = r {
                return Err(self.fail(e));
            }
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        self.in_flight += 1;
        if log {
            self.record_written(chain);
        }
        Ok(())
    }

    /// Takes up to `chains.len()` available chains into the front of `chains`: the same chains,
    /// checks, errors and state as that many [`pop`](Self::pop)s, with the per-call work (the
    /// broken check, the avail cache test, the call itself) done once per burst. Returns how many
    /// were taken (`n`: `chains[..n]` are filled) and `Err` when a guest error ended the burst
    /// (the queue breaks as with `pop`; the `n` chains before it are good and taken).
    pub fn pop_burst(&mut self, chains: &mut [DescChain]) -> (usize, Result<(), VirtqError>) {
        if let Err(e) = self.check() {
            return (0, Err(e));
        }
        let log = self.log.is_some();
        let mut n = 0;
        while n < chains.len() {
            match self.any_available() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return (n, Err(e)),
            }
            let ready = (self.avail_cache.wrapping_sub(self.last_avail) as usize).min(chains.len() - n);
            for chain in &mut chains[n..n + ready] {
                if let Err(e) = self.take(chain, log) {
                    return (n, Err(e));
                }
                n += 1;
            }
        }
        (n, Ok(()))
    }

    /// The host->guest fast path: takes, in avail order, up to `max` chains that are each one
    /// direct device-writable descriptor (no `NEXT`, no `INDIRECT`) with its buffer in one region,
    /// which is what virtio-net drivers post as RX buffers, into `out` (cleared first), and
    /// returns how many and why the run ended. `accept` sees each buffer's length, in order, and
    /// says whether the caller wants it ([`Take`]: a buffer too short for its packet is refused,
    /// the one that completes the last packet waiting is the last): the run stops before the
    /// first it refuses and after the last, so a buffer the caller cannot use is not taken to be
    /// given back, and a run that has what it needs loads nothing more. One broken-queue test, one
    /// region hint and no [`DescChain`] for the whole run; the avail idx is loaded when the chains
    /// seen at the last load run out, as by [`pop_burst`](Self::pop_burst), and the run takes no
    /// more than the ring holds with the chains already in flight.
    ///
    /// It stops at the first chain that is anything else and leaves it untaken for
    /// [`pop`](Self::pop), which then gives the same chain or the typed error: it makes the checks
    /// of `pop` (head in range, descriptor inside the table, buffer non-empty and inside one
    /// region) and reports nothing itself. Takes nothing on a broken queue or while logging dirty
    /// pages (`pop` records the buffers then). Taken chains count as in flight; [`give_back`](Self::give_back)
    /// returns unused ones.
    pub fn pop_rx_singles(
        &mut self,
        out: &mut Vec<SingleBuf>,
        max: usize,
        accept: impl FnMut(u32) -> Take,
    ) -> (usize, RunEnd) {
        self.pop_singles(out, max, accept, DescFlags::WRITE)
    }

    /// The guest->host fast path: [`pop_rx_singles`](Self::pop_rx_singles) for chains of one
    /// device-readable descriptor of any length, what virtio-net drivers post for a packet whose
    /// header sits in front of it (VIRTIO_F_VERSION_1 or ANY_LAYOUT). The same checks, the same
    /// stop at any other chain.
    pub fn pop_tx_singles(&mut self, out: &mut Vec<SingleBuf>, max: usize) -> (usize, RunEnd) {
        self.pop_singles(out, max, |_| Take::Yes, DescFlags::empty())
    }

    /// Takes the run of single-descriptor chains whose flags among `NEXT`, `INDIRECT` and `WRITE`
    /// are exactly `kind` and whose buffers `accept` takes (see
    /// [`pop_rx_singles`](Self::pop_rx_singles)).
    #[inline(always)]
    fn pop_singles(
        &mut self,
        out: &mut Vec<SingleBuf>,
        max: usize,
        mut accept: impl FnMut(u32) -> Take,
        kind: DescFlags,
    ) -> (usize, RunEnd) {
        out.clear();
        if self.broken.is_some() || self.log.is_some() {
            return (0, RunEnd::Other);
        }
        let start = self.last_avail;
        let mut hint = self.hint;
        let mut idx = start;
        // A well-behaved guest never has more chains out than the ring holds; one that re-posts
        // heads the device holds and keeps raising the avail idx (each step within the size
        // `refresh_avail` allows) must not make one run take more than that, nor wrap the counts.
        let room = self.cfg.size.saturating_sub(self.in_flight) as usize;
        let max = max.min(room);
        let end = 'run: loop {
            if out.len() == max {
                break if max == room { RunEnd::Other } else { RunEnd::Full };
            }
            if self.avail_cache == idx {
                // `refresh_avail` checks the jump from `last_avail`: bring it up to the run.
                self.last_avail = idx;
                if self.refresh_avail().is_err() {
                    break RunEnd::Other; // `pop` reports it
                }
                if self.avail_cache == idx {
                    break RunEnd::Empty;
                }
            }
            let ready = (self.avail_cache.wrapping_sub(idx) as usize).min(max - out.len());
            let avail = self.mem.region(self.avail.region).mapping();
            let table = self.mem.region(self.desc.region).mapping();
            for _ in 0..ready {
                let slot = (idx & self.mask) as usize;
                let Some(head) = avail.load_u16(self.avail.offset + AVAIL_RING + 2 * slot) else {
                    break 'run RunEnd::Other;
                };
                if head >= self.cfg.size {
                    break 'run RunEnd::Other;
                }
                // Two aligned loads (the table is 16-aligned).
                let Some(words) = table.read_u64_pair(self.desc.offset + DESC_SIZE * head as usize) else {
                    break 'run RunEnd::Other;
                };
                let d = RawDescriptor::from_le_words(words);
                let mask = DescFlags::NEXT | DescFlags::INDIRECT | DescFlags::WRITE;
                if d.flags & mask.bits() != kind.bits() {
                    break 'run RunEnd::Other;
                }
                // `translate_one` refuses a zero length and a range leaving its region.
                let Some(seg) = self.mem.translate_one(d.addr, d.len, &mut hint) else { break 'run RunEnd::Other };
                let take = accept(d.len);
                if take == Take::No {
                    break 'run RunEnd::Other;
                }
                out.push(SingleBuf { head, seg });
                idx = idx.wrapping_add(1);
                if take == Take::Last {
                    break 'run RunEnd::Full;
                }
            }
        };
        self.hint = hint;
        self.last_avail = idx;
        self.in_flight += idx.wrapping_sub(start);
        (out.len(), end)
    }

    /// The fast path of [`pop`](Self::pop): a direct descriptor without `NEXT` or `INDIRECT`
    /// whose buffer lies in one region (what DPDK's virtio driver and Linux's mergeable RX post)
    /// becomes `chain` and `true`. Anything else, including every descriptor the checks of
    /// [`walk_chain`] would refuse, returns `false` with nothing decided: the full walk then
    /// gives the same chain for a valid descriptor and the typed error for a bad one.
    ///
    /// With `log_gpa`, a writable buffer's guest-physical range is recorded too (dirty logging).
    #[inline(always)]
    fn pop_single(&mut self, head: u16, log_gpa: bool, chain: &mut DescChain) -> bool {
        if head >= self.cfg.size {
            return false;
        }
        let map = self.mem.region(self.desc.region).mapping();
        // Two aligned loads (the table is 16-aligned).
        let Some(words) = map.read_u64_pair(self.desc.offset + DESC_SIZE * head as usize) else {
            return false;
        };
        let d = RawDescriptor::from_le_words(words);
        if d.flags & (DescFlags::NEXT | DescFlags::INDIRECT).bits() != 0 {
            return false;
        }
        // `translate_one` refuses a zero length and a range leaving its region (so no overflow).
        let Some(seg) = self.mem.translate_one(d.addr, d.len, &mut self.hint) else {
            return false;
        };
        let writable = d.flags & DescFlags::WRITE.bits() != 0;
        chain.set_single(head, seg, writable);
        if log_gpa && writable {
            chain.writable_gpa.push((d.addr, d.len));
        }
        true
    }

    /// Hints the CPU to fetch the descriptors of the next `n` available chains (at most what
    /// the guest made available), so that the [`pop`](Self::pop)s that follow do not wait for
    /// them one by one. Reads only the avail ring; changes nothing, checks nothing (a bad head is
    /// simply not prefetched: `pop` reports it).
    #[inline]
    pub fn prefetch(&mut self, n: usize) {
        if self.broken.is_some() {
            return;
        }
        if self.avail_cache == self.last_avail && self.refresh_avail().is_err() {
            return; // `pop` reports it
        }
        let ready = self.avail_cache.wrapping_sub(self.last_avail) as usize;
        let avail = self.avail_map();
        let table = self.mem.region(self.desc.region).mapping();
        let mut idx = self.last_avail;
        for _ in 0..n.min(ready) {
            let slot = (idx & self.mask) as usize;
            if let Some(head) = avail.load_u16(self.avail.offset + AVAIL_RING + 2 * slot) {
                if head < self.cfg.size {
                    table.prefetch(self.desc.offset + DESC_SIZE * head as usize);
                }
            }
            idx = idx.wrapping_add(1);
        }
    }

    /// Hints the CPU to bring in, for writing, the first two lines of the buffer of the chain
    /// `ahead` places after the next one [`pop`](Self::pop) takes (a guest RX buffer the PMD will
    /// fill soon). Reads one avail entry and one descriptor; checks nothing, takes nothing.
    #[inline(always)]
    pub fn prefetch_buffer(&mut self, ahead: u16) {
        if self.broken.is_some() || self.avail_cache.wrapping_sub(self.last_avail) <= ahead {
            return;
        }
        let slot = (self.last_avail.wrapping_add(ahead) & self.mask) as usize;
        let Some(head) = self.avail_map().load_u16(self.avail.offset + AVAIL_RING + 2 * slot) else {
            return;
        };
        if head >= self.cfg.size {
            return;
        }
        let table = self.mem.region(self.desc.region).mapping();
        let Some([addr, _]) = table.read_u64_pair(self.desc.offset + DESC_SIZE * head as usize) else {
            return;
        };
        if let Some(seg) = self.mem.translate_one(addr, 1, &mut self.hint) {
            prefetch_host_write(seg.host_addr());
        }
    }

    /// The current avail position, to [`rewind`](Self::rewind) to if a packet cannot get all the
    /// buffers it needs (mergeable RX).
    #[inline]
    pub fn mark(&self) -> AvailMark {
        AvailMark(self.last_avail)
    }

    /// Gives back every chain taken since `mark`: the next [`pop`](Self::pop) returns them again.
    /// Their used entries must not have been pushed. Returns how many chains were given back.
    /// Nothing is written to guest memory (taking a chain writes nothing).
    pub fn rewind(&mut self, mark: AvailMark) -> Result<u16, VirtqError> {
        self.check()?;
        let n = self.last_avail.wrapping_sub(mark.0);
        self.give_back(n).map(|()| n)
    }

    /// Gives back the last `n` chains taken (their used entries must not have been pushed): the
    /// next [`pop`](Self::pop)s return them again. Nothing is written to guest memory.
    pub fn give_back(&mut self, n: u16) -> Result<(), VirtqError> {
        self.check()?;
        if n > self.in_flight {
            return Err(VirtqError::BadRewind);
        }
        self.last_avail = self.last_avail.wrapping_sub(n);
        self.in_flight -= n;
        Ok(())
    }

    /// Writes one used element (`id = head`, `len` = bytes the device wrote into the chain) at the
    /// next used slot. It stays invisible to the guest until [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) -> Result<(), VirtqError> {
        self.check()?;
        if self.in_flight == 0 {
            return Err(VirtqError::TooManyUsed);
        }
        let slot = (self.used_next & self.mask) as usize;
        let off = self.used.offset + USED_RING + USED_ELEM * slot;
        // `le32 id; le32 len;` at a 4-aligned slot (the used ring is 4-aligned).
        if !self.used_map().write_u32_pair(off, [head as u32, len]) {
            let addr = self.cfg.used_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        }
        if self.log.is_some() {
            self.log_written(head, len);
            self.log_used(USED_RING + USED_ELEM * slot, USED_ELEM as u64);
        }
        self.used_next = self.used_next.wrapping_add(1);
        self.in_flight -= 1;
        Ok(())
    }

    /// Writes one used element per entry `(head, len)`, in order: what as many
    /// [`push_used`](Self::push_used)s write, with the broken-queue and in-flight tests made once
    /// for the run. A run longer than the chains in flight writes nothing and fails with
    /// [`VirtqError::TooManyUsed`]; a store that fails breaks the queue after the elements
    /// before it.
    pub fn push_used_run(&mut self, entries: impl ExactSizeIterator<Item = (u16, u32)>) -> Result<(), VirtqError> {
        self.check()?;
        if entries.len() > self.in_flight as usize {
            return Err(VirtqError::TooManyUsed);
        }
        if self.log.is_some() {
            return entries.into_iter().try_for_each(|(head, len)| self.push_used(head, len));
        }
        let map = self.mem.region(self.used.region).mapping();
        let mut next = self.used_next;
        let mut failed = false;
        // `take`: an iterator longer than its `len` cannot push more than were taken.
        for (head, len) in entries.take(self.in_flight as usize) {
            let slot = (next & self.mask) as usize;
            // `le32 id; le32 len;` at a 4-aligned slot (the used ring is 4-aligned).
            if !map.write_u32_pair(self.used.offset + USED_RING + USED_ELEM * slot, [head as u32, len]) {
                failed = true;
                break;
            }
            next = next.wrapping_add(1);
        }
        let n = next.wrapping_sub(self.used_next);
        self.used_next = next;
        self.in_flight -= n;
        if failed {
            let addr = self.cfg.used_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        }
        Ok(())
    }

    /// Makes every pushed used element visible: with event idx and kicks wanted, first sets
    /// `avail_event` to the next avail index (section 2.7.10), then stores the used idx with
    /// `Release`. Returns how many elements became visible.
    pub fn publish_used(&mut self) -> Result<u16, VirtqError> {
        self.check()?;
        let n = self.used_next.wrapping_sub(self.published);
        if self.kicks && self.cfg.features.contains(RingFeatures::EVENT_IDX) {
            self.store_avail_event(self.last_avail)?;
        }
        if n == 0 {
            return Ok(0);
        }
        let off = self.used.offset + USED_IDX;
        if !self.used_map().store_u16_release(off, self.used_next) {
            let addr = self.cfg.used_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        }
        self.log_used(USED_IDX, 2);
        self.published = self.used_next;
        Ok(n)
    }

    fn store_avail_event(&mut self, v: u16) -> Result<(), VirtqError> {
        let off = self.used.offset + USED_RING + USED_ELEM * self.cfg.size as usize;
        if !self.used_map().store_u16(off, v) {
            let addr = self.cfg.used_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        }
        self.log_used(USED_RING + USED_ELEM * self.cfg.size as usize, 2);
        Ok(())
    }

    /// Whether the guest wants an interrupt for the used entries published since the last call
    /// (section 2.7.7.2): with event idx, when the used idx crossed `used_event`
    /// ([`vring_need_event`]); otherwise unless the avail flags have `VIRTQ_AVAIL_F_NO_INTERRUPT`.
    /// Never true when nothing new was published. Issues a full fence first.
    pub fn needs_notify(&mut self) -> Result<bool, VirtqError> {
        self.check()?;
        fence(Ordering::SeqCst);
        let (new, old) = (self.published, self.signalled);
        self.signalled = new;
        if new == old {
            return Ok(false);
        }
        let base = self.avail.offset;
        if self.cfg.features.contains(RingFeatures::EVENT_IDX) {
            let off = base + AVAIL_RING + 2 * self.cfg.size as usize;
            let Some(used_event) = self.avail_map().load_u16(off) else {
                let addr = self.cfg.avail_ring;
                return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
            };
            Ok(vring_need_event(used_event, new, old))
        } else {
            let Some(flags) = self.avail_map().load_u16(base + AVAIL_FLAGS) else {
                let addr = self.cfg.avail_ring;
                return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
            };
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
        }
    }

    /// Asks the guest to notify (kick) the device when it makes buffers available, or not
    /// (section 2.7.10): without event idx through `VIRTQ_USED_F_NO_NOTIFY` in the used flags;
    /// with event idx, enabling sets `avail_event` to the next avail index (and
    /// [`publish_used`](Self::publish_used) keeps it there), disabling leaves it where it is, so
    /// the guest kicks only if its avail idx ever passes that stale value again (once in 65536
    /// buffers). Ends with a full fence, so that after enabling, the caller's next
    /// [`avail_count`](Self::avail_count) or [`pop`](Self::pop) sees buffers the guest added
    /// without kicking.
    pub fn set_kicks(&mut self, enabled: bool) -> Result<(), VirtqError> {
        self.check()?;
        self.kicks = enabled;
        if self.cfg.features.contains(RingFeatures::EVENT_IDX) {
            if enabled {
                self.store_avail_event(self.last_avail)?;
            }
        } else {
            let v = if enabled { 0 } else { VRING_USED_F_NO_NOTIFY as u16 };
            if !self.used_map().store_u16(self.used.offset + USED_FLAGS, v) {
                let addr = self.cfg.used_ring;
                return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
            }
            self.log_used(USED_FLAGS, 2);
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

/// Which table a chain walk is reading.
#[derive(Clone, Copy)]
enum Table {
    /// The queue's descriptor table.
    Direct,
    /// An indirect table at this guest address.
    Indirect(u64),
}

/// Walks the chain starting at `head` of the descriptor table at `desc` into `chain` (sections
/// 2.7.5.2, 2.7.5.3). Reads each descriptor once into a local copy, checks it, then translates
/// its buffer; with `log_gpas`, also records each writable buffer's guest-physical range (dirty
/// logging). Writes nothing to guest memory.
#[allow(clippy::too_many_arguments)] // the queue's fields, borrowed apart from the chain it fills
fn walk_chain(
    mem: &GuestMemory,
    desc: Place,
    size: u16,
    features: RingFeatures,
    hint: &mut RegionHint,
    head: u16,
    log_gpas: bool,
    chain: &mut DescChain,
) -> Result<(), VirtqError> {
    chain.reset(head);
    if head >= size {
        return Err(VirtqError::DescIndexOutOfRange { index: head, size: size as u32 });
    }
    let table_map = mem.region(desc.region).mapping();
    let indirect_negotiated = features.contains(RingFeatures::INDIRECT_DESC);
    let mut table = Table::Direct;
    let mut ctx = DescContext { table_len: size as u32, in_indirect: false, indirect_negotiated };
    let mut idx = head;
    let mut visits: u32 = 0;
    let mut seen_writable = false;
    loop {
        visits += 1;
        if visits > ctx.table_len {
            return Err(VirtqError::ChainTooLong { limit: ctx.table_len });
        }
        let raw = match table {
            // The table is 16-aligned (checked at setup): two aligned loads.
            Table::Direct => table_map
                .read_u64_pair(desc.offset + DESC_SIZE * idx as usize)
                .map(RawDescriptor::from_le_words)
                .ok_or(MemoryError::NotContiguous { addr: 0 })?,
            // `base + 16 * idx < base + len`, which did not overflow (checked descriptor).
            Table::Indirect(base) => RawDescriptor::from_le_bytes(
                mem.read_array::<DESC_SIZE>(base + (DESC_SIZE * idx as usize) as u64, hint)?,
            ),
        };
        let d = Descriptor::new_checked(raw, idx, ctx)?;
        if let Some(count) = d.indirect_count() {
            if visits != 1 {
                return Err(VirtqError::IndirectNotHead { index: idx });
            }
            table = Table::Indirect(d.addr());
            ctx = DescContext { table_len: count, in_indirect: true, indirect_negotiated };
            idx = 0;
            visits = 0;
            continue;
        }
        chain.descriptors += 1;
        if d.is_write_only() {
            seen_writable = true;
            chain.writable_len = chain.writable_len.checked_add(d.len()).ok_or(VirtqError::ChainLenOverflow)?;
            mem.translate(d.addr(), d.len(), hint, &mut chain.writable)?;
            if log_gpas {
                chain.writable_gpa.push((d.addr(), d.len()));
            }
        } else {
            if seen_writable {
                return Err(VirtqError::ReadableAfterWritable { index: idx });
            }
            chain.readable_len = chain.readable_len.checked_add(d.len()).ok_or(VirtqError::ChainLenOverflow)?;
            mem.translate(d.addr(), d.len(), hint, &mut chain.readable)?;
        }
        if chain.readable_len.checked_add(chain.writable_len).is_none() {
            return Err(VirtqError::ChainLenOverflow);
        }
        match d.next() {
            Some(n) => idx = n,
            None => return Ok(()),
        }
    }
}
