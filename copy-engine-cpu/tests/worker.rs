//! Behaviour of the worker-thread engine through the `CopyEngine` trait: byte-exact copies,
//! tickets, in-order retirement, ring-full, the doorbell, and a randomized stress test of bursts,
//! submits and reaps over both idle strategies (parking included, to exercise the wake-up path).

use std::time::{Duration, Instant};

use copy_engine::{Capabilities, ControlError, CopyEngine, EnqueueError, FailedOp, OpFlags, Reaped, Ticket};
use copy_engine_cpu::{IdleStrategy, WorkerConfig, WorkerEngine};

/// xorshift64*: a tiny deterministic generator, enough for sizes, offsets and byte patterns.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn busy() -> WorkerConfig {
    WorkerConfig { idle: IdleStrategy::busy_poll(), ..WorkerConfig::default() }
}

/// Parks almost at once, with a timeout so long that a lost wake-up shows up as a test failure
/// (the deadline in `reap_until`) rather than as a 1 ms hiccup.
fn sleepy() -> WorkerConfig {
    WorkerConfig {
        idle: IdleStrategy { spins: 4, yields: 1, park_timeout: Some(Duration::from_secs(120)) },
        ..WorkerConfig::default()
    }
}

/// Reaps until `retired()` reaches `upto`, failing after a generous deadline.
fn reap_until(e: &mut WorkerEngine, upto: Ticket) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while e.retired() < upto {
        e.reap(usize::MAX, &mut []);
        assert!(Instant::now() < deadline, "ops below {upto} never completed (lost wake-up?)");
        std::thread::yield_now();
    }
}

#[test]
fn info_names_the_worker_and_its_capabilities() {
    let e = WorkerEngine::new(WorkerConfig { ring_size: 1000, ..WorkerConfig::default() }).unwrap();
    let info = e.info();
    assert_eq!(info.name, "worker");
    assert_eq!(
        info.capabilities,
        Capabilities::MEM_TO_MEM | Capabilities::SVA | Capabilities::FENCE | Capabilities::OFFLOAD
    );
    assert_eq!(info.ring_size, 1024, "rounded up to a power of two");
    assert_eq!(e.burst_capacity(), 1024);
    assert_eq!((e.next_ticket(), e.retired(), e.in_flight()), (Ticket::ZERO, Ticket::ZERO, 0));
}

#[test]
fn ring_sizes_out_of_range_are_invalid_config() {
    for ring_size in [0, copy_engine_cpu::worker::MAX_RING + 1] {
        let err = WorkerEngine::new(WorkerConfig { ring_size, ..WorkerConfig::default() }).unwrap_err();
        assert!(matches!(err, ControlError::InvalidConfig(_)), "{err:?}");
    }
    let err = WorkerEngine::new(WorkerConfig { pin_cpu: Some(1 << 20), ..WorkerConfig::default() }).unwrap_err();
    assert!(matches!(err, ControlError::InvalidConfig(_)), "{err:?}");
    let one = WorkerEngine::new(WorkerConfig { ring_size: 1, ..WorkerConfig::default() }).unwrap();
    assert_eq!(one.info().ring_size, 1);
}

#[test]
fn copies_are_byte_exact_for_random_sizes_and_alignments() {
    let mut rng = Rng::new(1);
    let mut src = vec![0u8; 1 << 20];
    rng.fill(&mut src);
    for cfg in [busy(), sleepy()] {
        let mut e = WorkerEngine::new(cfg).unwrap();
        for _ in 0..300 {
            let len = match rng.below(4) {
                0 => rng.below(16) as usize,
                1 => rng.below(256) as usize,
                2 => rng.below(4096) as usize,
                _ => rng.below(64 * 1024) as usize,
            };
            let s = rng.below((src.len() - len) as u64 + 1) as usize;
            let d = rng.below(64) as usize;
            let mut dst = vec![0xa5u8; d + len + 64];
            let t = e.next_ticket();
            // SAFETY: `src` and `dst` outlive the op, which is retired before they are touched.
            let got = unsafe { e.enqueue(src.as_ptr().add(s), dst.as_mut_ptr().add(d), len, OpFlags::SUBMIT) };
            assert_eq!(got, Ok(t));
            reap_until(&mut e, t.next());
            assert_eq!(&dst[d..d + len], &src[s..s + len], "len {len} src+{s} dst+{d}");
            assert!(dst[..d].iter().chain(&dst[d + len..]).all(|&b| b == 0xa5), "wrote outside the op");
        }
    }
}

