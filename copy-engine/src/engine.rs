//! The engine contract: one channel of a copy device, modelled on DPDK dmadev.
//!
//! This module owns the trait every backend implements and the checks every backend shares. It
//! knows no backend and no policy: CPU fallback, ordering across fallbacks and futures live in
//! [`crate::channel`].
//!
//! # Semantics
//!
//! - A channel owns a ring of descriptors. [`CopyEngine::enqueue`] puts one copy in the ring and
//!   returns its [`Ticket`]; nothing moves until [`CopyEngine::submit`] rings the doorbell (or the op
//!   carries [`OpFlags::SUBMIT`]). [`CopyEngine::burst_capacity`] says how many more ops fit.
//! - [`CopyEngine::reap`] retires completed ops **in submission order**: after it returns, every
//!   ticket below [`CopyEngine::retired`] is done, and the failed ones among those it retired were
//!   written to the caller's buffer with their status.
//! - Tickets start at zero and grow by one per accepted op; a refused op consumes no ticket.
//!
//! # The memory contract, and why `enqueue` is `unsafe`
//!
//! A copy engine reads and writes memory after `enqueue` has returned, until the op is retired.
//! The buffers are usually not the caller's to own: they are guest memory mapped from another
//! process, or packet buffers in a pool. A safe API would have to take ownership of both buffers
//! (as `'static` owned values) for the op's lifetime, which guest memory cannot offer and which
//! would cost an allocation or a reference count per op on the hot path. So, like io-uring's
//! `SubmissionQueue::push`, `enqueue` is an `unsafe fn` whose `# Safety` section states the
//! contract, and the layers above (the datapath's in-flight tracking, queue stop/drain) are where it
//! is upheld once for everyone. What *can* be checked cheaply is checked and reported as a typed
//! [`EnqueueError`]: overlapping buffers, over-long ops, null or wrapping addresses.

use crate::error::{BurstError, ControlError, EnqueueError, FailedOp};
use crate::flags::{Capabilities, OpFlags};
use crate::stats::EngineStats;
use crate::ticket::Ticket;

/// What an engine is and what it can do. Fixed once the channel is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// Backend and device name, e.g. `memcpy`, `worker`, `dmadev:dma_skeleton0/0`.
    pub name: String,
    /// What the engine can do.
    pub capabilities: Capabilities,
    /// Descriptors in the channel's ring: the most ops that can be enqueued and not yet retired.
    pub ring_size: usize,
    /// Longest single op in bytes.
    pub max_len: usize,
}

/// How many ops one reap call retired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Ops retired, successful and failed, in order.
    pub retired: usize,
    /// Of those, how many failed (written to the front of the caller's buffer).
    pub failed: usize,
}

/// One copy of a burst, as [`CopyEngine::enqueue_burst`] and
/// [`Channel::enqueue_burst`](crate::Channel::enqueue_burst) take them: what
/// [`CopyEngine::enqueue`] takes as arguments, as a value a caller can collect in an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Source address.
    pub src: *const u8,
    /// Destination address.
    pub dst: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

impl CopyOp {
    /// The copy of `len` bytes from `src` to `dst`.
    #[inline(always)]
    pub fn new(src: *const u8, dst: *mut u8, len: usize) -> Self {
        CopyOp { src, dst, len }
    }
}

/// The flags op `i` of a burst of `n` gets from the burst's `flags`: [`OpFlags::FENCE`] on the
/// first op (the burst starts after every earlier op), [`OpFlags::SUBMIT`] on the last, the
/// others on every op.
#[inline(always)]
pub(crate) fn burst_op_flags(flags: OpFlags, i: usize, n: usize) -> OpFlags {
    let mut f = flags.difference(OpFlags::FENCE | OpFlags::SUBMIT);
    if i == 0 {
        f |= flags.intersection(OpFlags::FENCE);
    }
    if i + 1 == n {
        f |= flags.intersection(OpFlags::SUBMIT);
    }
    f
}

/// One channel of a copy device. Owned by one thread (`Send`, not `Sync`); every data-path call
/// takes `&mut self` and must not allocate, lock or make a system call.
pub trait CopyEngine: Send {
    /// What this engine is.
    fn info(&self) -> &EngineInfo;

