//! A vhost port: a guest's queue pairs (each an RX queue served northbound and a TX queue served
//! southbound) as one [`Port`] of the switch.
//!
//! A port may be *unattached*: a vhost-user socket with no frontend yet, or one whose frontend
//! stopped its rings or went away. An unattached port receives nothing and takes nothing (its
//! `tx_burst` pushes every packet back). The control plane attaches each queue pair when the
//! frontend has set its rings up, and detaches it (draining or clearing its in-flight copies
//! first) before its rings or the guest memory change: see [`VhostPort::attach_pair`],
//! [`VhostPort::detach_pair`].
//!
//! # Several queue pairs (virtio-net multiqueue)
//!
//! Pairs attach and detach independently; one PMD thread serves all the pairs of a port (or of a
//! shard, see below). `rx_burst` polls the
//! attached pairs' TX queues round-robin (the first pair polled moves on by one each call, so a
//! busy pair cannot starve the others). `tx_burst` spreads packets over the attached pairs' RX
//! queues by a hash of the Ethernet header (and of the IPv4 protocol and addresses): every
//! packet of one flow goes to the same pair, so a flow stays in order. What the pairs cannot take
//! stays in the burst in its original order.
//!
//! # Shards (queue pairs on several PMDs)
//!
//! With several PMD threads each queue pair of a guest belongs to one PMD, and every PMD that owns
//! a pair holds its own `VhostPort` for the guest, a *shard*, with only its pairs attached
//! ([`VhostPort::shard`]). The shards of one port share a [`ShardSet`]: one flag per PMD, set
//! while that PMD's shard has a pair attached. It is written when a pair attaches or detaches and
//! read, without a lock, by the other PMDs' L2 switches (a frame another PMD flooded was already
//! given to that PMD's shard of the port, so it is not given to this one too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use copy_engine::CopyEngine;
use smallvec::SmallVec;

use crate::switch::pool::Packet;
use crate::switch::port::{Port, PortCtx, PortStats};
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
    /// Serve this queue pair as pair `pair` of port `port` (index in the PMD).
    Attach {
        /// The port's index in the PMD.
        port: usize,
        /// The pair's index in the port (virtio-net: vrings `2 * pair` and `2 * pair + 1`).
        pair: usize,
        /// The guest RX queue.
        north: Northbound,
        /// The guest TX queue.
        south: Southbound,
        /// Who attaches it (a vhost-user connection): only its owner's detaches touch it.
        owner: u64,
    },
    /// Detach queue pair `pair` of port `port` ([`VhostPort::detach_pair`]), or every pair when
    /// `pair` is `None` ([`VhostPort::detach`]), and answer with the ring positions of each pair
    /// detached (empty: nothing was attached). Once the answer is sent the PMD holds no reference
    /// to those pairs' guest memory and no copy into it is in flight.
    Detach {
        /// The port's index in the PMD.
        port: usize,
        /// The pair to detach, or `None` for all of them.
        pair: Option<usize>,
        /// Drain (guest still there) or clear (guest gone).
        mode: DetachMode,
        /// Where the answer goes: `(pair, bases)` for each pair detached.
        reply: Sender<Vec<(usize, DetachedBases)>>,
        /// Only pairs attached by this owner (`None`: whoever attached them).
        owner: Option<u64>,
    },
}

/// Which PMDs serve some of a port's queue pairs now: one flag per PMD, set while that PMD's
/// shard of the port has at least one pair attached (see the module docs).
#[derive(Debug)]
pub struct ShardSet {
    up: Box<[AtomicBool]>,
}

impl ShardSet {
    /// A set for a switch of `pmds` PMD threads, every shard down.
    pub fn new(pmds: usize) -> Arc<Self> {
        Arc::new(ShardSet { up: (0..pmds).map(|_| AtomicBool::new(false)).collect() })
    }

    /// Whether PMD `pmd`'s shard has a queue pair attached.
    pub fn is_up(&self, pmd: usize) -> bool {
        self.up.get(pmd).is_some_and(|f| f.load(Ordering::Relaxed))
    }

    fn set(&self, pmd: usize, up: bool) {
        if let Some(f) = self.up.get(pmd) {
            f.store(up, Ordering::Relaxed);
        }
    }
}

/// One attached queue pair.
#[derive(Debug)]
struct QueuePair {
    index: usize,
    north: Northbound,
    south: Southbound,
    /// Who attached it (see [`PortCommand::Attach`]).
    owner: u64,
}

