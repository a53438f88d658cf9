//! Target `packed_ring`: the device side of a packed virtqueue ([`PackedQueue`]) driven by a
//! hostile guest whose every ring, event-area and descriptor byte comes from the fuzz input,
//! checked step by step against an independent model of the virtio 1.2 rules (section 2.8).
//!
//! The model keeps each ring position as one number modulo twice the ring size (the first pass,
//! wrap counter 1, below `size`; the second above), where the device under test keeps an index and
//! a wrap counter that it flips: the two agree only if both follow the spec.
//!
//! # Input layout
//!
//! A setup block, then operations until the input ends (at most [`MAX_OPS`]):
//!
//! - `size`: one byte; bit 7 set: a raw `u16` follows (any value, invalid ones included), else
//!   `1 + byte % 64`, so sizes that are not powers of two are common (packed rings allow them);
//!   `features`: one byte (bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bit 2 a dirty log, bit 3 a
//!   read-only (TX) queue: [`PackedQueue::set_read_only`]); the descriptor ring, driver and device
//!   event area addresses ([`Codec::ring`]); `avail_base: u16` (index in bits 0..15, wrap counter
//!   in bit 15, any value).
//! - Each operation is one byte (`% 16`) and its operands: guest writes (a raw descriptor, a
//!   chain made available at the driver's position with the right or a wrong wrap counter, an
//!   indirect table and its descriptor, raw bytes, the driver event area, a jump of the driver's
//!   position) and device calls (`pop`, `push_used`, `publish_used`, `needs_notify`, `set_kicks`,
//!   `mark`, `rewind`, `give_back`, `check_memory`, and a burst of pops and pushes like the
//!   datapath's).
//!
//! Guest memory is the three guarded regions of the `split_ring` target
//! ([`REGIONS`](crate::split_ring::REGIONS)).
//!
//! # Invariants (a failure panics: libFuzzer records a crash)
//!
//! - No panic in the switch's code.
//! - Setup accepts exactly the queues the model accepts (size 1 ..= 32768, base index below the
//!   size, the ring 16-aligned and the event areas 4-aligned, each inside one region), with the same
//!   error.
//! - Every device call returns what the model returns: each chain's buffer id, its readable and
//!   writable host segments (each inside one region's mapping, together exactly the buffers of the
//!   descriptors the guest wrote, split at region boundaries), lengths and descriptor count; the
//!   same typed error for every violation (chains longer than the free part of the ring, bad
//!   indirect tables, readable after writable, ...); the same positions and wrap counters, chains
//!   in flight and notification decisions.
//! - Guest memory after each call holds exactly what the guest wrote plus the stores the model
//!   predicts: a used descriptor's length and id at the used slot when pushed, its flags then too
//!   unless it is the first of a batch, whose flags come at `publish_used`; the device event
//!   area's flags on `set_kicks`. Nothing is written anywhere else, and taking a chain writes
//!   nothing.
//! - With a dirty log, exactly the pages the model says are marked after every call.
//! - A guest error breaks the queue: every later call returns `VirtqError::Broken`, hands out no
//!   chain and writes nothing. Caller mistakes (`TooManyUsed`, `BadRewind`) do not break it.

use std::collections::VecDeque;
use std::sync::Arc;

use vswitch_datapath::virtio::desc::{DescFlags, DESC_SIZE};
use vswitch_datapath::virtio::packed::{RawPackedDesc, DESC_F_AVAIL, DESC_F_USED};
use vswitch_datapath::virtio::MAX_QUEUE_SIZE;
use vswitch_datapath::{
    DescChain, DirtyLog, MemoryError, PackedQueue, QueueConfig, QueueConfigError, RingFeatures, VirtqError,
};

use crate::guest::FuzzGuest;
use crate::input::Input;
use crate::split_ring::{
    assert_log, check_broken, check_pop_burst, fail_with, handed_out, host_to_gpa, mark_log, place, with_guest, Codec, ModelChain,
    LOG_PAGES,
};

