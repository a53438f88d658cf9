//! A [`Channel`]: one engine plus the policy layer, with completion order kept across every path.
//!
//! The channel hands out its own tickets, one per op whatever path the op takes (engine, CPU
//! because small, CPU because the ring was full or the engine refused it, CPU retry after a
//! failure), and retires them strictly in order: a CPU-copied op is never reported done before an
//! earlier engine op. It does this with a shadow ring indexed by the engine's tickets: each engine
//! op in flight remembers its channel ticket, its buffers (for a CPU retry) and how many CPU ops
//! were accepted after it; when the engine retires op `k`, everything up to the next engine op is
//! done. CPU ops accepted while no engine op is in flight retire at once.
//!
//! Methods take `&self` so that futures can hold a shared reference while the PMD loop keeps
//! enqueueing; the state sits in a `RefCell` (the channel is `Send`, not `Sync`: one thread).
//! This module must not know any backend.

use core::cell::{Cell, RefCell};
use core::fmt;
use core::task::Waker;

use smallvec::SmallVec;

use crate::engine::{burst_op_flags, check_copy, CopyEngine, CopyOp};
use crate::error::{BurstError, EnqueueError, FailedOp};
use crate::flags::{Capabilities, OpFlags};
use crate::future::{CopyFuture, Failures};
use crate::policy::{OnError, OnRingFull, Policy};
use crate::stats::{EngineStats, PolicyStats};
use crate::ticket::{Ticket, TicketRange};
use crate::waker::{AsyncCopy, Driver};

/// Failed ops taken from the engine per reap call.
const REAP_BATCH: usize = 32;

/// One engine op in flight, as the channel remembers it.
#[derive(Clone, Copy, Default)]
struct Shadow {
    /// The op's channel ticket.
    chan: Ticket,
    /// CPU ops accepted after this engine op and before the next one.
    cpu_after: u64,
    /// Source address (kept for a CPU retry).
    src: usize,
    /// Destination address.
    dst: usize,
    /// Length in bytes.
    len: usize,
}

struct Inner<E> {
    engine: E,
    policy: Policy,
    /// The next channel ticket.
    next: Ticket,
    /// Engine tickets below this one have been processed by the channel.
    eng_done: Ticket,
    /// The engine ticket of the newest engine op (valid when `eng_done < engine.next_ticket()`).
    shadow: Box<[Shadow]>,
    mask: u64,
    /// Reported failures waiting to be claimed, oldest first, with channel tickets.
    failures: std::collections::VecDeque<FailedOp>,
    reap_buf: [FailedOp; REAP_BATCH],
    /// Whether the engine can fail ops ([`Capabilities::ERROR_STATUS`]): only then are the
    /// buffers of each op kept for a CPU retry.
    keep_buffers: bool,
    wakers: SmallVec<[(Ticket, Waker); 2]>,
    stats: PolicyStats,
    /// Consecutive progress calls that found engine ops in flight and retired none.
    stall: u32,
    /// Adaptive offload found the engine lagging: copies go to the CPU (but for probes).
    lagging: bool,
    /// Copies sent to the CPU since the last probe, while lagging.
    since_probe: u32,
    /// A probe is in flight (it was sent to an idle engine: nothing else is).
    probing: bool,
    /// Copies to send to the CPU before the next probe (doubles after each failed probe).
    probe_gap: u32,
    /// `stats.offloaded` when the channel last went back to the engine.
    offloaded_at_return: u64,
}

/// An engine behind the policy layer: the object a PMD thread (or the datapath) copies through.
pub struct Channel<E: CopyEngine> {
    inner: RefCell<Inner<E>>,
    /// Every channel ticket below this is retired; read without borrowing `inner`.
    retired: Cell<Ticket>,
    /// Reported failures waiting to be claimed (mirrors `inner.failures.len()`), so resolving a
    /// range on the fast path needs no borrow.
    failures: Cell<usize>,
}

