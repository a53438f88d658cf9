//! [`DmadevEngine`]: one dmadev virtual channel behind the [`CopyEngine`] contract.
//!
//! This module owns the mapping between copy-engine's `u64` tickets and dmadev's wrapping `u16`
//! ring indices, the reaping of completions (with per-op status for failures), and the channel's
//! counters. Device lookup and configuration are in [`crate::device`]; every DPDK call goes through
//! the private `ffi` module.
//!
//! Addresses: the engine hands the device plain virtual addresses as IOVAs. That is right on SVA
//! devices (`dma_skeleton`, DSA through the kernel idxd driver) and, for devices without SVA
//! (IOAT/CBDMA or DSA on vfio-pci), when EAL runs in IOVA-as-VA mode and the memory was mapped with
//! [`EngineControl::map_memory`]; [`crate::DmadevDevice::open`] refuses the other combinations.
//! So the data path never translates an address.

#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use copy_engine::{
    check_copy, CopyEngine, EngineControl, EngineInfo, EngineStats, EnqueueError, FailedOp, OpFlags, OpStatus, Reaped,
    Ticket,
};
use copy_engine::{Capabilities, ControlError};

use crate::device::{backend, DeviceConfig, DeviceSelector, DeviceShared, DmadevDevice};
use crate::eal::Eal;
use crate::ffi::{self, status};

/// Status codes fetched per `rte_dma_completed_status` call after a failure.
const STATUS_BATCH: usize = 32;

/// How long `stop` and drop wait for ops in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Engine-owned memory for zero-length ops: dmadev defines no zero-length copy, so such an op is
/// issued as a one-byte copy inside this page, which nothing else reads or writes. It occupies a
/// ring slot and completes in order like any other op.
#[repr(C, align(4096))]
struct Scratch(core::cell::UnsafeCell<[u8; 4096]>);

/// Counters the device itself keeps (`rte_dma_stats_get` for this vchan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Ops submitted to the hardware.
    pub submitted: u64,
    /// Ops completed, successful or failed.
    pub completed: u64,
    /// Ops that failed.
    pub errors: u64,
}

/// Maps a dmadev status code (`enum rte_dma_status_code`) onto [`OpStatus`]; `None` for success.
pub fn map_status(code: u32) -> Option<OpStatus> {
    Some(match code {
        status::SUCCESSFUL => return None,
        status::USER_ABORT | status::NOT_ATTEMPTED => OpStatus::NotAttempted,
        status::INVALID_SRC_ADDR | status::BUS_READ_ERROR => OpStatus::SourceError,
        status::INVALID_DST_ADDR | status::BUS_WRITE_ERROR => OpStatus::DestinationError,
        status::BUS_ERROR | status::DATA_POISON | status::DEV_LINK_ERROR => OpStatus::DataError,
        other => OpStatus::Other(other),
    })
}

/// One dmadev virtual channel as a [`CopyEngine`]. Owned by one thread.
///
/// Made by [`DmadevEngine::open`] (a one-channel device) or [`DmadevDevice::channel`]. Starts
/// running; [`EngineControl::stop`] drains it and stops the device once none of its channels runs.
/// Dropping it waits (up to two seconds) for its ops in flight.
pub struct DmadevEngine {
    shared: Arc<DeviceShared>,
    /// The data-path handle; `None` only during drop.
    q: Option<ffi::Vchan>,
    vchan: u16,
    info: EngineInfo,
    next: Ticket,
    retired: Ticket,
    /// Ticket of ring index 0 in the current device epoch, as a `u16`: `ticket = idx + idx_off`.
    idx_off: u16,
    epoch: u64,
    running: bool,
    /// Ops enqueued since the last doorbell.
    unsubmitted: u32,
    stats: EngineStats,
    status_buf: [u32; STATUS_BATCH],
    /// Target of zero-length ops; freed only after drop has drained the channel.
    scratch: Box<Scratch>,
}

impl std::fmt::Debug for DmadevEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmadevEngine")
            .field("info", &self.info)
            .field("next", &self.next)
            .field("retired", &self.retired)
            .field("running", &self.running)
            .finish()
    }
}

impl DmadevEngine {
    /// Opens `device` (by name or id) with one vchan of `ring_size` descriptors and returns that
    /// channel, running. The same as `DmadevDevice::open(eal, device, DeviceConfig { vchans: 1,
    /// ring_size })?.channel(0)`.
    pub fn open(eal: &Eal, device: impl Into<DeviceSelector>, ring_size: usize) -> Result<Self, ControlError> {
        DmadevDevice::open(eal, device, DeviceConfig { vchans: 1, ring_size })?.channel(0)
    }

