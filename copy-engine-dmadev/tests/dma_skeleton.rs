//! The dmadev engine on DPDK's `dma_skeleton` software device: no hardware, no hugepages.
//!
//! EAL starts once per process, so every test in this binary shares one EAL (started by the first
//! test to run) and takes `DEVICE` for as long as it uses the device. Run with
//! `cargo test -p copy-engine-dmadev --features dmadev`.

#![cfg(feature = "dmadev")]

use std::sync::{Mutex, MutexGuard, OnceLock};

use copy_engine::conformance::{self, Rng};
use copy_engine::{
    Capabilities, Channel, ControlError, CopyEngine, EngineControl, EnqueueError, FailedOp, OpFlags, Policy, Ticket,
};
use copy_engine_dmadev::{list_devices, DeviceConfig, DmadevDevice, DmadevEngine, Eal, EalBuilder, EalError};

const DEVICE_NAME: &str = "dma_skeleton0";

fn eal() -> &'static Eal {
    static EAL: OnceLock<Eal> = OnceLock::new();
    EAL.get_or_init(|| {
        EalBuilder::skeleton()
            .file_prefix(format!("ce-dmadev-test-{}", std::process::id()))
            .init()
            .unwrap_or_else(|e| panic!("EAL init: {e}"))
    })
}

/// The device, one test at a time.
fn device() -> MutexGuard<'static, ()> {
    static DEVICE: Mutex<()> = Mutex::new(());
    let g = DEVICE.lock().unwrap_or_else(|p| p.into_inner());
    eal();
    g
}

fn engine(ring: usize) -> DmadevEngine {
    DmadevEngine::open(eal(), DEVICE_NAME, ring).unwrap_or_else(|e| panic!("open {DEVICE_NAME}: {e}"))
}

/// Enqueues `src -> dst`; both outlive the op (each test drains before dropping its buffers).
fn enqueue(e: &mut DmadevEngine, src: &[u8], dst: &mut [u8], flags: OpFlags) -> Result<Ticket, EnqueueError> {
    assert!(src.len() <= dst.len());
    // SAFETY: the buffers are borrowed for the test's duration and the test drains the engine
    // before they are dropped or read.
    unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), src.len(), flags) }
}

fn drain(e: &mut DmadevEngine) {
    e.submit();
    let mut failed = [FailedOp::EMPTY; 8];
    let mut spins = 0u64;
    while e.in_flight() > 0 {
        let r = e.reap(usize::MAX, &mut failed);
        assert_eq!(r.failed, 0, "dma_skeleton reported a failure: {:?}", &failed[..r.failed]);
        spins += 1;
        assert!(spins < 1_000_000_000, "dma_skeleton never completes");
    }
}

#[test]
fn engine_contract_conformance() {
    let _g = device();
    conformance::run_all(|| engine(128));
}

#[test]
fn policy_conformance() {
    let _g = device();
    conformance::run_policy(|| engine(128));
}

#[test]
fn fault_injection_conformance() {
    let _g = device();
    conformance::run_fault(|| engine(128));
}

#[test]
fn skeleton_capabilities_are_mapped() {
    let _g = device();
    let e = engine(100);
    let caps = e.info().capabilities;
    for c in [
        Capabilities::MEM_TO_MEM,
        Capabilities::SVA,
        Capabilities::ERROR_STATUS,
        Capabilities::OFFLOAD,
        Capabilities::FENCE,
    ] {
        assert!(caps.contains(c), "{c:?} missing from {caps:?}");
    }
    assert!(!caps.contains(Capabilities::SYNC));
    assert_eq!(e.info().name, "dmadev:dma_skeleton0/0");
    // 100 rounds up to a power of two (dma_skeleton needs one); one slot stays free.
    assert_eq!(e.info().ring_size, 127);
    assert_eq!(e.burst_capacity(), 127);
}

/// Source, destination, source offset, destination offset, length.
type Buffers = (Vec<u8>, Vec<u8>, usize, usize, usize);

