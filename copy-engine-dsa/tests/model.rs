//! The DSA engine's own behaviour on the device model: batching policy, a dedicated WQ that must
//! never overflow, a busy shared WQ, page faults finished on the CPU in order, errors and failed
//! batches reported with their tickets, block-on-fault, fences, drop with ops in flight, and the
//! typed errors of opening a real WQ where there is none. Every test checks bytes and order, and
//! that the model saw no descriptor breaking the rules.

use copy_engine::conformance::Rng;
use copy_engine::{CopyEngine, EnqueueError, FailedOp, OpFlags, OpStatus, Ticket};
use copy_engine_dsa::{BatchPolicy, DsaConfig, DsaEngine, DsaError, ModelConfig, ModelFaults, ModelPortal, WqMode};

struct Bufs {
    src: Vec<Vec<u8>>,
    dst: Vec<Vec<u8>>,
}

impl Bufs {
    fn new(rng: &mut Rng, n: usize, lo: usize, hi: usize) -> Bufs {
        let src: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut v = vec![0u8; rng.range(lo, hi)];
                rng.fill(&mut v);
                v
            })
            .collect();
        // Destinations start as the complement, so a partial copy is visible.
        let dst = src.iter().map(|s| s.iter().map(|b| !b).collect()).collect();
        Bufs { src, dst }
    }

    fn copied(&self, i: usize) -> bool {
        self.src[i] == self.dst[i]
    }
}

/// Enqueues op `i` of `b`; the buffers outlive the engine's drain in every test.
fn enqueue(e: &mut DsaEngine<ModelPortal>, b: &mut Bufs, i: usize, flags: OpFlags) -> Result<Ticket, EnqueueError> {
    let len = b.src[i].len();
    // SAFETY: `b` outlives every op: each test drains the engine before reading or dropping it.
    unsafe { e.enqueue(b.src[i].as_ptr(), b.dst[i].as_mut_ptr(), len, flags) }
}

/// Reaps until nothing is in flight; returns the failures in order.
fn drain(e: &mut DsaEngine<ModelPortal>) -> Vec<FailedOp> {
    e.submit();
    let mut out = Vec::new();
    let mut buf = [FailedOp::EMPTY; 8];
    let mut last = e.retired();
    while e.in_flight() > 0 {
        let r = e.reap(usize::MAX, &mut buf);
        out.extend_from_slice(&buf[..r.failed]);
        assert_eq!(e.retired(), last.add(r.retired as u64), "retired does not advance by what reap says");
        last = e.retired();
        std::thread::yield_now();
    }
    out
}

fn model(faults: ModelFaults) -> ModelConfig {
    ModelConfig { faults, ..ModelConfig::default() }
}

fn assert_clean(e: &DsaEngine<ModelPortal>) {
    let c = e.model_handle().counters();
    assert_eq!((c.violations, c.dropped), (0, 0), "the model saw a bad or dropped descriptor: {c:?}");
}

#[test]
fn a_burst_becomes_one_batch_descriptor() {
    let mut e = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).unwrap();
    let mut rng = Rng::new(1);
    let mut b = Bufs::new(&mut rng, 20, 1, 4096);
    for i in 0..20 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    assert!((0..20).all(|i| b.copied(i)));
    let s = e.dsa_stats();
    assert_eq!((s.descriptors, s.batches, s.batched_ops), (1, 1, 20), "{s:?}");
    let c = e.model_handle().counters();
    assert_eq!((c.submitted, c.batches, c.executed), (1, 1, 21), "one batch of 20 memmoves: {c:?}");
    assert_clean(&e);
}

#[test]
fn bursts_below_min_batch_go_as_single_descriptors_and_batches_split_at_max() {
    let cfg = DsaConfig { batch: BatchPolicy { min_batch: 16, max_batch: 32 }, ..DsaConfig::default() };
    let mut e = DsaEngine::model(ModelConfig::default(), cfg).unwrap();
    let mut rng = Rng::new(2);
    let mut b = Bufs::new(&mut rng, 10 + 80, 1, 2000);
    for i in 0..10 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    assert_eq!((e.dsa_stats().descriptors, e.dsa_stats().batches), (10, 0), "10 < min_batch: no batch");
    // 80 ops at ring offset 10: batches of 32, 32, then 16.
    for i in 10..90 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    let s = e.dsa_stats();
    assert_eq!((s.descriptors, s.batches, s.batched_ops), (13, 3, 80), "{s:?}");
    assert!((0..90).all(|i| b.copied(i)));
    assert_clean(&e);
}

