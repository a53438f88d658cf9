//! The device side of split virtqueues against the in-process test guest: chains become the right
//! segments, used entries are published in order and in batches, notifications follow event idx.

use vswitch_datapath::net::{NetHdr, NetHdrRepr, NET_HDR_LEN};
use vswitch_datapath::testguest::{TestGuest, UsedElem};
use vswitch_datapath::virtio::vring_need_event;
use vswitch_datapath::{DescChain, HostSeg, RingFeatures, RunEnd, Take, VirtqError};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn gather(g: &TestGuest, segs: &[HostSeg], len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    g.memory().gather(segs, &mut v).unwrap();
    v
}

#[test]
fn tx_chain_is_walked_into_its_segments() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(256, RingFeatures::INDIRECT_DESC);
    let mut q = dq.device(&g);
    let p = payload(1500);
    let head = dq.post_tx(&g, &p, 3, false);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), head);
    assert_eq!(c.readable().len(), 3);
    assert_eq!(c.descriptors(), 3);
    assert_eq!(c.readable_len(), 1500);
    assert!(c.writable().is_empty());
    assert_eq!(gather(&g, c.readable(), 1500), p);
    assert_eq!(q.pop(&mut c), Ok(false));
    assert_eq!(q.in_flight(), 1);
}

#[test]
fn indirect_tx_chain_is_walked_into_its_segments() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(64, RingFeatures::INDIRECT_DESC);
    let mut q = dq.device(&g);
    let p = payload(9000);
    let head = dq.post_tx(&g, &p, 5, true);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), head);
    assert_eq!(c.readable().len(), 5);
    assert_eq!(c.readable_len(), 9000);
    assert_eq!(gather(&g, c.readable(), 9000), p);
}

#[test]
fn rx_chain_receives_bytes_that_the_guest_reads_back() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(64, RingFeatures::empty());
    let mut q = dq.device(&g);
    let head = dq.post_rx(&g, 256, 3);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert!(c.readable().is_empty());
    assert_eq!(c.writable_len(), 768);
    let data = payload(600);
    g.memory().scatter(&data, c.writable()).unwrap();
    q.push_used(c.head(), 600).unwrap();
    assert_eq!(q.publish_used(), Ok(1));
    assert_eq!(dq.pop_used(&g), Some(UsedElem { id: head as u32, len: 600 }));
    assert_eq!(dq.read_written(&g, head, 600), data);
}

#[test]
fn used_entries_stay_invisible_until_published_and_keep_their_order() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    let heads: Vec<u16> = (0..3).map(|i| dq.post_tx(&g, &payload(64 + i), 1, false)).collect();
    let mut c = DescChain::new();
    let mut lens = vec![];
    while q.pop(&mut c).unwrap() {
        lens.push((c.head(), c.readable_len()));
    }
    assert_eq!(lens.len(), 3);
    for &(h, l) in &lens {
        q.push_used(h, l).unwrap();
    }
    assert_eq!(dq.used_idx(&g), 0, "pushed entries must not be visible yet");
    assert_eq!(dq.pop_used(&g), None);
    assert_eq!(q.publish_used(), Ok(3));
    assert_eq!(dq.used_idx(&g), 3);
    for (i, &h) in heads.iter().enumerate() {
        let e = dq.pop_used(&g).unwrap();
        assert_eq!(e, UsedElem { id: h as u32, len: 64 + i as u32 });
    }
    assert_eq!(q.publish_used(), Ok(0), "nothing new to publish");
    assert_eq!(q.push_used(0, 0), Err(VirtqError::TooManyUsed));
    assert!(!q.is_broken(), "a caller mistake does not break the queue");
}