#[test]
fn random_copies_are_byte_exact_at_any_alignment() {
    let _g = device();
    let mut e = engine(256);
    let mut rng = Rng::new(0xd0a);
    for round in 0..20 {
        let n = rng.range(1, 64);
        let mut bufs: Vec<Buffers> = (0..n)
            .map(|_| {
                let len = rng.range(1, 20_000);
                let (so, d_o) = (rng.range(0, 63), rng.range(0, 63));
                let mut src = vec![0u8; so + len];
                rng.fill(&mut src);
                (src, vec![0x5au8; d_o + len + 64], so, d_o, len)
            })
            .collect();
        for (src, dst, so, d_o, len) in bufs.iter_mut() {
            enqueue(&mut e, &src[*so..*so + *len], &mut dst[*d_o..*d_o + *len], OpFlags::empty()).expect("enqueue");
        }
        drain(&mut e);
        for (i, (src, dst, so, d_o, len)) in bufs.iter().enumerate() {
            assert!(dst[*d_o..*d_o + *len] == src[*so..*so + *len], "round {round} op {i}: {len} bytes differ");
            assert!(
                dst[..*d_o].iter().chain(&dst[*d_o + *len..]).all(|&b| b == 0x5a),
                "round {round} op {i}: wrote outside"
            );
        }
    }
}

#[test]
fn tickets_map_across_u16_ring_index_wrap() {
    let _g = device();
    let mut e = engine(1024);
    let src: Vec<u8> = (0..64u8).collect();
    let mut dst = vec![[0u8; 64]; 512];
    let mut next = Ticket::ZERO;
    while next.get() < 70_500 {
        for d in dst.iter_mut() {
            let t = enqueue(&mut e, &src, d, OpFlags::empty()).expect("enqueue");
            assert_eq!(t, next);
            next = next.next();
        }
        drain(&mut e);
        assert!(dst.iter().all(|d| d[..] == src[..]));
        dst.iter_mut().for_each(|d| d.fill(0));
    }
    assert_eq!(e.retired(), next);
    assert_eq!(e.stats().completed, next.get());
}

#[test]
fn completions_retire_in_submission_order() {
    let _g = device();
    let mut e = engine(512);
    let mut rng = Rng::new(99);
    let srcs: Vec<Vec<u8>> = (0..400)
        .map(|_| {
            let mut v = vec![0u8; rng.range(1, 8192)];
            rng.fill(&mut v);
            v
        })
        .collect();
    let mut dsts: Vec<Vec<u8>> = srcs.iter().map(|s| vec![0u8; s.len()]).collect();
    for (s, d) in srcs.iter().zip(dsts.iter_mut()) {
        enqueue(&mut e, s, d, OpFlags::empty()).expect("enqueue");
    }
    e.submit();
    let mut failed = [FailedOp::EMPTY; 4];
    let mut last = Ticket::ZERO;
    while e.in_flight() > 0 {
        let r = e.reap(5, &mut failed);
        assert!(r.retired <= 5);
        assert_eq!(e.retired(), last.add(r.retired as u64));
        last = e.retired();
        // Everything retired is complete (the device may be further along).
        for i in 0..last.get() as usize {
            let d = dsts[i].as_ptr();
            // SAFETY: op i has retired, so the device no longer writes dsts[i].
            let done = unsafe { std::slice::from_raw_parts(d, srcs[i].len()) };
            assert!(done == &srcs[i][..], "op {i} retired before it was complete");
        }
    }
}