/// Default descriptor ring address (a 128-entry ring fits below the event areas).
pub const DEFAULT_DESC: u64 = 0x1_0000;
/// Default driver event suppression area.
pub const DEFAULT_DRIVER: u64 = 0x1_0800;
/// Default device event suppression area.
pub const DEFAULT_DEVICE: u64 = 0x1_0c00;
/// Most operations per input.
pub const MAX_OPS: usize = 256;

const NEXT: u16 = DescFlags::NEXT.bits();
const WRITE: u16 = DescFlags::WRITE.bits();
const INDIRECT: u16 = DescFlags::INDIRECT.bits();

/// Operation codes (the first byte of each operation, `% OPS`).
#[allow(missing_docs)]
pub mod op {
    pub const WRITE_DESC: u8 = 0;
    pub const WRITE_CHAIN: u8 = 1;
    pub const WRITE_INDIRECT: u8 = 2;
    pub const WRITE_RAW: u8 = 3;
    pub const SET_EVENT: u8 = 4;
    pub const MOVE_DRIVER: u8 = 5;
    pub const POP: u8 = 6;
    pub const PUSH_USED: u8 = 7;
    pub const PUBLISH: u8 = 8;
    pub const NEEDS_NOTIFY: u8 = 9;
    pub const SET_KICKS: u8 = 10;
    pub const MARK: u8 = 11;
    pub const REWIND: u8 = 12;
    pub const GIVE_BACK: u8 = 13;
    pub const CHECK_MEMORY: u8 = 14;
    pub const BURST: u8 = 15;
    pub const OPS: u8 = 16;
}

/// Guest-physical buffers `(gpa, len)` a chain lets the device write.
type GuestBufs = Vec<(u64, u32)>;

/// A chain the model holds: its id, the ring position it started at, its slots, and the guest
/// buffers it may write (for the dirty log).
#[derive(Debug, Clone)]
struct Held {
    start: u32,
    slots: u32,
    written: GuestBufs,
}

/// The model of the device side of a packed ring.
#[derive(Debug)]
struct Model {
    size: u32,
    features: RingFeatures,
    read_only: bool,
    desc: u64,
    driver: u64,
    device: u64,
    /// Positions modulo `2 * size`: below `size` the wrap counter is 1, above it is 0.
    avail: u32,
    used: u32,
    /// Slot and flags of the first used descriptor pushed since the last publish.
    pending: Option<(u32, u16)>,
    pushed: u16,
    published: u32,
    signalled: u32,
    held: VecDeque<Held>,
    taken_count: u16,
    broken: Option<VirtqError>,
    log: Option<Vec<bool>>,
}

impl Model {
    fn setup(g: &FuzzGuest, cfg: &QueueConfig) -> Result<Model, QueueConfigError> {
        let size = cfg.size;
        if size == 0 || size > MAX_QUEUE_SIZE {
            return Err(QueueConfigError::BadSize(size as u32));
        }
        let idx = (cfg.avail_base & 0x7fff) as u32;
        if idx >= size as u32 {
            return Err(QueueConfigError::BadBase(cfg.avail_base));
        }
        if !place(g, cfg.desc_table, DESC_SIZE * size as usize, 16) {
            return Err(QueueConfigError::DescTable(cfg.desc_table));
        }
        if !place(g, cfg.avail_ring, 4, 4) {
            return Err(QueueConfigError::AvailRing(cfg.avail_ring));
        }
        if !place(g, cfg.used_ring, 4, 4) {
            return Err(QueueConfigError::UsedRing(cfg.used_ring));
        }
        let size = size as u32;
        let start = if cfg.avail_base & 0x8000 != 0 { idx } else { idx + size };
        Ok(Model {
            size,
            features: cfg.features,
            read_only: false,
            desc: cfg.desc_table,
            driver: cfg.avail_ring,
            device: cfg.used_ring,
            avail: start,
            used: start,
            pending: None,
            pushed: 0,
            published: start,
            signalled: start,
            held: VecDeque::new(),
            taken_count: 0,
            broken: None,
            log: None,
        })
    }