/// A guest's queue pairs as a switch port.
#[derive(Debug)]
pub struct VhostPort {
    name: String,
    /// The attached pairs, by ascending index.
    pairs: Vec<QueuePair>,
    /// Where the next `rx_burst` starts polling (round-robin over `pairs`).
    next_rx: usize,
    /// Per-pair sub-bursts of `tx_burst` (kept to avoid allocating per call).
    scratch: Vec<Burst>,
    stats: PortStats,
    /// Counters of queue pairs attached earlier (a port's counters survive a reconnect).
    past: (QueueStats, QueueStats),
    last_error: Option<VhostError>,
    /// Queue pairs attached so far.
    attaches: u64,
    /// Packets a drained pair had received and not yet handed on, in order (see `rx_burst`).
    pending: Vec<Packet>,
    /// With several PMDs: the port's shards, and the PMD this one runs on.
    shard: Option<(Arc<ShardSet>, usize)>,
    /// The queue pairs this port (shard) is to serve, when the switch assigned them.
    assigned: Option<Vec<usize>>,
}

impl VhostPort {
    /// A port over one queue pair (pair 0): a guest RX queue (`north`) and TX queue (`south`).
    pub fn new(name: impl Into<String>, north: Northbound, south: Southbound) -> Self {
        let mut p = Self::unattached(name);
        p.pairs.push(QueuePair { index: 0, north, south, owner: 0 });
        p
    }

    /// A port with no queue pair yet (a vhost-user socket waiting for its frontend).
    pub fn unattached(name: impl Into<String>) -> Self {
        VhostPort {
            name: name.into(),
            pairs: Vec::new(),
            next_rx: 0,
            scratch: Vec::new(),
            stats: PortStats::default(),
            past: Default::default(),
            last_error: None,
            attaches: 0,
            pending: Vec::new(),
            shard: None,
            assigned: None,
        }
    }

    /// An unattached shard of a port whose queue pairs several PMDs serve: this one runs on PMD
    /// `pmd`, and keeps its flag in `set` (shared with the port's other shards) up to date.
    pub fn shard(name: impl Into<String>, set: Arc<ShardSet>, pmd: usize) -> Self {
        let mut p = Self::unattached(name);
        p.shard = Some((set, pmd));
        p
    }

    /// The same port, recording the queue pairs the switch assigned to it (what `show` reports;
    /// the vhost-user device attaches only those here).
    pub fn with_assigned_pairs(mut self, pairs: Vec<usize>) -> Self {
        self.assigned = Some(pairs);
        self
    }

    /// The queue pairs the switch assigned to this port (shard), if it said.
    pub fn assigned_pairs(&self) -> Option<&[usize]> {
        self.assigned.as_deref()
    }

    /// Whether another shard of this port, on PMD `pmd`, has a queue pair attached.
    pub fn shard_up_on(&self, pmd: usize) -> bool {
        self.shard.as_ref().is_some_and(|(set, me)| *me != pmd && set.is_up(pmd))
    }

    /// See [`Port::flood_delivered_elsewhere`].
    pub fn flood_delivered_elsewhere(&self, pmd: usize) -> bool {
        self.shard
            .as_ref()
            .is_some_and(|(set, me)| *me != pmd && (set.is_up(pmd) || (0..*me).any(|k| k != pmd && set.is_up(k))))
    }

    /// Publishes whether this shard has a pair attached (after an attach or a detach).
    fn publish_up(&self) {
        if let Some((set, me)) = &self.shard {
            set.set(*me, !self.pairs.is_empty());
        }
    }

    /// Whether at least one queue pair is attached.
    pub fn is_attached(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// Whether queue pair `pair` is attached.
    pub fn is_pair_attached(&self, pair: usize) -> bool {
        self.pairs.iter().any(|qp| qp.index == pair)
    }

    /// Counts the packets `rx_burst` put in `out` after `before`.
    fn count_rx(&mut self, out: &Burst, before: usize) -> usize {
        let got = out.len() - before;
        self.stats.rx_packets += got as u64;
        self.stats.rx_bytes += out[before..].iter().map(|p| p.len() as u64).sum::<u64>();
        got
    }

    /// How many times a queue pair was attached (a reattach after a reconfiguration counts).
    pub fn attaches(&self) -> u64 {
        self.attaches
    }

    /// The indexes of the attached queue pairs, ascending.
    pub fn attached_pairs(&self) -> Vec<usize> {
        self.pairs.iter().map(|qp| qp.index).collect()
    }

    /// Attaches a queue pair as pair 0 (see [`attach_pair`](Self::attach_pair)).
    pub fn attach<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>, north: Northbound, south: Southbound) {
        self.attach_pair(cx, 0, north, south);
    }

