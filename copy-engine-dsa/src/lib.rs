//! Intel Data Streaming Accelerator (DSA) backend for [`copy_engine`], directly on the Linux idxd
//! user-space interface: no DPDK.
//!
//! - [`sysfs`]: work-queue discovery (`/sys/bus/dsa/devices/wqN.M`: mode, size, transfer and batch
//!   limits, type `user`, state), from a configurable root.
//! - [`cpu`]: CPUID detection of MOVDIR64B (dedicated WQs) and ENQCMD (shared WQs).
//! - [`desc`]: the 64-byte descriptor and 32-byte completion record (`include/uapi/linux/idxd.h`).
//! - [`portal`]: the [`Portal`] trait, and the hardware portal: `/dev/dsa/wqN.M` opened and its
//!   page mapped, descriptors written with MOVDIR64B or ENQCMD.
//! - [`model`]: a software device standing where the portal and the device stand, with fault
//!   injection, so everything above the portal runs in CI.
//! - [`engine`]: [`DsaEngine`], the `CopyEngine` over any [`Portal`]: a ring of descriptors and
//!   completion records, bursts as batch descriptors, in-order reaping, page faults finished on
//!   the CPU, other errors reported with their ticket.
//!
//! ```no_run
//! use copy_engine::{Channel, Policy};
//! use copy_engine_dsa::{DsaConfig, DsaEngine, ModelConfig};
//!
//! // Hardware: a user WQ configured with accel-config (see the crate README).
//! let hw = DsaEngine::open("wq0.0", DsaConfig::default());
//! // No hardware: the device model.
//! let model = DsaEngine::model(ModelConfig::default(), DsaConfig::default()).unwrap();
//! let channel = Channel::new(model, Policy::default());
//! # let _ = (hw, channel);
//! ```
//!
//! `unsafe` lives in [`portal`] (MMIO mapping, MOVDIR64B/ENQCMD), in [`model`] (the device
//! thread dereferencing descriptor addresses, as hardware does) and in [`engine`] (the trait's
//! `unsafe fn enqueue`, the portal call, the CPU finishing a page-faulted copy). Each block says
//! why it holds.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn, unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cpu;
pub mod desc;
pub mod engine;
pub mod error;
pub mod model;
pub mod portal;
pub mod sysfs;

pub use engine::{BatchPolicy, DsaConfig, DsaEngine, DsaStats};
pub use error::DsaError;
pub use model::{ModelConfig, ModelCounters, ModelFaults, ModelHandle, ModelPortal};
pub use portal::{HwPortal, Portal, Retry};
pub use sysfs::{WqInfo, WqMode};
