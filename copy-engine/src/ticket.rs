//! Tickets: the per-channel sequence numbers that name enqueued copies.
//!
//! A ticket is a `u64` that grows by one for every op a channel accepts, starting at zero. It never
//! wraps in practice (at 10^9 ops/s it would take 584 years), so users compare tickets with plain
//! `<`. Backends map tickets to their own wrapping ring indices (dmadev uses `u16`) with
//! [`Ticket::ring_index`]; no other code does wrap-around arithmetic.

use core::fmt;

/// The name of one enqueued op on one channel: monotonically increasing, never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ticket(u64);

impl Ticket {
    /// The first ticket a fresh channel hands out.
    pub const ZERO: Ticket = Ticket(0);

    /// A ticket with sequence number `seq`.
    #[inline]
    pub const fn new(seq: u64) -> Self {
        Ticket(seq)
    }

    /// The sequence number.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The ticket after this one.
    #[inline]
    pub const fn next(self) -> Self {
        Ticket(self.0 + 1)
    }

    /// This ticket moved `n` forward.
    #[inline]
    pub const fn add(self, n: u64) -> Self {
        Ticket(self.0 + n)
    }

    /// Number of tickets from `earlier` up to (not including) `self`; zero when `earlier` is later.
    #[inline]
    pub const fn since(self, earlier: Ticket) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The slot of this ticket in a ring whose size is a power of two (`mask` = size - 1).
    #[inline]
    pub const fn ring_index(self, mask: u64) -> usize {
        (self.0 & mask) as usize
    }

    /// Reconstructs the full ticket from a backend's wrapping `u16` ring index, given a ticket
    /// `base` known to be at most 65,535 earlier than the one named by `idx`.
    #[inline]
    pub const fn from_u16_after(base: Ticket, idx: u16) -> Ticket {
        let delta = idx.wrapping_sub(base.0 as u16) as u64;
        Ticket(base.0 + delta)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({})", self.0)
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A half-open range of tickets `[start, end)`: the ops one future (or one packet) waits for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TicketRange {
    /// First ticket of the range.
    pub start: Ticket,
    /// One past the last ticket of the range.
    pub end: Ticket,
}

impl TicketRange {
    /// The range `[start, end)`.
    #[inline]
    pub const fn new(start: Ticket, end: Ticket) -> Self {
        TicketRange { start, end }
    }

    /// An empty range at `at` (done as soon as everything before `at` is done).
    #[inline]
    pub const fn empty(at: Ticket) -> Self {
        TicketRange { start: at, end: at }
    }

    /// Number of ops in the range.
    #[inline]
    pub const fn len(&self) -> u64 {
        self.end.since(self.start)
    }

    /// True when the range names no op.
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }

    /// True when `t` lies in the range.
    #[inline]
    pub const fn contains(&self, t: Ticket) -> bool {
        t.0 >= self.start.0 && t.0 < self.end.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_ring_index_maps_back_across_wrap() {
        let base = Ticket::new(65_530);
        for k in 0..60_000u64 {
            let t = base.add(k);
            assert_eq!(Ticket::from_u16_after(base, t.get() as u16), t);
        }
    }

    #[test]
    fn range_counts_and_contains() {
        let r = TicketRange::new(Ticket::new(3), Ticket::new(7));
        assert_eq!(r.len(), 4);
        assert!(r.contains(Ticket::new(3)) && r.contains(Ticket::new(6)));
        assert!(!r.contains(Ticket::new(7)) && !r.contains(Ticket::new(2)));
        assert!(TicketRange::empty(Ticket::new(5)).is_empty());
    }
}
