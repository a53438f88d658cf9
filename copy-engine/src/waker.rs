//! The executor adapter: the same channels under an ordinary executor (`futures::executor`, tokio).
//!
//! [`CopyFuture`](crate::CopyFuture) never registers a waker, which is right for a spinning PMD
//! loop and wrong for an executor, which would never poll it again. [`AsyncCopy`] stores its waker
//! in the channel; whoever drives completions ([`Channel::progress`], called by a PMD loop or by
//! the [`Driver`] future) wakes it when its tickets retire. This is smoltcp's split: the core is
//! driven by polling, an optional layer registers wakers that polling wakes.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::channel::Channel;
use crate::engine::CopyEngine;
use crate::future::CopyOutcome;
use crate::ticket::TicketRange;

/// A waking copy future: registers its waker and is woken by [`Channel::progress`].
#[derive(Debug)]
#[must_use = "a copy future does nothing unless polled; dropping it leaves the copy running"]
pub struct AsyncCopy<'c, E: CopyEngine> {
    chan: &'c Channel<E>,
    range: TicketRange,
}

impl<'c, E: CopyEngine> AsyncCopy<'c, E> {
    /// A waking future for `range` on `chan`.
    pub fn new(chan: &'c Channel<E>, range: TicketRange) -> Self {
        AsyncCopy { chan, range }
    }
}

impl<E: CopyEngine> Future for AsyncCopy<'_, E> {
    type Output = CopyOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CopyOutcome> {
        if !self.chan.is_done(self.range) {
            self.chan.register_waker(self.range.end, cx.waker());
            self.chan.progress();
            if !self.chan.is_done(self.range) {
                return Poll::Pending;
            }
        }
        let failed = self.chan.take_failures(self.range);
        Poll::Ready(if failed.is_empty() { Ok(()) } else { Err(failed) })
    }
}

/// Drives a channel's completions under an executor: each poll reaps the engine (waking the
/// [`AsyncCopy`] futures whose tickets retired) and, while ops are in flight, asks to be polled
/// again. Resolves once nothing is in flight. Run it beside the copies (`join`, or a local task).
#[derive(Debug)]
#[must_use = "a driver does nothing unless polled"]
pub struct Driver<'c, E: CopyEngine> {
    chan: &'c Channel<E>,
}

impl<'c, E: CopyEngine> Driver<'c, E> {
    /// A driver for `chan`.
    pub fn new(chan: &'c Channel<E>) -> Self {
        Driver { chan }
    }
}

impl<E: CopyEngine> Future for Driver<'_, E> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.chan.submit();
        self.chan.progress();
        if self.chan.in_flight() == 0 {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
