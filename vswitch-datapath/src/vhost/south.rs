//! Southbound, guest -> host ("Vhost_RX", vhost dequeue): packets out of a guest's TX queue.
//!
//! For each TX chain the queue checks the `virtio_net_hdr` against what the chain holds, takes a
//! packet buffer from the pool and enqueues copies of the chain's readable segments (after the
//! header) into it on the PMD thread's [`Channel`]. When the tickets retire, strictly in the order
//! the chains were taken, the packets are handed to the switch and the chains go back on the used
//! ring, published with one release store per poll. Without a free packet buffer the queue simply
//! takes no more chains (they wait in the ring: push back, never drop).
//!
//! Chains of one readable descriptor, what virtio-net drivers post with VIRTIO_F_VERSION_1, are
//! taken as a run per burst ([`Virtqueue::pop_tx_singles`], split and packed rings) and handled
//! by the same group code as walked chains, compiled for one segment; any other chain goes
//! through [`Virtqueue::pop_burst`].
//!
//! This module must not touch the rings except through [`Virtqueue`] (split or packed: the same
//! path serves both formats).

use std::collections::VecDeque;

use copy_engine::{Capabilities, Channel, CopyEngine, EnqueueError, Ticket};

use crate::mem::access::prefetch_host;
use crate::switch::pool::{Packet, PacketPool};
use crate::vhost::copy::{copy_one, copy_segments, CopyBatch, Dir};
use crate::vhost::{Burst, Notifier, QueueStats, VhostError};
use crate::virtio::chain::{DescChain, ReadChain, RunEnd, SingleBuf};
use crate::virtio::net::{NetHdr, NET_HDR_LEN};
use crate::virtio::queue::Virtqueue;

/// One taken chain: its packet (none for a malformed chain) waits until `end` retires.
#[derive(Debug)]
struct InFlight {
    /// The packet being filled.
    pkt: Option<Packet>,
    /// The chain's head, returned on the used ring.
    head: u16,
    /// One past the packet's last ticket.
    end: Ticket,
    /// Whether the packet goes to the switch (false: freed; its copy was refused).
    deliver: bool,
}

/// The southbound path of one guest TX virtqueue.
#[derive(Debug)]
pub struct Southbound {
    q: Virtqueue,
    hdr_len: usize,
    inflight: VecDeque<InFlight>,
    /// Chains of the group being taken (`BURST` of them, reused).
    chains: Vec<DescChain>,
    /// The fast path's single-buffer chains of the group being taken.
    singles: Vec<SingleBuf>,
    /// The copies of the group being taken.
    batch: CopyBatch,
    /// Per chain of the group: the batch's length after its copies.
    marks: Vec<usize>,
    notifier: Notifier,
    stats: QueueStats,
}

impl Southbound {
    /// Breaks the queue if its guest memory was lost under the switch (counted once), and fails
    /// if the queue is broken.
    #[inline]
    fn check_memory(&mut self) -> Result<(), VhostError> {
        crate::vhost::check_memory(&mut self.q, &mut self.stats)
    }

    /// Serves `q` (a guest TX queue) whose chains start with a `hdr_len`-byte net header. Tells
    /// the guest not to kick the queue: the PMD polls it.
    pub fn new(q: impl Into<Virtqueue>, hdr_len: usize, notifier: Notifier) -> Self {
        let mut q = q.into();
        // The device only reads TX buffers (whatever WRITE flags a driver leaves on them).
        q.set_read_only(true);
        crate::vhost::poll_without_kicks(&mut q);
        let size = q.size() as usize;
        Southbound {
            q,
            hdr_len,
            inflight: VecDeque::with_capacity(size),
            chains: (0..crate::vhost::BURST).map(|_| DescChain::new()).collect(),
            singles: Vec::with_capacity(crate::vhost::BURST),
            batch: CopyBatch::default(),
            marks: Vec::with_capacity(crate::vhost::BURST),
            notifier,
            stats: QueueStats::default(),
        }
    }

