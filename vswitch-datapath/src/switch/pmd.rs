//! The PMD loop: one thread, its copy channel, its packet pool, its ports, forwarding forever.
//!
//! One iteration (the seed's packet walkthrough): for each link (rx port -> tx port), receive a
//! burst unless the last one is still waiting, offer it to the tx port (which enqueues copies and
//! keeps what it cannot take: push back), then ring the doorbell once, reap the channel's
//! completions once, and let every port complete what finished. Nothing waits for a copy. This
//! module owns the loop's state; it must not know virtio.
//!
//! Forwarding is either fixed links ([`connect`](Pmd::connect): a cross-connect per pair of ports)
//! or an L2 learning switch over all ports ([`enable_learning`](Pmd::enable_learning), see
//! [`crate::switch::l2`]).
//!
//! A control plane on another thread (vhost-user) reaches the loop only through a
//! [`PortCommand`] channel, which the loop checks with `try_recv` once every
//! [`COMMAND_POLL_EVERY`] iterations: no lock is ever taken on the hot path.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use copy_engine::{Channel, CopyEngine};

use crate::switch::l2::{L2Switch, LearningConfig, CLOCK_EVERY};
use crate::switch::null_port::RemovedPort;
use crate::switch::pool::PacketPool;
use crate::switch::port::{Port, PortCtx, PortStats};
use crate::switch::vhost_port::{DetachMode, PortCommand, VhostPort};
use crate::vhost::{Burst, BURST};

/// The loop checks its command channel once every this many iterations.
pub const COMMAND_POLL_EVERY: u64 = 64;

/// A cross-connect: everything received on `from` is sent to `to`.
#[derive(Debug)]
struct Link {
    from: usize,
    to: usize,
    /// Where to send instead while `to` is down (a shard of a guest whose other pairs another
    /// PMD serves: the ring to that PMD).
    spill: Option<usize>,
    /// Received and not yet taken by `to`.
    pending: Burst,
}

/// Counters of the loop itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmdStats {
    /// Iterations run.
    pub iterations: u64,
    /// Iterations that moved at least one packet or completed a copy.
    pub busy_iterations: u64,
    /// Packets handed from one port to another.
    pub forwarded: u64,
    /// Nanoseconds spent in busy iterations, measured: the loop reads the clock once per
    /// iteration, at its start, and a busy iteration is charged the time until the next one
    /// starts (one `Instant::now()` per iteration, a vDSO read of the TSC on Linux, about 20 ns
    /// here).
    pub busy_ns: u64,
}

impl PmdStats {
    /// Busy nanoseconds per packet forwarded (`None` before the first packet).
    pub fn busy_ns_per_packet(&self) -> Option<f64> {
        (self.forwarded != 0).then(|| self.busy_ns as f64 / self.forwarded as f64)
    }
}

/// A PMD thread's state. Fields drop in order: the channel first, which drains every copy in
/// flight before the pool and the ports' guest memory go away.
pub struct Pmd<E: CopyEngine> {
    chan: Channel<E>,
    pool: PacketPool,
    ports: Vec<Box<dyn Port<E>>>,
    links: Vec<Link>,
    /// MAC learning forwarding; when set, `links` are not used.
    l2: Option<L2Switch>,
    stats: PmdStats,
    /// When the last iteration started, if it was busy (charged at the next one's start).
    busy_since: Option<Instant>,
    commands: Option<Receiver<PortCommand>>,
}

