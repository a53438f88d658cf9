//! The device side of packed virtqueues against the in-process test guest: chains (direct, chained
//! with NEXT, indirect) become the right segments, used descriptors are written in order at the
//! slot of each chain's first descriptor, stay invisible until published, and cross the end of the
//! ring with both wrap counters; notifications follow the driver's event suppression area and kicks
//! are switched through the device's.

use vswitch_datapath::testguest::{Buf, TestGuest, UsedElem};
use vswitch_datapath::virtio::packed::{
    DESC_F_AVAIL, DESC_F_USED, EVENT_FLAG_DESC, EVENT_FLAG_DISABLE, EVENT_FLAG_ENABLE, WRAP_BIT,
};
use vswitch_datapath::{DescChain, HostSeg, PackedQueue, QueueConfigError, RingFeatures, VirtqError};

const PACKED: RingFeatures = RingFeatures::PACKED;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn gather(g: &TestGuest, segs: &[HostSeg], len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    g.memory().gather(segs, &mut v).unwrap();
    v
}

#[test]
fn chained_tx_descriptors_are_walked_into_their_segments() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(256, PACKED | RingFeatures::INDIRECT_DESC);
    let mut q = dq.packed_device(&g);
    let p = payload(1500);
    let id = dq.post_tx(&g, &p, 3, false);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), id, "the chain's buffer id");
    assert_eq!(c.readable().len(), 3);
    assert_eq!(c.descriptors(), 3);
    assert_eq!(c.readable_len(), 1500);
    assert!(c.writable().is_empty());
    assert_eq!(gather(&g, c.readable(), 1500), p);
    assert_eq!(q.pop(&mut c), Ok(false));
    assert_eq!(q.in_flight(), 1);
    assert_eq!(q.last_avail_idx(), WRAP_BIT | 3, "three slots taken, first pass");
}

#[test]
fn indirect_tx_table_is_walked_into_its_segments() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(64, PACKED | RingFeatures::INDIRECT_DESC);
    let mut q = dq.packed_device(&g);
    let p = payload(9000);
    let id = dq.post_tx(&g, &p, 5, true);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), id);
    assert_eq!(c.readable().len(), 5);
    assert_eq!(c.readable_len(), 9000);
    assert_eq!(gather(&g, c.readable(), 9000), p);
    assert_eq!(q.last_avail_idx(), WRAP_BIT | 1, "an indirect chain occupies one slot");
}

#[test]
fn rx_chain_receives_bytes_that_the_guest_reads_back() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(64, PACKED);
    let mut q = dq.packed_device(&g);
    let id = dq.post_rx(&g, 256, 3);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert!(c.readable().is_empty());
    assert_eq!(c.writable_len(), 768);
    let data = payload(600);
    g.memory().scatter(&data, c.writable()).unwrap();
    q.push_used(c.head(), 600).unwrap();
    assert_eq!(q.publish_used(), Ok(1));
    // One used descriptor, at the slot of the chain's first descriptor, with the device's wrap
    // counter in both bits and WRITE (its length is meaningful).
    let used = dq.read_packed_desc(&g, 0);
    assert_eq!((used.id, used.len), (id, 600));
    assert_eq!(used.flags, DESC_F_AVAIL | DESC_F_USED | 2);
    assert_eq!(dq.pop_used(&g), Some(UsedElem { id: id as u32, len: 600 }));
    assert_eq!(dq.read_written(&g, id, 600), data);
    assert_eq!(q.used_idx(), WRAP_BIT | 3, "the used position skipped the chain's slots");
}

