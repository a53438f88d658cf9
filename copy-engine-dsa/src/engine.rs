//! [`DsaEngine`]: one DSA work queue behind the [`CopyEngine`] contract, over any [`Portal`].
//!
//! This module owns the ring (a descriptor, a completion record and the op's addresses per
//! slot), the mapping of `u64` tickets to ring slots, the grouping of submitted ops into
//! submission units (one descriptor, or one batch descriptor naming a run of ring slots), the
//! dedicated WQ's occupancy count, the in-order reaping of completion records and the handling of
//! their status. It never writes to a portal except through [`Portal::submit`].
//!
//! # Data path
//!
//! - `enqueue` checks the op, clears its slot's completion record, writes its descriptor into the
//!   slot (MEMMOVE, or NOOP for zero bytes; CRAV | RCR, plus BOF and CC as configured).
//! - `submit` rings the doorbell: ops up to here may go to the device. The pump hands them over in
//!   units: a run of at least [`BatchPolicy::min_batch`] ops (contiguous in the ring, at most
//!   [`BatchPolicy::max_batch`]) becomes one BATCH descriptor pointing at their slots; shorter runs
//!   go as single descriptors. On a dedicated WQ the pump stops when as many units are in flight
//!   as the WQ has entries (the device would drop the next one); on a shared WQ a "retry" is tried
//!   again up to [`DsaConfig::busy_retries`] times, then left for the next submit or reap.
//!   A fenced op starts a unit, and waits until every earlier op has retired.
//! - `reap` looks at completion records in ticket order and stops at the first one not written. A
//!   batch's last op also waits for the batch's own record, so its slots are never reused while
//!   the device may still write. Status: success retires the op; a page fault without
//!   block-on-fault (`bytes_completed` done) is finished by the CPU from that byte on, then
//!   retires as a success, so order is kept; any other status retires it as failed, with its
//!   ticket, into the caller's buffer. An op of a batch whose record says the batch failed as a
//!   whole, and which has no record of its own, failed as not attempted.

#![allow(unsafe_code)]

use core::cell::Cell;
use core::marker::PhantomData;
use std::time::{Duration, Instant};

use copy_engine::{
    check_copy, Capabilities, ControlError, CopyEngine, EngineControl, EngineInfo, EngineStats, EnqueueError, FailedOp,
    OpFlags, OpStatus, Reaped, Ticket,
};

use crate::desc::{flags, status, CompletionRecord, DescSlot, HwDesc};
use crate::error::DsaError;
use crate::model::{ModelConfig, ModelHandle, ModelPortal};
use crate::portal::{HwPortal, Portal, Retry};
use crate::sysfs::{self, WqInfo, WqMode};

/// The largest ring an engine accepts.
pub const MAX_RING: usize = 1 << 16;

/// When a burst becomes a batch descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Runs of at least this many ops (2 or more) go as one batch descriptor. Intel's guidance is
    /// that batches reach the device's throughput from about 16 descriptors; smaller batches
    /// still save portal writes and WQ entries.
    pub min_batch: usize,
    /// The most ops in one batch (also capped by the WQ's `max_batch_size`).
    pub max_batch: usize,
}

impl Default for BatchPolicy {
    /// Every burst of 2 or more ops is a batch, of at most 64.
    fn default() -> Self {
        BatchPolicy { min_batch: 2, max_batch: 64 }
    }
}

impl BatchPolicy {
    /// Never batch: one descriptor per op.
    pub const fn never() -> Self {
        BatchPolicy { min_batch: usize::MAX, max_batch: 1 }
    }
}