    /// Attaches a queue pair as pair `pair` (a previous pair `pair` must have been detached: it is
    /// cleared otherwise). Other pairs are not touched.
    pub fn attach_pair<E: CopyEngine>(
        &mut self,
        cx: &mut PortCtx<'_, E>,
        pair: usize,
        north: Northbound,
        south: Southbound,
    ) {
        self.attach_owned(cx, 0, pair, north, south);
    }

    /// As [`attach_pair`](Self::attach_pair), for `owner` (a vhost-user connection: during a
    /// live migration on one host, the source's and the destination's frontends are two
    /// connections of one port, and each may only detach its own pairs).
    pub fn attach_owned<E: CopyEngine>(
        &mut self,
        cx: &mut PortCtx<'_, E>,
        owner: u64,
        pair: usize,
        north: Northbound,
        south: Southbound,
    ) {
        self.detach_pair(cx, pair, DetachMode::Clear);
        let at = self.pairs.partition_point(|qp| qp.index < pair);
        self.pairs.insert(at, QueuePair { index: pair, north, south, owner });
        self.attaches += 1;
        if self.pairs.len() == 1 {
            self.last_error = None;
        }
        self.publish_up();
    }

    /// Detaches every queue pair (see [`detach_pair`](Self::detach_pair)); returns each one's
    /// index and ring positions.
    pub fn detach<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>, mode: DetachMode) -> Vec<(usize, DetachedBases)> {
        self.detach_owned(cx, None, None, mode)
    }

    /// Detaches pair `pair` (`None`: every pair) if `owner` attached it (`None`: whoever did).
    pub fn detach_owned<E: CopyEngine>(
        &mut self,
        cx: &mut PortCtx<'_, E>,
        owner: Option<u64>,
        pair: Option<usize>,
        mode: DetachMode,
    ) -> Vec<(usize, DetachedBases)> {
        let pairs: Vec<usize> = self
            .pairs
            .iter()
            .filter(|qp| pair.is_none_or(|k| qp.index == k) && owner.is_none_or(|o| qp.owner == o))
            .map(|qp| qp.index)
            .collect();
        pairs.into_iter().filter_map(|k| Some((k, self.detach_pair(cx, k, mode)?))).collect()
    }

    /// Detaches queue pair `pair`, if attached: waits for every copy in flight on the channel,
    /// then drains or clears that pair's queues (see [`DetachMode`]) and drops them. Returns the
    /// rings' next avail indexes. After it returns no copy can touch the pair's guest memory, and
    /// the port holds no reference to it through that pair. The other pairs keep running: their
    /// finished copies complete on their next poll.
    pub fn detach_pair<E: CopyEngine>(
        &mut self,
        cx: &mut PortCtx<'_, E>,
        pair: usize,
        mode: DetachMode,
    ) -> Option<DetachedBases> {
        let at = self.pairs.iter().position(|qp| qp.index == pair)?;
        let QueuePair { mut north, mut south, .. } = self.pairs.remove(at);
        // Down before the drain: another PMD's flood no longer counts on this shard.
        self.publish_up();
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
                // Received (the guest has its chains back) but not yet forwarded: the next
                // rx_burst hands them on before anything newer, so a reconfiguration loses none.
                self.pending.extend(out);
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

    /// The northbound (guest RX) queue of the first attached pair.
    ///
    /// # Panics
    ///
    /// If the port is unattached (see [`queues`](Self::queues)).
    pub fn north(&self) -> &Northbound {
        self.queues().expect("vhost port has no queue pair attached").0
    }

    /// The southbound (guest TX) queue of the first attached pair.
    ///
    /// # Panics
    ///
    /// If the port is unattached (see [`queues`](Self::queues)).
    pub fn south(&self) -> &Southbound {
        self.queues().expect("vhost port has no queue pair attached").1
    }

    /// The first attached queue pair, if any.
    pub fn queues(&self) -> Option<(&Northbound, &Southbound)> {
        self.pairs.first().map(|qp| (&qp.north, &qp.south))
    }

    /// Queue pair `pair`, if attached.
    pub fn pair(&self, pair: usize) -> Option<(&Northbound, &Southbound)> {
        self.pairs.iter().find(|qp| qp.index == pair).map(|qp| (&qp.north, &qp.south))
    }

    /// The last error a queue reported (a broken queue stays broken).
    pub fn last_error(&self) -> Option<VhostError> {
        self.last_error
    }

    /// The queues' counters, summed over every queue pair this port had: (northbound,
    /// southbound). `in_flight` is the sum over the attached pairs.
    pub fn queue_stats(&self) -> (QueueStats, QueueStats) {
        let (mut n, mut s) = self.past;
        n.in_flight = 0;
        s.in_flight = 0;
        for qp in &self.pairs {
            let (qn, qs) = (qp.north.stats(), qp.south.stats());
            let (fn_, fs) = (n.in_flight + qn.in_flight, s.in_flight + qs.in_flight);
            add_queue_stats(&mut n, &qn);
            add_queue_stats(&mut s, &qs);
            n.in_flight = fn_;
            s.in_flight = fs;
        }
        (n, s)
    }

    /// Each attached queue pair's counters: `(pair, northbound, southbound)`.
    pub fn pair_stats(&self) -> Vec<(usize, QueueStats, QueueStats)> {
        self.pairs.iter().map(|qp| (qp.index, qp.north.stats(), qp.south.stats())).collect()
    }

    fn note(&mut self, e: VhostError) {
        if self.last_error.is_none() || e != VhostError::Broken {
            self.last_error = Some(e);
        }
    }

    /// Stops every pair's queues and then forgets in-flight state without touching guest memory
    /// (a guest that went away). The queue pairs stay attached.
    pub fn clear<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>) {
        for qp in &mut self.pairs {
            qp.north.clear(cx.chan, cx.pool);
            qp.south.clear(cx.chan, cx.pool);
        }
    }

    /// Offers `pkts` to several pairs: each packet to the pair its flow hashes to. What a pair
    /// cannot take goes back into `pkts` in the original order; what a broken pair was given is
    /// dropped. Returns the error of the last pair that failed.
    fn tx_spread<E: CopyEngine>(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> Option<VhostError> {
        let n = self.pairs.len();
        if self.scratch.len() < n {
            self.scratch.resize_with(n, Burst::new);
        }
        let mut assign: SmallVec<[u16; 2 * crate::vhost::BURST]> = SmallVec::new();
        for p in pkts.drain(..) {
            let k = flow_hash(cx.pool.data(&p)) as usize % n;
            assign.push(k as u16);
            self.scratch[k].push(p);
        }
        // How many of each pair's packets (in order) were taken or dropped.
        let mut taken: SmallVec<[usize; 8]> = SmallVec::from_elem(0, n);
        let mut err = None;
        for (k, qp) in self.pairs.iter_mut().enumerate() {
            let sub = &mut self.scratch[k];
            if sub.is_empty() {
                continue;
            }
            let offered = sub.len();
            match qp.north.enqueue_burst(cx.chan, cx.pool, sub) {
                Ok(_) => {}
                Err(e) => {
                    // A broken guest queue takes nothing: its share is dropped here, counted, so
                    // one guest queue cannot hold up the switch.
                    err = Some(e);
                    self.stats.drops += sub.len() as u64;
                    for p in sub.drain(..) {
                        cx.pool.free(p);
                    }
                }
            }
            taken[k] = offered - sub.len();
            // Popped from the back below: the leftovers come out in order.
            sub.reverse();
        }
        // Put the leftovers back in their original order.
        let mut seen: SmallVec<[usize; 8]> = SmallVec::from_elem(0, n);
        for k in assign {
            let k = k as usize;
            if seen[k] >= taken[k] {
                pkts.push(self.scratch[k].pop().expect("a leftover for each packet not taken"));
            }
            seen[k] += 1;
        }
        err
    }
}

