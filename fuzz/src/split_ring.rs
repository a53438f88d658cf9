//! Target `split_ring`: the device side of a split virtqueue ([`SplitQueue`]) driven by a hostile
//! guest whose every ring and descriptor byte comes from the fuzz input, checked step by step
//! against an independent model of the virtio 1.2 rules (section 2.7).
//!
//! # Input layout
//!
//! A setup block, then operations until the input ends (at most [`MAX_OPS`]):
//!
//! - `size`: one byte; bit 7 set: a raw `u16` follows (any value, invalid ones included), else
//!   `1 << (byte % 8)`; `features`: one byte (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2 a dirty
//!   log, as during live migration: [`SplitQueue::set_dirty_log`]); the
//!   descriptor table, avail ring and used ring addresses ([`Codec::ring`]); `avail_base: u16`;
//!   the used idx the guest leaves in the used ring: `u16`.
//! - Each operation is one byte (`% 17`) and its operands: guest writes (a descriptor, a whole
//!   direct chain, an indirect table and its head, an avail entry, the avail idx, raw bytes, the
//!   event-idx and flags fields) and device calls (`pop`, `push_used`, `publish_used`,
//!   `needs_notify`, `set_kicks`, `avail_count`, `mark`, `rewind`, `check_memory`, and a burst of
//!   pops and pushes like the datapath's).
//!
//! Guest memory is three guarded regions ([`REGIONS`]): two contiguous in guest-physical space
//! but separate host mappings (a buffer across them is two segments), and one after a gap.
//!
//! # Invariants (a failure panics: libFuzzer records a crash)
//!
//! - No panic in the switch's code.
//! - Setup accepts exactly the queues the model accepts (size a power of two up to 32768, each
//!   ring inside one region and aligned), with the same error.
//! - Every device call returns what the model returns: each chain's head, its readable and
//!   writable host segments (each one inside one region's mapping, and together exactly the
//!   buffers of the descriptors the guest wrote, split at region boundaries), lengths and
//!   descriptor count; the same typed error for every violation; the same avail/used positions,
//!   chains in flight, notification decisions.
//! - Guest memory after each call holds exactly what the guest wrote plus the used-ring writes the
//!   model predicts (used elements, used idx, `avail_event`, used flags): nothing is written
//!   anywhere else, and taking a chain writes nothing.
//! - With a dirty log, exactly the pages the model says are marked after every call: the first
//!   `len` bytes of the writable buffers of the chain `push_used(head, len)` returns (as `pop` took
//!   it under that head), and the page of every used-ring store; nothing else.
//! - A guest error breaks the queue: `is_broken`/`broken` report it, every later call returns
//!   `VirtqError::Broken`, hands out no chain and writes nothing. Caller mistakes
//!   (`TooManyUsed`, `BadRewind`) do not break it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use vswitch_datapath::dirty::LOG_PAGE;
use vswitch_datapath::virtio::desc::{DescFlags, RawDescriptor, DESC_SIZE};
use vswitch_datapath::virtio::split::{avail_ring_len, desc_table_len, used_ring_len, AvailMark};
use vswitch_datapath::virtio::{vring_need_event, MAX_QUEUE_SIZE};
use vswitch_datapath::{
    DescChain, DirtyLog, MemoryError, QueueConfig, QueueConfigError, RingFeatures, SplitQueue, VirtqError,
};

use crate::guest::FuzzGuest;
use crate::input::Input;

/// Guest memory: `(gpa, len)`. Regions 0 and 1 are adjacent in guest-physical space.
pub const REGIONS: [(u64, usize); 3] = [(0x1_0000, 0x2000), (0x1_2000, 0x1000), (0x2_0000, 0x1000)];
/// Default ring offsets in region 0 (a 128-entry queue fits), and where buffers go.
pub const DEFAULT_DESC: u64 = 0x1_0000;
/// Default avail ring address.
pub const DEFAULT_AVAIL: u64 = 0x1_0800;
/// Default used ring address.
pub const DEFAULT_USED: u64 = 0x1_0c00;
/// Start of the buffer area of region 0.
pub const BUF_AREA: u64 = 0x1_1100;
/// Most operations per input.
pub const MAX_OPS: usize = 256;
/// Pages the dirty log covers (guest memory ends at page 0x21; marks beyond the log are ignored).
pub const LOG_PAGES: u64 = 40;

const NEXT: u16 = DescFlags::NEXT.bits();
const WRITE: u16 = DescFlags::WRITE.bits();
const INDIRECT: u16 = DescFlags::INDIRECT.bits();

