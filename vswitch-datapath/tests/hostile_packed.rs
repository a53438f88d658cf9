//! A hostile guest breaks only its own packed queue: each violation of the packed-ring rules is a
//! typed error, the queue enters the broken state and stays there, not one byte of guest memory is
//! written (guard pages around every region would fault on any access outside it), and a healthy
//! packed queue on the same memory keeps working. The packed counterparts of `hostile_guest.rs`.

use vswitch_datapath::testguest::{DriverQueue, TestGuest, UsedElem};
use vswitch_datapath::virtio::desc::DescFlags;
use vswitch_datapath::virtio::packed::RawPackedDesc;
use vswitch_datapath::virtio::MAX_QUEUE_SIZE;
use vswitch_datapath::{DescChain, MemoryError, RingFeatures, RunEnd, Take, VirtqError};

const SIZE: u16 = 8;
const NEXT: u16 = DescFlags::NEXT.bits();
const WRITE: u16 = DescFlags::WRITE.bits();
const INDIRECT: u16 = DescFlags::INDIRECT.bits();
const ALL: RingFeatures = RingFeatures::PACKED.union(RingFeatures::INDIRECT_DESC).union(RingFeatures::EVENT_IDX);

struct Scene {
    g: TestGuest,
    victim: DriverQueue,
    healthy: DriverQueue,
}

impl Scene {
    fn new(features: RingFeatures) -> Self {
        let g = TestGuest::split();
        let victim = g.add_queue(SIZE, RingFeatures::PACKED | features);
        let healthy = g.add_queue(SIZE, ALL);
        Scene { g, victim, healthy }
    }

    fn buf(&self, len: u32) -> u64 {
        self.g.alloc(len as usize, 8)
    }

    /// Writes descriptors at slots 0, 1, ... as available in the first pass, the first one's
    /// flags last.
    fn ring(&self, descs: &[(u64, u32, u16)]) {
        let (_, avail) = self.victim.packed_next();
        for (i, &(addr, len, flags)) in descs.iter().enumerate().rev() {
            let d = RawPackedDesc { addr, len, id: 3, flags: flags | avail };
            self.victim.write_packed_desc(&self.g, i as u16, d);
        }
    }

    /// An indirect table of `entries` at a fresh address, made available through slot 0 with
    /// length `len` and `flags` (INDIRECT added).
    fn indirect(&self, entries: &[(u64, u32, u16)], len: u32, flags: u16) -> u64 {
        let table = self.g.alloc(16 * entries.len().max(1), 16);
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            let d = RawPackedDesc { addr, len, id: 0, flags };
            self.g.write(table + 16 * i as u64, &d.to_le_bytes());
        }
        self.ring(&[(table, len, INDIRECT | flags)]);
        table
    }

    fn assert_breaks_only_its_queue(self, expected: VirtqError) {
        let Scene { g, victim, mut healthy } = self;
        let mut vq = victim.virtqueue(&g);
        let mut hq = healthy.virtqueue(&g);
        assert!(vq.is_packed() && hq.is_packed());
        let before = g.snapshot();
        let mut c = DescChain::new();

        // The prefetch hints read whatever the guest wrote, bad heads and addresses included:
        // they must neither fault, nor write, nor change what the next pop finds.
        vq.prefetch(2 * SIZE as usize);
        for ahead in 0..2 * SIZE {
            vq.prefetch_buffer(ahead);
        }
        assert!(g.snapshot() == before, "a prefetch hint wrote to guest memory");
        // The fast paths take only chains `pop` would take without an error: they leave this one
        // to `pop`, reporting nothing, breaking nothing, writing nothing.
        let mut singles = Vec::new();
        let other = (0, RunEnd::Other);
        assert_eq!(
            vq.pop_rx_singles(&mut singles, 2 * SIZE as usize, |_| Take::Yes),
            other,
            "the RX run took a bad chain"
        );
        assert_eq!(vq.pop_tx_singles(&mut singles, 2 * SIZE as usize), other, "the TX run took a bad chain");
        assert!(!vq.is_broken() && g.snapshot() == before);
        assert_eq!(vq.pop(&mut c), Err(expected));
        assert!(vq.is_broken());
        assert_eq!(vq.broken(), Some(expected));
        assert_eq!(vq.pop(&mut c), Err(VirtqError::Broken));
        assert_eq!(vq.push_used(0, 0), Err(VirtqError::Broken));
        assert_eq!(vq.publish_used(), Err(VirtqError::Broken));
        assert_eq!(vq.needs_notify(), Err(VirtqError::Broken));
        assert_eq!(vq.set_kicks(true), Err(VirtqError::Broken));
        assert_eq!(vq.rewind(vq.mark()), Err(VirtqError::Broken));
        assert!(g.snapshot() == before, "the broken queue wrote to guest memory");

        let p: Vec<u8> = (0..777u32).map(|i| (i * 13) as u8).collect();
        for indirect in [false, true] {
            let id = healthy.post_tx(&g, &p, 3, indirect);
            assert!(hq.pop(&mut c).unwrap());
            assert_eq!(c.head(), id);
            let mut got = vec![0; p.len()];
            g.memory().gather(c.readable(), &mut got).unwrap();
            assert_eq!(got, p);
            hq.push_used(id, 0).unwrap();
            hq.publish_used().unwrap();
            assert_eq!(healthy.pop_used(&g), Some(UsedElem { id: id as u32, len: 0 }));
        }
        let id = healthy.post_rx(&g, 512, 2);
        assert!(hq.pop(&mut c).unwrap());
        g.memory().scatter(&p, c.writable()).unwrap();
        hq.push_used(id, p.len() as u32).unwrap();
        hq.publish_used().unwrap();
        assert_eq!(healthy.pop_used(&g).unwrap().len, 777);
        assert_eq!(healthy.read_written(&g, id, p.len()), p);
        assert!(!hq.is_broken());
        assert!(vq.is_broken());
    }
}