    /// Takes up to `max` TX chains and enqueues the copies out of them (the caller submits).
    /// Returns how many chains were taken.
    ///
    /// Chains are taken in groups of up to [`BURST`](crate::vhost::BURST): first every chain of
    /// the group is taken and its first buffer prefetched, then each is checked and copied, so
    /// the cache misses on what the guest just wrote overlap instead of coming one at a time.
    /// For an asynchronous engine the copies of a group's engine-sized packets go to the channel
    /// in one [`Channel::enqueue_burst`]; packets the CPU copies anyway are copied one by one.
    pub fn dequeue_burst<E: CopyEngine>(
        &mut self,
        chan: &Channel<E>,
        pool: &mut PacketPool,
        max: usize,
    ) -> Result<usize, VhostError> {
        self.check_memory()?;
        let (off0, cpu0) = chan.copy_counts();
        let mut taken = 0;
        let mut result = Ok(());
        let mut chains = std::mem::take(&mut self.chains);
        let mut singles = std::mem::take(&mut self.singles);
        // Payloads this long are gathered into bursts; shorter ones are copied at once. So is
        // every payload while adaptive offload sends copies to the CPU (a probe among them goes
        // to the engine through the same channel call, in order).
        let batch_from = if chan.lagging() || chan.with_engine(|e| e.info().capabilities.contains(Capabilities::SYNC)) {
            usize::MAX
        } else {
            chan.policy().cpu_below
        };
        while taken < max {
            let want = (max - taken).min(chains.len());
            if pool.available() == 0 {
                self.stats.no_buffers += 1;
                break;
            }
            let want = want.min(pool.available());
            self.q.prefetch(want);
            // The run of single-buffer chains first; from the first chain of another kind, the
            // full walk.
            let (single, end) = self.q.pop_tx_singles(&mut singles, want);
            // At `Empty` the guest has sent nothing more (the run loaded the avail idx to see
            // so); at `Other` the next chain is `pop_burst`'s, in this round or the next.
            let (done, stop) = if single != 0 {
                let (done, refused) = self.take_chains(&singles[..single], chan, pool, batch_from, &mut result);
                (done, refused || end == RunEnd::Empty)
            } else if end == RunEnd::Empty {
                (0, true)
            } else {
                let (got, popped) = self.q.pop_burst(&mut chains[..want]);
                if let Err(e) = popped {
                    self.stats.broken += 1;
                    result = Err(e.into());
                }
                let (done, refused) = self.take_chains(&chains[..got], chan, pool, batch_from, &mut result);
                (done, refused || got < want)
            };
            taken += done;
            if stop {
                break;
            }
        }
        self.chains = chains;
        self.singles = singles;
        let (off1, cpu1) = chan.copy_counts();
        self.stats.copies_offloaded += off1 - off0;
        self.stats.copies_cpu += cpu1 - cpu0;
        self.stats.in_flight = self.inflight.len() as u64;
        result.map(|()| taken)
    }

