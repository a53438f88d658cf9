//! The device side of a packed virtqueue (virtio 1.2 spec, section 2.8 "Packed Virtqueues").
//!
//! This module owns [`PackedQueue`]: the descriptor ring and the two event suppression areas in
//! guest memory, the device's positions in the ring with their wrap counters, taking chains
//! ([`PackedQueue::pop`]: consecutive descriptors linked by `NEXT`, or one indirect table), writing
//! used descriptors in order (batched: [`PackedQueue::push_used`] then one
//! [`PackedQueue::publish_used`]), event suppression (enable, disable, descriptor-specific), and the
//! broken state. It must not know packets, headers or copy engines, and it never touches a payload
//! byte: it hands out segments, in the same [`DescChain`] the split ring fills.
//!
//! # Ring positions
//!
//! The device keeps two positions, each an index below the queue size and a wrap counter that
//! starts at 1 and flips each time the index passes the end (section 2.8.1): `last_avail`, the next
//! descriptor to take, and `used`, the next slot to write a used descriptor at. A descriptor is
//! available when its `AVAIL` flag equals the avail wrap counter and its `USED` flag does not
//! (section 2.8.1). A chain of `n` descriptors gets one used descriptor, written at the slot of its
//! first descriptor; the used position then skips the other `n - 1` (section 2.8.6). Chains are
//! returned in the order they were taken, so used slots are always slots of descriptors the device
//! took: it never writes a descriptor the driver still owns.
//!
//! The vhost-user ring base carries a position as one `u16`: the index in bits 0..15 and the wrap
//! counter in bit 15 ([`PackedQueue::last_avail_idx`], [`QueueConfig::avail_base`]).
//!
//! # The guest is untrusted
//!
//! Every value read from the ring is checked before use (the same [`Descriptor`] checks as the
//! split ring, plus: a chain is at most as long as the part of the ring the device does not hold,
//! an indirect descriptor stands alone); any violation returns a [`VirtqError`] and leaves the
//! queue broken, and nothing is written to guest memory while taking a chain.
//!
//! # Memory ordering (section 2.8.21, 2.8.22)
//!
//! - The flags of the next descriptor are loaded with `Acquire`; the descriptor's other fields
//!   (and the rest of its chain, which the driver wrote before those flags) are read after it.
//! - A used descriptor's id and length are written before its flags. The flags of the first used
//!   descriptor of a batch are stored last, with `Release` ([`publish_used`](PackedQueue::publish_used)):
//!   the driver reads used descriptors in order, so it sees none of the batch before all of it.
//! - [`needs_notify`](PackedQueue::needs_notify) and [`set_kicks`](PackedQueue::set_kicks) issue a
//!   full fence, as the split ring does.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use smallvec::SmallVec;
use virtio_bindings::virtio_ring::{
    VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_FLAG_DESC, VRING_PACKED_EVENT_FLAG_DISABLE,
    VRING_PACKED_EVENT_FLAG_ENABLE, VRING_PACKED_EVENT_F_WRAP_CTR,
};

use super::chain::{DescChain, RunEnd, SingleBuf, Take};
use super::desc::{DescContext, DescFlags, Descriptor, RawDescriptor, DESC_SIZE};
use super::error::{QueueConfigError, VirtqError};
use super::split::{AvailMark, QueueConfig};
use super::{RingFeatures, MAX_QUEUE_SIZE};

use crate::mem::access::{prefetch_host_write, Mapping};
use crate::mem::dirty::DirtyLog;
use crate::mem::{GuestMemory, MemoryError, Place, RegionHint};

/// `VIRTQ_DESC_F_AVAIL` (section 2.8.1).
pub const DESC_F_AVAIL: u16 = 1 << VRING_PACKED_DESC_F_AVAIL;
/// `VIRTQ_DESC_F_USED` (section 2.8.1).
pub const DESC_F_USED: u16 = 1 << VRING_PACKED_DESC_F_USED;
/// Event suppression `flags`: notify for every buffer (section 2.8.10).
pub const EVENT_FLAG_ENABLE: u16 = VRING_PACKED_EVENT_FLAG_ENABLE as u16;
/// Event suppression `flags`: do not notify.
pub const EVENT_FLAG_DISABLE: u16 = VRING_PACKED_EVENT_FLAG_DISABLE as u16;
/// Event suppression `flags`: notify when the position in `desc` (off/wrap) is reached (needs
/// `VIRTIO_RING_F_EVENT_IDX`).
pub const EVENT_FLAG_DESC: u16 = VRING_PACKED_EVENT_FLAG_DESC as u16;
/// Bit of the event suppression `desc` field (and of a vhost-user ring base) holding the wrap
/// counter; the bits below it hold the ring index.
pub const WRAP_BIT: u16 = 1 << VRING_PACKED_EVENT_F_WRAP_CTR;

/// Byte size of a packed descriptor ring of `size` entries (section 2.8.13).
pub fn desc_ring_len(size: u16) -> usize {
    DESC_SIZE * size as usize
}