impl<E: CopyEngine> fmt::Debug for Channel<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Channel")
            .field("engine", &inner.engine.info().name)
            .field("policy", &inner.policy)
            .field("next", &inner.next)
            .field("retired", &self.retired.get())
            .finish()
    }
}

/// Copies `len` bytes on the CPU. Up to 64 bytes (the copies the CPU threshold sends here) it
/// moves a fixed-size head and tail that overlap in the middle, inline: for such sizes the C
/// library's `memcpy` costs more in its call and size dispatch than in the copy itself.
///
/// # Safety
/// Same contract as [`CopyEngine::enqueue`]: both ranges valid and disjoint (checked by the caller
/// with [`check_copy`]).
#[inline(always)]
unsafe fn cpu_copy(src: usize, dst: usize, len: usize) {
    let (s, d) = (src as *const u8, dst as *mut u8);
    // SAFETY: (every arm) the caller guarantees `s .. s + len` readable, `d .. d + len` writable
    // and the two disjoint; each arm's moves stay inside those ranges (`head_tail::<N>` needs
    // `N <= len <= 2 * N`, which its arm's bounds give).
    unsafe {
        if len > 64 {
            core::ptr::copy_nonoverlapping(s, d, len);
        } else if len >= 32 {
            head_tail::<32>(s, d, len);
        } else if len >= 16 {
            head_tail::<16>(s, d, len);
        } else if len >= 8 {
            head_tail::<8>(s, d, len);
        } else if len >= 4 {
            head_tail::<4>(s, d, len);
        } else {
            for i in 0..len {
                d.add(i).write(s.add(i).read());
            }
        }
    }
}

