//! The channel's CPU copy (the path below the CPU threshold, and every fallback): each length up
//! to past its inline sizes, at every source and destination misalignment, copies exactly its
//! bytes and touches nothing on either side of the destination.

use copy_engine::{Channel, OpFlags, Policy};
use copy_engine_cpu::MemcpyEngine;

/// Bytes of guard on each side of every copy.
const GUARD: usize = 16;

#[test]
fn every_small_length_and_misalignment_copies_exactly_its_bytes() {
    // Everything below 4096 B goes to the CPU.
    let ch = Channel::new(MemcpyEngine::default(), Policy::default().with_cpu_below(4096));
    let src: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut checked = 0;
    for len in 0..=200usize {
        for s_off in 0..8 {
            for d_off in 0..8 {
                let mut dst = vec![0xEEu8; GUARD + d_off + len + GUARD];
                let at = GUARD + d_off;
                // SAFETY: both buffers outlive the copy, which the CPU path finishes inside
                // `enqueue` (checked below through the retired watermark).
                let t = unsafe { ch.enqueue(src[s_off..].as_ptr(), dst[at..].as_mut_ptr(), len, OpFlags::empty()) }
                    .expect("enqueue");
                assert!(ch.retired() > t, "a CPU copy with no engine op in flight retires at once");
                assert_eq!(&dst[at..at + len], &src[s_off..s_off + len], "len {len}, src +{s_off}, dst +{d_off}");
                assert!(dst[..at].iter().all(|&b| b == 0xEE), "bytes before the copy changed (len {len})");
                assert!(dst[at + len..].iter().all(|&b| b == 0xEE), "bytes after the copy changed (len {len})");
                checked += 1;
            }
        }
    }
    assert_eq!(ch.stats().cpu_small, checked);
}
