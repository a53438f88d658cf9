//! The conformance suite every backend runs against itself (feature `testing`).
//!
//! Each check takes a fresh engine from the caller's factory and panics with a message naming the
//! broken rule. [`run_all`] runs the engine contract checks; [`run_policy`] runs the policy-layer
//! checks ([`Channel`] over the engine); [`run_fault`] wraps the engine in a
//! [`FaultEngine`](crate::fault::FaultEngine) and checks that failures are reported with the right
//! tickets. A backend's test is three lines:
//!
//! ```ignore
//! copy_engine::conformance::run_all(|| MyEngine::new());
//! copy_engine::conformance::run_policy(|| MyEngine::new());
//! copy_engine::conformance::run_fault(|| MyEngine::new());
//! ```
//!
//! [`LazyEngine`] is a deterministic asynchronous engine for tests: it copies at reap time, a few
//! ops per reap call, so everything above it sees real "not yet done" states.

use crate::channel::Channel;
use crate::engine::{check_copy, CopyEngine, CopyOp, EngineInfo, Reaped};
use crate::error::{BurstError, EnqueueError, FailedOp};
use crate::fault::{FaultConfig, FaultEngine};
use crate::flags::{Capabilities, OpFlags};
use crate::future::poll_inline;
use crate::policy::{Adaptive, OnError, OnRingFull, Policy};
use crate::stats::EngineStats;
use crate::ticket::{Ticket, TicketRange};
use core::pin::pin;
use core::task::Poll;

/// Largest copy the suite makes.
pub const MAX_COPY: usize = 64 * 1024;

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// One copy of the suite: its own source and destination buffers, with guard bytes around the
/// destination to catch writes out of bounds.
struct Job {
    src: Vec<u8>,
    dst: Vec<u8>,
    src_off: usize,
    dst_off: usize,
    len: usize,
}

const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xa5;

impl Job {
    fn new(rng: &mut Rng, len: usize) -> Job {
        let src_off = rng.range(0, 63);
        let dst_off = rng.range(0, 63);
        let mut src = vec![0u8; src_off + len];
        rng.fill(&mut src);
        let dst = vec![GUARD_BYTE; GUARD + dst_off + len + GUARD];
        Job { src, dst, src_off, dst_off, len }
    }

    fn sized(rng: &mut Rng, lo: usize, hi: usize) -> Job {
        let len = rng.range(lo, hi);
        Job::new(rng, len)
    }

    fn ptrs(&mut self) -> (*const u8, *mut u8) {
        // `wrapping_add` keeps this free of `unsafe`; both offsets are inside their allocations.
        let s = self.src.as_ptr().wrapping_add(self.src_off);
        let d = self.dst.as_mut_ptr().wrapping_add(GUARD + self.dst_off);
        (s, d)
    }

    fn copied(&self) -> bool {
        self.dst[GUARD + self.dst_off..][..self.len] == self.src[self.src_off..][..self.len]
    }

    fn assert_copied(&self, what: &str, i: usize) {
        assert!(self.copied(), "{what}: op {i} ({} bytes) not copied byte-exact", self.len);
        self.assert_guards(what, i);
    }

    fn assert_guards(&self, what: &str, i: usize) {
        let end = GUARD + self.dst_off + self.len;
        assert!(
            self.dst[..GUARD + self.dst_off].iter().chain(&self.dst[end..]).all(|&b| b == GUARD_BYTE),
            "{what}: op {i} wrote outside its destination"
        );
    }
}

/// Enqueues with the suite's memory contract: every job outlives its op (jobs are only dropped
/// after the engine has retired everything).
fn enqueue<E: CopyEngine>(e: &mut E, job: &mut Job, flags: OpFlags) -> Result<Ticket, EnqueueError> {
    let (s, d) = job.ptrs();
    // SAFETY: the job's buffers are valid for `len` bytes and stay alive and untouched until the
    // suite has reaped every op (each check drains before dropping its jobs).
    unsafe { e.enqueue(s, d, job.len, flags) }
}

/// Reaps until everything enqueued has retired, collecting failures.
fn drain<E: CopyEngine>(e: &mut E, failed: &mut Vec<FailedOp>) {
    e.submit();
    let mut buf = [FailedOp::EMPTY; 16];
    let mut spins = 0u64;
    while e.retired() < e.next_ticket() {
        let before = e.retired();
        let r = e.reap(usize::MAX, &mut buf);
        assert_eq!(e.retired(), before.add(r.retired as u64), "reap's count disagrees with retired()");
        assert!(r.failed <= r.retired, "more failed than retired");
        failed.extend_from_slice(&buf[..r.failed]);
        if r.retired == 0 {
            spins += 1;
            assert!(spins < 2_000_000_000, "engine never completes");
            core::hint::spin_loop();
        }
    }
}

/// Runs every engine-contract check on engines from `make`.
pub fn run_all<E: CopyEngine>(mut make: impl FnMut() -> E) {
    refused_ops_consume_no_ticket(make());
    copies_are_byte_exact(make(), 1);
    completions_retire_in_order(make());
    capacity_is_accounted(make());
    tickets_run_past_u16_wrap(make());
    stats_are_consistent(make());
    fence_orders_dependent_copies(make());
    bursts_match_single_ops(&mut make);
}