/// Byte size of an event suppression area: `le16 desc; le16 flags;` (section 2.8.14).
pub const EVENT_AREA_LEN: usize = 4;

/// Offsets inside a packed descriptor: `le64 addr; le32 len; le16 id; le16 flags;`.
const DESC_LEN: usize = 8;
const DESC_ID: usize = 12;
const DESC_FLAGS: usize = 14;
/// Offsets inside an event suppression area.
const EVENT_DESC: usize = 0;
const EVENT_FLAGS: usize = 2;

/// A packed descriptor as the guest wrote it: `le64 addr; le32 len; le16 id; le16 flags;`. Any
/// values; nothing is checked. The test guest uses it to write hostile descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawPackedDesc {
    /// Guest-physical address of the buffer (or of the indirect table).
    pub addr: u64,
    /// Length in bytes (the used length, in a used descriptor).
    pub len: u32,
    /// Buffer id.
    pub id: u16,
    /// `VIRTQ_DESC_F_*` bits, `AVAIL` and `USED` included.
    pub flags: u16,
}

impl RawPackedDesc {
    /// Decodes the little-endian wire format.
    #[inline]
    pub fn from_le_bytes(b: [u8; DESC_SIZE]) -> Self {
        let w = [
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
        ];
        Self::from_le_words(w)
    }

    /// Decodes the wire format read as two little-endian 64-bit words (already in native order):
    /// `addr`, then `len | id << 32 | flags << 48`.
    #[inline]
    pub fn from_le_words(w: [u64; 2]) -> Self {
        RawPackedDesc { addr: w[0], len: w[1] as u32, id: (w[1] >> 32) as u16, flags: (w[1] >> 48) as u16 }
    }

    /// Encodes the little-endian wire format.
    #[inline]
    pub fn to_le_bytes(self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.id.to_le_bytes());
        b[14..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// The buffer-describing part, checked like a split descriptor at `index` of a table
    /// described by `ctx`. `NEXT` is kept only where it means something (`keep_next`: the ring; in
    /// an indirect table entries are consecutive and `NEXT` is ignored); `WRITE` only when
    /// `keep_write` (see [`PackedQueue::set_read_only`]).
    #[inline]
    fn checked(
        self,
        index: u16,
        ctx: DescContext,
        keep_next: bool,
        keep_write: bool,
    ) -> Result<Descriptor, VirtqError> {
        let mut mask = DescFlags::INDIRECT;
        if keep_next {
            mask |= DescFlags::NEXT;
        }
        if keep_write {
            mask |= DescFlags::WRITE;
        }
        let raw = RawDescriptor { addr: self.addr, len: self.len, flags: self.flags & mask.bits(), next: 0 };
        Descriptor::new_checked(raw, index, ctx)
    }
}

/// Whether `flags` mark a descriptor available to a device whose avail wrap counter is `wrap`.
#[inline]
pub fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

/// Encodes a ring position as a vhost-user ring base / event `desc` field (wrap in bit 15).
#[inline]
pub fn encode_position(idx: u16, wrap: bool) -> u16 {
    idx | if wrap { WRAP_BIT } else { 0 }
}

/// One chain the device holds: its buffer id, how many ring slots it occupies, and (dirty
/// logging only) the guest-physical writable buffers it was taken with.
#[derive(Clone, Debug, Default)]
struct Taken {
    id: u16,
    slots: u16,
    written: SmallVec<[(u64, u32); 2]>,
}

/// The device side of one packed virtqueue. Owned by one PMD thread; holds its guest memory.
#[derive(Debug)]
pub struct PackedQueue {
    mem: Arc<GuestMemory>,
    cfg: QueueConfig,
    desc: Place,
    driver: Place,
    device: Place,
    /// Next descriptor to take, and the avail wrap counter.
    last_avail: u16,
    avail_wrap: bool,
    /// Next slot to write a used descriptor at, and the used wrap counter.
    used: u16,
    used_wrap: bool,
    /// The first used descriptor pushed and not yet published: its slot and the flags that will
    /// make it (and every one pushed after it) visible.
    pending: Option<(u16, u16)>,
    /// In-order batching (a read-only queue with [`RingFeatures::IN_ORDER`]): the used
    /// descriptors pushed since the last publish, not yet written, returned as one: its slot, its
    /// flags, and the buffer id of the newest.
    batch: Option<(u16, u16, u16)>,
    /// Chains pushed used since the last publish (in-order batches: more than descriptors).
    pushed: u16,
    /// Used descriptors written to the ring so far (an in-order batch is one).
    used_written: u64,
    /// Used position (linear, see `lin`) at the last publish and at the last notify decision.
    published: u32,
    signalled: u32,
    /// Chains taken and not yet used, oldest first: a ring of `size` entries.
    taken: Box<[Taken]>,
    taken_head: u16,
    taken_len: u16,
    /// Ring slots those chains occupy.
    slots_held: u16,
    /// Chains taken so far (wrapping): what an [`AvailMark`] records.
    taken_count: u16,
    hint: RegionHint,
    broken: Option<VirtqError>,
    log: Option<Arc<DirtyLog>>,
    /// The device only reads this queue's buffers (a TX queue): `WRITE` flags are ignored.
    read_only: bool,
}

impl PackedQueue {
    /// Sets up a queue on `mem`: `cfg.desc_table` is the descriptor ring (16-aligned),
    /// `cfg.avail_ring` the driver event suppression area and `cfg.used_ring` the device event
    /// suppression area (4-aligned each), each inside one guest region (section 2.8.10.1). The
    /// size is 1 ..= [`MAX_QUEUE_SIZE`], not necessarily a power of two. `cfg.avail_base` is the
    /// position to start at (index and wrap counter, see [`encode_position`]): a fresh queue starts
    /// at index 0 with wrap counter 1 (`0x8000`), and holds no chain, so the used position starts
    /// there too.
    pub fn new(mem: Arc<GuestMemory>, cfg: QueueConfig) -> Result<Self, QueueConfigError> {
        let size = cfg.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(QueueConfigError::BadSize(size as u32));
        }
        let idx = cfg.avail_base & !WRAP_BIT;
        if idx >= size {
            return Err(QueueConfigError::BadBase(cfg.avail_base));
        }
        let wrap = cfg.avail_base & WRAP_BIT != 0;
        let desc = mem
            .place(cfg.desc_table, desc_ring_len(size), 16)
            .map_err(|_| QueueConfigError::DescTable(cfg.desc_table))?;
        let driver =
            mem.place(cfg.avail_ring, EVENT_AREA_LEN, 4).map_err(|_| QueueConfigError::AvailRing(cfg.avail_ring))?;
        let device =
            mem.place(cfg.used_ring, EVENT_AREA_LEN, 4).map_err(|_| QueueConfigError::UsedRing(cfg.used_ring))?;
        let start = lin(idx, wrap, size);
        Ok(PackedQueue {
            mem,
            cfg,
            desc,
            driver,
            device,
            last_avail: idx,
            avail_wrap: wrap,
            used: idx,
            used_wrap: wrap,
            pending: None,
            batch: None,
            pushed: 0,
            used_written: 0,
            published: start,
            signalled: start,
            taken: vec![Taken::default(); size as usize].into_boxed_slice(),
            taken_head: 0,
            taken_len: 0,
            slots_held: 0,
            taken_count: 0,
            hint: RegionHint::default(),
            broken: None,
            log: None,
            read_only: false,
        })
    }