impl<E: CopyEngine> std::fmt::Debug for Pmd<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pmd")
            .field("chan", &self.chan)
            .field("ports", &self.ports.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl<E: CopyEngine> Pmd<E> {
    /// A PMD over `chan` and `pool`, with no ports yet.
    pub fn new(chan: Channel<E>, pool: PacketPool) -> Self {
        Pmd {
            chan,
            pool,
            ports: Vec::new(),
            links: Vec::new(),
            l2: None,
            stats: PmdStats::default(),
            busy_since: None,
            commands: None,
        }
    }

    /// Adds a port and returns its index.
    pub fn add_port(&mut self, port: Box<dyn Port<E>>) -> usize {
        self.ports.push(port);
        self.ports.len() - 1
    }

    /// Forwards everything received on port `from` to port `to`.
    pub fn connect(&mut self, from: usize, to: usize) {
        assert!(from < self.ports.len() && to < self.ports.len(), "no such port");
        self.links.push(Link { from, to, spill: None, pending: Burst::new() });
    }

    /// Forwards everything received on port `from` to port `to`, or to port `spill` while `to`
    /// is down (`to` a shard of a guest with queue pairs on several PMDs, `spill` the ring to
    /// another PMD that serves the guest too).
    pub fn connect_with_spill(&mut self, from: usize, to: usize, spill: usize) {
        assert!(from < self.ports.len() && to < self.ports.len() && spill < self.ports.len(), "no such port");
        self.links.push(Link { from, to, spill: Some(spill), pending: Burst::new() });
    }

    /// Forwards as an L2 learning switch over every port (instead of the links of
    /// [`connect`](Self::connect)).
    pub fn enable_learning(&mut self, cfg: LearningConfig) {
        self.l2 = Some(L2Switch::new(cfg));
    }

    /// The learning switch, when [`enable_learning`](Self::enable_learning) was called.
    pub fn l2(&self) -> Option<&L2Switch> {
        self.l2.as_ref()
    }

    /// The learning switch, mutable (tests move its clock).
    pub fn l2_mut(&mut self) -> Option<&mut L2Switch> {
        self.l2.as_mut()
    }

    /// Takes control-plane commands from `rx` (checked every [`COMMAND_POLL_EVERY`] iterations
    /// and by [`apply_commands`](Self::apply_commands)).
    pub fn set_commands(&mut self, rx: Receiver<PortCommand>) {
        self.commands = Some(rx);
    }

    /// Applies every pending control-plane command now. Returns how many were applied. A command
    /// for a port that is not a [`VhostPort`] is ignored (a detach is answered with no pairs).
    pub fn apply_commands(&mut self) -> usize {
        let mut n = 0;
        loop {
            let Some(rx) = &self.commands else { return n };
            let cmd = match rx.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return n,
                Err(TryRecvError::Disconnected) => {
                    self.commands = None;
                    return n;
                }
            };
            n += 1;
            let port = match &cmd {
                PortCommand::Attach { port, .. } | PortCommand::Detach { port, .. } => *port,
            };
            let mut cx = PortCtx { chan: &self.chan, pool: &mut self.pool };
            let vp = self.ports.get_mut(port).and_then(|p| p.as_any_mut().downcast_mut::<VhostPort>());
            match (cmd, vp) {
                (PortCommand::Attach { pair, north, south, owner, .. }, Some(vp)) => {
                    vp.attach_owned(&mut cx, owner, pair, north, south);
                }
                (PortCommand::Attach { .. }, None) => {}
                (PortCommand::Detach { pair, mode, reply, owner, .. }, vp) => {
                    let bases = match vp {
                        Some(vp) => vp.detach_owned(&mut cx, owner, pair, mode),
                        None => Vec::new(),
                    };
                    // The control thread may have given up waiting; the queues are gone anyway.
                    let _ = reply.send(bases);
                }
            }
        }
    }

    /// One iteration of the loop. Returns packets forwarded plus ops retired (0: idle).
    pub fn run_once(&mut self) -> u64 {
        let started = Instant::now();
        if let Some(t) = self.busy_since.take() {
            self.stats.busy_ns += started.saturating_duration_since(t).as_nanos() as u64;
        }
        if self.commands.is_some() && self.stats.iterations % COMMAND_POLL_EVERY == 0 {
            self.apply_commands();
        }
        let mut cx = PortCtx { chan: &self.chan, pool: &mut self.pool };
        let mut moved = 0u64;
        if let Some(l2) = &mut self.l2 {
            if self.stats.iterations % CLOCK_EVERY == 0 {
                l2.tick();
            }
            moved = l2.forward(&mut self.ports, &mut cx);
        }
        for link in &mut self.links {
            if link.pending.is_empty() {
                self.ports[link.from].rx_burst(&mut cx, &mut link.pending, BURST);
            }
            if !link.pending.is_empty() {
                let to = match link.spill {
                    Some(s) if !self.ports[link.to].is_up() => s,
                    _ => link.to,
                };
                moved += self.ports[to].tx_burst(&mut cx, &mut link.pending) as u64;
            }
        }
        self.chan.submit();
        let retired = self.chan.progress();
        for p in &mut self.ports {
            p.poll(&mut cx);
        }
        self.stats.iterations += 1;
        self.stats.forwarded += moved;
        if moved + retired != 0 {
            self.stats.busy_iterations += 1;
            self.busy_since = Some(started);
        }
        moved + retired
    }

    /// Removes port `i` at runtime, draining it first: a vhost port's queue pairs are detached
    /// with [`DetachMode::Drain`] (every copy waited for, every chain in flight returned to the
    /// guest), what it had received is still forwarded, and then a [`RemovedPort`] stands in its
    /// place (indexes do not move; commands for it are ignored, its MACs forgotten). Returns the
    /// removed port, `None` if there is no port `i` or it was removed already.
    pub fn remove_port(&mut self, i: usize) -> Option<Box<dyn Port<E>>> {
        let port = self.ports.get_mut(i)?;
        if port.as_any().is::<RemovedPort>() {
            return None;
        }
        let mut cx = PortCtx { chan: &self.chan, pool: &mut self.pool };
        if let Some(vp) = port.as_any_mut().downcast_mut::<VhostPort>() {
            vp.detach(&mut cx, DetachMode::Drain);
        }
        let mut received = Burst::new();
        while port.rx_burst(&mut cx, &mut received, BURST) != 0 {}
        port.stop(&mut cx);
        let stand_in: Box<dyn Port<E>> = Box::new(RemovedPort::new(port.name(), port.stats()));
        let old = std::mem::replace(port, stand_in);
        let mut orphans = Burst::new();
        if let Some(l2) = &mut self.l2 {
            orphans = l2.port_removed(i, received);
        } else if let Some(link) = self.links.iter_mut().find(|l| l.from == i) {
            link.pending.extend(received);
        } else {
            orphans = received;
        }
        // Waiting for a port that is gone: its stand-in drops and counts them.
        self.ports[i].tx_burst(&mut cx, &mut orphans);
        Some(old)
    }

    /// Stops every port: drains every copy and returns the guests' buffers.
    pub fn stop(&mut self) {
        let mut cx = PortCtx { chan: &self.chan, pool: &mut self.pool };
        for link in &mut self.links {
            for p in link.pending.drain(..) {
                cx.pool.free(p);
            }
        }
        if let Some(l2) = &mut self.l2 {
            l2.clear(cx.pool);
        }
        for p in &mut self.ports {
            p.stop(&mut cx);
        }
    }

    /// The copy channel.
    pub fn channel(&self) -> &Channel<E> {
        &self.chan
    }

    /// The packet pool.
    pub fn pool(&self) -> &PacketPool {
        &self.pool
    }

    /// How many ports there are.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Port `i`.
    pub fn port(&self, i: usize) -> &dyn Port<E> {
        &*self.ports[i]
    }

    /// Port `i`, mutable, with the context to call it (control plane, tests).
    pub fn port_mut(&mut self, i: usize) -> (&mut dyn Port<E>, PortCtx<'_, E>) {
        (&mut *self.ports[i], PortCtx { chan: &self.chan, pool: &mut self.pool })
    }

    /// Every port's name and counters.
    pub fn port_stats(&self) -> Vec<(String, PortStats)> {
        self.ports.iter().map(|p| (p.name().to_string(), p.stats())).collect()
    }

    /// The loop's counters.
    pub fn stats(&self) -> PmdStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use copy_engine::{Channel, Policy};
    use copy_engine_cpu::MemcpyEngine;

    use super::*;
    use crate::switch::null_port::{SinkPort, SourcePort};

    #[test]
    fn a_link_to_a_shard_with_no_pair_attached_spills_to_its_ring_and_nothing_waits() {
        let mut pmd = Pmd::new(Channel::new(MemcpyEngine::default(), Policy::default()), PacketPool::new(256, 2048));
        let src = pmd.add_port(Box::new(SourcePort::new("source", 64)));
        // A shard of a guest whose pairs are all on another PMD: down.
        let shard = pmd.add_port(Box::new(VhostPort::unattached("vhost1")));
        // Stands for the ring to the PMD that serves the guest.
        let ring = pmd.add_port(Box::new(SinkPort::new("to-pmd1-port1")));
        pmd.connect_with_spill(src, shard, ring);
        for _ in 0..100 {
            pmd.run_once();
        }
        let (s, r) = (pmd.port(shard).stats(), pmd.port(ring).stats());
        assert_eq!((s.tx_packets, s.tx_pushed_back), (0, 0), "nothing offered to the shard while it is down");
        assert!(r.tx_packets >= 100 * BURST as u64 - BURST as u64, "everything went to the ring: {r:?}");
        assert_eq!(pmd.stats().forwarded, r.tx_packets);
        assert!(pmd.stats().busy_ns > 0 && pmd.stats().busy_ns_per_packet().is_some());
        pmd.stop();
    }
}
