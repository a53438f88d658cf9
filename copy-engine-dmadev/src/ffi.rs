//! The only module that calls into DPDK: thin wrappers over `dpdk-sys`'s shim.
//!
//! It owns the translation of C conventions (negative errno returns, `rte_errno`, NUL-terminated
//! names) into Rust values, and the [`Vchan`] token that the data path goes through. It knows
//! nothing of tickets, policy or the `CopyEngine` contract.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, CStr, CString};

use dpdk_sys as sys;

pub(crate) use sys::status;
pub(crate) use sys::{
    RTE_DMA_CAPA_MEM_TO_MEM, RTE_DMA_CAPA_OPS_COPY, RTE_DMA_CAPA_OPS_FILL, RTE_DMA_CAPA_SVA, RTE_DMA_OP_FLAG_FENCE,
    RTE_DMA_OP_FLAG_LLC, RTE_DMA_OP_FLAG_SUBMIT,
};

/// `ENOSPC`: dmadev's "ring full".
pub(crate) const ENOSPC: i32 = 28;
/// `ENOTSUP`.
pub(crate) const ENOTSUP: i32 = 95;

/// DPDK's message for an error code (`rte_strerror`, which also knows DPDK's own codes).
pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror accepts any code and returns a NUL-terminated string in static or
    // thread-local storage, which is copied out before anything else runs on this thread.
    unsafe { CStr::from_ptr(sys::ce_strerror(code.abs())) }.to_string_lossy().into_owned()
}

/// The calling thread's `rte_errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: reads a thread-local integer; no preconditions.
    unsafe { sys::ce_errno() }
}

