//! The asynchronous vhost datapath over packed virtqueues, end to end with an in-process guest:
//! the same northbound/southbound code as for split rings, so the same promises (payloads
//! byte-identical, order preserved, nothing lost, injected DMA errors invisible, a hostile guest
//! breaks only its own port, no copy after stop, dirty pages logged), and a split and a packed
//! guest forwarding to each other on one PMD.

use std::time::{Duration, Instant};

use copy_engine::conformance::LazyEngine;
use copy_engine::fault::{FaultConfig, FaultEngine};
use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::testguest::TestGuest;
use vswitch_datapath::virtio::desc::DescFlags;
use vswitch_datapath::virtio::packed::{RawPackedDesc, EVENT_FLAG_DISABLE};
use vswitch_datapath::{
    Burst, Northbound, Notifier, PacketPool, Pmd, RingFeatures, Southbound, TrafficConfig, TrafficPort, VhostPort,
    VirtqError,
};

const HDR: usize = 12;
const PACKED: RingFeatures = RingFeatures::PACKED.union(RingFeatures::EVENT_IDX);

fn vhost_port(name: &str, guest: &LoopGuest, mergeable: bool) -> VhostPort {
    let (rxq, txq) = guest.device_queues();
    VhostPort::new(
        name,
        Northbound::new(rxq, HDR, mergeable, Notifier::Polling),
        Southbound::new(txq, HDR, Notifier::Polling),
    )
}

fn traffic(pmd: &Pmd<impl CopyEngine>, port: usize) -> &TrafficPort {
    pmd.port(port).as_any().downcast_ref::<TrafficPort>().expect("traffic port")
}

/// Runs `packets` packets of `min..=max` bytes through traffic -> packed guest -> traffic and
/// checks the sink's verdict.
fn pvp<E: CopyEngine>(chan: Channel<E>, gcfg: LoopGuestConfig, min: usize, max: usize, packets: u64) -> Pmd<E> {
    assert!(gcfg.features.contains(RingFeatures::PACKED));
    let mut guest = LoopGuest::new(gcfg);
    let mut pmd = Pmd::new(chan, PacketPool::new(512, max.max(2048)));
    let cfg = TrafficConfig { min_len: min, max_len: max, budget: Some(packets), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(vhost_port("vhost0", &guest, gcfg.mergeable)));
    pmd.connect(t, v);
    pmd.connect(v, t);
    let deadline = Instant::now() + Duration::from_secs(60);
    while traffic(&pmd, t).received() < packets && traffic(&pmd, t).first_error().is_none() {
        assert!(Instant::now() < deadline, "PVP loop stalled: {:?}", pmd.port_stats());
        pmd.run_once();
        guest.poll();
    }
    let tp = traffic(&pmd, t);
    assert_eq!(tp.first_error(), None, "sink saw a lost, reordered or corrupt packet");
    assert_eq!(tp.received(), packets);
    assert_eq!(guest.bad_headers(), 0, "num_buffers wrong in a mergeable header");
    let vs = pmd.port(v).stats();
    assert_eq!((vs.drops, vs.errors), (0, 0), "vhost port dropped or failed: {vs:?}");
    pmd.stop();
    assert_eq!(pmd.channel().in_flight(), 0);
    assert_eq!(pmd.pool().available(), pmd.pool().capacity(), "packet buffers leaked");
    pmd
}

fn jumbo_mergeable() -> LoopGuestConfig {
    LoopGuestConfig { split_header: true, features: PACKED, ..LoopGuestConfig::default() }
}

#[test]
fn packed_random_sizes_round_trip_intact_on_memcpy_engine() {
    let ch = Channel::new(MemcpyEngine::default(), Policy::default());
    pvp(ch, jumbo_mergeable(), 64, 9000, 3000);
}

#[test]
fn packed_random_sizes_round_trip_intact_on_worker_engine() {
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    let pmd = pvp(Channel::new(e, Policy::default()), jumbo_mergeable(), 64, 9000, 3000);
    let s = pmd.channel().stats();
    assert!(s.offloaded > 0 && s.cpu_small > 0, "both engine and CPU paths used: {s:?}");
}