    /// Prefetches, checks and copies (or returns) a group of chains just taken, in order. Copies
    /// for an asynchronous engine are gathered and handed over in one burst; copies the CPU makes
    /// anyway (below the policy's threshold, or a synchronous engine) are made at once, while the
    /// packet's lines are hot, after the gathered ones are handed over, so tickets keep the
    /// chains' order. If the channel refuses a copy (a stopped device), the chains after the one
    /// it belongs to are given back untouched, as if never taken, and the error goes to `result`
    /// (unless it holds one). A group with no payload long enough for the engine is copied chain
    /// by chain (the CPU makes every copy, at once). Returns how many chains stay taken and
    /// whether a refusal ended the group.
    #[inline(always)]
    fn take_chains<C: ReadChain, E: CopyEngine>(
        &mut self,
        chains: &[C],
        chan: &Channel<E>,
        pool: &mut PacketPool,
        batch_from: usize,
        result: &mut Result<(), VhostError>,
    ) -> (usize, bool) {
        let got = chains.len();
        let packed = self.q.is_packed();
        for chain in chains {
            if let Some(s) = chain.readable().first() {
                // The header's line; on a packed ring also the next one when the segment
                // reaches it (after a 12-byte header even a 64-byte payload ends there, and
                // the copy stalls on that line, which the guest's core wrote moments ago).
                // Measured with DPDK virtio-user sending 64 B (one 76 B segment at line
                // offset 52 in both formats): packed 13.1 -> 20.8 Mpps, split 17.6 -> 16.8,
                // so split rings keep the one prefetch (why split loses is not understood).
                let a = s.host_addr();
                prefetch_host(a);
                if packed && (a & 63) + s.len() as usize > 64 {
                    prefetch_host(a + 64);
                }
            }
        }
        let hdr_len = self.hdr_len;
        if chains.iter().all(|c| (c.readable_len() as usize) < batch_from.saturating_add(hdr_len)) {
            for (k, chain) in chains.iter().enumerate() {
                if let Err(e) = self.start_copy(chain, chan, pool) {
                    let back = self.q.give_back((got - k - 1) as u16);
                    if result.is_ok() {
                        *result = Err(back.map_or_else(VhostError::from, |()| e));
                    }
                    return (k + 1, true);
                }
            }
            (got, false)
        } else if let Err((back, e)) = self.take_group(chains, chan, pool, batch_from) {
            let given = self.q.give_back(back as u16);
            if result.is_ok() {
                *result = Err(given.map_or_else(VhostError::from, |()| VhostError::Engine(e)));
            }
            (got - back, true)
        } else {
            (got, false)
        }
    }

    /// Checks and copies a group of chains that has payloads for the engine: those are gathered
    /// and handed over in one burst; copies the CPU makes anyway (below the policy's threshold)
    /// are made at once, after the gathered ones are handed over, so tickets keep the chains'
    /// order. If the channel refuses a copy (a stopped device), returns how many chains, the last
    /// of the group, are to be given back untouched, as if never taken.
    fn take_group<C: ReadChain, E: CopyEngine>(
        &mut self,
        chains: &[C],
        chan: &Channel<E>,
        pool: &mut PacketPool,
        batch_from: usize,
    ) -> Result<(), (usize, EnqueueError)> {
        let got = chains.len();
        self.batch.clear();
        self.marks.clear();
        let mut base = self.inflight.len();
        for (k, chain) in chains.iter().enumerate() {
            if !self.gather(chain, pool, batch_from) {
                continue;
            }
            // SAFETY: see `flush`.
            if let Err((dropped, e)) = unsafe { self.flush_any(chan, pool, base) } {
                // `dropped` counts this chain: its record came after the batch's.
                return Err((dropped + got - k - 1, e));
            }
            base = self.inflight.len();
            if let Err(e) = self.copy_now(chain, chan, pool) {
                return Err((got - k - 1, e));
            }
        }
        // SAFETY: see `flush`.
        unsafe { self.flush_any(chan, pool, base) }
    }

    /// Checks a chain just taken, gives it a fresh packet and its in-flight record (a malformed
    /// chain gets one without a packet: it is returned unused, in order). A payload of at least
    /// `batch_from` bytes has its copies added to the batch, and its record gets its `end` when
    /// the batch is flushed. Returns true for a packet to copy at once (its record last).
    #[inline(always)]
    fn gather<C: ReadChain>(&mut self, chain: &C, pool: &mut PacketPool, batch_from: usize) -> bool {
        let head = chain.head();
        let total = chain.readable_len() as usize;
        // Malformed for TX (`None`), or more than a packet holds: returned to the guest unused,
        // after every earlier chain.
        let (pkt, now) = match self.packet_len(chain, total) {
            Some(plen) if plen <= pool.data_room() => {
                let mut pkt = pool.alloc().expect("checked a buffer is free");
                pool.set_len(&mut pkt, plen);
                let now = plen < batch_from;
                if !now {
                    let flat = pool.data_ptr(&pkt);
                    match chain.readable() {
                        // Header and packet in one segment (`packet_len` checked it holds
                        // `hdr_len + plen`).
                        &[seg] => self.batch.push(Dir::FromGuest, flat, plen, seg, self.hdr_len),
                        // The segments hold `hdr_len + plen` (`packet_len` checked).
                        segs => self.batch.push_segments(Dir::FromGuest, flat, plen, segs, self.hdr_len),
                    }
                    self.marks.push(self.batch.len());
                }
                (Some(pkt), now)
            }
            _ => {
                self.stats.bad_chains += 1;
                self.marks.push(self.batch.len());
                (None, false)
            }
        };
        let deliver = pkt.is_some();
        self.inflight.push_back(InFlight { pkt, head, end: Ticket::ZERO, deliver });
        now
    }

