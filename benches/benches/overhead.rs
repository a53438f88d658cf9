//! The abstraction's overhead: a raw `copy_nonoverlapping` loop against the same copies through
//! the memcpy engine + channel + futures + defer queue, in the same run; and the cost of polling
//! a future whose copy is not done yet.
//!
//! `cargo bench -p copy-engine-benches --bench overhead`
//!
//! Besides criterion's report it prints `overhead ratio` lines: the median over alternated rounds
//! of (engine path time / raw loop time). The goal is <= 1.05 at 1518 B in bursts of 32.

use std::pin::pin;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine::{poll_inline, Channel, DeferQueue, OpFlags, Policy, TicketRange};
use copy_engine_benches::{
    channel_burst, channel_burst_batched, channel_burst_per_op, median_ratio, raw_burst, Buffers,
};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};

fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("overhead");
    for (size, burst) in [(64, 32), (1518, 32), (1518, 8), (4096, 32)] {
        let mut raw = Buffers::new(size, burst);
        let mut via = Buffers::new(size, burst);
        let ch = Channel::new(MemcpyEngine::default(), Policy::offload_all());
        let mut q = DeferQueue::with_capacity(64);
        g.throughput(Throughput::Bytes((size * burst) as u64));
        let id = format!("{size}B/burst{burst}");
        g.bench_function(BenchmarkId::new("raw-loop", &id), |b| b.iter(|| raw_burst(&mut raw)));
        g.bench_function(BenchmarkId::new("memcpy+channel+futures+defer", &id), |b| {
            b.iter(|| channel_burst(&ch, &mut q, &mut via))
        });
        g.bench_function(BenchmarkId::new("memcpy+channel-burst+futures+defer", &id), |b| {
            b.iter(|| channel_burst_batched(&ch, &mut q, &mut via))
        });
        g.bench_function(BenchmarkId::new("memcpy+channel+future-per-op+defer", &id), |b| {
            b.iter(|| channel_burst_per_op(&ch, &mut q, &mut via))
        });
        let (ratio, ta, tb) = median_ratio(41, 2000, || raw_burst(&mut raw), || channel_burst(&ch, &mut q, &mut via));
        let (ratio_op, _, tc) =
            median_ratio(41, 2000, || raw_burst(&mut raw), || channel_burst_per_op(&ch, &mut q, &mut via));
        let (ratio_batch, _, td) =
            median_ratio(41, 2000, || raw_burst(&mut raw), || channel_burst_batched(&ch, &mut q, &mut via));
        println!(
            "overhead ratio {size}B burst {burst}: {ratio:.3}x with a future per burst, {ratio_batch:.3}x with the \
             burst in one enqueue_burst, {ratio_op:.3}x with a future per op \
             (raw {:.1} ns/burst, engine path {:.1} / {:.1} / {:.1} ns/burst)",
            ta.as_nanos() as f64 / 2000.0,
            tb.as_nanos() as f64 / 2000.0,
            td.as_nanos() as f64 / 2000.0,
            tc.as_nanos() as f64 / 2000.0
        );
        assert!(raw.verify() && via.verify());
    }
    // The CPU threshold path: 64 B copies below `cpu_below` are copied by the CPU inside
    // `enqueue` (the default policy); what the channel adds per op over a raw copy.
    {
        let (size, burst) = (64, 32);
        let mut raw = Buffers::new(size, burst);
        let mut via = Buffers::new(size, burst);
        let ch = Channel::new(MemcpyEngine::default(), Policy::default());
        let mut q = DeferQueue::with_capacity(64);
        let (ratio, ta, tb) = median_ratio(41, 2000, || raw_burst(&mut raw), || channel_burst(&ch, &mut q, &mut via));
        let (ratio_batch, _, tc) =
            median_ratio(41, 2000, || raw_burst(&mut raw), || channel_burst_batched(&ch, &mut q, &mut via));
        let per_op = |d: std::time::Duration| d.as_nanos() as f64 / (2000 * burst) as f64;
        println!(
            "cpu-threshold path {size}B burst {burst}: {:.2} ns/op through the channel, raw {:.2} ns/op, \
             channel adds {:.2} ns/op ({ratio:.3}x); with enqueue_burst {:.2} ns/op ({ratio_batch:.3}x)",
            per_op(tb),
            per_op(ta),
            per_op(tb) - per_op(ta),
            per_op(tc)
        );
        assert!(raw.verify() && via.verify());
        assert!(ch.stats().cpu_small > 0, "the CPU threshold path was taken");
    }
    g.finish();
}

fn pending_poll(c: &mut Criterion) {
    // A copy enqueued on the worker engine but not submitted never completes: every poll is the
    // "nothing done yet" path (watermark check + one reap of the engine).
    let (src, mut dst) = (vec![1u8; 1518], vec![0u8; 1518]);
    {
        let ch = Channel::new(WorkerEngine::new(WorkerConfig::default()).expect("worker"), Policy::offload_all());
        // SAFETY: the buffers outlive the channel, which drains on drop at the end of this block.
        let t = unsafe { ch.enqueue(src.as_ptr(), dst.as_mut_ptr(), 1518, OpFlags::empty()) }.unwrap();
        let range = TicketRange::new(t, t.next());
        let mut fut = pin!(ch.future(range));
        c.bench_function("future/poll-pending", |b| b.iter(|| assert!(poll_inline(fut.as_mut()).is_pending())));
        let mut q = DeferQueue::with_capacity(4);
        q.push(ch.future(range)).unwrap();
        c.bench_function("defer-queue/poll-pending", |b| b.iter(|| assert_eq!(q.poll(|_| ()), 0)));
        ch.drain();
        assert!(poll_inline(fut.as_mut()).is_ready());
    }
    assert_eq!(src, dst);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_millis(800));
    targets = overhead, pending_poll
}
criterion_main!(benches);