#[test]
fn packed_random_sizes_round_trip_intact_without_mergeable_buffers() {
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    let cfg = LoopGuestConfig {
        mergeable: false,
        buf_len: 9216 + 64,
        buffers: 100,
        queue_size: 100, // a packed ring need not be a power of two
        features: PACKED,
        ..LoopGuestConfig::default()
    };
    pvp(Channel::new(e, Policy::offload_all()), cfg, 64, 9000, 2000);
}

#[test]
fn packed_lazy_engine_completions_keep_packet_order() {
    let ch = Channel::new(LazyEngine::new(256, 7), Policy::offload_all());
    pvp(ch, jumbo_mergeable(), 64, 4000, 2000);
}

#[test]
fn packed_injected_dma_errors_and_ring_full_change_nothing_the_guest_sees() {
    let cfg = FaultConfig { error_rate: 0.01, ring_full_every: 40, ring_full_burst: 6, delay_polls: 2, seed: 77 };
    let e = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), cfg);
    let pmd = pvp(Channel::new(e, Policy::default()), jumbo_mergeable(), 64, 9000, 3000);
    let injected = pmd.channel().with_engine(|f| f.injected());
    assert!(injected.errors > 0 && injected.ring_full > 0, "nothing injected: {injected:?}");
    assert_eq!(pmd.channel().stats().cpu_retry, injected.errors, "every failed copy redone by the CPU");
}

/// An in-order packed guest (its TX buffers come back a batch per used descriptor) under
/// injected DMA errors, ring-full bursts and late completions: nothing lost or reordered.
#[test]
fn packed_in_order_guest_round_trips_under_injected_faults() {
    let cfg = FaultConfig { error_rate: 0.01, ring_full_every: 40, ring_full_burst: 6, delay_polls: 2, seed: 78 };
    let e = FaultEngine::new(LazyEngine::new(256, 7), cfg);
    let gcfg = LoopGuestConfig { features: PACKED | RingFeatures::IN_ORDER, ..jumbo_mergeable() };
    let pmd = pvp(Channel::new(e, Policy::default()), gcfg, 64, 9000, 3000);
    assert!(pmd.channel().with_engine(|f| f.injected()).errors > 0, "errors injected");
    // The guest's TX chains came back in batches: fewer used descriptors than chains.
    let port = pmd.port(1).as_any().downcast_ref::<VhostPort>().expect("vhost port");
    let txq = port.south().queue().as_packed().expect("packed");
    let chains = port.south().stats().packets;
    assert!(chains >= 3000, "{chains} TX chains");
    assert!(
        txq.used_descriptors_written() * 2 < chains,
        "{} used descriptors for {chains} chains",
        txq.used_descriptors_written()
    );
}