/// How to build a [`DsaEngine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsaConfig {
    /// Ops that can be enqueued and not yet retired; rounded up to a power of two, 1 to
    /// [`MAX_RING`].
    pub ring_size: usize,
    /// Batching.
    pub batch: BatchPolicy,
    /// Set block-on-fault on copies (the WQ must have it enabled): the device waits for the kernel
    /// to resolve page faults instead of stopping part-way.
    pub block_on_fault: bool,
    /// ENQCMD attempts per descriptor on a busy shared WQ before the pump leaves it for later.
    pub busy_retries: u32,
    /// How long `stop` and drop wait for the device.
    pub drain_timeout: Duration,
}

impl Default for DsaConfig {
    /// A 1024-op ring, [`BatchPolicy::default`], no block-on-fault, 64 busy retries, 2 s drain.
    fn default() -> Self {
        DsaConfig {
            ring_size: 1024,
            batch: BatchPolicy::default(),
            block_on_fault: false,
            busy_retries: 64,
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// The engine's DSA-specific counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsaStats {
    /// Descriptors written to the portal (a batch counts once).
    pub descriptors: u64,
    /// Of those, batch descriptors.
    pub batches: u64,
    /// Ops in batches.
    pub batched_ops: u64,
    /// Page-faulted copies finished by the CPU.
    pub page_faults: u64,
    /// Bytes the CPU copied to finish them.
    pub fault_bytes: u64,
    /// Times the pump stopped because the dedicated WQ was full.
    pub wq_full: u64,
    /// "Retry" answers from a shared WQ.
    pub busy: u64,
    /// Times a descriptor was left for later after `busy_retries` retries.
    pub busy_deferred: u64,
    /// Times a fenced op waited for earlier ops to retire.
    pub fence_waits: u64,
    /// Batches that failed as a whole.
    pub batch_failures: u64,
}

/// What the ring remembers of an op.
#[derive(Clone, Copy, Debug, Default)]
struct OpMeta {
    src: u64,
    dst: u64,
    len: u32,
    fence: bool,
}

/// One submission unit: a descriptor or a batch, ending before ticket `end`.
#[derive(Clone, Copy, Debug, Default)]
struct Unit {
    end: u64,
    batch: bool,
}

/// One DSA work queue as a [`CopyEngine`]. Owned by one thread.
///
/// Dropping it cancels ops never handed to the device and waits (up to
/// [`DsaConfig::drain_timeout`]) for those that were; if the device does not answer in time, the
/// ring's memory is leaked rather than freed under it.
pub struct DsaEngine<P: Portal> {
    portal: P,
    wq: WqInfo,
    cfg: DsaConfig,
    info: EngineInfo,
    mask: u64,
    descs: Box<[DescSlot]>,
    comps: Box<[CompletionRecord]>,
    meta: Box<[OpMeta]>,
    units: Box<[Unit]>,
    unit_comps: Box<[CompletionRecord]>,
    unit_head: u64,
    unit_tail: u64,
    /// Next ticket.
    next: u64,
    /// Ops below this may be submitted (the doorbell).
    doorbell: u64,
    /// Ops below this are with the device.
    submitted: u64,
    /// Ops below this are retired.
    retired: u64,
    /// Flags of every copy descriptor.
    op_flags: u32,
    max_batch: usize,
    /// The fenced ticket the pump last counted a wait for.
    fence_counted: u64,
    stats: EngineStats,
    dsa: DsaStats,
    model: Option<ModelHandle>,
    _not_sync: PhantomData<Cell<()>>,
}

impl<P: Portal> core::fmt::Debug for DsaEngine<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DsaEngine")
            .field("wq", &self.wq)
            .field("next", &self.next)
            .field("submitted", &self.submitted)
            .field("retired", &self.retired)
            .field("dsa", &self.dsa)
            .finish_non_exhaustive()
    }
}