    /// Used descriptors written to the ring so far: one per chain, but one per published batch on
    /// a read-only queue with [`RingFeatures::IN_ORDER`].
    pub fn used_descriptors_written(&self) -> u64 {
        self.used_written
    }

    /// Declares that the device only reads this queue's buffers (a virtio-net TX queue), or not:
    /// then every buffer of a chain is taken as device-readable, whatever its `WRITE` flag says.
    /// Reading a buffer the driver allowed the device to write is harmless, and real drivers need
    /// it: DPDK's virtio-user presets every entry of its packed indirect TX tables with `WRITE`
    /// and leaves it on the entry of the net header (DPDK's vhost ignores the flag on TX too).
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// Starts, replaces or stops dirty logging, as [`SplitQueue::set_dirty_log`]
    /// (crate::SplitQueue::set_dirty_log) does: `pop` records each chain's writable buffers,
    /// `push_used(id, len)` marks the first `len` bytes of them, and every store into the ring or
    /// the device area marks its bytes. Starting needs a queue with no chain in flight.
    pub fn set_dirty_log(&mut self, log: Option<Arc<DirtyLog>>) -> Result<(), VirtqError> {
        if log.is_some() && self.log.is_none() && self.taken_len != 0 {
            return Err(VirtqError::LogWithChainsInFlight { in_flight: self.taken_len });
        }
        self.log = log;
        Ok(())
    }

    /// Whether dirty logging is on.
    pub fn is_logging(&self) -> bool {
        self.log.is_some()
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

    /// The guest memory the ring and buffers live in.
    #[inline]
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Next descriptor to take with the avail wrap counter in bit 15 (what vhost-user
    /// `GET_VRING_BASE` returns for a packed ring).
    #[inline]
    pub fn last_avail_idx(&self) -> u16 {
        encode_position(self.last_avail, self.avail_wrap)
    }

    /// Next used slot to write (pushed entries included), with the used wrap counter in bit 15.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        encode_position(self.used, self.used_wrap)
    }

    /// Chains taken and not yet pushed as used.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.taken_len
    }

    /// Whether an error broke the queue.
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// The error that broke the queue, if any.
    #[inline]
    pub fn broken(&self) -> Option<VirtqError> {
        self.broken
    }

