//! vswitch-datapath: the vhost datapath of the copy-engine project.
//!
//! A virtual switch's PMD thread serves virtio-net guests through vhost: it takes buffers from the
//! guest's virtqueues, copies packet bytes between them and host packet buffers through a
//! [`copy_engine::Channel`] (memcpy, a worker thread, or a DPDK dmadev), never waiting for a copy,
//! and returns the buffers on the used ring once the copies are done, in order.
//!
//! The source tree has one folder per room:
//!
//! - [`mem`]: guest memory regions and checked translation of guest addresses to host segments;
//!   the dirty log ([`mem::dirty`]) and SIGBUS survival ([`mem::sigbus`]).
//! - [`virtio`]: the VIRTIO 1.x virtqueues, device side, split and packed: descriptors, chains
//!   (direct and indirect), avail/used rings or the packed descriptor ring with its wrap counters,
//!   event idx / event suppression, the broken-queue state for hostile guests; the virtio-net
//!   header ([`virtio::net`]).
//! - [`vhost`]: asynchronous northbound (host -> guest) and southbound (guest -> host) paths.
//! - [`switch`]: what a PMD thread runs: packet buffers, the port trait, the vhost port, the
//!   benchmark end points, MAC learning and L2 forwarding, the PMD loop.
//! - [`vhost_user`]: the vhost-user backend (one socket and control thread per port).
//! - `guest` (feature `test-utils`): the driver side, in-process guests and a traffic port for
//!   tests, benches and the PVP demo; not part of a switch a user runs.
//! - `src/bin`: the `vswitch` switch and the `pvp` demo.
//!
//! The old flat module paths (`memory`, `pmd`, `testguest`, ...) remain as re-exports.
//!
//! The guest is untrusted: every guest address and ring value is checked; a violation is a typed
//! error and a broken queue, never undefined behaviour, a panic, or a write outside guest memory.
//! `unsafe` code lives only in `mem::access` (guest mappings), [`mem::sigbus`] (surviving a guest file
//! that shrinks under its mapping), [`switch::pool`] (packet buffer memory), [`switch::xring`] (the
//! cross-PMD ring's slots), `vhost_user::wire` (the socket's
//! file-descriptor passing) and `vhost::copy` (handing guest segments to a copy engine, called
//! once each from the north and south paths).

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "test-utils")]
pub mod guest;
pub mod mem;
pub mod switch;
pub mod vhost;
pub mod vhost_user;
pub mod virtio;

// The flat paths of before the folders, kept so that code written against them still builds.
#[cfg(feature = "test-utils")]
pub use guest::{loopguest, testguest, traffic};
pub use mem as memory;
pub use mem::{dirty, sigbus};
pub use switch::{null_port, pmd, pool, port, vhost_port};
pub use virtio::net;

pub use dirty::DirtyLog;
pub use memory::{GuestMemory, GuestRegion, HostSeg, MemoryConfigError, MemoryError, RegionHint};
pub use net::{net_hdr_len, NetHdr, NetHdrRepr};
pub use virtio::chain::{DescChain, RunEnd, SingleBuf, Take};
pub use virtio::error::{QueueConfigError, VirtqError};
pub use virtio::packed::PackedQueue;
pub use virtio::queue::Virtqueue;
pub use virtio::split::{AvailMark, QueueConfig, SplitQueue};
pub use virtio::RingFeatures;

pub use null_port::{RemovedPort, SinkPort, SourcePort};
pub use pmd::{Pmd, PmdStats};
pub use pool::{Packet, PacketPool, HEADROOM};
pub use port::{Port, PortCtx, PortStats};
pub use switch::l2::{L2Stats, LearningConfig};
pub use switch::mac_table::{MacEntry, MacTable};
#[cfg(feature = "test-utils")]
pub use traffic::{TrafficConfig, TrafficError, TrafficPort};
pub use vhost::{Burst, Northbound, Notifier, QueueStats, Southbound, VhostError, BURST};
pub use vhost_port::{DetachMode, DetachedBases, PortCommand, VhostPort};
