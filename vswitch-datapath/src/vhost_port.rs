//! A vhost port: one guest queue pair (RX queue served northbound, TX queue southbound) as a
//! [`Port`] of the switch.

use copy_engine::CopyEngine;

use crate::port::{Port, PortCtx, PortStats};
use crate::vhost::{Burst, Northbound, QueueStats, Southbound, VhostError};

/// A guest's queue pair as a switch port.
#[derive(Debug)]
pub struct VhostPort {
    name: String,
    north: Northbound,
    south: Southbound,
    stats: PortStats,
    last_error: Option<VhostError>,
}

impl VhostPort {
    /// A port over a guest RX queue (`north`) and TX queue (`south`).
    pub fn new(name: impl Into<String>, north: Northbound, south: Southbound) -> Self {
        VhostPort { name: name.into(), north, south, stats: PortStats::default(), last_error: None }
    }

    /// The northbound (guest RX) queue.
    pub fn north(&self) -> &Northbound {
        &self.north
    }

    /// The southbound (guest TX) queue.
    pub fn south(&self) -> &Southbound {
        &self.south
    }

    /// The last error a queue reported (a broken queue stays broken).
    pub fn last_error(&self) -> Option<VhostError> {
        self.last_error
    }

    /// Both queues' counters: (northbound, southbound).
    pub fn queue_stats(&self) -> (QueueStats, QueueStats) {
        (self.north.stats(), self.south.stats())
    }

    fn note(&mut self, e: VhostError) {
        if self.last_error.is_none() || e != VhostError::Broken {
            self.last_error = Some(e);
        }
    }

    /// Stops both queues and then forgets in-flight state without touching guest memory (a
    /// guest that went away).
    pub fn clear<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>) {
        self.north.clear(cx.chan, cx.pool);
        self.south.clear(cx.chan, cx.pool);
    }
}

impl<E: CopyEngine> Port<E> for VhostPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        let before = out.len();
        if let Err(e) = self.south.complete(cx.chan, cx.pool, out, max) {
            self.note(e);
        }
        if !self.south.queue().is_broken() {
            let room = cx.pool.available().min(max);
            if let Err(e) = self.south.dequeue_burst(cx.chan, cx.pool, room) {
                self.note(e);
            }
        }
        let n = out.len() - before;
        self.stats.rx_packets += n as u64;
        self.stats.rx_bytes += out[before..].iter().map(|p| p.len() as u64).sum::<u64>();
        n
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let offered = pkts.len();
        match self.north.enqueue_burst(cx.chan, cx.pool, pkts) {
            Ok(n) => {
                self.stats.tx_pushed_back += (offered - n) as u64;
                n
            }
            Err(e) => {
                self.note(e);
                // A broken guest queue takes nothing: what is left is dropped here, counted, so
                // one guest cannot hold up the switch.
                let n = offered - pkts.len();
                self.stats.drops += pkts.len() as u64;
                for p in pkts.drain(..) {
                    cx.pool.free(p);
                }
                n
            }
        }
    }

    fn poll(&mut self, cx: &mut PortCtx<'_, E>) {
        if let Err(e) = self.north.complete(cx.chan, cx.pool) {
            self.note(e);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn queue_stats(&self) -> Option<(QueueStats, QueueStats)> {
        Some(VhostPort::queue_stats(self))
    }

    fn stats(&self) -> PortStats {
        let mut s = self.stats;
        s.tx_packets = self.north.stats().packets;
        s.tx_bytes = self.north.stats().bytes;
        s.add_queue(&self.north.stats());
        s.add_queue(&self.south.stats());
        s
    }

    fn stop(&mut self, cx: &mut PortCtx<'_, E>) {
        if let Err(e) = self.north.drain(cx.chan, cx.pool) {
            self.note(e);
        }
        let mut out = Vec::new();
        if let Err(e) = self.south.drain(cx.chan, cx.pool, &mut out) {
            self.note(e);
        }
        // Received but never forwarded: a stopped port's last packets are freed, and counted.
        self.stats.drops += out.len() as u64;
        for p in out {
            cx.pool.free(p);
        }
    }
}