    /// [`flush`](Self::flush) when anything was gathered (inline: a group of CPU copies gathers
    /// nothing).
    ///
    /// # Safety
    /// As `flush`.
    #[inline(always)]
    unsafe fn flush_any<E: CopyEngine>(
        &mut self,
        chan: &Channel<E>,
        pool: &mut PacketPool,
        base: usize,
    ) -> Result<(), (usize, EnqueueError)> {
        if self.marks.is_empty() {
            return Ok(());
        }
        // SAFETY: this function's contract.
        unsafe { self.flush(chan, pool, base) }
    }

    /// Hands the batch's copies to the channel and gives the chains gathered into it (the
    /// in-flight records from `base` on) their `end` tickets; empties the batch. When the channel
    /// refuses a copy, the chain it belongs to waits for its earlier pieces and is then returned
    /// unused, and the chains gathered after it are dropped from flight (their packets freed):
    /// the error comes back with how many were dropped, for the caller to give back.
    ///
    /// # Safety
    /// (The one contract of the batched copies.) Every op was gathered from a validated chain's
    /// readable segments, inside its regions, and a packet buffer of the pool; the in-flight
    /// records own the buffers and keep the chains taken until the ops' tickets retire, and
    /// stop/clear drain the channel before memory goes away.
    #[inline(never)]
    unsafe fn flush<E: CopyEngine>(
        &mut self,
        chan: &Channel<E>,
        pool: &mut PacketPool,
        base: usize,
    ) -> Result<(), (usize, EnqueueError)> {
        // SAFETY: this function's contract.
        let sent = unsafe { self.batch.enqueue(chan) };
        self.stats.copies_cpu += self.batch.pushed_back() as u64;
        for (f, &mark) in self.inflight.range_mut(base..).zip(&self.marks) {
            f.end = self.batch.end(mark);
        }
        let out = match sent {
            Ok(()) => Ok(()),
            Err(e) => {
                let k = self.marks.iter().position(|&m| !self.batch.accepted(m)).expect("a chain holds the op");
                self.stats.engine_errors += 1;
                self.inflight[base + k].deliver = false;
                let dropped = self.inflight.len() - (base + k + 1);
                for f in self.inflight.drain(base + k + 1..) {
                    if let Some(p) = f.pkt {
                        pool.free(p);
                    }
                }
                Err((dropped, e))
            }
        };
        self.batch.clear();
        self.marks.clear();
        out
    }

