//! A software model of a DSA work queue and its engine, standing where the portal and the device
//! stand, so the engine's descriptor, batch and completion code runs in CI unchanged.
//!
//! [`ModelPortal`] implements [`Portal`]: `submit` puts the 64-byte descriptor in a bounded queue
//! (the WQ, `wq_size` entries); a device thread takes descriptors in order and executes them the
//! way the DSA specification says: MEMMOVE copies and writes its completion record (fields first,
//! status byte last, with Release); NOOP only writes the record; BATCH reads its descriptor list
//! from memory, runs each descriptor (a failed one abandons the fenced ones after it), then
//! writes the batch's record (SUCCESS or BATCH_FAIL). A dedicated WQ that is full **drops** the
//! descriptor, as MOVDIR64B does (counted in [`ModelCounters::dropped`], which the tests keep at
//! zero); a full shared WQ answers [`Retry`], as ENQCMD does.
//!
//! Fault injection ([`ModelFaults`]): page faults with a partial completion (`bytes_completed`,
//! `fault_addr`; with block-on-fault the model finishes the copy instead, as the device would
//! after the kernel resolves the fault), other errors (nothing copied), whole-batch failures (the
//! list cannot be read: nothing runs), spurious "busy" on shared WQs, and a paused device so the
//! WQ fills ([`ModelHandle::pause`]). It also checks what the engine sends: misaligned
//! completion records or lists, bad batch sizes, missing CRAV/RCR count as
//! [`ModelCounters::violations`].
//!
//! What the model cannot show: real latencies and throughput, IOMMU/PASID translation, real page
//! faults, concurrent execution by several engines of a group, and the portal's MMIO semantics.
//! The model's queue takes a mutex per descriptor; hardware does not.
//!
//! This module owns the model's thread and queue. Like the device, the thread dereferences the
//! addresses in descriptors; the [`Portal::submit`] contract makes them valid.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::desc::{flags, opcode, status, CompletionRecord, DescSlot, HwDesc};
use crate::error::DsaError;
use crate::portal::{Portal, Retry};
use crate::sysfs::{WqInfo, WqMode};

/// Faults the model injects, each a probability per descriptor (0.0 to 1.0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelFaults {
    /// A copy stops at a random byte with PAGE_FAULT_NOBOF (or, with BOF set, is finished).
    pub page_fault: f64,
    /// A copy fails without copying (HW_ERR1 or TRANSLATION_FAIL, alternately).
    pub error: f64,
    /// A batch fails as a whole (BATCH_PAGE_FAULT: its list unreadable, nothing in it runs).
    pub batch_error: f64,
    /// A shared WQ answers "retry" although it has room.
    pub busy: f64,
    /// Seed of the model's generator.
    pub seed: u64,
}

impl Default for ModelFaults {
    /// No faults.
    fn default() -> Self {
        ModelFaults { page_fault: 0.0, error: 0.0, batch_error: 0.0, busy: 0.0, seed: 1 }
    }
}

/// How to build a model device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Dedicated (MOVDIR64B semantics) or shared (ENQCMD semantics).
    pub mode: WqMode,
    /// WQ entries.
    pub wq_size: usize,
    /// Longest transfer.
    pub max_transfer_size: usize,
    /// Largest batch.
    pub max_batch_size: usize,
    /// The WQ has block-on-fault enabled.
    pub block_on_fault: bool,
    /// Injected faults.
    pub faults: ModelFaults,
}

impl Default for ModelConfig {
    /// A dedicated WQ of 128 entries, 2 MiB transfers, batches up to 1024: a typical
    /// `accel-config` setup. No faults.
    fn default() -> Self {
        ModelConfig {
            mode: WqMode::Dedicated,
            wq_size: 128,
            max_transfer_size: 2 << 20,
            max_batch_size: 1024,
            block_on_fault: false,
            faults: ModelFaults::default(),
        }
    }
}

