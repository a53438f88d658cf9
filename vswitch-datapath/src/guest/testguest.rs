//! An in-process test guest: the driver side of split and packed virtqueues (virtio 1.2 spec,
//! sections 2.7.13 "Supplying Buffers to The Device", 2.7.14 "Receiving Used Buffers From The
//! Device", 2.8.21 and 2.8.22, their packed counterparts).
//!
//! This module owns [`TestGuest`] (guest memory made of guarded anonymous regions, a bump
//! allocator over it) and [`DriverQueue`] (one queue's rings as the driver sees them, in either
//! format (a queue laid out with [`RingFeatures::PACKED`] is a packed ring): post TX chains and RX
//! buffers, direct or indirect, take used entries, set event-idx / event suppression fields, and
//! write hostile descriptors and indices on purpose). It uses the same [`GuestMemory`] as the device
//! side, so the device translates what the driver wrote. It must not be used by the datapath
//! itself: it is for tests and benches (feature `test-utils`), and it panics freely on misuse.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;

use crate::mem::{GuestMemory, GuestRegion, RegionHint};
use crate::virtio::desc::{DescFlags, RawDescriptor, DESC_SIZE};
use crate::virtio::packed::{
    desc_ring_len, encode_position, PackedQueue, RawPackedDesc, DESC_F_AVAIL, DESC_F_USED, EVENT_AREA_LEN,
    EVENT_FLAG_DISABLE, EVENT_FLAG_ENABLE, WRAP_BIT,
};
use crate::virtio::queue::Virtqueue;
use crate::virtio::split::{avail_ring_len, desc_table_len, used_ring_len, QueueConfig, SplitQueue};
use crate::virtio::RingFeatures;

/// Guest address of the first region made by [`TestGuest::new`] and [`TestGuest::split`].
pub const GUEST_BASE: u64 = 0x10_0000;

/// One buffer of a chain as the driver posts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (RX) rather than device-readable (TX).
    pub writable: bool,
}

/// One used element as the driver reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index of the returned chain.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

/// A guest: guarded memory regions and a bump allocator over them.
#[derive(Debug)]
pub struct TestGuest {
    mem: Arc<GuestMemory>,
    /// (start, end) of each region, sorted.
    ranges: Vec<(u64, u64)>,
    next: Cell<u64>,
}

impl TestGuest {
    /// One 4 MiB region at [`GUEST_BASE`].
    pub fn new() -> Self {
        Self::with_regions(&[(GUEST_BASE, 4 << 20)])
    }

    /// Two 2 MiB regions, contiguous in guest-physical space (the boundary is at
    /// [`TestGuest::boundary`]) but separate host mappings with guard pages around each: a buffer
    /// across the boundary becomes two host segments.
    pub fn split() -> Self {
        Self::with_regions(&[(GUEST_BASE, 2 << 20), (GUEST_BASE + (2 << 20), 2 << 20)])
    }

    /// Regions `(guest address, length)`, each a zeroed anonymous mapping with a guard page on
    /// each side.
    pub fn with_regions(regions: &[(u64, usize)]) -> Self {
        let rs =
            regions.iter().map(|&(gpa, len)| GuestRegion::anonymous_guarded(gpa, len).expect("map region")).collect();
        let mem = Arc::new(GuestMemory::new(rs).expect("guest memory"));
        let mut ranges: Vec<_> = regions.iter().map(|&(gpa, len)| (gpa, gpa + len as u64)).collect();
        ranges.sort();
        let next = Cell::new(ranges[0].0);
        TestGuest { mem, ranges, next }
    }

    /// A guest over memory mapped elsewhere (e.g. a file also shared with a vhost-user backend).
    /// The allocator starts at the lowest region.
    pub fn from_memory(mem: Arc<GuestMemory>) -> Self {
        let ranges: Vec<_> = mem.regions().iter().map(|r| (r.guest_addr(), r.guest_addr() + r.len() as u64)).collect();
        let next = Cell::new(ranges[0].0);
        TestGuest { mem, ranges, next }
    }

    /// The end of the first region (the start of the second one for [`TestGuest::split`]).
    pub fn boundary(&self) -> u64 {
        self.ranges[0].1
    }

    /// The guest memory, shared with the device side.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Allocates `len` bytes aligned to `align` inside one region. Panics when memory runs out.
    pub fn alloc(&self, len: usize, align: u64) -> u64 {
        let mut at = self.next.get();
        for &(start, end) in &self.ranges {
            if at < start {
                at = start;
            }
            let a = at.next_multiple_of(align);
            if a + len as u64 <= end {
                self.next.set(a + len as u64);
                return a;
            }
        }
        panic!("test guest out of memory");
    }

