//! The asynchronous vhost datapath end to end with an in-process guest, on every engine:
//! payloads byte-identical, order preserved, nothing lost while the guest keeps up, injected DMA
//! errors invisible to the guest, hostile chains returned without harming other ports, and no copy
//! landing after a queue is stopped.

use std::time::{Duration, Instant};

use copy_engine::conformance::LazyEngine;
use copy_engine::fault::{FaultConfig, FaultEngine};
use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::loopguest::{LoopGuest, LoopGuestConfig};
use vswitch_datapath::testguest::TestGuest;
use vswitch_datapath::{
    Burst, Northbound, Notifier, PacketPool, Pmd, Port, PortCtx, RingFeatures, Southbound, TrafficConfig, TrafficPort,
    VhostPort,
};

const HDR: usize = 12;

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

/// Runs `packets` packets of `min..=max` bytes through traffic -> guest -> traffic and checks the
/// sink's verdict. Returns the PMD for further checks.
fn pvp<E: CopyEngine>(
    chan: Channel<E>,
    gcfg: LoopGuestConfig,
    min: usize,
    max: usize,
    packets: u64,
) -> (Pmd<E>, LoopGuest) {
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
    (pmd, guest)
}

fn jumbo_mergeable() -> LoopGuestConfig {
    LoopGuestConfig { split_header: true, ..LoopGuestConfig::default() }
}

fn jumbo_single_buffer() -> LoopGuestConfig {
    LoopGuestConfig {
        mergeable: false,
        buf_len: 9216 + 64,
        buffers: 128,
        queue_size: 128,
        ..LoopGuestConfig::default()
    }
}

#[test]
fn random_sizes_round_trip_intact_on_memcpy_engine() {
    let ch = Channel::new(MemcpyEngine::default(), Policy::default());
    pvp(ch, jumbo_mergeable(), 64, 9000, 3000);
}

#[test]
fn random_sizes_round_trip_intact_on_worker_engine() {
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    let (pmd, _) = pvp(Channel::new(e, Policy::default()), jumbo_mergeable(), 64, 9000, 3000);
    let s = pmd.channel().stats();
    assert!(s.offloaded > 0 && s.cpu_small > 0, "both engine and CPU paths used: {s:?}");
}

#[test]
fn random_sizes_round_trip_intact_without_mergeable_buffers() {
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    pvp(Channel::new(e, Policy::offload_all()), jumbo_single_buffer(), 64, 9000, 2000);
}

#[test]
fn lazy_engine_completions_keep_packet_order() {
    // The lazy engine retires a few ops per poll: packets are in flight over many iterations.
    let ch = Channel::new(LazyEngine::new(256, 7), Policy::offload_all());
    pvp(ch, jumbo_mergeable(), 64, 4000, 2000);
}

#[test]
fn injected_dma_errors_and_ring_full_change_nothing_the_guest_sees() {
    let cfg = FaultConfig { error_rate: 0.01, ring_full_every: 40, ring_full_burst: 6, delay_polls: 2, seed: 77 };
    let e = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), cfg);
    let (pmd, _) = pvp(Channel::new(e, Policy::default()), jumbo_mergeable(), 64, 9000, 3000);
    let s = pmd.channel().stats();
    let injected = pmd.channel().with_engine(|f| f.injected());
    assert!(injected.errors > 0 && injected.ring_full > 0, "nothing injected: {injected:?}");
    assert_eq!(s.cpu_retry, injected.errors, "every failed copy redone by the CPU");
    assert!(s.cpu_ring_full >= injected.ring_full);
}

/// An engine that lags (each op takes 40 polls): adaptive offload sends the copies to the CPU,
/// and southbound then takes its copy-at-once path with an asynchronous engine, probes and CPU
/// copies mixed: every packet arrives intact, in order. (Which path southbound took is not
/// observable here; the test proves the order on it, not that it was chosen.)
#[test]
fn a_lagging_engine_hands_its_copies_to_the_cpu_without_reordering() {
    let cfg = FaultConfig { delay_polls: 40, ..FaultConfig::default() };
    let e = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), cfg);
    let adaptive = copy_engine::Adaptive { stall_polls: 4, probe_every: 16, max_probe_every: 64 };
    let policy = Policy::default().with_adaptive(Some(adaptive));
    let (pmd, _) = pvp(Channel::new(e, policy), jumbo_mergeable(), 300, 4000, 3000);
    let s = pmd.channel().stats();
    assert!(s.adaptive_to_cpu > 0 && s.cpu_adaptive > 1000, "the channel went to the CPU: {s:?}");
    assert!(s.offloaded > 0, "probes (and copies before the first stall) went to the engine: {s:?}");
}

#[test]
fn push_back_policy_never_loses_a_packet() {
    let cfg = FaultConfig { ring_full_every: 5, ring_full_burst: 3, ..FaultConfig::default() };
    let e = FaultEngine::new(MemcpyEngine::new(64), cfg);
    let policy = Policy::offload_all().with_ring_full(copy_engine::OnRingFull::PushBack);
    let (pmd, _) = pvp(Channel::new(e, policy), jumbo_mergeable(), 64, 3000, 1500);
    assert!(pmd.channel().stats().pushed_back > 0);
}

/// A guest that posts a TX chain shorter than the net header, one whose header asks for a
/// checksum beyond the packet, or one longer than a packet buffer: the chain comes back unused,
/// nothing is forwarded, and the queue goes on serving the next chain. On a synchronous engine
/// (chain-by-chain copies) and an asynchronous one (a group's copies gathered into one burst).
#[test]
fn tx_header_claiming_more_than_the_chain_is_returned_unused() {
    tx_header_case(Channel::new(MemcpyEngine::default(), Policy::default()));
    let never_refuses = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    tx_header_case(Channel::new(Refusing::new(false, never_refuses), Policy::default()));
}