/// One datapath, two ring formats: traffic -> split guest -> packed guest -> traffic on one PMD,
/// every packet intact and in order.
#[test]
fn a_split_and_a_packed_guest_forward_to_each_other_on_one_pmd() {
    let split_cfg = LoopGuestConfig { split_header: true, ..LoopGuestConfig::default() };
    let mut split = LoopGuest::new(split_cfg);
    let mut packed = LoopGuest::new(jumbo_mergeable());
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    let mut pmd = Pmd::new(Channel::new(e, Policy::default()), PacketPool::new(512, 9216));
    let cfg = TrafficConfig { min_len: 64, max_len: 9000, budget: Some(2000), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let a = pmd.add_port(Box::new(vhost_port("split", &split, true)));
    let b = pmd.add_port(Box::new(vhost_port("packed", &packed, true)));
    pmd.connect(t, a);
    pmd.connect(a, b);
    pmd.connect(b, t);
    let deadline = Instant::now() + Duration::from_secs(60);
    while traffic(&pmd, t).received() < 2000 && traffic(&pmd, t).first_error().is_none() {
        assert!(Instant::now() < deadline, "loop stalled: {:?}", pmd.port_stats());
        pmd.run_once();
        split.poll();
        packed.poll();
    }
    assert_eq!(traffic(&pmd, t).first_error(), None);
    assert_eq!(traffic(&pmd, t).received(), 2000);
    assert!(split.looped() >= 2000 && packed.looped() >= 2000);
    let port = pmd.port(b).as_any().downcast_ref::<VhostPort>().unwrap();
    assert!(port.north().queue().is_packed() && port.south().queue().is_packed());
    pmd.stop();
    assert_eq!(pmd.pool().available(), pmd.pool().capacity(), "packet buffers leaked");
}

/// A packed guest whose TX ring says NEXT in every slot: its port breaks with a typed error, the
/// switch does not panic, nothing is written into its memory, and a packed guest on the same PMD
/// keeps forwarding every packet intact.
#[test]
fn a_hostile_packed_guest_breaks_only_its_own_port() {
    let mut good = LoopGuest::new(jumbo_mergeable());
    let bad_g = TestGuest::new();
    let bad_tx = bad_g.add_queue(16, PACKED);
    let bad_rx = bad_g.add_queue(16, PACKED);
    let a = bad_g.alloc(64, 8);
    let (_, avail) = bad_tx.packed_next();
    for slot in (0..16).rev() {
        let d = RawPackedDesc { addr: a, len: 64, id: 0, flags: DescFlags::NEXT.bits() | avail };
        bad_tx.write_packed_desc(&bad_g, slot, d);
    }
    let ch = Channel::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), Policy::default());
    let mut pmd = Pmd::new(ch, PacketPool::new(512, 9216));
    let cfg = TrafficConfig { budget: Some(2000), ..TrafficConfig::fixed(700) };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(vhost_port("good", &good, true)));
    let bad = VhostPort::new(
        "bad",
        Northbound::new(bad_rx.virtqueue(&bad_g), HDR, true, Notifier::Polling),
        Southbound::new(bad_tx.virtqueue(&bad_g), HDR, Notifier::Polling),
    );
    // Taking the queues wrote their device event areas (no kicks, please); the bad chain writes
    // nothing.
    assert_eq!(bad_tx.device_event_flags(&bad_g), 1, "RING_EVENT_FLAGS_DISABLE: kicks turned off");
    let before = bad_g.snapshot();
    let b = pmd.add_port(Box::new(bad));
    pmd.connect(t, v);
    pmd.connect(v, t);
    pmd.connect(b, v);
    let deadline = Instant::now() + Duration::from_secs(60);
    while traffic(&pmd, t).received() < 2000 {
        assert!(Instant::now() < deadline, "good guest starved: {:?}", pmd.port_stats());
        pmd.run_once();
        good.poll();
    }
    assert_eq!(traffic(&pmd, t).first_error(), None);
    let bad_port = pmd.port(b).as_any().downcast_ref::<VhostPort>().unwrap();
    assert_eq!(bad_port.south().queue().broken(), Some(VirtqError::ChainTooLong { limit: 16 }));
    assert!(bad_port.last_error().is_some());
    assert_eq!(bad_g.snapshot(), before, "nothing written into the hostile guest's memory");
}

/// A packed guest that disables notifications in its driver event area gets none; one that
/// leaves them enabled gets them.
#[test]
fn packed_notifications_follow_the_driver_event_area() {
    for suppress in [false, true] {
        let g = TestGuest::new();
        let mut rxd = g.add_queue(64, PACKED);
        if suppress {
            rxd.set_driver_event(&g, EVENT_FLAG_DISABLE, 0, true);
        }
        for _ in 0..8 {
            rxd.post_rx(&g, 2048, 1);
        }
        let mut north = Northbound::new(rxd.virtqueue(&g), HDR, true, Notifier::Polling);
        let chan = Channel::new(MemcpyEngine::default(), Policy::default());
        let mut pool = PacketPool::new(8, 2048);
        let mut burst = Burst::new();
        for _ in 0..8 {
            let mut p = pool.alloc().unwrap();
            pool.set_len(&mut p, 100);
            burst.push(p);
        }
        north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap();
        chan.progress();
        north.complete(&chan, &mut pool).unwrap();
        let s = north.stats();
        assert_eq!(s.packets, 8);
        assert_eq!((s.notifications > 0, s.notifications_suppressed > 0), (!suppress, suppress));
    }
}

