//! The DSA engine's own cost on its **software device model**: descriptor writing, batching,
//! completion-record polling and in-order reaping, with a model thread doing the copies behind a
//! mutex-guarded queue. These numbers are model overhead next to the memcpy and worker engines;
//! they say nothing about DSA hardware speed (see `copy-engine-dsa/README.md` for published
//! figures).
//!
//! `cargo bench -p copy-engine-benches --bench dsa_model`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine_benches::{engine_burst, Buffers, BURSTS};
use copy_engine_dsa::{BatchPolicy, DsaConfig, DsaEngine, ModelConfig};

fn dsa_model(c: &mut Criterion) {
    for (label, batch) in [("batched", BatchPolicy::default()), ("unbatched", BatchPolicy::never())] {
        let mut e =
            DsaEngine::model(ModelConfig::default(), DsaConfig { batch, ..DsaConfig::default() }).expect("DSA model");
        let mut g = c.benchmark_group(format!("engine/dsa-model-{label}"));
        for size in [64, 1518, 65536] {
            for burst in BURSTS {
                let mut bufs = Buffers::new(size, burst);
                g.throughput(Throughput::Bytes((size * burst) as u64));
                g.bench_with_input(BenchmarkId::new(format!("{size}B"), format!("burst{burst}")), &burst, |b, _| {
                    b.iter(|| engine_burst(&mut e, &mut bufs))
                });
                assert!(bufs.verify(), "dsa model: copies wrong");
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_millis(800));
    targets = dsa_model
}
criterion_main!(benches);