#[test]
fn vring_need_event_matches_the_spec_formula_across_wrap() {
    // Crossed: old < event + 1 <= new.
    assert!(vring_need_event(1, 2, 1));
    assert!(vring_need_event(1, 4, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(!vring_need_event(5, 4, 2));
    assert!(!vring_need_event(1, 4, 2), "already passed before old");
    // Across the 16-bit wrap.
    assert!(vring_need_event(65535, 2, 65534));
    assert!(!vring_need_event(65535, 65535, 65530));
    assert!(vring_need_event(0, 1, 65535));
    // Nothing new: never.
    assert!(!vring_need_event(7, 7, 7));
}

#[test]
fn event_idx_notifies_only_when_used_event_is_crossed() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(16, RingFeatures::EVENT_IDX);
    let mut q = dq.device(&g);
    for _ in 0..6 {
        dq.post_tx(&g, &payload(60), 1, false);
    }
    let mut c = DescChain::new();
    let mut heads = vec![];
    while q.pop(&mut c).unwrap() {
        heads.push(c.head());
    }
    // "Interrupt me when the entry with index 1 is used" (used idx goes past 1).
    dq.set_used_event(&g, 1);
    let mut step = |q: &mut vswitch_datapath::SplitQueue, n: usize| {
        for _ in 0..n {
            let h = heads.remove(0);
            q.push_used(h, 0).unwrap();
        }
        q.publish_used().unwrap();
        q.needs_notify().unwrap()
    };
    assert!(!step(&mut q, 1), "used idx 0 -> 1 does not pass entry 1");
    assert!(step(&mut q, 1), "used idx 1 -> 2 passes entry 1");
    assert!(!step(&mut q, 2), "2 -> 4: the event was already passed");
    dq.set_used_event(&g, 5);
    assert!(step(&mut q, 2), "4 -> 6 passes entry 5");
    assert!(!q.needs_notify().unwrap(), "nothing new published");
    assert_eq!(dq.avail_event(&g), 6, "avail_event follows the device");
}

#[test]
fn no_interrupt_flag_suppresses_notification_without_event_idx() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    let mut c = DescChain::new();
    for suppress in [true, false] {
        dq.set_no_interrupt(&g, suppress);
        dq.post_tx(&g, &payload(60), 1, false);
        assert!(q.pop(&mut c).unwrap());
        q.push_used(c.head(), 0).unwrap();
        q.publish_used().unwrap();
        assert_eq!(q.needs_notify().unwrap(), !suppress);
    }
}

#[test]
fn kicks_are_switched_through_used_flags_or_avail_event() {
    let g = TestGuest::new();
    let dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    q.set_kicks(false).unwrap();
    assert_eq!(dq.used_flags(&g), 1, "VIRTQ_USED_F_NO_NOTIFY");
    q.set_kicks(true).unwrap();
    assert_eq!(dq.used_flags(&g), 0);

    let mut dq = g.add_queue(8, RingFeatures::EVENT_IDX);
    let mut q = dq.device(&g);
    let mut c = DescChain::new();
    dq.post_tx(&g, &payload(60), 1, false);
    dq.post_tx(&g, &payload(60), 1, false);
    assert!(q.pop(&mut c).unwrap());
    assert!(q.pop(&mut c).unwrap());
    q.set_kicks(true).unwrap();
    assert_eq!(dq.avail_event(&g), 2);
    // Kicks off (a polling device): publishing leaves avail_event stale, so the driver, whose
    // avail idx has passed it, does not kick again until it wraps around to it.
    q.set_kicks(false).unwrap();
    dq.post_tx(&g, &payload(60), 1, false);
    assert!(q.pop(&mut c).unwrap());
    q.push_used(c.head(), 0).unwrap();
    q.publish_used().unwrap();
    assert_eq!(dq.avail_event(&g), 2, "avail_event no longer follows the device");
    // Back on: the next publish moves it to the next avail index again.
    q.set_kicks(true).unwrap();
    assert_eq!(dq.avail_event(&g), 3);
    dq.post_tx(&g, &payload(60), 1, false);
    assert!(q.pop(&mut c).unwrap());
    q.push_used(c.head(), 0).unwrap();
    q.publish_used().unwrap();
    assert_eq!(dq.avail_event(&g), 4, "avail_event follows the device");
}

#[test]
fn chain_spanning_two_regions_becomes_two_segments() {
    let g = TestGuest::split();
    let mut dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    let b = g.boundary();
    let p = payload(400);
    // One buffer across the boundary (100 + 200 bytes), one wholly in the second region.
    dq.post_tx_at(&g, &[(b - 100, 300), (b + 4096, 100)], &p);
    let mut c = DescChain::new();
    assert!(q.pop(&mut c).unwrap());
    let regions = g.memory().regions();
    let segs = c.readable();
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0].len(), 100);
    assert_eq!(segs[0].host_addr(), regions[0].host_addr() + regions[0].len() - 100);
    assert_eq!(segs[1].len(), 200);
    assert_eq!(segs[1].host_addr(), regions[1].host_addr());
    assert_eq!(segs[2].host_addr(), regions[1].host_addr() + 4096);
    assert_eq!(c.readable_len(), 400);
    assert_eq!(gather(&g, segs, 400), p);
}

