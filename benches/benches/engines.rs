//! Each engine's copy throughput and per-op cost across sizes and burst lengths.
//!
//! `cargo bench -p copy-engine-benches --bench engines`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine::CopyEngine;
use copy_engine_benches::{engine_burst, raw_burst, Buffers, BURSTS, SIZES};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};

fn sweep<E: CopyEngine>(c: &mut Criterion, name: &str, e: &mut E) {
    let mut g = c.benchmark_group(format!("engine/{name}"));
    for size in SIZES {
        for burst in BURSTS {
            let mut bufs = Buffers::new(size, burst);
            g.throughput(Throughput::Bytes((size * burst) as u64));
            g.bench_with_input(BenchmarkId::new(format!("{size}B"), format!("burst{burst}")), &burst, |b, _| {
                b.iter(|| engine_burst(e, &mut bufs))
            });
            assert!(bufs.verify(), "{name}: copies wrong");
        }
    }
    g.finish();
}

fn engines(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/raw-copy");
    for size in SIZES {
        for burst in BURSTS {
            let mut bufs = Buffers::new(size, burst);
            g.throughput(Throughput::Bytes((size * burst) as u64));
            g.bench_with_input(BenchmarkId::new(format!("{size}B"), format!("burst{burst}")), &burst, |b, _| {
                b.iter(|| raw_burst(&mut bufs))
            });
        }
    }
    g.finish();
    sweep(c, "memcpy", &mut MemcpyEngine::default());
    let mut worker = WorkerEngine::new(WorkerConfig::default()).expect("worker engine");
    sweep(c, "worker", &mut worker);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_millis(800));
    targets = engines
}
criterion_main!(benches);