/// Every slot of the ring says NEXT: the chain would go round the ring for ever.
#[test]
fn chain_around_the_whole_ring_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.ring(&[(b, 64, NEXT); SIZE as usize]);
    s.assert_breaks_only_its_queue(VirtqError::ChainTooLong { limit: SIZE as u32 });
}

/// A chain that runs into slots whose chains the device still holds: the driver overwrote
/// descriptors it does not own.
#[test]
fn chain_running_into_descriptors_in_flight_breaks_only_its_queue() {
    let Scene { g, mut victim, mut healthy } = Scene::new(RingFeatures::empty());
    let mut vq = victim.packed_device(&g);
    let mut c = DescChain::new();
    // The device holds a chain of 5 slots (0..5); the driver then writes a chain of 4
    // descriptors at 5, 6, 7 and 0 (the last over a slot in flight).
    let p = vec![1u8; 500];
    let id = victim.post_tx(&g, &p, 5, false);
    assert!(vq.pop(&mut c).unwrap());
    assert_eq!(c.head(), id);
    let b = g.alloc(64, 8);
    let (slot, avail) = victim.packed_next();
    assert_eq!(slot, 5);
    // Slot 0's descriptor ends the chain (no NEXT): a device that read one slot too far would
    // take a 4-slot chain overlapping the one in flight instead of refusing it.
    for (k, s) in [6u16, 7, 0].into_iter().enumerate() {
        let flags = if k == 2 { victim.packed_next().1 ^ 0x8080 } else { NEXT | avail };
        victim.write_packed_desc(&g, s, RawPackedDesc { addr: b, len: 64, id: 1, flags });
    }
    victim.write_packed_desc(&g, 5, RawPackedDesc { addr: b, len: 64, id: 1, flags: NEXT | avail });
    let before = g.snapshot();
    assert_eq!(vq.pop(&mut c), Err(VirtqError::ChainTooLong { limit: 3 }));
    assert!(vq.is_broken());
    assert_eq!(vq.push_used(id, 0), Err(VirtqError::Broken), "not even the chain in flight comes back");
    assert!(g.snapshot() == before, "the broken queue wrote to guest memory");
    // A healthy queue on the same memory is untouched.
    let mut hq = healthy.packed_device(&g);
    let id = healthy.post_tx(&g, &p, 2, false);
    assert!(hq.pop(&mut c).unwrap());
    hq.push_used(id, 0).unwrap();
    hq.publish_used().unwrap();
    assert_eq!(healthy.pop_used(&g), Some(UsedElem { id: id as u32, len: 0 }));
}

