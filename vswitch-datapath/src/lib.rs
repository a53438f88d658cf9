//! vswitch-datapath: the vhost datapath of the copy-engine project, lower layers.
//!
//! A virtual switch's PMD thread serves virtio-net guests through vhost: it takes buffers from the
//! guest's virtqueues, copies packet bytes between them and host packet buffers (later through a
//! `copy_engine::CopyEngine`), and returns them on the used ring. This crate holds the parts that
//! know no copy engine yet:
//!
//! - [`memory`]: guest memory regions and checked translation of guest addresses to host segments.
//! - [`virtio`]: the VIRTIO 1.x split virtqueue, device side: descriptors, chains (direct and
//!   indirect), avail/used rings, event idx, the broken-queue state for hostile guests.
//! - [`net`]: the virtio-net header.
//! - `testguest` (feature `test-utils`): the driver side, an in-process guest for tests and benches.
//!
//! The guest is untrusted: every guest address and ring value is checked; a violation is a typed
//! error and a broken queue, never undefined behaviour, a panic, or a write outside guest memory.
//! `unsafe` code lives only in the `access` module.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod access;
pub mod memory;
pub mod net;
#[cfg(feature = "test-utils")]
pub mod testguest;
pub mod virtio;

pub use memory::{GuestMemory, GuestRegion, HostSeg, MemoryConfigError, MemoryError, RegionHint};
pub use net::{net_hdr_len, NetHdr, NetHdrRepr};
pub use virtio::chain::DescChain;
pub use virtio::error::{QueueConfigError, VirtqError};
pub use virtio::split::{AvailMark, QueueConfig, SplitQueue};
pub use virtio::RingFeatures;