#[test]
fn a_batch_never_spans_the_ring_wrap() {
    let cfg = DsaConfig { ring_size: 16, ..DsaConfig::default() };
    let mut e = DsaEngine::model(ModelConfig::default(), cfg).unwrap();
    let mut rng = Rng::new(3);
    let mut b = Bufs::new(&mut rng, 26, 1, 512);
    for i in 0..10 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    // Slots 10..16 then 0..10: two batches, each contiguous in the ring.
    for i in 10..26 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.dsa_stats().batches, 3);
    assert!((0..26).all(|i| b.copied(i)));
    assert_clean(&e);
}

#[test]
fn a_full_dedicated_wq_holds_ops_back_instead_of_overflowing() {
    let m = ModelConfig { wq_size: 4, ..ModelConfig::default() };
    let cfg = DsaConfig { ring_size: 64, batch: BatchPolicy::never(), ..DsaConfig::default() };
    let mut e = DsaEngine::model(m, cfg).unwrap();
    let dev = e.model_handle().clone();
    dev.pause();
    let mut rng = Rng::new(4);
    let mut b = Bufs::new(&mut rng, 64, 64, 1500);
    for i in 0..64 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    assert_eq!(enqueue(&mut e, &mut b, 0, OpFlags::empty()), Err(EnqueueError::RingFull), "ring of 64 is full");
    e.submit();
    assert_eq!(e.wq_occupancy(), 4, "only as many descriptors as the WQ holds");
    assert_eq!(e.pending(), 60);
    assert_eq!(dev.occupancy(), 4);
    assert_eq!(e.reap(usize::MAX, &mut []).retired, 0, "nothing done while the device is paused");
    assert!(e.dsa_stats().wq_full >= 2);
    dev.resume();
    assert!(drain(&mut e).is_empty());
    assert!((0..64).all(|i| b.copied(i)));
    let c = dev.counters();
    assert_eq!(c.submitted, 64);
    assert!(c.max_occupancy <= 4, "the WQ never held more than its size: {c:?}");
    assert_clean(&e);
}

#[test]
fn a_busy_shared_wq_is_retried_and_loses_nothing() {
    let faults = ModelFaults { busy: 0.3, seed: 5, ..ModelFaults::default() };
    let m = ModelConfig { mode: WqMode::Shared, wq_size: 2, faults, ..ModelConfig::default() };
    let cfg = DsaConfig { ring_size: 128, batch: BatchPolicy::never(), busy_retries: 3, ..DsaConfig::default() };
    let mut e = DsaEngine::model(m, cfg).unwrap();
    let dev = e.model_handle().clone();
    dev.pause();
    let mut rng = Rng::new(5);
    let mut b = Bufs::new(&mut rng, 128, 1, 3000);
    for i in 0..128 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    e.submit();
    assert_eq!(e.wq_occupancy(), 2, "ENQCMD refused the rest");
    assert!(e.dsa_stats().busy_deferred >= 1 && e.dsa_stats().busy > 3, "{:?}", e.dsa_stats());
    dev.resume();
    assert!(drain(&mut e).is_empty());
    assert!((0..128).all(|i| b.copied(i)));
    assert_eq!(dev.counters().submitted, 128);
    assert_clean(&e);
}

#[test]
fn page_faulted_copies_are_finished_on_the_cpu_in_order() {
    let faults = ModelFaults { page_fault: 0.3, seed: 6, ..ModelFaults::default() };
    let mut e = DsaEngine::model(model(faults), DsaConfig { ring_size: 256, ..DsaConfig::default() }).unwrap();
    let mut rng = Rng::new(6);
    let mut b = Bufs::new(&mut rng, 2000, 2, 9000);
    let mut next = 0;
    let mut buf = [FailedOp::EMPTY; 4];
    while next < 2000 || e.in_flight() > 0 {
        let burst = rng.range(1, 40);
        for _ in 0..burst {
            if next == 2000 || enqueue(&mut e, &mut b, next, OpFlags::empty()).is_err() {
                break;
            }
            next += 1;
        }
        e.submit();
        let before = e.retired().get() as usize;
        let r = e.reap(rng.range(1, 64), &mut buf);
        assert_eq!(r.failed, 0, "a page fault surfaced as a failure: {:?}", &buf[..r.failed]);
        // Whatever retired is complete, and so is everything before it.
        for i in before..before + r.retired {
            assert!(b.copied(i), "op {i} retired incomplete");
        }
    }
    let (s, c) = (e.dsa_stats(), e.model_handle().counters());
    assert!(c.page_faults > 100, "{c:?}");
    assert_eq!(s.page_faults, c.page_faults, "every partial completion finished by the CPU");
    assert!(s.fault_bytes > 0);
    assert!((0..2000).all(|i| b.copied(i)));
    assert_clean(&e);
}

