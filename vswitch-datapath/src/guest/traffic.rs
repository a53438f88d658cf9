//! A traffic source and sink port: the "NIC" side of a PVP (physical-virtual-physical) run.
//!
//! Received packets are generated: each carries a sequence number and a payload derived from it
//! (`byte[i] = seq + i`), with a length from a range, chosen from the sequence number too. Sent
//! packets are checked against the same rule, and must arrive in sequence order: a lost, reordered
//! or corrupted packet is counted as an error (and remembered for tests). This module must not
//! know virtio or copy engines.

use copy_engine::CopyEngine;

use crate::switch::pool::PacketPool;
use crate::switch::port::{Port, PortCtx, PortStats};
use crate::vhost::Burst;

/// Smallest packet the source makes (room for the sequence number).
pub const MIN_PACKET: usize = 16;

/// What the traffic port generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficConfig {
    /// Shortest packet.
    pub min_len: usize,
    /// Longest packet (equal to `min_len` for a fixed size).
    pub max_len: usize,
    /// Packets to generate in all (`None`: unlimited).
    pub budget: Option<u64>,
    /// Check every received payload byte (otherwise only the sequence numbers).
    pub verify_payload: bool,
}

impl TrafficConfig {
    /// Fixed-size packets, unlimited, payload checked.
    pub fn fixed(len: usize) -> Self {
        TrafficConfig { min_len: len, max_len: len, budget: None, verify_payload: true }
    }
}

/// The first error the sink saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficError {
    /// A packet arrived with sequence number `got` where `expected` was due (loss or reorder).
    Sequence {
        /// The sequence number due.
        expected: u64,
        /// The one that arrived.
        got: u64,
    },
    /// Packet `seq` arrived with the wrong length.
    Length {
        /// Its sequence number.
        seq: u64,
        /// Its length.
        len: usize,
    },
    /// Packet `seq` arrived with a wrong byte at `offset`.
    Payload {
        /// Its sequence number.
        seq: u64,
        /// Where.
        offset: usize,
    },
}

/// A traffic generator (its rx side) and checking sink (its tx side).
#[derive(Debug)]
pub struct TrafficPort {
    name: String,
    cfg: TrafficConfig,
    next_seq: u64,
    expect_seq: u64,
    first_error: Option<TrafficError>,
    stats: PortStats,
    busy: std::time::Duration,
}

/// The length of packet `seq` under `cfg`.
pub fn packet_len(cfg: &TrafficConfig, seq: u64) -> usize {
    let span = (cfg.max_len - cfg.min_len + 1) as u64;
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    cfg.min_len + (x % span) as usize
}

/// Longest packet the traffic port makes.
pub const MAX_PACKET: usize = 9216;

/// `RAMP[k] = k mod 256`: the payload of packet `seq` from byte 8 on is `RAMP[seq % 256..]`, so
/// filling is a `memcpy` and checking a `memcmp`.
static RAMP: [u8; MAX_PACKET + 256] = {
    let mut r = [0u8; MAX_PACKET + 256];
    let mut i = 0;
    while i < r.len() {
        r[i] = i as u8;
        i += 1;
    }
    r
};

fn expected(seq: u64, len: usize) -> &'static [u8] {
    let base = (seq as u8) as usize;
    &RAMP[base..base + len]
}

fn fill(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let n = buf.len() - 8;
    buf[8..].copy_from_slice(expected(seq, n));
}

impl TrafficPort {
    /// A traffic port.
    pub fn new(name: impl Into<String>, cfg: TrafficConfig) -> Self {
        assert!(
            cfg.min_len >= MIN_PACKET && cfg.max_len >= cfg.min_len && cfg.max_len <= MAX_PACKET,
            "bad packet size range"
        );
        TrafficPort {
            name: name.into(),
            cfg,
            next_seq: 0,
            expect_seq: 0,
            first_error: None,
            stats: PortStats::default(),
            busy: std::time::Duration::ZERO,
        }
    }

    /// Stops generating: the source makes no packet after those already made.
    pub fn stop_generating(&mut self) {
        self.cfg.budget = Some(self.next_seq);
    }

    /// Packets generated so far.
    pub fn generated(&self) -> u64 {
        self.next_seq
    }

    /// Packets received back in order and intact.
    pub fn received(&self) -> u64 {
        self.expect_seq
    }

    /// Time spent generating and checking packets (the part of a PMD's time a real NIC port
    /// would not cost), so a benchmark can take it out.
    pub fn busy_time(&self) -> std::time::Duration {
        self.busy
    }

    /// The first error seen, if any.
    pub fn first_error(&self) -> Option<TrafficError> {
        self.first_error
    }

    fn check(&mut self, pool: &PacketPool, pkt: &crate::switch::pool::Packet) -> Result<(), TrafficError> {
        let data = pool.data(pkt);
        if data.len() < 8 {
            return Err(TrafficError::Length { seq: self.expect_seq, len: data.len() });
        }
        let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        if seq != self.expect_seq {
            return Err(TrafficError::Sequence { expected: self.expect_seq, got: seq });
        }
        if data.len() != packet_len(&self.cfg, seq) {
            return Err(TrafficError::Length { seq, len: data.len() });
        }
        if self.cfg.verify_payload && data[8..] != *expected(seq, data.len() - 8) {
            let want = expected(seq, data.len() - 8);
            let offset = 8 + data[8..].iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(TrafficError::Payload { seq, offset });
        }
        Ok(())
    }

    fn generate(&mut self, pool: &mut PacketPool, out: &mut Burst, max: usize) -> usize {
        let mut n = 0;
        while n < max && self.cfg.budget.is_none_or(|b| self.next_seq < b) {
            let Some(mut pkt) = pool.alloc() else { break };
            let len = packet_len(&self.cfg, self.next_seq);
            pool.set_len(&mut pkt, len);
            fill(pool.data_mut(&mut pkt), self.next_seq);
            self.next_seq += 1;
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            out.push(pkt);
            n += 1;
        }
        n
    }

    fn sink(&mut self, pool: &mut PacketPool, pkts: &mut Burst) -> usize {
        let n = pkts.len();
        for pkt in pkts.drain(..) {
            match self.check(pool, &pkt) {
                Ok(()) => {
                    self.expect_seq += 1;
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += pkt.len() as u64;
                }
                Err(e) => {
                    self.stats.errors += 1;
                    self.first_error.get_or_insert(e);
                    // Resynchronise on what arrived, so one loss is one error, not all after it.
                    if let TrafficError::Sequence { got, .. } = e {
                        self.expect_seq = got + 1;
                    } else {
                        self.expect_seq += 1;
                    }
                }
            }
            pool.free(pkt);
        }
        n
    }
}

impl<E: CopyEngine> Port<E> for TrafficPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, cx: &mut PortCtx<'_, E>, out: &mut Burst, max: usize) -> usize {
        let t0 = std::time::Instant::now();
        let n = self.generate(cx.pool, out, max);
        self.busy += t0.elapsed();
        n
    }

    fn tx_burst(&mut self, cx: &mut PortCtx<'_, E>, pkts: &mut Burst) -> usize {
        let t0 = std::time::Instant::now();
        let n = self.sink(cx.pool, pkts);
        self.busy += t0.elapsed();
        n
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}