/// What the model did, for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelCounters {
    /// Descriptors accepted into the WQ (batches count once).
    pub submitted: u64,
    /// Descriptors executed, batch members included.
    pub executed: u64,
    /// Batch descriptors executed.
    pub batches: u64,
    /// Page faults injected that stopped a copy part-way.
    pub page_faults: u64,
    /// Page faults injected on block-on-fault descriptors (the copy was finished).
    pub blocked_faults: u64,
    /// Errors injected on copies.
    pub errors: u64,
    /// Whole batches failed by injection.
    pub batch_errors: u64,
    /// "Retry" answers on a shared WQ (full or injected).
    pub busy: u64,
    /// Descriptors dropped because a dedicated WQ was full (the engine must keep this at 0).
    pub dropped: u64,
    /// Descriptors breaking the rules (alignment, batch size, missing flags).
    pub violations: u64,
    /// Most descriptors ever waiting in the WQ at once.
    pub max_occupancy: u64,
}

#[derive(Debug, Default)]
struct Counters {
    submitted: AtomicU64,
    executed: AtomicU64,
    batches: AtomicU64,
    page_faults: AtomicU64,
    blocked_faults: AtomicU64,
    errors: AtomicU64,
    batch_errors: AtomicU64,
    busy: AtomicU64,
    dropped: AtomicU64,
    violations: AtomicU64,
    max_occupancy: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct Shared {
    cfg: ModelConfig,
    wq: Mutex<VecDeque<HwDesc>>,
    paused: AtomicBool,
    stop: AtomicBool,
    counters: Counters,
}

/// A handle on a running model: its counters, and pausing it so its WQ fills.
#[derive(Clone, Debug)]
pub struct ModelHandle(Arc<Shared>);

impl ModelHandle {
    /// Stops taking descriptors from the WQ (those already taken finish).
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
    }

    /// Takes descriptors again.
    pub fn resume(&self) {
        self.0.paused.store(false, Ordering::SeqCst);
    }