/// Overlapping and over-long ops are typed errors and consume no ticket.
pub fn refused_ops_consume_no_ticket<E: CopyEngine>(mut e: E) {
    let mut buf = vec![0u8; 256];
    let p = buf.as_mut_ptr();
    let t0 = e.next_ticket();
    // SAFETY: the op is refused before anything is enqueued (overlap is checked first).
    let r = unsafe { e.enqueue(p, p.wrapping_add(16), 64, OpFlags::empty()) };
    assert_eq!(r, Err(EnqueueError::Overlap), "overlapping copy accepted");
    let max = e.info().max_len;
    if max < usize::MAX / 4 {
        let mut big = Job { src: vec![0; 1], dst: vec![0; 1], src_off: 0, dst_off: 0, len: 0 };
        let (s, _) = big.ptrs();
        // SAFETY: the op is refused for its length before any memory is touched.
        let r = unsafe { e.enqueue(s, p.wrapping_add(128), max + 1, OpFlags::empty()) };
        assert_eq!(r, Err(EnqueueError::TooLong { len: max + 1, max }), "over-long copy accepted");
    }
    assert_eq!(e.next_ticket(), t0, "a refused op consumed a ticket");
    assert_eq!(e.in_flight(), 0);
}

/// Random sizes 0..=64 KiB at random alignments arrive byte-exact, nothing outside is touched.
pub fn copies_are_byte_exact<E: CopyEngine>(mut e: E, seed: u64) {
    let mut rng = Rng::new(seed);
    let max = e.info().max_len.min(MAX_COPY);
    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    for round in 0..8 {
        let burst = rng.range(1, 32).min(e.burst_capacity().max(1));
        let first = jobs.len();
        for _ in 0..burst {
            let len = match rng.range(0, 9) {
                0 => 0,
                1 => rng.range(1, 64),
                2 => max,
                _ => rng.range(0, max),
            };
            jobs.push(Job::new(&mut rng, len));
        }
        for (i, job) in jobs[first..].iter_mut().enumerate() {
            let expect = e.next_ticket();
            let t = enqueue(&mut e, job, OpFlags::empty()).unwrap_or_else(|err| panic!("round {round} op {i}: {err}"));
            assert_eq!(t, expect, "ticket is not the announced next ticket");
            assert_eq!(e.next_ticket(), t.next());
        }
        drain(&mut e, &mut failed);
    }
    assert!(failed.is_empty(), "ops failed on a healthy engine: {failed:?}");
    for (i, job) in jobs.iter().enumerate() {
        job.assert_copied("byte-exact", i);
    }
}

/// Reaping with a small `max` retires exactly that many, in ticket order.
pub fn completions_retire_in_order<E: CopyEngine>(mut e: E) {
    let mut rng = Rng::new(7);
    let n = e.burst_capacity().min(64);
    let mut jobs: Vec<Job> = (0..n).map(|_| Job::sized(&mut rng, 1, 2048)).collect();
    let start = e.next_ticket();
    for (i, job) in jobs.iter_mut().enumerate() {
        let t = enqueue(&mut e, job, OpFlags::empty()).expect("enqueue");
        assert_eq!(t, start.add(i as u64), "tickets are not consecutive");
    }
    e.submit();
    let mut buf = [FailedOp::EMPTY; 4];
    let mut seen = start;
    while e.retired() < e.next_ticket() {
        let r = e.reap(3, &mut buf);
        assert!(r.retired <= 3, "reap retired more than max");
        seen = seen.add(r.retired as u64);
        assert_eq!(e.retired(), seen, "retired() is not the running total of reaped ops");
        // Everything retired must be complete, everything before it too.
        for (i, job) in jobs.iter().enumerate().take(seen.since(start) as usize) {
            job.assert_copied("in-order", i);
        }
    }
}

/// `burst_capacity` counts down by one per op, a full ring refuses with `RingFull` (counted), and
/// reaping frees the slots.
pub fn capacity_is_accounted<E: CopyEngine>(mut e: E) {
    let mut rng = Rng::new(11);
    let cap = e.burst_capacity();
    assert!(cap >= 1 && cap <= e.info().ring_size, "capacity {cap} outside 1..=ring_size");
    let mut jobs: Vec<Job> = (0..cap + 1).map(|_| Job::new(&mut rng, 64)).collect();
    for (i, job) in jobs[..cap].iter_mut().enumerate() {
        assert_eq!(e.burst_capacity(), cap - i, "capacity does not count down by one per op");
        enqueue(&mut e, job, OpFlags::empty()).expect("enqueue below capacity");
    }
    assert_eq!(e.burst_capacity(), 0);
    let full_before = e.stats().ring_full;
    let t = e.next_ticket();
    assert_eq!(enqueue(&mut e, &mut jobs[cap], OpFlags::empty()), Err(EnqueueError::RingFull));
    assert_eq!(e.next_ticket(), t, "a refused op consumed a ticket");
    assert_eq!(e.stats().ring_full, full_before + 1, "ring-full not counted");
    drain(&mut e, &mut Vec::new());
    assert_eq!(e.burst_capacity(), cap, "reaping did not free the ring");
    enqueue(&mut e, &mut jobs[cap], OpFlags::SUBMIT).expect("enqueue after drain");
    drain(&mut e, &mut Vec::new());
    for (i, job) in jobs.iter().enumerate() {
        job.assert_copied("capacity", i);
    }
}

