//! L2 forwarding with MAC learning: what a PMD does with a received packet when its ports form
//! one switch rather than fixed pairs.
//!
//! A packet's source MAC is learned on the port it came from; a known unicast destination goes to
//! its port only (or nowhere, if that is the port it came from); broadcast, multicast and unknown
//! unicast are flooded to every other port that is up. A flood of `n` targets costs `n - 1`
//! copies: the last target gets the received buffer itself.
//!
//! With several PMDs, each runs its own switch over its own ports plus one trunk port per other
//! PMD (a pair of cross-PMD rings): a MAC behind another PMD is learned on that trunk, and a frame
//! that came in on a trunk is flooded to local ports only.
//!
//! A guest whose queue pairs several PMDs serve is a port (a shard) on each of them. What one PMD
//! floods reaches its own shard of that guest there, so a PMD at the other end of the trunk does
//! not flood it to its shard as well (the guest would get it twice, or get back its own frame);
//! and a MAC learned on a local shard stays there when the same source comes in on the trunk from
//! a PMD that serves the same guest (the guest's frames come in on both; moving the MAC to and fro
//! would send one flow two ways and could reorder it).
//!
//! Order and push back: each port has a receive burst (packets not yet distributed, in arrival
//! order) and a transmit queue (packets waiting for that port, in the order they were
//! distributed; at most [`BURST`] so it never allocates). A packet is distributed only when every
//! one of its targets has room and the pool has buffers for its copies; otherwise it and everything
//! behind it wait for the next iteration. So packets from one port reach each destination in the
//! order they arrived, and nothing accepted is dropped for lack of room. This module owns those
//! queues and the MAC table; it must not know virtio or copy engines beyond the [`Port`] trait.

use std::time::{Duration, Instant};

use copy_engine::CopyEngine;

use crate::switch::mac_table::{is_group, Mac, MacTable};
use crate::switch::port::{Port, PortCtx};
use crate::vhost::{Burst, BURST};

/// The PMD refreshes its clock for the MAC table every this many iterations.
pub const CLOCK_EVERY: u64 = 64;

/// MAC learning settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearningConfig {
    /// Entries the MAC table holds.
    pub table_size: usize,
    /// A MAC not seen as a source for this long is forgotten.
    pub aging: Duration,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig { table_size: 4096, aging: Duration::from_secs(300) }
    }
}

/// Counters of the L2 forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Stats {
    /// Packets sent to the one port their destination was learned on.
    pub unicast: u64,
    /// Packets flooded (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Extra copies made for floods (at most targets - 1 per flooded packet).
    pub flood_copies: u64,
    /// Packets dropped because their destination is the port they came from.
    pub filtered: u64,
    /// Packets dropped because no other port was up, or their learned port was down.
    pub no_target: u64,
    /// Packets dropped as too short for an Ethernet header.
    pub runts: u64,
    /// Times distribution waited for a full transmit queue or for pool buffers.
    pub held: u64,
}

/// The learning switch's state on one PMD.
#[derive(Debug)]
pub struct L2Switch {
    table: MacTable,
    /// Per port: received, not yet distributed.
    rx: Vec<Burst>,
    /// Per port: distributed, waiting for the port to take it.
    tx: Vec<Burst>,
    stats: L2Stats,
    epoch: Instant,
    now_ms: u64,
}

/// Where one packet goes.
enum Targets {
    /// Nowhere: dropped, counted.
    Drop,
    /// One port.
    One(usize),
    /// Every other port that is up.
    Flood,
}

fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    let dst = frame.get(0..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    frame.get(13)?;
    Some((dst, src))
}

impl L2Switch {
    /// A learning switch with an empty table.
    pub fn new(cfg: LearningConfig) -> Self {
        let aging_ms = cfg.aging.as_millis().min(u64::MAX as u128) as u64;
        L2Switch {
            table: MacTable::new(cfg.table_size, aging_ms),
            rx: Vec::new(),
            tx: Vec::new(),
            stats: L2Stats::default(),
            epoch: Instant::now(),
            now_ms: 0,
        }
    }

