//! Benchmark end points: a sink that counts and frees every packet it is given, and a source that
//! makes fixed-size packets as fast as the port it feeds takes them.
//!
//! They stand in for a NIC that costs nothing, so one vhost port's direction can be measured on
//! its own (the peer benchmark's guest -> host and host -> guest runs). Unlike [`crate::guest::traffic`]
//! they check nothing, and the source writes only an Ethernet/IPv4/UDP header into each packet
//! (as DPDK testpmd's txonly mode does), not a payload, so a packet costs the switch only the
//! vhost copy itself. This module must not know virtio or copy engines.

use copy_engine::CopyEngine;

use crate::switch::pool::PacketPool;
use crate::switch::port::{Port, PortCtx, PortStats};
use crate::vhost::Burst;

/// Bytes of the header the source writes: Ethernet (14), IPv4 (20), UDP (8).
pub const SOURCE_HEADER: usize = 42;

/// Longest packet the source makes.
pub const SOURCE_MAX: usize = 9216;

/// What stands where a port was removed at runtime (port indexes never move): it receives
/// nothing, is never up, and drops (and counts) anything still sent to it. It keeps the removed
/// port's name and counters.
#[derive(Debug)]
pub struct RemovedPort {
    name: String,
    stats: PortStats,
}

impl RemovedPort {
    /// The stand-in for a port named `name` whose counters were `stats`.
    pub fn new(name: impl Into<String>, stats: PortStats) -> Self {
        RemovedPort { name: name.into(), stats }
    }
}

impl<E: CopyEngine> Port<E> for RemovedPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _cx: &mut PortCtx<'_, E>, _out: &mut Burst, _max: usize) -> usize {
        0
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let n = pkts.len();
        self.stats.drops += n as u64;
        for p in pkts.drain(..) {
            cx.pool.free(p);
        }
        n
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn is_up(&self) -> bool {
        false
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Counts and frees every packet sent to it (`tx_*` counters); receives nothing.
#[derive(Debug)]
pub struct SinkPort {
    name: String,
    stats: PortStats,
}

impl SinkPort {
    /// A sink.
    pub fn new(name: impl Into<String>) -> Self {
        SinkPort { name: name.into(), stats: PortStats::default() }
    }
}

/// Frees every packet of `pkts`, counting them as sent to the port.
fn absorb(stats: &mut PortStats, pool: &mut PacketPool, pkts: &mut Burst) -> usize {
    let n = pkts.len();
    for pkt in pkts.drain(..) {
        stats.tx_bytes += pkt.len() as u64;
        pool.free(pkt);
    }
    stats.tx_packets += n as u64;
    n
}

impl<E: CopyEngine> Port<E> for SinkPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _cx: &mut PortCtx<'_, E>, _out: &mut Burst, _max: usize) -> usize {
        0
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        absorb(&mut self.stats, cx.pool, pkts)
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

/// Makes `len`-byte packets without limit, a burst whenever the PMD asks (`rx_*` counters); the
/// PMD asks only once the port it feeds took the previous burst, so the source runs exactly as
/// fast as that port. Packets sent to it are counted and freed, as by a [`SinkPort`].
#[derive(Debug)]
pub struct SourcePort {
    name: String,
    len: usize,
    header: [u8; SOURCE_HEADER],
    stats: PortStats,
}

/// The Ethernet/IPv4/UDP header of a `len`-byte packet (what testpmd's txonly sends, more or less:
/// locally administered MACs, 198.18.0.1 -> 198.18.0.2, UDP 9 -> 9, IPv4 checksum set).
fn header(len: usize) -> [u8; SOURCE_HEADER] {
    let mut h = [0u8; SOURCE_HEADER];
    h[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    h[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = &mut h[34..42];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    h
}

impl SourcePort {
    /// A source of `len`-byte packets; `len` must be in [`SOURCE_HEADER`]..=[`SOURCE_MAX`].
    pub fn new(name: impl Into<String>, len: usize) -> Self {
        assert!((SOURCE_HEADER..=SOURCE_MAX).contains(&len), "source packet length {len} out of range");
        SourcePort { name: name.into(), len, header: header(len), stats: PortStats::default() }
    }

    /// The length of the packets it makes.
    pub fn packet_len(&self) -> usize {
        self.len
    }
}

impl<E: CopyEngine> Port<E> for SourcePort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut pkt) = cx.pool.alloc() else { break };
            cx.pool.set_len(&mut pkt, self.len);
            cx.pool.data_mut(&mut pkt)[..SOURCE_HEADER].copy_from_slice(&self.header);
            out.push(pkt);
            n += 1;
        }
        self.stats.rx_packets += n as u64;
        self.stats.rx_bytes += (n * self.len) as u64;
        n
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        absorb(&mut self.stats, cx.pool, pkts)
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

#[cfg(test)]
mod tests {
    use super::*;
    use copy_engine::{Channel, Policy};
    use copy_engine_cpu::MemcpyEngine;

    #[test]
    fn source_feeds_sink_and_both_count() {
        let chan = Channel::new(MemcpyEngine::default(), Policy::default());
        let mut pool = PacketPool::new(64, 2048);
        let mut cx = PortCtx { chan: &chan, pool: &mut pool };
        let mut src = SourcePort::new("source0", 64);
        let mut sink = SinkPort::new("sink1");
        let mut burst = Burst::new();
        assert_eq!(Port::<MemcpyEngine>::rx_burst(&mut src, &mut cx, &mut burst, 32), 32);
        let data = cx.pool.data(&burst[0]);
        assert_eq!(data.len(), 64);
        assert_eq!(&data[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([data[16], data[17]]), 50);
        assert_eq!(Port::<MemcpyEngine>::rx_burst(&mut sink, &mut cx, &mut burst, 32), 0);
        assert_eq!(Port::<MemcpyEngine>::tx_burst(&mut sink, &mut cx, &mut burst), 32);
        assert!(burst.is_empty());
        assert_eq!(cx.pool.available(), 64);
        let (s, k) = (Port::<MemcpyEngine>::stats(&src), Port::<MemcpyEngine>::stats(&sink));
        assert_eq!((s.rx_packets, s.rx_bytes, s.tx_packets), (32, 32 * 64, 0));
        assert_eq!((k.tx_packets, k.tx_bytes, k.rx_packets), (32, 32 * 64, 0));
        // The pool runs dry: the source makes what it can.
        assert_eq!(Port::<MemcpyEngine>::rx_burst(&mut src, &mut cx, &mut burst, 100), 64);
    }

    #[test]
    fn source_header_checksum_verifies() {
        let h = header(1518);
        let sum = h[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 1518 - 34);
    }
}
