//! Per-queue counters of the vhost paths.

/// Counters of one vhost queue (northbound or southbound). Plain integers owned by the PMD thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets completed (delivered to the guest, or received from it).
    pub packets: u64,
    /// Payload bytes of those packets.
    pub bytes: u64,
    /// Packets whose copies are in flight now.
    pub in_flight: u64,
    /// Copies handed to the engine.
    pub copies_offloaded: u64,
    /// Copies done by the CPU (below the threshold, ring full, pushed back, header writes).
    pub copies_cpu: u64,
    /// Bursts cut short because the guest had no (or not enough) buffers: the packets stay with
    /// the caller (push back), none is dropped.
    pub no_buffers: u64,
    /// Chains returned unused because they were malformed for their direction (a header that
    /// claims more than the chain holds, a TX chain too large for a packet buffer, an RX chain too
    /// small without mergeable buffers). The guest gets its buffer back; the packet is counted
    /// here and not forwarded.
    pub bad_chains: u64,
    /// Packets the copy channel refused outright (a stopped device): reported to the caller, the
    /// guest's buffers returned unused.
    pub engine_errors: u64,
    /// Times the queue broke on a guest error (at most once until it is reset).
    pub broken: u64,
    /// Interrupts (call eventfd writes, or test-guest notifications) sent to the guest.
    pub notifications: u64,
    /// Notifications the guest suppressed (event idx / NO_INTERRUPT).
    pub notifications_suppressed: u64,
}
