//! Ports: what a PMD thread receives packets from and sends them to.
//!
//! A [`Port`] has `rx_burst` / `tx_burst` like a DPDK ethdev, plus `poll` for the completions of
//! asynchronous copies. Every call gets a [`PortCtx`]: the PMD thread's copy channel and packet
//! pool, which ports borrow and never own. `tx_burst` takes packets from the front of the burst
//! and leaves what it cannot take there, in order: push back, not drop. This module must not know
//! virtio; the vhost port lives in [`crate::switch::vhost_port`].

use copy_engine::{Channel, CopyEngine};

use crate::switch::pool::PacketPool;
use crate::vhost::{Burst, QueueStats};

/// What a port call may use: the PMD thread's channel and packet pool.
#[derive(Debug)]
pub struct PortCtx<'a, E: CopyEngine> {
    /// The PMD thread's copy channel.
    pub chan: &'a Channel<E>,
    /// The PMD thread's packet buffers.
    pub pool: &'a mut PacketPool,
}

/// Counters of one port, as the switch reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received from the port.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets sent to the port (completed: for vhost, on the guest's used ring).
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets the port could not take yet (held by the switch and offered again).
    pub tx_pushed_back: u64,
    /// Packets dropped (a malformed guest buffer, a refused copy).
    pub drops: u64,
    /// Errors: guest ring errors (the queue is then broken), payload check failures.
    pub errors: u64,
    /// Packets whose copies are in flight.
    pub in_flight: u64,
    /// Copies handed to the engine.
    pub copies_offloaded: u64,
    /// Copies done by the CPU.
    pub copies_cpu: u64,
}

impl PortStats {
    /// Folds one vhost queue's counters in.
    pub fn add_queue(&mut self, q: &QueueStats) {
        self.in_flight += q.in_flight;
        self.copies_offloaded += q.copies_offloaded;
        self.copies_cpu += q.copies_cpu;
        self.drops += q.bad_chains + q.engine_errors;
        self.errors += q.broken;
    }
}

/// A port of the switch. Object-safe, so a PMD thread can hold different kinds.
pub trait Port<E: CopyEngine> {
    /// The port's name (for stats).
    fn name(&self) -> &str;

    /// Appends up to `max` received packets to `out`; returns how many.
    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize;

    /// Takes packets from the front of `pkts` and returns how many; the rest stay, in order.
    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize;

    /// Completes what finished since the last call (asynchronous copies). Called once per PMD
    /// iteration after the channel's completions were reaped.
    fn poll(&mut self, _cx: &mut PortCtx<'_, E>) {}

    /// The port's counters.
    fn stats(&self) -> PortStats;

    /// Whether the port can take packets now (a vhost port: a queue pair is attached). A flood
    /// skips ports that are down, so a guest that is not there holds nobody up.
    fn is_up(&self) -> bool {
        true
    }

    /// Whether the port is a trunk to another PMD's L2 switch: a frame received on one trunk is
    /// never flooded to another (split horizon: the PMDs form a full mesh, and each floods to its
    /// own ports).
    fn is_trunk(&self) -> bool {
        false
    }

    /// For a trunk: the PMD at its other end.
    fn trunk_peer(&self) -> Option<usize> {
        None
    }

    /// Whether this port is a shard of a port whose queue pairs several PMDs serve, and its shard
    /// on PMD `pmd` has a pair attached (so what `pmd` flooded, the port already got there).
    fn shard_up_on(&self, _pmd: usize) -> bool {
        false
    }

    /// Whether a flood that PMD `pmd` sent reaches this port's guest through another shard, so
    /// this one must not deliver it: `pmd`'s own shard when that is up, else the up shard on the
    /// lowest-numbered PMD when that is not this one (every PMD gets every flood, so exactly one
    /// shard delivers it).
    fn flood_delivered_elsewhere(&self, _pmd: usize) -> bool {
        false
    }

    /// Stops the port: afterwards no copy of it is in flight.
    fn stop(&mut self, _cx: &mut PortCtx<'_, E>) {}

    /// Per-queue counters `(northbound, southbound)` of a vhost port.
    fn queue_stats(&self) -> Option<(QueueStats, QueueStats)> {
        None
    }

    /// The port as `Any`, to reach its own API (tests, the control plane).
    fn as_any(&self) -> &dyn std::any::Any;

    /// The port as `Any`, mutable.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}