fn tx_header_case<E: CopyEngine>(chan: Channel<E>) {
    let g = TestGuest::new();
    let mut txd = g.add_queue(16, RingFeatures::empty());
    let south = Southbound::new(txd.device(&g), HDR, Notifier::Polling);
    let rxd = g.add_queue(16, RingFeatures::empty());
    let north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let mut port = VhostPort::new("hostile", north, south);
    let mut pool = PacketPool::new(16, 2048);

    let short = txd.post_tx(&g, &[0u8; 6], 1, false);
    let mut bad_csum = [0u8; HDR + 20];
    bad_csum[0] = 1; // NEEDS_CSUM
    bad_csum[6..8].copy_from_slice(&18u16.to_le_bytes()); // csum_start
    bad_csum[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: 18 + 6 + 2 > 20
    let csum = txd.post_tx(&g, &bad_csum, 1, false);
    // One segment (the inline copy path) of 2049 payload bytes: one more than a buffer holds.
    let huge = txd.post_tx(&g, &vec![0u8; HDR + 2049], 1, false);
    let mut good = vec![0u8; HDR + 100];
    good[HDR..].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let ok = txd.post_tx(&g, &good, 2, false);

    let mut out = Burst::new();
    let mut cx = PortCtx { chan: &chan, pool: &mut pool };
    for _ in 0..4 {
        Port::rx_burst(&mut port, &mut cx, &mut out, 32);
        chan.progress();
    }
    assert_eq!(out.len(), 1, "only the well-formed chain becomes a packet");
    assert_eq!(cx.pool.data(&out[0]), &good[HDR..]);
    let used: Vec<_> = std::iter::from_fn(|| txd.pop_used(&g)).collect();
    assert_eq!(used.iter().map(|u| u.id as u16).collect::<Vec<_>>(), vec![short, csum, huge, ok], "returned in order");
    assert_eq!(port.south().stats().bad_chains, 3);
    assert!(!port.south().queue().is_broken(), "a malformed header is the guest's loss, not a broken queue");
    for p in out.drain(..) {
        cx.pool.free(p);
    }
}

/// An engine that accepts `allow` more ops, then refuses every op (`NotRunning`, a stopped
/// device) until `allow` is raised again. `sync` says whether it claims [`Capabilities::SYNC`]
/// (the memcpy engine under it is): the southbound path copies chain by chain for a synchronous
/// engine and gathers a group's copies into one burst for an asynchronous one.
struct Refusing {
    inner: MemcpyEngine,
    info: copy_engine::EngineInfo,
    allow: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Refusing {
    fn new(sync: bool, allow: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        let inner = MemcpyEngine::default();
        let mut info = inner.info().clone();
        info.capabilities.set(copy_engine::Capabilities::SYNC, sync);
        Refusing { inner, info, allow }
    }
}

impl CopyEngine for Refusing {
    fn info(&self) -> &copy_engine::EngineInfo {
        &self.info
    }
    fn burst_capacity(&self) -> usize {
        self.inner.burst_capacity()
    }
    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: copy_engine::OpFlags,
    ) -> Result<copy_engine::Ticket, copy_engine::EnqueueError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.allow.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_err() {
            return Err(copy_engine::EnqueueError::NotRunning);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.inner.enqueue(src, dst, len, flags) }
    }
    fn submit(&mut self) {
        self.inner.submit()
    }
    fn reap(&mut self, max: usize, failed: &mut [copy_engine::FailedOp]) -> copy_engine::Reaped {
        self.inner.reap(max, failed)
    }
    fn next_ticket(&self) -> copy_engine::Ticket {
        self.inner.next_ticket()
    }
    fn retired(&self) -> copy_engine::Ticket {
        self.inner.retired()
    }
    fn stats(&self) -> copy_engine::EngineStats {
        self.inner.stats()
    }
    fn reset_stats(&mut self) {
        self.inner.reset_stats()
    }
}

/// A device that stops accepting ops in the middle of a burst of TX chains: the chains whose
/// copies it took are forwarded, the chain whose copy was refused comes back unused (counted as an
/// engine error) as soon as its earlier copies are done, the chains after it stay with the guest,
/// untouched, and are forwarded intact, in order, once the device runs again. For both
/// southbound paths (chain by chain, and one burst per group), with the refusal on the first
/// chain and in the middle of the group, and with groups where every other packet is copied by
/// the CPU (below the threshold), so the refusal comes while a gathered burst is handed over
/// before such a packet.
#[test]
fn a_refused_copy_mid_burst_gives_the_later_chains_back() {
    for sync in [true, false] {
        for mixed in [false, true] {
            for accepted in [0usize, 1, 2] {
                refused_copy_case(sync, mixed, accepted);
            }
        }
    }
}

