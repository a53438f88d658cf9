//! Non-waking futures that a PMD loop polls inline.
//!
//! A PMD thread has no executor and no wake-ups: it spins. [`CopyFuture`] is a small state machine
//! over a ticket range whose `poll` checks the channel's retired watermark, reaps the engine inline
//! when needed, and returns `Pending` or `Ready`. It **never registers a waker**: under an ordinary
//! executor it would sleep forever after its first `Pending`. Use [`AsyncCopy`](crate::AsyncCopy)
//! there. [`poll_inline`] polls any future with a no-op waker.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use pin_project::pin_project;
use smallvec::SmallVec;

use crate::channel::Channel;
use crate::engine::CopyEngine;
use crate::error::FailedOp;
use crate::ticket::TicketRange;

/// The failed ops of one range. One is stored inline (the common failure case costs no
/// allocation, and the success path moves only 24 bytes); more spill to the heap.
pub type Failures = SmallVec<[FailedOp; 1]>;

/// What a copy future resolves to: success, or the ops that failed (report policy only; under
/// the CPU-retry policy failed ops are redone and the range succeeds).
pub type CopyOutcome = Result<(), Failures>;

/// Polls `fut` once with a no-op waker: the PMD loop's way to drive a future without an executor.
#[inline]
pub fn poll_inline<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx)
}

/// A non-waking future over a range of a channel's tickets. Poll-only: see the module docs.
#[derive(Debug)]
#[must_use = "a copy future does nothing unless polled; dropping it leaves the copy running"]
pub struct CopyFuture<'c, E: CopyEngine> {
    chan: &'c Channel<E>,
    range: TicketRange,
}

impl<'c, E: CopyEngine> CopyFuture<'c, E> {
    /// A future that resolves when every op of `range` on `chan` has retired.
    #[inline]
    pub fn new(chan: &'c Channel<E>, range: TicketRange) -> Self {
        CopyFuture { chan, range }
    }

    /// The tickets this future waits for.
    #[inline]
    pub fn range(&self) -> TicketRange {
        self.range
    }

    /// This future with `tag` attached to its output (e.g. the packet the copies belong to).
    #[inline]
    pub fn tagged<T>(self, tag: T) -> Tagged<Self, T> {
        Tagged { fut: self, tag: Some(tag) }
    }
}

impl<E: CopyEngine> Future for CopyFuture<'_, E> {
    type Output = CopyOutcome;

    #[inline]
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<CopyOutcome> {
        if !self.chan.is_done(self.range) {
            self.chan.progress();
            if !self.chan.is_done(self.range) {
                return Poll::Pending;
            }
        }
        let failed = self.chan.take_failures(self.range);
        Poll::Ready(if failed.is_empty() { Ok(()) } else { Err(failed) })
    }
}

/// A future with a tag carried to its output: resolves to `(tag, output)`.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Tagged<F, T> {
    #[pin]
    fut: F,
    tag: Option<T>,
}

impl<F: Future, T> Future for Tagged<F, T> {
    type Output = (T, F::Output);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.fut.poll(cx) {
            Poll::Ready(out) => Poll::Ready((this.tag.take().expect("Tagged polled after completion"), out)),
            Poll::Pending => Poll::Pending,
        }
    }
}