    /// Breaks the queue if its guest memory was lost (see [`crate::mem::sigbus`]); then, or if it was
    /// broken before, an error. Call once per burst.
    #[inline]
    pub fn check_memory(&mut self) -> Result<(), VirtqError> {
        if self.broken.is_none() && self.mem.lost() {
            return Err(self.fail(VirtqError::MemoryLost));
        }
        self.check()
    }

    #[inline]
    fn check(&self) -> Result<(), VirtqError> {
        match self.broken {
            Some(_) => Err(VirtqError::Broken),
            None => Ok(()),
        }
    }

    #[cold]
    fn fail(&mut self, e: VirtqError) -> VirtqError {
        if e.breaks_queue() {
            self.broken = Some(e);
        }
        e
    }

    #[inline]
    fn ring(&self) -> &Mapping {
        self.mem.region(self.desc.region).mapping()
    }

    #[inline]
    fn slot_off(&self, slot: u16) -> usize {
        self.desc.offset + DESC_SIZE * slot as usize
    }

    /// Records a chain just taken at the avail position (buffer id `id`, `slots` ring slots, the
    /// writable guest buffers `written` when logging) and moves the avail position past it: the
    /// one place `pop` and the single-buffer runs keep the device's holdings.
    #[inline(always)]
    fn record_taken(&mut self, id: u16, slots: u16, written: &[(u64, u32)]) {
        let tail = self.taken_slot(self.taken_len);
        let t = &mut self.taken[tail];
        t.id = id;
        t.slots = slots;
        t.written.clear();
        if !written.is_empty() {
            // Only while logging; SmallVec's extend is a call even for nothing (+50 instructions
            // per chain under callgrind).
            t.written.extend_from_slice(written);
        }
        self.taken_len += 1;
        self.slots_held += slots;
        self.taken_count = self.taken_count.wrapping_add(1);
        let (idx, wrap) = advance(self.last_avail, self.avail_wrap, slots, self.cfg.size);
        self.last_avail = idx;
        self.avail_wrap = wrap;
    }

    /// The index in `taken` of the chain `n` places after the oldest (`n` below the queue size):
    /// one compare instead of a division (the size need not be a power of two), twice per chain.
    #[inline(always)]
    fn taken_slot(&self, n: u16) -> usize {
        let i = self.taken_head as usize + n as usize;
        let size = self.cfg.size as usize;
        if i >= size {
            i - size
        } else {
            i
        }
    }

    #[cold]
    fn ring_error(&mut self) -> VirtqError {
        let addr = self.cfg.desc_table;
        self.fail(MemoryError::NotContiguous { addr }.into())
    }

    /// Whether the descriptor at the avail position is available (an `Acquire` load of its
    /// flags). Never true while the device holds every slot of the ring.
    fn next_available(&mut self) -> Result<bool, VirtqError> {
        if self.slots_held >= self.cfg.size {
            return Ok(false);
        }
        match self.ring().load_u16_acquire(self.slot_off(self.last_avail) + DESC_FLAGS) {
            Some(flags) => Ok(is_avail(flags, self.avail_wrap)),
            None => Err(self.ring_error()),
        }
    }

    /// Takes the next available chain into `chain` (cleared first) and returns `Ok(true)`, or
    /// `Ok(false)` when the descriptor at the avail position is not available. `chain.head()` is
    /// the chain's buffer id (that of its last descriptor, section 2.8.6).
    ///
    /// On a guest error the queue breaks, the error is returned, and `chain` holds nothing useful;
    /// nothing is written to guest memory.
    pub fn pop(&mut self, chain: &mut DescChain) -> Result<bool, VirtqError> {
        self.check()?;
        let log = self.log.is_some();
        self.pop_one(chain, log)
    }

    /// Takes up to `chains.len()` available chains into the front of `chains`, as that many
    /// [`pop`](Self::pop)s would (same chains, checks, errors and state), with the broken check
    /// and the call done once per burst. Returns how many were taken and `Err` when a guest
    /// error ended the burst (the queue breaks as with `pop`; the chains before it are good).
    pub fn pop_burst(&mut self, chains: &mut [DescChain]) -> (usize, Result<(), VirtqError>) {
        if let Err(e) = self.check() {
            return (0, Err(e));
        }
        let log = self.log.is_some();
        for (n, chain) in chains.iter_mut().enumerate() {
            match self.pop_one(chain, log) {
                Ok(true) => {}
                Ok(false) => return (n, Ok(())),
                Err(e) => return (n, Err(e)),
            }
        }
        (chains.len(), Ok(()))
    }