fn refused_copy_case(sync: bool, mixed: bool, accepted: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let case = format!("sync {sync}, mixed {mixed}, {accepted} accepted");
    let g = TestGuest::new();
    let mut txd = g.add_queue(16, RingFeatures::empty());
    let mut south = Southbound::new(txd.device(&g), HDR, Notifier::Polling);
    let allow = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(accepted));
    // Mixed: the odd packets are below the CPU threshold and never reach the engine.
    let policy = if mixed { Policy::offload_all().with_cpu_below(100) } else { Policy::offload_all() };
    let chan = Channel::new(Refusing::new(sync, allow.clone()), policy);
    let mut pool = PacketPool::new(16, 2048);
    let payload = |i: u8| {
        let len = if mixed && i % 2 == 1 { 50 } else { 200 };
        let mut v = vec![0u8; HDR + len];
        v[HDR..].iter_mut().enumerate().for_each(|(k, b)| *b = i ^ k as u8);
        v
    };
    let refused = if mixed { 2 * accepted } else { accepted };
    let heads: Vec<u16> = (0..6).map(|i| txd.post_tx(&g, &payload(i as u8), 1, false)).collect();

    // The device stops after `accepted` copies: the next engine copy is refused, the chains after
    // its own stay available.
    let r = south.dequeue_burst(&chan, &mut pool, 32);
    assert!(matches!(r, Err(vswitch_datapath::VhostError::Engine(_))), "{case}: {r:?}");
    assert_eq!(south.stats().engine_errors, 1, "{case}");
    assert_eq!(south.queue().in_flight(), refused as u16 + 1, "{case}: only up to the refused chain is taken");
    assert!(!south.queue().is_broken(), "{case}");

    // Without another op: the chains before the refused one are forwarded, it is returned.
    let mut out = Burst::new();
    chan.progress();
    south.complete(&chan, &mut pool, &mut out, 32).unwrap();
    assert_eq!(out.len(), refused, "{case}: the chains before the refused one");
    let used: Vec<u16> = std::iter::from_fn(|| txd.pop_used(&g)).map(|u| u.id as u16).collect();
    assert_eq!(used, heads[..refused + 1], "{case}: the refused chain returned after them");

    allow.store(usize::MAX, Relaxed);
    for _ in 0..4 {
        south.dequeue_burst(&chan, &mut pool, 32).unwrap();
        chan.progress();
        south.complete(&chan, &mut pool, &mut out, 32).unwrap();
    }
    assert_eq!(out.len(), 5, "{case}: every chain but the refused one is forwarded");
    let sent: Vec<u8> = (0..6u8).filter(|&i| i as usize != refused).collect();
    for (p, &i) in out.iter().zip(&sent) {
        assert_eq!(pool.data(p), &payload(i)[HDR..], "{case}: packet {i} intact and in order");
    }
    let used: Vec<u16> = std::iter::from_fn(|| txd.pop_used(&g)).map(|u| u.id as u16).collect();
    assert_eq!(used, heads[refused + 1..], "{case}: every other chain returned, in order");
    assert_eq!(pool.available(), 16 - out.len(), "{case}: the refused and given-back chains' buffers are free");
    for p in out.drain(..) {
        pool.free(p);
    }
}

/// One guest loops its descriptor chain; its port breaks, the switch does not panic, and a second
/// guest on the same PMD keeps forwarding every packet intact.
#[test]
fn a_hostile_guest_breaks_only_its_own_port() {
    let good_cfg = LoopGuestConfig::default();
    let mut good = LoopGuest::new(good_cfg);
    let bad_g = TestGuest::new();
    let mut bad_tx = bad_g.add_queue(16, RingFeatures::empty());
    let bad_rx = bad_g.add_queue(16, RingFeatures::empty());
    // Descriptor 0 -> 1 -> 0: a loop.
    let a = bad_g.alloc(64, 8);
    use vswitch_datapath::virtio::desc::{DescFlags, RawDescriptor};
    bad_tx.write_desc(&bad_g, 0, RawDescriptor { addr: a, len: 64, flags: DescFlags::NEXT.bits(), next: 1 });
    bad_tx.write_desc(&bad_g, 1, RawDescriptor { addr: a, len: 64, flags: DescFlags::NEXT.bits(), next: 0 });
    bad_tx.make_available(&bad_g, 0);

    let ch = Channel::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), Policy::default());
    let mut pmd = Pmd::new(ch, PacketPool::new(512, 2048));
    let cfg = TrafficConfig { budget: Some(2000), ..TrafficConfig::fixed(700) };
    let t = pmd.add_port(Box::new(TrafficPort::new("traffic", cfg)));
    let v = pmd.add_port(Box::new(vhost_port("good", &good, true)));
    let bad = VhostPort::new(
        "bad",
        Northbound::new(bad_rx.device(&bad_g), HDR, true, Notifier::Polling),
        Southbound::new(bad_tx.device(&bad_g), HDR, Notifier::Polling),
    );
    // Taking the queues wrote their used flags (no kicks, please); the chain loop writes nothing.
    assert_eq!(bad_tx.used_flags(&bad_g), 1, "VIRTQ_USED_F_NO_NOTIFY: kicks turned off");
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
    assert!(bad_port.south().queue().is_broken(), "the looping queue is broken");
    assert!(bad_port.last_error().is_some());
    assert_eq!(bad_g.snapshot(), before, "nothing written into the hostile guest's memory");
}

/// Stopping a queue with copies in flight (a slow engine) waits for them: after `stop` returns,
/// the guest's memory no longer changes, and every packet it was given is complete, in order.
/// Split and packed rings.
#[test]
fn no_copy_lands_after_stop_returns() {
    let packed = RingFeatures::PACKED.union(RingFeatures::EVENT_IDX);
    for features in [RingFeatures::empty(), packed] {
        let g = TestGuest::new();
        let mut rxd = g.add_queue(64, features);
        for _ in 0..32 {
            rxd.post_rx(&g, 2048, 1);
        }
        let north = Northbound::new(rxd.virtqueue(&g), HDR, true, Notifier::Polling);
        let txd = g.add_queue(16, features);
        let south = Southbound::new(txd.virtqueue(&g), HDR, Notifier::Polling);
        let mut port = VhostPort::new("p", north, south);
        let cfg = FaultConfig { delay_polls: 50, ..FaultConfig::default() };
        let engine = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), cfg);
        let chan = Channel::new(engine, Policy::offload_all());
        let mut pool = PacketPool::new(64, 2048);
        let mut cx = PortCtx { chan: &chan, pool: &mut pool };
        let mut burst = Burst::new();
        for i in 0..32u8 {
            let mut p = cx.pool.alloc().unwrap();
            cx.pool.set_len(&mut p, 1500);
            cx.pool.data_mut(&mut p).fill(i + 1);
            burst.push(p);
        }
        assert_eq!(Port::tx_burst(&mut port, &mut cx, &mut burst), 32);
        chan.submit();
        assert!(chan.in_flight() > 0, "copies still in flight before stop ({features:?})");
        Port::stop(&mut port, &mut cx);
        let after_stop = g.snapshot();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(g.snapshot(), after_stop, "guest memory changed after stop returned ({features:?})");
        let used: Vec<_> = std::iter::from_fn(|| rxd.pop_used(&g)).collect();
        assert_eq!(used.len(), 32);
        for (i, u) in used.iter().enumerate() {
            let data = rxd.read_written(&g, u.id as u16, u.len as usize);
            assert!(data[HDR..].iter().all(|&b| b == i as u8 + 1), "packet {i} incomplete at stop ({features:?})");
        }
        assert_eq!(cx.pool.available(), 64, "every packet freed");
    }
}