/// Without enough packed RX buffers for a packet that needs two, the buffer taken for it is
/// rewound (not used) and the packet handed back.
#[test]
fn packed_guest_without_buffers_pushes_back() {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, PACKED);
    let two = [rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)];
    let mut north = Northbound::new(rxd.virtqueue(&g), HDR, true, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(8, 4096);
    let mut burst = Burst::new();
    for len in [100, 3000, 100] {
        let mut p = pool.alloc().unwrap();
        pool.set_len(&mut p, len);
        burst.push(p);
    }
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 1);
    assert_eq!(burst.len(), 2);
    assert_eq!(north.stats().no_buffers, 1);
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    assert_eq!(rxd.pop_used(&g).map(|u| u.id), Some(two[0] as u32));
    assert_eq!(rxd.pop_used(&g), None, "the buffer taken for packet 2 was rewound, not used");
    // A third buffer arrives: packet 2 now spreads over the rewound buffer and the new one.
    let third = rxd.post_rx(&g, 2048, 1);
    north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap();
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    let used: Vec<_> = std::iter::from_fn(|| rxd.pop_used(&g)).collect();
    assert_eq!(used.iter().map(|u| u.id).collect::<Vec<_>>(), vec![two[1] as u32, third as u32]);
    assert_eq!(used.iter().map(|u| u.len).sum::<u32>(), 3000 + HDR as u32);
    for p in burst {
        pool.free(p);
    }
}

/// Northbound into a packed guest whose queues log dirty pages, then southbound out of it: every
/// byte of guest memory the device changed is on a page the log marked.
#[test]
fn packed_dirty_log_covers_every_device_write() {
    for feats in [PACKED | RingFeatures::INDIRECT_DESC, PACKED | RingFeatures::INDIRECT_DESC | RingFeatures::IN_ORDER] {
        dirty_log_covers_every_device_write(feats);
    }
}

fn dirty_log_covers_every_device_write(feats: RingFeatures) {
    use std::sync::Arc;
    use vswitch_datapath::testguest::GUEST_BASE;
    use vswitch_datapath::DirtyLog;
    let g = TestGuest::new();
    let mut rx = g.add_queue(256, feats);
    let mut tx = g.add_queue(256, feats);
    for _ in 0..200 {
        rx.post_rx(&g, 1024, 1);
    }
    for i in 0..50u8 {
        let mut f = vec![0u8; HDR];
        f.extend(vec![i; 100 + i as usize * 20]);
        tx.post_tx(&g, &f, 2, i % 2 == 0);
    }
    let log = Arc::new(DirtyLog::anonymous(((GUEST_BASE + (4 << 20)) / 4096) + 1).unwrap());
    let (mut rxq, mut txq) = (rx.virtqueue(&g), tx.virtqueue(&g));
    rxq.set_dirty_log(Some(log.clone())).unwrap();
    txq.set_dirty_log(Some(log.clone())).unwrap();
    let port = VhostPort::new(
        "logged",
        Northbound::new(rxq, HDR, true, Notifier::Polling),
        Southbound::new(txq, HDR, Notifier::Polling),
    );
    let before = g.snapshot();
    let e = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), FaultConfig::default());
    let mut pmd = Pmd::new(Channel::new(e, Policy::offload_all()), PacketPool::new(512, 9216));
    let cfg = TrafficConfig { min_len: 64, max_len: 4000, budget: Some(60), verify_payload: true };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(port));
    pmd.connect(t, v);
    pmd.connect(v, t);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pmd.port(v).stats().tx_packets < 60 || pmd.port(v).stats().rx_packets < 50 {
        assert!(Instant::now() < deadline, "traffic stalled: {:?}", pmd.port_stats());
        pmd.run_once();
    }
    pmd.stop();
    let after = g.snapshot();
    let mut changed = 0u64;
    for (i, (b, a)) in before[0].iter().zip(&after[0]).enumerate() {
        if a != b {
            let gpa = GUEST_BASE + i as u64;
            changed += 1;
            assert!(log.is_marked(gpa), "guest byte {gpa:#x} changed but its page is not in the dirty log");
        }
    }
    assert!(changed > 60 * 64, "the device wrote the packets ({changed} bytes changed)");
    assert!(log.is_marked(rx.config().desc_table) && log.is_marked(tx.config().desc_table), "rings logged");
}

