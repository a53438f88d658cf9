//! Policy: what a [`Channel`](crate::Channel) does when a copy is small, the ring is full, or the
//! engine fails an op (DESIGN.md §3). Never lose a copy, never stall.

/// What to do when the engine's ring has no room for an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnRingFull {
    /// Copy it on the CPU now; it still completes in order with the engine's ops.
    #[default]
    CpuCopy,
    /// Refuse it with [`EnqueueError::RingFull`](crate::EnqueueError::RingFull); the caller keeps
    /// the work and tries again after polling completions.
    PushBack,
}

/// What to do when the engine reports a failed op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// Redo the copy on the CPU before the op is reported done; the caller sees success.
    #[default]
    CpuRetry,
    /// Report the failed ticket to whoever waits for it (a [`CopyFuture`](crate::CopyFuture)
    /// resolves to [`Failures`](crate::Failures)).
    Report,
}

/// Adaptive offload: the channel watches its engine's progress and copies on the CPU while the
/// engine is starved (a worker thread with no core of its own, a device shared with others), then
/// goes back to the engine once it keeps up again. Order across both paths is kept as always:
/// a CPU copy is reported done only after every earlier engine op.
///
/// The engine is *lagging* when it has ops in flight and `stall_polls` consecutive
/// [`progress`](crate::Channel::progress) calls retired none of them. From then on copies go to
/// the CPU (counted in [`PolicyStats::cpu_adaptive`](crate::PolicyStats::cpu_adaptive)), and no
/// new work piles up behind the stalled ops. After `probe_every` such copies, one copy is sent to
/// the engine as a probe (only when the engine has nothing in flight); a probe that retires within
/// `stall_polls` polls brings the channel back to the engine. A probe that stalls holds up every
/// copy after it (they retire in order), so each failed probe doubles the distance to the next
/// one, up to `max_probe_every` copies: a starved engine costs one stall per that many copies. The
/// gap starts over only after the engine kept up for as many copies as the gap; one lucky probe
/// does not reset it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adaptive {
    /// Consecutive fruitless polls (engine busy, nothing retired) that mean "lagging".
    pub stall_polls: u32,
    /// While lagging, copies between two probes at first (at least 1).
    pub probe_every: u32,
    /// The most copies between two probes after repeated failed probes.
    pub max_probe_every: u32,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive { stall_polls: 64, probe_every: 64, max_probe_every: 1 << 20 }
    }
}

/// The knobs of the policy layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Copies shorter than this many bytes are done by the CPU at once: below the crossover a
    /// descriptor costs more than the copy (the benchmarks measure the crossover per engine).
    pub cpu_below: usize,
    /// Full ring: CPU copy or push back.
    pub on_ring_full: OnRingFull,
    /// Failed op: CPU retry or report.
    pub on_error: OnError,
    /// How many reported failures may wait to be claimed before reaping pauses (report policy).
    pub report_capacity: usize,
    /// Adaptive offload (`None`: every copy at or above `cpu_below` goes to the engine).
    pub adaptive: Option<Adaptive>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            cpu_below: 256,
            on_ring_full: OnRingFull::CpuCopy,
            on_error: OnError::CpuRetry,
            report_capacity: 64,
            adaptive: None,
        }
    }
}

impl Policy {
    /// Every op goes to the engine, whatever its size (tests and benchmarks of the engine itself).
    pub fn offload_all() -> Self {
        Policy { cpu_below: 0, ..Policy::default() }
    }

    /// This policy with a different CPU threshold.
    pub fn with_cpu_below(self, cpu_below: usize) -> Self {
        Policy { cpu_below, ..self }
    }

    /// This policy with a different full-ring behaviour.
    pub fn with_ring_full(self, on_ring_full: OnRingFull) -> Self {
        Policy { on_ring_full, ..self }
    }

    /// This policy with adaptive offload (`None`: off).
    pub fn with_adaptive(self, adaptive: Option<Adaptive>) -> Self {
        Policy { adaptive, ..self }
    }

    /// This policy with a different failed-op behaviour.
    pub fn with_error(self, on_error: OnError) -> Self {
        Policy { on_error, ..self }
    }
}