#[test]
fn used_descriptors_stay_invisible_until_published_and_keep_their_order() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED);
    let mut q = dq.packed_device(&g);
    let ids: Vec<u16> = (0..3).map(|i| dq.post_tx(&g, &payload(64 + i), 1 + i, false)).collect();
    let mut c = DescChain::new();
    let mut got = vec![];
    while q.pop(&mut c).unwrap() {
        got.push((c.head(), c.readable_len()));
    }
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), ids);
    for &(h, l) in &got {
        q.push_used(h, l).unwrap();
    }
    assert_eq!(dq.pop_used(&g), None, "pushed descriptors must not be visible yet");
    assert_eq!(dq.read_packed_desc(&g, 0).flags & DESC_F_USED, 0, "the first one's flags are not written");
    assert_eq!(q.publish_used(), Ok(3));
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(dq.pop_used(&g), Some(UsedElem { id: id as u32, len: 64 + i as u32 }));
    }
    // Chains of 1, 2 and 3 slots: used descriptors at slots 0, 1 and 3.
    assert_eq!([0, 1, 3].map(|s| dq.read_packed_desc(&g, s).id), [ids[0], ids[1], ids[2]]);
    assert_eq!(q.publish_used(), Ok(0), "nothing new to publish");
    assert_eq!(q.push_used(0, 0), Err(VirtqError::TooManyUsed));
    assert!(!q.is_broken(), "a caller mistake does not break the queue");
}

/// Chains of varying length go round a ring of 8 many times: both wrap counters flip at every
/// pass, chains straddle the end of the ring, and every byte and id comes back right.
#[test]
fn chains_cross_the_end_of_the_ring_with_both_wrap_counters() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED | RingFeatures::INDIRECT_DESC);
    let mut q = dq.packed_device(&g);
    let mut c = DescChain::new();
    let mut passes = 0;
    let mut last = q.last_avail_idx();
    for round in 0..60usize {
        let frags = 1 + round % 3;
        let indirect = round % 5 == 4;
        let p = payload(100 + round);
        // Two chains in flight at once where they fit.
        let a = dq.post_tx(&g, &p, frags, indirect);
        let b = dq.post_tx(&g, &p[..50], 1, false);
        assert!(q.pop(&mut c).unwrap());
        assert_eq!((c.head(), gather(&g, c.readable(), p.len())), (a, p.clone()));
        assert!(q.pop(&mut c).unwrap());
        assert_eq!((c.head(), c.readable_len()), (b, 50));
        q.push_used(a, 0).unwrap();
        q.push_used(b, 7).unwrap();
        assert_eq!(q.publish_used(), Ok(2));
        assert_eq!(dq.pop_used(&g), Some(UsedElem { id: a as u32, len: 0 }));
        assert_eq!(dq.pop_used(&g), Some(UsedElem { id: b as u32, len: 7 }));
        assert_eq!(dq.pop_used(&g), None);
        let now = q.last_avail_idx();
        if (now ^ last) & WRAP_BIT != 0 {
            passes += 1;
        }
        last = now;
        assert_eq!(q.used_idx(), now, "nothing in flight: used position = avail position");
    }
    assert!(passes >= 10, "went round the ring {passes} times");
    assert!(!q.is_broken());
}

#[test]
fn a_queue_restarted_at_a_base_continues_there_with_its_wrap_counter() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED);
    // Index 6 in the second pass (wrap counter 0): a chain of three wraps to the first pass.
    dq.start_at(&g, 6);
    let mut q = dq.packed_device(&g);
    let p = payload(300);
    let id = dq.post_tx(&g, &p, 3, false);
    let mut c = DescChain::new();
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(gather(&g, c.readable(), 300), p);
    assert_eq!(q.last_avail_idx(), WRAP_BIT | 1);
    q.push_used(id, 0).unwrap();
    q.publish_used().unwrap();
    assert_eq!(dq.read_packed_desc(&g, 6).flags & (DESC_F_AVAIL | DESC_F_USED), 0, "used with wrap counter 0");
    assert_eq!(dq.pop_used(&g), Some(UsedElem { id: id as u32, len: 0 }));
    // A base outside the ring is refused.
    let mut cfg = dq.config();
    cfg.avail_base = WRAP_BIT | 8;
    assert_eq!(PackedQueue::new(g.memory().clone(), cfg).unwrap_err(), QueueConfigError::BadBase(WRAP_BIT | 8));
    // Any size is allowed, powers of two or not.
    cfg.avail_base = WRAP_BIT;
    cfg.size = 6;
    assert!(PackedQueue::new(g.memory().clone(), cfg).is_ok());
}