    pub(crate) fn new(shared: Arc<DeviceShared>, vchan: u16, q: ffi::Vchan) -> Result<Self, ControlError> {
        let epoch = match shared.channel_start() {
            Ok(e) => e,
            Err(e) => {
                shared.release(vchan, q);
                return Err(e);
            }
        };
        let info = EngineInfo {
            name: format!("dmadev:{}/{}", shared.info.name, vchan),
            capabilities: shared.info.capabilities,
            // dmadev rings keep one slot free.
            ring_size: (shared.nb_desc as usize - 1).max(1),
            max_len: u32::MAX as usize,
        };
        Ok(DmadevEngine {
            shared,
            q: Some(q),
            vchan,
            info,
            next: Ticket::ZERO,
            retired: Ticket::ZERO,
            idx_off: 0,
            epoch,
            running: true,
            unsubmitted: 0,
            stats: EngineStats::default(),
            status_buf: [0; STATUS_BATCH],
            scratch: Box::new(Scratch(core::cell::UnsafeCell::new([0; 4096]))),
        })
        .and_then(|e: DmadevEngine| {
            // Devices without SVA reach only mapped memory.
            e.map(e.scratch.0.get().cast(), 4096, true)?;
            Ok(e)
        })
    }

    #[inline]
    fn q(&self) -> &ffi::Vchan {
        // `q` is taken only in drop.
        self.q.as_ref().expect("vchan present until drop")
    }

    /// The device this channel belongs to.
    pub fn device_info(&self) -> &crate::DeviceInfo {
        &self.shared.info
    }

    /// The vchan index.
    pub fn vchan(&self) -> u16 {
        self.vchan
    }

    /// The device's own counters for this vchan (`rte_dma_stats_get`).
    pub fn device_stats(&self) -> Result<DeviceStats, ControlError> {
        let (submitted, completed, errors) = self.q().stats().map_err(|rc| backend("rte_dma_stats_get", rc))?;
        Ok(DeviceStats { submitted, completed, errors })
    }

    /// The full ticket of device ring index `idx`.
    /// IOVAs and length of the stand-in for a zero-length op.
    #[inline]
    fn zero_op(&self) -> (u64, u64, u32) {
        let base = self.scratch.0.get() as u64;
        (base, base + 2048, 1)
    }

    #[inline]
    fn ticket_of(&self, idx: u16) -> Ticket {
        Ticket::from_u16_after(self.retired, idx.wrapping_add(self.idx_off))
    }

    #[inline]
    fn op_flags(flags: OpFlags) -> u64 {
        let mut f = 0;
        if flags.contains(OpFlags::FENCE) {
            f |= ffi::RTE_DMA_OP_FLAG_FENCE;
        }
        if flags.contains(OpFlags::SUBMIT) {
            f |= ffi::RTE_DMA_OP_FLAG_SUBMIT;
        }
        if flags.contains(OpFlags::LLC) {
            f |= ffi::RTE_DMA_OP_FLAG_LLC;
        }
        f
    }

    #[inline]
    fn refused(&mut self, rc: i32) -> EnqueueError {
        match -rc {
            ffi::ENOSPC => {
                self.stats.ring_full += 1;
                EnqueueError::RingFull
            }
            ffi::ENOTSUP => EnqueueError::Unsupported,
            _ => EnqueueError::NotRunning,
        }
    }