#[test]
fn rewind_gives_back_chains_a_packet_could_not_use() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    let heads: Vec<u16> = (0..3).map(|_| dq.post_rx(&g, 128, 1)).collect();
    let mut c = DescChain::new();
    let mark = q.mark();
    assert!(q.pop(&mut c).unwrap());
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(q.in_flight(), 2);
    // The packet needs 500 bytes; 2 chains give 256 and the third 128: give them back.
    assert_eq!(q.rewind(mark), Ok(2));
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.avail_count(), Ok(3));
    assert!(q.pop(&mut c).unwrap());
    assert_eq!(c.head(), heads[0], "the same chains come again");
    q.push_used(c.head(), 10).unwrap();
    assert_eq!(q.rewind(mark), Err(VirtqError::BadRewind), "its used entry was pushed");
    assert!(!q.is_broken());
    assert_eq!(dq.used_idx(&g), 0, "taking and giving back wrote nothing");
}

#[test]
fn mergeable_rx_packet_spreads_over_several_chains() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(8, RingFeatures::empty());
    let mut q = dq.device(&g);
    let heads: Vec<u16> = (0..3).map(|_| dq.post_rx(&g, 1024, 1)).collect();
    let pkt = payload(1500);
    let need = NET_HDR_LEN + pkt.len();
    let mut chains = [DescChain::new(), DescChain::new(), DescChain::new()];
    let (mut n, mut room) = (0, 0usize);
    while room < need {
        assert!(q.pop(&mut chains[n]).unwrap());
        room += chains[n].writable_len() as usize;
        n += 1;
    }
    assert_eq!(n, 2);
    let mut frame = vec![0; need];
    NetHdrRepr { num_buffers: n as u16, ..Default::default() }.emit(&mut frame, NET_HDR_LEN).unwrap();
    frame[NET_HDR_LEN..].copy_from_slice(&pkt);
    let mut at = 0;
    for c in &chains[..n] {
        let take = (need - at).min(c.writable_len() as usize);
        g.memory().scatter(&frame[at..at + take], c.writable()).unwrap();
        q.push_used(c.head(), take as u32).unwrap();
        at += take;
    }
    q.publish_used().unwrap();
    let e0 = dq.pop_used(&g).unwrap();
    let e1 = dq.pop_used(&g).unwrap();
    assert_eq!((e0.id, e0.len), (heads[0] as u32, 1024));
    assert_eq!((e1.id, e1.len), (heads[1] as u32, (need - 1024) as u32));
    let first = dq.read_written(&g, heads[0], 1024);
    assert_eq!(NetHdr::new_checked(&first[..], NET_HDR_LEN).unwrap().num_buffers(), 2);
    assert_eq!(q.avail_count(), Ok(1), "the third buffer stays available");
}

#[test]
fn avail_and_used_indices_wrap_at_16_bits() {
    let g = TestGuest::new();
    let mut dq = g.add_queue(4, RingFeatures::empty());
    dq.start_at(&g, 65533);
    let mut q = dq.device(&g);
    let mut c = DescChain::new();
    for i in 0..10usize {
        let p = payload(100 + i);
        let head = dq.post_tx(&g, &p, 1, false);
        assert!(q.pop(&mut c).unwrap());
        assert_eq!(gather(&g, c.readable(), p.len()), p);
        q.push_used(c.head(), i as u32).unwrap();
        q.publish_used().unwrap();
        assert_eq!(dq.pop_used(&g), Some(UsedElem { id: head as u32, len: i as u32 }));
    }
    assert_eq!(q.last_avail_idx(), 65533u16.wrapping_add(10));
}

#[test]
fn dirty_logging_starts_only_on_a_queue_with_nothing_in_flight_and_marks_what_pop_recorded() {
    use std::sync::Arc;
    use vswitch_datapath::DirtyLog;
    let g = TestGuest::split();
    let mut dq = g.add_queue(64, RingFeatures::empty());
    let mut q = dq.device(&g);
    let log = Arc::new(DirtyLog::anonymous((g.boundary() + (2 << 20)) / 4096).unwrap());
    // A chain taken before logging started: its buffers were not recorded, so its writes could
    // not be marked. Starting then is refused and leaves the queue as it was.
    dq.post_rx(&g, 256, 1);
    let mut c = DescChain::new();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(q.set_dirty_log(Some(log.clone())), Err(VirtqError::LogWithChainsInFlight { in_flight: 1 }));
    assert!(!q.is_logging() && !q.is_broken());
    q.push_used(c.head(), 0).unwrap();
    q.publish_used().unwrap();
    assert!(!log.is_marked(dq.config().used_ring), "nothing is marked while not logging");
    // Drained: logging starts. A buffer across the region boundary (two host segments, one
    // guest-physical range) is marked as far as the used length says, on both sides.
    q.set_dirty_log(Some(log.clone())).unwrap();
    let start = g.boundary() - 100;
    assert!(g.alloc(0, 1) < start, "nothing allocated there yet");
    let head = dq.add_chain(&g, &[vswitch_datapath::testguest::Buf { gpa: start, len: 8192, writable: true }]);
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.writable().len(), 2, "two host segments");
    // Replacing the log with chains in flight is fine: they were recorded.
    let log2 = Arc::new(DirtyLog::anonymous((g.boundary() + (2 << 20)) / 4096).unwrap());
    q.set_dirty_log(Some(log2.clone())).unwrap();
    q.push_used(head, 5000).unwrap();
    q.publish_used().unwrap();
    assert!(log2.is_marked(start) && log2.is_marked(g.boundary()) && log2.is_marked(start + 4999));
    assert!(!log2.is_marked(start + 5000 + 4096), "beyond the used length: not written, not marked");
    assert!(log2.is_marked(dq.config().used_ring), "used ring store marked");
    assert!(!log.is_marked(start), "the replaced log is not written any more");
    // Stopping is always possible, chains in flight or not.
    dq.post_rx(&g, 256, 1);
    assert_eq!(q.pop(&mut c), Ok(true));
    q.set_dirty_log(None).unwrap();
    assert!(!q.is_logging());
}

