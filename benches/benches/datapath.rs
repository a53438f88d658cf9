//! The vhost datapath's packets/s per engine and packet size, northbound and southbound, and the
//! PMD thread's busy nanoseconds per packet with the memcpy engine vs the worker engine.
//!
//! `cargo bench -p copy-engine-benches --bench datapath`
//!
//! Each criterion iteration moves one burst (32 packets) and is timed on the PMD thread only, busy
//! iterations only (idle polls, waiting for an engine or the guest, are time a real PMD spends on
//! other queues; the in-process guest's own work runs on the guest's cores in production). After the
//! criterion groups a summary prints `datapath` lines: Mpps and PMD ns/packet per engine, and the
//! worker/memcpy ratio of PMD time, all measured in this run. Northbound, the traffic source
//! writes every packet on the PMD thread (a NIC would DMA it); the summary gives the PMD time with
//! and without the source's own share (`pvp` takes it out the same way): with the worker engine
//! that share is large, since each buffer it writes was last read by the worker's core.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use copy_engine::{Channel, CopyEngine, Policy};
use copy_engine_cpu::{MemcpyEngine, WorkerConfig, WorkerEngine};
use vswitch_datapath::loopguest::{GuestMode, LoopGuest, LoopGuestConfig};
use vswitch_datapath::{
    Northbound, Notifier, PacketPool, Pmd, SinkPort, Southbound, TrafficConfig, TrafficPort, VhostPort, BURST,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    North,
    South,
}

struct Rig<E: CopyEngine> {
    pmd: Pmd<E>,
    guest: LoopGuest,
    counted: usize,
    /// The traffic source's port (northbound).
    source: Option<usize>,
    dir: Dir,
}

impl<E: CopyEngine> Rig<E> {
    fn new(chan: Channel<E>, dir: Dir, size: usize) -> Self {
        let mode = match dir {
            Dir::North => GuestMode::RxSink,
            Dir::South => GuestMode::TxSource(size as u32),
        };
        let guest = LoopGuest::new(LoopGuestConfig { mode, ..LoopGuestConfig::default() });
        let (rxq, txq) = guest.device_queues();
        let vhost = VhostPort::new(
            "vhost0",
            Northbound::new(rxq, 12, true, Notifier::Polling),
            Southbound::new(txq, 12, Notifier::Polling),
        );
        let mut pmd = Pmd::new(chan, PacketPool::new(1024, 2048));
        let v = pmd.add_port(Box::new(vhost));
        let (counted, source) = match dir {
            Dir::North => {
                let cfg = TrafficConfig { verify_payload: false, ..TrafficConfig::fixed(size) };
                let t = pmd.add_port(Box::new(TrafficPort::new("source", cfg)));
                pmd.connect(t, v);
                (v, Some(t))
            }
            Dir::South => {
                let s = pmd.add_port(Box::new(SinkPort::new("sink")));
                pmd.connect(v, s);
                (s, None)
            }
        };
        Rig { pmd, guest, counted, source, dir }
    }

    fn packets(&self) -> u64 {
        match self.dir {
            Dir::North => self.pmd.port(self.counted).queue_stats().expect("vhost").0.packets,
            Dir::South => self.pmd.port(self.counted).stats().tx_packets,
        }
    }

    /// The traffic source's time generating packets so far (zero southbound).
    fn source_time(&self) -> Duration {
        self.source.map_or(Duration::ZERO, |t| {
            self.pmd.port(t).as_any().downcast_ref::<TrafficPort>().expect("traffic port").busy_time()
        })
    }

    /// Moves `n` packets; returns the PMD thread's busy time: iterations that moved a packet or
    /// retired a copy. Idle polls (waiting for the engine or the guest) and the guest's own work
    /// are excluded: that time is free for other queues on a real PMD.
    fn run(&mut self, n: u64) -> Duration {
        let target = self.packets() + n;
        let mut busy = Duration::ZERO;
        while self.packets() < target {
            for _ in 0..4 {
                let t0 = Instant::now();
                if self.pmd.run_once() != 0 {
                    busy += t0.elapsed();
                }
            }
            self.guest.poll();
        }
        busy
    }
}

fn bench_engine<E: CopyEngine>(c: &mut Criterion, name: &str, mut make: impl FnMut() -> E) {
    let mut g = c.benchmark_group(format!("datapath/{name}"));
    for dir in [Dir::North, Dir::South] {
        for size in [64usize, 1518] {
            let mut rig = Rig::new(Channel::new(make(), Policy::default()), dir, size);
            rig.run(10_000);
            g.throughput(Throughput::Elements(BURST as u64));
            g.bench_function(BenchmarkId::new(format!("{dir:?}").to_lowercase(), format!("{size}B")), |b| {
                b.iter_custom(|iters| rig.run(iters * BURST as u64))
            });
        }
    }
    g.finish();
}

fn datapath(c: &mut Criterion) {
    bench_engine(c, "memcpy", MemcpyEngine::default);
    bench_engine(c, "worker", || WorkerEngine::new(WorkerConfig::default()).expect("worker"));

    // Summary: the same rigs, alternated, a fixed number of packets each round.
    const PACKETS: u64 = 100_000;
    for dir in [Dir::North, Dir::South] {
        for size in [64usize, 1518] {
            let mut m = Rig::new(Channel::new(MemcpyEngine::default(), Policy::default()), dir, size);
            let mut w = Rig::new(
                Channel::new(WorkerEngine::new(WorkerConfig::default()).expect("worker"), Policy::default()),
                dir,
                size,
            );
            let (mut tm, mut tw, mut wall_m, mut wall_w) =
                (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let (sm0, sw0) = (m.source_time(), w.source_time());
            for _ in 0..5 {
                let t = Instant::now();
                tm += m.run(PACKETS);
                wall_m += t.elapsed();
                let t = Instant::now();
                tw += w.run(PACKETS);
                wall_w += t.elapsed();
            }
            let (sm, sw) = (m.source_time() - sm0, w.source_time() - sw0);
            let ns = |d: Duration| d.as_nanos() as f64 / (5 * PACKETS) as f64;
            let mpps = |d: Duration| (5 * PACKETS) as f64 / d.as_secs_f64() / 1e6;
            println!(
                "datapath {:?} {size}B: memcpy {:.2} Mpps wall, {:.1} ns/pkt on the PMD; worker {:.2} Mpps wall, {:.1} ns/pkt on the PMD; PMD time worker/memcpy {:.2}x",
                dir,
                mpps(wall_m),
                ns(tm),
                mpps(wall_w),
                ns(tw),
                tw.as_secs_f64() / tm.as_secs_f64()
            );
            if dir == Dir::North {
                let (vm, vw) = (tm.saturating_sub(sm), tw.saturating_sub(sw));
                println!(
                    "datapath {:?} {size}B without the traffic source's share: memcpy {:.1} ns/pkt on the PMD \
                     (source {:.1}), worker {:.1} (source {:.1}); PMD time worker/memcpy {:.2}x",
                    dir,
                    ns(vm),
                    ns(sm),
                    ns(vw),
                    ns(sw),
                    vw.as_secs_f64() / vm.as_secs_f64()
                );
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(15).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(1000));
    targets = datapath
}
criterion_main!(benches);