#[test]
fn block_on_fault_lets_the_device_finish_the_copy() {
    let faults = ModelFaults { page_fault: 0.5, seed: 7, ..ModelFaults::default() };
    let m = ModelConfig { block_on_fault: true, faults, ..ModelConfig::default() };
    let mut e = DsaEngine::model(m, DsaConfig { block_on_fault: true, ..DsaConfig::default() }).unwrap();
    let mut rng = Rng::new(7);
    let mut b = Bufs::new(&mut rng, 200, 2, 4000);
    for i in 0..200 {
        enqueue(&mut e, &mut b, i, OpFlags::SUBMIT).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    assert!((0..200).all(|i| b.copied(i)));
    assert!(e.model_handle().counters().blocked_faults > 50);
    assert_eq!(e.dsa_stats().page_faults, 0, "nothing left for the CPU");
    assert_clean(&e);
    // Asking for BOF on a WQ without it is a configuration error.
    let err = DsaEngine::model(ModelConfig::default(), DsaConfig { block_on_fault: true, ..DsaConfig::default() });
    assert!(matches!(err, Err(DsaError::InvalidConfig(_))));
}

#[test]
fn device_errors_are_reported_with_the_ticket_of_the_op_that_failed() {
    let faults = ModelFaults { error: 0.1, page_fault: 0.1, seed: 8, ..ModelFaults::default() };
    let mut e = DsaEngine::model(model(faults), DsaConfig::default()).unwrap();
    let mut rng = Rng::new(8);
    let mut b = Bufs::new(&mut rng, 1000, 2, 3000);
    let mut failed = Vec::new();
    for chunk in 0..10 {
        for i in chunk * 100..(chunk + 1) * 100 {
            enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
        }
        failed.extend(drain(&mut e));
    }
    let c = e.model_handle().counters();
    assert_eq!(failed.len() as u64, c.errors, "one report per injected error");
    assert!(failed.windows(2).all(|w| w[0].ticket < w[1].ticket), "failures in ticket order");
    assert!(failed.iter().all(|f| matches!(f.status, OpStatus::DataError | OpStatus::SourceError)), "{failed:?}");
    for i in 0..1000 {
        let reported = failed.iter().any(|f| f.ticket == Ticket::new(i as u64));
        assert_eq!(reported, !b.copied(i), "op {i}: reported {reported}, copied {}", b.copied(i));
    }
    assert_eq!(e.stats().errors, c.errors);
    assert_clean(&e);
}

#[test]
fn a_failed_batch_reports_every_op_it_held() {
    let faults = ModelFaults { batch_error: 0.3, seed: 10, ..ModelFaults::default() };
    let mut e = DsaEngine::model(model(faults), DsaConfig::default()).unwrap();
    let mut rng = Rng::new(10);
    let mut b = Bufs::new(&mut rng, 400, 2, 2000);
    let mut failed = Vec::new();
    for chunk in 0..40 {
        for i in chunk * 10..(chunk + 1) * 10 {
            enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
        }
        failed.extend(drain(&mut e));
    }
    let c = e.model_handle().counters();
    assert!(c.batch_errors > 0);
    assert_eq!(failed.len() as u64, c.batch_errors * 10, "each failed batch held 10 ops");
    assert_eq!(e.dsa_stats().batch_failures, c.batch_errors);
    assert!(failed.iter().all(|f| f.status == OpStatus::NotAttempted));
    for i in 0..400 {
        let reported = failed.iter().any(|f| f.ticket == Ticket::new(i as u64));
        assert_eq!(reported, !b.copied(i), "op {i}");
    }
    assert_clean(&e);
}

#[test]
fn a_full_failed_buffer_stops_reaping_at_the_failure() {
    let faults = ModelFaults { error: 1.0, seed: 11, ..ModelFaults::default() };
    let mut e = DsaEngine::model(model(faults), DsaConfig::default()).unwrap();
    let mut rng = Rng::new(11);
    let mut b = Bufs::new(&mut rng, 4, 8, 8);
    for i in 0..4 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    e.submit();
    while e.model_handle().counters().executed < 5 {
        std::thread::yield_now();
    }
    assert_eq!(e.reap(usize::MAX, &mut []).retired, 0, "an empty buffer retires nothing past a failure");
    let mut buf = [FailedOp::EMPTY; 3];
    let r = e.reap(usize::MAX, &mut buf);
    assert_eq!((r.retired, r.failed), (3, 3));
    assert_eq!(buf.map(|f| f.ticket.get()), [0, 1, 2]);
    assert_eq!(drain(&mut e).len(), 1);
}

#[test]
fn a_fenced_copy_waits_for_every_earlier_op() {
    let mut e = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).unwrap();
    let dev = e.model_handle().clone();
    dev.pause();
    let a = vec![7u8; 4096];
    let mut mid = vec![0u8; 4096];
    let mut out = vec![0u8; 4096];
    // SAFETY: the buffers outlive the drain below; the second op reads `mid` only after the
    // fence has let the first finish.
    unsafe {
        e.enqueue(a.as_ptr(), mid.as_mut_ptr(), 4096, OpFlags::empty()).unwrap();
        e.enqueue(mid.as_ptr(), out.as_mut_ptr(), 4096, OpFlags::FENCE | OpFlags::SUBMIT).unwrap();
    }
    assert_eq!((e.wq_occupancy(), e.pending()), (1, 1), "the fenced op is held back, not batched");
    assert_eq!(e.dsa_stats().fence_waits, 1);
    dev.resume();
    assert!(drain(&mut e).is_empty());
    assert_eq!(out, a);
    assert_clean(&e);
}

