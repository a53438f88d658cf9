//! A vhost port: one guest queue pair (RX queue served northbound, TX queue southbound) as a
//! [`Port`] of the switch.
//!
//! A port may be *unattached*: a vhost-user socket with no frontend yet, or one whose frontend
//! stopped its rings or went away. An unattached port receives nothing and takes nothing (its
//! `tx_burst` pushes every packet back). The control plane attaches a queue pair when the frontend
//! has set its rings up, and detaches it (draining or clearing its in-flight copies first) before
//! the rings or the guest memory change: see [`VhostPort::attach`], [`VhostPort::detach`].

use std::sync::mpsc::Sender;

use copy_engine::CopyEngine;

use crate::port::{Port, PortCtx, PortStats};
use crate::vhost::{Burst, Northbound, QueueStats, Southbound, VhostError};

/// How a queue pair leaves its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachMode {
    /// The guest is still there (it stopped its rings): wait for every copy, then return every
    /// in-flight chain to the guest on its used rings.
    Drain,
    /// The guest went away or its memory is about to be unmapped without it: wait for every copy,
    /// then forget the in-flight chains without touching the rings.
    Clear,
}

/// The ring positions of a detached queue pair: the next avail index of each ring (what
/// vhost-user `GET_VRING_BASE` answers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetachedBases {
    /// Next avail index of the guest RX queue (northbound).
    pub rx: u16,
    /// Next avail index of the guest TX queue (southbound).
    pub tx: u16,
}

/// What a control plane asks of a PMD thread about one of its [`VhostPort`]s (sent on the channel
/// given to [`Pmd::set_commands`](crate::Pmd::set_commands)).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a few commands per frontend (re)connect: size does not matter
pub enum PortCommand {
    /// Serve this queue pair on port `port` (index in the PMD).
    Attach {
        /// The port's index in the PMD.
        port: usize,
        /// The guest RX queue.
        north: Northbound,
        /// The guest TX queue.
        south: Southbound,
    },
    /// Detach port `port`'s queue pair ([`VhostPort::detach`]) and answer with its ring positions
    /// (`None`: nothing was attached). Once the answer is sent the PMD holds no reference to the
    /// pair's guest memory and no copy into it is in flight.
    Detach {
        /// The port's index in the PMD.
        port: usize,
        /// Drain (guest still there) or clear (guest gone).
        mode: DetachMode,
        /// Where the answer goes.
        reply: Sender<Option<DetachedBases>>,
    },
}

/// A guest's queue pair as a switch port.
#[derive(Debug)]
pub struct VhostPort {
    name: String,
    queues: Option<(Northbound, Southbound)>,
    stats: PortStats,
    /// Counters of queue pairs attached earlier (a port's counters survive a reconnect).
    past: (QueueStats, QueueStats),
    last_error: Option<VhostError>,
}

impl VhostPort {
    /// A port over a guest RX queue (`north`) and TX queue (`south`).
    pub fn new(name: impl Into<String>, north: Northbound, south: Southbound) -> Self {
        let mut p = Self::unattached(name);
        p.queues = Some((north, south));
        p
    }

    /// A port with no queue pair yet (a vhost-user socket waiting for its frontend).
    pub fn unattached(name: impl Into<String>) -> Self {
        VhostPort {
            name: name.into(),
            queues: None,
            stats: PortStats::default(),
            past: Default::default(),
            last_error: None,
        }
    }

    /// Whether a queue pair is attached.
    pub fn is_attached(&self) -> bool {
        self.queues.is_some()
    }

