//! Minimal bindings to the system's libdpdk: EAL bring-up and dmadev, through a small C shim.
//!
//! dmadev's data-path calls (`rte_dma_copy`, `rte_dma_submit`, `rte_dma_completed`,
//! `rte_dma_completed_status`, `rte_dma_burst_capacity`) are `static inline` in `rte_dmadev.h`, so
//! they cannot be linked to directly; `shim/ce_shim.c` wraps them, and wraps the control path in
//! small flat structs defined here ([`ce_dma_info`], [`ce_dma_stats`]) so that nothing on the Rust
//! side depends on DPDK's own struct layouts. No bindgen: the declarations below are written by hand
//! and must match the shim. The constants mirrored from DPDK are checked at compile time by
//! `_Static_assert`s in the shim.
//!
//! Everything here exists only with the `link` feature, which finds DPDK with pkg-config (the
//! build fails with instructions when it is not installed). Without it the crate is empty, so a
//! workspace build needs no DPDK. Safe wrappers live in `copy-engine-dmadev`.
//!
//! Linking: the DPDK libraries are shared objects; drivers such as `dma_skeleton`, `dma_idxd` and
//! `dma_ioat` are plugins that EAL loads at `rte_eal_init` from its driver directory (Debian:
//! `/usr/lib/<triplet>/dpdk/pmds-<abi>`, `RTE_EAL_PMD_PATH`), or from `-d <path>` arguments.

#![no_std]
#![deny(missing_docs)]
#![allow(non_camel_case_types)]

#[cfg(feature = "link")]
mod bindings {
    use core::ffi::{c_char, c_int};

    /// Capability bit: memory-to-memory transfers (`RTE_DMA_CAPA_MEM_TO_MEM`).
    pub const RTE_DMA_CAPA_MEM_TO_MEM: u64 = 1 << 0;
    /// Capability bit: shared virtual addressing, IOVA = VA (`RTE_DMA_CAPA_SVA`).
    pub const RTE_DMA_CAPA_SVA: u64 = 1 << 4;
    /// Capability bit: silent mode, no completions reported (`RTE_DMA_CAPA_SILENT`).
    pub const RTE_DMA_CAPA_SILENT: u64 = 1 << 5;
    /// Capability bit: the device handles errors itself (`RTE_DMA_CAPA_HANDLES_ERRORS`).
    pub const RTE_DMA_CAPA_HANDLES_ERRORS: u64 = 1 << 6;
    /// Capability bit: copy ops (`RTE_DMA_CAPA_OPS_COPY`).
    pub const RTE_DMA_CAPA_OPS_COPY: u64 = 1 << 32;
    /// Capability bit: fill ops (`RTE_DMA_CAPA_OPS_FILL`).
    pub const RTE_DMA_CAPA_OPS_FILL: u64 = 1 << 34;

    /// Op flag: fence (`RTE_DMA_OP_FLAG_FENCE`).
    pub const RTE_DMA_OP_FLAG_FENCE: u64 = 1 << 0;
    /// Op flag: ring the doorbell after this op (`RTE_DMA_OP_FLAG_SUBMIT`).
    pub const RTE_DMA_OP_FLAG_SUBMIT: u64 = 1 << 1;
    /// Op flag: write the destination into the last-level cache (`RTE_DMA_OP_FLAG_LLC`).
    pub const RTE_DMA_OP_FLAG_LLC: u64 = 1 << 2;

    /// `enum rte_dma_status_code` values, in DPDK's order.
    pub mod status {
        /// The op completed successfully.
        pub const SUCCESSFUL: u32 = 0;
        /// Aborted by the user (device stop).
        pub const USER_ABORT: u32 = 1;
        /// Not attempted (after a failed op and a fence).
        pub const NOT_ATTEMPTED: u32 = 2;
        /// Invalid source address.
        pub const INVALID_SRC_ADDR: u32 = 3;
        /// Invalid destination address.
        pub const INVALID_DST_ADDR: u32 = 4;
        /// Invalid source or destination address.
        pub const INVALID_ADDR: u32 = 5;
        /// Invalid length.
        pub const INVALID_LENGTH: u32 = 6;
        /// Invalid opcode.
        pub const INVALID_OPCODE: u32 = 7;
        /// Bus read error.
        pub const BUS_READ_ERROR: u32 = 8;
        /// Bus write error.
        pub const BUS_WRITE_ERROR: u32 = 9;
        /// Bus error, direction unknown.
        pub const BUS_ERROR: u32 = 10;
        /// Data poison.
        pub const DATA_POISON: u32 = 11;
        /// Descriptor read error.
        pub const DESCRIPTOR_READ_ERROR: u32 = 12;
        /// Device link error.
        pub const DEV_LINK_ERROR: u32 = 13;
        /// Page fault on address lookup.
        pub const PAGE_FAULT: u32 = 14;
        /// Unknown error.
        pub const ERROR_UNKNOWN: u32 = 0x100;
    }

    /// Length of [`ce_dma_info::name`], including the terminating NUL.
    pub const CE_NAME_LEN: usize = 64;