    /// Copies a checked chain now (the CPU takes such copies, or a synchronous engine) into the
    /// packet of the newest in-flight record, through the channel op by op, and gives the record
    /// its `end`.
    #[inline(always)]
    fn copy_now<C: ReadChain, E: CopyEngine>(
        &mut self,
        chain: &C,
        chan: &Channel<E>,
        pool: &PacketPool,
    ) -> Result<(), EnqueueError> {
        let f = self.inflight.back_mut().expect("gather pushed the record");
        let pkt = f.pkt.as_ref().expect("a packet to copy into");
        let (plen, flat) = (pkt.len(), pool.data_ptr(pkt));
        // Both arms: the packet buffer is owned by the in-flight record and the chain stays taken
        // until `end` retires; the segments come from a validated chain.
        let r = match chain.readable() {
            // Header and packet in one segment (`packet_len` checked it holds `hdr_len + plen`).
            // SAFETY: buffer and chain outlive the copy (above); the segment holds `hdr_len + plen`.
            &[seg] => unsafe { copy_one(chan, Dir::FromGuest, flat, plen, seg, self.hdr_len) },
            // SAFETY: buffer and chain outlive the copy (above); the segments hold `hdr_len + plen`.
            segs => unsafe { copy_segments(chan, Dir::FromGuest, flat, plen, segs, self.hdr_len) },
        };
        f.end = chan.next_ticket();
        match r {
            Ok(c) => {
                self.stats.copies_cpu += c.pushed_back as u64;
                Ok(())
            }
            Err(e) => {
                // A stopped device refused the op: earlier pieces may be in flight, so the buffer
                // is freed and the chain returned only after they retire; nothing is forwarded.
                f.deliver = false;
                self.stats.engine_errors += 1;
                Err(e)
            }
        }
    }

    /// Checks a chain just taken and starts copying it into a fresh packet.
    fn start_copy<C: ReadChain, E: CopyEngine>(
        &mut self,
        chain: &C,
        chan: &Channel<E>,
        pool: &mut PacketPool,
    ) -> Result<(), VhostError> {
        let head = chain.head();
        let total = chain.readable_len() as usize;
        let Some(plen) = self.packet_len(chain, total) else {
            // Malformed for TX: returned to the guest unused, after every earlier chain.
            self.stats.bad_chains += 1;
            self.inflight.push_back(InFlight { pkt: None, head, end: chan.next_ticket(), deliver: false });
            return Ok(());
        };
        if plen > pool.data_room() {
            self.stats.bad_chains += 1;
            self.inflight.push_back(InFlight { pkt: None, head, end: chan.next_ticket(), deliver: false });
            return Ok(());
        }
        let mut pkt = pool.alloc().expect("checked a buffer is free");
        pool.set_len(&mut pkt, plen);
        // Both arms: the packet buffer is owned by the in-flight record and the chain stays taken
        // until `end` retires; the segments come from a validated chain.
        let r = match chain.readable() {
            // Header and packet in one segment (`packet_len` checked it holds `hdr_len + plen`).
            // SAFETY: buffer and chain outlive the copy (above); the segment holds `hdr_len + plen`.
            &[seg] => unsafe { copy_one(chan, Dir::FromGuest, pool.data_ptr(&pkt), plen, seg, self.hdr_len) },
            // SAFETY: buffer and chain outlive the copy (above); the segments hold `hdr_len + plen`.
            segs => unsafe { copy_segments(chan, Dir::FromGuest, pool.data_ptr(&pkt), plen, segs, self.hdr_len) },
        };
        match r {
            Ok(c) => {
                self.stats.copies_cpu += c.pushed_back as u64;
                self.inflight.push_back(InFlight { pkt: Some(pkt), head, end: chan.next_ticket(), deliver: true });
                Ok(())
            }
            Err(e) => {
                // A stopped device refused the op: earlier pieces may be in flight, so the buffer
                // is freed and the chain returned only after they retire; nothing is forwarded.
                self.stats.engine_errors += 1;
                self.inflight.push_back(InFlight { pkt: Some(pkt), head, end: chan.next_ticket(), deliver: false });
                Err(VhostError::Engine(e))
            }
        }
    }