    /// Writes `bytes` at `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write(gpa, bytes).expect("guest write");
    }

    /// Reads `len` bytes at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(gpa, &mut v).expect("guest read");
        v
    }

    /// A copy of every byte of guest memory (to prove that something wrote nothing).
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        self.mem.regions().iter().map(|r| self.read(r.guest_addr(), r.len())).collect()
    }

    /// Lays out a queue of `size` entries (rings zeroed) and returns its driver side: a packed ring
    /// (descriptor ring, driver and device event areas) when `features` has
    /// [`RingFeatures::PACKED`], else a split one.
    pub fn add_queue(&self, size: u16, features: RingFeatures) -> DriverQueue {
        if features.contains(RingFeatures::PACKED) {
            let desc = self.alloc(desc_ring_len(size), 16);
            let driver = self.alloc(EVENT_AREA_LEN, 4);
            let device = self.alloc(EVENT_AREA_LEN, 4);
            self.write(desc, &vec![0; desc_ring_len(size)]);
            self.write(driver, &[0; EVENT_AREA_LEN]);
            self.write(device, &[0; EVENT_AREA_LEN]);
            return DriverQueue {
                cfg: QueueConfig {
                    size,
                    desc_table: desc,
                    avail_ring: driver,
                    used_ring: device,
                    features,
                    avail_base: WRAP_BIT,
                },
                free: (0..size).rev().collect(),
                posted: HashMap::new(),
                avail_idx: 0,
                last_used: 0,
                packed: Some(PackedDriver { next: 0, wrap: true, used: 0, used_wrap: true, free_slots: size }),
                in_order: VecDeque::new(),
                batch: VecDeque::new(),
            };
        }
        let desc = self.alloc(desc_table_len(size), 16);
        let avail = self.alloc(avail_ring_len(size), 2);
        let used = self.alloc(used_ring_len(size), 4);
        self.queue_at(size, features, desc, avail, used)
    }

    /// Lays out a queue of `size` entries whose used idx is the last field of a page and whose
    /// used elements start on the next one: a device write to either is on its own page (tests of
    /// the dirty log).
    pub fn add_queue_used_idx_apart(&self, size: u16, features: RingFeatures) -> DriverQueue {
        let desc = self.alloc(desc_table_len(size), 16);
        let avail = self.alloc(avail_ring_len(size), 2);
        let page = self.alloc(4096 + used_ring_len(size), 4096);
        self.queue_at(size, features, desc, avail, page + 4096 - 4)
    }

    fn queue_at(&self, size: u16, features: RingFeatures, desc: u64, avail: u64, used: u64) -> DriverQueue {
        self.write(desc, &vec![0; desc_table_len(size)]);
        self.write(avail, &vec![0; avail_ring_len(size)]);
        self.write(used, &vec![0; used_ring_len(size)]);
        DriverQueue {
            cfg: QueueConfig { size, desc_table: desc, avail_ring: avail, used_ring: used, features, avail_base: 0 },
            free: (0..size).rev().collect(),
            posted: HashMap::new(),
            avail_idx: 0,
            last_used: 0,
            packed: None,
            in_order: VecDeque::new(),
            batch: VecDeque::new(),
        }
    }
}

impl Default for TestGuest {
    fn default() -> Self {
        Self::new()
    }
}

/// The driver side of one split queue in a [`TestGuest`]. A clone is the same driver state, for
/// a guest whose memory was copied (a live migration's destination).
#[derive(Clone, Debug)]
pub struct DriverQueue {
    cfg: QueueConfig,
    /// Free descriptor indices (pop from the end).
    free: Vec<u16>,
    /// Per posted head: its descriptor indices and buffers.
    posted: HashMap<u16, (Vec<u16>, Vec<Buf>)>,
    avail_idx: u16,
    last_used: u16,
    /// A packed ring's driver positions (`None`: a split ring). For a packed ring `free` holds
    /// free buffer ids and `posted` maps an id to its ring slots and buffers.
    packed: Option<PackedDriver>,
    /// A packed ring with [`RingFeatures::IN_ORDER`]: the buffer ids in the order they were made
    /// available, for walking a batch the device returned as one used descriptor, and the
    /// buffers of such a batch not yet handed out by `pop_used`.
    in_order: VecDeque<u16>,
    batch: VecDeque<UsedElem>,
}