/// A guest that sets NO_INTERRUPT gets no notification; one that asks gets them.
#[test]
fn notifications_follow_the_guests_suppression() {
    for suppress in [false, true] {
        let g = TestGuest::new();
        let mut rxd = g.add_queue(64, RingFeatures::empty());
        rxd.set_no_interrupt(&g, suppress);
        for _ in 0..8 {
            rxd.post_rx(&g, 2048, 1);
        }
        let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
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

/// Without guest buffers the northbound path hands packets back (push back) instead of dropping.
#[test]
fn guest_without_buffers_pushes_back() {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let two = [rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)];
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(8, 4096);
    let mut burst = Burst::new();
    for len in [100, 3000, 100] {
        let mut p = pool.alloc().unwrap();
        pool.set_len(&mut p, len);
        burst.push(p);
    }
    // Packet 1 fits one buffer; packet 2 needs two (3012 bytes) but only one is left: it and
    // packet 3 stay with the caller, and the half-taken buffer is given back.
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 1);
    assert_eq!(burst.len(), 2);
    assert_eq!(north.stats().no_buffers, 1);
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    assert_eq!(rxd.pop_used(&g).map(|u| u.id as u16), Some(two[0]));
    assert_eq!(rxd.pop_used(&g), None, "the buffer taken for packet 2 was rewound, not used");
    for p in burst {
        pool.free(p);
    }
}

/// The RX run stops at a buffer too short for its packet, so that buffer is not taken and given
/// back: without mergeable buffers the full walk returns it unused and drops the packet that does
/// not fit (counted), and the packets around it land. When the guest's buffers run out in the run,
/// the rest stay with the caller, counted once.
#[test]
fn rx_run_stops_at_a_short_buffer_and_at_the_ring_end() {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let heads = [rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 512, 1), rxd.post_rx(&g, 2048, 1)];
    let mut north = Northbound::new(rxd.device(&g), HDR, false, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(8, 4096);
    let lens = [100, 1000, 300, 400];
    let mut burst = burst_of(&mut pool, &lens);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let last = burst[3].index();
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 3);
    assert_eq!(burst.iter().map(|p| p.index()).collect::<Vec<_>>(), [last], "no buffer left for the last");
    assert_eq!((north.stats().bad_chains, north.stats().no_buffers), (1, 1));
    chan.progress();
    assert_eq!(north.complete(&chan, &mut pool).unwrap(), 3);
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, [(heads[0], 112), (heads[1], 0), (heads[2], 312)]);
    assert_eq!(received(&rxd, &g, heads[0], HDR + 100).1, want[0]);
    assert_eq!(received(&rxd, &g, heads[2], HDR + 300).1, want[2]);
    assert_eq!(north.stats().packets, 2);
    // A buffer for the last packet, and it goes.
    let h = rxd.post_rx(&g, 2048, 1);
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 1);
    chan.progress();
    assert_eq!(north.complete(&chan, &mut pool).unwrap(), 1);
    assert_eq!(rxd.pop_used(&g).map(|u| (u.id as u16, u.len)), Some((h, 412)));
    assert_eq!(received(&rxd, &g, h, HDR + 400).1, want[3]);
    assert_eq!(pool.available(), 8, "every packet freed");
}

/// Packets of one burst, `lens` long, filled with a pattern of their index.
fn burst_of(pool: &mut PacketPool, lens: &[usize]) -> Burst {
    lens.iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut p = pool.alloc().unwrap();
            pool.set_len(&mut p, len);
            pool.data_mut(&mut p).iter_mut().enumerate().for_each(|(k, b)| *b = (i * 31 + k) as u8);
            p
        })
        .collect()
}

/// What the guest finds under `head`: the header's num_buffers and the packet bytes after it.
fn received(rxd: &vswitch_datapath::testguest::DriverQueue, g: &TestGuest, head: u16, len: usize) -> (u16, Vec<u8>) {
    let got = rxd.read_written(g, head, len);
    (u16::from_le_bytes([got[10], got[11]]), got[HDR..].to_vec())
}

/// One burst over every kind of RX chain at once: single-buffer chains (the fast path takes them
/// as a run), a packet that needs two of them (mergeable), a chain of two descriptors (the full
/// walk) and singles again. Every packet lands intact, with the right num_buffers, and the used
/// entries come back in posting order with the right lengths.
#[test]
fn rx_fast_path_and_full_walk_mix_in_one_burst() {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let mut heads = vec![rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)];
    heads.extend([rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)]); // packet 2: 3000 + 12 bytes
    heads.push(rxd.post_rx(&g, 1024, 2)); // packet 3: a two-descriptor chain
    heads.extend([rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)]);
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(16, 4096);
    let lens = [100, 200, 3000, 1500, 150, 60];
    let mut burst = burst_of(&mut pool, &lens);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 6);
    assert!(burst.is_empty());
    chan.progress();
    assert_eq!(north.complete(&chan, &mut pool).unwrap(), 6);
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    let lens_used = [112, 212, 2048, 3012 - 2048, 1512, 162, 72];
    assert_eq!(used, heads.iter().copied().zip(lens_used).collect::<Vec<_>>(), "posting order, exact lengths");
    for (i, (&head, &n)) in
        [heads[0], heads[1], heads[4], heads[5], heads[6]].iter().zip(&[0usize, 1, 3, 4, 5]).enumerate()
    {
        let (bufs, bytes) = received(&rxd, &g, head, HDR + lens[n]);
        assert_eq!((bufs, &bytes), (1, &want[n]), "packet {n} (chain {i})");
    }
    let first = rxd.read_written(&g, heads[2], 2048);
    let second = rxd.read_written(&g, heads[3], 3012 - 2048);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 2, "packet 2 spans two buffers");
    assert_eq!([&first[HDR..], &second[..]].concat(), want[2]);
    assert_eq!(north.stats().packets, 6);
    assert_eq!(pool.available(), 16, "every packet freed");
}