#[test]
fn driver_event_suppression_enables_disables_and_asks_for_one_position() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED | RingFeatures::EVENT_IDX);
    let mut q = dq.packed_device(&g);
    let mut c = DescChain::new();
    let mut step = |q: &mut PackedQueue, dq: &mut vswitch_datapath::testguest::DriverQueue| {
        let id = dq.post_tx(&g, &payload(60), 1, false);
        assert!(q.pop(&mut c).unwrap());
        q.push_used(id, 0).unwrap();
        q.publish_used().unwrap();
        assert!(dq.pop_used(&g).is_some());
        q.needs_notify().unwrap()
    };
    // ENABLE (what the zeroed area says): every publish notifies.
    assert!(step(&mut q, &mut dq));
    assert!(step(&mut q, &mut dq));
    assert!(!q.needs_notify().unwrap(), "nothing new published");
    dq.set_driver_event(&g, EVENT_FLAG_DISABLE, 0, false);
    assert!(!step(&mut q, &mut dq));
    // DESC: notify when the used descriptor at slot 5 (first pass) is written. Used slots so far:
    // 0, 1, 2; the next ones are 3, 4, 5.
    dq.set_driver_event(&g, EVENT_FLAG_DESC, 5, true);
    assert!(!step(&mut q, &mut dq), "slot 3");
    assert!(!step(&mut q, &mut dq), "slot 4");
    assert!(step(&mut q, &mut dq), "slot 5");
    assert!(!step(&mut q, &mut dq), "slot 6");
    // Across the wrap: slot 1 of the second pass (wrap counter 0).
    dq.set_driver_event(&g, EVENT_FLAG_DESC, 1, false);
    assert!(!step(&mut q, &mut dq), "slot 7");
    assert!(!step(&mut q, &mut dq), "slot 0, second pass");
    assert!(step(&mut q, &mut dq), "slot 1, second pass");
    // Without event idx negotiated, DESC means ENABLE.
    let mut dq2 = g.add_queue(8, PACKED);
    let mut q2 = dq2.packed_device(&g);
    dq2.set_driver_event(&g, EVENT_FLAG_DESC, 5, true);
    let id = dq2.post_tx(&g, &payload(60), 1, false);
    let mut c2 = DescChain::new();
    assert!(q2.pop(&mut c2).unwrap());
    q2.push_used(id, 0).unwrap();
    q2.publish_used().unwrap();
    assert!(q2.needs_notify().unwrap());
}

#[test]
fn kicks_are_switched_through_the_device_event_area() {
    let g = TestGuest::new();
    let dq = g.add_queue(8, PACKED | RingFeatures::EVENT_IDX);
    let mut q = dq.packed_device(&g);
    q.set_kicks(false).unwrap();
    assert_eq!(dq.device_event_flags(&g), EVENT_FLAG_DISABLE);
    q.set_kicks(true).unwrap();
    assert_eq!(dq.device_event_flags(&g), EVENT_FLAG_ENABLE);
}

#[test]
fn rewind_gives_back_chains_a_packet_could_not_use() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED);
    let mut q = dq.packed_device(&g);
    let a = dq.post_rx(&g, 100, 2);
    let b = dq.post_rx(&g, 100, 3);
    let mut c = DescChain::new();
    assert!(q.pop(&mut c).unwrap());
    let mark = q.mark();
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(c.head(), b);
    assert_eq!(q.pop(&mut c), Ok(false));
    assert_eq!(q.rewind(mark), Ok(1));
    assert_eq!(q.in_flight(), 1);
    assert_eq!(q.last_avail_idx(), WRAP_BIT | 2);
    assert!(q.pop(&mut c).unwrap());
    assert_eq!((c.head(), c.writable_len()), (b, 300), "the same chain again");
    assert_eq!(q.give_back(3), Err(VirtqError::BadRewind));
    q.push_used(a, 10).unwrap();
    q.push_used(b, 20).unwrap();
    q.publish_used().unwrap();
    assert_eq!(dq.pop_used(&g), Some(UsedElem { id: a as u32, len: 10 }));
    assert_eq!(dq.pop_used(&g), Some(UsedElem { id: b as u32, len: 20 }));
}