/// The driver's side of a packed ring (section 2.8.21): where it makes the next descriptor
/// available (index, wrap counter), where it expects the next used descriptor, and how many
/// slots it owns.
#[derive(Clone, Copy, Debug)]
struct PackedDriver {
    next: u16,
    wrap: bool,
    used: u16,
    used_wrap: bool,
    free_slots: u16,
}

/// The `AVAIL`/`USED` bits a driver with wrap counter `wrap` writes to make a descriptor available.
fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

impl DriverQueue {
    /// The device's view of this queue's configuration.
    pub fn config(&self) -> QueueConfig {
        self.cfg
    }

    /// Sets up the device side of this (split) queue on the guest's memory.
    pub fn device(&self, g: &TestGuest) -> SplitQueue {
        assert!(self.packed.is_none(), "a packed queue: use packed_device or virtqueue");
        SplitQueue::new(g.memory().clone(), self.cfg).expect("queue setup")
    }

    /// Sets up the device side of this (packed) queue on the guest's memory.
    pub fn packed_device(&self, g: &TestGuest) -> PackedQueue {
        assert!(self.packed.is_some(), "a split queue: use device or virtqueue");
        PackedQueue::new(g.memory().clone(), self.cfg).expect("queue setup")
    }

    /// Sets up the device side of this queue, whichever its format.
    pub fn virtqueue(&self, g: &TestGuest) -> Virtqueue {
        Virtqueue::new(g.memory().clone(), self.cfg).expect("queue setup")
    }

    /// Whether this is a packed ring.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Writes slot `slot` of a packed ring, raw (any values): the other fields first, then the
    /// flags with a release store, as a driver makes a descriptor available.
    pub fn write_packed_desc(&self, g: &TestGuest, slot: u16, d: RawPackedDesc) {
        let at = self.cfg.desc_table + (DESC_SIZE * slot as usize) as u64;
        g.write(at, &d.to_le_bytes()[..14]);
        g.memory().store_u16_release(at + 14, d.flags).expect("descriptor flags");
    }

    /// Reads slot `slot` of a packed ring (a used descriptor, say).
    pub fn read_packed_desc(&self, g: &TestGuest, slot: u16) -> RawPackedDesc {
        let at = self.cfg.desc_table + (DESC_SIZE * slot as usize) as u64;
        let flags = g.memory().load_u16_acquire(at + 14).expect("descriptor flags");
        let b: [u8; DESC_SIZE] = g.read(at, DESC_SIZE).try_into().expect("16 bytes");
        RawPackedDesc { flags, ..RawPackedDesc::from_le_bytes(b) }
    }

    /// The `AVAIL`/`USED` bits that make a descriptor available at the driver's next slot, and
    /// that slot (packed rings; for hand-written hostile descriptors).
    pub fn packed_next(&self) -> (u16, u16) {
        let p = self.packed.expect("a packed queue");
        (p.next, avail_bits(p.wrap))
    }

    /// Sets the driver event suppression area (packed rings): `flags` ENABLE, DISABLE or DESC,
    /// and the position `(idx, wrap)` for DESC. Then a full fence, as a driver does before
    /// re-checking the ring.
    pub fn set_driver_event(&self, g: &TestGuest, flags: u16, idx: u16, wrap: bool) {
        assert!(self.packed.is_some());
        g.write(self.cfg.avail_ring, &encode_position(idx, wrap).to_le_bytes());
        g.write(self.cfg.avail_ring + 2, &flags.to_le_bytes());
        fence(Ordering::SeqCst);
    }

    /// The device event suppression area's flags (packed rings: ENABLE or DISABLE kicks).
    pub fn device_event_flags(&self, g: &TestGuest) -> u16 {
        let v = g.read(self.cfg.used_ring + 2, 2);
        u16::from_le_bytes([v[0], v[1]])
    }

    fn avail(&self, off: u64) -> u64 {
        self.cfg.avail_ring + off
    }

    fn used(&self, off: u64) -> u64 {
        self.cfg.used_ring + off
    }

    /// Writes descriptor `index` of the queue's table, raw (any values, hostile ones included).
    pub fn write_desc(&self, g: &TestGuest, index: u16, d: RawDescriptor) {
        g.write(self.cfg.desc_table + (DESC_SIZE * index as usize) as u64, &d.to_le_bytes());
    }

