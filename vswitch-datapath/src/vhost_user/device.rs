//! [`VhostUserDevice`]: the meaning of each vhost-user request for one port's queue pairs.
//!
//! The device offers up to `max_queue_pairs` queue pairs (virtio-net multiqueue: VIRTIO_NET_F_MQ
//! and the MQ protocol feature). Pair `k` is vrings `2k` (the guest's RX queue, served northbound)
//! and `2k + 1` (its TX queue, southbound). Per vring the device keeps what
//! `SET_VRING_NUM/ADDR/BASE/KICK/CALL/ENABLE` set. A vring is *ready* when its size and addresses
//! are set, it was started (a kick fd, or "no fd", arrived) and it is enabled (at once without
//! `VHOST_USER_F_PROTOCOL_FEATURES`, else by `SET_VRING_ENABLE`). When both vrings of a pair are
//! ready and a memory table is mapped, the device builds the pair and hands it to the PMD thread
//! ([`PortCommand::Attach`]); each pair attaches on its own.
//!
//! Whatever changes running queues detaches them first, synchronously ([`PortCommand::Detach`]).
//! A request about one vring detaches that vring's pair only: `GET_VRING_BASE` (the frontend
//! stops the ring: drain, then answer the next avail index), `SET_VRING_ENABLE 0`, new ring
//! sizes, addresses, bases or kick/call fds (all drain). A request about the whole device
//! detaches every pair: a new memory table, new features (drain), and `RESET_OWNER` or a
//! disconnect (clear: the guest is gone, its rings are not touched). The old memory table is
//! dropped only after the detach answer, so no copy can land in unmapped memory. This module runs
//! on the control thread; it never touches guest memory.
//!
//! # Queue pairs on several PMDs
//!
//! Each queue pair belongs to one PMD thread ([`DeviceConfig::pair_shard`]); every PMD that owns
//! at least one pair of the port holds a *shard* of it (a [`VhostPort`](crate::VhostPort) with only
//! its pairs). A command about one pair goes to the PMD that owns it; a command about the whole
//! device (a detach of every pair before a new memory table, new features, a reset or a
//! disconnect) goes to every shard, and the device waits for every answer before it goes on.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::VhostUserProtocolFeatures;

use super::features;
use super::memtable::{MemTable, UserRegion};
use super::VhostUserError;
use crate::mem::dirty::DirtyLog;
use crate::switch::vhost_port::{DetachMode, PortCommand};
use crate::vhost::{Northbound, Notifier, Southbound};
use crate::virtio::net::net_hdr_len;
use crate::virtio::queue::Virtqueue;
use crate::virtio::split::QueueConfig;
use crate::virtio::{RingFeatures, MAX_QUEUE_SIZE};

/// How many queue pairs a device offers unless told otherwise.
pub const DEFAULT_MAX_QUEUE_PAIRS: usize = 4;

/// Where some of a port's queue pairs are served: a PMD thread's command channel and the port's
/// index (its shard's index) in that PMD.
#[derive(Clone, Debug)]
pub struct Shard {
    /// The PMD thread's command channel.
    pub pmd: Sender<PortCommand>,
    /// The shard's port index in that PMD.
    pub port: usize,
}

/// How a device talks to its PMD thread(s).
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The port's name (for log lines).
    pub name: String,
    /// The port's index in the PMD (shard 0).
    pub port: usize,
    /// The PMD thread's command channel (shard 0).
    pub pmd: Sender<PortCommand>,
    /// How long to wait for the PMD to detach a queue pair.
    pub detach_timeout: Duration,
    /// Shards 1, 2, ...: other PMDs that serve some of the port's queue pairs. Empty when one PMD
    /// serves them all.
    pub shards: Vec<Shard>,
    /// Per queue pair, the shard that serves it (0: `port` on `pmd`, `i`: `shards[i - 1]`). A pair
    /// beyond the list, or naming no shard, is served by shard 0.
    pub pair_shard: Vec<usize>,
}

impl DeviceConfig {
    /// A port served by one PMD: every queue pair on `pmd`, as port `port` there.
    pub fn new(name: impl Into<String>, port: usize, pmd: Sender<PortCommand>, detach_timeout: Duration) -> Self {
        DeviceConfig { name: name.into(), port, pmd, detach_timeout, shards: Vec::new(), pair_shard: Vec::new() }
    }