    /// What the shim reports of `struct rte_dma_info`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct ce_dma_info {
        /// `RTE_DMA_CAPA_*` bits.
        pub capa: u64,
        /// Most virtual channels the device supports.
        pub max_vchans: u16,
        /// Most descriptors per virtual channel.
        pub max_desc: u16,
        /// Fewest descriptors per virtual channel.
        pub min_desc: u16,
        /// Virtual channels configured.
        pub nb_vchans: u16,
        /// NUMA node, -1 if unknown.
        pub numa_node: i16,
        /// 1 when the driver implements `completed_status`.
        pub has_completed_status: u8,
        /// Padding.
        pub pad: u8,
        /// Device name, NUL-terminated.
        pub name: [c_char; CE_NAME_LEN],
    }

    impl ce_dma_info {
        /// A zeroed value to pass to [`ce_dma_info`](fn@ce_dma_info).
        pub const ZERO: ce_dma_info = ce_dma_info {
            capa: 0,
            max_vchans: 0,
            max_desc: 0,
            min_desc: 0,
            nb_vchans: 0,
            numa_node: 0,
            has_completed_status: 0,
            pad: 0,
            name: [0; CE_NAME_LEN],
        };
    }

    /// `struct rte_dma_stats`, copied field by field.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct ce_dma_stats {
        /// Ops submitted to the hardware.
        pub submitted: u64,
        /// Ops completed, successful or failed.
        pub completed: u64,
        /// Ops that failed.
        pub errors: u64,
    }

    extern "C" {
        /// `rte_eal_init`. `argv` may be permuted; its strings must outlive the process's EAL.
        pub fn ce_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
        /// `rte_eal_cleanup`.
        pub fn ce_eal_cleanup() -> c_int;
        /// The calling thread's `rte_errno`.
        pub fn ce_errno() -> c_int;
        /// `rte_strerror`: a static or thread-local NUL-terminated message.
        pub fn ce_strerror(code: c_int) -> *const c_char;
        /// 1 when EAL runs in IOVA-as-VA mode.
        pub fn ce_eal_iova_is_va() -> c_int;
        /// `rte_vfio_container_dma_map` on the default container.
        pub fn ce_vfio_dma_map(va: u64, iova: u64, len: u64) -> c_int;
        /// `rte_vfio_container_dma_unmap` on the default container.
        pub fn ce_vfio_dma_unmap(va: u64, iova: u64, len: u64) -> c_int;

        /// `rte_dma_count_avail`.
        pub fn ce_dma_count() -> u16;
        /// `rte_dma_next_dev`: the first valid id at or after `start`, or -1.
        pub fn ce_dma_next(start: i16) -> i16;
        /// `rte_dma_get_dev_id_by_name`: an id, or a negative errno.
        pub fn ce_dma_id_by_name(name: *const c_char) -> c_int;
        /// `rte_dma_info_get`, flattened.
        pub fn ce_dma_info(dev: i16, out: *mut ce_dma_info) -> c_int;
        /// `rte_dma_configure` with `nb_vchans` channels, silent mode off.
        pub fn ce_dma_configure(dev: i16, nb_vchans: u16) -> c_int;
        /// `rte_dma_vchan_setup` for a memory-to-memory channel of `nb_desc` descriptors.
        pub fn ce_dma_vchan_setup(dev: i16, vchan: u16, nb_desc: u16) -> c_int;
        /// `rte_dma_start`.
        pub fn ce_dma_start(dev: i16) -> c_int;
        /// `rte_dma_stop`.
        pub fn ce_dma_stop(dev: i16) -> c_int;
        /// `rte_dma_close` (the device is released and cannot be configured again).
        pub fn ce_dma_close(dev: i16) -> c_int;
        /// `rte_dma_stats_get`.
        pub fn ce_dma_stats_get(dev: i16, vchan: u16, out: *mut ce_dma_stats) -> c_int;
        /// `rte_dma_stats_reset`.
        pub fn ce_dma_stats_reset(dev: i16, vchan: u16) -> c_int;

        /// `rte_dma_copy`: a ring index (0..=65535) or a negative errno (`-ENOSPC`: ring full).
        pub fn ce_dma_copy(dev: i16, vchan: u16, src: u64, dst: u64, len: u32, flags: u64) -> c_int;
        /// Enqueues up to `n` copies, stopping at the first refusal (its code in `*err`); rings
        /// the doorbell once when `submit` is non-zero. Returns how many were enqueued and the
        /// first one's ring index in `*first_idx`.
        pub fn ce_dma_copy_burst(
            dev: i16,
            vchan: u16,
            src: *const u64,
            dst: *const u64,
            len: *const u32,
            n: u16,
            flags: u64,
            submit: c_int,
            first_idx: *mut u16,
            err: *mut c_int,
        ) -> u16;
        /// `rte_dma_submit`.
        pub fn ce_dma_submit(dev: i16, vchan: u16) -> c_int;
        /// `rte_dma_completed`: successful completions up to the first failure.
        pub fn ce_dma_completed(dev: i16, vchan: u16, n: u16, last_idx: *mut u16, has_error: *mut u8) -> u16;
        /// `rte_dma_completed_status`: up to `n` completions with their status codes.
        pub fn ce_dma_completed_status(dev: i16, vchan: u16, n: u16, last_idx: *mut u16, status: *mut u32) -> u16;
        /// `rte_dma_burst_capacity`.
        pub fn ce_dma_burst_capacity(dev: i16, vchan: u16) -> u16;
        /// Benchmark baseline: `n` copies of `size` bytes in bursts of `burst`, polled to the end;
        /// returns `n` or a negative errno.
        pub fn ce_bench_copy_loop(dev: i16, vchan: u16, src: u64, dst: u64, size: u32, n: u64, burst: u16) -> i64;
    }
}

#[cfg(feature = "link")]
pub use bindings::*;
