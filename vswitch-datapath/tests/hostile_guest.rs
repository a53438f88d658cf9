//! A hostile guest breaks only its own queue: each violation of the split-ring rules is a typed
//! error, the queue enters the broken state and stays there, not one byte of guest memory is
//! written (and guard pages around every region would fault on any access outside it), and a
//! healthy queue on the same memory keeps working.

use vswitch_datapath::testguest::{DriverQueue, TestGuest, UsedElem};
use vswitch_datapath::virtio::desc::{DescFlags, RawDescriptor};
use vswitch_datapath::virtio::MAX_QUEUE_SIZE;
use vswitch_datapath::{
    DescChain, MemoryError, QueueConfig, QueueConfigError, RingFeatures, RunEnd, SplitQueue, Take, VirtqError,
};

const SIZE: u16 = 8;
const NEXT: u16 = DescFlags::NEXT.bits();
const WRITE: u16 = DescFlags::WRITE.bits();
const INDIRECT: u16 = DescFlags::INDIRECT.bits();

struct Scene {
    g: TestGuest,
    victim: DriverQueue,
    healthy: DriverQueue,
}

impl Scene {
    fn new(features: RingFeatures) -> Self {
        let g = TestGuest::split();
        let victim = g.add_queue(SIZE, features);
        let healthy = g.add_queue(SIZE, RingFeatures::INDIRECT_DESC | RingFeatures::EVENT_IDX);
        Scene { g, victim, healthy }
    }

    /// A valid guest buffer of `len` bytes.
    fn buf(&self, len: u32) -> u64 {
        self.g.alloc(len as usize, 8)
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.victim.write_desc(&self.g, i, RawDescriptor { addr, len, flags, next });
    }

    /// An indirect table of `n` entries, made available through descriptor 0 (flags as given).
    fn indirect(&mut self, entries: &[RawDescriptor], len: u32, flags: u16) {
        let table = self.g.alloc(16 * entries.len().max(1), 16);
        for (i, d) in entries.iter().enumerate() {
            self.victim.write_indirect(&self.g, table, i as u16, *d);
        }
        self.desc(0, table, len, flags, 0);
        self.victim.make_available(&self.g, 0);
    }

    /// Takes a chain from the victim and checks the whole contract.
    fn assert_breaks_only_its_queue(self, expected: VirtqError) {
        let Scene { g, victim, mut healthy } = self;
        let mut vq = victim.device(&g);
        let mut hq = healthy.device(&g);
        let before = g.snapshot();
        let mut c = DescChain::new();

        // The prefetch hints read whatever the guest wrote, bad heads and addresses included:
        // they must neither fault, nor write, nor change what the next pop finds.
        vq.prefetch(2 * SIZE as usize);
        for ahead in 0..2 * SIZE {
            vq.prefetch_buffer(ahead);
        }
        assert!(g.snapshot() == before, "a prefetch hint wrote to guest memory");
        // The host->guest fast path takes only chains `pop` would take without an error: it
        // leaves this one to `pop`, reporting nothing and breaking nothing.
        let mut singles = Vec::new();
        let other = (0, RunEnd::Other);
        assert_eq!(
            vq.pop_rx_singles(&mut singles, 2 * SIZE as usize, |_| Take::Yes),
            other,
            "the fast path took a bad chain"
        );
        assert_eq!(vq.pop_tx_singles(&mut singles, 2 * SIZE as usize), other, "the fast path took a bad chain");
        assert!(!vq.is_broken() && vq.in_flight() == 0);
        assert_eq!(vq.pop(&mut c), Err(expected));
        assert!(vq.is_broken());
        assert_eq!(vq.broken(), Some(expected));
        // It stays broken, and does nothing more.
        assert_eq!(vq.pop(&mut c), Err(VirtqError::Broken));
        assert_eq!(vq.pop_rx_singles(&mut singles, 2 * SIZE as usize, |_| Take::Yes), other);
        assert_eq!(vq.avail_count(), Err(VirtqError::Broken));
        assert_eq!(vq.push_used(0, 0), Err(VirtqError::Broken));
        assert_eq!(vq.publish_used(), Err(VirtqError::Broken));
        assert_eq!(vq.needs_notify(), Err(VirtqError::Broken));
        assert_eq!(vq.set_kicks(true), Err(VirtqError::Broken));
        assert_eq!(vq.rewind(vq.mark()), Err(VirtqError::Broken));
        assert!(g.snapshot() == before, "the broken queue wrote to guest memory");

        // The healthy queue on the same memory works: direct and indirect TX, RX.
        let p: Vec<u8> = (0..777u32).map(|i| (i * 13) as u8).collect();
        for indirect in [false, true] {
            let head = healthy.post_tx(&g, &p, 3, indirect);
            assert!(hq.pop(&mut c).unwrap());
            assert_eq!(c.head(), head);
            let mut got = vec![0; p.len()];
            g.memory().gather(c.readable(), &mut got).unwrap();
            assert_eq!(got, p);
            hq.push_used(head, 0).unwrap();
            hq.publish_used().unwrap();
            assert_eq!(healthy.pop_used(&g), Some(UsedElem { id: head as u32, len: 0 }));
        }
        let head = healthy.post_rx(&g, 512, 2);
        assert!(hq.pop(&mut c).unwrap());
        g.memory().scatter(&p, c.writable()).unwrap();
        hq.push_used(head, p.len() as u32).unwrap();
        hq.publish_used().unwrap();
        assert_eq!(healthy.pop_used(&g).unwrap().len, 777);
        assert_eq!(healthy.read_written(&g, head, p.len()), p);
        assert!(!hq.is_broken());
        assert!(vq.is_broken());
    }
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor { addr, len, flags, next }
}