    /// Every shard, shard 0 first.
    fn all_shards(&self) -> impl Iterator<Item = (&Sender<PortCommand>, usize)> {
        std::iter::once((&self.pmd, self.port)).chain(self.shards.iter().map(|s| (&s.pmd, s.port)))
    }

    /// The shard that serves queue pair `pair`: its PMD's channel and the port's index there.
    pub fn shard_of(&self, pair: usize) -> (&Sender<PortCommand>, usize) {
        match self.pair_shard.get(pair).copied().unwrap_or(0) {
            0 => (&self.pmd, self.port),
            i => self.shards.get(i - 1).map_or((&self.pmd, self.port), |s| (&s.pmd, s.port)),
        }
    }
}

/// Ring addresses as the frontend gave them (its user virtual addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingAddrs {
    desc: u64,
    avail: u64,
    used: u64,
}

/// What the frontend set for one vring.
#[derive(Debug, Default)]
struct Vring {
    size: u16,
    addrs: Option<RingAddrs>,
    /// Next avail index (SET_VRING_BASE, or where the PMD stopped).
    base: u16,
    /// A kick arrived (fd or "polling"): the ring is started; GET_VRING_BASE stops it.
    started: bool,
    /// The kick eventfd. A polling PMD never reads it, but it is kept for the ring's lifetime.
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
}

impl Vring {
    /// Ready to serve. Without `VHOST_USER_F_PROTOCOL_FEATURES` a ring is enabled as soon as it
    /// starts (vhost-user spec, "Ring states"); with it, only after `SET_VRING_ENABLE 1`.
    fn ready(&self, protocol_features: bool) -> bool {
        self.size != 0 && self.addrs.is_some() && self.started && (self.enabled || !protocol_features)
    }
}

/// The vhost-user request handler of one port (up to `max_queue_pairs` queue pairs). Lives on
/// the port's control thread; serves one frontend connection at a time and is
/// [`disconnect`](Self::disconnect)ed between them.
#[derive(Debug)]
pub struct VhostUserDevice {
    cfg: DeviceConfig,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
    mem: Option<MemTable>,
    /// The dirty log (`SET_LOG_BASE`), used while VHOST_F_LOG_ALL is acked.
    log: Option<Arc<DirtyLog>>,
    /// Two per queue pair: `2k` the guest's RX queue, `2k + 1` its TX queue.
    vrings: Vec<Vring>,
    /// Per queue pair: attached to the PMD now.
    attached: Vec<bool>,
    attaches: u64,
    /// The connection this device serves (the owner of the pairs it attaches).
    session: u64,
}

impl VhostUserDevice {
    /// A device with no frontend yet, offering [`DEFAULT_MAX_QUEUE_PAIRS`] queue pairs.
    pub fn new(cfg: DeviceConfig) -> Self {
        Self::with_queue_pairs(cfg, DEFAULT_MAX_QUEUE_PAIRS)
    }

    /// A device with no frontend yet, offering `max_queue_pairs` queue pairs (at least 1).
    pub fn with_queue_pairs(cfg: DeviceConfig, max_queue_pairs: usize) -> Self {
        let pairs = max_queue_pairs.max(1);
        VhostUserDevice {
            cfg,
            acked: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            mem: None,
            log: None,
            vrings: (0..2 * pairs).map(|_| Vring::default()).collect(),
            attached: vec![false; pairs],
            attaches: 0,
            session: 0,
        }
    }

    /// The same device for connection `session` of its socket: the pairs it attaches are that
    /// connection's, and its detaches touch no other connection's pairs.
    pub fn for_session(mut self, session: u64) -> Self {
        self.session = session;
        self
    }

    /// How many queue pairs the device offers.
    pub fn max_queue_pairs(&self) -> usize {
        self.attached.len()
    }

    /// Whether any queue pair is attached to the PMD now.
    pub fn is_attached(&self) -> bool {
        self.attached.iter().any(|&a| a)
    }

    /// Whether queue pair `pair` is attached to the PMD now.
    pub fn is_pair_attached(&self, pair: usize) -> bool {
        self.attached.get(pair).copied().unwrap_or(false)
    }

    /// How many times a queue pair was handed to the PMD.
    pub fn attaches(&self) -> u64 {
        self.attaches
    }