/// Copies `len` bytes, `N <= len <= 2 * N`, as the first `N` and the last `N` (overlapping when
/// `len < 2 * N`): all loads before all stores, each an unaligned fixed-size move held in
/// registers (16-byte ones on x86-64: a `[u8; 32]` temporary went through the stack).
///
/// # Safety
/// `s .. s + len` readable, `d .. d + len` writable, the two disjoint, `N <= len <= 2 * N`.
#[inline(always)]
unsafe fn head_tail<const N: usize>(s: *const u8, d: *mut u8, len: usize) {
    debug_assert!(N <= len && len <= 2 * N);
    #[cfg(target_arch = "x86_64")]
    if N == 32 {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
        // SAFETY: `32 <= len <= 64`: the four 16-byte moves at 0, 16, len - 32 and len - 16 stay
        // inside the ranges the caller vouches for; `loadu`/`storeu` need no alignment, and SSE2
        // is part of the x86-64 baseline.
        unsafe {
            let (h0, h1) = (_mm_loadu_si128(s.cast::<__m128i>()), _mm_loadu_si128(s.add(16).cast::<__m128i>()));
            let t0 = _mm_loadu_si128(s.add(len - 32).cast::<__m128i>());
            let t1 = _mm_loadu_si128(s.add(len - 16).cast::<__m128i>());
            _mm_storeu_si128(d.cast::<__m128i>(), h0);
            _mm_storeu_si128(d.add(16).cast::<__m128i>(), h1);
            _mm_storeu_si128(d.add(len - 32).cast::<__m128i>(), t0);
            _mm_storeu_si128(d.add(len - 16).cast::<__m128i>(), t1);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if N == 16 {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
        // SAFETY: `16 <= len <= 32`: the two 16-byte moves at 0 and len - 16 stay inside the
        // ranges the caller vouches for; no alignment needed; SSE2 is x86-64 baseline.
        unsafe {
            let h = _mm_loadu_si128(s.cast::<__m128i>());
            let t = _mm_loadu_si128(s.add(len - 16).cast::<__m128i>());
            _mm_storeu_si128(d.cast::<__m128i>(), h);
            _mm_storeu_si128(d.add(len - 16).cast::<__m128i>(), t);
        }
        return;
    }
    // SAFETY: `0 <= len - N` and `len - N + N = len`, so all four moves are inside the ranges the
    // caller vouches for; `read_unaligned`/`write_unaligned` need no alignment.
    unsafe {
        let head = s.cast::<[u8; N]>().read_unaligned();
        let tail = s.add(len - N).cast::<[u8; N]>().read_unaligned();
        d.cast::<[u8; N]>().write_unaligned(head);
        d.add(len - N).cast::<[u8; N]>().write_unaligned(tail);
    }
}

/// Writes the shadow slots of engine ops `ops`, whose channel tickets start at `chan`, and
/// returns their total length. The buffers are kept only when `keep` (an engine that can fail
/// ops); the test is hoisted out of the loops.
#[inline(always)]
fn fill_shadow(slots: &mut [Shadow], ops: &[CopyOp], chan: Ticket, keep: bool) -> u64 {
    let mut bytes = 0u64;
    if keep {
        for (k, (slot, op)) in slots.iter_mut().zip(ops).enumerate() {
            (slot.chan, slot.cpu_after) = (chan.add(k as u64), 0);
            (slot.src, slot.dst, slot.len) = (op.src as usize, op.dst as usize, op.len);
            bytes += op.len as u64;
        }
    } else {
        for (k, (slot, op)) in slots.iter_mut().zip(ops).enumerate() {
            (slot.chan, slot.cpu_after) = (chan.add(k as u64), 0);
            bytes += op.len as u64;
        }
    }
    bytes
}

impl<E: CopyEngine> Channel<E> {
    /// A channel over `engine`, ruled by `policy`.
    pub fn new(engine: E, policy: Policy) -> Self {
        let slots = engine.info().ring_size.max(1).next_power_of_two();
        let keep_buffers = engine.info().capabilities.contains(Capabilities::ERROR_STATUS);
        let start = engine.next_ticket();
        let report = policy.report_capacity.max(1);
        Channel {
            inner: RefCell::new(Inner {
                engine,
                policy,
                next: Ticket::ZERO,
                eng_done: start,
                shadow: vec![Shadow::default(); slots].into_boxed_slice(),
                mask: slots as u64 - 1,
                failures: std::collections::VecDeque::with_capacity(report),
                reap_buf: [FailedOp::EMPTY; REAP_BATCH],
                keep_buffers,
                wakers: SmallVec::new(),
                stats: PolicyStats::default(),
                stall: 0,
                lagging: false,
                since_probe: 0,
                probing: false,
                probe_gap: 0,
                offloaded_at_return: 0,
            }),
            retired: Cell::new(Ticket::ZERO),
            failures: Cell::new(0),
        }
    }

    /// Accepts one copy and returns its channel ticket. Depending on the policy the op goes to the
    /// engine or is copied by the CPU at once; either way it is *reported* done only in order.
    /// Call [`submit`](Self::submit) (or pass [`OpFlags::SUBMIT`]) to start engine ops.
    ///
    /// # Safety
    ///
    /// The contract of [`CopyEngine::enqueue`]: both buffers stay valid, and nothing else touches
    /// them, until the returned ticket is retired ([`retired`](Self::retired) passes it), or the
    /// channel is drained ([`drain`](Self::drain)) or dropped.
    #[inline(always)]
    pub unsafe fn enqueue(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        if len < inner.policy.cpu_below {
            inner.stats.cpu_small += 1;
        } else if inner.lagging && !inner.probe_now() {
            inner.stats.cpu_adaptive += 1;
        } else {
            let in_flight = inner.engine.next_ticket().since(inner.eng_done);
            let res = if in_flight > inner.mask {
                Err(EnqueueError::RingFull)
            } else {
                // SAFETY: forwarded from this function's contract.
                unsafe { inner.engine.enqueue(src, dst, len, flags) }
            };
            match res {
                Ok(et) => {
                    let chan = inner.next;
                    let slot = &mut inner.shadow[et.ring_index(inner.mask)];
                    slot.chan = chan;
                    slot.cpu_after = 0;
                    if inner.keep_buffers {
                        (slot.src, slot.dst, slot.len) = (src as usize, dst as usize, len);
                    }
                    inner.next = chan.next();
                    inner.stats.offloaded += 1;
                    inner.stats.offloaded_bytes += len as u64;
                    return Ok(chan);
                }
                // The CPU copies what the engine refused, or the error goes back.
                Err(e) => inner.refused(e)?,
            }
        }
        // The CPU path (the engine path leaves the checks to the engine). A fenced op must not
        // start before earlier engine ops finish.
        check_copy(src, dst, len, usize::MAX)?;
        if flags.contains(OpFlags::FENCE) && inner.engine_busy() {
            drop(guard);
            // SAFETY: forwarded from this function's contract; `check_copy` proved the ranges disjoint.
            return Ok(unsafe { self.cpu_copy_after_drain(src as usize, dst as usize, len) });
        }
        // SAFETY: forwarded from this function's contract; `check_copy` proved the ranges disjoint.
        Ok(unsafe { inner.cpu_path(&self.retired, src as usize, dst as usize, len) })
    }

    /// Accepts the copies of `ops`, in order, as [`enqueue`](Self::enqueue) would one at a time
    /// (each op takes the path the policy gives it, and all retire in order), and returns their
    /// tickets, which are consecutive. `flags` apply to the burst: [`OpFlags::FENCE`] to its
    /// first op, [`OpFlags::SUBMIT`] once after it (when the engine took any of its ops), the
    /// others to every op.
    ///
    /// What it saves over `enqueue` per op: one borrow of the channel, one ring-room check and
    /// one counter update per run of ops that go to the engine, and the engine's own per-burst
    /// savings ([`CopyEngine::enqueue_burst`]). Every op is still checked ([`check_copy`], by the
    /// engine or here).
    ///
    /// When an op is refused (push-back policy and a full ring, a stopped engine, a bad op), the
    /// ops before it stay accepted, with the tickets from `next_ticket()` before the call on; the
    /// error says how many there were. It and the ops after it are not accepted.
    ///
    /// # Safety
    ///
    /// The contract of [`enqueue`](Self::enqueue), for every op of `ops`.
    pub unsafe fn enqueue_burst(&self, ops: &[CopyOp], flags: OpFlags) -> Result<TicketRange, BurstError> {
        let mut ops = ops;
        let mut flags = flags;
        let mut pre = 0;
        let (first, engine_first) = {
            let inner = self.inner.borrow();
            (inner.next, inner.engine.next_ticket())
        };
        if flags.contains(OpFlags::FENCE) && !ops.is_empty() {
            // The fenced first op alone: on the CPU path it may have to drain the engine. The
            // doorbell, if asked for, rings once at the end.
            let f0 = burst_op_flags(flags, 0, ops.len()).difference(OpFlags::SUBMIT);
            // SAFETY: forwarded from this function's contract.
            unsafe { self.enqueue(ops[0].src, ops[0].dst, ops[0].len, f0) }
                .map_err(|error| BurstError { accepted: 0, error })?;
            (ops, pre) = (&ops[1..], 1);
            flags.remove(OpFlags::FENCE);
        }
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let n = ops.len();
        let mut i = 0;
        let mut result = Ok(());
        while i < n {
            let cpu_below = inner.policy.cpu_below;
            // The paths of `enqueue`, in its order: small, lagging (but for a probe), engine.
            let to_engine = if ops[i].len < cpu_below {
                inner.stats.cpu_small += 1;
                false
            } else if inner.lagging && !inner.probe_now() {
                inner.stats.cpu_adaptive += 1;
                false
            } else {
                true
            };
            if to_engine {
                // A run of ops for the engine, as long as the ring has room for; a probe goes alone.
                let et = inner.engine.next_ticket();
                let room = (inner.mask + 1 - et.since(inner.eng_done)) as usize;
                let mut end = i + 1;
                while !inner.lagging && end < n && ops[end].len >= cpu_below {
                    end += 1;
                }
                let end = end.min(i + room);
                let sub = if end > i {
                    // SAFETY: forwarded from this function's contract.
                    unsafe { inner.engine.enqueue_burst(&ops[i..end], flags.difference(OpFlags::SUBMIT)) }
                } else {
                    Err(BurstError { accepted: 0, error: EnqueueError::RingFull })
                };
                let accepted = match sub {
                    Ok(()) => end - i,
                    Err(b) => b.accepted,
                };
                inner.record_engine_ops(et, &ops[i..i + accepted]);
                i += accepted;
                let Err(b) = sub else { continue };
                // The CPU copies what the engine refused, or the error goes back.
                if let Err(error) = inner.refused(b.error) {
                    result = Err(error);
                    break;
                }
            }
            // The CPU path for op `i` (no fence left: the first op went alone).
            let op = ops[i];
            if let Err(error) = check_copy(op.src, op.dst, op.len, usize::MAX) {
                result = Err(error);
                break;
            }
            // SAFETY: forwarded from this function's contract; `check_copy` proved the ranges disjoint.
            unsafe { inner.cpu_path(&self.retired, op.src as usize, op.dst as usize, op.len) };
            i += 1;
        }
        // Rung only for ops the engine took (CPU copies need none).
        if flags.contains(OpFlags::SUBMIT) && inner.engine.next_ticket() != engine_first {
            inner.engine.submit();
        }
        let accepted = TicketRange::new(first, inner.next);
        debug_assert_eq!(accepted.len(), (pre + i) as u64);
        result.map(|()| accepted).map_err(|error| BurstError { accepted: pre + i, error })
    }

    /// A fenced CPU copy while engine ops are in flight: drains them first.
    ///
    /// # Safety
    /// As [`Inner::cpu_path`].
    #[cold]
    #[inline(never)]
    unsafe fn cpu_copy_after_drain(&self, src: usize, dst: usize, len: usize) -> Ticket {
        self.inner.borrow_mut().stats.fence_drains += 1;
        self.drain();
        // SAFETY: forwarded from this function's contract.
        unsafe { self.inner.borrow_mut().cpu_path(&self.retired, src, dst, len) }
    }

    /// Rings the engine's doorbell.
    #[inline]
    pub fn submit(&self) {
        self.inner.borrow_mut().engine.submit();
    }

    /// Reaps the engine, retries or records failed ops, advances the retired watermark and wakes
    /// registered wakers. Returns how many channel tickets retired. Cheap when nothing is in flight.
    pub fn progress(&self) -> u64 {
        let mut woken: SmallVec<[Waker; 2]> = SmallVec::new();
        let newly = {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            let newly = inner.progress(&self.retired);
            self.failures.set(inner.failures.len());
            if newly != 0 && !inner.wakers.is_empty() {
                let done = self.retired.get();
                let mut i = 0;
                while i < inner.wakers.len() {
                    if inner.wakers[i].0 <= done {
                        woken.push(inner.wakers.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
            }
            newly
        };
        for w in woken {
            w.wake();
        }
        newly
    }

    /// Every channel ticket below this one is retired.
    #[inline]
    pub fn retired(&self) -> Ticket {
        self.retired.get()
    }

    /// The ticket the next accepted op will get.
    #[inline]
    pub fn next_ticket(&self) -> Ticket {
        self.inner.borrow().next
    }

    /// Ops accepted and not yet retired.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.next_ticket().since(self.retired())
    }

    /// True when every op of `range` has retired (without polling the engine).
    #[inline]
    pub fn is_done(&self, range: TicketRange) -> bool {
        self.retired.get() >= range.end
    }

    /// Spins on [`progress`](Self::progress) until every accepted op has retired. Used by stop and
    /// teardown paths: after it returns no copy of this channel touches memory.
    pub fn drain(&self) {
        self.submit();
        while self.in_flight() != 0 {
            if self.progress() == 0 {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the reported failures whose tickets lie in `range`. Failures of earlier tickets that
    /// nobody claimed are discarded and counted in [`PolicyStats::errors_unclaimed`]; resolve
    /// ranges in ticket order (a [`DeferQueue`](crate::DeferQueue) does) so none is discarded.
    #[inline]
    pub fn take_failures(&self, range: TicketRange) -> Failures {
        let mut out = Failures::new();
        if self.failures.get() == 0 {
            return out;
        }
        let mut inner = self.inner.borrow_mut();
        while let Some(f) = inner.failures.front().copied() {
            if f.ticket >= range.end {
                break;
            }
            inner.failures.pop_front();
            if f.ticket < range.start {
                inner.stats.errors_unclaimed += 1;
            } else {
                out.push(f);
            }
        }
        self.failures.set(inner.failures.len());
        out
    }

    /// Accepts one copy, rings the doorbell and returns a non-waking future for it.
    ///
    /// # Safety
    /// As [`enqueue`](Self::enqueue).
    pub unsafe fn copy(&self, src: *const u8, dst: *mut u8, len: usize) -> Result<CopyFuture<'_, E>, EnqueueError> {
        // SAFETY: forwarded from this function's contract.
        let t = unsafe { self.enqueue(src, dst, len, OpFlags::SUBMIT)? };
        Ok(CopyFuture::new(self, TicketRange::new(t, t.next())))
    }

    /// A non-waking future for `range` (tickets this channel handed out).
    #[inline]
    pub fn future(&self, range: TicketRange) -> CopyFuture<'_, E> {
        CopyFuture::new(self, range)
    }

    /// As [`copy`](Self::copy), but the future registers its waker, for ordinary executors; some
    /// task must drive completions ([`driver`](Self::driver) or a PMD loop calling `progress`).
    ///
    /// # Safety
    /// As [`enqueue`](Self::enqueue).
    pub unsafe fn copy_async(
        &self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
    ) -> Result<AsyncCopy<'_, E>, EnqueueError> {
        // SAFETY: forwarded from this function's contract.
        let t = unsafe { self.enqueue(src, dst, len, OpFlags::SUBMIT)? };
        Ok(AsyncCopy::new(self, TicketRange::new(t, t.next())))
    }

    /// A future that drives this channel's completions and wakes [`AsyncCopy`] futures; it resolves
    /// once nothing is in flight.
    pub fn driver(&self) -> Driver<'_, E> {
        Driver::new(self)
    }

    pub(crate) fn register_waker(&self, end: Ticket, waker: &Waker) {
        let mut inner = self.inner.borrow_mut();
        if let Some(slot) = inner.wakers.iter_mut().find(|(t, _)| *t == end) {
            if !slot.1.will_wake(waker) {
                slot.1 = waker.clone();
            }
            return;
        }
        inner.wakers.push((end, waker.clone()));
    }

    /// The policy layer's counters.
    pub fn stats(&self) -> PolicyStats {
        let mut s = self.inner.borrow().stats;
        // Channel tickets start at zero and retire in order, so the watermark is the count.
        s.completed = self.retired.get().get();
        // Every accepted op took one ticket (the per-cause counters also count the rare op that
        // was routed to the CPU and then refused by `check_copy`).
        s.ops = self.inner.borrow().next.get();
        s.bytes = s.offloaded_bytes + s.cpu_bytes;
        s
    }

    /// Ops handed to the engine and ops copied by the CPU so far, `(offloaded, cpu)`: the two
    /// counters a caller samples around a burst to attribute copies to a queue, without copying
    /// the whole [`PolicyStats`].
    #[inline]
    pub fn copy_counts(&self) -> (u64, u64) {
        let inner = self.inner.borrow();
        (inner.stats.offloaded, inner.stats.cpu_copies())
    }

    /// Whether adaptive offload finds the engine lagging: until it catches up, copies at or above
    /// the CPU threshold go to the CPU (but for an occasional probe). A caller that gathers
    /// copies for the engine can copy at once instead while this holds.
    #[inline]
    pub fn lagging(&self) -> bool {
        self.inner.borrow().lagging
    }

    /// The engine's own counters.
    pub fn engine_stats(&self) -> EngineStats {
        self.inner.borrow().engine.stats()
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.inner.borrow().policy
    }

    /// Changes the policy (between bursts).
    pub fn set_policy(&self, policy: Policy) {
        let mut inner = self.inner.borrow_mut();
        inner.policy = policy;
        if policy.adaptive.is_none() {
            inner.lagging = false;
            inner.probing = false;
        }
        let cap = policy.report_capacity.max(1);
        if inner.failures.capacity() < cap {
            let len = inner.failures.len();
            inner.failures.reserve(cap - len);
        }
    }

    /// Runs `f` with the engine (e.g. to read its info or drive its control plane).
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut E) -> R) -> R {
        f(&mut self.inner.borrow_mut().engine)
    }
}

impl<E: CopyEngine> Inner<E> {
    #[inline]
    fn engine_busy(&self) -> bool {
        self.engine.next_ticket() > self.eng_done
    }

    /// Gives the ops the engine just accepted, with engine tickets from `et` on, the next
    /// channel tickets, and counts them. At most a ring's worth of ops (the caller checked room).
    #[inline(always)]
    fn record_engine_ops(&mut self, et: Ticket, ops: &[CopyOp]) {
        debug_assert!(ops.len() <= self.shadow.len());
        // The slots from `et` on, as two plain slices (up to the ring's end, then from its start):
        // loops over them need no per-op index mask or bounds check.
        let (wrapped, from) = self.shadow.split_at_mut(et.ring_index(self.mask));
        let split = ops.len().min(from.len());
        let (first, rest) = ops.split_at(split);
        let keep = self.keep_buffers;
        let next = self.next;
        let bytes = fill_shadow(&mut from[..split], first, next, keep)
            + fill_shadow(&mut wrapped[..rest.len()], rest, next.add(split as u64), keep);
        self.next = next.add(ops.len() as u64);
        self.stats.offloaded += ops.len() as u64;
        self.stats.offloaded_bytes += bytes;
    }

    /// What the policy does with an op the engine refused (or that found the ring full):
    /// `Ok` sends it to the CPU (counted by cause), `Err` hands the error back.
    #[cold]
    #[inline(never)]
    fn refused(&mut self, e: EnqueueError) -> Result<(), EnqueueError> {
        match e {
            EnqueueError::RingFull => match self.policy.on_ring_full {
                OnRingFull::CpuCopy => self.stats.cpu_ring_full += 1,
                OnRingFull::PushBack => {
                    self.stats.pushed_back += 1;
                    return Err(EnqueueError::RingFull);
                }
            },
            EnqueueError::TooLong { .. } | EnqueueError::Unsupported => self.stats.cpu_refused += 1,
            e => return Err(e),
        }
        Ok(())
    }

    /// Copies on the CPU and gives the op its channel ticket: retired at once when no engine op
    /// is in flight, else with the newest engine op (which counts it).
    ///
    /// # Safety
    /// The contract of [`CopyEngine::enqueue`] for the buffers, and [`check_copy`] passed on them.
    #[inline(always)]
    unsafe fn cpu_path(&mut self, retired: &Cell<Ticket>, src: usize, dst: usize, len: usize) -> Ticket {
        // SAFETY: forwarded from this function's contract.
        unsafe { cpu_copy(src, dst, len) };
        let chan = self.next;
        self.next = chan.next();
        self.stats.cpu_bytes += len as u64;
        if self.engine_busy() {
            let newest = self.engine.next_ticket().get() - 1;
            self.shadow[Ticket::new(newest).ring_index(self.mask)].cpu_after += 1;
        } else {
            retired.set(self.next);
        }
        chan
    }

    /// While lagging: whether this copy goes to the engine as a probe (one in `probe_every`,
    /// and only when the engine has nothing in flight, so a probe never waits behind a stall).
    #[cold]
    fn probe_now(&mut self) -> bool {
        self.since_probe += 1;
        if self.since_probe >= self.probe_gap.max(1) && !self.engine_busy() {
            self.since_probe = 0;
            self.probing = true;
            return true;
        }
        false
    }

    /// Adaptive offload's view of one progress call: `retired` engine ops retired by it.
    #[inline]
    fn watch(&mut self, retired: usize) {
        let Some(a) = self.policy.adaptive else { return };
        if retired == 0 {
            self.stall = self.stall.saturating_add(1);
            if !self.lagging && self.stall > a.stall_polls {
                self.lagging = true;
                self.since_probe = 0;
                // An engine that kept up for fewer copies than the last gap was lucky with its
                // probe, not recovered: keep the gap (it doubles on the next failed probe).
                let kept_up = self.stats.offloaded - self.offloaded_at_return;
                if self.probe_gap == 0 || kept_up >= u64::from(self.probe_gap) {
                    self.probe_gap = a.probe_every.max(1);
                }
                self.stats.adaptive_to_cpu += 1;
            }
        } else {
            // The probes retired (the engine is idle again: nothing else went to it) within the
            // limit: the engine keeps up again. Stalled ops that finally retire do not count.
            if self.lagging && self.probing && !self.engine_busy() {
                self.probing = false;
                if self.stall <= a.stall_polls {
                    self.lagging = false;
                    self.offloaded_at_return = self.stats.offloaded;
                    self.stats.adaptive_to_engine += 1;
                } else {
                    self.probe_gap = self.probe_gap.saturating_mul(2).min(a.max_probe_every.max(1));
                }
            }
            self.stall = 0;
        }
    }

    fn progress(&mut self, retired: &Cell<Ticket>) -> u64 {
        if !self.engine_busy() {
            self.stats.empty_polls += 1;
            return 0;
        }
        let room = match self.policy.on_error {
            OnError::CpuRetry => REAP_BATCH,
            OnError::Report => {
                let cap = self.policy.report_capacity.max(1);
                REAP_BATCH.min(cap.saturating_sub(self.failures.len()))
            }
        };
        let r = self.engine.reap(usize::MAX, &mut self.reap_buf[..room]);
        if r.retired == 0 {
            self.watch(0);
            self.stats.empty_polls += 1;
            return 0;
        }
        for i in 0..r.failed {
            let f = self.reap_buf[i];
            let slot = self.shadow[f.ticket.ring_index(self.mask)];
            self.stats.errors += 1;
            match self.policy.on_error {
                OnError::CpuRetry if self.keep_buffers => {
                    // SAFETY: the op has not been reported retired, so the enqueue contract still
                    // holds for its buffers, which `check_copy` proved disjoint at enqueue.
                    unsafe { cpu_copy(slot.src, slot.dst, slot.len) };
                    self.stats.cpu_retry += 1;
                }
                // Report policy, or an engine that failed an op although it claims it cannot
                // (its buffers were not kept): the failure goes to whoever waits for it.
                OnError::Report | OnError::CpuRetry => {
                    self.failures.push_back(FailedOp { ticket: slot.chan, status: f.status });
                    self.stats.errors_reported += 1;
                }
            }
        }
        self.eng_done = self.eng_done.add(r.retired as u64);
        debug_assert_eq!(self.eng_done, self.engine.retired());
        self.watch(r.retired);
        let last = self.shadow[Ticket::new(self.eng_done.get() - 1).ring_index(self.mask)];
        let watermark = last.chan.add(1 + last.cpu_after);
        let newly = watermark.since(retired.get());
        retired.set(watermark);
        newly
    }
}

impl<E: CopyEngine> Drop for Channel<E> {
    fn drop(&mut self) {
        // Ops in flight reference caller memory: finish them before the channel (and the engine)
        // goes away, whatever the engine's own drop does.
        if !std::thread::panicking() {
            self.drain();
        }
    }
}
