//! A fault-injecting wrapper engine: errors at a given rate, artificial ring-full bursts, and
//! delayed completions, over any real engine. Used to prove the policy layer and the datapath lose
//! and reorder nothing when an engine misbehaves the way hardware does.
//!
//! An injected failure is realistic: the wrapped engine copies only the first half of the op (a
//! partial write the retry must repair), and the op is reported failed with
//! [`OpStatus::DataError`]. Tickets are the wrapped engine's own: every accepted op is exactly one
//! op of the inner engine.

use crate::engine::{check_copy, CopyEngine, EngineInfo, Reaped};
use crate::error::{EnqueueError, FailedOp, OpStatus};
use crate::flags::{Capabilities, OpFlags};
use crate::stats::EngineStats;
use crate::ticket::Ticket;

/// What to inject.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultConfig {
    /// Probability (0.0..=1.0) that an op fails.
    pub error_rate: f64,
    /// Every this many `enqueue` calls, the ring claims to be full (0: never).
    pub ring_full_every: u64,
    /// For how many consecutive `enqueue` calls the ring claims to be full each time.
    pub ring_full_burst: u64,
    /// Completions become visible only on every `(delay_polls + 1)`-th reap call.
    pub delay_polls: u32,
    /// Seed of the deterministic generator that picks failing ops.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig { error_rate: 0.0, ring_full_every: 0, ring_full_burst: 1, delay_polls: 0, seed: 0x5eed }
    }
}

/// Counts of what was injected, to compare with what the layers above counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// Ops made to fail.
    pub errors: u64,
    /// `enqueue` calls refused with an artificial ring-full.
    pub ring_full: u64,
    /// Reap calls held back by the delay.
    pub delayed_polls: u64,
}

/// Wraps an engine and injects faults per [`FaultConfig`].
#[derive(Debug)]
pub struct FaultEngine<E> {
    inner: E,
    cfg: FaultConfig,
    info: EngineInfo,
    threshold: u64,
    rng: u64,
    /// Injected or inner status per ticket in flight.
    status: Box<[Option<OpStatus>]>,
    mask: u64,
    /// Inner tickets below this have been reaped from the inner engine.
    inner_done: Ticket,
    /// Tickets below this have been retired to our caller.
    visible: Ticket,
    next: Ticket,
    enq_calls: u64,
    refuse_left: u64,
    reap_calls: u64,
    reap_buf: [FailedOp; 32],
    stats: EngineStats,
    injected: Injected,
}

impl<E: CopyEngine> FaultEngine<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, cfg: FaultConfig) -> Self {
        let base = inner.info();
        let slots = base.ring_size.max(1).next_power_of_two();
        let info = EngineInfo {
            name: format!("fault({})", base.name),
            // Never SYNC: completions may come late (`delay_polls`, settable at any time).
            capabilities: base.capabilities.difference(Capabilities::SYNC) | Capabilities::ERROR_STATUS,
            ring_size: base.ring_size,
            max_len: base.max_len,
        };
        let next = inner.next_ticket();
        let threshold = (cfg.error_rate.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        FaultEngine {
            inner,
            cfg,
            info,
            threshold,
            rng: cfg.seed | 1,
            status: vec![None; slots].into_boxed_slice(),
            mask: slots as u64 - 1,
            inner_done: next,
            visible: next,
            next,
            enq_calls: 0,
            refuse_left: 0,
            reap_calls: 0,
            reap_buf: [FailedOp::EMPTY; 32],
            stats: EngineStats::default(),
            injected: Injected::default(),
        }
    }

    /// Changes how completions are delayed from the next reap on (an engine that gets starved,
    /// or gets its core back). Error injection keeps its configuration.
    pub fn set_delay_polls(&mut self, delay_polls: u32) {
        self.cfg.delay_polls = delay_polls;
    }

    /// What has been injected so far.
    pub fn injected(&self) -> Injected {
        self.injected
    }

    /// The wrapped engine.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic per seed, good enough to pick failing ops.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pull_inner(&mut self) {
        let r = self.inner.reap(usize::MAX, &mut self.reap_buf);
        for f in &self.reap_buf[..r.failed] {
            let slot = &mut self.status[f.ticket.ring_index(self.mask)];
            slot.get_or_insert(f.status);
        }
        self.inner_done = self.inner_done.add(r.retired as u64);
    }
}

impl<E: CopyEngine> CopyEngine for FaultEngine<E> {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn burst_capacity(&self) -> usize {
        if self.refuse_left > 0 {
            return 0;
        }
        let room = self.info.ring_size.saturating_sub(self.next.since(self.visible) as usize);
        room.min(self.inner.burst_capacity())
    }

    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        check_copy(src, dst, len, self.info.max_len)?;
        self.enq_calls += 1;
        if self.refuse_left == 0 && self.cfg.ring_full_every != 0 && self.enq_calls % self.cfg.ring_full_every == 0 {
            self.refuse_left = self.cfg.ring_full_burst.max(1);
        }
        if self.refuse_left > 0 {
            self.refuse_left -= 1;
            self.injected.ring_full += 1;
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        if self.next.since(self.visible) >= self.info.ring_size as u64 {
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        let fail = self.threshold != 0 && self.next_random() < self.threshold;
        let inner_len = if fail { len / 2 } else { len };
        // SAFETY: forwarded from this function's contract; the inner op touches a prefix of the
        // caller's buffers.
        let t = unsafe { self.inner.enqueue(src, dst, inner_len, flags) };
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                if e == EnqueueError::RingFull {
                    self.stats.ring_full += 1;
                }
                return Err(e);
            }
        };
        debug_assert_eq!(t, self.next);
        self.status[t.ring_index(self.mask)] = if fail {
            self.injected.errors += 1;
            Some(OpStatus::DataError)
        } else {
            None
        };
        self.next = t.next();
        self.stats.on_enqueue(len);
        if flags.contains(OpFlags::SUBMIT) {
            self.stats.submits += 1;
        }
        Ok(t)
    }

    fn submit(&mut self) {
        self.inner.submit();
        self.stats.submits += 1;
    }

    fn reap(&mut self, max: usize, failed: &mut [FailedOp]) -> Reaped {
        self.reap_calls += 1;
        self.pull_inner();
        let mut out = Reaped::default();
        if self.cfg.delay_polls != 0 && self.reap_calls % (self.cfg.delay_polls as u64 + 1) != 0 {
            if self.inner_done > self.visible {
                self.injected.delayed_polls += 1;
            }
            self.stats.on_reap(0, 0);
            return out;
        }
        while self.visible < self.inner_done && out.retired < max {
            let slot = self.visible.ring_index(self.mask);
            if let Some(status) = self.status[slot] {
                if out.failed == failed.len() {
                    break;
                }
                failed[out.failed] = FailedOp { ticket: self.visible, status };
                out.failed += 1;
                self.status[slot] = None;
            }
            out.retired += 1;
            self.visible = self.visible.next();
        }
        self.stats.on_reap(out.retired - out.failed, out.failed);
        out
    }

    fn next_ticket(&self) -> Ticket {
        self.next
    }

    fn retired(&self) -> Ticket {
        self.visible
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
        self.injected = Injected::default();
    }
}
