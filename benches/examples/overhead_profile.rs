//! A fixed amount of channel work for callgrind: what the channel adds per op over a raw copy,
//! counted in instructions (deterministic, unlike the timings of `cargo bench --bench overhead`
//! on a noisy VM). Each path runs in its own non-inlined function, so its code is what the
//! compiler makes of it alone.
//!
//! `valgrind --tool=callgrind target/release/examples/overhead_profile 64 20000 cpu`
//!
//! Arguments: copy size, bursts of 32, and the path: `raw` (a `copy_nonoverlapping` loop), `cpu`
//! (the channel's CPU-threshold path, default policy) or `offload` (every copy to the memcpy
//! engine through the channel), each op by its own `enqueue`; `cpu-burst` and `offload-burst` are
//! the same with the burst in one `enqueue_burst`. Divide callgrind's total by `bursts * 32` for
//! instructions per op.

use copy_engine::{Channel, DeferQueue, Policy};
use copy_engine_benches::{channel_burst, channel_burst_batched, raw_burst, Buffers};
use copy_engine_cpu::MemcpyEngine;

#[inline(never)]
fn through_channel(size: usize, bursts: usize, policy: Policy, batched: bool) {
    let mut bufs = Buffers::new(size, 32);
    let ch = Channel::new(MemcpyEngine::default(), policy);
    let mut q = DeferQueue::with_capacity(64);
    for _ in 0..bursts {
        if batched {
            channel_burst_batched(&ch, &mut q, &mut bufs);
        } else {
            channel_burst(&ch, &mut q, &mut bufs);
        }
    }
    assert!(bufs.verify());
}

#[inline(never)]
fn raw(size: usize, bursts: usize) {
    let mut bufs = Buffers::new(size, 32);
    for _ in 0..bursts {
        raw_burst(&mut bufs);
    }
    assert!(bufs.verify());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: overhead_profile <copy bytes> <bursts of 32> raw|cpu|offload|cpu-burst|offload-burst";
    let (Some(Ok(size)), Some(Ok(bursts))) =
        (args.get(1).map(|s| s.parse::<usize>()), args.get(2).map(|s| s.parse::<usize>()))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    match args.get(3).map(String::as_str) {
        Some("raw") => raw(size, bursts),
        Some("cpu") => through_channel(size, bursts, Policy::default(), false),
        Some("offload") => through_channel(size, bursts, Policy::offload_all(), false),
        Some("cpu-burst") => through_channel(size, bursts, Policy::default(), true),
        Some("offload-burst") => through_channel(size, bursts, Policy::offload_all(), true),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
