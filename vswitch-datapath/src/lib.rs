//! vswitch-datapath: the vhost datapath of the copy-engine project.
//!
//! A virtual switch's PMD thread serves virtio-net guests through vhost: it takes buffers from the
//! guest's virtqueues, copies packet bytes between them and host packet buffers through a
//! [`copy_engine::Channel`] (memcpy, a worker thread, or a DPDK dmadev), never waiting for a copy,
//! and returns the buffers on the used ring once the copies are done, in order.
//!
//! - [`memory`]: guest memory regions and checked translation of guest addresses to host segments.
//! - [`virtio`]: the VIRTIO 1.x virtqueues, device side, split and packed: descriptors, chains
//!   (direct and indirect), avail/used rings or the packed descriptor ring with its wrap counters,
//!   event idx / event suppression, the broken-queue state for hostile guests.
//! - [`net`]: the virtio-net header.
//! - [`vhost`]: asynchronous northbound (host -> guest) and southbound (guest -> host) paths.
//! - [`pool`], [`port`], [`pmd`]: packet buffers, the port trait, the PMD loop; [`vhost_port`] and
//!   [`traffic`] are ports (a guest's queue pair; a traffic source/sink); [`null_port`] has the
//!   benchmark end points (a counting sink, a header-only source).
//! - [`vhost_user`]: the vhost-user backend (one socket and control thread per port).
//! - `testguest`, `loopguest` (feature `test-utils`): the driver side, an in-process guest for
//!   tests, benches and the PVP demo.
//!
//! The guest is untrusted: every guest address and ring value is checked; a violation is a typed
//! error and a broken queue, never undefined behaviour, a panic, or a write outside guest memory.
//! `unsafe` code lives only in `access` (guest mappings), [`sigbus`] (surviving a guest file that
//! shrinks under its mapping), [`pool`] (packet buffer memory), `vhost_user::wire` (the socket's
//! file-descriptor passing) and `vhost::copy` (handing guest segments to a copy engine, called
//! once each from the north and south paths).

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod access;
pub mod dirty;
#[cfg(feature = "test-utils")]
pub mod loopguest;
pub mod memory;
pub mod net;
pub mod null_port;
pub mod pmd;
#[allow(unsafe_code)]
pub mod pool;
pub mod port;
pub mod sigbus;
#[cfg(feature = "test-utils")]
pub mod testguest;
pub mod traffic;
pub mod vhost;
pub mod vhost_port;
pub mod vhost_user;
pub mod virtio;

pub use dirty::DirtyLog;
pub use memory::{GuestMemory, GuestRegion, HostSeg, MemoryConfigError, MemoryError, RegionHint};
pub use net::{net_hdr_len, NetHdr, NetHdrRepr};
pub use virtio::chain::DescChain;
pub use virtio::error::{QueueConfigError, VirtqError};
pub use virtio::packed::PackedQueue;
pub use virtio::queue::Virtqueue;
pub use virtio::split::{AvailMark, QueueConfig, SplitQueue};
pub use virtio::RingFeatures;

pub use null_port::{SinkPort, SourcePort};
pub use pmd::{Pmd, PmdStats};
pub use pool::{Packet, PacketPool, HEADROOM};
pub use port::{Port, PortCtx, PortStats};
pub use traffic::{TrafficConfig, TrafficError, TrafficPort};
pub use vhost::{Burst, Northbound, Notifier, QueueStats, Southbound, VhostError, BURST};
pub use vhost_port::{DetachMode, DetachedBases, PortCommand, VhostPort};