    /// The features the frontend acked.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// The frontend went away (or reset its owner): detach its queue pairs, clearing in-flight
    /// copies without touching its rings, then forget every ring and unmap its memory.
    pub fn disconnect(&mut self) -> Result<(), VhostUserError> {
        let r = self.reset();
        self.protocol = VhostUserProtocolFeatures::empty();
        r
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, VhostUserError> {
        self.vrings.get_mut(index as usize).ok_or(VhostUserError::BadVring(index))
    }

    /// Detaches queue pair `pair` (`None`: every pair) from the PMD if attached, and records
    /// where its rings stopped.
    fn detach(&mut self, pair: Option<usize>, mode: DetachMode) -> Result<(), VhostUserError> {
        let any = match pair {
            Some(k) => std::mem::replace(&mut self.attached[k], false),
            None => {
                let any = self.is_attached();
                self.attached.fill(false);
                any
            }
        };
        if !any {
            return Ok(());
        }
        // One detach per shard that may hold the pair(s), all sent before any answer is awaited:
        // the PMDs drain in parallel.
        let targets: Vec<(&Sender<PortCommand>, usize)> = match pair {
            Some(k) => vec![self.cfg.shard_of(k)],
            None => self.cfg.all_shards().collect(),
        };
        // Every answer that comes is applied, even when another shard failed: a shard that did
        // detach reported where its rings stopped, and dropping that would restart them from
        // stale positions on the next attach. The first failure is returned afterwards.
        let mut first_err = None;
        let mut waits = Vec::with_capacity(targets.len());
        for (pmd, port) in targets {
            let (tx, rx) = mpsc::channel();
            let cmd = PortCommand::Detach { port, pair, mode, reply: tx, owner: Some(self.session) };
            if pmd.send(cmd).is_err() {
                // No PMD: nothing serves the queues any more (they were dropped with it).
                first_err.get_or_insert(VhostUserError::PmdGone);
                continue;
            }
            waits.push(rx);
        }
        let deadline = std::time::Instant::now() + self.cfg.detach_timeout;
        let mut bases = Vec::new();
        for rx in waits {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(b) => bases.extend(b),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    first_err.get_or_insert(VhostUserError::PmdTimeout(self.cfg.detach_timeout));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    first_err.get_or_insert(VhostUserError::PmdGone);
                }
            }
        }
        for (k, b) in bases {
            if let Some([rx, tx]) = self.vrings.get_mut(2 * k..2 * k + 2) {
                rx.base = b.rx;
                tx.base = b.tx;
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs `change` with queue pair `pair` (`None`: every pair) detached (drained), then
    /// attaches every ready pair again.
    fn reconfigure<T>(
        &mut self,
        pair: Option<usize>,
        change: impl FnOnce(&mut Self) -> Result<T, VhostUserError>,
    ) -> Result<T, VhostUserError> {
        self.detach(pair, DetachMode::Drain)?;
        let r = change(self)?;
        self.try_attach()?;
        Ok(r)
    }

    fn queue(&self, index: usize, mem: &MemTable) -> Result<Virtqueue, VhostUserError> {
        let v = &self.vrings[index];
        let a = v.addrs.expect("ready ring has addresses");
        let map = mem.addresses();
        let cfg = QueueConfig {
            size: v.size,
            desc_table: map.ring_gpa(a.desc)?,
            avail_ring: map.ring_gpa(a.avail)?,
            used_ring: map.ring_gpa(a.used)?,
            features: RingFeatures::from_negotiated(self.acked),
            avail_base: v.base,
        };
        let mut q = Virtqueue::new(mem.memory().clone(), cfg)?;
        if features::logging(self.acked) {
            q.set_dirty_log(self.log.clone()).expect("a queue just set up has no chain in flight");
        }
        Ok(q)
    }

    fn notifier(&self, index: usize) -> Result<Notifier, VhostUserError> {
        match &self.vrings[index].call {
            Some(f) => Ok(Notifier::eventfd(OwnedFd::from(f.try_clone().map_err(VhostUserError::CallFd)?))),
            None => Ok(Notifier::Polling),
        }
    }

    /// Hands every queue pair whose rings are both ready to the PMD, if memory is mapped. A pair
    /// that cannot be built (its rings do not fit the memory) stays detached and does not keep
    /// the others from attaching; the first such error is returned.
    fn try_attach(&mut self) -> Result<(), VhostUserError> {
        let mut first_err = None;
        for k in 0..self.attached.len() {
            if let Err(e) = self.try_attach_pair(k) {
                if matches!(e, VhostUserError::PmdGone) {
                    return Err(e);
                }
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn try_attach_pair(&mut self, k: usize) -> Result<(), VhostUserError> {
        let protocol = features::has_protocol_features(self.acked);
        let (rx, tx) = (2 * k, 2 * k + 1);
        if self.attached[k] || !self.vrings[rx].ready(protocol) || !self.vrings[tx].ready(protocol) {
            return Ok(());
        }
        let Some(mem) = &self.mem else { return Ok(()) };
        let (rxq, txq) = (self.queue(rx, mem)?, self.queue(tx, mem)?);
        let hdr_len = net_hdr_len(self.acked);
        let north = Northbound::new(rxq, hdr_len, features::mergeable(self.acked), self.notifier(rx)?);
        let south = Southbound::new(txq, hdr_len, self.notifier(tx)?);
        let (pmd, port) = self.cfg.shard_of(k);
        pmd.send(PortCommand::Attach { port, pair: k, north, south, owner: self.session })
            .map_err(|_| VhostUserError::PmdGone)?;
        self.attached[k] = true;
        self.attaches += 1;
        Ok(())
    }
}

impl VhostUserDevice {
    /// `SET_OWNER`: nothing to do (one connection is served at a time).
    pub fn set_owner(&mut self) -> Result<(), VhostUserError> {
        Ok(())
    }

    /// `RESET_OWNER` / `RESET_DEVICE`: every ring disabled and forgotten, copies in flight
    /// cleared (the rings are not touched: the driver is resetting them), the memory table
    /// unmapped and the virtio features forgotten. The negotiated protocol features stay: they
    /// belong to the connection, and frontends do not send them again after a reset.
    pub fn reset(&mut self) -> Result<(), VhostUserError> {
        let r = self.detach(None, DetachMode::Clear);
        self.mem = None;
        self.log = None;
        self.vrings.iter_mut().for_each(|v| *v = Vring::default());
        self.acked = 0;
        r
    }

    /// `GET_FEATURES`.
    pub fn features(&self) -> u64 {
        features::offered_features()
    }

    /// `SET_FEATURES`. The same features again change nothing; new ones are applied with the
    /// running pairs drained and attached again (they keep running).
    pub fn set_features(&mut self, acked: u64) -> Result<(), VhostUserError> {
        let acked = features::check_acked(acked)?;
        if acked == self.acked {
            return Ok(());
        }
        self.reconfigure(None, |d| {
            d.acked = acked;
            Ok(())
        })
    }

    /// `GET_PROTOCOL_FEATURES`.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::offered_protocol_features()
    }

    /// `SET_PROTOCOL_FEATURES`.
    pub fn set_protocol_features(&mut self, acked: u64) -> Result<(), VhostUserError> {
        self.protocol = features::check_acked_protocol(acked)?;
        Ok(())
    }

    /// The protocol features the frontend acked.
    pub fn acked_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// `SET_MEM_TABLE`: `regions` are `(region, mmap_offset)`, `files[i]` backs `regions[i]`.
    /// The new table is mapped first (a bad one leaves the running pairs alone), then every pair
    /// is drained, the old table dropped, and the ready pairs attached on the new one.
    pub fn set_mem_table(&mut self, regions: &[(UserRegion, u64)], files: Vec<File>) -> Result<(), VhostUserError> {
        let table = MemTable::map(regions, &files)?;
        self.reconfigure(None, |d| {
            // The old table is dropped here, after the detach: its queues are gone.
            d.mem = Some(table);
            Ok(())
        })
    }

    /// `SET_LOG_BASE`: maps the frontend's dirty log (`size` bytes of `file` at `offset`) and
    /// hands it to the running pairs (drained and attached again: a replaced log takes effect
    /// between two bursts, never in the middle of one). The old log is dropped after the detach.
    pub fn set_log_base(&mut self, size: u64, offset: u64, file: File) -> Result<(), VhostUserError> {
        let len = usize::try_from(size).ok().filter(|&l| l > 0).ok_or(VhostUserError::BadLog(size))?;
        let md = file.metadata().map_err(crate::mem::MemoryConfigError::Map)?;
        if !md.file_type().is_file() || offset.checked_add(size).is_none_or(|end| end > md.len()) {
            return Err(VhostUserError::BadLog(size));
        }
        let log = DirtyLog::from_fd(file.as_fd(), offset, len).map_err(crate::mem::MemoryConfigError::Map)?;
        self.reconfigure(None, |d| {
            d.log = Some(Arc::new(log));
            Ok(())
        })
    }

    /// Whether the pairs attached from now on log dirty pages.
    pub fn is_logging(&self) -> bool {
        features::logging(self.acked) && self.log.is_some()
    }

    /// `SET_VRING_NUM`: in `1..=MAX_QUEUE_SIZE`, and a power of two unless packed rings were
    /// negotiated (section 2.8: a packed ring may have any size).
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), VhostUserError> {
        if num == 0 || num > MAX_QUEUE_SIZE as u32 || !(num.is_power_of_two() || features::packed(self.acked)) {
            return Err(VhostUserError::BadRingSize(num));
        }
        self.vring(index)?;
        self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].size = num as u16;
            Ok(())
        })
    }