impl DsaEngine<HwPortal> {
    /// Opens the user work queue `name` (`wq0.0` or `dsa0/wq0.0`) through the kernel's idxd
    /// driver: discovery in `/sys/bus/dsa/devices`, portal `/dev/dsa/<name>`.
    ///
    /// # Errors
    ///
    /// As [`sysfs::find_wq`], [`HwPortal::open`] and [`DsaEngine::new`].
    pub fn open(name: &str, cfg: DsaConfig) -> Result<Self, DsaError> {
        Self::open_at(sysfs::SYSFS_ROOT.as_ref(), sysfs::DEV_ROOT.as_ref(), name, cfg)
    }

    /// [`open`](Self::open) with other sysfs and `/dev` roots.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_at(
        sysfs_root: &std::path::Path,
        dev_root: &std::path::Path,
        name: &str,
        cfg: DsaConfig,
    ) -> Result<Self, DsaError> {
        let wq = sysfs::find_wq(sysfs_root, dev_root, name)?;
        let portal = HwPortal::open(&wq)?;
        Self::new(portal, wq, cfg)
    }
}

impl DsaEngine<ModelPortal> {
    /// An engine on a fresh device model ([`crate::model`]).
    ///
    /// # Errors
    ///
    /// As [`ModelPortal::start`] and [`DsaEngine::new`].
    pub fn model(model: ModelConfig, cfg: DsaConfig) -> Result<Self, DsaError> {
        let (portal, wq) = ModelPortal::start(model)?;
        let handle = portal.handle();
        let mut e = Self::new(portal, wq, cfg)?;
        e.model = Some(handle);
        Ok(e)
    }

    /// The model device under this engine.
    pub fn model_handle(&self) -> &ModelHandle {
        self.model.as_ref().expect("built by DsaEngine::model")
    }
}

impl<P: Portal> DsaEngine<P> {
    /// An engine on `portal`, the WQ `wq` describes.
    ///
    /// # Errors
    ///
    /// [`DsaError::InvalidConfig`] for a ring size of 0 or above [`MAX_RING`], a batch policy with
    /// `min_batch` below 2, block-on-fault on a WQ without it, or a portal whose mode disagrees
    /// with `wq`.
    pub fn new(portal: P, wq: WqInfo, cfg: DsaConfig) -> Result<Self, DsaError> {
        let bad = |s: String| Err(DsaError::InvalidConfig(s));
        if cfg.ring_size == 0 || cfg.ring_size > MAX_RING {
            return bad(format!("ring_size {} not in 1..={MAX_RING}", cfg.ring_size));
        }
        if cfg.batch.min_batch < 2 {
            return bad(format!("min_batch {} below 2 (a batch holds at least 2 descriptors)", cfg.batch.min_batch));
        }
        if cfg.block_on_fault && !wq.block_on_fault {
            return bad(format!("block_on_fault requested but {} has it disabled", wq.name));
        }
        if portal.mode() != wq.mode {
            return bad(format!("portal mode {:?} but {} is {:?}", portal.mode(), wq.name, wq.mode));
        }
        let n = cfg.ring_size.next_power_of_two();
        let mut op_flags = flags::CRAV | flags::RCR;
        if cfg.block_on_fault {
            op_flags |= flags::BOF;
        }
        Ok(DsaEngine {
            info: EngineInfo {
                name: format!("dsa:{}", wq.name),
                capabilities: Capabilities::MEM_TO_MEM
                    | Capabilities::SVA
                    | Capabilities::ERROR_STATUS
                    | Capabilities::FENCE
                    | Capabilities::OFFLOAD,
                ring_size: n,
                max_len: wq.max_transfer_size.min(u32::MAX as usize),
            },
            max_batch: cfg.batch.max_batch.min(wq.max_batch_size).max(1),
            portal,
            wq,
            cfg,
            mask: n as u64 - 1,
            descs: (0..n).map(|_| DescSlot::default()).collect(),
            comps: (0..n).map(|_| CompletionRecord::default()).collect(),
            meta: vec![OpMeta::default(); n].into_boxed_slice(),
            units: vec![Unit::default(); n].into_boxed_slice(),
            unit_comps: (0..n).map(|_| CompletionRecord::default()).collect(),
            unit_head: 0,
            unit_tail: 0,
            next: 0,
            doorbell: 0,
            submitted: 0,
            retired: 0,
            op_flags,
            fence_counted: u64::MAX,
            stats: EngineStats::default(),
            dsa: DsaStats::default(),
            model: None,
            _not_sync: PhantomData,
        })
    }