/// More than 70,000 ops: tickets stay consecutive and correct far past any `u16` ring index.
pub fn tickets_run_past_u16_wrap<E: CopyEngine>(mut e: E) {
    const OPS: u64 = 70_500;
    let mut rng = Rng::new(3);
    let burst = e.burst_capacity().clamp(1, 32);
    let mut jobs: Vec<Job> = (0..burst).map(|_| Job::new(&mut rng, 64)).collect();
    let start = e.next_ticket();
    let mut done = 0u64;
    while done < OPS {
        for job in jobs.iter_mut() {
            rng.fill(&mut job.src);
            job.dst.fill(GUARD_BYTE);
            let t = enqueue(&mut e, job, OpFlags::empty()).expect("enqueue");
            assert_eq!(t, start.add(done), "ticket sequence broken at op {done}");
            done += 1;
        }
        drain(&mut e, &mut Vec::new());
        for (i, job) in jobs.iter().enumerate() {
            job.assert_copied("u16 wrap", done as usize - burst + i);
        }
    }
    assert_eq!(e.retired(), start.add(done));
}

/// Stats agree with what was done.
pub fn stats_are_consistent<E: CopyEngine>(mut e: E) {
    e.reset_stats();
    let mut rng = Rng::new(5);
    let n = e.burst_capacity().min(40);
    let mut jobs: Vec<Job> = (0..n).map(|_| Job::sized(&mut rng, 0, 4096)).collect();
    let bytes: u64 = jobs.iter().map(|j| j.len as u64).sum();
    for job in jobs.iter_mut() {
        enqueue(&mut e, job, OpFlags::empty()).expect("enqueue");
    }
    drain(&mut e, &mut Vec::new());
    let s: EngineStats = e.stats();
    assert_eq!(s.enqueued, n as u64, "enqueued count");
    assert_eq!(s.bytes, bytes, "byte count");
    assert_eq!(s.completed + s.errors, n as u64, "completed + errors != enqueued");
    assert_eq!(s.in_flight(), 0);
    assert!(s.submits >= 1, "no doorbell counted");
}

/// With a fence, a copy that reads what an earlier copy wrote sees the written bytes. Skipped on
/// engines without [`Capabilities::FENCE`].
pub fn fence_orders_dependent_copies<E: CopyEngine>(mut e: E) {
    if !e.info().capabilities.contains(Capabilities::FENCE) {
        return;
    }
    let mut rng = Rng::new(13);
    for round in 0..16 {
        let len = rng.range(1, 8192);
        let mut a = vec![0u8; len];
        rng.fill(&mut a);
        let mut b = vec![0u8; len];
        let mut c = vec![0u8; len];
        let (pa, pb, pc) = (a.as_ptr(), b.as_mut_ptr(), c.as_mut_ptr());
        // SAFETY: a, b, c live until the drain below; the second op reads b only after the fence.
        unsafe {
            e.enqueue(pa, pb, len, OpFlags::empty()).expect("enqueue a->b");
            e.enqueue(pb, pc, len, OpFlags::FENCE | OpFlags::SUBMIT).expect("enqueue b->c");
        }
        drain(&mut e, &mut Vec::new());
        assert!(c == a, "round {round}: fenced copy read stale bytes");
    }
}

/// The ops of `jobs` as a burst.
fn ops_of(jobs: &mut [Job]) -> Vec<CopyOp> {
    jobs.iter_mut()
        .map(|j| {
            let (s, d) = j.ptrs();
            CopyOp::new(s, d, j.len)
        })
        .collect()
}

/// `enqueue_burst` does what `enqueue` does op by op: the same outcomes, tickets and counters, the
/// same bytes; a bad op in the middle stops the burst there (the ops before it accepted, none after
/// it), as does a full ring; a fenced burst sees what the burst before it wrote. One engine takes
/// the ops one at a time, then a second (one engine at a time: some devices open once per
/// process) the same ops as bursts.
pub fn bursts_match_single_ops<E: CopyEngine>(mut make: impl FnMut() -> E) {
    let singles = engine_burst_pass(make(), false);
    let bursts = engine_burst_pass(make(), true);
    assert_eq!(bursts, singles, "bursts and op-by-op enqueue differ (outcomes per round, then counters)");
}

/// What a burst of `ops` with `flags` means, done with `enqueue` one op at a time: the burst's
/// flags split over its ops, and the doorbell after a partial burst.
///
/// # Safety
/// The contract of [`CopyEngine::enqueue`] for every op.
unsafe fn one_by_one<E: CopyEngine>(e: &mut E, ops: &[CopyOp], flags: OpFlags) -> Result<(), BurstError> {
    for (i, op) in ops.iter().enumerate() {
        let f = crate::engine::burst_op_flags(flags, i, ops.len());
        // SAFETY: forwarded from this function's contract.
        if let Err(error) = unsafe { e.enqueue(op.src, op.dst, op.len, f) } {
            if i != 0 && flags.contains(OpFlags::SUBMIT) {
                e.submit();
            }
            return Err(BurstError { accepted: i, error });
        }
    }
    Ok(())
}