#[test]
fn zero_length_copies_complete_as_noops_in_order() {
    let mut e = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).unwrap();
    let mut rng = Rng::new(12);
    let mut b = Bufs::new(&mut rng, 6, 0, 0);
    let mut big = Bufs::new(&mut rng, 6, 100, 100);
    for i in 0..6 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
        enqueue(&mut e, &mut big, i, OpFlags::empty()).unwrap();
    }
    assert!(drain(&mut e).is_empty());
    assert!((0..6).all(|i| big.copied(i)));
    assert_clean(&e);
}

#[test]
fn dropping_the_engine_waits_for_copies_with_the_device() {
    let mut rng = Rng::new(13);
    let mut b = Bufs::new(&mut rng, 100, 60_000, 64_000);
    {
        let mut e = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).unwrap();
        for i in 0..100 {
            enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
            if i == 60 {
                e.submit();
            }
        }
    }
    // The first 61 were with the device and finished; the rest were never submitted.
    assert!((0..61).all(|i| b.copied(i)));
    assert!((61..100).all(|i| !b.copied(i)), "unsubmitted ops were cancelled");
}

#[test]
fn opening_a_real_wq_without_dsa_is_a_typed_error() {
    let root = std::env::temp_dir().join(format!("ce-dsa-open-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let err = DsaEngine::open_at(&root, &root, "wq0.0", DsaConfig::default()).unwrap_err();
    assert!(matches!(err, DsaError::NoSuchWq { .. }), "{err}");
    // A configured WQ whose device node is missing (or whose CPU lacks the instruction).
    let wq = root.join("wq0.0");
    std::fs::create_dir_all(&wq).unwrap();
    for (k, v) in [
        ("mode", "dedicated"),
        ("type", "user"),
        ("state", "enabled"),
        ("size", "32"),
        ("max_transfer_size", "2097152"),
        ("max_batch_size", "32"),
    ] {
        std::fs::write(wq.join(k), v).unwrap();
    }
    let err = DsaEngine::open_at(&root, &root.join("dev"), "wq0.0", DsaConfig::default()).unwrap_err();
    let cpu = copy_engine_dsa::cpu::detect();
    if cpu.movdir64b {
        assert!(matches!(err, DsaError::Io { .. }), "{err}");
    } else {
        assert!(matches!(err, DsaError::NoCpuSupport("MOVDIR64B", _)), "{err}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn stop_drains_the_device_or_says_it_could_not() {
    use copy_engine::EngineControl;
    let cfg = DsaConfig { drain_timeout: std::time::Duration::from_millis(200), ..DsaConfig::default() };
    let mut e = DsaEngine::model(ModelConfig::default(), cfg).unwrap();
    let mut rng = Rng::new(14);
    let mut b = Bufs::new(&mut rng, 40, 1, 5000);
    for i in 0..40 {
        enqueue(&mut e, &mut b, i, OpFlags::empty()).unwrap();
    }
    futures::executor::block_on(e.stop()).expect("stop drains");
    assert_eq!(e.in_flight(), 0);
    assert!((0..40).all(|i| b.copied(i)));
    // A device that never answers: stop reports it instead of hanging.
    let dev = e.model_handle().clone();
    dev.pause();
    enqueue(&mut e, &mut b, 0, OpFlags::SUBMIT).unwrap();
    let err = futures::executor::block_on(e.stop()).unwrap_err();
    assert!(err.to_string().contains("still with the device"), "{err}");
    dev.resume();
    futures::executor::block_on(e.stop()).expect("drains once the device answers");
    assert_clean(&e);
}