    /// The work queue.
    pub fn wq(&self) -> &WqInfo {
        &self.wq
    }

    /// The DSA counters.
    pub fn dsa_stats(&self) -> DsaStats {
        self.dsa
    }

    /// Ops enqueued and rung but not yet with the device (WQ full, busy, or behind a fence).
    pub fn pending(&self) -> u64 {
        self.doorbell - self.submitted
    }

    /// Descriptors (units) with the device, the dedicated WQ's software occupancy count.
    pub fn wq_occupancy(&self) -> u64 {
        self.unit_tail - self.unit_head
    }

    #[inline]
    fn slot(&self, t: u64) -> usize {
        (t & self.mask) as usize
    }

    /// Hands rung ops to the device, unit by unit, as far as the WQ, fences and "retry" allow.
    fn pump(&mut self) {
        let n = self.mask + 1;
        while self.submitted < self.doorbell {
            if self.wq.mode == WqMode::Dedicated && self.wq_occupancy() >= self.wq.size as u64 {
                self.dsa.wq_full += 1;
                return;
            }
            let first = self.submitted;
            let slot = self.slot(first);
            if self.meta[slot].fence && self.retired < first {
                if self.fence_counted != first {
                    self.fence_counted = first;
                    self.dsa.fence_waits += 1;
                }
                return;
            }
            let avail = (self.doorbell - first).min(n - slot as u64).min(self.max_batch as u64) as usize;
            let mut count = 1;
            while count < avail && !self.meta[slot + count].fence {
                count += 1;
            }
            let batch = count >= self.cfg.batch.min_batch;
            if !batch {
                count = 1;
            }
            let u = self.slot(self.unit_tail);
            let desc = if batch {
                self.unit_comps[u].clear();
                let list = &self.descs[slot] as *const DescSlot as u64;
                let comp = &self.unit_comps[u] as *const CompletionRecord as u64;
                HwDesc::batch(list, count as u32, comp, flags::CRAV | flags::RCR)
            } else {
                self.descs[slot].load()
            };
            let mut tries = 0;
            loop {
                // SAFETY: the descriptor names only memory this engine keeps valid until the
                // device has written the unit's last completion record: its records and list
                // slots (`comps`, `unit_comps`, `descs`, freed only after drop has seen every
                // record written, else leaked), and the op buffers, which `CopyEngine::enqueue`'s
                // contract keeps valid and untouched until the op is retired, after its record.
                match unsafe { self.portal.submit(&desc) } {
                    Ok(()) => break,
                    Err(Retry) => {
                        self.dsa.busy += 1;
                        tries += 1;
                        if tries > self.cfg.busy_retries {
                            self.dsa.busy_deferred += 1;
                            return;
                        }
                        core::hint::spin_loop();
                    }
                }
            }
            self.units[u] = Unit { end: first + count as u64, batch };
            self.unit_tail += 1;
            self.submitted += count as u64;
            self.dsa.descriptors += 1;
            if batch {
                self.dsa.batches += 1;
                self.dsa.batched_ops += count as u64;
            }
        }
    }

    /// Finishes a page-faulted copy on the CPU from `done` bytes on; `false` when the record makes
    /// no sense (more bytes done than asked).
    fn finish_on_cpu(&mut self, slot: usize, done: u32) -> bool {
        let m = self.meta[slot];
        if done > m.len {
            return false;
        }
        let rest = (m.len - done) as usize;
        if rest > 0 {
            // SAFETY: `CopyEngine::enqueue`'s contract keeps `src` readable and `dst` writable for
            // `len` bytes, disjoint (checked at enqueue), until the op is retired, which happens
            // right after this; the device has stopped with this op (its record is written).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    (m.src + done as u64) as *const u8,
                    (m.dst + done as u64) as *mut u8,
                    rest,
                )
            };
        }
        self.dsa.page_faults += 1;
        self.dsa.fault_bytes += rest as u64;
        true
    }
}