    /// The fast paths of both directions on a packed ring: takes, in ring order, up to `max`
    /// chains that are each one direct descriptor (no `NEXT`, no `INDIRECT`), device-writable when
    /// `writable` (an RX buffer; never on a read-only queue) or device-readable otherwise (a TX
    /// packet; a read-only queue ignores `WRITE`, as `pop` does), with the buffer in one region
    /// and accepted by `accept` (see [`SplitQueue::pop_rx_singles`](super::split::SplitQueue::pop_rx_singles)),
    /// into `out` (cleared first). Returns how many and why the run ended.
    ///
    /// The same chains as that many [`pop`](Self::pop)s, with the same checks (the descriptor
    /// available by its flags, loaded with `Acquire`, the device not holding the whole ring, the
    /// buffer non-empty and inside one region) and the same records (taken chains count as held
    /// and go back with [`give_back`](Self::give_back)), without a [`DescChain`] per chain. It
    /// reports nothing itself: it stops at the first chain that is anything else and leaves it
    /// to `pop`, which takes it or returns the typed error. Takes nothing on a broken queue or
    /// while logging dirty pages (`pop` records the buffers then).
    pub fn pop_singles(
        &mut self,
        out: &mut Vec<SingleBuf>,
        max: usize,
        mut accept: impl FnMut(u32) -> Take,
        writable: bool,
    ) -> (usize, RunEnd) {
        out.clear();
        if self.broken.is_some() || self.log.is_some() || (writable && self.read_only) {
            return (0, RunEnd::Other);
        }
        let size = self.cfg.size;
        // The flags that make a single buffer of the kind asked for.
        let kind = DescFlags::NEXT | DescFlags::INDIRECT | DescFlags::WRITE;
        let (mask, want) = match (writable, self.read_only) {
            (true, _) => (kind, DescFlags::WRITE),
            (false, false) => (kind, DescFlags::empty()),
            (false, true) => (DescFlags::NEXT | DescFlags::INDIRECT, DescFlags::empty()),
        };
        let mut hint = self.hint;
        let end = loop {
            if out.len() == max {
                break RunEnd::Full;
            }
            if self.slots_held >= size {
                break RunEnd::Empty; // `pop` finds nothing either while the device holds every slot
            }
            let off = self.slot_off(self.last_avail);
            let ring = self.mem.region(self.desc.region).mapping();
            let Some(flags) = ring.load_u16_acquire(off + DESC_FLAGS) else { break RunEnd::Other };
            if !is_avail(flags, self.avail_wrap) {
                break RunEnd::Empty;
            }
            // The ring is 16-aligned (checked at setup): two aligned loads.
            let Some(raw) = ring.read_u64_pair(off).map(RawPackedDesc::from_le_words) else { break RunEnd::Other };
            if raw.flags & mask.bits() != want.bits() {
                break RunEnd::Other;
            }
            // `translate_one` refuses a zero length and a range leaving its region.
            let Some(seg) = self.mem.translate_one(raw.addr, raw.len, &mut hint) else { break RunEnd::Other };
            let take = accept(raw.len);
            if take == Take::No {
                break RunEnd::Other;
            }
            out.push(SingleBuf { head: raw.id, seg });
            self.record_taken(raw.id, 1, &[]);
            if take == Take::Last {
                break RunEnd::Full;
            }
        };
        self.hint = hint;
        (out.len(), end)
    }

    /// [`pop`](Self::pop) on a queue known not to be broken.
    #[inline(always)]
    fn pop_one(&mut self, chain: &mut DescChain, log: bool) -> Result<bool, VirtqError> {
        if !self.next_available()? {
            return Ok(false);
        }
        let mut hint = self.hint;
        let r = match self.walk_single(chain, &mut hint, log) {
            Some(v) => Ok(v),
            None => self.walk(chain, &mut hint, log),
        };
        self.hint = hint;
        let (id, slots) = match r {
            Ok(v) => v,
            Err(e) => return Err(self.fail(e)),
        };
        chain.head = id;
        self.record_taken(id, slots, if log { &chain.writable_gpa } else { &[] });
        Ok(true)
    }

    /// The common case of [`walk`](Self::walk): one direct descriptor (no NEXT, no INDIRECT)
    /// whose buffer lies in one region becomes `chain`, with its buffer id and one slot.
    /// `translate_one` refuses a zero length and a range leaving its region (so no overflow):
    /// every descriptor the checks of `walk` would refuse gives `None`, and `walk` then decides.
    /// Called only after [`next_available`](Self::next_available) found a free slot there.
    #[inline(always)]
    fn walk_single(&self, chain: &mut DescChain, hint: &mut RegionHint, log: bool) -> Option<(u16, u16)> {
        debug_assert!(self.slots_held < self.cfg.size, "walk_single on a ring the device holds whole");
        let raw = self.ring().read_u64_pair(self.slot_off(self.last_avail)).map(RawPackedDesc::from_le_words)?;
        if raw.flags & (DescFlags::NEXT | DescFlags::INDIRECT).bits() != 0 {
            return None;
        }
        let seg = self.mem.translate_one(raw.addr, raw.len, hint)?;
        let writable = !self.read_only && raw.flags & DescFlags::WRITE.bits() != 0;
        chain.set_single(raw.id, seg, writable);
        if log && writable {
            chain.writable_gpa.push((raw.addr, raw.len));
        }
        Some((raw.id, 1))
    }