    /// Enqueues a burst of copies with one call into DPDK (`src[i]` to `dst[i]`, `len[i]` bytes,
    /// each with `flags`), and rings the doorbell once after them when `submit` is set. Stops at
    /// the first op that is refused (and before a zero-length op that is not first); returns the
    /// ticket of the first op and how many were accepted, or the error of the first op when none
    /// was.
    ///
    /// # Safety
    ///
    /// The contract of [`CopyEngine::enqueue`] for every op. `src`, `dst` and `len` have the same
    /// length.
    pub unsafe fn enqueue_burst(
        &mut self,
        src: &[*const u8],
        dst: &[*mut u8],
        len: &[u32],
        flags: OpFlags,
        submit: bool,
    ) -> Result<(Ticket, usize), EnqueueError> {
        assert!(src.len() == dst.len() && dst.len() == len.len(), "burst slices differ in length");
        if !self.running {
            return Err(EnqueueError::NotRunning);
        }
        let n = src.len().min(u16::MAX as usize);
        let mut ok = 0;
        while ok < n {
            let l = len[ok];
            check_copy(src[ok], dst[ok], l as usize, self.info.max_len)?;
            if l == 0 {
                // Zero-length ops need the scratch stand-in: end the burst before one.
                break;
            }
            ok += 1;
        }
        if ok == 0 {
            if n == 0 {
                return Ok((self.next, 0));
            }
            // SAFETY: forwarded from this function's contract (a zero-length op touches no memory
            // of the caller's).
            let t = unsafe { self.enqueue(src[0], dst[0], 0, if submit { flags | OpFlags::SUBMIT } else { flags }) }?;
            return Ok((t, 1));
        }
        // Pointers and u64 have the same size and layout on the 64-bit targets DPDK supports.
        const _: () = assert!(core::mem::size_of::<*const u8>() == core::mem::size_of::<u64>());
        // SAFETY: `*const u8`/`*mut u8` and `u64` have the same size and alignment (asserted
        // above), so the pointer slices can be read as u64 slices of the same length.
        let (s, d) = unsafe {
            (
                core::slice::from_raw_parts(src.as_ptr().cast::<u64>(), ok),
                core::slice::from_raw_parts(dst.as_ptr().cast::<u64>(), ok),
            )
        };
        // SAFETY: the caller upholds the enqueue contract for every op; the ranges were checked.
        let (done, first, err) = unsafe { self.q().copy_burst(s, d, &len[..ok], Self::op_flags(flags), submit) };
        let done = done as usize;
        if done == 0 {
            return Err(self.refused(err));
        }
        let t = self.next;
        debug_assert_eq!(self.ticket_of(first), t, "dmadev ring index out of step");
        for &l in &len[..done] {
            self.stats.on_enqueue(l as usize);
        }
        if err < 0 {
            let _ = self.refused(err);
        }
        self.next = t.add(done as u64);
        if submit {
            self.stats.submits += 1;
            self.unsubmitted = 0;
        } else {
            self.unsubmitted += done as u32;
        }
        Ok((t, done))
    }