    /// The payload length of a TX chain of `total` readable bytes, or `None` when its header is
    /// missing or claims more than the chain holds.
    #[inline(always)]
    fn packet_len<C: ReadChain>(&self, chain: &C, total: usize) -> Option<usize> {
        if total < self.hdr_len {
            return None;
        }
        let plen = total - self.hdr_len;
        let mut raw = [0u8; NET_HDR_LEN];
        // The 12-byte header as the whole array: a constant-length copy once inlined.
        let mem = self.q.memory();
        if self.hdr_len == NET_HDR_LEN {
            mem.gather(chain.readable(), &mut raw).ok()?;
        } else {
            mem.gather(chain.readable(), &mut raw[..self.hdr_len]).ok()?;
        }
        // The fields checked, read from the 12-byte array: no per-field bounds checks.
        let hdr = NetHdr::new_checked(&raw, self.hdr_len).ok()?;
        // No offloads are negotiated: a GSO packet or a checksum request outside the packet is a
        // header claiming what the chain does not hold.
        if hdr.gso_type() != 0 {
            return None;
        }
        if hdr.needs_csum() && hdr.csum_start() as usize + hdr.csum_offset() as usize + 2 > plen {
            return None;
        }
        Some(plen)
    }

    /// Hands the packets whose copies are done to `out` (until it holds `max`), in order, and
    /// returns their chains on the used ring (one release store), notifying the guest if it asked.
    /// Call after [`Channel::progress`]. Returns how many chains completed.
    pub fn complete<E: CopyEngine>(
        &mut self,
        chan: &Channel<E>,
        pool: &mut PacketPool,
        out: &mut Burst,
        max: usize,
    ) -> Result<usize, VhostError> {
        // Packets copied out of memory that was lost are not the guest's: none is handed on.
        self.check_memory()?;
        let retired = chan.retired();
        // The chains done, up to the one whose packet `out` has no room for.
        let mut room = max.saturating_sub(out.len());
        let n = self
            .inflight
            .iter()
            .take_while(|f| {
                let fits = f.end <= retired && (!f.deliver || room != 0);
                room -= usize::from(fits && f.deliver);
                fits
            })
            .count();
        // Their used entries as one run; a failed store broke the queue after the ones before it,
        // and the packets are then not the guest's to forward.
        let r = self.q.push_used_run(self.inflight.range(..n).map(|f| (f.head, 0)));
        for f in self.inflight.drain(..n) {
            match f.pkt {
                Some(p) if f.deliver && r.is_ok() => {
                    self.stats.packets += 1;
                    self.stats.bytes += p.len() as u64;
                    out.push(p);
                }
                Some(p) => pool.free(p),
                None => {}
            }
        }
        self.stats.in_flight = self.inflight.len() as u64;
        r.map_err(|e| {
            self.stats.broken += 1;
            VhostError::from(e)
        })?;
        if n != 0 {
            crate::vhost::publish(&mut self.q, &mut self.notifier, &mut self.stats)?;
        }
        Ok(n)
    }

    /// Stops the queue: waits until every copy has retired, then hands the finished packets to
    /// `out` (and their chains back to the guest). After it returns no copy touches this queue's
    /// guest memory. `out` must have room for every in-flight packet (the queue size is enough).
    pub fn drain<E: CopyEngine>(
        &mut self,
        chan: &Channel<E>,
        pool: &mut PacketPool,
        out: &mut Vec<Packet>,
    ) -> Result<(), VhostError> {
        chan.drain();
        while !self.inflight.is_empty() {
            let mut burst = Burst::new();
            self.complete(chan, pool, &mut burst, crate::vhost::BURST)?;
            out.extend(burst);
        }
        Ok(())
    }

    /// Clears the queue for a guest that went away: waits for every copy to retire, then frees
    /// the in-flight packets without touching the guest's rings.
    pub fn clear<E: CopyEngine>(&mut self, chan: &Channel<E>, pool: &mut PacketPool) {
        chan.drain();
        for f in self.inflight.drain(..) {
            if let Some(p) = f.pkt {
                pool.free(p);
            }
        }
        self.stats.in_flight = 0;
    }

    /// Chains in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The queue's counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// The ring.
    pub fn queue(&self) -> &Virtqueue {
        &self.q
    }

    /// The ring, mutable (control plane).
    pub fn queue_mut(&mut self) -> &mut Virtqueue {
        &mut self.q
    }
}