    /// Walks the chain starting at the avail position (sections 2.8.6, 2.8.7): returns its buffer
    /// id and how many ring slots it occupies. Reads each descriptor once into a local copy,
    /// checks it, then translates its buffer. Writes nothing to guest memory.
    #[inline(never)]
    fn walk(&self, chain: &mut DescChain, hint: &mut RegionHint, log: bool) -> Result<(u16, u16), VirtqError> {
        chain.reset(0);
        let size = self.cfg.size;
        let free = size - self.slots_held;
        let indirect_negotiated = self.cfg.features.contains(RingFeatures::INDIRECT_DESC);
        let ctx = DescContext { table_len: size as u32, in_indirect: false, indirect_negotiated };
        let ring = self.ring();
        let mut slot = self.last_avail;
        let mut slots: u16 = 0;
        loop {
            if slots == free {
                // The chain runs into slots the device holds (or around the whole ring).
                return Err(VirtqError::ChainTooLong { limit: free as u32 });
            }
            // The ring is 16-aligned (checked at setup): two aligned loads.
            let raw = ring
                .read_u64_pair(self.slot_off(slot))
                .map(RawPackedDesc::from_le_words)
                .ok_or(MemoryError::NotContiguous { addr: self.cfg.desc_table })?;
            slots += 1;
            let d = raw.checked(slot, ctx, true, !self.read_only)?;
            if let Some(count) = d.indirect_count() {
                if slots != 1 {
                    return Err(VirtqError::IndirectNotHead { index: slot });
                }
                self.walk_indirect(d.addr(), count, indirect_negotiated, chain, hint, log)?;
                return Ok((raw.id, slots));
            }
            chain.add_buffer(&self.mem, &d, slot, hint, log)?;
            if d.next().is_none() {
                return Ok((raw.id, slots));
            }
            slot += 1;
            if slot == size {
                slot = 0;
            }
        }
    }

    /// Reads the `count` consecutive descriptors of an indirect table at `base` (section 2.8.7).
    fn walk_indirect(
        &self,
        base: u64,
        count: u32,
        indirect_negotiated: bool,
        chain: &mut DescChain,
        hint: &mut RegionHint,
        log: bool,
    ) -> Result<(), VirtqError> {
        let ctx = DescContext { table_len: count, in_indirect: true, indirect_negotiated };
        for i in 0..count {
            // `base + 16 * i < base + len`, which did not overflow (checked descriptor).
            let raw = RawPackedDesc::from_le_bytes(
                self.mem.read_array::<DESC_SIZE>(base + (DESC_SIZE as u64) * i as u64, hint)?,
            );
            let d = raw.checked(i as u16, ctx, false, !self.read_only)?;
            chain.add_buffer(&self.mem, &d, i as u16, hint, log)?;
        }
        Ok(())
    }

    /// Hints the CPU to fetch the next `n` ring descriptors. Reads nothing, checks nothing.
    #[inline]
    pub fn prefetch(&mut self, n: usize) {
        let size = self.cfg.size;
        let n = n.min((size - self.slots_held.min(size)) as usize);
        let ring = self.ring();
        let mut slot = self.last_avail;
        // Four descriptors per cache line.
        for _ in 0..n.div_ceil(4) {
            ring.prefetch(self.slot_off(slot));
            slot = ((slot as u32 + 4) % size as u32) as u16;
        }
    }

    /// Hints the CPU to bring in, for writing, the first two lines of the buffer in the ring slot
    /// `ahead` places after the next one [`pop`](Self::pop) looks at (a guest RX buffer the PMD
    /// will fill soon, if that slot is available). Reads one descriptor; checks nothing.
    #[inline]
    pub fn prefetch_buffer(&mut self, ahead: u16) {
        let size = self.cfg.size;
        if self.broken.is_some() || size == 0 {
            return;
        }
        let slot = ((self.last_avail as u32 + ahead as u32) % size as u32) as u16;
        let Some([addr, _]) = self.ring().read_u64_pair(self.slot_off(slot)) else {
            return;
        };
        if let Some(seg) = self.mem.translate_one(addr, 1, &mut self.hint) {
            prefetch_host_write(seg.host_addr());
        }
    }

    /// The current take position, to [`rewind`](Self::rewind) to.
    #[inline]
    pub fn mark(&self) -> AvailMark {
        AvailMark(self.taken_count)
    }

    /// Gives back every chain taken since `mark` (their used entries must not have been pushed):
    /// the next [`pop`](Self::pop) returns them again. Returns how many were given back.
    pub fn rewind(&mut self, mark: AvailMark) -> Result<u16, VirtqError> {
        self.check()?;
        let n = self.taken_count.wrapping_sub(mark.0);
        self.give_back(n).map(|()| n)
    }