/// With `VIRTIO_F_IN_ORDER`, a packed TX queue returns each published batch of chains as one
/// used descriptor: at the batch's first slot, with the buffer id of its last chain (the packed
/// ring's "In-order use of descriptors"). The slots of the other chains are left as the driver wrote them, and a driver that
/// walks the batch (the test guest does, as DPDK's virtio-user) gets every buffer back in order,
/// a malformed chain in the middle included. Without the feature every chain gets its own.
#[test]
fn in_order_packed_tx_returns_each_batch_as_one_used_descriptor() {
    for in_order in [true, false] {
        let base = PACKED | RingFeatures::INDIRECT_DESC;
        let feats = if in_order { base | RingFeatures::IN_ORDER } else { base };
        let g = TestGuest::new();
        let mut tx = g.add_queue(64, feats);
        let mut posted = Vec::new();
        let mut slots = Vec::new();
        for i in 0..12u8 {
            slots.push(tx.packed_next().0);
            let mut frame = vec![0u8; HDR];
            frame.extend(vec![i; 60 + i as usize * 10]);
            posted.push(if i == 5 {
                // Shorter than the header: malformed, returned unused in its place.
                tx.post_tx(&g, &[0u8; 4], 1, false)
            } else {
                tx.post_tx(&g, &frame, 1 + (i as usize % 3), i % 4 == 3)
            });
        }
        let driver_wrote: Vec<RawPackedDesc> = (0..64).map(|s| tx.read_packed_desc(&g, s)).collect();
        let mut south = Southbound::new(tx.virtqueue(&g), HDR, Notifier::Polling);
        let chan = Channel::new(LazyEngine::new(64, 5), Policy::offload_all());
        let mut pool = PacketPool::new(16, 2048);
        let mut out = Burst::new();
        // Two publishes: 7 chains, then 5.
        for n in [7, 5] {
            assert_eq!(south.dequeue_burst(&chan, &mut pool, n).unwrap(), n);
            chan.drain();
            assert_eq!(south.complete(&chan, &mut pool, &mut out, 32).unwrap(), n);
        }
        assert_eq!(out.len(), 11, "every well-formed packet forwarded");
        let used_at = |slot: u16| {
            let d = tx.read_packed_desc(&g, slot);
            (d.flags & (1 << 15) != 0).then_some(d.id)
        };
        let written: Vec<(usize, u16)> =
            slots.iter().enumerate().filter_map(|(i, &s)| used_at(s).map(|id| (i, id))).collect();
        if in_order {
            assert_eq!(written, vec![(0, posted[6]), (7, posted[11])], "one used descriptor per publish");
            // Every other slot, the chains' later slots included, is as the driver wrote it.
            for s in (0..64).filter(|&s| s != slots[0] && s != slots[7]) {
                assert_eq!(tx.read_packed_desc(&g, s), driver_wrote[s as usize], "slot {s} written");
            }
        } else {
            assert_eq!(written.len(), 12, "a used descriptor per chain");
        }
        let ids: Vec<u16> = std::iter::from_fn(|| tx.pop_used(&g)).map(|u| u.id as u16).collect();
        assert_eq!(ids, posted, "every buffer back, in order");
        assert_eq!(tx.pop_used(&g), None);
        for (i, p) in out.into_iter().enumerate() {
            let i = if i >= 5 { i + 1 } else { i } as u8;
            assert_eq!(pool.data(&p), &vec![i; 60 + i as usize * 10][..], "packet {i}");
            pool.free(p);
        }
    }
}
