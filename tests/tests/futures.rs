//! The futures layer: inline polling, the defer queue, and the executor adapter.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use copy_engine::conformance::{LazyEngine, Rng};
use copy_engine::{poll_inline, AsyncCopy, Channel, DeferQueue, OpFlags, Policy, TicketRange};

/// A waker that counts how often it is woken.
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn buffers(n: usize, len: usize, seed: u64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = Rng::new(seed);
    let src: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let mut v = vec![0u8; len];
            rng.fill(&mut v);
            v
        })
        .collect();
    (src, vec![vec![0u8; len]; n])
}

#[test]
fn inline_future_is_pending_until_the_engine_retires_its_copy() {
    let ch = Channel::new(LazyEngine::new(64, 1), Policy::offload_all());
    let (src, mut dst) = buffers(3, 1000, 1);
    let mut futs = Vec::new();
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        // SAFETY: buffers outlive the channel's drain on drop.
        futs.push(unsafe { ch.copy(s.as_ptr(), d.as_mut_ptr(), s.len()) }.expect("copy"));
    }
    // The lazy engine retires one op per reap, and each poll reaps once.
    let mut last = pin!(futs.pop().unwrap());
    assert!(poll_inline(last.as_mut()).is_pending());
    assert!(poll_inline(last.as_mut()).is_pending());
    assert_eq!(poll_inline(last.as_mut()), Poll::Ready(Ok(())));
    drop(futs);
    assert_eq!(src, dst);
}

#[test]
fn defer_queue_resolves_in_push_order_and_hands_back_when_full() {
    let ch = Channel::new(LazyEngine::new(256, 3), Policy::default().with_cpu_below(512));
    let mut rng = Rng::new(2);
    let n = 100;
    let lens: Vec<usize> = (0..n).map(|_| rng.range(1, 2000)).collect();
    let src: Vec<Vec<u8>> = lens
        .iter()
        .map(|&l| {
            let mut v = vec![0u8; l];
            rng.fill(&mut v);
            v
        })
        .collect();
    let mut dst: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
    let mut q = DeferQueue::with_capacity(16);
    let mut done = Vec::new();
    for (i, (s, d)) in src.iter().zip(dst.iter_mut()).enumerate() {
        // SAFETY: buffers outlive the channel (dropped after it drains).
        let t = unsafe { ch.enqueue(s.as_ptr(), d.as_mut_ptr(), s.len(), OpFlags::SUBMIT) }.expect("enqueue");
        let mut fut = ch.future(TicketRange::new(t, t.next())).tagged(i);
        loop {
            match q.push(fut) {
                Ok(()) => break,
                Err(back) => {
                    fut = back.0;
                    q.poll(|(tag, out)| {
                        assert!(out.is_ok());
                        done.push(tag)
                    });
                }
            }
        }
        assert!(q.len() <= q.capacity());
    }
    while !q.is_empty() {
        q.poll(|(tag, out)| {
            assert!(out.is_ok());
            done.push(tag)
        });
    }
    assert_eq!(done, (0..n).collect::<Vec<_>>(), "defer queue reordered completions");
    assert_eq!(src, dst);
    assert!(ch.stats().cpu_small > 0 && ch.stats().offloaded > 0, "both paths exercised");
}

#[test]
fn copy_awaited_under_block_on_completes() {
    let ch = Channel::new(LazyEngine::new(64, 1), Policy::offload_all());
    let (src, mut dst) = buffers(8, 4096, 3);
    futures::executor::block_on(async {
        let mut copies = Vec::new();
        for (s, d) in src.iter().zip(dst.iter_mut()) {
            // SAFETY: buffers outlive the awaited copies.
            copies.push(unsafe { ch.copy_async(s.as_ptr(), d.as_mut_ptr(), s.len()) }.expect("copy"));
        }
        let (outs, ()) = futures::join!(futures::future::join_all(copies), ch.driver());
        assert!(outs.iter().all(|o| o.is_ok()));
    });
    assert_eq!(src, dst);
}

/// The plain inline future is poll-only: after its first `Pending` it never wakes its waker, so an
/// executor that waits for a wake-up would sleep forever. The adapter future is woken.
#[test]
fn inline_future_never_wakes_so_executors_need_the_adapter() {
    let ch = Channel::new(LazyEngine::new(64, 1), Policy::offload_all());
    let (src, mut dst) = buffers(2, 512, 4);
    let mut ranges = Vec::new();
    for (s, d) in src.iter().zip(dst.iter_mut()) {
        // Not submitted yet: the lazy engine retires nothing until the doorbell rings.
        // SAFETY: buffers outlive the channel's drain below.
        let t = unsafe { ch.enqueue(s.as_ptr(), d.as_mut_ptr(), s.len(), OpFlags::empty()) }.unwrap();
        ranges.push(TicketRange::new(t, t.next()));
    }
    let mut inline = pin!(ch.future(ranges[0]));
    let mut waking = pin!(AsyncCopy::new(&ch, ranges[1]));
    let inline_waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let adapter_waker = Arc::new(CountingWaker(AtomicUsize::new(0)));
    let w1 = Waker::from(inline_waker.clone());
    let w2 = Waker::from(adapter_waker.clone());
    assert!(inline.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
    assert!(waking.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());

    // Someone else (a PMD loop) drives completions to the end.
    ch.drain();
    assert_eq!(inline_waker.0.load(Ordering::SeqCst), 0, "the inline future registered a waker");
    assert_eq!(adapter_waker.0.load(Ordering::SeqCst), 1, "the adapter future was not woken");
    assert_eq!(poll_inline(inline.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(poll_inline(waking.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(src, dst);
}
