//! The dmadev engine through the `CopyEngine` trait against a C loop calling `rte_dma_*` directly,
//! on the same `dma_skeleton` device, same sizes and bursts.
//!
//! `cargo bench -p copy-engine-benches --features dmadev --bench dmadev`
//!
//! Both run the same algorithm (`ce_bench_copy_loop` in the C shim, `trait_loop` here): bursts of
//! one source copied to one destination, the next burst enqueued while earlier ones are in flight,
//! completions reaped once per burst. Prints `dmadev ratio` lines: median over alternated rounds of
//! (trait path time / C loop time) per op. The goal is <= 1.05. dma_skeleton copies with one CPU thread, so absolute figures say
//! nothing about hardware; the ratio says what the abstraction costs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine::{CopyEngine, EnqueueError, FailedOp, OpFlags};
use copy_engine_benches::{median_ratio, BURSTS};
use copy_engine_dmadev::{DmadevEngine, EalBuilder};

const SIZES: [usize; 4] = [64, 256, 1518, 4096];

/// The C loop's algorithm through the trait: `n` copies of `src` to `dst`, up to `burst` enqueued
/// per doorbell, the next burst enqueued while earlier ones are still in flight (as long as the
/// ring has room), completions reaped once per burst.
fn trait_loop(e: &mut DmadevEngine, src: &[u8], dst: &mut [u8], n: u64, burst: usize) {
    let mut failed = [FailedOp::EMPTY; 4];
    let (mut enqueued, start) = (0u64, e.retired());
    while e.retired().since(start) < n {
        let mut b = 0;
        while b < burst && enqueued < n {
            // SAFETY: `src` and `dst` outlive the loop, which returns only when every op retired.
            match unsafe { e.enqueue(src.as_ptr(), dst.as_mut_ptr(), src.len(), OpFlags::empty()) } {
                Ok(_) => {}
                Err(EnqueueError::RingFull) => break,
                Err(err) => panic!("enqueue: {err}"),
            }
            enqueued += 1;
            b += 1;
        }
        if b > 0 {
            e.submit();
        }
        let r = e.reap(usize::MAX, &mut failed);
        assert_eq!(r.failed, 0, "dma_skeleton failed an op");
    }
}
const OPS_PER_ROUND: u64 = 256;

fn dmadev(c: &mut Criterion) {
    let eal = EalBuilder::skeleton()
        .file_prefix(format!("ce-bench-{}", std::process::id()))
        .init()
        .expect("EAL with dma_skeleton0");
    let mut e = DmadevEngine::open(&eal, "dma_skeleton0", 1024).expect("open dma_skeleton0");
    let mut g = c.benchmark_group("dmadev");
    for size in SIZES {
        for burst in BURSTS {
            let src = vec![0x5au8; size];
            let mut dst = vec![0u8; size];
            g.throughput(Throughput::Elements(OPS_PER_ROUND));
            let id = format!("{size}B/burst{burst}");
            g.bench_function(BenchmarkId::new("trait", &id), |b| {
                b.iter(|| trait_loop(&mut e, &src, &mut dst, OPS_PER_ROUND, burst))
            });
            g.bench_function(BenchmarkId::new("c-loop", &id), |b| {
                b.iter(|| e.raw_copy_loop(&src, &mut dst, OPS_PER_ROUND, burst as u16).expect("raw loop"))
            });
            // Both closures drive the same channel, one after the other.
            let shared = std::cell::RefCell::new((&mut e, &mut dst));
            let (ratio, ta, tb) = median_ratio(
                21,
                20,
                || {
                    let (e, dst) = &mut *shared.borrow_mut();
                    e.raw_copy_loop(&src, dst, OPS_PER_ROUND, burst as u16).expect("raw loop");
                },
                || {
                    let (e, dst) = &mut *shared.borrow_mut();
                    trait_loop(e, &src, dst, OPS_PER_ROUND, burst);
                },
            );
            let per_op = |d: std::time::Duration| d.as_nanos() as f64 / (20 * OPS_PER_ROUND) as f64;
            println!(
                "dmadev ratio {size}B burst {burst}: {ratio:.3}x (C loop {:.1} ns/op, trait {:.1} ns/op)",
                per_op(ta),
                per_op(tb)
            );
            assert!(dst == src, "copies wrong");
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(200)).measurement_time(std::time::Duration::from_millis(600));
    targets = dmadev
}
criterion_main!(benches);