    /// Attaches a queue pair (a previous one must have been detached: it is cleared otherwise).
    pub fn attach<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>, north: Northbound, south: Southbound) {
        self.detach(cx, DetachMode::Clear);
        self.queues = Some((north, south));
        self.last_error = None;
    }

    /// Detaches the queue pair, if any: waits for every copy in flight on the channel, then drains
    /// or clears the queues (see [`DetachMode`]) and drops them. Returns the rings' next avail
    /// indexes. After it returns no copy can touch the pair's guest memory, and the port holds no
    /// reference to it.
    pub fn detach<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>, mode: DetachMode) -> Option<DetachedBases> {
        let (mut north, mut south) = self.queues.take()?;
        match mode {
            DetachMode::Drain => {
                if let Err(e) = north.drain(cx.chan, cx.pool) {
                    self.note(e);
                    north.clear(cx.chan, cx.pool);
                }
                let mut out = Vec::new();
                if let Err(e) = south.drain(cx.chan, cx.pool, &mut out) {
                    self.note(e);
                    south.clear(cx.chan, cx.pool);
                }
                // Received but never forwarded: freed and counted.
                self.stats.drops += out.len() as u64;
                for p in out {
                    cx.pool.free(p);
                }
            }
            DetachMode::Clear => {
                north.clear(cx.chan, cx.pool);
                south.clear(cx.chan, cx.pool);
            }
        }
        let bases = DetachedBases { rx: north.queue().last_avail_idx(), tx: south.queue().last_avail_idx() };
        add_queue_stats(&mut self.past.0, &north.stats());
        add_queue_stats(&mut self.past.1, &south.stats());
        Some(bases)
    }

    /// The northbound (guest RX) queue.
    ///
    /// # Panics
    ///
    /// If the port is unattached (see [`queues`](Self::queues)).
    pub fn north(&self) -> &Northbound {
        &self.queues.as_ref().expect("vhost port has no queue pair attached").0
    }

    /// The southbound (guest TX) queue.
    ///
    /// # Panics
    ///
    /// If the port is unattached (see [`queues`](Self::queues)).
    pub fn south(&self) -> &Southbound {
        &self.queues.as_ref().expect("vhost port has no queue pair attached").1
    }

    /// The attached queue pair, if any.
    pub fn queues(&self) -> Option<(&Northbound, &Southbound)> {
        self.queues.as_ref().map(|(n, s)| (n, s))
    }

    /// The last error a queue reported (a broken queue stays broken).
    pub fn last_error(&self) -> Option<VhostError> {
        self.last_error
    }

    /// Both queues' counters, over every queue pair this port had: (northbound, southbound).
    pub fn queue_stats(&self) -> (QueueStats, QueueStats) {
        let (mut n, mut s) = self.past;
        if let Some((north, south)) = &self.queues {
            add_queue_stats(&mut n, &north.stats());
            add_queue_stats(&mut s, &south.stats());
        } else {
            n.in_flight = 0;
            s.in_flight = 0;
        }
        (n, s)
    }

    fn note(&mut self, e: VhostError) {
        if self.last_error.is_none() || e != VhostError::Broken {
            self.last_error = Some(e);
        }
    }

    /// Stops both queues and then forgets in-flight state without touching guest memory (a
    /// guest that went away). The queue pair stays attached.
    pub fn clear<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>) {
        if let Some((north, south)) = &mut self.queues {
            north.clear(cx.chan, cx.pool);
            south.clear(cx.chan, cx.pool);
        }
    }
}

/// Adds `q`'s counters to `acc`; `in_flight` is a level, not a count: it is replaced.
fn add_queue_stats(acc: &mut QueueStats, q: &QueueStats) {
    acc.packets += q.packets;
    acc.bytes += q.bytes;
    acc.in_flight = q.in_flight;
    acc.copies_offloaded += q.copies_offloaded;
    acc.copies_cpu += q.copies_cpu;
    acc.no_buffers += q.no_buffers;
    acc.bad_chains += q.bad_chains;
    acc.engine_errors += q.engine_errors;
    acc.broken += q.broken;
    acc.notifications += q.notifications;
    acc.notifications_suppressed += q.notifications_suppressed;
}

impl<E: CopyEngine> Port<E> for VhostPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        let Some((_, south)) = &mut self.queues else { return 0 };
        let before = out.len();
        let mut err = None;
        if let Err(e) = south.complete(cx.chan, cx.pool, out, max) {
            err = Some(e);
        }
        if !south.queue().is_broken() {
            let room = cx.pool.available().min(max);
            if let Err(e) = south.dequeue_burst(cx.chan, cx.pool, room) {
                err = Some(e);
            }
        }
        if let Some(e) = err {
            self.note(e);
        }
        let n = out.len() - before;
        self.stats.rx_packets += n as u64;
        self.stats.rx_bytes += out[before..].iter().map(|p| p.len() as u64).sum::<u64>();
        n
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let offered = pkts.len();
        let Some((north, _)) = &mut self.queues else {
            // No guest: everything waits with the caller (push back).
            self.stats.tx_pushed_back += offered as u64;
            return 0;
        };
        match north.enqueue_burst(cx.chan, cx.pool, pkts) {
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
        if let Some((north, _)) = &mut self.queues {
            if let Err(e) = north.complete(cx.chan, cx.pool) {
                self.note(e);
            }
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
        let (north, south) = VhostPort::queue_stats(self);
        s.tx_packets = north.packets;
        s.tx_bytes = north.bytes;
        s.add_queue(&north);
        s.add_queue(&south);
        s
    }

    fn stop(&mut self, cx: &mut PortCtx<'_, E>) {
        let Some((north, south)) = &mut self.queues else { return };
        let mut errs: [Option<VhostError>; 2] = [None, None];
        if let Err(e) = north.drain(cx.chan, cx.pool) {
            errs[0] = Some(e);
        }
        let mut out = Vec::new();
        if let Err(e) = south.drain(cx.chan, cx.pool, &mut out) {
            errs[1] = Some(e);
        }
        for e in errs.into_iter().flatten() {
            self.note(e);
        }
        // Received but never forwarded: a stopped port's last packets are freed, and counted.
        self.stats.drops += out.len() as u64;
        for p in out {
            cx.pool.free(p);
        }
    }
}