/// A descriptor the driver wrote with the wrong wrap counter (made available for the previous
/// pass, or already marked used) is not available: the device takes nothing and writes nothing.
#[test]
fn descriptors_with_the_wrong_wrap_counter_are_not_taken() {
    let g = TestGuest::new();
    let dq = g.add_queue(8, PACKED);
    let mut q = dq.packed_device(&g);
    let buf = g.alloc(64, 8);
    let before = g.snapshot();
    let mut c = DescChain::new();
    for flags in [DESC_F_USED, DESC_F_AVAIL | DESC_F_USED, 0] {
        dq.write_packed_desc(
            &g,
            0,
            vswitch_datapath::virtio::packed::RawPackedDesc { addr: buf, len: 64, id: 0, flags },
        );
        assert_eq!(q.pop(&mut c), Ok(false), "flags {flags:#x}");
    }
    assert_eq!(q.in_flight(), 0);
    assert!(!q.is_broken());
    let mut after = g.snapshot();
    // Only the driver's own writes to slot 0 differ.
    let off = (dq.config().desc_table - vswitch_datapath::testguest::GUEST_BASE) as usize;
    after[0][off..off + 16].copy_from_slice(&before[0][off..off + 16]);
    assert!(after == before, "the device wrote to guest memory");
}

#[test]
fn dirty_logging_marks_written_buffers_and_used_descriptors() {
    use std::sync::Arc;
    use vswitch_datapath::DirtyLog;
    let g = TestGuest::split();
    let mut dq = g.add_queue(64, PACKED);
    let mut q = dq.packed_device(&g);
    let log = Arc::new(DirtyLog::anonymous((g.boundary() + (2 << 20)) / 4096).unwrap());
    dq.post_rx(&g, 256, 1);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(q.set_dirty_log(Some(log.clone())), Err(VirtqError::LogWithChainsInFlight { in_flight: 1 }));
    q.push_used(c.head(), 0).unwrap();
    q.publish_used().unwrap();
    assert!(!log.is_marked(dq.config().desc_table), "nothing is marked while not logging");
    q.set_dirty_log(Some(log.clone())).unwrap();
    let start = g.boundary() - 100;
    assert!(g.alloc(0, 1) < start, "nothing allocated there yet");
    let id = dq.add_chain(&g, &[Buf { gpa: start, len: 8192, writable: true }]);
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.writable().len(), 2, "two host segments");
    q.push_used(id, 5000).unwrap();
    q.publish_used().unwrap();
    assert!(log.is_marked(start) && log.is_marked(g.boundary()) && log.is_marked(start + 4999));
    assert!(!log.is_marked(start + 5000 + 4096), "beyond the used length: not written, not marked");
    assert!(log.is_marked(dq.config().desc_table + 16), "used descriptor store marked");
}