    /// Descriptors waiting in the WQ now.
    pub fn occupancy(&self) -> usize {
        self.0.wq.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ModelCounters {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ModelCounters {
            submitted: l(&c.submitted),
            executed: l(&c.executed),
            batches: l(&c.batches),
            page_faults: l(&c.page_faults),
            blocked_faults: l(&c.blocked_faults),
            errors: l(&c.errors),
            batch_errors: l(&c.batch_errors),
            busy: l(&c.busy),
            dropped: l(&c.dropped),
            violations: l(&c.violations),
            max_occupancy: l(&c.max_occupancy),
        }
    }
}

/// The model's portal: what the engine submits to. Dropping it lets the device finish what is
/// in its WQ, then joins the device thread.
#[derive(Debug)]
pub struct ModelPortal {
    shared: Arc<Shared>,
    rng: Rng,
    device: Option<JoinHandle<()>>,
}

impl ModelPortal {
    /// Starts a model device; returns its portal and the WQ description discovery would give.
    ///
    /// # Errors
    ///
    /// [`DsaError::InvalidConfig`] for a zero WQ size, batch size below 2 or zero transfer size;
    /// [`DsaError::Thread`] if the device thread cannot start.
    pub fn start(cfg: ModelConfig) -> Result<(Self, WqInfo), DsaError> {
        if cfg.wq_size == 0 || cfg.max_batch_size < 2 || cfg.max_transfer_size == 0 {
            return Err(DsaError::InvalidConfig(format!("model: {cfg:?}")));
        }
        let shared = Arc::new(Shared {
            cfg,
            wq: Mutex::new(VecDeque::with_capacity(cfg.wq_size)),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let dev = Arc::clone(&shared);
        let device = thread::Builder::new()
            .name("dsa-model".into())
            .spawn(move || run_device(&dev))
            .map_err(DsaError::Thread)?;
        let wq = WqInfo {
            name: "model".into(),
            device: "model".into(),
            mode: cfg.mode,
            size: cfg.wq_size,
            max_transfer_size: cfg.max_transfer_size,
            max_batch_size: cfg.max_batch_size,
            block_on_fault: cfg.block_on_fault,
            dev_path: Default::default(),
        };
        Ok((ModelPortal { shared, rng: Rng::new(cfg.faults.seed ^ 0x5151), device: Some(device) }, wq))
    }

    /// A handle on the device.
    pub fn handle(&self) -> ModelHandle {
        ModelHandle(Arc::clone(&self.shared))
    }
}

impl Portal for ModelPortal {
    fn mode(&self) -> WqMode {
        self.shared.cfg.mode
    }

    unsafe fn submit(&mut self, desc: &HwDesc) -> Result<(), Retry> {
        let cfg = &self.shared.cfg;
        let c = &self.shared.counters;
        if cfg.mode == WqMode::Shared && self.rng.chance(cfg.faults.busy) {
            bump(&c.busy);
            return Err(Retry);
        }
        // A poisoned lock means the device thread panicked: nothing executes any more, like a
        // halted device, and the engine sees no completions.
        let Ok(mut q) = self.shared.wq.lock() else { return Ok(()) };
        if q.len() >= cfg.wq_size {
            return match cfg.mode {
                WqMode::Dedicated => {
                    bump(&c.dropped);
                    Ok(())
                }
                WqMode::Shared => {
                    bump(&c.busy);
                    Err(Retry)
                }
            };
        }
        q.push_back(*desc);
        bump(&c.submitted);
        c.max_occupancy.fetch_max(q.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for ModelPortal {
    fn drop(&mut self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(d) = self.device.take() {
            let _ = d.join();
        }
    }
}

/// xorshift64*, as in copy-engine's conformance suite: faults reproduce from the seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        p > 0.0 && x < p
    }
}

fn run_device(sh: &Shared) {
    let mut rng = Rng::new(sh.cfg.faults.seed);
    let mut idle = 0u32;
    loop {
        let next = if sh.paused.load(Ordering::SeqCst) {
            None
        } else {
            match sh.wq.lock() {
                Ok(mut q) => q.pop_front(),
                Err(_) => return,
            }
        };
        match next {
            Some(d) => {
                idle = 0;
                execute_top(sh, &mut rng, &d);
            }
            None => {
                if sh.stop.load(Ordering::SeqCst) && sh.wq.lock().map(|q| q.is_empty()).unwrap_or(true) {
                    return;
                }
                idle = idle.saturating_add(1);
                match idle {
                    0..=64 => core::hint::spin_loop(),
                    65..=4096 => thread::yield_now(),
                    _ => thread::sleep(Duration::from_micros(50)),
                }
            }
        }
    }
}

/// The record a descriptor reports to, if it asks for one and its address is valid.
fn record<'a>(sh: &Shared, d: &HwDesc) -> Option<&'a CompletionRecord> {
    let f = d.flags();
    if f & flags::CRAV == 0 || f & flags::RCR == 0 || d.completion_addr == 0 || d.completion_addr % 32 != 0 {
        // The engine always asks for an aligned record; anything else is its bug.
        bump(&sh.counters.violations);
        return None;
    }
    // SAFETY: `Portal::submit`'s contract: the completion record the descriptor names stays valid
    // until the device has written it, and is a `CompletionRecord` (checked aligned above), whose
    // fields are atomics, so this shared reference may coexist with the engine's.
    Some(unsafe { &*(d.completion_addr as *const CompletionRecord) })
}

fn execute_top(sh: &Shared, rng: &mut Rng, d: &HwDesc) {
    match d.opcode() {
        opcode::BATCH => execute_batch(sh, rng, d),
        _ => {
            let (code, done, fault) = execute_one(sh, rng, d);
            if let Some(r) = record(sh, d) {
                r.write(code, done, fault);
            }
        }
    }
}

/// Runs a NOOP or MEMMOVE; returns (status, bytes completed, fault address).
fn execute_one(sh: &Shared, rng: &mut Rng, d: &HwDesc) -> (u8, u32, u64) {
    let c = &sh.counters;
    bump(&c.executed);
    match d.opcode() {
        opcode::NOOP => (status::SUCCESS, 0, 0),
        opcode::MEMMOVE => {
            let len = d.xfer_size as usize;
            if len == 0 || len > sh.cfg.max_transfer_size {
                bump(&c.violations);
                return (status::XFER_ERANGE, 0, 0);
            }
            let (s, t) = (d.src as usize, d.dst as usize);
            if s < t + len && t < s + len {
                bump(&c.violations);
                return (status::OVERLAP_BUFFERS, 0, 0);
            }
            let f = &sh.cfg.faults;
            if rng.chance(f.error) {
                let n = c.errors.fetch_add(1, Ordering::Relaxed);
                return (if n % 2 == 0 { status::HW_ERR1 } else { status::TRANSLATION_FAIL }, 0, d.src);
            }
            let mut upto = len;
            let mut faulted = false;
            if rng.chance(f.page_fault) {
                if d.flags() & flags::BOF != 0 && sh.cfg.block_on_fault {
                    bump(&c.blocked_faults);
                } else {
                    bump(&c.page_faults);
                    upto = (rng.next() % len as u64) as usize;
                    faulted = true;
                }
            }
            if upto > 0 {
                // SAFETY: `Portal::submit`'s contract (from `CopyEngine::enqueue`'s): `src` is
                // valid for reads and `dst` for writes of `xfer_size` bytes until the record is
                // written, nothing else touches them meanwhile, and they do not overlap (checked).
                unsafe { core::ptr::copy_nonoverlapping(d.src as *const u8, d.dst as *mut u8, upto) };
            }
            if faulted {
                // Read faults and write faults alternate; bit 7 of the status marks a write.
                let write = rng.next() & 1 == 1;
                let code = status::PAGE_FAULT_NOBOF | if write { 0x80 } else { 0 };
                let addr = if write { d.dst } else { d.src } + upto as u64;
                (code, upto as u32, addr)
            } else {
                (status::SUCCESS, 0, 0)
            }
        }
        _ => {
            bump(&c.violations);
            (status::BAD_OPCODE, 0, 0)
        }
    }
}

fn execute_batch(sh: &Shared, rng: &mut Rng, b: &HwDesc) {
    let c = &sh.counters;
    bump(&c.executed);
    bump(&c.batches);
    let Some(rec) = record(sh, b) else { return };
    let count = b.xfer_size as usize;
    if !(2..=sh.cfg.max_batch_size).contains(&count) {
        bump(&c.violations);
        rec.write(status::DESC_CNT_ERANGE, 0, 0);
        return;
    }
    if b.src == 0 || b.src % 64 != 0 {
        bump(&c.violations);
        rec.write(status::ADDR_ALIGN, 0, b.src);
        return;
    }
    if rng.chance(sh.cfg.faults.batch_error) {
        bump(&c.batch_errors);
        rec.write(status::BATCH_PAGE_FAULT, 0, b.src);
        return;
    }
    // SAFETY: `Portal::submit`'s contract: a batch's list of `count` descriptors stays valid and
    // unchanged until the batch's record is written; it is 64-byte aligned (checked) and made of
    // `DescSlot`s, whose words are atomics, so a shared slice may coexist with the engine's.
    let list = unsafe { core::slice::from_raw_parts(b.src as *const DescSlot, count) };
    let mut failed = false;
    for slot in list {
        let d = slot.load();
        if d.opcode() == opcode::BATCH {
            bump(&c.violations);
        }
        if failed && d.flags() & flags::FENCE != 0 {
            // A fence after a failure abandons the rest of the batch: no records are written.
            break;
        }
        let (code, done, fault) = execute_one(sh, rng, &d);
        failed |= code != status::SUCCESS;
        if let Some(r) = record(sh, &d) {
            r.write(code, done, fault);
        }
    }
    rec.write(if failed { status::BATCH_FAIL } else { status::SUCCESS }, 0, 0);
}