/// The host->guest fast path takes the run of single-buffer RX chains at the front of the avail
/// ring, exactly the chains `pop` would give, and stops at the first chain of any other kind (a
/// readable buffer, two descriptors, a buffer shorter than asked), which `pop` then takes; chains
/// it took and the caller did not use go back with `give_back`. It says why it stopped: asked for
/// no more, nothing more available at a fresh load of the avail idx, or a chain for `pop`. It takes
/// nothing while the queue logs dirty pages.
#[test]
fn rx_singles_are_taken_as_a_run_up_to_the_first_other_chain() {
    let g = TestGuest::split();
    let mut dq = g.add_queue(16, RingFeatures::empty());
    let mut q = dq.device(&g);
    let singles = [dq.post_rx(&g, 1000, 1), dq.post_rx(&g, 1500, 1), dq.post_rx(&g, 700, 1)];
    let tx = dq.post_tx(&g, &payload(100), 1, false);
    let two = dq.post_rx(&g, 500, 2);
    let last = dq.post_rx(&g, 900, 1);
    let any = |_| Take::Yes;
    let mut out = Vec::new();
    assert_eq!(q.pop_rx_singles(&mut out, 2, any), (2, RunEnd::Full), "no more than asked");
    assert_eq!(out.iter().map(|b| (b.head, b.seg.len())).collect::<Vec<_>>(), [(singles[0], 1000), (singles[1], 1500)]);
    assert_eq!(q.in_flight(), 2);
    // The same chains as `pop` walks them.
    q.give_back(2).unwrap();
    let mut c = DescChain::new();
    for b in &out {
        assert_eq!(q.pop(&mut c), Ok(true));
        assert_eq!((c.head(), c.writable()), (b.head, &[b.seg][..]));
    }
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (1, RunEnd::Other), "stops before the readable chain");
    assert_eq!(out[0].head, singles[2]);
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (0, RunEnd::Other), "a readable chain is left to pop");
    assert_eq!(q.pop_tx_singles(&mut out, 16), (1, RunEnd::Other), "which is the TX fast path's");
    assert_eq!((out[0].head, out[0].seg.len()), (tx, 100));
    q.give_back(1).unwrap();
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!(c.head(), tx);
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (0, RunEnd::Other), "a chain of two is left to pop");
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!((c.head(), c.writable().len()), (two, 2));
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (1, RunEnd::Empty));
    assert_eq!(out[0].head, last);
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (0, RunEnd::Empty), "the ring is empty");
    assert_eq!(q.in_flight(), 6);
    assert!(!q.is_broken());

    // A run of used entries longer than the chains in flight writes nothing; one that fits writes
    // them in order.
    let done: Vec<(u16, u32)> = singles.iter().chain([&tx, &two, &last]).zip(10..).map(|(&h, l)| (h, l)).collect();
    let extra: Vec<(u16, u32)> = done.iter().copied().chain([(0, 0)]).collect();
    assert_eq!(q.push_used_run(extra.into_iter()), Err(VirtqError::TooManyUsed));
    assert_eq!((q.used_idx(), q.in_flight(), q.is_broken()), (0, 6, false));
    q.push_used_run(done.iter().copied()).unwrap();
    assert_eq!(q.publish_used(), Ok(6));
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| dq.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, done);

    // The caller's `accept` sees each buffer's length in order (here: each must hold what its
    // packet needs); the run stops before the first it refuses, and `pop` takes that one. Chains
    // posted after the last load are seen: the run loads the avail idx again when the ones it
    // knows of are used up.
    let fits = [dq.post_rx(&g, 1000, 1), dq.post_rx(&g, 2000, 1)];
    let short = dq.post_rx(&g, 1999, 1);
    let mut need = [900u32, 2000, 2000].into_iter();
    let fit = |len| if need.next().is_some_and(|n| len >= n) { Take::Yes } else { Take::No };
    assert_eq!(q.pop_rx_singles(&mut out, 3, fit), (2, RunEnd::Other), "stops at the short buffer");
    assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), fits);
    assert_eq!(q.pop(&mut c), Ok(true));
    assert_eq!((c.head(), c.writable_len()), (short, 1999));
    assert_eq!(
        q.pop_rx_singles(&mut out, 16, |len| if len >= 1000 { Take::Yes } else { Take::No }),
        (0, RunEnd::Empty)
    );
    let more = [dq.post_rx(&g, 1000, 1), dq.post_rx(&g, 1000, 1)];
    assert_eq!(
        q.pop_rx_singles(&mut out, 16, |len| if len >= 1000 { Take::Yes } else { Take::No }),
        (2, RunEnd::Empty),
        "the new chains, then none"
    );
    assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), more);
    assert_eq!(q.in_flight(), 5);
    let back: Vec<(u16, u32)> = fits.iter().chain([&short]).chain(&more).map(|&h| (h, 0)).collect();
    q.push_used_run(back.into_iter()).unwrap();
    assert_eq!(q.publish_used(), Ok(5));

    // While logging, `pop` takes every chain (it records the buffers).
    let log = vswitch_datapath::DirtyLog::anonymous((g.boundary() + (2 << 20)) / 4096).unwrap();
    q.set_dirty_log(Some(std::sync::Arc::new(log))).unwrap();
    dq.post_rx(&g, 1000, 1);
    assert_eq!(q.pop_rx_singles(&mut out, 16, any), (0, RunEnd::Other));
    assert_eq!(q.pop(&mut c), Ok(true));
}

