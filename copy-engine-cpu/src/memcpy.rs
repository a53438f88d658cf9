//! The `memcpy` engine: copies at enqueue time, on the caller's thread. The baseline every other
//! engine is measured against and the CPU fallback's twin; its ring exists only to give the same
//! ticket and completion accounting as a real engine.

use copy_engine::{
    check_copy, BurstError, Capabilities, CopyEngine, CopyOp, EngineInfo, EngineStats, EnqueueError, FailedOp, OpFlags,
    Reaped, Ticket,
};

/// Default ring size: the same order as a dmadev channel's.
pub const DEFAULT_RING: usize = 1024;

/// A synchronous engine: the bytes have moved when `enqueue` returns; `reap` retires in order.
#[derive(Debug)]
pub struct MemcpyEngine {
    info: EngineInfo,
    next: Ticket,
    retired: Ticket,
    stats: EngineStats,
}

impl Default for MemcpyEngine {
    fn default() -> Self {
        Self::new(DEFAULT_RING)
    }
}

impl MemcpyEngine {
    /// An engine whose ring holds `ring_size` unreaped ops.
    pub fn new(ring_size: usize) -> Self {
        MemcpyEngine {
            info: EngineInfo {
                name: "memcpy".into(),
                capabilities: Capabilities::MEM_TO_MEM | Capabilities::SVA | Capabilities::FENCE | Capabilities::SYNC,
                ring_size: ring_size.max(1),
                max_len: usize::MAX >> 1,
            },
            next: Ticket::ZERO,
            retired: Ticket::ZERO,
            stats: EngineStats::default(),
        }
    }
}

impl CopyEngine for MemcpyEngine {
    #[inline]
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    #[inline]
    fn burst_capacity(&self) -> usize {
        self.info.ring_size - self.next.since(self.retired) as usize
    }

    #[inline]
    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        check_copy(src, dst, len, self.info.max_len)?;
        if self.next.since(self.retired) >= self.info.ring_size as u64 {
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        if len != 0 {
            // SAFETY: the caller guarantees both ranges valid for `len` bytes; `check_copy` proved
            // them disjoint.
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        }
        if flags.contains(OpFlags::SUBMIT) {
            self.stats.submits += 1;
        }
        self.stats.on_enqueue(len);
        let t = self.next;
        self.next = t.next();
        Ok(t)
    }

    /// One room check and one counter update for the burst; each op checked and copied in turn.
    #[inline]
    unsafe fn enqueue_burst(&mut self, ops: &[CopyOp], flags: OpFlags) -> Result<(), BurstError> {
        let room = self.burst_capacity();
        let mut result = Ok(());
        let mut n = ops.len();
        if n > room {
            n = room;
            result = Err(EnqueueError::RingFull);
        }
        // Each op checked and copied in turn: the checks of the next op overlap the stores of
        // the last copy still draining.
        let (mut done, mut bytes) = (n, 0u64);
        for (k, op) in ops[..n].iter().enumerate() {
            if let Err(e) = check_copy(op.src, op.dst, op.len, self.info.max_len) {
                (done, result) = (k, Err(e));
                break;
            }
            if op.len != 0 {
                // SAFETY: the caller guarantees both ranges valid for `len` bytes; `check_copy`
                // proved them disjoint.
                unsafe { core::ptr::copy_nonoverlapping(op.src, op.dst, op.len) };
            }
            bytes += op.len as u64;
        }
        self.stats.enqueued += done as u64;
        self.stats.bytes += bytes;
        if result == Err(EnqueueError::RingFull) && done == n {
            // As `enqueue`: an op that is itself bad is refused for that, not for the ring.
            let op = ops[n];
            match check_copy(op.src, op.dst, op.len, self.info.max_len) {
                Err(e) => result = Err(e),
                Ok(()) => self.stats.ring_full += 1,
            }
        }
        if flags.contains(OpFlags::SUBMIT) && done != 0 {
            self.stats.submits += 1;
        }
        self.next = self.next.add(done as u64);
        result.map_err(|error| BurstError { accepted: done, error })
    }

    #[inline]
    fn submit(&mut self) {
        self.stats.submits += 1;
    }

    #[inline]
    fn reap(&mut self, max: usize, _failed: &mut [FailedOp]) -> Reaped {
        let n = (self.next.since(self.retired) as usize).min(max);
        self.retired = self.retired.add(n as u64);
        self.stats.on_reap(n, 0);
        Reaped { retired: n, failed: 0 }
    }

    #[inline]
    fn next_ticket(&self) -> Ticket {
        self.next
    }

    #[inline]
    fn retired(&self) -> Ticket {
        self.retired
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
    }
}