/// Maps a DSA completion status (raw byte, write bit included) onto [`OpStatus`].
pub fn map_status(raw: u8) -> OpStatus {
    let write = raw & 0x80 != 0;
    match raw & status::MASK {
        status::PAGE_FAULT_NOBOF | status::PAGE_FAULT_IR | status::TRANSLATION_FAIL | 0x1a | 0x1f => {
            if write {
                OpStatus::DestinationError
            } else {
                OpStatus::SourceError
            }
        }
        status::BATCH_PAGE_FAULT | status::BATCH_FAIL => OpStatus::NotAttempted,
        status::HW_ERR1 | 0x21 => OpStatus::DataError,
        other => OpStatus::Other(other as u32),
    }
}

impl<P: Portal> CopyEngine for DsaEngine<P> {
    #[inline]
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    #[inline]
    fn burst_capacity(&self) -> usize {
        self.info.ring_size - (self.next - self.retired) as usize
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
        if self.next - self.retired >= self.info.ring_size as u64 {
            self.stats.ring_full += 1;
            return Err(EnqueueError::RingFull);
        }
        let t = self.next;
        let slot = self.slot(t);
        self.meta[slot] =
            OpMeta { src: src as u64, dst: dst as u64, len: len as u32, fence: flags.contains(OpFlags::FENCE) };
        let rec = &self.comps[slot];
        rec.clear();
        let comp = rec as *const CompletionRecord as u64;
        let desc = if len == 0 {
            HwDesc::noop(comp, flags::CRAV | flags::RCR)
        } else {
            let cc = if flags.contains(OpFlags::LLC) { crate::desc::flags::CC } else { 0 };
            HwDesc::memmove(src as u64, dst as u64, len as u32, comp, self.op_flags | cc)
        };
        self.descs[slot].store(&desc);
        self.next = t + 1;
        self.stats.on_enqueue(len);
        if flags.contains(OpFlags::SUBMIT) {
            self.submit();
        }
        Ok(Ticket::new(t))
    }

    #[inline]
    fn submit(&mut self) {
        if self.doorbell < self.next {
            self.doorbell = self.next;
            self.stats.submits += 1;
        }
        self.pump();
    }