/// A hostile RX buffer in the middle of a run of good ones: a single writable descriptor whose
/// buffer runs past guest memory. The packets before it are taken, the queue breaks with the
/// typed error at that chain (the fast path leaves it to the full walk, which reports it), the
/// packets from it on stay with the caller, in order, and not one byte is written past the good
/// chains: the bad buffer ends in the guard page after the last region.
#[test]
fn a_hostile_rx_buffer_after_good_ones_breaks_the_queue_at_that_buffer() {
    use vswitch_datapath::virtio::desc::{DescFlags, RawDescriptor};
    use vswitch_datapath::{MemoryError, VhostError, VirtqError};
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let good = [rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)];
    let bad = rxd.post_rx(&g, 2048, 1);
    rxd.post_rx(&g, 2048, 1);
    let end = {
        let r = g.memory().regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    rxd.write_desc(&g, bad, RawDescriptor { addr: end - 10, len: 100, flags: DescFlags::WRITE.bits(), next: 0 });
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let tail = |g: &TestGuest| {
        let mut b = [0u8; 10];
        g.memory().read(end - 10, &mut b).unwrap();
        b
    };
    let before = tail(&g);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(16, 4096);
    let mut burst = burst_of(&mut pool, &[100, 200, 300, 400]);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let rest: Vec<u32> = burst[2..].iter().map(|p| p.index()).collect();
    let expected = VirtqError::Memory(MemoryError::Unmapped { addr: end });
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst), Err(VhostError::Ring(expected)));
    assert_eq!(north.queue().broken(), Some(expected));
    assert_eq!(north.queue().in_flight(), 2, "only the two good chains were taken");
    assert_eq!(burst.iter().map(|p| p.index()).collect::<Vec<_>>(), rest, "the rest handed back, in order");
    chan.progress();
    assert_eq!(tail(&g), before, "nothing written into the hostile buffer");
    for (n, &head) in good.iter().enumerate() {
        assert_eq!(received(&rxd, &g, head, HDR + want[n].len()), (1, want[n].clone()), "packet {n}");
    }
    north.clear(&chan, &mut pool);
    for p in burst {
        pool.free(p);
    }
    assert_eq!(pool.available(), 16);
}

/// The copy engine refuses an op in the middle of a burst of single-buffer RX chains (a stopped
/// device): the packets before it are delivered, the refused packet's chain comes back with length
/// 0 (nothing delivered) after them, and the packets after it stay with the caller with their
/// chains untaken, to be delivered intact, in order, once the device runs again.
#[test]
fn a_refused_copy_mid_burst_hands_the_later_packets_back() {
    use std::sync::atomic::Ordering::Relaxed;
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let heads: Vec<u16> = (0..6).map(|_| rxd.post_rx(&g, 2048, 1)).collect();
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let allow = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let chan = Channel::new(Refusing::new(false, allow.clone()), Policy::offload_all());
    let mut pool = PacketPool::new(16, 4096);
    let lens = [300, 400, 500, 600, 700, 800];
    let mut burst = burst_of(&mut pool, &lens);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let r = north.enqueue_burst(&chan, &mut pool, &mut burst);
    assert!(matches!(r, Err(vswitch_datapath::VhostError::Engine(_))), "{r:?}");
    assert_eq!(north.stats().engine_errors, 1);
    assert_eq!(burst.len(), 3, "the packets after the refused one stay with the caller");
    assert_eq!(north.queue().in_flight(), 3, "their chains were given back");
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, vec![(heads[0], 312), (heads[1], 412), (heads[2], 0)]);
    allow.store(usize::MAX, Relaxed);
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 3);
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, vec![(heads[3], 612), (heads[4], 712), (heads[5], 812)]);
    for n in [0, 1, 3, 4, 5] {
        assert_eq!(received(&rxd, &g, heads[n], HDR + lens[n]), (1, want[n].clone()), "packet {n}");
    }
    assert_eq!(pool.available(), 16);
}

/// Jumbo frames into a guest's 2 KB mergeable RX buffers, every buffer a single-descriptor chain
/// (what Linux and DPDK post): each packet takes as many consecutive buffers as it and its header
/// need, on the memcpy and the worker engine. Every packet lands intact with the right
/// num_buffers, every used entry has its exact length, in posting order. A packet the guest's
/// buffers cannot cover yet stays with the caller and takes no buffer, also when the guest has
/// posted part of what it needs; once the rest is posted it lands whole.
#[test]
fn jumbo_packets_span_runs_of_mergeable_buffers() {
    jumbo_case(Channel::new(MemcpyEngine::default(), Policy::default()));
    jumbo_case(Channel::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), Policy::default()));
}