/// DPDK's virtio-user leaves `WRITE` on the net-header entry of its packed indirect TX tables: a
/// queue the device only reads (a TX queue) takes every buffer as readable, in order; any other
/// queue refuses the readable entries after the writable one.
#[test]
fn a_read_only_queue_ignores_write_flags_as_dpdk_leaves_them_on_tx_tables() {
    use vswitch_datapath::virtio::packed::RawPackedDesc;
    let g = TestGuest::new();
    let hdr = payload(12);
    let data = payload(900);
    let (h, d) = (g.alloc(12, 8), g.alloc(900, 8));
    g.write(h, &hdr);
    g.write(d, &data);
    let write = vswitch_datapath::virtio::desc::DescFlags::WRITE.bits();
    let post = |dq: &vswitch_datapath::testguest::DriverQueue| {
        let table = g.alloc(32, 16);
        // DPDK's preset: every entry WRITE; the data entries' flags rewritten per packet (NEXT and
        // the avail bits, which mean nothing in a table), the header's left as preset.
        g.write(table, &RawPackedDesc { addr: h, len: 12, id: 0, flags: write }.to_le_bytes());
        g.write(table + 16, &RawPackedDesc { addr: d, len: 900, id: 1, flags: DESC_F_AVAIL }.to_le_bytes());
        let (slot, avail) = dq.packed_next();
        let flags = vswitch_datapath::virtio::desc::DescFlags::INDIRECT.bits() | avail;
        dq.write_packed_desc(&g, slot, RawPackedDesc { addr: table, len: 32, id: 5, flags });
    };
    let feats = PACKED | RingFeatures::INDIRECT_DESC;
    let tx = g.add_queue(8, feats);
    let mut q = tx.packed_device(&g);
    q.set_read_only(true);
    post(&tx);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!((c.head(), c.readable_len(), c.writable_len()), (5, 912, 0));
    let mut want = hdr.clone();
    want.extend(&data);
    assert_eq!(gather(&g, c.readable(), 912), want);

    let rx = g.add_queue(8, feats);
    let mut q = rx.packed_device(&g);
    post(&rx);
    assert_eq!(q.pop(&mut c), Err(VirtqError::ReadableAfterWritable { index: 1 }));

    // The one-descriptor fast path of `pop` keeps the rule: a lone WRITE-flagged buffer on a TX
    // queue is read, on an RX queue written.
    for (read_only, id) in [(true, 3), (false, 4)] {
        let dq = g.add_queue(8, PACKED);
        let mut q = dq.packed_device(&g);
        q.set_read_only(read_only);
        let (slot, avail) = dq.packed_next();
        dq.write_packed_desc(&g, slot, RawPackedDesc { addr: d, len: 900, id, flags: write | avail });
        assert_eq!(q.pop(&mut c), Ok(true));
        let (r, w) = if read_only { (900, 0) } else { (0, 900) };
        assert_eq!((c.head(), c.readable_len(), c.writable_len()), (id, r, w));
        let segs = if read_only { c.readable() } else { c.writable() };
        assert_eq!(gather(&g, segs, 900), data);
    }
}