#[test]
fn unknown_device_name_lists_available_devices() {
    let _g = device();
    match DmadevEngine::open(eal(), "no_such_dma0", 64) {
        Err(ControlError::NoSuchDevice { name, available }) => {
            assert_eq!(name, "no_such_dma0");
            assert!(available.iter().any(|d| d == DEVICE_NAME), "available: {available:?}");
        }
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
    assert!(matches!(DmadevEngine::open(eal(), 999i16, 64), Err(ControlError::NoSuchDevice { .. })));
    let devices = list_devices(eal());
    assert!(devices.iter().any(|d| d.name == DEVICE_NAME && d.completed_status));
}

#[test]
fn device_opens_once_and_vchans_are_checked() {
    let _g = device();
    let dev = DmadevDevice::open(eal(), DEVICE_NAME, DeviceConfig::default()).expect("open");
    assert!(matches!(
        DmadevDevice::open(eal(), DEVICE_NAME, DeviceConfig::default()),
        Err(ControlError::Backend { .. })
    ));
    assert!(matches!(dev.channel(1), Err(ControlError::InvalidConfig(_))));
    let ch = dev.channel(0).expect("vchan 0");
    assert!(matches!(dev.channel(0), Err(ControlError::InvalidConfig(_))), "vchan handed out twice");
    drop(ch);
    let _ch = dev.channel(0).expect("vchan 0 is free again after its engine dropped");
    // dma_skeleton has one vchan.
    drop(_ch);
    drop(dev);
    let too_many = DmadevDevice::open(eal(), DEVICE_NAME, DeviceConfig { vchans: 2, ring_size: 64 });
    assert!(matches!(too_many, Err(ControlError::InvalidConfig(_))), "{too_many:?}");
}

#[test]
fn second_eal_init_is_refused_and_current_is_shared() {
    let _g = device();
    assert!(matches!(EalBuilder::skeleton().init(), Err(EalError::AlreadyInitialized)));
    let cur = Eal::current().expect("EAL is live");
    assert_eq!(cur.args(), eal().args());
    assert!(cur.iova_is_va());
    assert!(matches!(cur.cleanup(), Err(EalError::InUse(_))), "cleanup with live handles must be refused");
}

#[test]
fn stats_agree_with_the_device() {
    let _g = device();
    let mut e = engine(256);
    e.reset_stats();
    let src = vec![7u8; 3000];
    let mut dsts = vec![vec![0u8; 3000]; 100];
    for d in dsts.iter_mut() {
        enqueue(&mut e, &src, d, OpFlags::empty()).expect("enqueue");
    }
    let mut failed = [FailedOp::EMPTY; 4];
    let r = e.reap(usize::MAX, &mut failed);
    assert_eq!(r.retired, 0, "nothing may complete before the doorbell");
    drain(&mut e);
    let s = e.stats();
    assert_eq!((s.enqueued, s.bytes, s.completed, s.errors), (100, 300_000, 100, 0));
    assert_eq!(s.submits, 1);
    assert!(s.empty_polls >= 1);
    let d = e.device_stats().expect("device stats");
    assert_eq!((d.submitted, d.completed, d.errors), (100, 100, 0), "{d:?}");
    e.reset_stats();
    assert_eq!(e.stats(), Default::default());
    assert_eq!(e.device_stats().unwrap().submitted, 0);
}

#[test]
fn full_ring_is_refused_and_counted() {
    let _g = device();
    let mut e = engine(64);
    let src = [1u8; 128];
    let mut dst = vec![[0u8; 128]; 64];
    let cap = e.burst_capacity();
    assert_eq!(cap, 63);
    for d in dst[..cap].iter_mut() {
        enqueue(&mut e, &src, d, OpFlags::empty()).expect("enqueue");
    }
    let t = e.next_ticket();
    assert_eq!(enqueue(&mut e, &src, &mut dst[cap], OpFlags::empty()), Err(EnqueueError::RingFull));
    assert_eq!(e.next_ticket(), t);
    assert_eq!(e.stats().ring_full, 1);
    drain(&mut e);
    assert!(dst[..cap].iter().all(|d| d[..] == src[..]));
}

#[test]
fn burst_enqueue_is_one_call_and_keeps_tickets() {
    let _g = device();
    let mut e = engine(256);
    let src: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; 100 + i]).collect();
    let mut dst: Vec<Vec<u8>> = src.iter().map(|s| vec![0u8; s.len()]).collect();
    let sp: Vec<*const u8> = src.iter().map(|s| s.as_ptr()).collect();
    let dp: Vec<*mut u8> = dst.iter_mut().map(|d| d.as_mut_ptr()).collect();
    let lens: Vec<u32> = src.iter().map(|s| s.len() as u32).collect();
    // A single op first so the burst does not start at ticket 0.
    let lone = [9u8; 10];
    let mut lone_dst = [0u8; 10];
    enqueue(&mut e, &lone, &mut lone_dst, OpFlags::empty()).unwrap();
    // SAFETY: the buffers live until the drain below.
    let (t, n) = unsafe { e.enqueue_burst(&sp, &dp, &lens, OpFlags::empty(), true) }.expect("burst");
    assert_eq!((t, n), (Ticket::new(1), 40));
    assert_eq!(e.next_ticket(), Ticket::new(41));
    assert_eq!(e.stats().submits, 1);
    drain(&mut e);
    assert_eq!(src, dst);
    assert_eq!(lone, lone_dst);
}