#[test]
fn invalid_ops_are_refused_without_consuming_a_ticket() {
    let mut e = WorkerEngine::new(busy()).unwrap();
    let mut buf = [0u8; 64];
    let p = buf.as_mut_ptr();
    // SAFETY: every call is refused before anything is enqueued; nothing touches `buf`.
    unsafe {
        assert_eq!(e.enqueue(p, p.add(8), 16, OpFlags::SUBMIT), Err(EnqueueError::Overlap));
        assert_eq!(e.enqueue(core::ptr::null(), p, 4, OpFlags::SUBMIT), Err(EnqueueError::BadAddress));
        assert_eq!(e.enqueue(p, core::ptr::null_mut(), 4, OpFlags::SUBMIT), Err(EnqueueError::BadAddress));
        let max = e.info().max_len;
        assert_eq!(e.enqueue(p, p.add(32), max + 1, OpFlags::SUBMIT), Err(EnqueueError::TooLong { len: max + 1, max }));
    }
    assert_eq!(e.next_ticket(), Ticket::ZERO);
    assert_eq!(e.stats().enqueued, 0);
    assert_eq!(e.stats().submits, 0);
}

#[test]
fn zero_length_ops_complete_without_touching_memory() {
    let mut e = WorkerEngine::new(busy()).unwrap();
    for _ in 0..10 {
        // SAFETY: a zero-length op touches no memory; null pointers are allowed for it.
        unsafe { e.enqueue(core::ptr::null(), core::ptr::null_mut(), 0, OpFlags::empty()).unwrap() };
    }
    e.submit();
    reap_until(&mut e, Ticket::new(10));
    assert_eq!(e.stats().completed, 10);
}

#[test]
fn nothing_retires_before_submit() {
    for cfg in [busy(), sleepy()] {
        let mut e = WorkerEngine::new(cfg).unwrap();
        let src: Vec<u8> = (0..32 * 1024).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        for k in 0..32 {
            // SAFETY: the buffers outlive the ops, which are retired (or the engine dropped) first.
            let t = unsafe {
                e.enqueue(src.as_ptr().add(k * 1024), dst.as_mut_ptr().add(k * 1024), 1024, OpFlags::empty())
            };
            assert_eq!(t, Ok(Ticket::new(k as u64)));
        }
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            assert_eq!(e.reap(usize::MAX, &mut []), Reaped::default());
            std::thread::yield_now();
        }
        assert_eq!((e.retired(), e.in_flight()), (Ticket::ZERO, 32));
        assert_eq!(e.stats().submits, 0);
        e.submit();
        reap_until(&mut e, Ticket::new(32));
        assert!(src == dst);
        assert_eq!(e.stats().submits, 1);
    }
}

#[test]
fn submit_flag_rings_the_doorbell() {
    let mut e = WorkerEngine::new(sleepy()).unwrap();
    let src = [7u8; 100];
    let mut dst = [0u8; 200];
    // SAFETY: the buffers outlive both ops, which are retired before `dst` is read.
    unsafe {
        e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 100, OpFlags::empty()).unwrap();
        e.enqueue(src.as_ptr(), dst.as_mut_ptr().add(100), 100, OpFlags::SUBMIT).unwrap();
    }
    reap_until(&mut e, Ticket::new(2));
    assert!(dst.iter().all(|&b| b == 7));
    assert_eq!(e.stats().submits, 1);
    e.submit(); // nothing new: not a doorbell
    assert_eq!(e.stats().submits, 1);
}

#[test]
fn reap_retires_in_order_at_most_max_and_only_completed_ops() {
    const OPS: usize = 200;
    const LEN: usize = 4096;
    let mut rng = Rng::new(2);
    let mut src = vec![0u8; OPS * LEN];
    rng.fill(&mut src);
    let mut dst = vec![0u8; OPS * LEN];
    let mut e = WorkerEngine::new(WorkerConfig { ring_size: 256, ..busy() }).unwrap();
    for k in 0..OPS {
        // SAFETY: the buffers outlive the ops; each op's bytes are read only after it is retired.
        unsafe { e.enqueue(src.as_ptr().add(k * LEN), dst.as_mut_ptr().add(k * LEN), LEN, OpFlags::empty()).unwrap() };
    }
    e.submit();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut retired = 0;
    while retired < OPS {
        let max = rng.below(8) as usize;
        let r = e.reap(max, &mut []);
        assert!(r.retired <= max && r.failed == 0);
        // Everything newly retired, in ticket order, has its bytes in place.
        for k in retired..retired + r.retired {
            assert_eq!(&dst[k * LEN..(k + 1) * LEN], &src[k * LEN..(k + 1) * LEN], "op {k}");
        }
        retired += r.retired;
        assert_eq!(e.retired(), Ticket::new(retired as u64));
        assert_eq!(e.burst_capacity(), 256 - (OPS - retired));
        assert!(Instant::now() < deadline);
    }
    assert!(src == dst);
}

