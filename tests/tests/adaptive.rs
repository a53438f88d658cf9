//! Adaptive offload: a channel whose engine stops making progress copies on the CPU instead,
//! keeps every copy in order, probes the engine, and goes back to it when it keeps up again.

use copy_engine::fault::{FaultConfig, FaultEngine};
use copy_engine::{Adaptive, Channel, OpFlags, Policy};
use copy_engine_cpu::MemcpyEngine;

const N: usize = 64;
const LEN: usize = 1024;

struct Bufs {
    src: Vec<Vec<u8>>,
    dst: Vec<Vec<u8>>,
}

impl Bufs {
    fn new() -> Bufs {
        Bufs { src: (0..N).map(|i| vec![i as u8 + 1; LEN]).collect(), dst: (0..N).map(|_| vec![0; LEN]).collect() }
    }

    fn copy(&mut self, ch: &Channel<FaultEngine<MemcpyEngine>>, i: usize) -> u64 {
        // SAFETY: the buffers live in `self` until the test has drained the channel.
        let t = unsafe { ch.enqueue(self.src[i].as_ptr(), self.dst[i].as_mut_ptr(), LEN, OpFlags::empty()) };
        t.unwrap().get()
    }
}

fn policy() -> Policy {
    Policy::offload_all().with_adaptive(Some(Adaptive { stall_polls: 8, probe_every: 4, max_probe_every: 8 }))
}

#[test]
fn a_stalled_engine_sends_copies_to_the_cpu_in_order_and_a_recovered_one_gets_them_back() {
    let engine = FaultEngine::new(MemcpyEngine::default(), FaultConfig { delay_polls: 1000, ..FaultConfig::default() });
    let ch = Channel::new(engine, policy());
    let mut b = Bufs::new();
    // The first copy goes to the engine, which then makes no progress for a while.
    assert_eq!(b.copy(&ch, 0), 0);
    ch.submit();
    for _ in 0..8 {
        ch.progress();
    }
    assert!(!ch.lagging(), "8 empty polls are within the stall limit");
    ch.progress();
    let s = ch.stats();
    assert_eq!((s.offloaded, s.adaptive_to_cpu), (1, 1), "{s:?}");
    assert!(ch.lagging(), "the 9th empty poll finds the engine lagging");
    // Lagging: the next copies go to the CPU (no probe while the engine is busy) but retire only
    // after the stalled one.
    for i in 1..20 {
        b.copy(&ch, i);
    }
    assert_eq!(ch.stats().cpu_adaptive, 19);
    assert_eq!(ch.stats().offloaded, 1);
    assert_eq!(ch.retired().get(), 0, "nothing retires before the stalled engine op");
    ch.drain();
    assert_eq!(ch.retired().get(), 20);
    for i in 0..20 {
        assert_eq!(b.dst[i], b.src[i], "copy {i}");
    }
    // Still starved: the first copy with the engine idle (more than 4 since lagging began) is a
    // probe; it takes longer than the stall limit, so the channel stays on the CPU and waits 8
    // copies (doubled, at the maximum) for the next probe.
    for i in 20..32 {
        b.copy(&ch, i);
        ch.submit();
        ch.drain();
    }
    let s = ch.stats();
    assert_eq!(s.offloaded, 3, "probes at copies 20 and 28: {s:?}");
    assert_eq!(s.adaptive_to_engine, 0);
    // The engine gets its core back: the next probe (copy 36) retires at once and the channel
    // returns.
    ch.with_engine(|e| e.set_delay_polls(0));
    for i in 32..40 {
        b.copy(&ch, i);
        ch.submit();
        ch.drain();
    }
    let s = ch.stats();
    assert_eq!(s.adaptive_to_engine, 1, "{s:?}");
    assert!(!ch.lagging(), "back on the engine");
    let offloaded = s.offloaded;
    for i in 40..N {
        b.copy(&ch, i);
    }
    ch.submit();
    ch.drain();
    let s = ch.stats();
    assert_eq!(s.offloaded, offloaded + (N - 40) as u64, "back on the engine: {s:?}");
    assert_eq!(ch.retired().get(), N as u64);
    for i in 0..N {
        assert_eq!(b.dst[i], b.src[i], "copy {i}");
    }
    assert_eq!(s.cpu_copies(), s.cpu_adaptive);
}

#[test]
fn without_adaptive_offload_a_stalled_engine_keeps_every_copy() {
    let engine = FaultEngine::new(MemcpyEngine::default(), FaultConfig { delay_polls: 50, ..FaultConfig::default() });
    let ch = Channel::new(engine, Policy::offload_all());
    let mut b = Bufs::new();
    for i in 0..N {
        b.copy(&ch, i);
        for _ in 0..20 {
            ch.progress();
        }
    }
    ch.drain();
    let s = ch.stats();
    assert_eq!((s.offloaded, s.cpu_adaptive, s.adaptive_to_cpu), (N as u64, 0, 0));
}