/// Operation codes (the first byte of each operation, `% OPS`).
#[allow(missing_docs)]
pub mod op {
    pub const WRITE_DESC: u8 = 0;
    pub const WRITE_CHAIN: u8 = 1;
    pub const WRITE_INDIRECT: u8 = 2;
    pub const MAKE_AVAIL: u8 = 3;
    pub const SET_AVAIL_IDX: u8 = 4;
    pub const WRITE_RAW: u8 = 5;
    pub const SET_EVENT_FIELD: u8 = 6;
    pub const POP: u8 = 7;
    pub const PUSH_USED: u8 = 8;
    pub const PUBLISH: u8 = 9;
    pub const NEEDS_NOTIFY: u8 = 10;
    pub const SET_KICKS: u8 = 11;
    pub const AVAIL_COUNT: u8 = 12;
    pub const MARK: u8 = 13;
    pub const REWIND: u8 = 14;
    pub const CHECK_MEMORY: u8 = 15;
    pub const BURST: u8 = 16;
    pub const OPS: u8 = 17;
}

/// How the input encodes addresses and lengths.
#[derive(Debug)]
pub struct Codec;

impl Codec {
    /// A ring address: modes 0-3 the default (`default`), 4 region `k` + any offset, 5 region `k`
    /// + a 16-aligned offset, 6 a raw `u64`, 7 just below the end of region `k`.
    pub fn ring(i: &mut Input<'_>, default: u64) -> u64 {
        match i.u8() % 8 {
            0..=3 => default,
            4 => {
                let (gpa, len) = REGIONS[i.below(3)];
                gpa + (i.u16() as u64 % (len as u64 + 64))
            }
            5 => {
                let (gpa, len) = REGIONS[i.below(3)];
                gpa + ((i.u16() as u64 & !15) % (len as u64 + 64))
            }
            6 => i.u64(),
            _ => {
                let (gpa, len) = REGIONS[i.below(3)];
                (gpa + len as u64).wrapping_sub(i.u8() as u64)
            }
        }
    }

    /// A buffer address: modes 0-3 the buffer area of region 0, 4 region 1, 5 region 2 (both may
    /// run past the end), 6 just below the end of a region, 7 a raw `u64`.
    pub fn buf(i: &mut Input<'_>) -> u64 {
        match i.u8() % 8 {
            0..=3 => BUF_AREA + i.u16() as u64 % 0xf00,
            4 => REGIONS[1].0 + i.u16() as u64 % 0x1100,
            5 => REGIONS[2].0 + i.u16() as u64 % 0x1100,
            6 => {
                let (gpa, len) = REGIONS[i.below(3)];
                (gpa + len as u64).wrapping_sub(i.u8() as u64)
            }
            _ => i.u64(),
        }
    }

    /// A buffer length: modes 0-1 a byte, 2 a `u16`, 3 a raw `u32`.
    pub fn len(i: &mut Input<'_>) -> u32 {
        match i.u8() % 4 {
            0 | 1 => i.u8() as u32,
            2 => i.u16() as u32,
            _ => i.u32(),
        }
    }
}

/// A chain as the model walks it: what the device must hand out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ModelChain {
    pub(crate) head: u16,
    pub(crate) readable: Vec<(usize, u32)>,
    pub(crate) writable: Vec<(usize, u32)>,
    pub(crate) readable_len: u32,
    pub(crate) writable_len: u32,
    pub(crate) descriptors: u32,
}

/// The model of the device side: the spec's rules over the shadow of guest memory.
#[derive(Debug)]
struct Model {
    size: u16,
    features: RingFeatures,
    desc: u64,
    avail: u64,
    used: u64,
    last_avail: u16,
    avail_cache: u16,
    used_next: u16,
    published: u16,
    signalled: u16,
    in_flight: u32,
    /// Whether the device asks for kicks (initially, and after `set_kicks(true)`): with event
    /// idx only then does publishing move `avail_event`.
    kicks: bool,
    broken: Option<VirtqError>,
    /// The dirty log's bits, when logging.
    log: Option<Vec<bool>>,
    /// Per head, the writable buffers `(gpa, len)` of the chain last taken under it (logging).
    written: HashMap<u16, Vec<(u64, u32)>>,
}

/// Where a ring lies if it is acceptable: inside one region, with its host address aligned.
pub(crate) fn place(g: &FuzzGuest, gpa: u64, len: usize, align: usize) -> bool {
    if gpa.checked_add(len as u64).is_none() {
        return false;
    }
    match g.locate(gpa) {
        Some((i, off)) => off + len <= g.spans()[i].len && (g.spans()[i].host + off).is_multiple_of(align),
        None => false,
    }
}