    /// Gives back the last `n` chains taken (their used entries must not have been pushed).
    /// Nothing is written to guest memory.
    pub fn give_back(&mut self, n: u16) -> Result<(), VirtqError> {
        self.check()?;
        if n > self.taken_len {
            return Err(VirtqError::BadRewind);
        }
        let size = self.cfg.size;
        for _ in 0..n {
            let last = self.taken_slot(self.taken_len - 1);
            let slots = self.taken[last].slots;
            if self.last_avail >= slots {
                self.last_avail -= slots;
            } else {
                self.last_avail = self.last_avail + size - slots;
                self.avail_wrap = !self.avail_wrap;
            }
            self.taken_len -= 1;
            self.slots_held -= slots;
            self.taken_count = self.taken_count.wrapping_sub(1);
        }
        Ok(())
    }

    /// Returns the oldest chain taken as used (`id`, `len` = bytes the device wrote into it): writes
    /// its used descriptor at the used position and moves the position past every slot of that
    /// chain. On a read-only queue with [`RingFeatures::IN_ORDER`] nothing is written yet: the
    /// chains pushed until the next publish become one descriptor then (a batch, at its first
    /// slot, with the newest id). Invisible to the driver until [`publish_used`](Self::publish_used).
    #[inline]
    pub fn push_used(&mut self, id: u16, len: u32) -> Result<(), VirtqError> {
        self.check()?;
        if self.taken_len == 0 {
            return Err(VirtqError::TooManyUsed);
        }
        let head = self.taken_head as usize;
        let slots = self.taken[head].slots;
        let mut flags = if self.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        if len == 0 && self.read_only && self.cfg.features.contains(RingFeatures::IN_ORDER) {
            // In order, nothing written: one descriptor for the whole batch, at its start, at publish.
            match &mut self.batch {
                None => self.batch = Some((self.used, flags, id)),
                Some((_, _, newest)) => *newest = id,
            }
            self.advance_used(head, slots);
            return Ok(());
        }
        self.flush_batch()?;
        if len != 0 {
            flags |= DescFlags::WRITE.bits();
        }
        self.write_used(self.used, flags, id, len)?;
        if let Some(log) = &self.log {
            let mut left = len;
            for &(gpa, n) in &self.taken[head].written {
                if left == 0 {
                    break;
                }
                let take = n.min(left);
                log.mark(gpa, take as u64);
                left -= take;
            }
        }
        self.advance_used(head, slots);
        Ok(())
    }

    /// Writes a used descriptor (`id`, `len`) at `slot`, and its `flags` unless it is the first
    /// since the last publish: those flags are stored by [`publish_used`](Self::publish_used).
    #[inline(always)]
    fn write_used(&mut self, slot: u16, flags: u16, id: u16, len: u32) -> Result<(), VirtqError> {
        let off = self.slot_off(slot);
        let ring = self.ring();
        // Never the flags first: the driver must not see this slot change before it is complete.
        if !ring.write_array::<4>(off + DESC_LEN, len.to_le_bytes()) || !ring.store_u16(off + DESC_ID, id) {
            return Err(self.ring_error());
        }
        match self.pending {
            None => self.pending = Some((slot, flags)),
            // Visible only once the first of the batch is: the driver reads used descriptors in
            // order, after an acquire of that one's flags.
            Some(_) => {
                if !self.ring().store_u16(off + DESC_FLAGS, flags) {
                    return Err(self.ring_error());
                }
            }
        }
        if let Some(log) = &self.log {
            log.mark(self.cfg.desc_table + (DESC_SIZE * slot as usize + DESC_LEN) as u64, 8);
        }
        self.used_written += 1;
        Ok(())
    }

    /// Moves the used position past the oldest chain taken (at `head` in `taken`, `slots` long).
    #[inline]
    fn advance_used(&mut self, head: usize, slots: u16) {
        let size = self.cfg.size;
        let (idx, wrap) = advance(self.used, self.used_wrap, slots, size);
        self.used = idx;
        self.used_wrap = wrap;
        self.taken_head = if head + 1 == size as usize { 0 } else { head as u16 + 1 };
        self.taken_len -= 1;
        self.slots_held -= slots;
        self.pushed += 1;
    }

    /// Writes the used descriptor of an in-order batch (length 0, the newest buffer id) at the
    /// batch's first slot, if one is pending; it becomes visible with the first descriptor
    /// written since the last publish, as any other.
    #[inline(always)]
    fn flush_batch(&mut self) -> Result<(), VirtqError> {
        if self.batch.is_none() {
            return Ok(());
        }
        self.write_batch()
    }

    /// [`flush_batch`](Self::flush_batch) with a batch pending: once per publish, off the
    /// per-chain path.
    #[inline(never)]
    fn write_batch(&mut self) -> Result<(), VirtqError> {
        let Some((slot, flags, id)) = self.batch.take() else {
            return Ok(());
        };
        self.write_used(slot, flags, id, 0)
    }