    /// The MAC table.
    pub fn table(&self) -> &MacTable {
        &self.table
    }

    /// The MAC table's clock now (milliseconds since the switch started, refreshed every
    /// [`CLOCK_EVERY`] iterations).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The counters.
    pub fn stats(&self) -> L2Stats {
        self.stats
    }

    /// Packets held in the switch's queues (received or waiting for a port).
    pub fn held(&self) -> usize {
        self.rx.iter().chain(&self.tx).map(|b| b.len()).sum()
    }

    /// Rereads the clock (called by the PMD every [`CLOCK_EVERY`] iterations).
    pub fn tick(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
    }

    /// Moves the table's clock `by` ahead (tests of aging).
    pub fn advance_clock(&mut self, by: Duration) {
        self.epoch -= by;
        self.tick();
    }

    fn targets<E: CopyEngine>(
        &mut self,
        in_port: usize,
        from_peer: Option<usize>,
        ports: &[Box<dyn Port<E>>],
        frame: &[u8],
    ) -> Option<Targets> {
        let (dst, src) = macs(frame)?;
        let mut learn_on = in_port as u16;
        if let Some(x) = from_peer {
            // Seen on a local shard of a guest that PMD `x` serves too: it stays learned there.
            if let Some(p) = self.table.lookup(&src, self.now_ms) {
                // Only while the local shard can still deliver: else the MAC follows the trunk.
                if ports.get(p as usize).is_some_and(|q| q.is_up() && q.shard_up_on(x)) {
                    learn_on = p;
                }
            }
        }
        self.table.learn(src, learn_on, self.now_ms);
        if is_group(&dst) {
            return Some(Targets::Flood);
        }
        Some(match self.table.lookup(&dst, self.now_ms) {
            Some(p) if p as usize == in_port => Targets::Drop,
            Some(p) => Targets::One(p as usize),
            None => Targets::Flood,
        })
    }

    /// One forwarding pass over `ports`: receive where nothing waits, distribute, transmit.
    /// Returns packets taken by a port.
    pub fn forward<E: CopyEngine>(&mut self, ports: &mut [Box<dyn Port<E>>], cx: &mut PortCtx<'_, E>) -> u64 {
        let n = ports.len();
        self.rx.resize_with(n, Burst::new);
        self.tx.resize_with(n, Burst::new);
        for i in 0..n {
            if self.rx[i].is_empty() {
                ports[i].rx_burst(cx, &mut self.rx[i], BURST);
            }
            if !self.rx[i].is_empty() {
                self.distribute(i, ports, cx);
            }
        }
        let mut moved = 0u64;
        for (j, port) in ports.iter_mut().enumerate() {
            if !self.tx[j].is_empty() {
                moved += port.tx_burst(cx, &mut self.tx[j]) as u64;
            }
        }
        moved
    }

    fn distribute<E: CopyEngine>(&mut self, i: usize, ports: &[Box<dyn Port<E>>], cx: &mut PortCtx<'_, E>) {
        let mut it = std::mem::take(&mut self.rx[i]).into_iter();
        let from_peer = ports[i].trunk_peer();
        while let Some(pkt) = it.next() {
            let Some(t) = self.targets(i, from_peer, ports, cx.pool.data(&pkt)) else {
                self.stats.runts += 1;
                cx.pool.free(pkt);
                continue;
            };
            let room = |tx: &[Burst], j: usize| tx[j].len() < BURST;
            match t {
                Targets::Drop => {
                    self.stats.filtered += 1;
                    cx.pool.free(pkt);
                }
                Targets::One(j) if j >= ports.len() || !ports[j].is_up() => {
                    self.stats.no_target += 1;
                    cx.pool.free(pkt);
                }
                Targets::One(j) => {
                    if !room(&self.tx, j) {
                        self.hold(i, pkt, it);
                        return;
                    }
                    self.stats.unicast += 1;
                    self.tx[j].push(pkt);
                }
                Targets::Flood => {
                    let from_trunk = ports[i].is_trunk();
                    let up = |j: usize| {
                        j != i
                            && ports[j].is_up()
                            && !(from_trunk && ports[j].is_trunk())
                            && !from_peer.is_some_and(|x| ports[j].flood_delivered_elsewhere(x))
                    };
                    let count = (0..ports.len()).filter(|&j| up(j)).count();
                    if count == 0 {
                        self.stats.no_target += 1;
                        cx.pool.free(pkt);
                        continue;
                    }
                    if (0..ports.len()).any(|j| up(j) && !room(&self.tx, j)) || cx.pool.available() < count - 1 {
                        self.hold(i, pkt, it);
                        return;
                    }
                    self.stats.flooded += 1;
                    let last = (0..ports.len()).rfind(|&j| up(j)).unwrap_or(i);
                    for j in (0..last).filter(|&j| up(j)) {
                        // Buffers were counted above; `duplicate` cannot fail here.
                        if let Some(copy) = cx.pool.duplicate(&pkt) {
                            self.stats.flood_copies += 1;
                            self.tx[j].push(copy);
                        }
                    }
                    self.tx[last].push(pkt);
                }
            }
        }
    }