/// A caller that calls a buffer its last (`Take::Last`, what the northbound path says of the one
/// that completes its last packet) ends the run there, as `Full`: the run looks at no further
/// buffer, and the next chain stays in the ring for the next run or `pop`. Split and packed.
#[test]
fn a_run_ends_at_the_buffer_its_caller_calls_last() {
    let g = TestGuest::split();
    for features in [RingFeatures::empty(), RingFeatures::PACKED] {
        let mut dq = g.add_queue(16, features);
        let mut q = dq.virtqueue(&g);
        let heads: Vec<u16> = (0..4).map(|_| dq.post_rx(&g, 1000, 1)).collect();
        let mut seen = 0;
        let mut out = Vec::new();
        let last_at_two = |_| {
            seen += 1;
            if seen == 2 {
                Take::Last
            } else {
                Take::Yes
            }
        };
        assert_eq!(q.pop_rx_singles(&mut out, 16, last_at_two), (2, RunEnd::Full), "{features:?}");
        assert_eq!(seen, 2, "no buffer looked at after the last");
        assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), heads[..2]);
        assert_eq!(q.pop_rx_singles(&mut out, 16, |_| Take::Yes), (2, RunEnd::Empty));
        assert_eq!(out.iter().map(|b| b.head).collect::<Vec<_>>(), heads[2..]);
        assert_eq!(q.in_flight(), 4);
    }
}

/// A guest that makes the heads the device holds available again, raising the avail idx by no
/// more than the ring size at a time, cannot make one run take more chains than the ring holds:
/// the run stops when the device holds `size` chains and leaves the rest to `pop`.
#[test]
fn a_run_never_holds_more_chains_than_the_ring() {
    let g = TestGuest::split();
    let mut dq = g.add_queue(4, RingFeatures::empty());
    let mut q = dq.device(&g);
    let heads: Vec<u16> = (0..4).map(|_| dq.post_rx(&g, 100, 1)).collect();
    let mut out = Vec::new();
    assert_eq!(q.pop_rx_singles(&mut out, 2, |_| Take::Yes), (2, RunEnd::Full));
    // The same four heads again: the avail idx moves 4 past the last load, which
    // `refresh_avail` allows.
    for &h in &heads {
        dq.make_available(&g, h);
    }
    assert_eq!(q.pop_rx_singles(&mut out, usize::MAX, |_| Take::Yes), (2, RunEnd::Other));
    assert_eq!(q.in_flight(), 4, "never more than the ring holds");
    assert_eq!(q.pop_rx_singles(&mut out, usize::MAX, |_| Take::Yes), (0, RunEnd::Other));
    assert_eq!(q.in_flight(), 4);
}