    /// Makes every pushed used chain visible: writes the pending in-order batch, if any, then
    /// stores the flags of the first descriptor written since the last publish with `Release`.
    /// Returns how many chains became visible.
    pub fn publish_used(&mut self) -> Result<u16, VirtqError> {
        self.check()?;
        self.flush_batch()?;
        let Some((slot, flags)) = self.pending.take() else {
            return Ok(0);
        };
        let off = self.slot_off(slot);
        if !self.ring().store_u16_release(off + DESC_FLAGS, flags) {
            return Err(self.ring_error());
        }
        let n = std::mem::take(&mut self.pushed);
        self.published = lin(self.used, self.used_wrap, self.cfg.size);
        Ok(n)
    }

    /// Whether the driver wants a notification for the used descriptors published since the last
    /// call (section 2.8.10): per the driver event suppression area, always (`ENABLE`), never
    /// (`DISABLE`), or when the used position passed the one in its `desc` field (`DESC`, with
    /// `VIRTIO_RING_F_EVENT_IDX`; without it, `DESC` is treated as `ENABLE`). Never true when
    /// nothing new was published. Issues a full fence first.
    pub fn needs_notify(&mut self) -> Result<bool, VirtqError> {
        self.check()?;
        fence(Ordering::SeqCst);
        let (new, old) = (self.published, self.signalled);
        self.signalled = new;
        if new == old {
            return Ok(false);
        }
        let map = self.mem.region(self.driver.region).mapping();
        let (Some(flags), Some(desc)) =
            (map.load_u16(self.driver.offset + EVENT_FLAGS), map.load_u16(self.driver.offset + EVENT_DESC))
        else {
            let addr = self.cfg.avail_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        };
        Ok(match flags {
            EVENT_FLAG_DISABLE => false,
            EVENT_FLAG_DESC if self.cfg.features.contains(RingFeatures::EVENT_IDX) => {
                let size = self.cfg.size;
                // An offset past the ring is the driver's own loss (no or extra interrupts).
                let event = lin((desc & !WRAP_BIT) % size, desc & WRAP_BIT != 0, size);
                need_event(event, new, old, 2 * size as u32)
            }
            _ => true,
        })
    }

    /// Asks the driver to notify (kick) the device when it makes buffers available, or not, through
    /// the device event suppression area (`ENABLE` / `DISABLE`, section 2.8.10). Ends with a full
    /// fence, so that after enabling, the caller's next [`pop`](Self::pop) sees buffers the driver
    /// added without kicking.
    pub fn set_kicks(&mut self, enabled: bool) -> Result<(), VirtqError> {
        self.check()?;
        let v = if enabled { EVENT_FLAG_ENABLE } else { EVENT_FLAG_DISABLE };
        let map = self.mem.region(self.device.region).mapping();
        if !map.store_u16(self.device.offset + EVENT_FLAGS, v) {
            let addr = self.cfg.used_ring;
            return Err(self.fail(MemoryError::NotContiguous { addr }.into()));
        }
        if let Some(log) = &self.log {
            log.mark(self.cfg.used_ring + EVENT_FLAGS as u64, 2);
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

/// Moves ring position `(idx, wrap)` forward by `n` slots of a ring of `size`.
#[inline]
fn advance(idx: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let to = idx as u32 + n as u32;
    if to >= size as u32 {
        ((to - size as u32) as u16, !wrap)
    } else {
        (to as u16, wrap)
    }
}

/// A ring position as one number in `0 .. 2 * size`: the first pass (wrap counter 1) below
/// `size`, the second above.
#[inline]
fn lin(idx: u16, wrap: bool, size: u16) -> u32 {
    idx as u32 + if wrap { 0 } else { size as u32 }
}

/// [`super::vring_need_event`] on positions modulo `m` (twice the ring size): whether moving the
/// used position from `old` to `new` passed `event`.
#[inline]
fn need_event(event: u32, new: u32, old: u32, m: u32) -> bool {
    (new + 2 * m - event - 1) % m < (new + m - old) % m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_wrap_and_flip_the_counter() {
        assert_eq!(advance(6, true, 2, 8), (0, false));
        assert_eq!(advance(7, false, 3, 8), (2, true));
        assert_eq!(advance(1, true, 3, 8), (4, true));
        assert_eq!(encode_position(5, true), 0x8005);
        assert_eq!(lin(3, false, 8), 11);
    }

    #[test]
    fn availability_follows_the_wrap_counter() {
        assert!(is_avail(DESC_F_AVAIL, true));
        assert!(!is_avail(DESC_F_AVAIL | DESC_F_USED, true), "used in this pass");
        assert!(!is_avail(0, true));
        assert!(is_avail(DESC_F_USED, false));
        assert!(!is_avail(DESC_F_AVAIL, false), "made available in the previous pass");
    }

    #[test]
    fn event_positions_compare_across_the_wrap() {
        let m = 16; // ring of 8
        assert!(need_event(2, 4, 1, m));
        assert!(!need_event(4, 4, 1, m), "event not reached yet");
        assert!(need_event(15, 1, 14, m), "across the end of the second pass");
        assert!(!need_event(3, 1, 14, m));
    }
}
