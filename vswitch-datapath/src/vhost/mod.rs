//! Asynchronous vhost: guest virtqueues served through a copy engine (DESIGN.md §5).
//!
//! - [`Northbound`]: host -> guest (the guest's RX queue; "Vhost_TX" in OVS terms).
//! - [`Southbound`]: guest -> host (the guest's TX queue; "Vhost_RX").
//!
//! Both are generic over the PMD thread's [`copy_engine::Channel`], keep their in-flight packets
//! in order, and complete them only when their tickets retire, so the used ring never shows the
//! guest a buffer before its bytes have landed, and never out of order, whichever path (engine,
//! CPU below the threshold, ring-full fallback, CPU retry of a failed op) each copy took. The
//! channel must use the CPU-retry error policy (the default): the vhost paths have no way to
//! redo a copy the engine reported failed.
//!
//! This module owns the in-flight state; rings are reached only through
//! [`Virtqueue`](crate::Virtqueue) (a split or a packed ring: one datapath, two ring formats) and
//! memory only through [`GuestMemory`](crate::GuestMemory) and the one copy helper.

#[allow(unsafe_code)]
mod copy;
#[allow(unsafe_code)] // one call: handing a packet's copies to copy::copy_segments
pub mod north;
mod notify;
#[allow(unsafe_code)] // one call: handing a group's copies to copy::CopyBatch::enqueue
pub mod south;
mod stats;

use smallvec::SmallVec;

pub use north::Northbound;
pub use notify::Notifier;
pub use south::Southbound;
pub use stats::QueueStats;

use crate::mem::MemoryError;
use crate::switch::pool::Packet;
use crate::virtio::error::VirtqError;

/// Most packets one burst carries.
pub const BURST: usize = 32;

/// A burst of packets (inline, no allocation up to [`BURST`]).
pub type Burst = SmallVec<[Packet; BURST]>;

/// Why a vhost queue stopped serving a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VhostError {
    /// The queue is broken by an earlier guest error; it serves nothing until it is reset.
    #[error("queue is broken")]
    Broken,
    /// The guest's ring or descriptors are invalid; the queue is now broken.
    #[error("guest ring error: {0}")]
    Ring(#[from] VirtqError),
    /// A guest buffer is outside guest memory; the queue is now broken.
    #[error("guest memory error: {0}")]
    Memory(#[from] MemoryError),
    /// The copy channel refused an op (a stopped device).
    #[error("copy engine refused an op: {0}")]
    Engine(copy_engine::EnqueueError),
}

/// Breaks `q` if its guest memory was lost under the switch (counted once in `stats`), and fails
/// if it is broken. Shared by both directions, once per burst.
#[inline]
fn check_memory(q: &mut crate::virtio::queue::Virtqueue, stats: &mut QueueStats) -> Result<(), VhostError> {
    match q.check_memory() {
        Ok(()) => Ok(()),
        Err(crate::virtio::error::VirtqError::Broken) => Err(VhostError::Broken),
        Err(e) => {
            stats.broken += 1;
            Err(e.into())
        }
    }
}

/// Tells the guest not to kick `q` (used flags `NO_NOTIFY`, a stale `avail_event`, or the packed
/// device event area's `DISABLE`; virtio 1.2 sections 2.7.10 and 2.8.10): the PMD polls every
/// queue it serves and never reads a kick, while each kick costs the guest a system call
/// (virtio-user's eventfd write) or a trap into the hypervisor (a guest kernel's write to its
/// notify register), once per burst.
/// A queue whose rings cannot be written is broken by it, which its first burst reports.
fn poll_without_kicks(q: &mut crate::virtio::queue::Virtqueue) {
    let _ = q.set_kicks(false);
}

/// Makes the used entries pushed so far visible (one release store) and interrupts the guest if
/// it asked (event idx / NO_INTERRUPT), counting both outcomes. A ring error breaks the queue and
/// is counted. Shared by both directions.
fn publish(
    q: &mut crate::virtio::queue::Virtqueue,
    notifier: &mut Notifier,
    stats: &mut QueueStats,
) -> Result<(), VhostError> {
    let notify = q.publish_used().and_then(|_| q.needs_notify()).map_err(|e| {
        stats.broken += 1;
        VhostError::from(e)
    })?;
    if notify {
        notifier.notify();
        stats.notifications += 1;
    } else {
        stats.notifications_suppressed += 1;
    }
    Ok(())
}