    /// `SET_VRING_ADDR`: the frontend's user addresses of the three parts of the ring.
    pub fn set_vring_addr(&mut self, index: u32, desc: u64, used: u64, avail: u64) -> Result<(), VhostUserError> {
        self.vring(index)?;
        self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].addrs = Some(RingAddrs { desc, avail, used });
            Ok(())
        })
    }

    /// `SET_VRING_BASE`: the next avail index to serve. For a packed ring (vhost-user spec,
    /// "Vring descriptor indices for packed virtqueues") bits 0..15 are the avail index, bit 15
    /// its wrap counter, and bits 16..32 the used index and wrap counter: the ring restarts with
    /// no chain in flight, so the used position is the avail one (as DPDK's vhost has it; QEMU
    /// sends both equal after a stop, and DPDK's virtio-user sends only the avail half). An index
    /// outside the ring is refused when the queue is built.
    pub fn set_vring_base(&mut self, index: u32, base: u32) -> Result<(), VhostUserError> {
        self.vring(index)?;
        let base = if features::packed(self.acked) {
            base as u16
        } else {
            u16::try_from(base).map_err(|_| VhostUserError::BadRingBase(base))?
        };
        self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].base = base;
            Ok(())
        })
    }

    /// `GET_VRING_BASE`: the frontend stops this ring. Its pair stops serving, with every copy
    /// drained and every in-flight chain back on the used ring (the other pairs keep running);
    /// the answer is the next avail index. For a packed ring: the avail index and wrap counter in
    /// bits 0..16, and the used ones, which match them once drained, in bits 16..32.
    pub fn get_vring_base(&mut self, index: u32) -> Result<u32, VhostUserError> {
        self.vring(index)?;
        self.detach(Some(index as usize / 2), DetachMode::Drain)?;
        let packed = features::packed(self.acked);
        let v = &mut self.vrings[index as usize];
        v.started = false;
        v.kick = None;
        let base = u32::from(v.base);
        Ok(if packed { base | base << 16 } else { base })
    }

    /// `SET_VRING_KICK`: starts the ring (`None`: no fd, the ring is polled, which the PMD does
    /// anyway).
    pub fn set_vring_kick(&mut self, index: u32, fd: Option<File>) -> Result<(), VhostUserError> {
        self.vring(index)?;
        self.reconfigure(Some(index as usize / 2), |d| {
            let v = &mut d.vrings[index as usize];
            v.kick = fd;
            v.started = true;
            Ok(())
        })
    }

    /// `SET_VRING_CALL`: the eventfd to signal used buffers on (`None`: the driver polls).
    pub fn set_vring_call(&mut self, index: u32, fd: Option<File>) -> Result<(), VhostUserError> {
        self.vring(index)?;
        self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].call = fd;
            Ok(())
        })
    }

    /// `SET_VRING_ERR`: accepted and closed; errors are counted in the port's stats instead.
    pub fn set_vring_err(&mut self, index: u32, _fd: Option<File>) -> Result<(), VhostUserError> {
        self.vring(index)?;
        Ok(())
    }

    /// `SET_VRING_ENABLE`, whenever it comes: the state is recorded at once and takes effect
    /// once `VHOST_USER_F_PROTOCOL_FEATURES` is acked (before that, a started ring is enabled
    /// anyway). QEMU 7.2 sends it at device reset, before `SET_FEATURES`.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), VhostUserError> {
        self.vring(index)?;
        if self.vrings[index as usize].enabled == enable {
            return Ok(());
        }
        self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].enabled = enable;
            Ok(())
        })
    }
}