/// A flow hash (FNV-1a) of a frame's Ethernet header and, for IPv4, its protocol and addresses:
/// fields that every packet of a flow shares (not the IPv4 length, id or checksum).
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    mix(&frame[..frame.len().min(14)]);
    if frame.len() >= 34 && frame[12..14] == [0x08, 0x00] {
        mix(&frame[23..24]);
        mix(&frame[26..34]);
    }
    h ^ (h >> 16)
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
        let before = out.len();
        if !self.pending.is_empty() {
            // What a drained pair had received comes before anything its successor receives.
            let k = self.pending.len().min(max);
            out.extend(self.pending.drain(..k));
            return self.count_rx(out, before);
        }
        let n = self.pairs.len();
        if n == 0 {
            return 0;
        }
        let start = self.next_rx % n;
        self.next_rx = (start + 1) % n;
        let mut err = None;
        for i in 0..n {
            let south = &mut self.pairs[(start + i) % n].south;
            if let Err(e) = south.complete(cx.chan, cx.pool, out, before + max) {
                err = Some(e);
            }
            if !south.queue().is_broken() {
                let room = cx.pool.available().min(max);
                if let Err(e) = south.dequeue_burst(cx.chan, cx.pool, room) {
                    err = Some(e);
                }
            }
        }
        if let Some(e) = err {
            self.note(e);
        }
        self.count_rx(out, before)
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let offered = pkts.len();
        let err = match self.pairs.as_mut_slice() {
            [] => {
                // No guest: everything waits with the caller (push back).
                self.stats.tx_pushed_back += offered as u64;
                return 0;
            }
            [qp] => match qp.north.enqueue_burst(cx.chan, cx.pool, pkts) {
                Ok(_) => None,
                Err(e) => {
                    // A broken guest queue takes nothing: what is left is dropped here, counted,
                    // so one guest cannot hold up the switch.
                    self.stats.drops += pkts.len() as u64;
                    for p in pkts.drain(..) {
                        cx.pool.free(p);
                    }
                    Some(e)
                }
            },
            _ => self.tx_spread(cx, pkts),
        };
        if let Some(e) = err {
            self.note(e);
        }
        self.stats.tx_pushed_back += pkts.len() as u64;
        offered - pkts.len()
    }

    fn is_up(&self) -> bool {
        self.is_attached()
    }

    fn shard_up_on(&self, pmd: usize) -> bool {
        VhostPort::shard_up_on(self, pmd)
    }

    fn flood_delivered_elsewhere(&self, pmd: usize) -> bool {
        VhostPort::flood_delivered_elsewhere(self, pmd)
    }

    fn poll(&mut self, cx: &mut PortCtx<'_, E>) {
        let mut err = None;
        for qp in &mut self.pairs {
            if let Err(e) = qp.north.complete(cx.chan, cx.pool) {
                err = Some(e);
            }
        }
        if let Some(e) = err {
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
        let (north, south) = VhostPort::queue_stats(self);
        s.tx_packets = north.packets;
        s.tx_bytes = north.bytes;
        s.add_queue(&north);
        s.add_queue(&south);
        s
    }

    fn stop(&mut self, cx: &mut PortCtx<'_, E>) {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        for qp in &mut self.pairs {
            if let Err(e) = qp.north.drain(cx.chan, cx.pool) {
                errs.push(e);
            }
            if let Err(e) = qp.south.drain(cx.chan, cx.pool, &mut out) {
                errs.push(e);
            }
        }
        for e in errs {
            self.note(e);
        }
        // Received but never forwarded: a stopped port's last packets are freed, and counted.
        out.append(&mut self.pending);
        self.stats.drops += out.len() as u64;
        for p in out {
            cx.pool.free(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::flow_hash;

    fn ipv4_frame(src: [u8; 4], total_len: u16, id: u16, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 34 + payload];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&total_len.to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[24..26].copy_from_slice(&id.wrapping_mul(7).to_be_bytes()); // checksum: anything
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f
    }

    #[test]
    fn a_flow_hashes_the_same_whatever_its_length_id_and_checksum() {
        let a = flow_hash(&ipv4_frame([198, 18, 0, 1], 46, 1, 32));
        assert_eq!(a, flow_hash(&ipv4_frame([198, 18, 0, 1], 1000, 999, 966)));
        // Another source address is another flow; over many, both of two pairs get some.
        let pairs: Vec<u32> = (0..64u8).map(|i| flow_hash(&ipv4_frame([198, 18, 0, i], 46, 1, 32)) % 2).collect();
        assert!(pairs.contains(&0) && pairs.contains(&1), "{pairs:?}");
        // Short and non-IP frames hash too.
        assert_eq!(flow_hash(&[]), flow_hash(&[]));
        assert_ne!(flow_hash(&[1; 14]), flow_hash(&[2; 14]));
    }
}
