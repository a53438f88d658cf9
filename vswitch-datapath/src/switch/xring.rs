//! The ring between two PMD threads: a lock-free single-producer single-consumer queue of frames,
//! for a packet that one PMD received and another PMD's port sends.
//!
//! Each PMD owns its packet pool, which no other thread may touch, so a frame crosses by value:
//! the producer copies its bytes into a slot of the ring (slots own their buffers, allocated once),
//! the consumer copies them out into a buffer of its own pool. Frames come out in the order they
//! went in; a full ring refuses a frame (the producer keeps it: push back), it never drops one.
//!
//! # Protocol
//!
//! `tail` (frames published) and `head` (frames consumed) count since creation and never wrap in
//! practice (`u64`); frame `n` lives in slot `n % slots`. The producer writes slot `tail % slots`
//! only while `tail - head < slots` and then publishes `tail + 1` with a **Release** store; the
//! consumer **Acquire**-loads `tail`, reads the slots below it, and releases each one by
//! publishing `head + 1` with a **Release** store, which the producer **Acquire**-loads before it
//! reuses the slot. So a slot is only ever accessed by one side at a time. The two indices sit on
//! separate cache lines, and each side caches the other's index to touch the shared line only
//! when its copy says the ring is full (producer) or empty (consumer). This module is the only
//! one that touches the slots.

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Pads and aligns a value to a cache line.
#[repr(align(64))]
struct CachePadded<T>(T);

struct Slot {
    len: usize,
    data: Box<[u8]>,
}

struct Shared {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
    slots: Box<[UnsafeCell<Slot>]>,
    slot_size: usize,
}

// SAFETY: a slot is accessed by one side at a time (see the module's protocol: the producer only
// writes slots the consumer released, the consumer only reads slots the producer published, and
// the Release/Acquire pairs on `tail` and `head` order those accesses); the indices are atomics.
unsafe impl Sync for Shared {}

/// The producing end (one PMD thread).
pub struct XProducer {
    shared: Arc<Shared>,
    tail: u64,
    cached_head: u64,
}

/// The consuming end (another PMD thread).
pub struct XConsumer {
    shared: Arc<Shared>,
    head: u64,
    cached_tail: u64,
}

impl fmt::Debug for XProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XProducer").field("slots", &self.shared.slots.len()).field("tail", &self.tail).finish()
    }
}

impl fmt::Debug for XConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XConsumer").field("slots", &self.shared.slots.len()).field("head", &self.head).finish()
    }
}

/// A ring of `slots` frames of at most `slot_size` bytes each.
pub fn xring(slots: usize, slot_size: usize) -> (XProducer, XConsumer) {
    let slots = slots.max(1);
    let shared = Arc::new(Shared {
        tail: CachePadded(AtomicU64::new(0)),
        head: CachePadded(AtomicU64::new(0)),
        slots: (0..slots).map(|_| UnsafeCell::new(Slot { len: 0, data: vec![0; slot_size].into() })).collect(),
        slot_size,
    });
    (XProducer { shared: shared.clone(), tail: 0, cached_head: 0 }, XConsumer { shared, head: 0, cached_tail: 0 })
}

impl XProducer {
    /// Whether one more frame fits now.
    #[inline]
    pub fn has_room(&mut self) -> bool {
        let n = self.shared.slots.len() as u64;
        if self.tail - self.cached_head < n {
            return true;
        }
        self.cached_head = self.shared.head.0.load(Ordering::Acquire);
        self.tail - self.cached_head < n
    }

    /// Largest frame a slot holds.
    pub fn slot_size(&self) -> usize {
        self.shared.slot_size
    }

