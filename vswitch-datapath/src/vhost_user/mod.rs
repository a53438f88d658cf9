//! A vhost-user backend (the device side of the vhost-user protocol, as QEMU and DPDK's
//! virtio-user speak it): one Unix socket per [`VhostPort`](crate::VhostPort), up to
//! `max_queue_pairs` guest queue pairs each (virtio-net multiqueue).
//!
//! The protocol itself (framing, file descriptors, replies, REPLY_ACK) is rust-vmm's `vhost` crate
//! ([`vhost::vhost_user::BackendReqHandler`]); this module owns what the requests *mean* for our
//! datapath:
//!
//! - [`memtable`]: `SET_MEM_TABLE` regions mapped from the frontend's fds, and the translation of
//!   the frontend's user virtual addresses (what `SET_VRING_ADDR` carries) to guest-physical ones.
//! - [`features`]: the virtio and protocol features we offer, and checking what the frontend acks.
//! - [`device`]: [`VhostUserDevice`], the request handler: ring state per vring, and the handoff of
//!   each ready queue pair to the PMD thread ([`PortCommand::Attach`](crate::PortCommand)) and back
//!   ([`PortCommand::Detach`](crate::PortCommand), which drains or clears in-flight copies).
//! - [`server`]: [`VhostUserServer`], the control thread of one socket: listen, accept, serve
//!   requests, and on disconnect detach, unmap and listen again.
//!
//! # Threads and handoff
//!
//! The control plane never touches a queue the PMD thread serves: it builds the
//! [`Northbound`](crate::Northbound) / [`Southbound`](crate::Southbound) pair and *moves* it to the
//! PMD over an `mpsc` channel, which the PMD checks every few dozen iterations. To change anything
//! under running queues (ring addresses, the memory table, the call fd, a stop, a disconnect) it
//! first asks the PMD to detach them and waits for the answer: by then every copy of the PMD's
//! channel has retired and the queues, with their reference to the guest memory, are dropped. Guest
//! memory is reference-counted, so a region is unmapped only after the last queue using it is gone.
//!
//! This module must not touch rings or payload bytes: that is [`crate::virtio`] and
//! [`crate::vhost`] on the PMD thread.

pub mod device;
pub mod features;
pub mod memtable;
pub mod server;
pub mod session;
pub mod wire;

use std::path::PathBuf;

pub use device::{DeviceConfig, Shard, VhostUserDevice, DEFAULT_MAX_QUEUE_PAIRS};
pub use memtable::{AddressMap, MemTable, UserRegion};
pub use server::VhostUserServer;

use crate::mem::MemoryConfigError;
use crate::virtio::error::QueueConfigError;

/// A vhost-user control-plane failure.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    /// Another process is listening on the socket path.
    #[error("socket {0} is in use: another process is listening on it")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket (it is never removed).
    #[error("{0} exists and is not a Unix socket")]
    NotASocket(PathBuf),
    /// Checking, removing or binding the socket path failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A vring index beyond the queue pairs the port offers (`2 * max_queue_pairs` vrings).
    #[error("vring index {0} is out of range (more queue pairs than the port offers)")]
    BadVring(u32),
    /// A queue size that is zero, not a power of two, or too large.
    #[error("bad vring size {0}")]
    BadRingSize(u32),
    /// A vring base (next avail index) that does not fit the split ring's 16 bits.
    #[error("bad vring base {0}")]
    BadRingBase(u32),
    /// The frontend acked features that were not offered.
    #[error("frontend acked features {0:#x} that were not offered")]
    UnsupportedFeatures(u64),
    /// The frontend acked protocol features that were not offered.
    #[error("frontend acked protocol features {0:#x} that were not offered")]
    UnsupportedProtocolFeatures(u64),
    /// A memory region's user or guest range overflows, or regions overlap in user space.
    #[error("memory region at user address {0:#x} is invalid (overflow or overlap)")]
    BadRegion(u64),
    /// A memory region's fd could not be mapped, or the regions overlap in guest space.
    #[error("memory table: {0}")]
    Memory(#[from] MemoryConfigError),
    /// The memory table has more regions than fds, or fewer.
    #[error("memory table has {regions} regions and {fds} fds")]
    FdCount {
        /// Regions in the message.
        regions: usize,
        /// File descriptors attached.
        fds: usize,
    },
    /// A ring's user address is in no region of the memory table.
    #[error("ring address {0:#x} is not in the frontend's memory table")]
    UnmappedRing(u64),
    /// Rings were configured before any memory table.
    #[error("no memory table yet")]
    NoMemoryTable,
    /// The rings do not fit the memory (misaligned, across regions, bad size).
    #[error("queue setup: {0}")]
    Queue(#[from] QueueConfigError),
    /// Duplicating a call eventfd failed.
    #[error("cannot duplicate the call fd: {0}")]
    CallFd(std::io::Error),
    /// The PMD thread did not answer a detach in time (its queues keep the memory mapped).
    #[error("the PMD thread did not answer a detach within {0:?}")]
    PmdTimeout(std::time::Duration),
    /// The PMD thread is gone.
    #[error("the PMD thread has stopped")]
    PmdGone,
    /// A request's payload does not have the size (or the reserved bits) its type requires.
    #[error("request {request}: malformed payload of {len} bytes")]
    BadPayload {
        /// The request code.
        request: u32,
        /// Payload bytes received.
        len: usize,
    },
    /// A request came with a number of file descriptors it cannot have.
    #[error("request {request}: {got} file descriptors, {want} expected")]
    WrongFds {
        /// The request code.
        request: u32,
        /// Descriptors the request needs.
        want: usize,
        /// Descriptors that came.
        got: usize,
    },
    /// A vring's kick, call or error descriptor is not an eventfd (writing to it could change
    /// whatever file it is, guest memory included).
    #[error("vring {0}: the descriptor is not an eventfd")]
    NotAnEventfd(u32),
    /// `SET_VRING_ENABLE` with a value other than 0 or 1.
    #[error("SET_VRING_ENABLE with value {0} (0 or 1 expected)")]
    BadEnable(u32),
    /// A memory table with no regions or more than [`session::MAX_MEM_REGIONS`].
    #[error("memory table with {0} regions (1..={max})", max = session::MAX_MEM_REGIONS)]
    RegionCount(u32),
    /// A dirty log of size 0, or beyond its file.
    #[error("dirty log of {0} bytes does not fit its file")]
    BadLog(u64),
    /// A request code this backend does not know.
    #[error("unknown request {0}")]
    UnknownRequest(u32),
    /// A request for a protocol feature the frontend did not negotiate.
    #[error("{0:?} needs a protocol feature that was not negotiated")]
    NotNegotiated(vhost::vhost_user::message::FrontendReq),
    /// A request for a feature this backend does not offer.
    #[error("{0:?} needs a feature that is not offered")]
    NotOffered(vhost::vhost_user::message::FrontendReq),
    /// A memory region's fd is smaller than the region it should back (mapping it would fault
    /// on access past end-of-file).
    #[error(
        "memory region at gpa {gpa:#x}: offset {offset:#x} + size {len:#x} is beyond its file ({file_len:#x} bytes)"
    )]
    BeyondFile {
        /// The region's guest-physical start.
        gpa: u64,
        /// The mmap offset in the file.
        offset: u64,
        /// The region's length.
        len: u64,
        /// The file's size.
        file_len: u64,
    },
}
