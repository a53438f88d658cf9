//! A loopback guest: the in-process virtio-net driver of a PVP run (feature `test-utils`).
//!
//! It owns a [`TestGuest`] with one queue pair and plays a guest that forwards every packet it
//! receives straight back (testpmd's `io` forwarding): each packet the switch delivers on the RX
//! queue (one or several chains with mergeable buffers) is posted, in place, as a TX chain (the
//! header first, then the data, chained descriptors), and each buffer the switch returns on the TX
//! used ring is posted again for RX. The guest's buffers are a fixed set: nothing is allocated per
//! packet in guest memory. This module must not touch the device side.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::guest::testguest::{Buf, DriverQueue, TestGuest};
use crate::mem::GuestMemory;
use crate::virtio::net::NetHdr;
use crate::virtio::queue::Virtqueue;
use crate::virtio::RingFeatures;

/// What the guest does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GuestMode {
    /// Forward every received packet back out (PVP).
    #[default]
    Loopback,
    /// Take received packets and give the buffers straight back (northbound only).
    RxSink,
    /// Keep the TX ring full of packets of this many bytes, ignore RX (southbound only).
    TxSource(u32),
}

/// How the loopback guest sets up its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopGuestConfig {
    /// What the guest does with traffic.
    pub mode: GuestMode,
    /// Entries per queue.
    pub queue_size: u16,
    /// Bytes per guest buffer (one RX descriptor each).
    pub buf_len: u32,
    /// Guest buffers in all.
    pub buffers: usize,
    /// Length of the virtio-net header (12 with VERSION_1 or MRG_RXBUF).
    pub hdr_len: usize,
    /// VIRTIO_NET_F_MRG_RXBUF: a packet may span several RX buffers.
    pub mergeable: bool,
    /// Put the TX header in a descriptor of its own (a chain of at least two descriptors).
    pub split_header: bool,
    /// Ring features (event idx, indirect descriptors).
    pub features: RingFeatures,
}

impl Default for LoopGuestConfig {
    fn default() -> Self {
        LoopGuestConfig {
            mode: GuestMode::Loopback,
            queue_size: 256,
            buf_len: 2048,
            buffers: 256,
            hdr_len: 12,
            mergeable: true,
            split_header: false,
            features: RingFeatures::EVENT_IDX,
        }
    }
}

/// The guest side of a PVP loop.
#[derive(Debug)]
pub struct LoopGuest {
    g: TestGuest,
    cfg: LoopGuestConfig,
    rx: DriverQueue,
    tx: DriverQueue,
    /// Received packets waiting for TX descriptors: their (gpa, len) pieces.
    pending: VecDeque<Vec<(u64, u32)>>,
    /// TX-source mode: the prefilled packets.
    tx_bufs: Vec<Buf>,
    looped: u64,
    bad_headers: u64,
}

impl LoopGuest {
    /// A guest with its buffers all posted for RX.
    pub fn new(cfg: LoopGuestConfig) -> Self {
        let ring_bytes = 64 * 1024;
        let mem_len = (cfg.buffers * cfg.buf_len as usize + ring_bytes + (1 << 20)).next_power_of_two();
        let g = TestGuest::with_regions(&[(crate::guest::testguest::GUEST_BASE, mem_len)]);
        let rx = g.add_queue(cfg.queue_size, cfg.features);
        let tx = g.add_queue(cfg.queue_size, cfg.features);
        let mut me =
            LoopGuest { g, cfg, rx, tx, pending: VecDeque::new(), tx_bufs: Vec::new(), looped: 0, bad_headers: 0 };
        if let GuestMode::TxSource(len) = cfg.mode {
            // Prefilled TX packets (header + payload), posted again as soon as they come back.
            for i in 0..cfg.queue_size as usize {
                let total = cfg.hdr_len + len as usize;
                let gpa = me.g.alloc(total, 64);
                let mut bytes = vec![0u8; total];
                bytes[cfg.hdr_len..].iter_mut().enumerate().for_each(|(k, b)| *b = (i + k) as u8);
                me.g.write(gpa, &bytes);
                me.tx_bufs.push(Buf { gpa, len: total as u32, writable: false });
            }
            for b in me.tx_bufs.clone() {
                me.tx.add_chain(&me.g, &[b]);
            }
            return me;
        }
        for _ in 0..cfg.buffers.min(cfg.queue_size as usize) {
            let gpa = me.g.alloc(cfg.buf_len as usize, 64);
            me.rx.add_chain(&me.g, &[Buf { gpa, len: cfg.buf_len, writable: true }]);
        }
        me
    }

