//! The defer queue: a PMD thread's outstanding work, polled once per loop iteration.
//!
//! OVS "defer work": a Vhost_TX burst submits copies and, instead of waiting, leaves a future here;
//! each later iteration polls the queue, which resolves futures **in the order they were pushed**
//! and stops at the first that is not ready. Its capacity is fixed at construction: pushing never
//! allocates; a full queue hands the future back ([`PushError`]), the caller's cue to poll first.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::Poll;
use std::collections::VecDeque;

use crate::future::poll_inline;

/// A future the defer queue had no room for, handed back.
pub struct PushError<F>(pub F);

impl<F> fmt::Debug for PushError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PushError(defer queue full)")
    }
}

impl<F> fmt::Display for PushError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("defer queue full")
    }
}

impl<F> std::error::Error for PushError<F> {}

/// A fixed-capacity FIFO of futures polled inline, completing in order.
pub struct DeferQueue<F> {
    items: VecDeque<F>,
    cap: usize,
}

impl<F> fmt::Debug for DeferQueue<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeferQueue").field("len", &self.items.len()).field("cap", &self.cap).finish()
    }
}

impl<F: Future + Unpin> DeferQueue<F> {
    /// An empty queue that holds up to `cap` futures (allocated now, never again).
    pub fn with_capacity(cap: usize) -> Self {
        DeferQueue { items: VecDeque::with_capacity(cap), cap }
    }

    /// Adds a future at the back; a full queue hands it back.
    #[inline]
    pub fn push(&mut self, fut: F) -> Result<(), PushError<F>> {
        if self.items.len() >= self.cap {
            return Err(PushError(fut));
        }
        self.items.push_back(fut);
        Ok(())
    }

    /// Polls from the front, handing each ready output to `done`, and stops at the first future
    /// that is still pending. Returns how many completed.
    #[inline]
    pub fn poll(&mut self, mut done: impl FnMut(F::Output)) -> usize {
        let mut n = 0;
        while let Some(front) = self.items.front_mut() {
            match poll_inline(Pin::new(front)) {
                Poll::Ready(out) => {
                    self.items.pop_front();
                    done(out);
                    n += 1;
                }
                Poll::Pending => break,
            }
        }
        n
    }

    /// Futures waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The fixed capacity.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }
}
