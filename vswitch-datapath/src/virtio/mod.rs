//! VIRTIO 1.x virtqueues, device side (virtio 1.2 spec, section 2.6 "Virtqueues", 2.7 "Split
//! Virtqueues" and 2.8 "Packed Virtqueues").
//!
//! This module owns the ring formats and their validation: [`desc`] (the 16-byte descriptor seen
//! through a checked view), [`chain`] (a walked descriptor chain as host segments), [`split`] (the
//! device side of a split virtqueue: avail ring, used ring, event idx), [`packed`] (the device
//! side of a packed virtqueue: one descriptor ring with wrap counters, event suppression),
//! [`queue`] (either format behind one type, what the datapath serves), [`error`] and [`net`] (the
//! virtio-net header that leads every packet). It must not
//! know packets, copy engines or vhost-user: rings go in, segments and used entries come out.

pub mod chain;
pub mod desc;
pub mod error;
pub mod net;
pub mod packed;
pub mod queue;
pub mod split;

use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

bitflags::bitflags! {
    /// The negotiated features that change how a ring is processed.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct RingFeatures: u8 {
        /// `VIRTIO_RING_F_INDIRECT_DESC` (section 2.7.5.3): descriptors may point to a table.
        const INDIRECT_DESC = 1 << 0;
        /// `VIRTIO_RING_F_EVENT_IDX` (section 2.7.7, 2.7.10): `used_event` / `avail_event`.
        const EVENT_IDX = 1 << 1;
        /// `VIRTIO_F_RING_PACKED` (section 2.8): the queue is a packed ring, not a split one.
        const PACKED = 1 << 2;
        /// `VIRTIO_F_IN_ORDER` ("In-order use of descriptors", split and packed rings): buffers are used in the order they were
        /// made available. On a packed ring the device may then return a batch of buffers as one
        /// used descriptor, written where the batch starts, with the buffer id of its last buffer
        /// (the driver walks its own records to the end of the batch):
        /// [`PackedQueue`](crate::PackedQueue) does so on a read-only (TX) queue, where no used
        /// length is lost, one descriptor per publish.
        const IN_ORDER = 1 << 3;
    }
}

impl RingFeatures {
    /// Picks the ring features out of a negotiated virtio feature word.
    pub fn from_negotiated(features: u64) -> Self {
        let mut f = RingFeatures::empty();
        if features & (1 << VIRTIO_RING_F_INDIRECT_DESC) != 0 {
            f |= RingFeatures::INDIRECT_DESC;
        }
        if features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
            f |= RingFeatures::EVENT_IDX;
        }
        if features & (1 << VIRTIO_F_RING_PACKED) != 0 {
            f |= RingFeatures::PACKED;
        }
        if features & (1 << VIRTIO_F_IN_ORDER) != 0 {
            f |= RingFeatures::IN_ORDER;
        }
        f
    }
}

/// The largest queue size (sections 2.7 and 2.8: "Queue Size ... maximum 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `vring_need_event` (section 2.7.10): whether moving an index from `old` to `new` crossed the
/// other side's `event` index, i.e. whether it asked to be notified.
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}
