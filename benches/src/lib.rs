//! Shared helpers of the benchmarks: buffers, a burst driver, and a timing loop for ratios.
//!
//! The benchmarks themselves are in `benches/` (`cargo bench -p copy-engine-benches`).

#![deny(missing_docs)]

use std::time::{Duration, Instant};

use copy_engine::{Channel, CopyEngine, CopyOp, DeferQueue, FailedOp, OpFlags, TicketRange};

/// Packet-like copy sizes the benchmarks sweep.
pub const SIZES: [usize; 5] = [64, 256, 1518, 4096, 65536];
/// Burst lengths the benchmarks sweep.
pub const BURSTS: [usize; 3] = [1, 8, 32];

/// Source and destination buffers for `burst` copies of `size` bytes, in one allocation with a
/// fixed layout (so every run has the same relative alignment of source and destination, away
/// from 4 KiB aliasing, which otherwise makes copy timings depend on the allocator's luck).
#[derive(Debug)]
pub struct Buffers {
    mem: Vec<u8>,
    base: usize,
    dst_off: usize,
    size: usize,
    burst: usize,
}

impl Buffers {
    /// Buffers for bursts of `burst` copies of `size` bytes.
    pub fn new(size: usize, burst: usize) -> Self {
        let stride = size.next_multiple_of(64);
        let dst_off = (stride * burst).next_multiple_of(4096) + 2048 + 64;
        let mut mem = vec![0u8; dst_off + stride * burst + 4096];
        let base = mem.as_ptr().align_offset(4096);
        mem[base..base + stride * burst].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        Buffers { mem, base, dst_off, size, burst }
    }

    /// Pointers of copy `i`.
    #[inline]
    pub fn op(&mut self, i: usize) -> (*const u8, *mut u8) {
        let stride = self.size.next_multiple_of(64);
        let p = self.mem.as_mut_ptr().wrapping_add(self.base + i * stride);
        (p as *const u8, p.wrapping_add(self.dst_off))
    }

    /// Copy size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Copies per burst.
    pub fn burst(&self) -> usize {
        self.burst
    }

    /// True when every destination equals its source.
    pub fn verify(&self) -> bool {
        let stride = self.size.next_multiple_of(64);
        (0..self.burst).all(|i| {
            let s = self.base + i * stride;
            self.mem[s..s + self.size] == self.mem[s + self.dst_off..s + self.dst_off + self.size]
        })
    }
}

/// One burst through a bare engine: enqueue all, submit, reap until done.
#[inline]
pub fn engine_burst<E: CopyEngine>(e: &mut E, bufs: &mut Buffers) {
    let mut failed = [FailedOp::EMPTY; 4];
    for i in 0..bufs.burst() {
        let (s, d) = bufs.op(i);
        // SAFETY: the buffers outlive the burst, which is fully reaped before returning.
        unsafe { e.enqueue(s, d, bufs.size(), OpFlags::empty()) }.expect("enqueue");
    }
    e.submit();
    while e.in_flight() != 0 {
        e.reap(usize::MAX, &mut failed);
    }
}

/// One burst of plain `copy_nonoverlapping` calls: the baseline.
#[inline]
pub fn raw_burst(bufs: &mut Buffers) {
    for i in 0..bufs.burst() {
        let (s, d) = bufs.op(i);
        // SAFETY: source and destination are disjoint buffers of at least `size` bytes.
        unsafe { core::ptr::copy_nonoverlapping(s, d, bufs.size()) };
    }
}

/// One burst the way a PMD loop does it: each copy through the channel, one future for the
/// burst's ticket range into the defer queue, then the queue polled until empty.
#[inline]
pub fn channel_burst<'c, E: CopyEngine>(
    ch: &'c Channel<E>,
    q: &mut DeferQueue<copy_engine::CopyFuture<'c, E>>,
    bufs: &mut Buffers,
) {
    let start = ch.next_ticket();
    for i in 0..bufs.burst() {
        let (s, d) = bufs.op(i);
        // SAFETY: the buffers outlive the burst, which is fully retired before returning.
        unsafe { ch.enqueue(s, d, bufs.size(), OpFlags::empty()) }.expect("enqueue");
    }
    if q.push(ch.future(TicketRange::new(start, ch.next_ticket()))).is_err() {
        panic!("defer queue full");
    }
    ch.submit();
    while !q.is_empty() {
        q.poll(|out| debug_assert!(out.is_ok()));
    }
}

/// As [`channel_burst`], with the burst's copies handed to the channel in one call
/// ([`Channel::enqueue_burst`]) instead of one `enqueue` each.
#[inline]
pub fn channel_burst_batched<'c, E: CopyEngine>(
    ch: &'c Channel<E>,
    q: &mut DeferQueue<copy_engine::CopyFuture<'c, E>>,
    bufs: &mut Buffers,
) {
    let n = bufs.burst();
    assert!((1..=32).contains(&n), "bursts of 1 to 32 copies");
    let ops: [CopyOp; 32] = core::array::from_fn(|i| {
        let (s, d) = bufs.op(i.min(n - 1));
        CopyOp::new(s, d, bufs.size())
    });
    // SAFETY: the buffers outlive the burst, which is fully retired before returning.
    let range = unsafe { ch.enqueue_burst(&ops[..n], OpFlags::SUBMIT) }.expect("enqueue");
    if q.push(ch.future(range)).is_err() {
        panic!("defer queue full");
    }
    while !q.is_empty() {
        q.poll(|out| debug_assert!(out.is_ok()));
    }
}

/// As [`channel_burst`], with one future per copy (every op awaited on its own).
#[inline]
pub fn channel_burst_per_op<'c, E: CopyEngine>(
    ch: &'c Channel<E>,
    q: &mut DeferQueue<copy_engine::CopyFuture<'c, E>>,
    bufs: &mut Buffers,
) {
    for i in 0..bufs.burst() {
        let (s, d) = bufs.op(i);
        // SAFETY: the buffers outlive the burst, which is fully retired before returning.
        let t = unsafe { ch.enqueue(s, d, bufs.size(), OpFlags::empty()) }.expect("enqueue");
        if q.push(ch.future(TicketRange::new(t, t.next()))).is_err() {
            panic!("defer queue sized below the burst");
        }
    }
    ch.submit();
    while !q.is_empty() {
        q.poll(|out| debug_assert!(out.is_ok()));
    }
}

/// Times `iters` calls of `f`.
pub fn time(iters: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed()
}

/// Runs `a` and `b` alternately `rounds` times (`iters` calls each per round) and returns the
/// median of the per-round ratios `time(b) / time(a)`: both run in the same process, interleaved,
/// so drifting clocks and neighbours affect both alike.
pub fn median_ratio(rounds: usize, iters: u64, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, Duration, Duration) {
    let mut ratios = Vec::with_capacity(rounds);
    let (mut ta, mut tb) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let da = time(iters, &mut a);
        let db = time(iters, &mut b);
        ta += da;
        tb += db;
        ratios.push(db.as_secs_f64() / da.as_secs_f64());
    }
    ratios.sort_by(|x, y| x.total_cmp(y));
    (ratios[rounds / 2], ta / rounds as u32, tb / rounds as u32)
}
