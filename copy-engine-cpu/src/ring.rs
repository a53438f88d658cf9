//! The single-producer single-consumer descriptor ring between a [`WorkerEngine`] and its worker
//! thread.
//!
//! This module owns the ring's memory, its two indices and the memory ordering between them; it is
//! the only place where descriptor slots are read or written. It knows nothing about copies,
//! tickets, parking or stats: [`crate::worker`] does, and must not touch the slots or the indices
//! except through [`Producer`] and [`Consumer`].
//!
//! # Protocol
//!
//! Both indices count descriptors since the ring was created (`u64`, never wrapping in practice);
//! a descriptor with sequence number `n` lives in slot `n & mask`.
//!
//! - The producer writes a descriptor into slot `written & mask` with a plain write, and later
//!   publishes `tail = written` with a **Release** store ([`Producer::publish`]).
//! - The consumer **Acquire**-loads `tail`, which makes every slot below it readable, reads the
//!   descriptors in order, and after it is done with a descriptor (for the worker: after the copy
//!   has finished) publishes `done` with a **Release** store ([`Consumer::complete`]).
//! - The producer **Acquire**-loads `done` ([`Producer::load_done`]), which makes the consumer's
//!   reads of those slots (and everything the consumer wrote before, i.e. the copied bytes) happen
//!   before what the producer does next. A slot is reused only when `done` says the consumer has
//!   finished with the descriptor that was in it: `written - done < capacity`.
//!
//! `tail` and `done` sit on separate cache lines, and each side keeps a private copy of the other
//! side's index (`cached_done`, `cached_tail`) so that it touches the shared line only when its
//! copy says there is nothing more to do (as rtrb does).
//!
//! [`WorkerEngine`]: crate::WorkerEngine

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Pads and aligns a value to a cache line so that two of them never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One copy descriptor: `len` bytes from `src` to `dst`.
///
/// The pointers are plain data here; what makes dereferencing them sound is the `enqueue` contract
/// of [`copy_engine::CopyEngine`], which the worker relies on, not the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    /// Source address.
    pub(crate) src: *const u8,
    /// Destination address.
    pub(crate) dst: *mut u8,
    /// Bytes to copy.
    pub(crate) len: usize,
}

impl Desc {
    /// An empty descriptor, the initial content of every slot.
    const EMPTY: Desc = Desc { src: core::ptr::null(), dst: core::ptr::null_mut(), len: 0 };
}

/// The shared part of the ring: the two indices and the slots.
struct Ring {
    /// Descriptors published by the producer (written by the producer only).
    tail: CachePadded<AtomicU64>,
    /// Descriptors the consumer has finished with (written by the consumer only).
    done: CachePadded<AtomicU64>,
    /// `capacity` slots; slot `n & mask` holds descriptor `n`.
    slots: Box<[UnsafeCell<Desc>]>,
    /// `capacity - 1`; the capacity is a power of two.
    mask: u64,
}

// SAFETY: the slots are the only non-`Sync` part. Slot `n & mask` is written only by the producer
// while `n` is in `[done, done + capacity)` and not yet below `tail` (so the consumer, which reads
// only below `tail` and at or above `done`, is not reading it), and read only by the consumer while
// `n` is in `[done, tail)`; the Release/Acquire pairs on `tail` and `done` order every write before
// the read that follows it and every read before the write that reuses the slot. The descriptors'
// raw pointers cross threads as plain data: the ring never dereferences them, and the worker that
// does relies on the `CopyEngine::enqueue` contract, which holds whatever thread runs the copy.
unsafe impl Sync for Ring {}
// SAFETY: as for `Sync`: the ring moves between threads only as the shared half of a producer and a
// consumer, which follow the protocol above.
unsafe impl Send for Ring {}

/// Creates a ring of `capacity` descriptors (a power of two, at least one) and returns its two
/// ends.
pub(crate) fn ring(capacity: usize) -> (Producer, Consumer) {
    assert!(capacity.is_power_of_two(), "ring capacity must be a power of two");
    let ring = Arc::new(Ring {
        tail: CachePadded(AtomicU64::new(0)),
        done: CachePadded(AtomicU64::new(0)),
        slots: (0..capacity).map(|_| UnsafeCell::new(Desc::EMPTY)).collect(),
        mask: capacity as u64 - 1,
    });
    let producer = Producer { ring: Arc::clone(&ring), written: 0, published: 0, cached_done: 0 };
    let consumer = Consumer { ring, head: 0, cached_tail: 0 };
    (producer, consumer)
}

/// The producer end: writes descriptors and publishes them. Owned by the engine's thread.
pub(crate) struct Producer {
    ring: Arc<Ring>,
    /// Descriptors written into slots (published or not).
    written: u64,
    /// The last value stored to `tail`.
    published: u64,
    /// The last value loaded from `done`.
    cached_done: u64,
}