#[test]
fn chain_loop_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.desc(0, b, 64, NEXT, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::ChainTooLong { limit: SIZE as u32 });
}

#[test]
fn chain_longer_than_the_ring_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    // Every descriptor of the table in one cycle: a walk would never end.
    for i in 0..SIZE {
        s.desc(i, b, 64, NEXT, (i + 1) % SIZE);
    }
    s.victim.make_available(&s.g, 3);
    s.assert_breaks_only_its_queue(VirtqError::ChainTooLong { limit: SIZE as u32 });
}

#[test]
fn indirect_table_loop_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    let t = [raw(b, 64, NEXT, 1), raw(b, 64, NEXT, 2), raw(b, 64, NEXT, 3), raw(b, 64, NEXT, 1)];
    s.indirect(&t, 64, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::ChainTooLong { limit: 4 });
}

#[test]
fn descriptor_outside_guest_memory_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    s.desc(0, 0x1000, 64, 0, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(MemoryError::Unmapped { addr: 0x1000 }.into());
}

#[test]
fn buffer_running_past_the_last_region_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let end = {
        let r = s.g.memory().regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    let b = s.buf(64);
    // A good readable buffer first, so the chain fails half-way through.
    s.desc(0, b, 64, NEXT, 1);
    s.desc(1, end - 10, 100, WRITE, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(MemoryError::Unmapped { addr: end }.into());
}

/// The same with a chain of one descriptor (the pop fast path), readable and writable.
#[test]
fn single_buffer_running_past_the_last_region_breaks_only_its_queue() {
    for flags in [0, WRITE] {
        let mut s = Scene::new(RingFeatures::empty());
        let end = {
            let r = s.g.memory().regions().last().unwrap();
            r.guest_addr() + r.len() as u64
        };
        s.desc(0, end - 10, 100, flags, 0);
        s.victim.make_available(&s.g, 0);
        s.assert_breaks_only_its_queue(MemoryError::Unmapped { addr: end }.into());
    }
}

/// A single descriptor across the boundary of two adjacent regions is valid: one segment per
/// region, in order (the fast path hands it to the full walk).
#[test]
fn single_buffer_across_two_regions_becomes_two_segments() {
    let s = Scene::new(RingFeatures::empty());
    let b = s.g.boundary();
    s.desc(0, b - 10, 100, WRITE, 0);
    let Scene { g, mut victim, .. } = s;
    victim.make_available(&g, 0);
    let mut vq = victim.device(&g);
    let mut c = DescChain::new();
    assert_eq!(vq.pop(&mut c), Ok(true));
    assert_eq!(c.writable().iter().map(|s| s.len()).collect::<Vec<_>>(), vec![10, 90]);
    assert_eq!(c.writable_len(), 100);
    assert!(c.readable().is_empty());
}

#[test]
fn address_plus_length_overflow_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    s.desc(0, u64::MAX - 5, 100, WRITE, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::AddrOverflow { index: 0 });
}