#[test]
fn fenced_chain_sees_each_earlier_copy() {
    // a -> b, then (fenced) b -> c, c -> d...: each op reads what the previous one wrote.
    const HOPS: usize = 64;
    const LEN: usize = 512;
    let mut rng = Rng::new(3);
    let mut bufs = vec![0u8; (HOPS + 1) * LEN];
    rng.fill(&mut bufs[..LEN]);
    let first = bufs[..LEN].to_vec();
    let mut e = WorkerEngine::new(busy()).unwrap();
    let base = bufs.as_mut_ptr();
    for k in 0..HOPS {
        let flags = if k == 0 { OpFlags::empty() } else { OpFlags::FENCE };
        // SAFETY: `bufs` outlives the ops, which are retired before it is read; hop k reads the
        // buffer hop k-1 wrote only through this channel, ordered by the fence.
        unsafe { e.enqueue(base.add(k * LEN), base.add((k + 1) * LEN), LEN, flags).unwrap() };
    }
    e.submit();
    reap_until(&mut e, Ticket::new(HOPS as u64));
    assert_eq!(&bufs[HOPS * LEN..], &first[..]);
}

#[test]
fn tickets_keep_counting_past_the_u16_wrap() {
    const OPS: u64 = 70_000;
    let mut e = WorkerEngine::new(WorkerConfig { ring_size: 512, ..busy() }).unwrap();
    let src: Vec<u8> = (0..64u8).collect();
    let mut dst = vec![0u8; 64 * 512];
    let mut rng = Rng::new(4);
    let mut next = 0u64;
    while next < OPS {
        if e.burst_capacity() == 0 {
            e.submit();
            e.reap(rng.below(512) as usize + 1, &mut []);
            continue;
        }
        let slot = (next % 512) as usize * 64;
        let flags = if rng.chance(32) { OpFlags::SUBMIT } else { OpFlags::empty() };
        // SAFETY: `src` and `dst` outlive the engine's ops; slot `next % 512` is rewritten only after
        // the op that last wrote it has retired (the ring holds at most 512 unretired ops).
        let t = unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr().add(slot), 64, flags) };
        assert_eq!(t, Ok(Ticket::new(next)));
        next += 1;
    }
    e.submit();
    reap_until(&mut e, Ticket::new(OPS));
    assert_eq!(e.next_ticket(), Ticket::new(OPS));
    assert_eq!(e.in_flight(), 0);
    let s = e.stats();
    assert_eq!((s.enqueued, s.completed, s.bytes), (OPS, OPS, OPS * 64));
    assert!(dst.chunks(64).all(|c| c == &src[..]));
}

#[test]
fn full_ring_refuses_with_ring_full_and_recovers_after_reap() {
    let mut e = WorkerEngine::new(WorkerConfig { ring_size: 8, ..busy() }).unwrap();
    let src = [3u8; 16];
    let mut dst = [0u8; 16 * 9];
    let d = dst.as_mut_ptr();
    for k in 0..8 {
        // SAFETY: the buffers outlive the ops, which are retired before `dst` is read.
        assert_eq!(unsafe { e.enqueue(src.as_ptr(), d.add(k * 16), 16, OpFlags::empty()) }, Ok(Ticket::new(k as u64)));
    }
    assert_eq!(e.burst_capacity(), 0);
    // SAFETY: refused; nothing is enqueued.
    assert_eq!(unsafe { e.enqueue(src.as_ptr(), d.add(128), 16, OpFlags::SUBMIT) }, Err(EnqueueError::RingFull));
    assert_eq!(e.next_ticket(), Ticket::new(8), "a refused op consumes no ticket");
    assert_eq!(e.stats().ring_full, 1);
    assert_eq!(e.stats().submits, 0, "a refused SUBMIT op rings no doorbell");
    e.submit();
    // Completed but not yet retired ops still hold their slots.
    std::thread::sleep(Duration::from_millis(5));
    // SAFETY: refused; nothing is enqueued.
    assert_eq!(unsafe { e.enqueue(src.as_ptr(), d.add(128), 16, OpFlags::empty()) }, Err(EnqueueError::RingFull));
    assert_eq!(e.stats().ring_full, 2);
    reap_until(&mut e, Ticket::new(1));
    assert!(e.burst_capacity() >= 1);
    // SAFETY: as above.
    assert_eq!(unsafe { e.enqueue(src.as_ptr(), d.add(128), 16, OpFlags::SUBMIT) }, Ok(Ticket::new(8)));
    reap_until(&mut e, Ticket::new(9));
    assert!(dst.iter().all(|&b| b == 3));
}