    /// How many more ops `enqueue` would accept right now.
    fn burst_capacity(&self) -> usize;

    /// Puts one copy of `len` bytes from `src` to `dst` in the ring and returns its ticket. The
    /// copy starts after the next doorbell ([`submit`](Self::submit)), or at once when `flags`
    /// has [`OpFlags::SUBMIT`].
    ///
    /// Refused ops consume no ticket and leave the ring unchanged.
    ///
    /// # Safety
    ///
    /// - `src` must be valid for reads and `dst` valid for writes of `len` bytes (as IOVAs the
    ///   engine can reach: virtual addresses on [`Capabilities::SVA`] engines, registered memory
    ///   otherwise), from this call **until the op is retired** by [`reap`](Self::reap) or the
    ///   engine is dropped (dropping an engine waits for or cancels every op in flight).
    /// - Nothing else may write `src` or access `dst` during that time, except through ops of this
    ///   same channel that are ordered by a fence.
    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError>;

    /// Puts the copies of `ops` in the ring, in order, as [`enqueue`](Self::enqueue) would one
    /// at a time: their tickets are consecutive from [`next_ticket`](Self::next_ticket). `flags`
    /// apply to the burst: [`OpFlags::FENCE`] to its first op, [`OpFlags::SUBMIT`] after its
    /// last accepted op, the others to every op.
    ///
    /// The ops accepted are a prefix of `ops`. When one is refused, the error says how many were
    /// accepted before it and why it was refused; it and the ops after it are not enqueued.
    ///
    /// Backends override this to do once per burst what `enqueue` does per op (counters, the
    /// ring-room check, the doorbell); the default calls `enqueue` for each op.
    ///
    /// # Safety
    ///
    /// The contract of [`enqueue`](Self::enqueue), for every op of `ops`.
    #[inline]
    unsafe fn enqueue_burst(&mut self, ops: &[CopyOp], flags: OpFlags) -> Result<(), BurstError> {
        let n = ops.len();
        for (i, op) in ops.iter().enumerate() {
            // SAFETY: forwarded from this function's contract.
            if let Err(error) = unsafe { self.enqueue(op.src, op.dst, op.len, burst_op_flags(flags, i, n)) } {
                if i != 0 && flags.contains(OpFlags::SUBMIT) {
                    self.submit();
                }
                return Err(BurstError { accepted: i, error });
            }
        }
        Ok(())
    }

    /// Rings the doorbell: everything enqueued so far may start.
    fn submit(&mut self);

    /// Retires completed ops in submission order, at most `max` of them. Failed ops are written to
    /// `failed` in order; the engine never retires more failed ops than `failed` can hold, so a
    /// caller passing an empty buffer retires only up to the first failure.
    fn reap(&mut self, max: usize, failed: &mut [FailedOp]) -> Reaped;

    /// The ticket the next accepted op will get.
    fn next_ticket(&self) -> Ticket;

    /// Every ticket below this one has been retired.
    fn retired(&self) -> Ticket;

    /// The engine's counters.
    fn stats(&self) -> EngineStats;

    /// Zeroes the counters.
    fn reset_stats(&mut self);

    /// Ops enqueued and not yet retired.
    #[inline]
    fn in_flight(&self) -> u64 {
        self.next_ticket().since(self.retired())
    }
}

/// Checks the cheap parts of an op every backend must refuse: over-long, null, wrapping or
/// overlapping buffers. Backends call this first in `enqueue`.
#[inline]
pub fn check_copy(src: *const u8, dst: *mut u8, len: usize, max_len: usize) -> Result<(), EnqueueError> {
    if len > max_len {
        return Err(EnqueueError::TooLong { len, max: max_len });
    }
    if len == 0 {
        return Ok(());
    }
    let (s, d) = (src as usize, dst as usize);
    // Null or running past the end of the address space: `x - 1 >= usize::MAX - len` holds for
    // `x == 0` (it wraps to `usize::MAX`) and for every `x > usize::MAX - len`, and for no other
    // `x`. Written without `s + len` and `d + len`: in a loop over buffers those would be two more
    // induction variables for the compiler to carry (and spill) per copy. Non-short-circuit `|`:
    // one branch for the rare error instead of one per test.
    let last = usize::MAX - len;
    if (s.wrapping_sub(1) >= last) | (d.wrapping_sub(1) >= last) {
        return Err(EnqueueError::BadAddress);
    }
    // Neither range wraps, so they overlap exactly when their starts are less than `len` apart.
    if s.abs_diff(d) < len {
        return Err(EnqueueError::Overlap);
    }
    Ok(())
}