#[test]
fn zero_length_descriptor_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.desc(0, b, 64, NEXT, 5);
    s.desc(5, b, 0, 0, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::ZeroLength { index: 5 });
}

#[test]
fn next_index_beyond_the_table_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.desc(0, b, 64, NEXT, SIZE);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::DescIndexOutOfRange { index: SIZE, size: SIZE as u32 });
}

#[test]
fn head_index_beyond_the_table_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    s.victim.make_available(&s.g, 0xffff);
    s.assert_breaks_only_its_queue(VirtqError::DescIndexOutOfRange { index: 0xffff, size: SIZE as u32 });
}

/// A head just past the table, where the memory holds what looks like a valid descriptor (a TX
/// buffer, or an RX buffer for the host->guest fast path): still refused (the fast paths must
/// check the head as the full walk does).
#[test]
fn head_index_past_a_table_followed_by_a_valid_descriptor_is_refused() {
    for flags in [0, WRITE] {
        head_past_the_table_case(flags);
    }
}

fn head_past_the_table_case(flags: u16) {
    let g = TestGuest::split();
    let desc = g.alloc(16 * 2 * SIZE as usize, 16); // room for twice the table the device is told
    let avail = g.alloc(6 + 2 * SIZE as usize, 2);
    let used = g.alloc(6 + 8 * SIZE as usize, 4);
    let buf = g.alloc(64, 8);
    let fake = RawDescriptor { addr: buf, len: 64, flags, next: 0 };
    g.write(desc + 16 * SIZE as u64, &fake.to_le_bytes());
    g.write(avail + 4, &SIZE.to_le_bytes()); // ring[0] = SIZE
    g.write(avail + 2, &1u16.to_le_bytes()); // idx = 1
    let cfg = QueueConfig {
        size: SIZE,
        desc_table: desc,
        avail_ring: avail,
        used_ring: used,
        features: RingFeatures::empty(),
        avail_base: 0,
    };
    let mut q = SplitQueue::new(g.memory().clone(), cfg).unwrap();
    let mut c = DescChain::new();
    let other = (0, RunEnd::Other);
    assert_eq!(q.pop_rx_singles(&mut Vec::new(), 1, |_| Take::Yes), other, "the fast path took a head past the table");
    assert_eq!(q.pop_tx_singles(&mut Vec::new(), 1), other, "the fast path took a head past the table");
    assert_eq!(q.pop(&mut c), Err(VirtqError::DescIndexOutOfRange { index: SIZE, size: SIZE as u32 }));
    assert!(q.is_broken());
}

#[test]
fn avail_idx_jumping_past_the_ring_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.desc(0, b, 64, 0, 0);
    s.victim.set_avail_idx(&s.g, SIZE + 1);
    s.assert_breaks_only_its_queue(VirtqError::AvailIdxJump { avail_idx: SIZE + 1, last_avail: 0 });
}

#[test]
fn readable_after_writable_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.desc(0, b, 64, NEXT, 1);
    s.desc(1, b, 64, WRITE | NEXT, 2);
    s.desc(2, b, 64, 0, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::ReadableAfterWritable { index: 2 });
}

#[test]
fn chain_over_4_gib_in_total_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    // 4097 descriptors of 1 MiB each, all the same (valid) memory: 4 GiB + 1 MiB.
    let b = s.buf(1 << 20);
    let n = 4097u16;
    let t: Vec<_> = (0..n).map(|i| raw(b, 1 << 20, if i + 1 < n { NEXT } else { 0 }, i + 1)).collect();
    s.indirect(&t, 16 * n as u32, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::ChainLenOverflow);
}

#[test]
fn nested_indirect_table_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let inner = s.g.alloc(16, 16);
    s.indirect(&[raw(inner, 16, INDIRECT, 0)], 16, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::NestedIndirect);
}

#[test]
fn indirect_table_of_odd_length_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    s.indirect(&[raw(b, 64, 0, 0), raw(b, 64, 0, 0)], 20, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::BadIndirectLen { len: 20 });
}

#[test]
fn empty_indirect_table_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    s.indirect(&[], 0, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::BadIndirectLen { len: 0 });
}

#[test]
fn oversized_indirect_table_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let len = 16 * (MAX_QUEUE_SIZE as u32 + 1);
    let table = s.g.alloc(len as usize, 16);
    s.desc(0, table, len, INDIRECT, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::BadIndirectLen { len });
}