#[test]
fn stats_count_ops_bytes_doorbells_completions_and_empty_polls() {
    let mut e = WorkerEngine::new(busy()).unwrap();
    let src = [1u8; 300];
    let mut dst = [0u8; 300];
    assert_eq!(e.reap(16, &mut []), Reaped::default());
    // SAFETY: the buffers outlive the ops, which are retired below.
    unsafe {
        e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 100, OpFlags::empty()).unwrap();
        e.enqueue(src.as_ptr().add(100), dst.as_mut_ptr().add(100), 200, OpFlags::SUBMIT).unwrap();
    }
    reap_until(&mut e, Ticket::new(2));
    let s = e.stats();
    assert_eq!((s.enqueued, s.bytes, s.submits, s.completed, s.errors), (2, 300, 1, 2, 0));
    assert!(s.empty_polls >= 1);
    assert_eq!(s.in_flight(), 0);
    e.reset_stats();
    assert_eq!(e.stats(), Default::default());
    assert_eq!(e.next_ticket(), Ticket::new(2), "tickets are not stats");
}

#[test]
fn reap_never_writes_the_failed_buffer() {
    let mut e = WorkerEngine::new(busy()).unwrap();
    let src = [1u8; 64];
    let mut dst = [0u8; 64];
    let mut failed = [FailedOp::EMPTY; 4];
    // SAFETY: the buffers outlive the op, which is retired below.
    unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 64, OpFlags::SUBMIT).unwrap() };
    let deadline = Instant::now() + Duration::from_secs(15);
    while e.reap(4, &mut failed).retired == 0 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert_eq!(failed, [FailedOp::EMPTY; 4]);
}

#[test]
fn engine_moves_to_another_thread() {
    let mut e = WorkerEngine::new(busy()).unwrap();
    let src = vec![4u8; 1000];
    let dst = std::thread::spawn(move || {
        let mut dst = vec![0u8; 1000];
        // SAFETY: the buffers outlive the op, which is retired before `dst` is returned.
        unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), 1000, OpFlags::SUBMIT).unwrap() };
        reap_until(&mut e, Ticket::new(1));
        dst
    })
    .join()
    .unwrap();
    assert!(dst.iter().all(|&b| b == 4));
}

/// Seeds per idle strategy in the stress tests.
const SEEDS: u64 = 48;
/// Ops per seed.
const OPS: usize = 3000;

/// One op the stress test has enqueued and not yet checked.
struct Op {
    src: usize,
    dst: usize,
    len: usize,
}