fn jumbo_case<E: CopyEngine>(chan: Channel<E>) {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(32, RingFeatures::empty());
    let heads: Vec<u16> = (0..12).map(|_| rxd.post_rx(&g, 2048, 1)).collect();
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let mut pool = PacketPool::new(16, 9216);
    let lens = [4000, 100, 9000, 2036, 6000, 3000];
    let spans = [2usize, 1, 5, 1, 3];
    let mut burst = burst_of(&mut pool, &lens);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let last = burst[5].index();
    let settle = |north: &mut Northbound, pool: &mut PacketPool, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut done = 0;
        while done < n && Instant::now() < deadline {
            chan.submit();
            chan.progress();
            done += north.complete(&chan, pool).unwrap();
        }
        assert_eq!(done, n);
    };
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 5);
    assert_eq!(burst.iter().map(|p| p.index()).collect::<Vec<_>>(), [last], "no buffer left for the last");
    assert_eq!(north.stats().no_buffers, 1);
    settle(&mut north, &mut pool, 5);
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    let mut expect = Vec::new();
    let mut at = 0;
    for (n, &span) in spans.iter().enumerate() {
        let mut left = HDR + lens[n];
        let mut bytes = Vec::new();
        for (k, &h) in heads[at..at + span].iter().enumerate() {
            let take = left.min(2048);
            expect.push((h, take as u32));
            let got = rxd.read_written(&g, h, take);
            if k == 0 {
                assert_eq!(u16::from_le_bytes([got[10], got[11]]) as usize, span, "packet {n}: num_buffers");
                bytes.extend_from_slice(&got[HDR..]);
            } else {
                bytes.extend_from_slice(&got);
            }
            left -= take;
        }
        assert_eq!(bytes, want[n], "packet {n} intact");
        at += span;
    }
    assert_eq!(used, expect, "every chain, in posting order, with its exact length");
    // One buffer of the two the last packet needs: it stays with the caller, the buffer untaken.
    let first = rxd.post_rx(&g, 2048, 1);
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 0);
    assert_eq!((burst.len(), north.queue().in_flight(), north.stats().no_buffers), (1, 0, 2));
    let second = rxd.post_rx(&g, 2048, 1);
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 1);
    settle(&mut north, &mut pool, 1);
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, [(first, 2048), (second, (HDR + 3000 - 2048) as u32)]);
    let got = [rxd.read_written(&g, first, 2048), rxd.read_written(&g, second, HDR + 3000 - 2048)];
    assert_eq!([&got[0][HDR..], &got[1][..]].concat(), want[5]);
    assert_eq!(north.stats().packets, 6);
    assert_eq!(pool.available(), 16, "every packet freed");
}

/// The engine refuses the second piece of a packet spread over two mergeable buffers (a stopped
/// device): the packet before it is delivered, both chains of the refused packet come back with
/// length 0 once the first piece retires, the packet after it stays with the caller, its buffer
/// untaken, and lands once the device runs again.
#[test]
fn a_refused_copy_inside_a_merged_packet_returns_all_its_chains_unused() {
    use std::sync::atomic::Ordering::Relaxed;
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let heads: Vec<u16> = (0..4).map(|_| rxd.post_rx(&g, 2048, 1)).collect();
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let allow = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let chan = Channel::new(Refusing::new(false, allow.clone()), Policy::offload_all());
    let mut pool = PacketPool::new(8, 4096);
    let lens = [300, 3000, 500];
    let mut burst = burst_of(&mut pool, &lens);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let r = north.enqueue_burst(&chan, &mut pool, &mut burst);
    assert!(matches!(r, Err(vswitch_datapath::VhostError::Engine(_))), "{r:?}");
    assert_eq!((north.stats().engine_errors, burst.len(), north.queue().in_flight()), (1, 1, 3));
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    let used: Vec<(u16, u32)> = std::iter::from_fn(|| rxd.pop_used(&g)).map(|u| (u.id as u16, u.len)).collect();
    assert_eq!(used, [(heads[0], 312), (heads[1], 0), (heads[2], 0)]);
    assert_eq!(received(&rxd, &g, heads[0], HDR + 300), (1, want[0].clone()));
    allow.store(usize::MAX, Relaxed);
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst).unwrap(), 1);
    chan.progress();
    north.complete(&chan, &mut pool).unwrap();
    assert_eq!(rxd.pop_used(&g).map(|u| (u.id as u16, u.len)), Some((heads[3], 512)));
    assert_eq!(received(&rxd, &g, heads[3], HDR + 500), (1, want[2].clone()));
    assert_eq!((north.stats().packets, pool.available()), (2, 8));
}

/// A hostile buffer inside the span of a packet that needs two mergeable buffers: the run stops
/// before it, the packet's good buffer goes back, and the full walk takes it again and reports
/// the bad one with the typed error; the queue breaks, the packet goes back to the caller, the
/// packet before it is delivered, and nothing is written into the bad buffer.
#[test]
fn a_hostile_buffer_inside_a_merged_packet_breaks_the_queue_there() {
    use vswitch_datapath::virtio::desc::{DescFlags, RawDescriptor};
    use vswitch_datapath::{MemoryError, VhostError, VirtqError};
    let g = TestGuest::new();
    let mut rxd = g.add_queue(16, RingFeatures::empty());
    let good = [rxd.post_rx(&g, 2048, 1), rxd.post_rx(&g, 2048, 1)];
    let bad = rxd.post_rx(&g, 2048, 1);
    let end = {
        let r = g.memory().regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    rxd.write_desc(&g, bad, RawDescriptor { addr: end - 10, len: 2048, flags: DescFlags::WRITE.bits(), next: 0 });
    let mut tail = [0u8; 10];
    g.memory().read(end - 10, &mut tail).unwrap();
    let mut north = Northbound::new(rxd.device(&g), HDR, true, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(8, 4096);
    let mut burst = burst_of(&mut pool, &[100, 3000]);
    let want: Vec<Vec<u8>> = burst.iter().map(|p| pool.data(p).to_vec()).collect();
    let second = burst[1].index();
    let expected = VirtqError::Memory(MemoryError::Unmapped { addr: end });
    assert_eq!(north.enqueue_burst(&chan, &mut pool, &mut burst), Err(VhostError::Ring(expected)));
    assert_eq!(north.queue().broken(), Some(expected));
    assert_eq!(burst.iter().map(|p| p.index()).collect::<Vec<_>>(), [second], "the spanning packet handed back");
    chan.progress();
    let mut after = [0u8; 10];
    g.memory().read(end - 10, &mut after).unwrap();
    assert_eq!(after, tail, "nothing written into the hostile buffer");
    assert_eq!(received(&rxd, &g, good[0], HDR + 100), (1, want[0].clone()));
    north.clear(&chan, &mut pool);
    for p in burst {
        pool.free(p);
    }
    assert_eq!(pool.available(), 8);
}

/// One TX ring over every kind of chain at once: single-buffer chains (the fast path takes them
/// as a run), a chain of three descriptors and an indirect one (the full walk) between them,
/// payloads on both sides of the CPU threshold. On the memcpy and the worker engine every packet
/// comes out intact and in order, and the chains go back in posting order.
#[test]
fn tx_fast_path_and_full_walk_mix_in_one_burst() {
    tx_mix_case(Channel::new(MemcpyEngine::default(), Policy::default()));
    tx_mix_case(Channel::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), Policy::default()));
}

