//! Per-channel counters. Plain integers updated by the owning thread; readers copy them out.

/// Counters an engine keeps for itself (dmadev `rte_dma_stats` plus poll accounting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Ops accepted by `enqueue`.
    pub enqueued: u64,
    /// Bytes in accepted ops.
    pub bytes: u64,
    /// Doorbells rung (`submit` calls that had something to submit, or SUBMIT-flagged ops).
    pub submits: u64,
    /// Ops retired successfully.
    pub completed: u64,
    /// Ops retired with an error.
    pub errors: u64,
    /// `enqueue` calls refused because the ring was full.
    pub ring_full: u64,
    /// Reap calls that retired nothing.
    pub empty_polls: u64,
}

impl EngineStats {
    /// Records an accepted op of `len` bytes.
    #[inline]
    pub fn on_enqueue(&mut self, len: usize) {
        self.enqueued += 1;
        self.bytes += len as u64;
    }

    /// Records one reap call that retired `ok` good and `failed` bad ops.
    #[inline]
    pub fn on_reap(&mut self, ok: usize, failed: usize) {
        self.completed += ok as u64;
        self.errors += failed as u64;
        if ok + failed == 0 {
            self.empty_polls += 1;
        }
    }

    /// Ops enqueued but not yet retired.
    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.enqueued - self.completed - self.errors
    }
}

/// Counters of the policy layer ([`crate::Channel`]) on top of its engine's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Ops the channel accepted (engine + CPU).
    pub ops: u64,
    /// Bytes the channel accepted.
    pub bytes: u64,
    /// Ops handed to the engine.
    pub offloaded: u64,
    /// Bytes handed to the engine.
    pub offloaded_bytes: u64,
    /// Bytes copied by the CPU when the op was accepted (retries not counted).
    pub cpu_bytes: u64,
    /// Ops retired (engine or CPU), in order.
    pub completed: u64,
    /// CPU copies because the op was below the size threshold.
    pub cpu_small: u64,
    /// CPU copies because the engine ring was full.
    pub cpu_ring_full: u64,
    /// CPU copies that redid a failed engine op.
    pub cpu_retry: u64,
    /// CPU copies because the engine refused the op (too long, unsupported).
    pub cpu_refused: u64,
    /// CPU copies because the engine was lagging (adaptive offload).
    pub cpu_adaptive: u64,
    /// Times adaptive offload found the engine lagging and went to the CPU.
    pub adaptive_to_cpu: u64,
    /// Times a probe found the engine keeping up again and adaptive offload went back to it.
    pub adaptive_to_engine: u64,
    /// Ops refused back to the caller because the ring was full (push-back policy).
    pub pushed_back: u64,
    /// Engine ops that failed (retried or reported).
    pub errors: u64,
    /// Failed ops reported to the caller (report policy).
    pub errors_reported: u64,
    /// Reported failures that no future claimed before a later future resolved.
    pub errors_unclaimed: u64,
    /// Fenced CPU copies that had to wait for the engine to drain.
    pub fence_drains: u64,
    /// Progress calls that retired nothing.
    pub empty_polls: u64,
}

impl PolicyStats {
    /// All CPU copies, whatever the cause.
    pub fn cpu_copies(&self) -> u64 {
        self.cpu_small + self.cpu_ring_full + self.cpu_retry + self.cpu_refused + self.cpu_adaptive
    }
}