    /// Copies `frame` into the ring, to be seen by the consumer after the next
    /// [`publish`](Self::publish); `false` (nothing written) when the ring is full.
    ///
    /// # Panics
    ///
    /// If `frame` is longer than [`slot_size`](Self::slot_size).
    #[inline]
    pub fn push(&mut self, frame: &[u8]) -> bool {
        assert!(frame.len() <= self.shared.slot_size, "frame of {} bytes exceeds the ring's slots", frame.len());
        if !self.has_room() {
            return false;
        }
        let i = (self.tail % self.shared.slots.len() as u64) as usize;
        // SAFETY: `tail - head < slots`, so the consumer released this slot (its Release store of
        // `head`, which `has_room` Acquire-loaded, came after its last read of it) and will not
        // read it before a Release store of `tail` past it (`publish`): this side is its only
        // user now.
        let slot = unsafe { &mut *self.shared.slots[i].get() };
        slot.data[..frame.len()].copy_from_slice(frame);
        slot.len = frame.len();
        self.tail += 1;
        true
    }

    /// Makes every frame pushed so far visible to the consumer (once per burst: the shared cache
    /// line is written once, not per frame). Frames not yet published are not lost: the next
    /// `publish` shows them, in order.
    #[inline]
    pub fn publish(&mut self) {
        self.shared.tail.0.store(self.tail, Ordering::Release);
    }
}

impl XConsumer {
    /// Hands the oldest frame to `f`; its slot goes back to the producer at the next
    /// [`release`](Self::release). `false` when the ring is empty.
    #[inline]
    pub fn pop_with(&mut self, f: impl FnOnce(&[u8])) -> bool {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return false;
            }
        }
        let i = (self.head % self.shared.slots.len() as u64) as usize;
        // SAFETY: `head < tail`: the producer published this slot with a Release store of `tail`
        // that the Acquire load above saw, and will not write it again before a Release store of
        // `head` past it (`release`): this side is its only user now, and only reads it.
        let slot = unsafe { &*self.shared.slots[i].get() };
        f(&slot.data[..slot.len]);
        self.head += 1;
        true
    }

    /// Gives the slots of every frame popped so far back to the producer (once per burst).
    #[inline]
    pub fn release(&mut self) {
        self.shared.head.0.store(self.head, Ordering::Release);
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        (self.shared.tail.0.load(Ordering::Acquire) - self.head) as usize
    }

    /// Whether no frame waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_a_full_ring_refuses_without_dropping() {
        let (mut p, mut c) = xring(4, 16);
        for i in 0..4u8 {
            assert!(p.push(&[i; 3]));
        }
        assert!(!p.push(&[9]), "full");
        let mut got = Vec::new();
        assert!(!c.pop_with(|f| got.push(f.to_vec())), "nothing published yet");
        p.publish();
        assert!(c.pop_with(|f| got.push(f.to_vec())));
        assert!(!p.push(&[4, 4]), "the slot is not released yet");
        c.release();
        assert!(p.push(&[4, 4]), "a slot was released");
        p.publish();
        while c.pop_with(|f| got.push(f.to_vec())) {}
        c.release();
        assert_eq!(got, [vec![0; 3], vec![1; 3], vec![2; 3], vec![3; 3], vec![4; 2]]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_million_frames_cross_between_two_threads_in_order_and_intact() {
        let (mut p, mut c) = xring(64, 64);
        const N: u32 = 1_000_000;
        let t = std::thread::spawn(move || {
            let mut next = 0u32;
            while next < N {
                for _ in 0..(next % 7) + 1 {
                    c.pop_with(|f| {
                        assert_eq!(f.len(), 4 + (next % 60) as usize);
                        assert_eq!(u32::from_le_bytes(f[..4].try_into().unwrap()), next, "out of order");
                        assert!(f[4..].iter().all(|&b| b == next as u8), "corrupt frame {next}");
                        next += 1;
                    });
                }
                c.release();
            }
        });
        let mut buf = [0u8; 64];
        for i in 0..N {
            let len = 4 + (i % 60) as usize;
            buf[..4].copy_from_slice(&i.to_le_bytes());
            buf[4..len].fill(i as u8);
            while !p.push(&buf[..len]) {
                p.publish();
                std::hint::spin_loop();
            }
            if i % 5 == 0 {
                p.publish();
            }
        }
        p.publish();
        t.join().unwrap();
    }
}