    /// The guest's memory (shared with the device side).
    pub fn memory(&self) -> &Arc<GuestMemory> {
        self.g.memory()
    }

    /// Device sides of the (RX, TX) queues, for the switch's vhost port.
    pub fn device_queues(&self) -> (Virtqueue, Virtqueue) {
        (self.rx.virtqueue(&self.g), self.tx.virtqueue(&self.g))
    }

    /// Packets looped back so far.
    pub fn looped(&self) -> u64 {
        self.looped
    }

    /// Received packets whose header was wrong (num_buffers not matching).
    pub fn bad_headers(&self) -> u64 {
        self.bad_headers
    }

    /// One round of the guest: in loopback mode, take received packets, post them for TX, and
    /// recycle returned TX buffers for RX; in the sink/source modes, recycle what came back.
    /// Returns packets handled in this round.
    pub fn poll(&mut self) -> u64 {
        match self.cfg.mode {
            GuestMode::Loopback => self.poll_loopback(),
            GuestMode::RxSink => {
                let mut n = 0;
                while let Some(e) = self.rx.pop_used(&self.g) {
                    let gpa = self.rx.buffers(e.id as u16)[0].gpa;
                    self.rx.add_chain(&self.g, &[Buf { gpa, len: self.cfg.buf_len, writable: true }]);
                    n += 1;
                }
                self.looped += n;
                n
            }
            GuestMode::TxSource(_) => {
                let mut n = 0;
                while let Some(e) = self.tx.pop_used(&self.g) {
                    let b = self.tx.buffers(e.id as u16)[0];
                    self.tx.add_chain(&self.g, &[b]);
                    n += 1;
                }
                self.looped += n;
                n
            }
        }
    }

    fn poll_loopback(&mut self) -> u64 {
        let hdr_len = self.cfg.hdr_len;
        // RX used -> packets. With mergeable buffers the header's num_buffers says how many used
        // entries make up one packet.
        while let Some(first) = self.rx.pop_used(&self.g) {
            let gpa = self.rx.buffers(first.id as u16)[0].gpa;
            let mut pieces = vec![(gpa, first.len)];
            let nbufs = if self.cfg.mergeable {
                let raw = self.g.read(gpa, hdr_len);
                NetHdr::new_checked(&raw[..], hdr_len).map(|h| h.num_buffers()).unwrap_or(0) as usize
            } else {
                1
            };
            if nbufs == 0 {
                self.bad_headers += 1;
            }
            for _ in 1..nbufs.max(1) {
                let e = self.rx.pop_used(&self.g).expect("the device published every buffer of a packet together");
                pieces.push((self.rx.buffers(e.id as u16)[0].gpa, e.len));
            }
            self.pending.push_back(pieces);
        }
        // Post received packets for TX while descriptors last.
        let mut looped = 0;
        while let Some(pieces) = self.pending.front() {
            let extra = usize::from(self.cfg.split_header);
            if self.tx.free_descriptors() < pieces.len() + extra {
                break;
            }
            let pieces = self.pending.pop_front().expect("front exists");
            let mut bufs: Vec<Buf> = Vec::with_capacity(pieces.len() + 1);
            for (i, &(gpa, len)) in pieces.iter().enumerate() {
                if i == 0 && self.cfg.split_header && len as usize > hdr_len {
                    bufs.push(Buf { gpa, len: hdr_len as u32, writable: false });
                    bufs.push(Buf { gpa: gpa + hdr_len as u64, len: len - hdr_len as u32, writable: false });
                } else {
                    bufs.push(Buf { gpa, len, writable: false });
                }
            }
            if self.cfg.mergeable {
                // The TX header's num_buffers is meaningless: clear it, as a driver would.
                self.g.write(pieces[0].0 + 10, &[0, 0]);
            }
            self.tx.add_chain(&self.g, &bufs);
            looped += 1;
        }
        // TX used -> buffers back to RX.
        while let Some(e) = self.tx.pop_used(&self.g) {
            let gpas: Vec<u64> = self.tx.buffers(e.id as u16).iter().map(|b| b.gpa).collect();
            for gpa in gpas {
                if self.cfg.split_header && (gpa - crate::guest::testguest::GUEST_BASE) % 64 != 0 {
                    continue; // the second half of a split header buffer
                }
                self.rx.add_chain(&self.g, &[Buf { gpa, len: self.cfg.buf_len, writable: true }]);
            }
        }
        self.looped += looped;
        looped
    }
}