    fn slot(&self, pos: u32) -> u32 {
        pos % self.size
    }

    fn wrap(&self, pos: u32) -> bool {
        pos < self.size
    }

    /// The vhost-user encoding of a position: index, wrap counter in bit 15.
    fn encode(&self, pos: u32) -> u16 {
        self.slot(pos) as u16 | if self.wrap(pos) { 0x8000 } else { 0 }
    }

    fn forward(&self, pos: u32, n: u32) -> u32 {
        (pos + n) % (2 * self.size)
    }

    fn slots_held(&self) -> u32 {
        self.held.iter().map(|h| h.slots).sum()
    }

    fn mark_pages(&mut self, gpa: u64, len: u64) {
        mark_log(&mut self.log, gpa, len);
    }

    fn check(&self) -> Result<(), VirtqError> {
        check_broken(&self.broken)
    }

    fn fail(&mut self, e: VirtqError) -> VirtqError {
        fail_with(&mut self.broken, e)
    }

    fn read_desc(&self, g: &FuzzGuest, slot: u32) -> RawPackedDesc {
        let b = g.read(self.desc + 16 * slot as u64, DESC_SIZE).expect("the ring is mapped");
        RawPackedDesc::from_le_bytes(b.try_into().expect("16 bytes"))
    }

    fn pop(&mut self, g: &FuzzGuest) -> Result<Option<(ModelChain, GuestBufs)>, VirtqError> {
        self.check()?;
        let held = self.slots_held();
        if held >= self.size {
            return Ok(None);
        }
        // Section 2.8.1: available when AVAIL equals the driver's wrap counter and USED does not.
        let flags = self.read_desc(g, self.slot(self.avail)).flags;
        let wrap = self.wrap(self.avail);
        if (flags & DESC_F_AVAIL != 0) != wrap || (flags & DESC_F_USED != 0) == wrap {
            return Ok(None);
        }
        match self.walk(g, self.size - held) {
            Ok((c, slots, written)) => {
                self.held.push_back(Held { start: self.avail, slots, written: written.clone() });
                self.avail = self.forward(self.avail, slots);
                self.taken_count = self.taken_count.wrapping_add(1);
                Ok(Some((c, written)))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Checks of one descriptor's buffer part, in the order the spec lists the driver's duties
    /// (sections 2.8.6, 2.8.7, 2.7.4.2); returns `(has_next, writable, indirect)`.
    fn desc_checks(&self, d: &RawPackedDesc, in_table: bool) -> Result<(bool, bool, bool), VirtqError> {
        let has_next = !in_table && d.flags & NEXT != 0;
        let write = !self.read_only && d.flags & WRITE != 0;
        let indirect = d.flags & INDIRECT != 0;
        if indirect {
            if in_table {
                return Err(VirtqError::NestedIndirect);
            }
            if !self.features.contains(RingFeatures::INDIRECT_DESC) {
                return Err(VirtqError::IndirectNotNegotiated);
            }
            if has_next {
                return Err(VirtqError::IndirectWithNext);
            }
            if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > MAX_QUEUE_SIZE as u32 {
                return Err(VirtqError::BadIndirectLen { len: d.len });
            }
        }
        Ok((has_next, write, indirect))
    }

    /// A buffer joins the chain.
    fn add(
        g: &FuzzGuest,
        c: &mut ModelChain,
        written: &mut Vec<(u64, u32)>,
        d: &RawPackedDesc,
        index: u16,
        write: bool,
    ) -> Result<(), VirtqError> {
        if d.len == 0 {
            return Err(VirtqError::ZeroLength { index });
        }
        if d.addr.checked_add(d.len as u64).is_none() {
            return Err(VirtqError::AddrOverflow { index });
        }
        c.descriptors += 1;
        let segs = g.host_segments(d.addr, d.len).map_err(|addr| VirtqError::Memory(MemoryError::Unmapped { addr }));
        if write {
            c.writable_len = c.writable_len.checked_add(d.len).ok_or(VirtqError::ChainLenOverflow)?;
            c.writable.extend(segs?);
            written.push((d.addr, d.len));
        } else {
            if c.writable_len != 0 {
                return Err(VirtqError::ReadableAfterWritable { index });
            }
            c.readable_len = c.readable_len.checked_add(d.len).ok_or(VirtqError::ChainLenOverflow)?;
            c.readable.extend(segs?);
        }
        if c.readable_len.checked_add(c.writable_len).is_none() {
            return Err(VirtqError::ChainLenOverflow);
        }
        Ok(())
    }

    /// Walks the chain at the avail position: consecutive ring slots linked by NEXT (never more
    /// than the `free` slots the device does not hold), or one indirect descriptor and its table.
    /// Returns the chain (its id is that of its last ring descriptor), its slots, and its guest
    /// writable buffers.
    fn walk(&self, g: &FuzzGuest, free: u32) -> Result<(ModelChain, u32, GuestBufs), VirtqError> {
        let mut c = ModelChain::default();
        let mut written = Vec::new();
        let mut slots = 0u32;
        loop {
            if slots == free {
                return Err(VirtqError::ChainTooLong { limit: free });
            }
            let slot = self.slot(self.forward(self.avail, slots));
            let d = self.read_desc(g, slot);
            slots += 1;
            let (has_next, write, indirect) = self.desc_checks(&d, false)?;
            if indirect {
                if d.addr.checked_add(d.len as u64).is_none() {
                    return Err(VirtqError::AddrOverflow { index: slot as u16 });
                }
                if slots != 1 {
                    return Err(VirtqError::IndirectNotHead { index: slot as u16 });
                }
                for k in 0..d.len / 16 {
                    let at = d.addr + 16 * k as u64;
                    let bytes =
                        g.read(at, DESC_SIZE).map_err(|addr| VirtqError::Memory(MemoryError::Unmapped { addr }))?;
                    let e = RawPackedDesc::from_le_bytes(bytes.try_into().expect("16 bytes"));
                    let (_, w, _) = self.desc_checks(&e, true)?;
                    Self::add(g, &mut c, &mut written, &e, k as u16, w)?;
                }
                c.head = d.id;
                return Ok((c, slots, written));
            }
            Self::add(g, &mut c, &mut written, &d, slot as u16, write)?;
            if !has_next {
                c.head = d.id;
                return Ok((c, slots, written));
            }
        }
    }

    fn push_used(&mut self, g: &mut FuzzGuest, id: u16, len: u32) -> Result<(), VirtqError> {
        self.check()?;
        let Some(h) = self.held.pop_front() else {
            return Err(VirtqError::TooManyUsed);
        };
        let slot = self.slot(self.used);
        let at = self.desc + 16 * slot as u64;
        g.expect_device_write(at + 8, &len.to_le_bytes());
        g.expect_device_write(at + 12, &id.to_le_bytes());
        // Section 2.8.6: AVAIL and USED both equal the device's used wrap counter; WRITE when the
        // device wrote into the buffers.
        let mut flags = if self.wrap(self.used) { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        if len != 0 {
            flags |= WRITE;
        }
        match self.pending {
            None => self.pending = Some((slot, flags)),
            Some(_) => g.expect_device_write(at + 14, &flags.to_le_bytes()),
        }
        if self.log.is_some() {
            let mut left = len;
            for &(gpa, n) in &h.written {
                if left == 0 {
                    break;
                }
                let take = n.min(left);
                self.mark_pages(gpa, take as u64);
                left -= take;
            }
            self.mark_pages(at + 8, 8);
        }
        self.used = self.forward(self.used, h.slots);
        self.pushed += 1;
        Ok(())
    }

    fn publish_used(&mut self, g: &mut FuzzGuest) -> Result<u16, VirtqError> {
        self.check()?;
        let Some((slot, flags)) = self.pending.take() else {
            return Ok(0);
        };
        g.expect_device_write(self.desc + 16 * slot as u64 + 14, &flags.to_le_bytes());
        self.published = self.used;
        Ok(std::mem::take(&mut self.pushed))
    }

    fn needs_notify(&mut self, g: &FuzzGuest) -> Result<bool, VirtqError> {
        self.check()?;
        let (new, old) = (self.published, self.signalled);
        self.signalled = new;
        if new == old {
            return Ok(false);
        }
        let desc = g.read_u16(self.driver);
        let flags = g.read_u16(self.driver + 2);
        Ok(match flags {
            1 => false,
            2 if self.features.contains(RingFeatures::EVENT_IDX) => {
                // Section 2.8.10: notify once the used position passed the driver's event
                // position: it is one of the positions the device moved over since the last time.
                let off = (desc & 0x7fff) as u32 % self.size;
                let event = if desc & 0x8000 != 0 { off } else { off + self.size };
                let mut p = old;
                let mut hit = false;
                while p != new {
                    hit |= p == event;
                    p = self.forward(p, 1);
                }
                hit
            }
            _ => true,
        })
    }

    fn set_kicks(&mut self, g: &mut FuzzGuest, enabled: bool) -> Result<(), VirtqError> {
        self.check()?;
        let v: u16 = if enabled { 0 } else { 1 };
        g.expect_device_write(self.device + 2, &v.to_le_bytes());
        self.mark_pages(self.device + 2, 2);
        Ok(())
    }

    fn give_back(&mut self, n: u16) -> Result<u16, VirtqError> {
        self.check()?;
        if n as usize > self.held.len() {
            return Err(VirtqError::BadRewind);
        }
        for _ in 0..n {
            let h = self.held.pop_back().expect("counted");
            self.avail = h.start;
            self.taken_count = self.taken_count.wrapping_sub(1);
        }
        Ok(n)
    }
}

/// The harness: the driver side, the device under test, the model.
struct Harness<'g> {
    g: &'g mut FuzzGuest,
    q: PackedQueue,
    m: Model,
    chain: DescChain,
    /// The driver's next position (modulo `2 * size`, as the model keeps them).
    driver: u32,
    /// Ids of chains taken and not yet pushed, oldest first, with their writable length.
    popped: VecDeque<(u16, u32)>,
    /// Marks taken: the device's and the model's take count.
    marks: Vec<(vswitch_datapath::AvailMark, u16)>,
    log: Option<Arc<DirtyLog>>,
    step: usize,
}

impl Harness<'_> {
    fn check_state(&self, what: &str) {
        let at = format!("op {} ({what})", self.step);
        self.g.assert_unchanged(&at);
        assert_eq!(self.q.broken(), self.m.broken, "{at}: broken state");
        assert_eq!(self.q.is_broken(), self.m.broken.is_some(), "{at}: is_broken");
        assert_eq!(self.q.last_avail_idx(), self.m.encode(self.m.avail), "{at}: avail position and wrap counter");
        assert_eq!(self.q.used_idx(), self.m.encode(self.m.used), "{at}: used position and wrap counter");
        assert_eq!(self.q.in_flight() as usize, self.m.held.len(), "{at}: chains in flight");
        assert_log(&self.log, &self.m.log, &at);
    }

    /// The driver's flags for a descriptor it makes available at position `pos`: AVAIL equal to
    /// its wrap counter, USED the inverse (section 2.8.1); `wrong` flips the pair (a hostile or
    /// confused driver).
    fn avail_flags(&self, pos: u32, wrong: bool) -> u16 {
        if self.m.wrap(pos) != wrong {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    fn write_desc(&mut self, slot: u32, d: RawPackedDesc) {
        self.g.write(self.m.desc + 16 * slot as u64, &d.to_le_bytes());
    }

    fn pop(&mut self) {
        let before = self.m.broken.is_some();
        let want = self.m.pop(self.g);
        let got = self.q.pop(&mut self.chain);
        match (&want, got) {
            (Ok(None), Ok(false)) => {}
            (Ok(Some((w, written))), Ok(true)) => {
                let have = handed_out(self.g, &self.chain);
                assert_eq!(&have, w, "op {}: the chain handed out differs from the descriptors", self.step);
                // The writable segments are the model's guest buffers, translated.
                let from_gpa: u64 = written.iter().map(|&(_, n)| n as u64).sum();
                assert_eq!(from_gpa, have.writable_len as u64);
                if let Some(&(h, _)) = have.writable.first() {
                    assert_eq!(host_to_gpa(self.g, h), written[0].0);
                }
                self.popped.push_back((have.head, have.writable_len));
            }
            (Err(w), Err(e)) => assert_eq!(e, *w, "op {}: pop error", self.step),
            (w, g) => panic!("op {}: pop returned {g:?}, the model says {w:?}", self.step),
        }
        if before {
            assert!(matches!(want, Err(VirtqError::Broken)), "a broken queue handed out a chain");
        }
        self.check_state("pop");
    }

    /// `pop_burst` of up to `max` chains against the model's `pop`s one by one.
    fn pop_burst(&mut self, max: usize) {
        let mut chains: Vec<DescChain> = (0..max).map(|_| DescChain::new()).collect();
        let (n, r) = self.q.pop_burst(&mut chains);
        let want = check_pop_burst(self.step, max, n, r, || self.m.pop(self.g));
        for (k, ((w, written), c)) in want.iter().zip(&chains).enumerate() {
            let have = handed_out(self.g, c);
            assert_eq!(&have, w, "op {}: chain {k} of the burst differs from the descriptors", self.step);
            let from_gpa: u64 = written.iter().map(|&(_, n)| n as u64).sum();
            assert_eq!(from_gpa, have.writable_len as u64);
            self.popped.push_back((have.head, have.writable_len));
        }
        self.check_state("pop_burst");
    }

    /// Returns whether the push was accepted.
    fn push_used(&mut self, id: u16, len: u32) -> bool {
        let want = self.m.push_used(self.g, id, len);
        let got = self.q.push_used(id, len);
        assert_eq!(got, want, "op {}: push_used({id}, {len})", self.step);
        self.check_state("push_used");
        got.is_ok()
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
                let slot = i.u16() as u32 % size;
                let addr = Codec::buf(i);
                let len = Codec::len(i);
                let id = i.u16();
                let fl = i.u8();
                let flags =
                    if fl & 0x80 != 0 { i.u16() } else { (fl as u16 & 7) | self.avail_flags(self.driver, fl & 8 != 0) };
                self.write_desc(slot, RawPackedDesc { addr, len, id, flags });
            }
            op::WRITE_CHAIN => {
                // A chain at the driver's position: every descriptor's flags carry the driver's
                // wrap counter at its own slot (a chain may cross the end of the ring), the head's
                // written last as a driver must.
                let n = 1 + i.below(8) as u32;
                let first_writable = i.below(n as usize + 1) as u32;
                let id = i.u16();
                let wrong = i.u8() & 0x0f == 0;
                let mut addr = Codec::buf(i);
                let start = self.driver;
                let mut descs = Vec::with_capacity(n as usize);
                for j in 0..n {
                    let len = 1 + i.u8() as u32;
                    let pos = (start + j) % (2 * size);
                    let mut flags = self.avail_flags(pos, wrong);
                    if j >= first_writable {
                        flags |= WRITE;
                    }
                    if j + 1 < n {
                        flags |= NEXT;
                    }
                    descs.push((pos % size, RawPackedDesc { addr, len, id, flags }));
                    addr = addr.wrapping_add(len as u64);
                }
                for &(slot, d) in descs.iter().rev() {
                    self.write_desc(slot, d);
                }
                self.driver = (start + n) % (2 * size);
            }
            op::WRITE_INDIRECT => {
                let table = Codec::buf(i);
                let n = 1 + i.below(16) as u32;
                let first_writable = i.below(n as usize + 1) as u32;
                for j in 0..n {
                    let addr = Codec::buf(i);
                    let len = 1 + i.u8() as u32;
                    let mut flags = if j >= first_writable { WRITE } else { 0 };
                    flags ^= (i.u8() & 7) as u16;
                    let d = RawPackedDesc { addr, len, id: 0, flags };
                    self.g.write(table.wrapping_add(16 * j as u64), &d.to_le_bytes());
                }
                let lb = i.u8();
                let len = if lb & 0x80 != 0 { i.u32() } else { 16 * n };
                let id = i.u16();
                let flags = INDIRECT | self.avail_flags(self.driver, lb & 0x40 != 0) | (lb as u16 & 0x20) >> 5;
                let slot = self.driver % size;
                self.write_desc(slot, RawPackedDesc { addr: table, len, id, flags });
                self.driver = (self.driver + 1) % (2 * size);
            }
            op::WRITE_RAW => {
                let base = match i.u8() % 4 {
                    0 => self.m.desc,
                    1 => self.m.driver,
                    2 => self.m.device,
                    _ => Codec::buf(i),
                };
                let at = base.wrapping_add(i.u8() as u64);
                let n = i.below(17);
                let bytes = i.bytes(n).to_vec();
                self.g.write(at, &bytes);
            }
            op::SET_EVENT => {
                let v = i.u16();
                match i.u8() % 3 {
                    0 => self.g.write_u16(self.m.driver, v),     // event desc (offset, wrap)
                    1 => self.g.write_u16(self.m.driver + 2, v), // event flags
                    _ => self.g.write_u16(self.m.device, v),     // device area (hostile)
                }
            }
            op::MOVE_DRIVER => {
                let b = i.u8();
                self.driver = if b & 0x80 != 0 {
                    i.u16() as u32 % (2 * size)
                } else {
                    (self.driver + (b as u32 & 0x7f)) % (2 * size)
                };
            }
            op::POP => self.pop(),
            op::PUSH_USED => {
                // Mostly the oldest chain's id and writable length; sometimes any id or length
                // (the device pushes the oldest chain's slots whatever the caller says).
                let b = i.u8();
                let (id, len) = match self.popped.front() {
                    Some(&(id, wlen)) if b & 0x80 == 0 => (id, if b & 0x40 != 0 { i.u32() } else { wlen }),
                    _ => (i.u16(), i.u32()),
                };
                if self.push_used(id, len) {
                    self.popped.pop_front();
                }
            }
            op::PUBLISH => self.publish(),
            op::NEEDS_NOTIFY => self.needs_notify(),
            op::SET_KICKS => {
                let on = i.bool();
                let want = self.m.set_kicks(self.g, on);
                assert_eq!(self.q.set_kicks(on), want, "op {}: set_kicks({on})", self.step);
                self.check_state("set_kicks");
            }
            op::MARK => {
                if self.marks.len() == 4 {
                    self.marks.remove(0);
                }
                self.marks.push((self.q.mark(), self.m.taken_count));
                self.check_state("mark");
            }
            op::REWIND => {
                let k = i.u8() as usize;
                let (mark, count) = match self.marks.get(k % self.marks.len().max(1)) {
                    Some(&m) => m,
                    None => (self.q.mark(), self.m.taken_count),
                };
                let want = self.m.give_back(self.m.taken_count.wrapping_sub(count));
                let got = self.q.rewind(mark);
                assert_eq!(got, want, "op {}: rewind", self.step);
                if let Ok(n) = got {
                    for _ in 0..n {
                        self.popped.pop_back();
                    }
                }
                self.check_state("rewind");
            }
            op::GIVE_BACK => {
                let n = i.u8() as u16 % 10;
                let want = self.m.give_back(n).map(|_| ());
                let got = self.q.give_back(n);
                assert_eq!(got, want, "op {}: give_back({n})", self.step);
                if got.is_ok() {
                    for _ in 0..n {
                        self.popped.pop_back();
                    }
                }
                self.check_state("give_back");
            }
            op::CHECK_MEMORY => {
                let want = self.m.check();
                assert_eq!(self.q.check_memory(), want, "op {}: check_memory", self.step);
                self.check_state("check_memory");
            }
            _ => {
                // A burst as the datapath serves a queue: take what is there, return it all in
                // order with the writable length, publish once, ask about notifying.
                // The chains are taken with `pop_burst`, as the southbound path takes them.
                let max = 1 + i.below(8);
                self.pop_burst(max);
                while let Some((id, wlen)) = self.popped.pop_front() {
                    if !self.push_used(id, wlen) {
                        break;
                    }
                }
                self.publish();
                self.needs_notify();
            }
        }
    }

    /// A broken queue does nothing more, whatever it is asked.
    fn assert_stays_broken(&mut self) {
        let b = Err(VirtqError::Broken);
        assert_eq!(self.q.pop(&mut self.chain), b.map(|()| false), "a broken queue handed out a chain");
        assert_eq!(self.q.push_used(0, 0), b);
        assert_eq!(self.q.publish_used(), b.map(|()| 0));
        assert_eq!(self.q.needs_notify(), b.map(|()| false));
        assert_eq!(self.q.set_kicks(true), b);
        assert_eq!(self.q.rewind(self.q.mark()), b.map(|()| 0));
        assert_eq!(self.q.give_back(0), b);
        assert_eq!(self.q.check_memory(), b);
        self.check_state("calls on the broken queue");
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    with_guest(|g| {
        let sb = i.u8();
        let size = if sb & 0x80 != 0 { i.u16() } else { 1 + (sb % 64) as u16 };
        let fb = i.u8();
        let mut features = RingFeatures::PACKED;
        if fb & 1 != 0 {
            features |= RingFeatures::INDIRECT_DESC;
        }
        if fb & 2 != 0 {
            features |= RingFeatures::EVENT_IDX;
        }
        let desc_table = Codec::ring(&mut i, DEFAULT_DESC);
        let avail_ring = Codec::ring(&mut i, DEFAULT_DRIVER);
        let used_ring = Codec::ring(&mut i, DEFAULT_DEVICE);
        let avail_base = i.u16();
        let cfg = QueueConfig { size, desc_table, avail_ring, used_ring, features, avail_base };
        let want = Model::setup(g, &cfg);
        let got = PackedQueue::new(g.memory().clone(), cfg);
        let (mut q, mut m) = match (got, want) {
            (Ok(q), Ok(m)) => (q, m),
            (Err(e), Err(w)) => {
                assert_eq!(e, w, "queue setup error");
                g.assert_unchanged(&"a refused queue setup");
                return;
            }
            (got, want) => panic!("queue setup {cfg:?}: got {got:?}, the model says {want:?}"),
        };
        if fb & 8 != 0 {
            q.set_read_only(true);
            m.read_only = true;
        }
        let log = (fb & 4 != 0).then(|| Arc::new(DirtyLog::anonymous(LOG_PAGES).expect("dirty log")));
        if let Some(l) = &log {
            q.set_dirty_log(Some(l.clone())).expect("logging starts on a queue with nothing in flight");
            m.log = Some(vec![false; LOG_PAGES as usize]);
        }
        let driver = m.avail;
        let mut h = Harness {
            g,
            q,
            m,
            log,
            chain: DescChain::new(),
            driver,
            popped: VecDeque::new(),
            marks: Vec::new(),
            step: 0,
        };
        h.check_state("setup");
        let trace = crate::trace();
        while !i.is_empty() && h.step < MAX_OPS {
            h.apply(&mut i);
            if trace {
                eprintln!(
                    "packed_ring op {}: avail {:#x} used {:#x} in flight {} broken {:?}",
                    h.step,
                    h.m.encode(h.m.avail),
                    h.m.encode(h.m.used),
                    h.m.held.len(),
                    h.m.broken
                );
            }
            h.step += 1;
        }
        if h.m.broken.is_some() {
            h.assert_stays_broken();
        }
    });
}