/// Random bursts, random doorbells (submit calls and SUBMIT flags), random reap sizes, random
/// pauses that let a parking worker fall asleep, random sizes and alignments; every op's bytes are
/// checked when it retires, in ticket order, and some runs end by dropping the engine with ops
/// enqueued and in flight.
fn stress(seed: u64, cfg: WorkerConfig, ops: usize) -> (u64, u64) {
    let mut rng = Rng::new(seed);
    let mut src = vec![0u8; 256 * 1024];
    rng.fill(&mut src);
    // Every op writes its own region of `dst`, so no two ops in flight touch the same bytes.
    let mut dst = vec![0u8; ops * (2048 + 64)];
    let ring_size = 1 << rng.below(7); // 1..=64
    let mut e = WorkerEngine::new(WorkerConfig { ring_size, ..cfg }).unwrap();
    let mut pending = std::collections::VecDeque::new();
    let mut cursor = 0usize;
    let mut enqueued = 0usize;
    let mut checked = 0usize;
    let drop_early = rng.chance(4);
    let deadline = Instant::now() + Duration::from_secs(30);

    let check = |pending: &mut std::collections::VecDeque<Op>, dst: &[u8], n: usize, checked: &mut usize| {
        for _ in 0..n {
            let op = pending.pop_front().expect("retired an op that was never enqueued");
            assert_eq!(&dst[op.dst..op.dst + op.len], &src[op.src..op.src + op.len], "seed {seed} op {checked}");
            *checked += 1;
        }
    };

    while enqueued < ops {
        assert!(Instant::now() < deadline, "seed {seed}: stuck (lost wake-up?)");
        let burst = 1 + rng.below(2 * ring_size as u64) as usize;
        for _ in 0..burst.min(ops - enqueued) {
            let len = match rng.below(8) {
                0 => 0,
                1..=4 => rng.below(128) as usize,
                _ => rng.below(2048) as usize,
            };
            let s = rng.below((src.len() - len) as u64 + 1) as usize;
            let d = cursor + rng.below(64) as usize;
            let flags = if rng.chance(8) { OpFlags::SUBMIT } else { OpFlags::empty() };
            let before = e.next_ticket();
            // SAFETY: `src` and `dst` outlive the engine (dropped at the end of this function); the
            // op's region of `dst` is fresh and read only after the op has retired.
            let r = unsafe { e.enqueue(src.as_ptr().add(s), dst.as_mut_ptr().add(d), len, flags) };
            match r {
                Ok(t) => {
                    assert_eq!(t, before);
                    pending.push_back(Op { src: s, dst: d, len });
                    cursor = d + len;
                    enqueued += 1;
                }
                Err(EnqueueError::RingFull) => {
                    assert_eq!(e.burst_capacity(), 0);
                    assert_eq!(e.next_ticket(), before);
                    break;
                }
                Err(err) => panic!("seed {seed}: unexpected {err:?}"),
            }
        }
        if rng.chance(3) {
            e.submit();
        }
        if rng.chance(5) {
            // Give a parking worker time to fall asleep before the next doorbell.
            if rng.chance(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(rng.below(200)));
            }
        }
        if !drop_early || enqueued < ops / 2 {
            let max = match rng.below(4) {
                0 => 0,
                1 => 1,
                2 => rng.below(16) as usize,
                _ => usize::MAX,
            };
            let r = e.reap(max, &mut []);
            assert!(r.retired <= max && r.failed == 0);
            check(&mut pending, &dst, r.retired, &mut checked);
            assert_eq!(e.retired(), Ticket::new(checked as u64));
            assert_eq!(e.in_flight(), pending.len() as u64);
        }
        if e.burst_capacity() == 0 && !drop_early {
            // A full ring only drains after a doorbell.
            e.submit();
        }
        if drop_early && e.burst_capacity() == 0 {
            break;
        }
    }

    let sleeps = (e.worker_sleeps(), e.wakeups());
    if drop_early {
        // Drop with ops enqueued, submitted and unsubmitted: drop must finish them all.
        drop(e);
        let n = pending.len();
        check(&mut pending, &dst, n, &mut checked);
    } else {
        e.submit();
        reap_until(&mut e, Ticket::new(enqueued as u64));
        let n = pending.len();
        check(&mut pending, &dst, n, &mut checked);
        let s = e.stats();
        assert_eq!((s.enqueued, s.completed, s.errors), (enqueued as u64, enqueued as u64, 0));
    }
    assert_eq!(checked, enqueued);
    sleeps
}

#[test]
fn random_bursts_submits_and_reaps_copy_every_byte_busy_polling() {
    for seed in 0..SEEDS {
        assert_eq!(stress(seed, busy(), OPS), (0, 0), "a busy-polling worker never sleeps");
    }
}

#[test]
fn random_bursts_submits_and_reaps_copy_every_byte_parking() {
    let (mut sleeps, mut wakeups) = (0, 0);
    for seed in 1000..1000 + SEEDS {
        let (s, w) = stress(seed, sleepy(), OPS);
        sleeps += s;
        wakeups += w;
    }
    eprintln!("parking stress: {sleeps} sleeps, {wakeups} wake-ups");
    // The wake-up path was exercised (and never lost a wake-up: the park timeout is 120 s).
    assert!(sleeps > 0 && wakeups > 0, "sleeps {sleeps} wakeups {wakeups}");
}

#[test]
fn random_bursts_with_default_parking_copy_every_byte() {
    for seed in 2000..2000 + SEEDS / 4 {
        stress(seed, WorkerConfig::default(), OPS);
    }
}