/// One pass of [`bursts_match_single_ops`]: the outcome of each round and the counters
/// `(enqueued, bytes, ring_full, submits)`.
fn engine_burst_pass<E: CopyEngine>(mut e: E, as_bursts: bool) -> (Vec<Result<(), BurstError>>, [u64; 4]) {
    e.reset_stats();
    let mut rng = Rng::new(17);
    let cap = e.burst_capacity().min(48);
    let max = e.info().max_len.min(8192);
    let t0 = e.next_ticket();
    let mut outcomes = Vec::new();
    let mut overlap = vec![0u8; 256];
    let p = overlap.as_mut_ptr();
    for round in 0..6 {
        let n = rng.range(1, cap);
        let bad = if round % 2 == 1 { Some(rng.range(0, n - 1)) } else { None };
        let mut jobs: Vec<Job> = (0..n).map(|_| Job::sized(&mut rng, 0, max)).collect();
        let mut ops = ops_of(&mut jobs);
        if let Some(k) = bad {
            ops[k] = CopyOp::new(p, p.wrapping_add(8), 64);
        }
        let before = e.next_ticket();
        let got = if as_bursts {
            // SAFETY: the jobs' buffers outlive the drain below; the bad op is refused untouched.
            unsafe { e.enqueue_burst(&ops, OpFlags::SUBMIT) }
        } else {
            // SAFETY: as above.
            unsafe { one_by_one(&mut e, &ops, OpFlags::SUBMIT) }
        };
        let accepted = got.map_or_else(|b| b.accepted, |()| n);
        assert_eq!(e.next_ticket(), before.add(accepted as u64), "round {round}: tickets consumed");
        drain(&mut e, &mut Vec::new());
        for (i, job) in jobs[..accepted].iter().enumerate() {
            job.assert_copied("burst", i);
        }
        for job in &jobs[accepted..] {
            assert!(job.dst.iter().all(|&x| x == GUARD_BYTE), "round {round}: an op after the refused one was copied");
        }
        outcomes.push(got);
    }
    // A burst longer than the ring: the ring's worth accepted, then `RingFull`, counted.
    let cap = e.burst_capacity();
    let mut jobs: Vec<Job> = (0..cap + 3).map(|_| Job::new(&mut rng, 64)).collect();
    let ops = ops_of(&mut jobs);
    let got = if as_bursts {
        // SAFETY: the jobs outlive the drain below.
        unsafe { e.enqueue_burst(&ops, OpFlags::SUBMIT) }
    } else {
        // SAFETY: as above.
        unsafe { one_by_one(&mut e, &ops, OpFlags::SUBMIT) }
    };
    assert_eq!(got, Err(BurstError { accepted: cap, error: EnqueueError::RingFull }), "a burst past the ring");
    drain(&mut e, &mut Vec::new());
    for (i, job) in jobs[..cap].iter().enumerate() {
        job.assert_copied("burst to a full ring", i);
    }
    outcomes.push(got);
    let s = e.stats();
    assert_eq!(e.next_ticket().since(t0), s.enqueued, "enqueued count");
    if as_bursts && e.info().capabilities.contains(Capabilities::FENCE) {
        let len = 3000.min(max);
        let mut x = vec![0u8; len];
        rng.fill(&mut x);
        let (mut y, mut z) = (vec![0u8; len], vec![0u8; len]);
        let (px, py, pz) = (x.as_ptr(), y.as_mut_ptr(), z.as_mut_ptr());
        // SAFETY: x, y, z live until the drain; the second burst reads y only after its fence.
        unsafe {
            e.enqueue_burst(&[CopyOp::new(px, py, len)], OpFlags::empty()).expect("x -> y");
            e.enqueue_burst(&[CopyOp::new(py, pz, len)], OpFlags::FENCE | OpFlags::SUBMIT).expect("y -> z");
        }
        drain(&mut e, &mut Vec::new());
        assert!(z == x, "fenced burst read stale bytes");
    }
    (outcomes, [s.enqueued, s.bytes, s.ring_full, s.submits])
}

/// Wraps the engine in a [`FaultEngine`] failing 5% of ops and checks every failure is reported
/// once, in order, with the ticket of the op that really failed (its destination is incomplete).
pub fn run_fault<E: CopyEngine>(mut make: impl FnMut() -> E) {
    let cfg = FaultConfig { error_rate: 0.05, delay_polls: 2, ring_full_every: 97, ring_full_burst: 3, seed: 42 };
    let mut e = FaultEngine::new(make(), cfg);
    let mut rng = Rng::new(21);
    let mut jobs: Vec<(Ticket, Job)> = Vec::new();
    let mut failed = Vec::new();
    let mut ring_full = 0;
    while jobs.len() < 2000 {
        let mut job = Job::sized(&mut rng, 2, 1500);
        // Distinct bytes in the second half, so a half copy is visibly incomplete.
        job.dst[GUARD + job.dst_off..][..job.len].iter_mut().zip(&job.src[job.src_off..]).for_each(|(d, s)| *d = !*s);
        match enqueue(&mut e, &mut job, OpFlags::empty()) {
            Ok(t) => jobs.push((t, job)),
            Err(EnqueueError::RingFull) => {
                ring_full += 1;
                drain(&mut e, &mut failed);
            }
            Err(err) => panic!("fault wrapper refused an op: {err}"),
        }
        if rng.range(0, 7) == 0 {
            drain(&mut e, &mut failed);
        }
    }
    drain(&mut e, &mut failed);
    let injected = e.injected();
    assert!(injected.errors > 0 && ring_full > 0, "nothing injected");
    assert_eq!(failed.len() as u64, injected.errors, "a failure was lost or invented");
    assert!(failed.windows(2).all(|w| w[0].ticket < w[1].ticket), "failures not in ticket order");
    let mut f = failed.iter().peekable();
    for (i, (t, job)) in jobs.iter().enumerate() {
        let reported = f.next_if(|x| x.ticket == *t).is_some();
        assert_eq!(
            reported,
            !job.copied(),
            "op {i} ({t}): reported failed = {reported}, but copied = {}",
            job.copied()
        );
        job.assert_guards("fault", i);
    }
}