    /// Puts `pkt` and the rest of a receive burst back, in order, to try again next pass.
    fn hold(
        &mut self,
        i: usize,
        pkt: crate::switch::pool::Packet,
        rest: impl Iterator<Item = crate::switch::pool::Packet>,
    ) {
        self.stats.held += 1;
        let rx = &mut self.rx[i];
        rx.push(pkt);
        rx.extend(rest);
    }

    /// Port `i` is going away: its MACs are forgotten, and what was waiting for it is handed
    /// back (to be dropped by its stand-in). What it had received stays, and is distributed.
    pub fn port_removed(&mut self, i: usize, received: Burst) -> Burst {
        self.table.flush_port(i as u16);
        if i < self.rx.len() {
            self.rx[i].extend(received);
            std::mem::take(&mut self.tx[i])
        } else {
            self.rx.resize_with(i + 1, Burst::new);
            self.tx.resize_with(i + 1, Burst::new);
            self.rx[i] = received;
            Burst::new()
        }
    }

    /// Frees every packet held (the PMD is stopping).
    pub fn clear(&mut self, pool: &mut crate::switch::pool::PacketPool) {
        for b in self.rx.iter_mut().chain(self.tx.iter_mut()) {
            for p in b.drain(..) {
                pool.free(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use copy_engine::{Channel, Policy};
    use copy_engine_cpu::MemcpyEngine;

    use super::*;
    use crate::switch::pmd::Pmd;
    use crate::switch::pool::PacketPool;
    use crate::switch::port::PortStats;

    /// A port the test plays: it receives the frames queued on it and records what it is sent,
    /// taking at most `take` packets per `tx_burst` (push back).
    #[derive(Debug)]
    struct Wire {
        name: String,
        up: bool,
        trunk: bool,
        /// A trunk: the PMD at its other end.
        peer: Option<usize>,
        /// A shard of a guest: the PMDs whose shard of it is up (not counting this one).
        shard_up_on: Vec<usize>,
        /// A shard of a guest: the PMD it is on.
        me: usize,
        take: usize,
        to_send: VecDeque<Vec<u8>>,
        got: Vec<Vec<u8>>,
    }

    impl Port<MemcpyEngine> for Wire {
        fn name(&self) -> &str {
            &self.name
        }
        fn rx_burst(&mut self, cx: &mut PortCtx<'_, MemcpyEngine>, out: &mut Burst, max: usize) -> usize {
            let mut n = 0;
            while n < max {
                let Some(f) = self.to_send.pop_front() else { break };
                let mut p = cx.pool.alloc().expect("pool exhausted");
                cx.pool.set_len(&mut p, f.len());
                cx.pool.data_mut(&mut p).copy_from_slice(&f);
                out.push(p);
                n += 1;
            }
            n
        }
        fn tx_burst(&mut self, cx: &mut PortCtx<'_, MemcpyEngine>, pkts: &mut Burst) -> usize {
            let k = pkts.len().min(self.take);
            for p in pkts.drain(..k) {
                self.got.push(cx.pool.data(&p).to_vec());
                cx.pool.free(p);
            }
            k
        }
        fn stats(&self) -> PortStats {
            PortStats::default()
        }
        fn is_up(&self) -> bool {
            self.up
        }
        fn is_trunk(&self) -> bool {
            self.trunk
        }
        fn trunk_peer(&self) -> Option<usize> {
            self.peer
        }
        fn shard_up_on(&self, pmd: usize) -> bool {
            self.shard_up_on.contains(&pmd)
        }
        fn flood_delivered_elsewhere(&self, pmd: usize) -> bool {
            self.shard_up_on.contains(&pmd) || self.shard_up_on.iter().any(|&k| k != pmd && k < self.me)
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    const POOL: usize = 256;

    fn mac(i: u8) -> Mac {
        [0x52, 0x54, 0, 0, 0, i]
    }

    /// A frame from `src` to `dst` carrying `seq`.
    fn frame(dst: Mac, src: Mac, seq: u32) -> Vec<u8> {
        let mut f = Vec::with_capacity(64);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.resize(60, seq as u8);
        f
    }

    fn switch(ports: usize, cfg: LearningConfig) -> Pmd<MemcpyEngine> {
        let mut pmd = Pmd::new(Channel::new(MemcpyEngine::default(), Policy::default()), PacketPool::new(POOL, 2048));
        for i in 0..ports {
            let w = Wire {
                name: format!("w{i}"),
                up: true,
                trunk: false,
                peer: None,
                shard_up_on: Vec::new(),
                me: 0,
                take: usize::MAX,
                to_send: VecDeque::new(),
                got: Vec::new(),
            };
            pmd.add_port(Box::new(w));
        }
        pmd.enable_learning(cfg);
        pmd
    }

    fn wire(pmd: &mut Pmd<MemcpyEngine>, i: usize) -> &mut Wire {
        pmd.port_mut(i).0.as_any_mut().downcast_mut::<Wire>().unwrap()
    }

    fn send(pmd: &mut Pmd<MemcpyEngine>, i: usize, f: Vec<u8>) {
        wire(pmd, i).to_send.push_back(f);
    }

    /// Runs the loop until it is idle and nothing is held; returns what each port got since last time.
    fn settle(pmd: &mut Pmd<MemcpyEngine>) -> Vec<Vec<Vec<u8>>> {
        for _ in 0..10_000 {
            let queued: usize = (0..pmd.port_count())
                .filter_map(|i| pmd.port_mut(i).0.as_any_mut().downcast_mut::<Wire>().map(|w| w.to_send.len()))
                .sum();
            if pmd.run_once() == 0 && queued == 0 && pmd.l2().unwrap().held() == 0 {
                break;
            }
        }
        assert_eq!(pmd.l2().unwrap().held(), 0, "packets stuck in the switch");
        (0..pmd.port_count())
            .map(|i| pmd.port_mut(i).0.as_any_mut().downcast_mut::<Wire>().map(|w| std::mem::take(&mut w.got)))
            .map(Option::unwrap_or_default)
            .collect()
    }

    #[test]
    fn unknown_unicast_floods_then_learned_unicast_goes_to_one_port_only() {
        let mut pmd = switch(3, LearningConfig::default());
        let a_to_b = frame(mac(2), mac(1), 1);
        send(&mut pmd, 0, a_to_b.clone());
        let got = settle(&mut pmd);
        assert_eq!(got, [vec![], vec![a_to_b.clone()], vec![a_to_b.clone()]], "b unknown: flooded to both others");
        let b_to_a = frame(mac(1), mac(2), 2);
        send(&mut pmd, 1, b_to_a.clone());
        assert_eq!(settle(&mut pmd), [vec![b_to_a], vec![], vec![]], "a learned on port 0: only port 0");
        let a_to_b = frame(mac(2), mac(1), 3);
        send(&mut pmd, 0, a_to_b.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![a_to_b], vec![]], "b learned on port 1: only port 1");
        let s = pmd.l2().unwrap().stats();
        assert_eq!((s.flooded, s.flood_copies, s.unicast), (1, 1, 2));
        assert_eq!(pmd.pool().available(), POOL, "every buffer back in the pool");
    }

    #[test]
    fn broadcast_reaches_every_other_port_with_one_copy_fewer_than_targets() {
        let mut pmd = switch(4, LearningConfig::default());
        let f = frame(BROADCAST_MAC, mac(3), 7);
        send(&mut pmd, 2, f.clone());
        let got = settle(&mut pmd);
        assert_eq!(got, [vec![f.clone()], vec![f.clone()], vec![], vec![f]]);
        let s = pmd.l2().unwrap().stats();
        assert_eq!((s.flooded, s.flood_copies), (1, 2), "3 targets, 2 copies: the last got the buffer itself");
        assert_eq!(pmd.pool().available(), POOL);
    }

    const BROADCAST_MAC: Mac = crate::switch::mac_table::BROADCAST;

    #[test]
    fn order_is_kept_per_destination_through_floods_and_push_back() {
        let mut pmd = switch(3, LearningConfig::default());
        // Port 1 takes one packet per call: the switch must hold the rest, in order.
        wire(&mut pmd, 1).take = 1;
        // 300 frames from a to b: the first ones flood (b unknown) until b speaks, then unicast;
        // broadcasts from a are mixed in. Port 1 must see every one of them in sending order.
        let mut sent = Vec::new();
        for seq in 0..300u32 {
            let f = if seq % 7 == 0 { frame(BROADCAST_MAC, mac(1), seq) } else { frame(mac(2), mac(1), seq) };
            send(&mut pmd, 0, f.clone());
            sent.push(f);
            if seq == 100 {
                send(&mut pmd, 1, frame(mac(1), mac(2), 10_000));
            }
        }
        let got = settle(&mut pmd);
        assert_eq!(got[1], sent, "port 1 got every frame once, in order");
        assert_eq!(got[0], [frame(mac(1), mac(2), 10_000)]);
        // Port 2 got a prefix's floods and every broadcast, in order, and no unicast to b after b
        // was learned.
        let mut prev = None;
        for f in &got[2] {
            let seq = u32::from_be_bytes(f[14..18].try_into().unwrap());
            assert!(prev < Some(seq), "port 2 out of order at {seq}");
            prev = Some(seq);
        }
        assert!(got[2].iter().filter(|f| f[0..6] == mac(2)).count() <= 101);
        assert_eq!(got[2].iter().filter(|f| f[0..6] == BROADCAST_MAC).count(), 300usize.div_ceil(7));
        assert_eq!(pmd.pool().available(), POOL);
    }

    #[test]
    fn an_aged_out_mac_is_flooded_again_and_a_moved_mac_follows_its_port() {
        let mut pmd = switch(3, LearningConfig { table_size: 64, aging: Duration::from_secs(10) });
        send(&mut pmd, 1, frame(BROADCAST_MAC, mac(2), 0)); // learn b on 1
        settle(&mut pmd);
        let f = frame(mac(2), mac(1), 1);
        send(&mut pmd, 0, f.clone());
        assert_eq!(settle(&mut pmd)[2], Vec::<Vec<u8>>::new(), "b known: not flooded");
        pmd.l2_mut().unwrap().advance_clock(Duration::from_secs(11));
        send(&mut pmd, 0, f.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![f.clone()], vec![f.clone()]], "b aged out: flooded");
        // b moves to port 2: traffic to b follows it.
        send(&mut pmd, 2, frame(BROADCAST_MAC, mac(2), 2));
        settle(&mut pmd);
        send(&mut pmd, 0, f.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![], vec![f]]);
    }

    #[test]
    fn a_port_that_is_down_is_skipped_and_frames_for_its_own_port_are_filtered() {
        let mut pmd = switch(3, LearningConfig::default());
        wire(&mut pmd, 2).up = false;
        let f = frame(BROADCAST_MAC, mac(1), 0);
        send(&mut pmd, 0, f.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![f], vec![]]);
        // a is on port 0; a frame to a arriving on port 0 goes nowhere.
        send(&mut pmd, 0, frame(mac(1), mac(9), 1));
        assert_eq!(settle(&mut pmd), [Vec::<Vec<u8>>::new(), vec![], vec![]]);
        // A runt is dropped and counted.
        send(&mut pmd, 1, vec![0u8; 10]);
        settle(&mut pmd);
        let s = pmd.l2().unwrap().stats();
        assert_eq!((s.filtered, s.runts, s.flood_copies), (1, 1, 0));
        assert_eq!(pmd.pool().available(), POOL);
    }

    #[test]
    fn removing_a_port_under_traffic_loses_nothing_between_the_others() {
        let mut pmd = switch(3, LearningConfig::default());
        wire(&mut pmd, 1).take = 3;
        wire(&mut pmd, 2).take = 2;
        let mut sent = Vec::new();
        for seq in 0..200u32 {
            let f = frame(BROADCAST_MAC, mac(1), seq);
            send(&mut pmd, 0, f.clone());
            sent.push(f);
        }
        // A few iterations in, port 2 goes away with frames waiting for it.
        for _ in 0..5 {
            pmd.run_once();
        }
        assert!(wire(&mut pmd, 2).got.len() < 200, "port 2 still had frames to take");
        let mut old = pmd.remove_port(2).expect("port 2 removed");
        assert_eq!(old.name(), "w2");
        let taken = old.as_any_mut().downcast_mut::<Wire>().unwrap().got.len() as u64;
        assert!(pmd.remove_port(2).is_none(), "removed once only");
        assert!(!pmd.port(2).is_up());
        let got = settle(&mut pmd);
        assert_eq!(got[1], sent, "port 1 got every frame, in order, through the removal");
        let removed = pmd.port(2).stats();
        let s = pmd.l2().unwrap().stats();
        // A flood before the removal had two targets: a copy for port 1, the buffer for port 2,
        // which port 2 took or its stand-in dropped. After it, one target and no copy.
        assert_eq!(s.flooded, 200);
        assert_eq!(taken + removed.drops, s.flood_copies, "port 2's share: taken {taken}, dropped {}", removed.drops);
        assert!(s.flood_copies < 200, "floods after the removal made no copy");
        assert_eq!(pmd.pool().available(), POOL, "every buffer back, the removed port's too");
    }

    #[test]
    fn a_frame_from_a_trunk_floods_to_local_ports_only_and_a_mac_behind_a_trunk_is_learned_on_it() {
        let mut pmd = switch(4, LearningConfig::default());
        wire(&mut pmd, 0).trunk = true;
        wire(&mut pmd, 1).trunk = true;
        let from_trunk = frame(BROADCAST_MAC, mac(5), 0);
        send(&mut pmd, 0, from_trunk.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![], vec![from_trunk.clone()], vec![from_trunk]], "split horizon");
        let local = frame(BROADCAST_MAC, mac(6), 1);
        send(&mut pmd, 2, local.clone());
        assert_eq!(settle(&mut pmd), [vec![local.clone()], vec![local.clone()], vec![], vec![local]]);
        // mac(5) lives behind trunk 0: unicast to it goes there only.
        let to_5 = frame(mac(5), mac(6), 2);
        send(&mut pmd, 3, to_5.clone());
        assert_eq!(settle(&mut pmd), [vec![to_5], vec![], vec![], vec![]]);
    }

    #[test]
    fn a_guest_served_by_two_pmds_gets_each_flood_once_and_its_mac_stays_on_the_local_shard() {
        // Port 0: the trunk to PMD 1; port 1: this PMD's shard of a guest whose other shard PMD 1
        // serves (up); port 2: a local guest.
        let mut pmd = switch(3, LearningConfig::default());
        wire(&mut pmd, 0).trunk = true;
        wire(&mut pmd, 0).peer = Some(1);
        wire(&mut pmd, 1).shard_up_on = vec![1];
        // PMD 1 flooded a broadcast (from the guest itself, or from another of its ports): its own
        // shard of the guest had it there, so here it goes to the local guest only.
        let b = frame(BROADCAST_MAC, mac(7), 0);
        send(&mut pmd, 0, b.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![], vec![b]], "not to the shard: it has it from PMD 1");
        // The guest (mac 1) speaks on this PMD's pairs: learned on the shard.
        let hello = frame(BROADCAST_MAC, mac(1), 1);
        send(&mut pmd, 1, hello.clone());
        assert_eq!(settle(&mut pmd), [vec![hello.clone()], vec![], vec![hello]]);
        // Then on PMD 1's pairs: its frames come in on the trunk. The MAC stays on the shard, so
        // a flow to it from here keeps one way (unicast to the shard, never to the trunk).
        send(&mut pmd, 0, frame(mac(2), mac(1), 2));
        settle(&mut pmd);
        for seq in 3..6 {
            send(&mut pmd, 2, frame(mac(1), mac(2), seq));
        }
        let got = settle(&mut pmd);
        assert_eq!(got[0], Vec::<Vec<u8>>::new(), "nothing for the guest goes back over the trunk");
        assert_eq!(got[1], (3..6).map(|s| frame(mac(1), mac(2), s)).collect::<Vec<_>>(), "in order, on the shard");
        // Once PMD 1's shard is down (its pairs detached), PMD 1 no longer delivers its floods to
        // the guest: this PMD does.
        wire(&mut pmd, 1).shard_up_on.clear();
        let b2 = frame(BROADCAST_MAC, mac(7), 6);
        send(&mut pmd, 0, b2.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![b2.clone()], vec![b2]]);
    }

    #[test]
    fn with_three_pmds_a_flood_from_a_pmd_without_the_guest_reaches_it_once() {
        // This is PMD 1. Port 0: the trunk to PMD 2, which holds no up shard of the guest;
        // port 1: this PMD's shard of it; port 2: a local guest. PMD 0 has an up shard too.
        let mut pmd = switch(3, LearningConfig::default());
        wire(&mut pmd, 0).trunk = true;
        wire(&mut pmd, 0).peer = Some(2);
        wire(&mut pmd, 1).me = 1;
        wire(&mut pmd, 1).shard_up_on = vec![0];
        // PMD 2's flood reaches PMDs 0 and 1: PMD 0, the lowest with an up shard, delivers it.
        let b = frame(BROADCAST_MAC, mac(7), 0);
        send(&mut pmd, 0, b.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![], vec![b]], "PMD 0's shard delivers it");
        // As PMD 0 (its shard the lowest up one), the same flood is delivered here.
        wire(&mut pmd, 1).me = 0;
        wire(&mut pmd, 1).shard_up_on = vec![1];
        let b = frame(BROADCAST_MAC, mac(7), 1);
        send(&mut pmd, 0, b.clone());
        assert_eq!(settle(&mut pmd), [vec![], vec![b.clone()], vec![b]], "the lowest up shard delivers it");
    }

    #[test]
    fn a_mac_seen_through_a_trunk_leaves_a_local_shard_that_went_down() {
        // Port 0: the trunk to PMD 1; port 1: this PMD's shard of a guest (mac 1) that PMD 1
        // serves too; port 2: a local guest (mac 2).
        let mut pmd = switch(3, LearningConfig::default());
        wire(&mut pmd, 0).trunk = true;
        wire(&mut pmd, 0).peer = Some(1);
        wire(&mut pmd, 1).shard_up_on = vec![1];
        send(&mut pmd, 1, frame(BROADCAST_MAC, mac(1), 0));
        settle(&mut pmd);
        // This shard's pairs go away; the guest keeps talking on PMD 1's pairs.
        wire(&mut pmd, 1).up = false;
        send(&mut pmd, 0, frame(mac(2), mac(1), 1));
        settle(&mut pmd);
        let to_guest = frame(mac(1), mac(2), 2);
        send(&mut pmd, 2, to_guest.clone());
        assert_eq!(settle(&mut pmd), [vec![to_guest], vec![], vec![]], "unicast follows the guest over the trunk");
        assert_eq!(pmd.l2().unwrap().stats().no_target, 0, "nothing dropped for want of a target");
    }
}
