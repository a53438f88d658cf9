//! DPDK dmadev backend for [`copy_engine`]: Intel DSA (idxd), IOAT/CBDMA, and DPDK's
//! `dma_skeleton` software device, behind the `CopyEngine` contract.
//!
//! **Everything here is behind the `dmadev` cargo feature**, which needs the system DPDK (>= 21.11,
//! found with pkg-config; Debian/Ubuntu: `apt-get install libdpdk-dev`). Without the feature this
//! crate is empty, so a workspace build needs no DPDK:
//!
//! ```text
//! cargo test --workspace                                  # no DPDK needed
//! cargo test -p copy-engine-dmadev --features dmadev      # builds the shim, runs dma_skeleton tests
//! ```
//!
//! # What it offers (feature `dmadev`)
//!
//! - `EalBuilder` / `Eal`: DPDK's EAL started once per process, with typed errors carrying DPDK's
//!   message, cleaned up when the last handle drops.
//! - `DmadevDevice`: a dmadev opened by name or id, configured with one or more vchans.
//! - `DmadevEngine`: one vchan as a `copy_engine::CopyEngine` + `copy_engine::EngineControl`.
//!   `u64` tickets map onto dmadev's wrapping `u16` ring indices; completions are reaped in order
//!   with `rte_dma_completed`, and failures with their status through `rte_dma_completed_status`.
//!
//! ```no_run
//! # #[cfg(feature = "dmadev")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use copy_engine::{Channel, Policy};
//! use copy_engine_dmadev::{DmadevEngine, EalBuilder};
//!
//! // No hardware: DPDK's software DMA device, plain memory, no PCI scan.
//! let eal = EalBuilder::skeleton().init()?;
//! let engine = DmadevEngine::open(&eal, "dma_skeleton0", 1024)?;
//! let channel = Channel::new(engine, Policy::default().with_cpu_below(256));
//! # let _ = channel; Ok(()) }
//! # #[cfg(not(feature = "dmadev"))] fn main() {}
//! ```
//!
//! # Devices and their names
//!
//! Nothing in this crate has been tested on real DMA hardware: only on `dma_skeleton`. What
//! follows is how DPDK names and binds the Intel devices; the crate treats them as any dmadev.
//!
//! - **`dma_skeleton`** (software, any machine): `--vdev=dma_skeleton0` (optionally
//!   `dma_skeleton0,lcore=N` to pin its copy thread). Name `dma_skeleton0`. Has SVA.
//! - **Intel DSA through the kernel idxd driver** (recommended): configure a *user* work queue with
//!   `accel-config` (e.g. `accel-config config-wq dsa0/wq0.0 --type=user --name=dpdk_app
//!   --mode=dedicated ...`, `accel-config enable-device dsa0`, `accel-config enable-wq dsa0/wq0.0`).
//!   DPDK's idxd driver finds the `/dev/dsa/wq0.0` queues whose name starts with `dpdk_` (or the
//!   EAL file prefix) and names the dmadev after the queue, `wq0.0`. The kernel driver gives SVA
//!   (PASID), so no memory mapping is needed.
//! - **Intel DSA on vfio-pci**: `dpdk-devbind.py -b vfio-pci 0000:6a:01.0`; the PCI device is split
//!   into work queues named `0000:6a:01.0-q0`, `-q1`, ... (devarg `max_queues=N`). No SVA: start EAL
//!   with `--iova-mode=va` and register memory with `EngineControl::map_memory`.
//! - **IOAT / CBDMA** (Skylake to Sapphire Rapids): each channel is a PCI function; bind with
//!   `dpdk-devbind.py -b vfio-pci 0000:00:04.0` and open it by that PCI address. No SVA (as above).
//!
//! PCI devices need EAL's PCI scan (leave `no_pci` off; restrict with `EalBuilder::allow`) and
//! usually hugepages. The drivers are plugins EAL loads from its driver directory
//! (`RTE_EAL_PMD_PATH`, Debian: `/usr/lib/<triplet>/dpdk/pmds-<abi>`) or from `-d <lib>` arguments.
//!
//! # Threads
//!
//! A channel belongs to one thread. A device with several vchans serves several threads: open it
//! with `DmadevDevice::open(&eal, name, DeviceConfig { vchans: k, .. })` and hand vchan `i`'s engine
//! (`device.channel(i)`) to thread `i`. dmadev starts and stops whole devices, so the device runs
//! while any of its channels does.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn, unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "dmadev")]
pub mod device;
#[cfg(feature = "dmadev")]
pub mod eal;
#[cfg(feature = "dmadev")]
pub mod engine;
#[cfg(feature = "dmadev")]
mod ffi;

#[cfg(feature = "dmadev")]
pub use device::{list_devices, DeviceConfig, DeviceInfo, DeviceSelector, DmadevDevice};
#[cfg(feature = "dmadev")]
pub use eal::{Eal, EalBuilder, EalError};
#[cfg(feature = "dmadev")]
pub use engine::{DeviceStats, DmadevEngine};