/// Runs the policy-layer checks on a [`Channel`] over engines from `make`.
pub fn run_policy<E: CopyEngine>(mut make: impl FnMut() -> E) {
    small_copies_go_to_cpu(make());
    full_ring_falls_back_in_order(make());
    full_ring_pushes_back(make());
    failed_copies_are_retried_in_order(make());
    failed_copies_are_reported_with_their_ticket(make());
    let sync = make().info().capabilities.contains(Capabilities::SYNC);
    for policy in burst_policies() {
        channel_bursts_match_single_ops(&mut make, policy, sync);
    }
}

/// The policies [`channel_bursts_match_single_ops`] runs under in [`run_policy`]: size threshold
/// and ring-full fallback, push back with reported failures, adaptive offload.
pub fn burst_policies() -> [Policy; 3] {
    let adaptive = Adaptive { stall_polls: 1, probe_every: 6, max_probe_every: 48 };
    [
        Policy::default().with_cpu_below(128),
        Policy::offload_all().with_ring_full(OnRingFull::PushBack).with_error(OnError::Report),
        Policy::default().with_cpu_below(64).with_adaptive(Some(adaptive)),
    ]
}

/// [`Channel::enqueue_burst`] does what [`Channel::enqueue`] does op by op, under `policy`, over
/// an engine that fails ops, fills its ring and completes late ([`FaultEngine`]): the same
/// outcome when an op is refused (push back, a bad op), the same tickets and counters, the same
/// ops reported failed, every accepted op copied (but the failed ones under the report policy) and
/// no other. Bursts of mixed sizes, some fenced, some with a bad op.
///
/// Which path an op takes depends on when the engine completes (a ring that fills, adaptive
/// offload), so only engines that complete `deterministically` (synchronous ones, [`LazyEngine`])
/// can be held to the op-by-op outcome: then a first engine takes the ops one at a time and a
/// second the same ops as bursts. Otherwise the bursts are checked on their own: each stops only
/// at its bad op or at a push back, and its tickets are consecutive.
pub fn channel_bursts_match_single_ops<E: CopyEngine>(
    mut make: impl FnMut() -> E,
    policy: Policy,
    deterministically: bool,
) {
    let bursts = channel_burst_pass(make(), policy, true);
    if !deterministically {
        return;
    }
    let singles = channel_burst_pass(make(), policy, false);
    assert_eq!(bursts.0, singles.0, "burst outcomes differ from op-by-op enqueue");
    assert_eq!(bursts.2, singles.2, "retired watermarks differ");
    assert_eq!(bursts.3, singles.3, "different ops reported failed");
    let ((mut sa, submits_a), (mut sb, submits_b)) = (singles.1, bursts.1);
    // Polls that found nothing depend on how often each was polled while draining.
    (sa.empty_polls, sb.empty_polls) = (0, 0);
    assert_eq!(sb, sa, "policy counters differ");
    assert_eq!(submits_b, submits_a, "doorbells differ");
    // The paths the comparison is about were taken.
    assert!(sb.offloaded > 0, "nothing offloaded: {sb:?}");
    match (policy.on_ring_full, policy.adaptive) {
        (OnRingFull::PushBack, _) => assert!(sb.pushed_back > 0, "no burst was pushed back"),
        (_, Some(_)) => assert!(sb.cpu_adaptive > 0 && sb.adaptive_to_engine > 0, "adaptive never acted: {sb:?}"),
        (OnRingFull::CpuCopy, None) => assert!(sb.cpu_small > 0 && sb.cpu_ring_full > 0, "no fallback taken"),
    }
}

/// What one pass of [`channel_bursts_match_single_ops`] saw: the outcome of each burst, the
/// counters, the retired watermark after each poll, the tickets reported failed.
type ChannelPass = (Vec<Result<TicketRange, BurstError>>, (crate::stats::PolicyStats, u64), Vec<Ticket>, Vec<Ticket>);