impl Model {
    fn setup(g: &FuzzGuest, cfg: &QueueConfig) -> Result<Model, QueueConfigError> {
        let size = cfg.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueConfigError::BadSize(size as u32));
        }
        if !place(g, cfg.desc_table, desc_table_len(size), 16) {
            return Err(QueueConfigError::DescTable(cfg.desc_table));
        }
        if !place(g, cfg.avail_ring, avail_ring_len(size), 2) {
            return Err(QueueConfigError::AvailRing(cfg.avail_ring));
        }
        if !place(g, cfg.used_ring, used_ring_len(size), 4) {
            return Err(QueueConfigError::UsedRing(cfg.used_ring));
        }
        let used_idx = g.read_u16(cfg.used_ring + 2);
        Ok(Model {
            size,
            features: cfg.features,
            desc: cfg.desc_table,
            avail: cfg.avail_ring,
            used: cfg.used_ring,
            last_avail: cfg.avail_base,
            avail_cache: cfg.avail_base,
            used_next: used_idx,
            published: used_idx,
            signalled: used_idx,
            in_flight: 0,
            kicks: true,
            broken: None,
            log: None,
            written: HashMap::new(),
        })
    }

    /// Marks every page of `gpa .. gpa + len` the log covers.
    fn mark(&mut self, gpa: u64, len: u64) {
        mark_log(&mut self.log, gpa, len);
    }

    fn mask(&self) -> u16 {
        self.size - 1
    }

    fn check(&self) -> Result<(), VirtqError> {
        check_broken(&self.broken)
    }

    fn fail(&mut self, e: VirtqError) -> VirtqError {
        fail_with(&mut self.broken, e)
    }

    fn refresh(&mut self, g: &FuzzGuest) -> Result<(), VirtqError> {
        let idx = g.read_u16(self.avail + 2);
        if idx.wrapping_sub(self.last_avail) > self.size {
            return Err(self.fail(VirtqError::AvailIdxJump { avail_idx: idx, last_avail: self.last_avail }));
        }
        self.avail_cache = idx;
        Ok(())
    }

    fn avail_count(&mut self, g: &FuzzGuest) -> Result<u16, VirtqError> {
        self.check()?;
        self.refresh(g)?;
        Ok(self.avail_cache.wrapping_sub(self.last_avail))
    }

    fn pop(&mut self, g: &FuzzGuest) -> Result<Option<ModelChain>, VirtqError> {
        self.check()?;
        if self.avail_cache == self.last_avail {
            self.refresh(g)?;
            if self.avail_cache == self.last_avail {
                return Ok(None);
            }
        }
        let slot = (self.last_avail & self.mask()) as u64;
        let head = g.read_u16(self.avail + 4 + 2 * slot);
        match self.walk(g, head) {
            Ok(c) => {
                self.last_avail = self.last_avail.wrapping_add(1);
                self.in_flight += 1;
                if self.log.is_some() {
                    let w = c.writable.iter().map(|&(host, len)| (host_to_gpa(g, host), len)).collect();
                    self.written.insert(head, w);
                }
                Ok(Some(c))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Sections 2.7.5.2 (chains), 2.7.5.3 (indirect tables), 2.7.4.2 (readable before writable).
    fn walk(&self, g: &FuzzGuest, head: u16) -> Result<ModelChain, VirtqError> {
        let mut c = ModelChain { head, ..ModelChain::default() };
        if head >= self.size {
            return Err(VirtqError::DescIndexOutOfRange { index: head, size: self.size as u32 });
        }
        let indirect_ok = self.features.contains(RingFeatures::INDIRECT_DESC);
        let mut table: Option<u64> = None; // None: the queue's table; Some(gpa): an indirect one
        let mut table_len = self.size as u32;
        let mut idx = head;
        let mut visits = 0u32;
        let mut seen_writable = false;
        loop {
            visits += 1;
            if visits > table_len {
                return Err(VirtqError::ChainTooLong { limit: table_len });
            }
            let bytes = match table {
                None => g.read(self.desc + 16 * idx as u64, DESC_SIZE).expect("descriptor table is mapped"),
                Some(base) => g
                    .read(base + 16 * idx as u64, DESC_SIZE)
                    .map_err(|addr| VirtqError::Memory(MemoryError::Unmapped { addr }))?,
            };
            let d = RawDescriptor::from_le_bytes(bytes.try_into().expect("16 bytes"));
            let (has_next, write, indirect) = (d.flags & NEXT != 0, d.flags & WRITE != 0, d.flags & INDIRECT != 0);
            if indirect {
                if table.is_some() {
                    return Err(VirtqError::NestedIndirect);
                }
                if !indirect_ok {
                    return Err(VirtqError::IndirectNotNegotiated);
                }
                if has_next {
                    return Err(VirtqError::IndirectWithNext);
                }
                if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > MAX_QUEUE_SIZE as u32 {
                    return Err(VirtqError::BadIndirectLen { len: d.len });
                }
            }
            if d.len == 0 {
                return Err(VirtqError::ZeroLength { index: idx });
            }
            if d.addr.checked_add(d.len as u64).is_none() {
                return Err(VirtqError::AddrOverflow { index: idx });
            }
            if has_next && d.next as u32 >= table_len {
                return Err(VirtqError::DescIndexOutOfRange { index: d.next, size: table_len });
            }
            if indirect {
                if visits != 1 {
                    return Err(VirtqError::IndirectNotHead { index: idx });
                }
                table = Some(d.addr);
                table_len = d.len / 16;
                idx = 0;
                visits = 0;
                continue;
            }
            c.descriptors += 1;
            let segs = |g: &FuzzGuest| {
                g.host_segments(d.addr, d.len).map_err(|addr| VirtqError::Memory(MemoryError::Unmapped { addr }))
            };
            if write {
                seen_writable = true;
                c.writable_len = c.writable_len.checked_add(d.len).ok_or(VirtqError::ChainLenOverflow)?;
                c.writable.extend(segs(g)?);
            } else {
                if seen_writable {
                    return Err(VirtqError::ReadableAfterWritable { index: idx });
                }
                c.readable_len = c.readable_len.checked_add(d.len).ok_or(VirtqError::ChainLenOverflow)?;
                c.readable.extend(segs(g)?);
            }
            if c.readable_len.checked_add(c.writable_len).is_none() {
                return Err(VirtqError::ChainLenOverflow);
            }
            if !has_next {
                return Ok(c);
            }
            idx = d.next;
        }
    }

    fn push_used(&mut self, g: &mut FuzzGuest, head: u16, len: u32) -> Result<(), VirtqError> {
        self.check()?;
        if self.in_flight == 0 {
            return Err(VirtqError::TooManyUsed);
        }
        let slot = (self.used_next & self.mask()) as u64;
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&(head as u32).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        self.expect_used_write(g, 4 + 8 * slot, &elem);
        if self.log.is_some() {
            let mut left = len;
            for (gpa, n) in self.written.get(&head).cloned().unwrap_or_default() {
                if left == 0 {
                    break;
                }
                let take = n.min(left);
                self.mark(gpa, take as u64);
                left -= take;
            }
            self.mark(self.used + 4 + 8 * slot, 8);
        }
        self.used_next = self.used_next.wrapping_add(1);
        self.in_flight -= 1;
        Ok(())
    }

    /// A device write at `off` in the used ring: the only place the device may write. Element
    /// writes are logged by the caller (with the chain's buffers); index, flags and event stores
    /// are logged here.
    fn expect_used_write(&mut self, g: &mut FuzzGuest, off: u64, bytes: &[u8]) {
        assert!(off as usize + bytes.len() <= used_ring_len(self.size), "model predicts a write outside the used ring");
        g.expect_device_write(self.used + off, bytes);
        let element = off >= 4 && off < 4 + 8 * self.size as u64;
        if !element {
            self.mark(self.used + off, bytes.len() as u64);
        }
    }

    fn publish_used(&mut self, g: &mut FuzzGuest) -> Result<u16, VirtqError> {
        self.check()?;
        let n = self.used_next.wrapping_sub(self.published);
        if self.kicks && self.features.contains(RingFeatures::EVENT_IDX) {
            self.expect_used_write(g, 4 + 8 * self.size as u64, &self.last_avail.to_le_bytes());
        }
        if n == 0 {
            return Ok(0);
        }
        self.expect_used_write(g, 2, &self.used_next.to_le_bytes());
        self.published = self.used_next;
        Ok(n)
    }

    fn needs_notify(&mut self, g: &FuzzGuest) -> Result<bool, VirtqError> {
        self.check()?;
        let (new, old) = (self.published, self.signalled);
        self.signalled = new;
        if new == old {
            return Ok(false);
        }
        if self.features.contains(RingFeatures::EVENT_IDX) {
            let used_event = g.read_u16(self.avail + 4 + 2 * self.size as u64);
            Ok(vring_need_event(used_event, new, old))
        } else {
            Ok(g.read_u16(self.avail) & 1 == 0)
        }
    }

    fn set_kicks(&mut self, g: &mut FuzzGuest, enabled: bool) -> Result<(), VirtqError> {
        self.check()?;
        self.kicks = enabled;
        if self.features.contains(RingFeatures::EVENT_IDX) {
            if enabled {
                self.expect_used_write(g, 4 + 8 * self.size as u64, &self.last_avail.to_le_bytes());
            }
        } else {
            let v: u16 = if enabled { 0 } else { 1 };
            self.expect_used_write(g, 0, &v.to_le_bytes());
        }
        Ok(())
    }

    fn rewind(&mut self, to: u16) -> Result<u16, VirtqError> {
        self.check()?;
        let n = self.last_avail.wrapping_sub(to);
        if n as u32 > self.in_flight {
            return Err(VirtqError::BadRewind);
        }
        self.last_avail = to;
        self.in_flight -= n as u32;
        Ok(n)
    }
}

/// The guest address of a host address in guest memory.
pub(crate) fn host_to_gpa(g: &FuzzGuest, host: usize) -> u64 {
    let s = g.spans().iter().find(|s| s.holds_host(host, 1)).expect("a segment in guest memory");
    s.gpa + (host - s.host) as u64
}

/// Per-thread guest memory, reused across inputs (zeroed for each).
pub(crate) fn with_guest<R>(f: impl FnOnce(&mut FuzzGuest) -> R) -> R {
    thread_local! {
        static GUEST: RefCell<FuzzGuest> = RefCell::new(FuzzGuest::new(&REGIONS));
    }
    GUEST.with(|g| {
        let mut g = g.borrow_mut();
        g.reset();
        f(&mut g)
    })
}

pub(crate) fn segs(s: &[vswitch_datapath::HostSeg]) -> Vec<(usize, u32)> {
    s.iter().map(|s| (s.host_addr(), s.len())).collect()
}

/// Marks every page of `gpa .. gpa + len` that a model's dirty log (`Some` when logging) covers.
pub(crate) fn mark_log(log: &mut Option<Vec<bool>>, gpa: u64, len: u64) {
    let Some(bits) = log else { return };
    if len == 0 {
        return;
    }
    let (first, last) = (gpa / LOG_PAGE, gpa.saturating_add(len - 1) / LOG_PAGE);
    for page in first..=last.min(LOG_PAGES - 1) {
        bits[page as usize] = true;
    }
}

/// `Broken` once a model's queue broke.
pub(crate) fn check_broken(broken: &Option<VirtqError>) -> Result<(), VirtqError> {
    match broken {
        Some(_) => Err(VirtqError::Broken),
        None => Ok(()),
    }
}

/// A model's queue breaks on `e` unless it is a caller's mistake; returns `e`.
pub(crate) fn fail_with(broken: &mut Option<VirtqError>, e: VirtqError) -> VirtqError {
    if !matches!(e, VirtqError::Broken | VirtqError::TooManyUsed | VirtqError::BadRewind) {
        *broken = Some(e);
    }
    e
}

/// The chain a device handed out, in the model's terms, after checking (independently of any
/// model) that every segment is non-empty and inside one region's mapping.
pub(crate) fn handed_out(g: &FuzzGuest, c: &DescChain) -> ModelChain {
    let have = ModelChain {
        head: c.head(),
        readable: segs(c.readable()),
        writable: segs(c.writable()),
        readable_len: c.readable_len(),
        writable_len: c.writable_len(),
        descriptors: c.descriptors(),
    };
    for &(host, len) in have.readable.iter().chain(&have.writable) {
        assert!(len > 0, "empty segment");
        assert!(
            g.spans().iter().any(|s| s.holds_host(host, len as usize)),
            "segment {host:#x}+{len:#x} is outside guest memory"
        );
    }
    have
}

/// Checks what a `pop_burst` of up to `max` chains returned, `(n, r)`, against a model popped one
/// by one with `model_pop`: as many chains as the model hands out before it runs out, fails or
/// reaches `max`, and the model's error. Returns the model's chains, for the caller to compare
/// with the `n` chains taken (shared by the split and packed targets).
pub(crate) fn check_pop_burst<W>(
    step: usize,
    max: usize,
    n: usize,
    r: Result<(), VirtqError>,
    mut model_pop: impl FnMut() -> Result<Option<W>, VirtqError>,
) -> Vec<W> {
    let mut want = Vec::new();
    while want.len() < max {
        match model_pop() {
            Ok(Some(w)) => want.push(w),
            Ok(None) => {
                assert_eq!(r, Ok(()), "op {step}: pop_burst failed where the model ran out");
                break;
            }
            Err(w) => {
                assert_eq!(r, Err(w), "op {step}: pop_burst error");
                break;
            }
        }
    }
    assert_eq!(n, want.len(), "op {step}: pop_burst took {n} chains, the model {}", want.len());
    if n == max {
        assert_eq!(r, Ok(()), "op {step}: a full burst reported an error");
    }
    want
}

/// Panics unless the device's dirty log marks exactly the model's pages.
pub(crate) fn assert_log(log: &Option<Arc<DirtyLog>>, bits: &Option<Vec<bool>>, at: &str) {
    if let (Some(log), Some(bits)) = (log, bits) {
        for (page, &want) in bits.iter().enumerate() {
            let got = log.is_marked(page as u64 * LOG_PAGE);
            assert_eq!(got, want, "{at}: dirty log bit of page {page:#x} (gpa {:#x})", page as u64 * LOG_PAGE);
        }
    }
}

/// The harness: the guest side, the device under test, the model, and what is in flight.
struct Harness<'g> {
    g: &'g mut FuzzGuest,
    q: SplitQueue,
    m: Model,
    chain: DescChain,
    /// The driver's avail idx.
    avail_idx: u16,
    /// Chains taken and not yet pushed: (head, writable length).
    popped: Vec<(u16, u32)>,
    /// Marks taken: the device's and the model's position.
    marks: Vec<(AvailMark, u16)>,
    /// The dirty log, when logging.
    log: Option<Arc<DirtyLog>>,
    step: usize,
}

impl Harness<'_> {
    /// Checks the device against the model after one call.
    fn check_state(&self, what: &str) {
        let at = format!("op {} ({what})", self.step);
        self.g.assert_unchanged(&at);
        assert_eq!(self.q.broken(), self.m.broken, "{at}: broken state");
        assert_eq!(self.q.is_broken(), self.m.broken.is_some(), "{at}: is_broken");
        assert_eq!(self.q.last_avail_idx(), self.m.last_avail, "{at}: next avail index");
        assert_eq!(self.q.used_idx(), self.m.used_next, "{at}: next used index");
        assert_eq!(self.q.in_flight() as u32, self.m.in_flight, "{at}: chains in flight");
        assert_log(&self.log, &self.m.log, &at);
    }

    fn pop(&mut self) {
        let before = self.m.broken.is_some();
        let want = self.m.pop(self.g);
        let got = self.q.pop(&mut self.chain);
        match (&want, got) {
            (Ok(None), Ok(false)) => {}
            (Ok(Some(w)), Ok(true)) => {
                let have = handed_out(self.g, &self.chain);
                assert_eq!(&have, w, "op {}: the chain handed out differs from the descriptors", self.step);
                self.popped.push((have.head, have.writable_len));
            }
            (Err(w), Err(e)) => assert_eq!(e, *w, "op {}: pop error", self.step),
            (w, g) => panic!("op {}: pop returned {g:?}, the model says {w:?}", self.step),
        }
        if before {
            assert_eq!(want.as_ref().err(), Some(&VirtqError::Broken), "a broken queue handed out a chain");
        }
        self.check_state("pop");
    }

    /// `pop_burst` of up to `max` chains against the model's `pop`s one by one.
    fn pop_burst(&mut self, max: usize) {
        let mut chains: Vec<DescChain> = (0..max).map(|_| DescChain::new()).collect();
        let (n, r) = self.q.pop_burst(&mut chains);
        let want = check_pop_burst(self.step, max, n, r, || self.m.pop(self.g));
        for (k, (w, c)) in want.iter().zip(&chains).enumerate() {
            let have = handed_out(self.g, c);
            assert_eq!(&have, w, "op {}: chain {k} of the burst differs from the descriptors", self.step);
            self.popped.push((have.head, have.writable_len));
        }
        self.check_state("pop_burst");
    }

    fn push_used(&mut self, head: u16, len: u32) {
        let want = self.m.push_used(self.g, head, len);
        let got = self.q.push_used(head, len);
        assert_eq!(got, want, "op {}: push_used({head}, {len})", self.step);
        self.check_state("push_used");
    }

    fn publish(&mut self) {
        let want = self.m.publish_used(self.g);
        assert_eq!(self.q.publish_used(), want, "op {}: publish_used", self.step);
        self.check_state("publish_used");
    }

    fn needs_notify(&mut self) {
        let want = self.m.needs_notify(self.g);
        assert_eq!(self.q.needs_notify(), want, "op {}: needs_notify", self.step);
        self.check_state("needs_notify");
    }

    fn apply(&mut self, i: &mut Input<'_>) {
        let size = self.m.size;
        match i.u8() % op::OPS {
            op::WRITE_DESC => {
                let idx = i.u16() % size;
                let addr = Codec::buf(i);
                let len = Codec::len(i);
                let fl = i.u8();
                let flags = if fl & 0x80 != 0 { i.u16() } else { (fl & 7) as u16 };
                let nb = i.u8();
                let next = if nb & 0x80 != 0 { i.u16() } else { nb as u16 % size };
                let d = RawDescriptor { addr, len, flags, next };
                self.g.write(self.m.desc + 16 * idx as u64, &d.to_le_bytes());
            }
            op::WRITE_CHAIN => {
                let start = i.u16() % size;
                let n = 1 + i.below(8) as u16;
                let first_writable = i.below(n as usize + 1) as u16;
                let mut addr = Codec::buf(i);
                for j in 0..n {
                    let len = 1 + i.u8() as u32;
                    let idx = (start + j) % size;
                    let mut flags = if j >= first_writable { WRITE } else { 0 };
                    if j + 1 < n {
                        flags |= NEXT;
                    }
                    let d = RawDescriptor { addr, len, flags, next: (idx + 1) % size };
                    self.g.write(self.m.desc + 16 * idx as u64, &d.to_le_bytes());
                    addr = addr.wrapping_add(len as u64);
                }
                self.make_avail(start);
            }
            op::WRITE_INDIRECT => {
                let table = Codec::buf(i);
                let n = 1 + i.below(16) as u16;
                let first_writable = i.below(n as usize + 1) as u16;
                for j in 0..n {
                    let addr = Codec::buf(i);
                    let len = 1 + i.u8() as u32;
                    let mut flags = if j >= first_writable { WRITE } else { 0 };
                    if j + 1 < n {
                        flags |= NEXT;
                    }
                    flags ^= (i.u8() & 7) as u16;
                    let d = RawDescriptor { addr, len, flags, next: j + 1 };
                    self.g.write(table.wrapping_add(16 * j as u64), &d.to_le_bytes());
                }
                let idx = i.u16() % size;
                let lb = i.u8();
                let len = if lb & 0x80 != 0 { i.u32() } else { 16 * n as u32 };
                let d = RawDescriptor { addr: table, len, flags: INDIRECT, next: 0 };
                self.g.write(self.m.desc + 16 * idx as u64, &d.to_le_bytes());
                self.make_avail(idx);
            }
            op::MAKE_AVAIL => {
                let b = i.u8();
                let head = if b & 0x80 != 0 { i.u16() } else { b as u16 % size };
                self.make_avail(head);
            }
            op::SET_AVAIL_IDX => {
                let b = i.u8();
                self.avail_idx =
                    if b & 0x80 != 0 { i.u16() } else { self.avail_idx.wrapping_add((b as i8 as i16) as u16) };
                self.g.write_u16(self.m.avail + 2, self.avail_idx);
            }
            op::WRITE_RAW => {
                let base = match i.u8() % 4 {
                    0 => self.m.desc,
                    1 => self.m.avail,
                    2 => self.m.used,
                    _ => Codec::buf(i),
                };
                let at = base.wrapping_add(i.u8() as u64);
                let n = i.below(17);
                let bytes = i.bytes(n).to_vec();
                self.g.write(at, &bytes);
            }
            op::SET_EVENT_FIELD => {
                let v = i.u16();
                match i.u8() % 3 {
                    0 => self.g.write_u16(self.m.avail + 4 + 2 * size as u64, v), // used_event
                    1 => self.g.write_u16(self.m.avail, v),                       // avail flags
                    _ => self.g.write_u16(self.m.used, v),                        // used flags (hostile)
                }
            }
            op::POP => self.pop(),
            op::PUSH_USED => {
                let b = i.u8();
                let (head, len) = if b & 0x80 == 0 && !self.popped.is_empty() {
                    let (head, wlen) = self.popped.remove(b as usize % self.popped.len());
                    let len = if b & 0x40 != 0 { i.u32() } else { wlen };
                    (head, len)
                } else {
                    (i.u16(), i.u32())
                };
                self.push_used(head, len);
            }
            op::PUBLISH => self.publish(),
            op::NEEDS_NOTIFY => self.needs_notify(),
            op::SET_KICKS => {
                let on = i.bool();
                let want = self.m.set_kicks(self.g, on);
                assert_eq!(self.q.set_kicks(on), want, "op {}: set_kicks({on})", self.step);
                self.check_state("set_kicks");
            }
            op::AVAIL_COUNT => {
                let want = self.m.avail_count(self.g);
                assert_eq!(self.q.avail_count(), want, "op {}: avail_count", self.step);
                self.check_state("avail_count");
            }
            op::MARK => {
                if self.marks.len() == 4 {
                    self.marks.remove(0);
                }
                self.marks.push((self.q.mark(), self.m.last_avail));
                self.check_state("mark");
            }
            op::REWIND => {
                let k = i.u8() as usize;
                let (mark, pos) = match self.marks.get(k % self.marks.len().max(1)) {
                    Some(&m) => m,
                    None => (self.q.mark(), self.m.last_avail),
                };
                let want = self.m.rewind(pos);
                let got = self.q.rewind(mark);
                assert_eq!(got, want, "op {}: rewind", self.step);
                if let Ok(n) = got {
                    let keep = self.popped.len().saturating_sub(n as usize);
                    self.popped.truncate(keep);
                }
                self.check_state("rewind");
            }
            op::CHECK_MEMORY => {
                let want = self.m.check();
                assert_eq!(self.q.check_memory(), want, "op {}: check_memory", self.step);
                self.check_state("check_memory");
            }
            _ => {
                // A burst the way the datapath serves a queue: take what is there, return it all
                // with the writable length as "bytes written", publish once, ask about notifying.
                // The chains are taken with `pop_burst`, as the southbound path takes them.
                let max = 1 + i.below(8);
                self.pop_burst(max);
                for (head, wlen) in std::mem::take(&mut self.popped) {
                    self.push_used(head, wlen);
                }
                self.publish();
                self.needs_notify();
            }
        }
    }

    /// The guest makes `head` available: avail entry, then the avail idx.
    fn make_avail(&mut self, head: u16) {
        let slot = (self.avail_idx % self.m.size) as u64;
        self.g.write_u16(self.m.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.g.write_u16(self.m.avail + 2, self.avail_idx);
    }

    /// A broken queue does nothing more, whatever it is asked.
    fn assert_stays_broken(&mut self) {
        let b = Err(VirtqError::Broken);
        assert_eq!(self.q.pop(&mut self.chain), b.map(|()| false), "a broken queue handed out a chain");
        assert_eq!(self.q.avail_count(), b.map(|()| 0));
        assert_eq!(self.q.push_used(0, 0), b);
        assert_eq!(self.q.publish_used(), b.map(|()| 0));
        assert_eq!(self.q.needs_notify(), b.map(|()| false));
        assert_eq!(self.q.set_kicks(true), b);
        assert_eq!(self.q.set_kicks(false), b);
        assert_eq!(self.q.rewind(self.q.mark()), b.map(|()| 0));
        assert_eq!(self.q.check_memory(), b);
        self.check_state("calls on the broken queue");
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    with_guest(|g| {
        let sb = i.u8();
        let size = if sb & 0x80 != 0 { i.u16() } else { 1 << (sb % 8) };
        let fb = i.u8();
        let mut features = RingFeatures::empty();
        if fb & 1 != 0 {
            features |= RingFeatures::INDIRECT_DESC;
        }
        if fb & 2 != 0 {
            features |= RingFeatures::EVENT_IDX;
        }
        let desc_table = Codec::ring(&mut i, DEFAULT_DESC);
        let avail_ring = Codec::ring(&mut i, DEFAULT_AVAIL);
        let used_ring = Codec::ring(&mut i, DEFAULT_USED);
        let avail_base = i.u16();
        let used_idx = i.u16();
        g.write_u16(used_ring.wrapping_add(2), used_idx);
        // The driver starts with its avail idx where the device starts taking.
        g.write_u16(avail_ring.wrapping_add(2), avail_base);
        let cfg = QueueConfig { size, desc_table, avail_ring, used_ring, features, avail_base };
        let want = Model::setup(g, &cfg);
        let got = SplitQueue::new(g.memory().clone(), cfg);
        let (mut q, mut m) = match (got, want) {
            (Ok(q), Ok(m)) => (q, m),
            (Err(e), Err(w)) => {
                assert_eq!(e, w, "queue setup error");
                g.assert_unchanged(&"a refused queue setup");
                return;
            }
            (got, want) => panic!("queue setup {cfg:?}: got {got:?}, the model says {want:?}"),
        };
        let log = (fb & 4 != 0).then(|| Arc::new(DirtyLog::anonymous(LOG_PAGES).expect("dirty log")));
        if let Some(l) = &log {
            assert_eq!(l.pages(), LOG_PAGES);
            q.set_dirty_log(Some(l.clone())).expect("logging starts on a queue with nothing in flight");
            m.log = Some(vec![false; LOG_PAGES as usize]);
        }
        let mut h = Harness {
            g,
            q,
            m,
            log,
            chain: DescChain::new(),
            avail_idx: avail_base,
            popped: Vec::new(),
            marks: Vec::new(),
            step: 0,
        };
        h.check_state("setup");
        let trace = crate::trace();
        while !i.is_empty() && h.step < MAX_OPS {
            h.apply(&mut i);
            if trace {
                eprintln!(
                    "split_ring op {}: last_avail {} used {} in flight {} broken {:?}",
                    h.step, h.m.last_avail, h.m.used_next, h.m.in_flight, h.m.broken
                );
            }
            h.step += 1;
        }
        if h.m.broken.is_some() {
            h.assert_stays_broken();
        }
    });
}