/// Runs `rte_eal_init` with `args` (program name first). The strings are leaked: EAL may keep
/// pointers into its argv for the life of the process.
pub(crate) fn eal_init(args: Vec<CString>) -> Result<(), i32> {
    let argv: Vec<*mut c_char> = args.into_iter().map(|a| a.into_raw()).collect();
    let argv: &'static mut [*mut c_char] = Vec::leak(argv);
    // SAFETY: argv holds argc valid, NUL-terminated, leaked (hence never freed) strings; EAL may
    // permute the pointer array, which is ours and leaked too. The caller (eal.rs) serialises
    // calls under its process-wide lock, and EAL refuses a second init by itself.
    let rc = unsafe { sys::ce_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Runs `rte_eal_cleanup`; a negative errno on failure.
pub(crate) fn eal_cleanup() -> i32 {
    // SAFETY: called once, by the last EAL handle's drop, when no engine (each holds a handle)
    // exists any more.
    unsafe { sys::ce_eal_cleanup() }
}

/// True when EAL runs in IOVA-as-VA mode.
pub(crate) fn iova_is_va() -> bool {
    // SAFETY: reads EAL's configuration; only called with EAL initialised (an `Eal` exists).
    unsafe { sys::ce_eal_iova_is_va() != 0 }
}

/// Maps `[va, va + len)` at IOVA `va` in the default VFIO container.
pub(crate) fn vfio_map(va: u64, len: u64, map: bool) -> i32 {
    // SAFETY: only asks the kernel to (un)map a range in the IOMMU; no Rust memory is accessed. A
    // bad range is refused with an error code.
    unsafe {
        if map {
            sys::ce_vfio_dma_map(va, va, len)
        } else {
            sys::ce_vfio_dma_unmap(va, va, len)
        }
    }
}

/// Ids of every dmadev, in order.
pub(crate) fn dma_ids() -> Vec<i16> {
    let mut ids = Vec::new();
    let mut next = 0i16;
    loop {
        // SAFETY: rte_dma_next_dev validates its argument and only reads the device table.
        let id = unsafe { sys::ce_dma_next(next) };
        if id < 0 {
            return ids;
        }
        ids.push(id);
        match id.checked_add(1) {
            Some(n) => next = n,
            None => return ids,
        }
    }
}

/// The id of the device named `name`.
pub(crate) fn dma_id_by_name(name: &str) -> Option<i16> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let id = unsafe { sys::ce_dma_id_by_name(c.as_ptr()) };
    i16::try_from(id).ok().filter(|&id| id >= 0)
}

/// What the shim reports of one device.
#[derive(Clone, Debug)]
pub(crate) struct RawInfo {
    pub name: String,
    pub capa: u64,
    pub max_vchans: u16,
    pub min_desc: u16,
    pub max_desc: u16,
    pub numa_node: i16,
    pub has_completed_status: bool,
}

/// `rte_dma_info_get` for `dev`.
pub(crate) fn dma_info(dev: i16) -> Result<RawInfo, i32> {
    let mut out = sys::ce_dma_info::ZERO;
    // SAFETY: `out` is a valid, writable ce_dma_info; the shim validates `dev`.
    let rc = unsafe { sys::ce_dma_info(dev, &mut out) };
    if rc < 0 {
        return Err(rc);
    }
    // SAFETY: the shim always NUL-terminates `name` (it is zeroed, then at most len-1 bytes copied).
    let name = unsafe { CStr::from_ptr(out.name.as_ptr()) }.to_string_lossy().into_owned();
    Ok(RawInfo {
        name,
        capa: out.capa,
        max_vchans: out.max_vchans,
        min_desc: out.min_desc,
        max_desc: out.max_desc,
        numa_node: out.numa_node,
        has_completed_status: out.has_completed_status != 0,
    })
}

/// `rte_dma_configure(dev, nb_vchans)`.
pub(crate) fn dma_configure(dev: i16, nb_vchans: u16) -> i32 {
    // SAFETY: control-path call; DPDK validates `dev` and refuses a running device.
    unsafe { sys::ce_dma_configure(dev, nb_vchans) }
}

/// `rte_dma_start(dev)`.
pub(crate) fn dma_start(dev: i16) -> i32 {
    // SAFETY: control-path call; DPDK validates `dev` and the device's configuration.
    unsafe { sys::ce_dma_start(dev) }
}

/// `rte_dma_stop(dev)`.
pub(crate) fn dma_stop(dev: i16) -> i32 {
    // SAFETY: control-path call; DPDK validates `dev`. Callers stop only when no op is in flight.
    unsafe { sys::ce_dma_stop(dev) }
}

/// One configured virtual channel of a device: the data path's handle.
///
/// Made only by [`Vchan::setup`], after `rte_dma_vchan_setup` accepted `(dev, vchan)`. The device
/// module keeps the device configured (never reconfigured or closed) while a `Vchan` exists, which
/// is what makes the data-path wrappers below sound to call with its ids.
#[derive(Debug)]
pub(crate) struct Vchan {
    dev: i16,
    vchan: u16,
}

impl Vchan {
    /// `rte_dma_vchan_setup` of a memory-to-memory channel with `nb_desc` descriptors.
    pub(crate) fn setup(dev: i16, vchan: u16, nb_desc: u16) -> Result<Vchan, i32> {
        // SAFETY: control-path call; DPDK validates dev, vchan and nb_desc and returns an error.
        let rc = unsafe { sys::ce_dma_vchan_setup(dev, vchan, nb_desc) };
        if rc < 0 {
            Err(rc)
        } else {
            Ok(Vchan { dev, vchan })
        }
    }

    /// Enqueues one copy of IOVAs; returns the ring index or a negative errno.
    ///
    /// # Safety
    ///
    /// The device reads `len` bytes at `src` and writes `len` bytes at `dst` until the op
    /// completes: both must be IOVAs of memory valid for that access until then (the
    /// `CopyEngine::enqueue` contract).
    #[inline]
    pub(crate) unsafe fn copy(&self, src: u64, dst: u64, len: u32, flags: u64) -> i32 {
        // SAFETY: (dev, vchan) is configured (type invariant); the memory contract is the caller's.
        unsafe { sys::ce_dma_copy(self.dev, self.vchan, src, dst, len, flags) }
    }

    /// Enqueues a burst; returns (enqueued, first ring index, refusal code or 0).
    ///
    /// # Safety
    ///
    /// As [`copy`](Self::copy), for every op; the three slices have the same length <= 65535.
    #[inline]
    pub(crate) unsafe fn copy_burst(
        &self,
        src: &[u64],
        dst: &[u64],
        len: &[u32],
        flags: u64,
        submit: bool,
    ) -> (u16, u16, i32) {
        debug_assert!(src.len() == dst.len() && dst.len() == len.len() && len.len() <= u16::MAX as usize);
        let (mut first, mut err) = (0u16, 0 as c_int);
        // SAFETY: the slices are valid for `n` reads each (same length, checked by the caller);
        // (dev, vchan) is configured; the memory contract of each op is the caller's.
        let n = unsafe {
            sys::ce_dma_copy_burst(
                self.dev,
                self.vchan,
                src.as_ptr(),
                dst.as_ptr(),
                len.as_ptr(),
                len.len() as u16,
                flags,
                submit as c_int,
                &mut first,
                &mut err,
            )
        };
        (n, first, err)
    }

    /// Rings the doorbell.
    #[inline]
    pub(crate) fn submit(&self) {
        // SAFETY: (dev, vchan) is configured (type invariant); submitting touches only the ring.
        unsafe { sys::ce_dma_submit(self.dev, self.vchan) };
    }

    /// `rte_dma_completed`: (successful completions, last ring index, an error follows them).
    #[inline]
    pub(crate) fn completed(&self, n: u16) -> (u16, u16, bool) {
        let (mut last, mut err) = (0u16, 0u8);
        // SAFETY: (dev, vchan) is configured (type invariant); the out-pointers are locals.
        let done = unsafe { sys::ce_dma_completed(self.dev, self.vchan, n, &mut last, &mut err) };
        (done, last, err != 0)
    }

    /// `rte_dma_completed_status` into `status` (at most its length, <= 65535): (completions,
    /// last ring index).
    #[inline]
    pub(crate) fn completed_status(&self, status: &mut [u32]) -> (u16, u16) {
        let n = status.len().min(u16::MAX as usize) as u16;
        let mut last = 0u16;
        // SAFETY: `status` is writable for `n` u32 (the shim checks enum rte_dma_status_code is 32
        // bits); (dev, vchan) is configured, and the device was checked at open to implement
        // completed_status.
        let done = unsafe { sys::ce_dma_completed_status(self.dev, self.vchan, n, &mut last, status.as_mut_ptr()) };
        (done, last)
    }

    /// `rte_dma_burst_capacity`.
    #[inline]
    pub(crate) fn burst_capacity(&self) -> u16 {
        // SAFETY: (dev, vchan) is configured (type invariant); reads ring state only.
        unsafe { sys::ce_dma_burst_capacity(self.dev, self.vchan) }
    }

    /// `rte_dma_stats_get`: (submitted, completed, errors).
    pub(crate) fn stats(&self) -> Result<(u64, u64, u64), i32> {
        let mut st = sys::ce_dma_stats::default();
        // SAFETY: `st` is a valid, writable ce_dma_stats; DPDK validates dev and vchan.
        let rc = unsafe { sys::ce_dma_stats_get(self.dev, self.vchan, &mut st) };
        if rc < 0 {
            Err(rc)
        } else {
            Ok((st.submitted, st.completed, st.errors))
        }
    }

    /// `rte_dma_stats_reset`.
    pub(crate) fn reset_stats(&self) -> i32 {
        // SAFETY: control-path call; DPDK validates dev and vchan.
        unsafe { sys::ce_dma_stats_reset(self.dev, self.vchan) }
    }

    /// The raw C benchmark loop ([`crate::bench`]): `n` copies of `size` bytes, bursts of `burst`.
    ///
    /// Every op of the loop has completed when it returns (on errors too), so borrowed buffers
    /// suffice. `size` must be at most both slices' length.
    pub(crate) fn bench_loop(&self, src: &[u8], dst: &mut [u8], size: u32, n: u64, burst: u16) -> i64 {
        assert!(size as usize <= src.len() && size as usize <= dst.len());
        // SAFETY: `src` and `dst` are valid, disjoint (shared vs exclusive borrow) buffers of at
        // least `size` bytes for the whole call, and the shim returns only after every op it
        // enqueued has completed; IOVA = VA holds for every channel this crate opens (checked at
        // open); (dev, vchan) is configured.
        unsafe {
            sys::ce_bench_copy_loop(self.dev, self.vchan, src.as_ptr() as u64, dst.as_mut_ptr() as u64, size, n, burst)
        }
    }
}