#[test]
fn indirect_table_outside_guest_memory_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    s.desc(0, 0x4000, 64, INDIRECT, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(MemoryError::Unmapped { addr: 0x4000 }.into());
}

#[test]
fn indirect_without_the_feature_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.indirect(&[raw(b, 64, 0, 0)], 16, INDIRECT);
    s.assert_breaks_only_its_queue(VirtqError::IndirectNotNegotiated);
}

#[test]
fn indirect_with_next_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    s.indirect(&[raw(b, 64, 0, 0)], 16, INDIRECT | NEXT);
    s.assert_breaks_only_its_queue(VirtqError::IndirectWithNext);
}

#[test]
fn indirect_inside_a_direct_chain_breaks_only_its_queue() {
    let mut s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    let table = s.g.alloc(16, 16);
    s.victim.write_indirect(&s.g, table, 0, raw(b, 64, 0, 0));
    s.desc(0, b, 64, NEXT, 1);
    s.desc(1, table, 16, INDIRECT, 0);
    s.victim.make_available(&s.g, 0);
    s.assert_breaks_only_its_queue(VirtqError::IndirectNotHead { index: 1 });
}

#[test]
fn chains_taken_before_the_break_cannot_be_returned_after_it() {
    let s = Scene::new(RingFeatures::empty());
    let Scene { g, mut victim, .. } = s;
    let mut q = victim.device(&g);
    let good = victim.post_tx(&g, &[1; 64], 1, false);
    victim.make_available(&g, SIZE + 3); // bad head
    let mut c = DescChain::new();
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(c.head(), good);
    assert!(matches!(q.pop(&mut c), Err(VirtqError::DescIndexOutOfRange { .. })));
    let before = g.snapshot();
    assert_eq!(q.push_used(good, 0), Err(VirtqError::Broken));
    assert_eq!(q.in_flight(), 1, "the datapath still sees its chain in flight, to drain it");
    assert!(g.snapshot() == before);
}

#[test]
fn rings_outside_guest_memory_are_refused_at_setup() {
    let s = Scene::new(RingFeatures::empty());
    let mem = s.g.memory().clone();
    let good = s.victim.config();
    let end = {
        let r = mem.regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    let boundary = s.g.boundary();
    let bad = |c: QueueConfig| SplitQueue::new(mem.clone(), c).unwrap_err();
    assert_eq!(bad(QueueConfig { desc_table: 0x1000, ..good }), QueueConfigError::DescTable(0x1000));
    assert_eq!(
        bad(QueueConfig { desc_table: end - 64, ..good }),
        QueueConfigError::DescTable(end - 64),
        "runs past the end"
    );
    assert_eq!(
        bad(QueueConfig { desc_table: boundary - 64, ..good }),
        QueueConfigError::DescTable(boundary - 64),
        "spans two regions"
    );
    assert_eq!(
        bad(QueueConfig { desc_table: good.desc_table + 8, ..good }),
        QueueConfigError::DescTable(good.desc_table + 8),
        "misaligned"
    );
    assert_eq!(bad(QueueConfig { avail_ring: u64::MAX - 4, ..good }), QueueConfigError::AvailRing(u64::MAX - 4));
    assert_eq!(
        bad(QueueConfig { avail_ring: good.avail_ring + 1, ..good }),
        QueueConfigError::AvailRing(good.avail_ring + 1)
    );
    assert_eq!(bad(QueueConfig { used_ring: end - 8, ..good }), QueueConfigError::UsedRing(end - 8));
    assert_eq!(
        bad(QueueConfig { used_ring: good.used_ring + 2, ..good }),
        QueueConfigError::UsedRing(good.used_ring + 2)
    );
    for size in [0, 3, 12] {
        assert_eq!(bad(QueueConfig { size, ..good }), QueueConfigError::BadSize(size as u32));
    }
    assert!(SplitQueue::new(mem.clone(), QueueConfig { size: 65535, ..good }).is_err());
    // The same memory still serves a good queue.
    let Scene { g, mut healthy, .. } = s;
    let mut q = healthy.device(&g);
    let head = healthy.post_tx(&g, &[9; 100], 2, false);
    let mut c = DescChain::new();
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(c.head(), head);
}