    /// Submits and reaps until nothing is in flight, or `DRAIN_TIMEOUT` passes.
    fn drain(&mut self) -> Result<(), ControlError> {
        self.submit();
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut failed = [FailedOp::EMPTY; STATUS_BATCH];
        while self.in_flight() > 0 {
            self.reap(usize::MAX, &mut failed);
            if Instant::now() > deadline {
                return Err(ControlError::Backend {
                    context: "draining dmadev channel",
                    message: format!("{} ops still in flight after {:?}", self.in_flight(), DRAIN_TIMEOUT),
                    code: -110,
                });
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn map(&self, addr: *mut u8, len: usize, map: bool) -> Result<(), ControlError> {
        if self.info.capabilities.contains(Capabilities::SVA) || len == 0 {
            return Ok(());
        }
        let rc = ffi::vfio_map(addr as u64, len as u64, map);
        if rc < 0 {
            let code = ffi::errno();
            return Err(ControlError::Backend {
                context: if map { "rte_vfio_container_dma_map" } else { "rte_vfio_container_dma_unmap" },
                message: ffi::strerror(code),
                code,
            });
        }
        Ok(())
    }

    /// Benchmark baseline: `n` copies of `min(src.len(), dst.len())` bytes from `src` to `dst`,
    /// done by a loop in C that calls `rte_dma_copy`/`rte_dma_submit`/`rte_dma_completed` directly on
    /// this channel's device and vchan, in bursts of `burst` with one doorbell per burst, until all
    /// `n` have completed. Compare it with the same work through [`CopyEngine`] to measure the
    /// abstraction's cost. Needs a running channel with nothing in flight; returns `n`.
    #[doc(hidden)]
    pub fn raw_copy_loop(&mut self, src: &[u8], dst: &mut [u8], n: u64, burst: u16) -> Result<u64, ControlError> {
        if self.in_flight() != 0 || !self.running {
            return Err(ControlError::InvalidConfig("raw loop needs a running, idle channel".into()));
        }
        let size = src.len().min(dst.len());
        let size = u32::try_from(size)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| ControlError::InvalidConfig(format!("raw loop copy size {size} out of range")))?;
        if burst == 0 {
            return Err(ControlError::InvalidConfig("raw loop burst must be at least 1".into()));
        }
        let rc = self.q().bench_loop(src, dst, size, n, burst);
        // The device's ring indices moved on outside our tickets (by `n`, or by what was enqueued
        // before an error, which we cannot know): keep them in step on success.
        if rc < 0 {
            // Ring indices are out of step now; only a device restart puts them back.
            self.running = false;
            let _ = self.shared.channel_stop();
            return Err(backend("raw dmadev copy loop", rc as i32));
        }
        self.idx_off = self.idx_off.wrapping_sub(n as u16);
        Ok(rc as u64)
    }
}

impl CopyEngine for DmadevEngine {
    #[inline]
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    #[inline]
    fn burst_capacity(&self) -> usize {
        if self.running {
            self.q().burst_capacity() as usize
        } else {
            0
        }
    }

    /// Zero-length ops are accepted: dmadev defines no zero-length copy (its debug build rejects
    /// them), so they are issued as a one-byte copy inside engine-owned memory.
    #[inline]
    unsafe fn enqueue(
        &mut self,
        src: *const u8,
        dst: *mut u8,
        len: usize,
        flags: OpFlags,
    ) -> Result<Ticket, EnqueueError> {
        check_copy(src, dst, len, self.info.max_len)?;
        if !self.running {
            return Err(EnqueueError::NotRunning);
        }
        let (s, d, l) = if len == 0 { self.zero_op() } else { (src as u64, dst as u64, len as u32) };
        // SAFETY: the caller guarantees the enqueue contract (memory valid until retired);
        // `check_copy` proved the ranges non-null, non-wrapping, disjoint and at most u32::MAX long.
        // A zero-length op copies one byte inside `self.scratch`, which lives until drop has
        // drained the channel and is never accessed from Rust.
        let rc = unsafe { self.q().copy(s, d, l, Self::op_flags(flags)) };
        if rc < 0 {
            return Err(self.refused(rc));
        }
        let t = self.next;
        debug_assert_eq!(self.ticket_of(rc as u16), t, "dmadev ring index out of step");
        self.next = t.next();
        self.stats.on_enqueue(len);
        if flags.contains(OpFlags::SUBMIT) {
            self.stats.submits += 1;
            self.unsubmitted = 0;
        } else {
            self.unsubmitted += 1;
        }
        Ok(t)
    }

    #[inline]
    fn submit(&mut self) {
        if self.unsubmitted != 0 && self.running {
            self.q().submit();
            self.stats.submits += 1;
            self.unsubmitted = 0;
        }
    }

    fn reap(&mut self, max: usize, failed: &mut [FailedOp]) -> Reaped {
        let mut retired = 0usize;
        let mut nfail = 0usize;
        let cap = max.min(self.in_flight() as usize);
        while retired < cap {
            let want = (cap - retired).min(u16::MAX as usize) as u16;
            let (n, last, has_error) = self.q().completed(want);
            if n > 0 {
                debug_assert_eq!(
                    self.ticket_of(last),
                    self.retired.add((retired + n as usize - 1) as u64),
                    "dmadev completion index out of step"
                );
            }
            retired += n as usize;
            if !has_error {
                if n < want {
                    break;
                }
                continue;
            }
            // The op after the successful ones failed and is still in the device. Take it (and
            // what follows) with its status, never more failures than `failed` can hold.
            let room = failed.len() - nfail;
            let k = (cap - retired).min(room).min(STATUS_BATCH);
            if k == 0 {
                break;
            }
            let mut buf = self.status_buf;
            let (m, _) = self.q().completed_status(&mut buf[..k]);
            for (i, &code) in buf[..m as usize].iter().enumerate() {
                if let Some(status) = map_status(code) {
                    failed[nfail] = FailedOp { ticket: self.retired.add((retired + i) as u64), status };
                    nfail += 1;
                }
            }
            self.status_buf = buf;
            retired += m as usize;
            if m == 0 {
                break;
            }
        }
        self.retired = self.retired.add(retired as u64);
        self.stats.on_reap(retired - nfail, nfail);
        Reaped { retired, failed: nfail }
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
        let _ = self.q().reset_stats();
    }
}

#[async_trait::async_trait]
impl EngineControl for DmadevEngine {
    async fn start(&mut self) -> Result<(), ControlError> {
        if self.running {
            return Ok(());
        }
        let epoch = self.shared.channel_start()?;
        if epoch != self.epoch {
            // The device was restarted: its ring indices begin at zero again.
            self.idx_off = self.next.get() as u16;
            self.epoch = epoch;
        }
        self.running = true;
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ControlError> {
        if !self.running {
            return Ok(());
        }
        self.drain()?;
        self.running = false;
        self.shared.channel_stop()
    }

    async fn map_memory(&mut self, addr: usize, len: usize) -> Result<(), ControlError> {
        self.map(addr as *mut u8, len, true)
    }

    async fn unmap_memory(&mut self, addr: usize, len: usize) -> Result<(), ControlError> {
        self.map(addr as *mut u8, len, false)
    }
}

impl Drop for DmadevEngine {
    fn drop(&mut self) {
        if self.running {
            // Nothing the device does may touch the caller's memory after the engine is gone.
            let _ = self.drain();
            self.running = false;
            let _ = self.shared.channel_stop();
        }
        if let Some(q) = self.q.take() {
            self.shared.release(self.vchan, q);
        }
    }
}