fn channel_burst_pass<E: CopyEngine>(e: E, policy: Policy, as_bursts: bool) -> ChannelPass {
    let cfg = FaultConfig { error_rate: 0.02, ring_full_every: 37, ring_full_burst: 4, delay_polls: 2, seed: 5 };
    let ch = Channel::new(FaultEngine::new(e, cfg), policy);
    let mut rng = Rng::new(53);
    let mut overlap = vec![0u8; 256];
    let p = overlap.as_mut_ptr();
    // Every job is kept until the drain at the end: ops in flight write them.
    let mut jobs: Vec<Job> = Vec::new();
    let mut accepted_ops: Vec<bool> = Vec::new();
    let (mut outcomes, mut watermarks, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..300 {
        if round == 150 {
            // The engine stops lagging: adaptive offload can come back to it.
            ch.with_engine(|f| f.set_delay_polls(0));
        }
        // Every 15th burst is one fenced op with a doorbell: that op goes through `enqueue`.
        let n = if round % 15 == 7 { 1 } else { rng.range(1, 40) };
        let bad = if round % 7 == 3 { Some(rng.range(0, n - 1)) } else { None };
        let mut flags = if round % 5 == 2 { OpFlags::FENCE } else { OpFlags::empty() };
        if round % 3 == 1 {
            flags |= OpFlags::SUBMIT;
        }
        let first = jobs.len();
        jobs.extend((0..n).map(|_| Job::sized(&mut rng, 2, 3000)));
        let mut ops = ops_of(&mut jobs[first..]);
        if let Some(k) = bad {
            ops[k] = CopyOp::new(p, p.wrapping_add(8), 200);
        }
        let start = ch.next_ticket();
        let got = if as_bursts {
            // SAFETY: the jobs outlive the channel's drain at the end; the bad op is refused
            // untouched.
            unsafe { ch.enqueue_burst(&ops, flags) }
        } else {
            // The burst's flags split over its ops; its one doorbell at the end, when the engine
            // took any of them.
            let engine_first = ch.with_engine(|f| f.next_ticket());
            let mut r = Ok(());
            for (i, op) in ops.iter().enumerate() {
                let f = crate::engine::burst_op_flags(flags, i, n).difference(OpFlags::SUBMIT);
                // SAFETY: as above.
                if let Err(error) = unsafe { ch.enqueue(op.src, op.dst, op.len, f) } {
                    r = Err(BurstError { accepted: i, error });
                    break;
                }
            }
            if flags.contains(OpFlags::SUBMIT) && ch.with_engine(|f| f.next_ticket()) != engine_first {
                ch.submit();
            }
            r.map(|()| TicketRange::new(start, ch.next_ticket()))
        };
        let accepted = got.map_or_else(|e| e.accepted, |r| r.len() as usize);
        match got {
            Ok(r) => assert_eq!(r, TicketRange::new(start, start.add(n as u64)), "round {round}: tickets"),
            // A full ring under push back refuses an op before any engine looks at it.
            Err(e) if Some(e.accepted) == bad && e.error != EnqueueError::RingFull => {
                assert_eq!(e.error, EnqueueError::Overlap, "round {round}")
            }
            Err(e) => {
                assert_eq!(e.error, EnqueueError::RingFull, "round {round}: refused for {}", e.error);
                assert_eq!(policy.on_ring_full, OnRingFull::PushBack, "round {round}: pushed back");
                assert!(bad.is_none_or(|k| e.accepted <= k), "round {round}: accepted past the bad op");
            }
        }
        assert_eq!(ch.next_ticket(), start.add(accepted as u64), "round {round}: tickets consumed");
        accepted_ops.extend((0..n).map(|i| i < accepted));
        outcomes.push(got);
        ch.submit();
        for _ in 0..rng.range(0, 3) {
            ch.progress();
            watermarks.push(ch.retired());
        }
        // Claimed as they come: reaping pauses while too many wait under the report policy.
        failed.extend(ch.take_failures(TicketRange::new(Ticket::ZERO, ch.retired())).iter().map(|f| f.ticket));
    }
    ch.drain();
    failed.extend(ch.take_failures(TicketRange::new(Ticket::ZERO, ch.retired())).iter().map(|f| f.ticket));
    let stats = ch.stats();
    assert_eq!(stats.errors_unclaimed, 0);
    let mut t = Ticket::ZERO;
    for (i, (job, ok)) in jobs.iter().zip(&accepted_ops).enumerate() {
        if !ok {
            assert!(job.dst.iter().all(|&x| x == GUARD_BYTE), "op {i} was not accepted but copied");
            continue;
        }
        if !failed.contains(&t) {
            job.assert_copied("channel burst", i);
        }
        t = t.next();
    }
    assert_eq!(t, ch.next_ticket(), "accepted ops and tickets disagree");
    (outcomes, (stats, ch.engine_stats().submits), watermarks, failed)
}

/// Copies below the threshold are done by the CPU, counted, and retire in order with the rest.
pub fn small_copies_go_to_cpu<E: CopyEngine>(e: E) {
    let ch = Channel::new(e, Policy::default().with_cpu_below(256));
    let mut rng = Rng::new(31);
    let mut jobs: Vec<Job> = (0..64).map(|i| Job::new(&mut rng, if i % 2 == 0 { 64 } else { 1024 })).collect();
    let tickets: Vec<Ticket> =
        jobs.iter_mut().map(|j| chan_enqueue(&ch, j, OpFlags::empty()).expect("enqueue")).collect();
    assert!(tickets.windows(2).all(|w| w[1] == w[0].next()), "channel tickets not consecutive");
    ch.drain();
    let s = ch.stats();
    assert_eq!(s.cpu_small, 32, "small copies not counted");
    assert_eq!(s.offloaded, 32, "large copies not offloaded");
    assert_eq!(s.completed, 64);
    for (i, j) in jobs.iter().enumerate() {
        j.assert_copied("threshold", i);
    }
}

/// A full ring with the CPU-copy policy: every op is accepted, the overflow is copied by the CPU
/// and counted, and no op is reported done before an earlier one.
pub fn full_ring_falls_back_in_order<E: CopyEngine>(e: E) {
    let cap = e.burst_capacity();
    let ch = Channel::new(e, Policy::offload_all().with_ring_full(OnRingFull::CpuCopy));
    let mut rng = Rng::new(37);
    let n = cap + 40;
    let mut jobs: Vec<Job> = (0..n).map(|_| Job::new(&mut rng, 512)).collect();
    let mut futs = Vec::new();
    for j in jobs.iter_mut() {
        let t = chan_enqueue(&ch, j, OpFlags::empty()).expect("CPU-copy policy must accept every op");
        futs.push(ch.future(TicketRange::new(t, t.next())));
    }
    ch.submit();
    assert!(ch.stats().cpu_ring_full >= 40, "ring-full fallbacks not counted: {:?}", ch.stats());
    // Poll all futures repeatedly: a later future may never be ready while an earlier one is not.
    let mut ready = vec![false; n];
    while ready.iter().any(|r| !r) {
        for i in 0..n {
            if !ready[i] {
                if let Poll::Ready(out) = poll_inline(pin!(&mut futs[i])) {
                    assert!(out.is_ok());
                    ready[i] = true;
                    // Every earlier op must be done by now: polling its future resolves it at once.
                    for j in 0..i {
                        if !ready[j] {
                            assert!(poll_inline(pin!(&mut futs[j])).is_ready(), "op {i} reported done before op {j}");
                            ready[j] = true;
                        }
                    }
                }
            }
        }
    }
    for (i, j) in jobs.iter().enumerate() {
        j.assert_copied("ring-full fallback", i);
    }
}

/// A full ring with the push-back policy: the op is refused with `RingFull`, counted, and
/// accepted once completions are reaped.
pub fn full_ring_pushes_back<E: CopyEngine>(e: E) {
    let cap = e.burst_capacity();
    let ch = Channel::new(e, Policy::offload_all().with_ring_full(OnRingFull::PushBack));
    let mut rng = Rng::new(41);
    let mut jobs: Vec<Job> = (0..cap + 1).map(|_| Job::new(&mut rng, 300)).collect();
    let (head, last) = jobs.split_at_mut(cap);
    for j in head.iter_mut() {
        chan_enqueue(&ch, j, OpFlags::empty()).expect("enqueue below capacity");
    }
    assert_eq!(chan_enqueue(&ch, &mut last[0], OpFlags::empty()), Err(EnqueueError::RingFull));
    assert_eq!(ch.stats().pushed_back, 1);
    assert_eq!(ch.stats().cpu_copies(), 0);
    ch.drain();
    chan_enqueue(&ch, &mut last[0], OpFlags::SUBMIT).expect("accepted after drain");
    ch.drain();
    for (i, j) in jobs.iter().enumerate() {
        j.assert_copied("push-back", i);
    }
}

/// Repeated ring-full bursts and 1% injected errors under the CPU-retry policy: zero copies lost,
/// zero reordered, every fallback counted.
pub fn failed_copies_are_retried_in_order<E: CopyEngine>(e: E) {
    let cfg = FaultConfig { error_rate: 0.01, ring_full_every: 50, ring_full_burst: 8, delay_polls: 1, seed: 99 };
    let ch = Channel::new(FaultEngine::new(e, cfg), Policy::default().with_cpu_below(128));
    let mut rng = Rng::new(43);
    let total = 5000;
    let mut jobs: Vec<Job> = Vec::with_capacity(total);
    let mut pending: std::collections::VecDeque<(usize, Ticket)> = Default::default();
    let mut next_done = 0usize;
    for i in 0..total {
        jobs.push(Job::sized(&mut rng, 2, 4000));
        let t = chan_enqueue(&ch, jobs.last_mut().unwrap(), OpFlags::empty()).expect("CPU policies accept every op");
        pending.push_back((i, t));
        if i % 16 == 15 {
            ch.submit();
            ch.progress();
        }
        while let Some(&(k, t)) = pending.front() {
            if ch.retired() <= t {
                break;
            }
            assert_eq!(k, next_done, "ops retired out of order");
            jobs[k].assert_copied("retry", k);
            next_done += 1;
            pending.pop_front();
        }
    }
    ch.drain();
    for (k, _) in pending {
        jobs[k].assert_copied("retry", k);
    }
    let s = ch.stats();
    let inj = ch.with_engine(|f| f.injected());
    assert!(inj.errors > 0 && inj.ring_full > 0, "nothing injected: {inj:?}");
    assert_eq!(s.cpu_retry, inj.errors, "every failed op is retried by the CPU");
    assert_eq!(s.errors, inj.errors);
    assert!(s.cpu_ring_full >= inj.ring_full, "ring-full fallbacks not all counted");
    assert_eq!(s.completed, total as u64, "ops lost");
    assert_eq!(s.ops, s.offloaded + s.cpu_small + s.cpu_ring_full + s.cpu_refused);
}

/// Under the report policy a future resolves to the failed tickets of its own range.
pub fn failed_copies_are_reported_with_their_ticket<E: CopyEngine>(e: E) {
    let cfg = FaultConfig { error_rate: 0.1, seed: 7, ..FaultConfig::default() };
    let ch = Channel::new(FaultEngine::new(e, cfg), Policy::offload_all().with_error(OnError::Report));
    let mut rng = Rng::new(47);
    let mut reported = 0u64;
    for round in 0..20 {
        let mut jobs: Vec<Job> = (0..8).map(|_| Job::new(&mut rng, 256)).collect();
        for j in jobs.iter_mut() {
            let d = GUARD + j.dst_off;
            j.dst[d..d + j.len].fill(0);
            j.src[j.src_off..].iter_mut().for_each(|b| *b |= 1);
        }
        let start = ch.next_ticket();
        for j in jobs.iter_mut() {
            chan_enqueue(&ch, j, OpFlags::empty()).expect("enqueue");
        }
        ch.submit();
        let range = TicketRange::new(start, ch.next_ticket());
        let mut fut = pin!(ch.future(range));
        let out = loop {
            if let Poll::Ready(out) = poll_inline(fut.as_mut()) {
                break out;
            }
        };
        let failed: Vec<Ticket> = out.err().map(|f| f.iter().map(|x| x.ticket).collect()).unwrap_or_default();
        for (i, j) in jobs.iter().enumerate() {
            let t = start.add(i as u64);
            assert_eq!(failed.contains(&t), !j.copied(), "round {round} op {i}: failure reported wrongly");
        }
        reported += failed.len() as u64;
    }
    assert_eq!(ch.stats().errors_reported, reported);
    assert_eq!(ch.with_engine(|f| f.injected().errors), reported, "a failure was not reported");
}

fn chan_enqueue<E: CopyEngine>(ch: &Channel<E>, job: &mut Job, flags: OpFlags) -> Result<Ticket, EnqueueError> {
    let (s, d) = job.ptrs();
    // SAFETY: jobs outlive the channel's drain at the end of each check.
    unsafe { ch.enqueue(s, d, job.len, flags) }
}

/// A deterministic asynchronous engine for tests: ops are copied when reaped, at most `per_reap`
/// per call, after being submitted. Everything above it sees real "not yet done" states.
#[derive(Debug)]
pub struct LazyEngine {
    info: EngineInfo,
    ops: std::collections::VecDeque<(usize, usize, usize)>,
    next: Ticket,
    retired: Ticket,
    submitted: Ticket,
    per_reap: usize,
    stats: EngineStats,
}

impl LazyEngine {
    /// A lazy engine with `ring_size` descriptors retiring at most `per_reap` ops per reap.
    pub fn new(ring_size: usize, per_reap: usize) -> Self {
        LazyEngine {
            info: EngineInfo {
                name: "lazy".into(),
                capabilities: Capabilities::MEM_TO_MEM | Capabilities::SVA | Capabilities::FENCE,
                ring_size,
                max_len: 1 << 20,
            },
            ops: std::collections::VecDeque::with_capacity(ring_size),
            next: Ticket::ZERO,
            retired: Ticket::ZERO,
            submitted: Ticket::ZERO,
            per_reap: per_reap.max(1),
            stats: EngineStats::default(),
        }
    }
}

impl CopyEngine for LazyEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn burst_capacity(&self) -> usize {
        self.info.ring_size - self.ops.len()
    }

    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        check_copy(src, dst, len, self.info.max_len)?;
        if self.ops.len() >= self.info.ring_size {
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        self.ops.push_back((src as usize, dst as usize, len));
        self.stats.on_enqueue(len);
        let t = self.next;
        self.next = t.next();
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(t)
    }

    fn submit(&mut self) {
        self.submitted = self.next;
        self.stats.submits += 1;
    }

    fn reap(&mut self, max: usize, _failed: &mut [FailedOp]) -> Reaped {
        let n = (self.submitted.since(self.retired) as usize).min(max).min(self.per_reap);
        for _ in 0..n {
            let (s, d, len) = self.ops.pop_front().expect("op in ring");
            if len != 0 {
                // SAFETY: the enqueue contract keeps both ranges valid and disjoint until this op
                // is retired, which is now.
                unsafe { core::ptr::copy_nonoverlapping(s as *const u8, d as *mut u8, len) };
            }
        }
        self.retired = self.retired.add(n as u64);
        self.stats.on_reap(n, 0);
        Reaped { retired: n, failed: 0 }
    }

    fn next_ticket(&self) -> Ticket {
        self.next
    }

    fn retired(&self) -> Ticket {
        self.retired
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_engine_conforms() {
        run_all(|| LazyEngine::new(64, 5));
        run_fault(|| LazyEngine::new(64, 5));
        run_policy(|| LazyEngine::new(64, 5));
        for policy in burst_policies() {
            channel_bursts_match_single_ops(|| LazyEngine::new(64, 5), policy, true);
        }
    }
}