/// The control plane of a channel: not on the hot path, so it may be `async` and sit behind `dyn`.
///
/// Engines that are ready when constructed (the CPU engines) implement it trivially. A dmadev
/// channel starts and stops its device, and maps memory on devices without SVA.
#[async_trait::async_trait]
pub trait EngineControl: Send {
    /// Starts (or restarts) the channel.
    async fn start(&mut self) -> Result<(), ControlError>;

    /// Stops the channel after every op in flight has retired or been cancelled; nothing the
    /// engine does touches memory after this returns.
    async fn stop(&mut self) -> Result<(), ControlError>;

    /// Makes the virtual range `[addr, addr + len)` reachable by the engine (a no-op on SVA
    /// engines). The datapath calls this when a guest's memory table arrives. Addresses are plain
    /// integers here: the control plane only names memory, it never touches it.
    async fn map_memory(&mut self, addr: usize, len: usize) -> Result<(), ControlError>;

    /// Undoes [`map_memory`](Self::map_memory) once no op in flight touches the range.
    async fn unmap_memory(&mut self, addr: usize, len: usize) -> Result<(), ControlError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_oversized_copies_are_refused() {
        let mut buf = [0u8; 64];
        let p = buf.as_mut_ptr();
        assert_eq!(check_copy(p, p.wrapping_add(8), 16, 64), Err(EnqueueError::Overlap));
        assert_eq!(check_copy(p.wrapping_add(8), p, 16, 64), Err(EnqueueError::Overlap));
        assert_eq!(check_copy(p, p.wrapping_add(16), 16, 64), Ok(()));
        assert_eq!(check_copy(p, p.wrapping_add(32), 65, 64), Err(EnqueueError::TooLong { len: 65, max: 64 }));
        assert_eq!(check_copy(core::ptr::null(), p, 4, 64), Err(EnqueueError::BadAddress));
        assert_eq!(check_copy(core::ptr::null(), core::ptr::null_mut(), 0, 64), Ok(()));
    }

    /// The checks written the obvious way (ends computed with overflow), to hold the shorter
    /// form in `check_copy` to.
    fn reference(s: usize, d: usize, len: usize) -> Result<(), EnqueueError> {
        if len == 0 {
            return Ok(());
        }
        let (s_end, s_wraps) = s.overflowing_add(len);
        let (d_end, d_wraps) = d.overflowing_add(len);
        if s == 0 || d == 0 || s_wraps || d_wraps {
            return Err(EnqueueError::BadAddress);
        }
        if s < d_end && d < s_end {
            return Err(EnqueueError::Overlap);
        }
        Ok(())
    }

    #[test]
    fn address_checks_agree_with_the_obvious_form_at_both_ends_of_the_address_space() {
        let top = usize::MAX - 12;
        for base in [0usize, 4096, top] {
            for s in base..base + 12 {
                for d in base..base + 12 {
                    for len in 0..14 {
                        let got = check_copy(s as *const u8, d as *mut u8, len, usize::MAX);
                        assert_eq!(got, reference(s, d, len), "src {s:#x} dst {d:#x} len {len}");
                    }
                }
            }
        }
        // Adjacent ranges are disjoint; one shared byte is an overlap; ending at the very top of
        // the address space wraps.
        assert_eq!(check_copy(64 as *const u8, 72 as *mut u8, 8, 64), Ok(()));
        assert_eq!(check_copy(72 as *const u8, 64 as *mut u8, 8, 64), Ok(()));
        assert_eq!(check_copy(64 as *const u8, 71 as *mut u8, 8, 64), Err(EnqueueError::Overlap));
        assert_eq!(check_copy((usize::MAX - 7) as *const u8, 64 as *mut u8, 8, 64), Err(EnqueueError::BadAddress));
        assert_eq!(check_copy((usize::MAX - 8) as *const u8, 64 as *mut u8, 8, 64), Ok(()));
    }
}
