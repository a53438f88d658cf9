//! The two ends of a cross-PMD link as ports: a [`CrossTxPort`] on the PMD that receives a
//! packet, standing for a port another PMD owns, and a [`CrossRxPort`] on that other PMD, feeding
//! the real port. Between them an [`xring`](crate::switch::xring) (one per direction of a link, so
//! each ring has one producer and one consumer thread). A frame costs one copy into the ring and
//! one out of it, on the CPU: the pools of two PMDs never share a buffer. A [`TrunkPort`] is both
//! ends at once, for MAC learning across PMDs. This module must not
//! know virtio or copy engines.

use copy_engine::CopyEngine;

use crate::switch::port::{Port, PortCtx, PortStats};
use crate::switch::xring::{XConsumer, XProducer};
use crate::vhost::Burst;

/// Sends packets to another PMD: `tx_burst` copies what fits into the ring (the rest stays with
/// the caller, in order) and frees the buffers; it receives nothing.
#[derive(Debug)]
pub struct CrossTxPort {
    name: String,
    ring: XProducer,
    stats: PortStats,
}

impl CrossTxPort {
    /// The sending end named `name` over `ring`.
    pub fn new(name: impl Into<String>, ring: XProducer) -> Self {
        CrossTxPort { name: name.into(), ring, stats: PortStats::default() }
    }
}

impl<E: CopyEngine> Port<E> for CrossTxPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _cx: &mut PortCtx<'_, E>, _out: &mut Burst, _max: usize) -> usize {
        0
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let mut n = 0;
        while n < pkts.len() {
            let p = &pkts[n];
            if p.len() > self.ring.slot_size() {
                // Cannot cross: larger than any frame a port takes. Counted, not silent.
                self.stats.drops += 1;
            } else if !self.ring.push(cx.pool.data(p)) {
                break;
            } else {
                self.stats.tx_bytes += p.len() as u64;
                self.stats.tx_packets += 1;
            }
            n += 1;
        }
        self.ring.publish();
        for p in pkts.drain(..n) {
            cx.pool.free(p);
        }
        self.stats.tx_pushed_back += pkts.len() as u64;
        n
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Receives what another PMD sent: `rx_burst` copies frames out of the ring into this PMD's
/// buffers; it takes nothing.
#[derive(Debug)]
pub struct CrossRxPort {
    name: String,
    ring: XConsumer,
    stats: PortStats,
}

impl CrossRxPort {
    /// The receiving end named `name` over `ring`.
    pub fn new(name: impl Into<String>, ring: XConsumer) -> Self {
        CrossRxPort { name: name.into(), ring, stats: PortStats::default() }
    }
}

impl<E: CopyEngine> Port<E> for CrossRxPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            // A buffer first: a frame leaves the ring only when it has somewhere to go.
            let Some(mut p) = cx.pool.alloc() else { break };
            let mut len = None;
            let pool = &mut *cx.pool;
            let got = self.ring.pop_with(|f| {
                pool.set_len(&mut p, f.len());
                pool.data_mut(&mut p).copy_from_slice(f);
                len = Some(f.len());
            });
            if !got {
                cx.pool.free(p);
                break;
            }
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len.unwrap_or(0) as u64;
            out.push(p);
            n += 1;
        }
        self.ring.release();
        n
    }

    fn tx_burst(&mut self, _cx: &mut PortCtx<'_, E>, _pkts: &mut Burst) -> usize {
        0
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// A trunk to another PMD's L2 switch: receives what that PMD sends here, sends to it (one ring
/// each way). See [`crate::switch::l2`].
#[derive(Debug)]
pub struct TrunkPort {
    name: String,
    tx: CrossTxPort,
    rx: CrossRxPort,
    peer: Option<usize>,
}

impl TrunkPort {
    /// A trunk named `name`: frames go out on `to`, come in on `from`.
    pub fn new(name: impl Into<String>, to: XProducer, from: XConsumer) -> Self {
        let name = name.into();
        TrunkPort { tx: CrossTxPort::new(name.clone(), to), rx: CrossRxPort::new(name.clone(), from), name, peer: None }
    }

    /// The same trunk, knowing that PMD `pmd` is at its other end (so that a port with queue
    /// pairs on both PMDs is not flooded twice: see [`crate::switch::l2`]).
    pub fn with_peer(mut self, pmd: usize) -> Self {
        self.peer = Some(pmd);
        self
    }
}

impl<E: CopyEngine> Port<E> for TrunkPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        self.rx.rx_burst(cx, out, max)
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        self.tx.tx_burst(cx, pkts)
    }

    fn stats(&self) -> PortStats {
        let (t, r) = (<CrossTxPort as Port<E>>::stats(&self.tx), <CrossRxPort as Port<E>>::stats(&self.rx));
        PortStats { rx_packets: r.rx_packets, rx_bytes: r.rx_bytes, ..t }
    }

    fn is_trunk(&self) -> bool {
        true
    }

    fn trunk_peer(&self) -> Option<usize> {
        self.peer
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