    /// Writes entry `i` of an indirect table at `table`, raw.
    pub fn write_indirect(&self, g: &TestGuest, table: u64, i: u16, d: RawDescriptor) {
        g.write(table + (DESC_SIZE * i as usize) as u64, &d.to_le_bytes());
    }

    /// Puts `head` in the next avail slot and publishes it (release store of the avail idx).
    pub fn make_available(&mut self, g: &TestGuest, head: u16) {
        let slot = (self.avail_idx % self.cfg.size) as u64;
        g.write(self.avail(4 + 2 * slot), &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        g.memory().store_u16_release(self.avail(2), self.avail_idx).expect("avail idx");
    }

    /// Descriptors not in any posted chain (packed: ring slots the driver owns).
    pub fn free_descriptors(&self) -> usize {
        match self.packed {
            Some(p) => (p.free_slots as usize).min(self.free.len()),
            None => self.free.len(),
        }
    }

    /// Stores any avail idx (hostile guests), release.
    pub fn set_avail_idx(&mut self, g: &TestGuest, idx: u16) {
        self.avail_idx = idx;
        g.memory().store_u16_release(self.avail(2), idx).expect("avail idx");
    }

    /// Starts the queue at avail/used index `base` instead of 0 (to cross the 16-bit wrap). For a
    /// packed ring `base` is a position (index, wrap counter in bit 15) the device is told too.
    pub fn start_at(&mut self, g: &TestGuest, base: u16) {
        if let Some(p) = &mut self.packed {
            let (idx, wrap) = (base & !WRAP_BIT, base & WRAP_BIT != 0);
            (p.next, p.wrap, p.used, p.used_wrap) = (idx, wrap, idx, wrap);
            self.cfg.avail_base = base;
            return;
        }
        self.avail_idx = base;
        self.last_used = base;
        self.cfg.avail_base = base;
        g.memory().store_u16_release(self.avail(2), base).unwrap();
        g.memory().store_u16_release(self.used(2), base).unwrap();
    }

    fn take_descs(&mut self, n: usize) -> Vec<u16> {
        assert!(self.free.len() >= n, "driver queue out of descriptors");
        (0..n).map(|_| self.free.pop().unwrap()).collect()
    }

    /// Posts `bufs` as descriptors of a packed ring under a fresh buffer id (`indirect`: one
    /// descriptor pointing to a table at that address). Returns the id.
    fn add_packed(&mut self, g: &TestGuest, bufs: &[Buf], indirect: Option<u64>) -> u16 {
        let p = self.packed.expect("a packed queue");
        let n = if indirect.is_some() { 1 } else { bufs.len() as u16 };
        assert!(p.free_slots >= n && !self.free.is_empty(), "driver queue out of descriptors");
        let id = self.free.pop().unwrap();
        let size = self.cfg.size;
        let (mut slot, mut wrap) = (p.next, p.wrap);
        let mut first = None;
        for i in 0..n as usize {
            let d = match indirect {
                Some(table) => RawPackedDesc {
                    addr: table,
                    len: (DESC_SIZE * bufs.len()) as u32,
                    id,
                    flags: DescFlags::INDIRECT.bits(),
                },
                None => {
                    let b = bufs[i];
                    let mut flags = if b.writable { DescFlags::WRITE.bits() } else { 0 };
                    if i + 1 < n as usize {
                        flags |= DescFlags::NEXT.bits();
                    }
                    RawPackedDesc { addr: b.gpa, len: b.len, id, flags }
                }
            };
            let d = RawPackedDesc { flags: d.flags | avail_bits(wrap), ..d };
            if i == 0 {
                first = Some((slot, d)); // its flags go last
            } else {
                self.write_packed_desc(g, slot, d);
            }
            slot += 1;
            if slot == size {
                slot = 0;
                wrap = !wrap;
            }
        }
        let (s0, d0) = first.expect("at least one descriptor");
        self.write_packed_desc(g, s0, d0);
        let p = self.packed.as_mut().unwrap();
        (p.next, p.wrap) = (slot, wrap);
        p.free_slots -= n;
        self.posted.insert(id, ((0..n).collect(), bufs.to_vec()));
        if self.cfg.features.contains(RingFeatures::IN_ORDER) {
            self.in_order.push_back(id);
        }
        id
    }

    /// Posts `bufs` as one direct chain and makes it available. Returns its head (packed: its
    /// buffer id).
    pub fn add_chain(&mut self, g: &TestGuest, bufs: &[Buf]) -> u16 {
        if self.packed.is_some() {
            return self.add_packed(g, bufs, None);
        }
        let ids = self.take_descs(bufs.len());
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = DescFlags::empty();
            if b.writable {
                flags |= DescFlags::WRITE;
            }
            let next = ids.get(i + 1).copied();
            if next.is_some() {
                flags |= DescFlags::NEXT;
            }
            self.write_desc(
                g,
                ids[i],
                RawDescriptor { addr: b.gpa, len: b.len, flags: flags.bits(), next: next.unwrap_or(0) },
            );
        }
        let head = ids[0];
        self.posted.insert(head, (ids, bufs.to_vec()));
        self.make_available(g, head);
        head
    }