fn tx_mix_case<E: CopyEngine>(chan: Channel<E>) {
    let g = TestGuest::new();
    let mut txd = g.add_queue(32, RingFeatures::INDIRECT_DESC);
    let mut south = Southbound::new(txd.device(&g), HDR, Notifier::Polling);
    let mut pool = PacketPool::new(32, 2048);
    // (payload bytes, descriptors, indirect)
    let shape = [(60, 1, false), (1500, 1, false), (700, 3, false), (64, 1, false), (1200, 1, false), (300, 2, true)];
    let shape: Vec<_> = shape.iter().chain(&[(90, 1, false), (1400, 1, false)]).copied().collect();
    let mut want = Vec::new();
    let mut heads = Vec::new();
    for (i, &(len, frags, indirect)) in shape.iter().enumerate() {
        let mut v = vec![0u8; HDR + len];
        v[HDR..].iter_mut().enumerate().for_each(|(k, b)| *b = (i * 7 + k) as u8);
        heads.push(txd.post_tx(&g, &v, frags, indirect));
        want.push(v[HDR..].to_vec());
    }
    let mut out = Burst::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < shape.len() && Instant::now() < deadline {
        south.dequeue_burst(&chan, &mut pool, 32).unwrap();
        chan.submit();
        chan.progress();
        south.complete(&chan, &mut pool, &mut out, 32).unwrap();
    }
    let got: Vec<Vec<u8>> = out.iter().map(|p| pool.data(p).to_vec()).collect();
    south.drain(&chan, &mut pool, &mut Vec::new()).unwrap();
    assert!(got == want, "every packet intact, in order");
    let used: Vec<u16> = std::iter::from_fn(|| txd.pop_used(&g)).map(|u| u.id as u16).collect();
    assert_eq!(used, heads, "chains returned in posting order");
    for p in out {
        pool.free(p);
    }
}

/// A hostile TX buffer in the middle of a run of good ones: a single readable descriptor whose
/// buffer runs past guest memory. The chains before it are taken and copied, the queue breaks
/// with the typed error at that chain (the fast path leaves it to the full walk, which reports
/// it), and not one byte of guest memory is written.
#[test]
fn a_hostile_tx_buffer_after_good_ones_breaks_the_queue_at_that_buffer() {
    use vswitch_datapath::virtio::desc::RawDescriptor;
    use vswitch_datapath::{MemoryError, VhostError, VirtqError};
    let g = TestGuest::new();
    let mut txd = g.add_queue(16, RingFeatures::empty());
    for _ in 0..2 {
        txd.post_tx(&g, &[1u8; HDR + 100], 1, false);
    }
    let bad = txd.post_tx(&g, &[2u8; HDR + 100], 1, false);
    txd.post_tx(&g, &[3u8; HDR + 100], 1, false);
    let end = {
        let r = g.memory().regions().last().unwrap();
        r.guest_addr() + r.len() as u64
    };
    txd.write_desc(&g, bad, RawDescriptor { addr: end - 10, len: 100, flags: 0, next: 0 });
    let mut south = Southbound::new(txd.device(&g), HDR, Notifier::Polling);
    let before = g.snapshot();
    let chan = Channel::new(MemcpyEngine::default(), Policy::default());
    let mut pool = PacketPool::new(16, 2048);
    let expected = VirtqError::Memory(MemoryError::Unmapped { addr: end });
    assert_eq!(south.dequeue_burst(&chan, &mut pool, 32), Err(VhostError::Ring(expected)));
    assert_eq!(south.queue().broken(), Some(expected));
    assert_eq!(south.queue().in_flight(), 2, "only the two good chains were taken");
    chan.progress();
    assert!(g.snapshot() == before, "nothing written to the guest's memory");
    south.clear(&chan, &mut pool);
    assert_eq!(pool.available(), 16);
}

/// Northbound into a guest whose RX queue logs dirty pages, then southbound out of its TX queue:
/// every byte of guest memory that changed (payloads, headers, num_buffers, used rings, event-idx
/// fields) is on a page the log marked. The guest posts its buffers before and writes nothing
/// while the switch runs, so every change is the device's.
fn every_written_page_is_logged<E: CopyEngine>(chan: Channel<E>) {
    use std::sync::Arc;
    use vswitch_datapath::testguest::GUEST_BASE;
    use vswitch_datapath::DirtyLog;
    let g = TestGuest::new();
    let feats = RingFeatures::EVENT_IDX | RingFeatures::INDIRECT_DESC;
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
    let (mut rxq, mut txq) = (rx.device(&g), tx.device(&g));
    rxq.set_dirty_log(Some(log.clone())).unwrap();
    txq.set_dirty_log(Some(log.clone())).unwrap();
    let port = VhostPort::new(
        "logged",
        Northbound::new(rxq, HDR, true, Notifier::Polling),
        Southbound::new(txq, HDR, Notifier::Polling),
    );
    let before = g.snapshot();
    let mut pmd = Pmd::new(chan, PacketPool::new(512, 9216));
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
    let (mut changed, mut pages) = (0u64, std::collections::BTreeSet::new());
    for (i, (b, a)) in before[0].iter().zip(&after[0]).enumerate() {
        if a != b {
            let gpa = GUEST_BASE + i as u64;
            changed += 1;
            pages.insert(gpa / 4096);
            assert!(log.is_marked(gpa), "guest byte {gpa:#x} changed but its page is not in the dirty log");
        }
    }
    assert!(changed > 60 * 64, "the device wrote the packets ({changed} bytes changed)");
    assert!(log.is_marked(rx.config().used_ring) && log.is_marked(tx.config().used_ring), "used rings logged");
    assert!(pages.len() > 10, "writes spread over {} pages", pages.len());
}