impl Producer {
    /// Slots in the ring.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.ring.slots.len()
    }

    /// Descriptors written so far (the sequence number the next one gets).
    #[inline]
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Descriptors published to the consumer so far.
    #[inline]
    pub(crate) fn published(&self) -> u64 {
        self.published
    }

    /// The consumer's completion count as last loaded by [`load_done`](Self::load_done).
    #[inline]
    pub(crate) fn cached_done(&self) -> u64 {
        self.cached_done
    }

    /// Writes `desc` into the next slot, without publishing it. Hands it back when every slot still
    /// holds a descriptor the consumer has not finished with.
    #[inline]
    pub(crate) fn push(&mut self, desc: Desc) -> Result<(), Desc> {
        let cap = self.ring.slots.len() as u64;
        if self.written - self.cached_done >= cap && self.written - self.load_done() >= cap {
            return Err(desc);
        }
        let slot = &self.ring.slots[(self.written & self.ring.mask) as usize];
        // SAFETY: descriptor `written` is at or above `tail` (unpublished), so the consumer does not
        // read this slot; and `written - done < capacity`, where `done` was Acquire-loaded, so the
        // consumer has finished with the descriptor `written - capacity` that was in it before, and
        // its read of it happens before this write. We are the only producer (`&mut self`).
        unsafe { *slot.get() = desc };
        self.written += 1;
        Ok(())
    }

    /// Publishes every written descriptor to the consumer (Release). Returns whether there was
    /// anything new to publish.
    #[inline]
    pub(crate) fn publish(&mut self) -> bool {
        if self.published == self.written {
            return false;
        }
        self.ring.tail.store(self.written, Ordering::Release);
        self.published = self.written;
        true
    }

    /// Loads the consumer's completion count (Acquire): everything the consumer did before it
    /// completed those descriptors (the copies) happens before whatever the caller does next.
    #[inline]
    pub(crate) fn load_done(&mut self) -> u64 {
        self.cached_done = self.ring.done.load(Ordering::Acquire);
        self.cached_done
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("written", &self.written)
            .field("published", &self.published)
            .field("cached_done", &self.cached_done)
            .finish()
    }
}

/// The consumer end: reads published descriptors in order and reports when it is done with them.
/// Owned by the worker thread.
pub(crate) struct Consumer {
    ring: Arc<Ring>,
    /// Descriptors read so far.
    head: u64,
    /// The last value loaded from `tail`.
    cached_tail: u64,
}

impl Consumer {
    /// Reads the next published descriptor, if any. The descriptor stays counted as in use until
    /// [`complete`](Self::complete) publishes it done.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Desc> {
        if self.head == self.cached_tail && !self.has_published() {
            return None;
        }
        let slot = &self.ring.slots[(self.head & self.ring.mask) as usize];
        // SAFETY: `head < tail`, where `tail` was Acquire-loaded, so the producer's write of this
        // slot happens before this read; and `head >= done` (we publish `done` only up to `head`),
        // so the producer will not write this slot again until we publish `done > head`.
        let desc = unsafe { *slot.get() };
        self.head += 1;
        Some(desc)
    }

    /// Reloads the producer's published count (Acquire) and says whether a descriptor is waiting.
    #[inline]
    pub(crate) fn has_published(&mut self) -> bool {
        self.cached_tail = self.ring.tail.load(Ordering::Acquire);
        self.cached_tail != self.head
    }

    /// Publishes (Release) that every descriptor read so far is done with: their slots may be
    /// reused, and everything this thread did before (the copies) is visible to the producer once
    /// it loads the count.
    #[inline]
    pub(crate) fn complete(&mut self) {
        self.ring.done.store(self.head, Ordering::Release);
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.slots.len())
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u64) -> Desc {
        Desc { src: core::ptr::null(), dst: core::ptr::null_mut(), len: n as usize }
    }

    #[test]
    fn cache_padded_indices_sit_on_separate_lines() {
        assert_eq!(core::mem::align_of::<CachePadded<AtomicU64>>(), 64);
        let (p, _c) = ring(4);
        let tail = &p.ring.tail as *const _ as usize;
        let done = &p.ring.done as *const _ as usize;
        assert!(tail.abs_diff(done) >= 64);
    }

    #[test]
    fn unpublished_descriptors_are_invisible_to_the_consumer() {
        let (mut p, mut c) = ring(4);
        p.push(desc(7)).unwrap();
        assert_eq!(c.pop(), None);
        assert!(p.publish());
        assert!(!p.publish(), "nothing new to publish");
        assert_eq!(c.pop(), Some(desc(7)));
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn full_ring_hands_the_descriptor_back_until_the_consumer_completes() {
        let (mut p, mut c) = ring(4);
        for n in 0..4 {
            p.push(desc(n)).unwrap();
        }
        assert_eq!(p.push(desc(4)), Err(desc(4)));
        p.publish();
        assert_eq!(c.pop(), Some(desc(0)));
        // Read but not completed: the slot is still in use.
        assert_eq!(p.push(desc(4)), Err(desc(4)));
        c.complete();
        assert_eq!(p.push(desc(4)), Ok(()));
        assert_eq!(p.cached_done(), 1);
    }

    #[test]
    fn descriptors_come_out_in_order_across_many_wraps() {
        let (mut p, mut c) = ring(8);
        let mut next_out = 0;
        for n in 0..1000u64 {
            p.push(desc(n)).unwrap();
            if n % 3 == 0 {
                p.publish();
                while let Some(d) = c.pop() {
                    assert_eq!(d, desc(next_out));
                    next_out += 1;
                }
                c.complete();
            }
        }
        p.publish();
        while let Some(d) = c.pop() {
            assert_eq!(d, desc(next_out));
            next_out += 1;
        }
        assert_eq!(next_out, 1000);
    }

    #[test]
    fn descriptors_cross_threads_in_order() {
        const N: u64 = 100_000;
        let (mut p, mut c) = ring(16);
        let consumer = std::thread::spawn(move || {
            let mut expect = 0;
            while expect < N {
                match c.pop() {
                    Some(d) => {
                        assert_eq!(d, desc(expect));
                        expect += 1;
                        if expect % 5 == 0 {
                            c.complete();
                        }
                    }
                    None => {
                        c.complete();
                        std::thread::yield_now();
                    }
                }
            }
            c.complete();
        });
        let mut n = 0;
        while n < N {
            match p.push(desc(n)) {
                Ok(()) => n += 1,
                Err(_) => {
                    p.publish();
                    std::thread::yield_now();
                }
            }
            if n % 7 == 0 {
                p.publish();
            }
        }
        p.publish();
        consumer.join().unwrap();
        assert_eq!(p.load_done(), N);
    }
}