/// The fast paths on a packed ring take the run of single-descriptor chains from the avail
/// position: writable ones for RX, readable ones for TX, exactly the chains `pop` would give
/// (same ids, same segments), stopping before any other chain (two descriptors, the other
/// direction, a buffer `accept` refuses), which `pop` then takes; they say why the run ended,
/// follow the ring round its end with both wrap counters, go back with `give_back`, and take
/// nothing while the queue logs dirty pages. On a read-only queue (TX) `WRITE` means nothing and
/// the RX run takes nothing.
#[test]
fn single_buffer_runs_follow_the_packed_ring_round_its_end() {
    use vswitch_datapath::{RunEnd, Take};
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, PACKED);
    let mut q = dq.packed_device(&g);
    let any = |_| Take::Yes;
    let mut out = Vec::new();
    let mut c = DescChain::new();
    let mut passes = 0;
    let mut last = q.last_avail_idx();
    for round in 0..40usize {
        let n = 1 + round % 3;
        let heads: Vec<u16> = (0..n).map(|k| dq.post_rx(&g, 500 + k as u32, 1)).collect();
        let two = dq.post_rx(&g, 300, 2);
        assert_eq!(
            q.pop_singles(&mut out, 8, any, true),
            (n, RunEnd::Other),
            "round {round}: stops at the chain of two"
        );
        assert_eq!(
            out.iter().map(|b| (b.head, b.seg.len())).collect::<Vec<_>>(),
            heads.iter().enumerate().map(|(k, &h)| (h, 500 + k as u32)).collect::<Vec<_>>()
        );
        // The same chains as `pop` gives them.
        q.give_back(n as u16).unwrap();
        for b in &out {
            assert_eq!(q.pop(&mut c), Ok(true));
            assert_eq!((c.head(), c.writable()), (b.head, &[b.seg][..]));
        }
        assert_eq!(q.pop_singles(&mut out, 8, any, false), (0, RunEnd::Other), "a writable chain is not the TX run's");
        assert_eq!(q.pop(&mut c), Ok(true));
        assert_eq!((c.head(), c.writable_len()), (two, 600));
        assert_eq!(q.pop_singles(&mut out, 8, any, true), (0, RunEnd::Empty));
        for (k, &h) in heads.iter().chain([&two]).enumerate() {
            q.push_used(h, k as u32).unwrap();
        }
        assert_eq!(q.publish_used(), Ok(n as u16 + 1));
        for (k, &h) in heads.iter().chain([&two]).enumerate() {
            assert_eq!(dq.pop_used(&g), Some(UsedElem { id: h as u32, len: k as u32 }), "round {round}");
        }
        let now = q.last_avail_idx();
        if (now ^ last) & WRAP_BIT != 0 {
            passes += 1;
        }
        last = now;
    }
    assert!(passes >= 10, "went round the ring {passes} times");
    // `accept` sees each length in order; the run stops before the first it refuses. A full ring
    // ends the run as `Full` at `max`, and as `Empty` when the device holds every slot.
    let fits: Vec<u16> = (0..3).map(|_| dq.post_rx(&g, 1000, 1)).collect();
    let short = dq.post_rx(&g, 200, 1);
    assert_eq!(
        q.pop_singles(&mut out, 8, |len| if len >= 1000 { Take::Yes } else { Take::No }, true),
        (3, RunEnd::Other)
    );
    assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), fits);
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), short);
    let rest: Vec<u16> = (0..4).map(|_| dq.post_rx(&g, 100, 1)).collect();
    assert_eq!(q.pop_singles(&mut out, 2, any, true), (2, RunEnd::Full));
    assert_eq!(q.pop_singles(&mut out, 8, any, true), (2, RunEnd::Empty), "the device holds all 8 slots");
    assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), rest[2..]);
    assert_eq!(q.in_flight(), 8);
    assert!(!q.is_broken());

    // A read-only queue: `WRITE` flags mean nothing, the TX run takes the buffer as readable.
    let mut tx = g.add_queue(8, PACKED);
    let mut t = tx.packed_device(&g);
    t.set_read_only(true);
    let p = payload(300);
    let id = tx.post_tx(&g, &p, 1, false);
    let (slot, _) = tx.packed_next();
    let prev = if slot == 0 { 7 } else { slot - 1 };
    let mut d = tx.read_packed_desc(&g, prev);
    d.flags |= vswitch_datapath::virtio::desc::DescFlags::WRITE.bits();
    tx.write_packed_desc(&g, prev, d);
    assert_eq!(t.pop_singles(&mut out, 8, any, true), (0, RunEnd::Other), "no RX run on a read-only queue");
    assert_eq!(t.pop_singles(&mut out, 8, any, false), (1, RunEnd::Empty));
    assert_eq!((out[0].head, gather(&g, &[out[0].seg], 300)), (id, p));

    // While logging, `pop` takes every chain (it records the buffers).
    let log = vswitch_datapath::DirtyLog::anonymous((g.boundary() + (2 << 20)) / 4096).unwrap();
    let mut dq2 = g.add_queue(8, PACKED);
    let mut q2 = dq2.packed_device(&g);
    q2.set_dirty_log(Some(std::sync::Arc::new(log))).unwrap();
    dq2.post_rx(&g, 1000, 1);
    assert_eq!(q2.pop_singles(&mut out, 8, any, true), (0, RunEnd::Other));
    assert_eq!(q2.pop(&mut c), Ok(true));
}