    /// Posts `bufs` through an indirect table (allocated in guest memory) and makes it available.
    /// Returns the head and the table's guest address.
    pub fn add_indirect(&mut self, g: &TestGuest, bufs: &[Buf]) -> (u16, u64) {
        let table = g.alloc(DESC_SIZE * bufs.len(), 16);
        if self.packed.is_some() {
            for (i, b) in bufs.iter().enumerate() {
                let flags = if b.writable { DescFlags::WRITE.bits() } else { 0 };
                let d = RawPackedDesc { addr: b.gpa, len: b.len, id: 0, flags };
                g.write(table + (DESC_SIZE * i) as u64, &d.to_le_bytes());
            }
            return (self.add_packed(g, bufs, Some(table)), table);
        }
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = DescFlags::empty();
            if b.writable {
                flags |= DescFlags::WRITE;
            }
            if i + 1 < bufs.len() {
                flags |= DescFlags::NEXT;
            }
            self.write_indirect(
                g,
                table,
                i as u16,
                RawDescriptor { addr: b.gpa, len: b.len, flags: flags.bits(), next: (i + 1) as u16 },
            );
        }
        let ids = self.take_descs(1);
        self.write_desc(
            g,
            ids[0],
            RawDescriptor {
                addr: table,
                len: (DESC_SIZE * bufs.len()) as u32,
                flags: DescFlags::INDIRECT.bits(),
                next: 0,
            },
        );
        let head = ids[0];
        self.posted.insert(head, (ids, bufs.to_vec()));
        self.make_available(g, head);
        (head, table)
    }

    /// Posts `payload` as a TX chain of `frags` readable buffers (direct, or through an indirect
    /// table), freshly allocated. Returns the head.
    pub fn post_tx(&mut self, g: &TestGuest, payload: &[u8], frags: usize, indirect: bool) -> u16 {
        assert!(frags >= 1 && payload.len() >= frags);
        let per = payload.len().div_ceil(frags);
        let bufs: Vec<Buf> = payload
            .chunks(per)
            .map(|c| {
                let gpa = g.alloc(c.len(), 8);
                g.write(gpa, c);
                Buf { gpa, len: c.len() as u32, writable: false }
            })
            .collect();
        if indirect {
            self.add_indirect(g, &bufs).0
        } else {
            self.add_chain(g, &bufs)
        }
    }

    /// Posts a TX chain over buffers at given addresses (e.g. across a region boundary), writing
    /// `payload` into them in order. Returns the head.
    pub fn post_tx_at(&mut self, g: &TestGuest, bufs: &[(u64, u32)], payload: &[u8]) -> u16 {
        let mut at = 0;
        let bufs: Vec<Buf> = bufs
            .iter()
            .map(|&(gpa, len)| {
                g.write(gpa, &payload[at..at + len as usize]);
                at += len as usize;
                Buf { gpa, len, writable: false }
            })
            .collect();
        assert_eq!(at, payload.len());
        self.add_chain(g, &bufs)
    }

    /// Posts an RX chain of `ndesc` writable buffers of `len` bytes each (zero-filled). Returns
    /// the head.
    pub fn post_rx(&mut self, g: &TestGuest, len: u32, ndesc: usize) -> u16 {
        let bufs: Vec<Buf> = (0..ndesc)
            .map(|_| {
                let gpa = g.alloc(len as usize, 8);
                Buf { gpa, len, writable: true }
            })
            .collect();
        self.add_chain(g, &bufs)
    }

    /// The buffers posted under `head`.
    pub fn buffers(&self, head: u16) -> &[Buf] {
        &self.posted[&head].1
    }

    /// Reads the first `len` bytes the device wrote into the writable buffers of `head`.
    pub fn read_written(&self, g: &TestGuest, head: u16, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for b in self.buffers(head).iter().filter(|b| b.writable) {
            let n = (len - out.len()).min(b.len as usize);
            out.extend(g.read(b.gpa, n));
        }
        assert_eq!(out.len(), len, "device claims more bytes than the buffers hold");
        out
    }

    /// The used idx as the device published it (acquire; split rings).
    pub fn used_idx(&self, g: &TestGuest) -> u16 {
        assert!(self.packed.is_none(), "a packed ring has no used idx");
        g.memory().load_u16_acquire(self.used(2)).unwrap()
    }

    /// Takes the next used element, if the device published one, and frees its descriptors (packed:
    /// the used descriptor at the driver's used position, section 2.8.22; the position then skips
    /// the slots of the chain posted under its id).
    pub fn pop_used(&mut self, g: &TestGuest) -> Option<UsedElem> {
        if let Some(p) = self.packed {
            if let Some(e) = self.batch.pop_front() {
                // Freed only now that it is handed out: its id may be posted again at once.
                self.retire_packed(e.id as u16);
                return Some(e);
            }
            let d = self.read_packed_desc(g, p.used);
            let bit = |f: u16| d.flags & f != 0;
            if bit(DESC_F_AVAIL) != p.used_wrap || bit(DESC_F_USED) != p.used_wrap {
                return None;
            }
            if !self.cfg.features.contains(RingFeatures::IN_ORDER) {
                self.retire_packed(d.id);
                return Some(UsedElem { id: d.id as u32, len: d.len });
            }
            // In order: the descriptor stands for every buffer made available up to its id
            // (a batch the device returned as one), each used in turn; the length is the last's.
            loop {
                let id = self.in_order.pop_front().expect("a used id the driver made available");
                let last = id == d.id;
                self.batch.push_back(UsedElem { id: id as u32, len: if last { d.len } else { 0 } });
                if last {
                    let e = self.batch.pop_front().expect("just pushed");
                    self.retire_packed(e.id as u16);
                    return Some(e);
                }
            }
        }
        if self.used_idx(g) == self.last_used {
            return None;
        }
        let slot = (self.last_used % self.cfg.size) as u64;
        let e = g.memory().read_array::<8>(self.used(4 + 8 * slot), &mut RegionHint::default()).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        if let Some((ids, _)) = self.posted.get(&(id as u16)) {
            self.free.extend(ids.iter().rev());
        }
        Some(UsedElem { id, len })
    }

    /// Frees packed buffer `id` and moves the used position past its slots.
    fn retire_packed(&mut self, id: u16) {
        let n = self.posted.get(&id).map(|(slots, _)| slots.len() as u16).expect("used id was posted");
        self.free.push(id);
        let size = self.cfg.size as u32;
        let p = self.packed.as_mut().expect("a packed ring");
        let to = p.used as u32 + n as u32;
        if to >= size {
            p.used = (to - size) as u16;
            p.used_wrap = !p.used_wrap;
        } else {
            p.used = to as u16;
        }
        p.free_slots += n;
    }

    /// Sets `used_event` (event idx: interrupt me when the used idx passes this), then a full
    /// fence, as a driver does before re-checking the used idx.
    pub fn set_used_event(&self, g: &TestGuest, v: u16) {
        let off = 4 + 2 * self.cfg.size as u64;
        g.write(self.avail(off), &v.to_le_bytes());
        fence(Ordering::SeqCst);
    }

    /// Sets or clears `VIRTQ_AVAIL_F_NO_INTERRUPT` (packed: the driver event flags DISABLE or
    /// ENABLE).
    pub fn set_no_interrupt(&self, g: &TestGuest, on: bool) {
        if self.packed.is_some() {
            let flags = if on { EVENT_FLAG_DISABLE } else { EVENT_FLAG_ENABLE };
            return self.set_driver_event(g, flags, 0, false);
        }
        let v = if on { VRING_AVAIL_F_NO_INTERRUPT as u16 } else { 0 };
        g.write(self.avail(0), &v.to_le_bytes());
        fence(Ordering::SeqCst);
    }

    /// The device's `avail_event` (event idx).
    pub fn avail_event(&self, g: &TestGuest) -> u16 {
        let v = g.read(self.used(4 + 8 * self.cfg.size as u64), 2);
        u16::from_le_bytes([v[0], v[1]])
    }

    /// The used ring's flags (`VIRTQ_USED_F_NO_NOTIFY`).
    pub fn used_flags(&self, g: &TestGuest) -> u16 {
        let v = g.read(self.used(0), 2);
        u16::from_le_bytes([v[0], v[1]])
    }
}