    fn reap(&mut self, max: usize, failed: &mut [FailedOp]) -> Reaped {
        let (mut n, mut nf) = (0usize, 0usize);
        while n < max && self.retired < self.submitted {
            let t = self.retired;
            let slot = self.slot(t);
            let u = self.slot(self.unit_head);
            let unit = self.units[u];
            let last = t + 1 == unit.end;
            let mut raw = self.comps[slot].raw_status();
            if unit.batch {
                let b = if raw & status::MASK == status::NONE || last { self.unit_comps[u].raw_status() } else { 0 };
                if raw & status::MASK == status::NONE {
                    if b & status::MASK == status::NONE {
                        break;
                    }
                    // The device writes a batch's record after those of its descriptors, so after
                    // the batch record's Acquire a second look at the op's record is final.
                    raw = self.comps[slot].raw_status();
                    if raw & status::MASK == status::NONE {
                        // The batch is done and this op has no record: it never ran.
                        raw = if b & status::MASK == status::BATCH_FAIL { status::BATCH_FAIL } else { b };
                    }
                } else if last && b & status::MASK == status::NONE {
                    break;
                }
            } else if raw & status::MASK == status::NONE {
                break;
            }
            let outcome = match raw & status::MASK {
                status::SUCCESS => None,
                status::PAGE_FAULT_NOBOF => {
                    let rec = &self.comps[slot];
                    let done = rec.bytes_completed.load(core::sync::atomic::Ordering::Relaxed);
                    // `result` 1 means the device copied backwards (only for overlapping buffers,
                    // which enqueue refuses): then the done bytes are at the end, not the start.
                    let forward = rec.result.load(core::sync::atomic::Ordering::Relaxed) == 0;
                    if forward && self.finish_on_cpu(slot, done) {
                        None
                    } else {
                        Some(map_status(raw))
                    }
                }
                _ => Some(map_status(raw)),
            };
            if let Some(st) = outcome {
                if nf >= failed.len() {
                    break;
                }
                failed[nf] = FailedOp { ticket: Ticket::new(t), status: st };
                nf += 1;
            }
            self.retired = t + 1;
            n += 1;
            if last {
                if unit.batch && self.unit_comps[u].status() != status::SUCCESS {
                    self.dsa.batch_failures += u64::from(self.unit_comps[u].status() != status::BATCH_FAIL);
                }
                self.unit_head += 1;
            }
        }
        self.stats.on_reap(n - nf, nf);
        if self.submitted < self.doorbell {
            self.pump();
        }
        Reaped { retired: n, failed: nf }
    }

    #[inline]
    fn next_ticket(&self) -> Ticket {
        Ticket::new(self.next)
    }

    #[inline]
    fn retired(&self) -> Ticket {
        Ticket::new(self.retired)
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
        self.dsa = DsaStats::default();
    }
}

impl<P: Portal> DsaEngine<P> {
    /// Submits everything and reaps until nothing is in flight or `timeout` passes; failures are
    /// counted in the stats and otherwise dropped. `false` on timeout.
    fn drain(&mut self, timeout: Duration) -> bool {
        self.submit();
        let deadline = Instant::now() + timeout;
        let mut buf = [FailedOp::EMPTY; 32];
        while self.retired < self.next {
            if self.reap(usize::MAX, &mut buf).retired == 0 {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::yield_now();
            }
        }
        true
    }
}

#[async_trait::async_trait]
impl<P: Portal> EngineControl for DsaEngine<P> {
    async fn start(&mut self) -> Result<(), ControlError> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ControlError> {
        if self.drain(self.cfg.drain_timeout) {
            Ok(())
        } else {
            Err(ControlError::Backend {
                context: "dsa stop",
                message: format!("{} ops still with the device", self.submitted - self.retired),
                code: -libc::ETIMEDOUT,
            })
        }
    }

    async fn map_memory(&mut self, _addr: usize, _len: usize) -> Result<(), ControlError> {
        Ok(()) // SVA: the kernel's idxd driver binds the process's address space (PASID)
    }

    async fn unmap_memory(&mut self, _addr: usize, _len: usize) -> Result<(), ControlError> {
        Ok(())
    }
}

impl<P: Portal> Drop for DsaEngine<P> {
    fn drop(&mut self) {
        // Ops never handed to the device are cancelled; those with it are waited for.
        self.doorbell = self.submitted;
        self.next = self.submitted;
        let deadline = Instant::now() + self.cfg.drain_timeout;
        let mut buf = [FailedOp::EMPTY; 32];
        while self.retired < self.submitted {
            if self.reap(usize::MAX, &mut buf).retired == 0 {
                if Instant::now() > deadline {
                    // The device may still write records and read lists: never free them.
                    std::mem::forget(std::mem::take(&mut self.comps));
                    std::mem::forget(std::mem::take(&mut self.unit_comps));
                    std::mem::forget(std::mem::take(&mut self.descs));
                    return;
                }
                std::thread::yield_now();
            }
        }
    }
}

/// Compile-time proof that the engine is `Send`.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<DsaEngine<ModelPortal>>();
    assert_send::<DsaEngine<HwPortal>>();
};
