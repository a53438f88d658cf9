//! The dmadev engine through the `CopyEngine` trait against a C loop calling `rte_dma_*` directly,
//! on the same `dma_skeleton` device, same sizes and bursts.
//!
//! `cargo bench -p copy-engine-benches --features dmadev --bench dmadev`
//!
//! Prints `dmadev ratio` lines: median over alternated rounds of (trait path time / C loop time)
//! per op. The goal is <= 1.05. dma_skeleton copies with one CPU thread, so absolute figures say
//! nothing about hardware; the ratio says what the abstraction costs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine_benches::{engine_burst, median_ratio, Buffers, BURSTS};
use copy_engine_dmadev::{DmadevEngine, EalBuilder};

const SIZES: [usize; 4] = [64, 256, 1518, 4096];
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
            let mut bufs = Buffers::new(size, burst);
            let src = vec![0x5au8; size];
            let mut dst = vec![0u8; size];
            let rounds_per_iter = OPS_PER_ROUND / burst as u64;
            g.throughput(Throughput::Elements(rounds_per_iter * burst as u64));
            let id = format!("{size}B/burst{burst}");
            g.bench_function(BenchmarkId::new("trait", &id), |b| {
                b.iter(|| {
                    for _ in 0..rounds_per_iter {
                        engine_burst(&mut e, &mut bufs)
                    }
                })
            });
            g.bench_function(BenchmarkId::new("c-loop", &id), |b| {
                b.iter(|| {
                    e.raw_copy_loop(&src, &mut dst, rounds_per_iter * burst as u64, burst as u16).expect("raw loop")
                })
            });
            // Both closures drive the same channel, one after the other.
            let shared = std::cell::RefCell::new((&mut e, &mut bufs, &mut dst));
            let (ratio, ta, tb) = median_ratio(
                21,
                20,
                || {
                    let (e, _, dst) = &mut *shared.borrow_mut();
                    e.raw_copy_loop(&src, dst, rounds_per_iter * burst as u64, burst as u16).expect("raw loop");
                },
                || {
                    let (e, bufs, _) = &mut *shared.borrow_mut();
                    for _ in 0..rounds_per_iter {
                        engine_burst(*e, bufs)
                    }
                },
            );
            let per_op = |d: std::time::Duration| d.as_nanos() as f64 / (20 * OPS_PER_ROUND) as f64;
            println!(
                "dmadev ratio {size}B burst {burst}: {ratio:.3}x (C loop {:.1} ns/op, trait {:.1} ns/op)",
                per_op(ta),
                per_op(tb)
            );
            assert!(bufs.verify() && dst == src, "copies wrong");
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