#[test]
fn dirty_log_covers_every_device_write_on_the_memcpy_engine() {
    every_written_page_is_logged(Channel::new(MemcpyEngine::default(), Policy::default()));
}

#[test]
fn dirty_log_covers_every_device_write_on_the_worker_engine() {
    let e = WorkerEngine::new(WorkerConfig::default()).unwrap();
    every_written_page_is_logged(Channel::new(e, Policy::offload_all()));
}

#[test]
fn dirty_log_covers_every_device_write_on_the_lazy_engine() {
    every_written_page_is_logged(Channel::new(LazyEngine::new(64, 3), Policy::offload_all()));
}

#[test]
fn dirty_log_covers_every_device_write_with_injected_errors_ring_full_and_delays() {
    // CPU fallbacks (ring full), CPU retries of failed copies and delayed completions: each is
    // marked where its used entry is written.
    let cfg = FaultConfig { error_rate: 0.05, ring_full_every: 10, ring_full_burst: 3, delay_polls: 3, seed: 9 };
    let e = FaultEngine::new(WorkerEngine::new(WorkerConfig::default()).unwrap(), cfg);
    let ch = Channel::new(e, Policy::offload_all());
    every_written_page_is_logged(ch);
}

/// VIRTIO_F_IN_ORDER is offered, so RX buffers must be used in the order the guest made them
/// available (a driver that acked it, DPDK's virtio-user for one, takes used entry k to be the k-th
/// buffer it posted). Packets spanning several mergeable buffers, packets pushed back when the
/// buffers run out mid-packet (the chains already taken are put back) and copies retiring a few
/// at a time on a lazy engine: the used ring still lists every buffer in posting order, with the
/// bytes each got.
#[test]
fn rx_buffers_are_used_in_the_order_they_were_made_available() {
    rx_buffers_used_in_posting_order(RingFeatures::empty());
}

/// The same on a packed ring (the buffer ids written back in the order posted).
#[test]
fn packed_rx_buffers_are_used_in_the_order_they_were_made_available() {
    rx_buffers_used_in_posting_order(RingFeatures::PACKED);
}

fn rx_buffers_used_in_posting_order(features: RingFeatures) {
    let g = TestGuest::new();
    let mut rxd = g.add_queue(64, features);
    let mut north = Northbound::new(rxd.virtqueue(&g), HDR, true, Notifier::Polling);
    let chan = Channel::new(LazyEngine::new(64, 3), Policy::offload_all());
    let mut pool = PacketPool::new(64, 2048);
    const BUF: usize = 100;
    let sizes = [64usize, 300, 90, 250, 120, 400, 70, 188];
    let mut posted: Vec<u16> = (0..5).map(|_| rxd.post_rx(&g, BUF as u32, 1)).collect();
    let mut pkts = Burst::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut p = pool.alloc().unwrap();
        pool.set_len(&mut p, n);
        pool.data_mut(&mut p).iter_mut().enumerate().for_each(|(k, b)| *b = (i * 31 + k) as u8);
        pkts.push(p);
    }
    let mut used = Vec::new();
    let mut rounds = 0;
    while !pkts.is_empty() || north.in_flight() != 0 {
        rounds += 1;
        assert!(rounds < 200, "stalled with {} packets left", pkts.len());
        north.enqueue_burst(&chan, &mut pool, &mut pkts).unwrap();
        chan.submit();
        chan.progress();
        north.complete(&chan, &mut pool).unwrap();
        // Read now: a freed head is reused by the next post.
        while let Some(u) = rxd.pop_used(&g) {
            used.push((u.id as u16, u.len as usize, rxd.read_written(&g, u.id as u16, u.len as usize)));
        }
        // Three more buffers per round: the first five run out at the third packet, and the
        // 400-byte one needs five, so packets wait (pushed back) more than once.
        posted.extend((0..3).map(|_| rxd.post_rx(&g, BUF as u32, 1)));
    }
    assert!(north.stats().no_buffers > 0, "some packet found too few buffers and was pushed back");
    let ids: Vec<u16> = used.iter().map(|u| u.0).collect();
    assert_eq!(ids[..], posted[..ids.len()], "used in posting order");
    // Each packet fills its buffers front to back; the header's num_buffers says how many.
    let mut at = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let nbufs = (HDR + n).div_ceil(BUF);
        let lens: Vec<usize> = used[at..at + nbufs].iter().map(|u| u.1).collect();
        assert_eq!(lens.iter().sum::<usize>(), HDR + n, "packet {i}: {lens:?}");
        let bytes: Vec<u8> = used[at..at + nbufs].iter().flat_map(|u| u.2.iter().copied()).collect();
        assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]) as usize, nbufs, "packet {i}: num_buffers");
        let want: Vec<u8> = (0..n).map(|k| (i * 31 + k) as u8).collect();
        assert_eq!(bytes[HDR..], want[..], "packet {i} intact");
        at += nbufs;
    }
    assert_eq!(at, used.len(), "no buffer used beyond the packets");
}