#[test]
fn indirect_table_pointing_at_itself_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    // The table's one entry is an indirect descriptor back to the table: a loop through nesting.
    let table = s.g.alloc(16, 16);
    s.g.write(table, &RawPackedDesc { addr: table, len: 16, id: 0, flags: INDIRECT }.to_le_bytes());
    s.ring(&[(table, 16, INDIRECT)]);
    s.assert_breaks_only_its_queue(VirtqError::NestedIndirect);
}

#[test]
fn indirect_with_next_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    s.indirect(&[(b, 64, 0)], 16, NEXT);
    s.assert_breaks_only_its_queue(VirtqError::IndirectWithNext);
}

#[test]
fn indirect_after_a_direct_descriptor_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    let table = s.g.alloc(16, 16);
    s.g.write(table, &RawPackedDesc { addr: b, len: 64, id: 0, flags: 0 }.to_le_bytes());
    s.ring(&[(b, 64, NEXT), (table, 16, INDIRECT)]);
    s.assert_breaks_only_its_queue(VirtqError::IndirectNotHead { index: 1 });
}

#[test]
fn indirect_without_the_feature_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.indirect(&[(b, 64, 0)], 16, 0);
    s.assert_breaks_only_its_queue(VirtqError::IndirectNotNegotiated);
}

#[test]
fn indirect_tables_of_bad_length_break_only_their_queue() {
    for len in [0, 17, (MAX_QUEUE_SIZE as u32 + 1) * 16] {
        let s = Scene::new(RingFeatures::INDIRECT_DESC);
        let b = s.buf(64);
        s.indirect(&[(b, 64, 0)], len, 0);
        s.assert_breaks_only_its_queue(VirtqError::BadIndirectLen { len });
    }
}

#[test]
fn indirect_table_outside_guest_memory_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    s.ring(&[(0x10, 32, INDIRECT)]);
    s.assert_breaks_only_its_queue(VirtqError::Memory(MemoryError::Unmapped { addr: 0x10 }));
}

#[test]
fn buffer_outside_guest_memory_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let end = s.g.boundary() + (2 << 20);
    s.ring(&[(end, 64, 0)]);
    s.assert_breaks_only_its_queue(VirtqError::Memory(MemoryError::Unmapped { addr: end }));
}

#[test]
fn buffer_running_past_the_last_region_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let end = s.g.boundary() + (2 << 20);
    s.ring(&[(end - 32, 64, WRITE)]);
    s.assert_breaks_only_its_queue(VirtqError::Memory(MemoryError::Unmapped { addr: end }));
}

#[test]
fn buffer_outside_memory_inside_an_indirect_table_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    s.indirect(&[(b, 64, 0), (0x20, 64, 0)], 32, 0);
    s.assert_breaks_only_its_queue(VirtqError::Memory(MemoryError::Unmapped { addr: 0x20 }));
}

#[test]
fn address_plus_length_overflow_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    s.ring(&[(u64::MAX - 8, 64, 0)]);
    s.assert_breaks_only_its_queue(VirtqError::AddrOverflow { index: 0 });
}

#[test]
fn zero_length_descriptor_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.ring(&[(b, 64, NEXT), (b, 0, 0)]);
    s.assert_breaks_only_its_queue(VirtqError::ZeroLength { index: 1 });
}

#[test]
fn readable_after_writable_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::empty());
    let b = s.buf(64);
    s.ring(&[(b, 64, WRITE | NEXT), (b, 64, 0)]);
    s.assert_breaks_only_its_queue(VirtqError::ReadableAfterWritable { index: 1 });
}

#[test]
fn readable_after_writable_inside_an_indirect_table_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    let b = s.buf(64);
    s.indirect(&[(b, 64, WRITE), (b, 64, 0)], 32, 0);
    s.assert_breaks_only_its_queue(VirtqError::ReadableAfterWritable { index: 1 });
}

#[test]
fn chain_over_4_gib_in_total_breaks_only_its_queue() {
    let s = Scene::new(RingFeatures::INDIRECT_DESC);
    // 4097 table entries of 1 MiB each, all the same (valid) memory: 4 GiB + 1 MiB.
    let b = s.buf(1 << 20);
    let n = 4097usize;
    s.indirect(&vec![(b, 1 << 20, 0); n], 16 * n as u32, 0);
    s.assert_breaks_only_its_queue(VirtqError::ChainLenOverflow);
}