#[test]
fn stop_drains_and_start_keeps_ticket_sequence() {
    let _g = device();
    let mut e = engine(128);
    let src = [3u8; 512];
    let mut a = vec![[0u8; 512]; 50];
    for d in a.iter_mut() {
        enqueue(&mut e, &src, d, OpFlags::empty()).unwrap();
    }
    futures::executor::block_on(e.stop()).expect("stop");
    assert_eq!(e.in_flight(), 0, "stop must drain");
    assert!(a.iter().all(|d| d[..] == src[..]));
    assert_eq!(enqueue(&mut e, &src, &mut a[0], OpFlags::empty()), Err(EnqueueError::NotRunning));
    assert_eq!(e.burst_capacity(), 0);
    futures::executor::block_on(e.start()).expect("start");
    // The device restarted: its ring indices begin at zero, the tickets go on.
    let mut b = vec![[0u8; 512]; 50];
    for (i, d) in b.iter_mut().enumerate() {
        assert_eq!(enqueue(&mut e, &src, d, OpFlags::empty()).unwrap(), Ticket::new(50 + i as u64));
    }
    drain(&mut e);
    assert!(b.iter().all(|d| d[..] == src[..]));
    let mut buf = [0u8; 64];
    futures::executor::block_on(e.map_memory(buf.as_mut_ptr() as usize, 64)).expect("map is a no-op on SVA");
    futures::executor::block_on(e.unmap_memory(buf.as_mut_ptr() as usize, 64)).expect("unmap is a no-op on SVA");
}

#[test]
fn small_copies_go_to_cpu_and_bytes_are_counted() {
    let _g = device();
    let ch = Channel::new(engine(256), Policy::default().with_cpu_below(256));
    let srcs: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; if i % 2 == 0 { 100 } else { 1000 }]).collect();
    let mut dsts: Vec<Vec<u8>> = srcs.iter().map(|s| vec![0u8; s.len()]).collect();
    for (s, d) in srcs.iter().zip(dsts.iter_mut()) {
        // SAFETY: the buffers outlive the drain below.
        unsafe { ch.enqueue(s.as_ptr(), d.as_mut_ptr(), s.len(), OpFlags::empty()) }.expect("enqueue");
    }
    ch.drain();
    let s = ch.stats();
    assert_eq!((s.cpu_small, s.offloaded, s.completed), (32, 32, 64));
    assert_eq!(s.bytes, 32 * 100 + 32 * 1000);
    assert_eq!(s.offloaded_bytes, 32 * 1000);
    assert_eq!(ch.engine_stats().bytes, 32 * 1000);
    assert_eq!(srcs, dsts);
}

#[test]
fn full_ring_burst_falls_back_to_cpu_in_order() {
    let _g = device();
    let ch = Channel::new(engine(64), Policy::offload_all());
    let srcs: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 700]).collect();
    let mut dsts: Vec<Vec<u8>> = srcs.iter().map(|s| vec![0u8; s.len()]).collect();
    let mut tickets = Vec::new();
    for (s, d) in srcs.iter().zip(dsts.iter_mut()) {
        // SAFETY: the buffers outlive the drain below.
        tickets.push(unsafe { ch.enqueue(s.as_ptr(), d.as_mut_ptr(), s.len(), OpFlags::empty()) }.expect("enqueue"));
    }
    assert!(tickets.windows(2).all(|w| w[1] == w[0].next()));
    let s = ch.stats();
    assert_eq!(s.offloaded, 63, "{s:?}");
    assert_eq!(s.cpu_ring_full, 137, "{s:?}");
    // Nothing is reported done before the engine ops ahead of it.
    assert_eq!(ch.retired(), Ticket::ZERO);
    ch.submit();
    let mut last = ch.retired();
    while ch.in_flight() > 0 {
        ch.progress();
        assert!(ch.retired() >= last);
        last = ch.retired();
    }
    assert_eq!(ch.retired(), Ticket::new(200));
    assert_eq!(srcs, dsts);
}

#[test]
fn raw_c_loop_runs_on_the_same_channel() {
    let _g = device();
    let mut e = engine(512);
    let src = vec![0xabu8; 2048];
    let mut dst = vec![0u8; 2048];
    assert_eq!(e.raw_copy_loop(&src, &mut dst, 10_000, 32).expect("raw loop"), 10_000);
    assert_eq!(src, dst);
    // The engine's tickets and the device's ring indices are still in step afterwards.
    let mut d2 = vec![0u8; 100];
    let t = enqueue(&mut e, &src[..100], &mut d2, OpFlags::SUBMIT).unwrap();
    assert_eq!(t, Ticket::ZERO);
    drain(&mut e);
    assert_eq!(d2, src[..100]);
}
