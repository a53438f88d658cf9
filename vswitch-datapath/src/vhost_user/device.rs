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

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg, VhostUserSingleMemoryRegion,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as ProtoError, GpuBackend, VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures};

use super::features;
use super::memtable::{MemTable, UserRegion};
use super::VhostUserError;
use crate::net::net_hdr_len;
use crate::vhost::{Northbound, Notifier, Southbound};
use crate::vhost_port::{DetachMode, PortCommand};
use crate::virtio::split::{QueueConfig, SplitQueue};
use crate::virtio::{RingFeatures, MAX_QUEUE_SIZE};

type ProtoResult<T> = Result<T, ProtoError>;

/// How many queue pairs a device offers unless told otherwise.
pub const DEFAULT_MAX_QUEUE_PAIRS: usize = 4;

/// How a device talks to its PMD thread.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The port's name (for log lines).
    pub name: String,
    /// The port's index in the PMD.
    pub port: usize,
    /// The PMD thread's command channel.
    pub pmd: Sender<PortCommand>,
    /// How long to wait for the PMD to detach a queue pair.
    pub detach_timeout: Duration,
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
    owned: bool,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
    mem: Option<MemTable>,
    /// Two per queue pair: `2k` the guest's RX queue, `2k + 1` its TX queue.
    vrings: Vec<Vring>,
    /// Per queue pair: attached to the PMD now.
    attached: Vec<bool>,
    attaches: u64,
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
            owned: false,
            acked: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            mem: None,
            vrings: (0..2 * pairs).map(|_| Vring::default()).collect(),
            attached: vec![false; pairs],
            attaches: 0,
        }
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
        let r = self.detach(None, DetachMode::Clear);
        self.mem = None;
        self.vrings.iter_mut().for_each(|v| *v = Vring::default());
        self.acked = 0;
        self.protocol = VhostUserProtocolFeatures::empty();
        self.owned = false;
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
        let (tx, rx) = mpsc::channel();
        if self.cfg.pmd.send(PortCommand::Detach { port: self.cfg.port, pair, mode, reply: tx }).is_err() {
            // No PMD: nothing serves the queues any more (they were dropped with it).
            return Err(VhostUserError::PmdGone);
        }
        let bases = match rx.recv_timeout(self.cfg.detach_timeout) {
            Ok(b) => b,
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(VhostUserError::PmdTimeout(self.cfg.detach_timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(VhostUserError::PmdGone),
        };
        for (k, b) in bases {
            if let Some([rx, tx]) = self.vrings.get_mut(2 * k..2 * k + 2) {
                rx.base = b.rx;
                tx.base = b.tx;
            }
        }
        Ok(())
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

    fn queue(&self, index: usize, mem: &MemTable) -> Result<SplitQueue, VhostUserError> {
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
        Ok(SplitQueue::new(mem.memory().clone(), cfg)?)
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
        self.cfg
            .pmd
            .send(PortCommand::Attach { port: self.cfg.port, pair: k, north, south })
            .map_err(|_| VhostUserError::PmdGone)?;
        self.attached[k] = true;
        self.attaches += 1;
        Ok(())
    }
}

fn unsupported<T>(what: &'static str) -> ProtoResult<T> {
    Err(ProtoError::InvalidOperation(what))
}

impl VhostUserBackendReqHandlerMut for VhostUserDevice {
    fn set_owner(&mut self) -> ProtoResult<()> {
        if self.owned {
            return Err(ProtoError::InvalidOperation("already owned"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> ProtoResult<()> {
        Ok(self.disconnect()?)
    }

    fn reset_device(&mut self) -> ProtoResult<()> {
        unsupported("RESET_DEVICE is not offered")
    }

    fn get_features(&mut self) -> ProtoResult<u64> {
        Ok(features::offered_features())
    }

    fn set_features(&mut self, acked: u64) -> ProtoResult<()> {
        let acked = features::check_acked(acked)?;
        Ok(self.reconfigure(None, |d| {
            d.acked = acked;
            Ok(())
        })?)
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> ProtoResult<Option<Vec<u64>>> {
        let regions: Vec<_> = ctx
            .iter()
            .map(|r| (UserRegion { user_addr: r.user_addr, gpa: r.guest_phys_addr, len: r.memory_size }, r.mmap_offset))
            .collect();
        // Map the new table first: a bad one leaves the running queues alone.
        let table = MemTable::map(&regions, &files)?;
        self.reconfigure(None, |d| {
            // The old table is dropped here, after the detach: its queues are gone.
            d.mem = Some(table);
            Ok(())
        })?;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> ProtoResult<()> {
        if num == 0 || num > MAX_QUEUE_SIZE as u32 || !num.is_power_of_two() {
            return Err(VhostUserError::BadRingSize(num).into());
        }
        self.vring(index)?;
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].size = num as u16;
            Ok(())
        })?)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> ProtoResult<()> {
        self.vring(index)?;
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].addrs = Some(RingAddrs { desc: descriptor, avail: available, used });
            Ok(())
        })?)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> ProtoResult<()> {
        self.vring(index)?;
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].base = base as u16;
            Ok(())
        })?)
    }

    fn get_vring_base(&mut self, index: u32) -> ProtoResult<VhostUserVringState> {
        self.vring(index)?;
        // The frontend stops this ring: its pair stops serving, with every copy drained and every
        // in-flight chain back on the used ring. The other pairs keep running.
        self.detach(Some(index as usize / 2), DetachMode::Drain)?;
        let v = &mut self.vrings[index as usize];
        v.started = false;
        v.kick = None;
        Ok(VhostUserVringState::new(index, v.base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> ProtoResult<()> {
        self.vring(index as u32)?;
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            let v = &mut d.vrings[index as usize];
            v.kick = fd;
            v.started = true;
            Ok(())
        })?)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> ProtoResult<()> {
        self.vring(index as u32)?;
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].call = fd;
            Ok(())
        })?)
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> ProtoResult<()> {
        // Errors are counted in the port's stats; the error fd is not used.
        self.vring(index as u32)?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> ProtoResult<VhostUserProtocolFeatures> {
        Ok(features::offered_protocol_features())
    }

    fn set_protocol_features(&mut self, acked: u64) -> ProtoResult<()> {
        self.protocol = features::check_acked_protocol(acked)?;
        Ok(())
    }

    fn get_queue_num(&mut self) -> ProtoResult<u64> {
        // Queue *pairs*: what vhost-user-net frontends (QEMU's net/vhost-user, which compares it
        // with its `queues=` pairs) and DPDK's vhost library answer, though the spec's wording
        // now says virtqueues.
        Ok(self.attached.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> ProtoResult<()> {
        self.vring(index)?;
        if self.vrings[index as usize].enabled == enable {
            return Ok(());
        }
        Ok(self.reconfigure(Some(index as usize / 2), |d| {
            d.vrings[index as usize].enabled = enable;
            Ok(())
        })?)
    }

    fn get_config(&mut self, _offset: u32, _size: u32, _flags: VhostUserConfigFlags) -> ProtoResult<Vec<u8>> {
        unsupported("CONFIG is not offered")
    }

    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> ProtoResult<()> {
        unsupported("CONFIG is not offered")
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> ProtoResult<()> {
        unsupported("not a GPU device")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> ProtoResult<File> {
        unsupported("SHARED_OBJECT is not offered")
    }

    fn get_inflight_fd(&mut self, _inflight: &VhostUserInflight) -> ProtoResult<(VhostUserInflight, File)> {
        unsupported("INFLIGHT_SHMFD is not offered")
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> ProtoResult<()> {
        unsupported("INFLIGHT_SHMFD is not offered")
    }

    fn get_max_mem_slots(&mut self) -> ProtoResult<u64> {
        unsupported("CONFIGURE_MEM_SLOTS is not offered")
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> ProtoResult<Option<u64>> {
        unsupported("CONFIGURE_MEM_SLOTS is not offered")
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> ProtoResult<()> {
        unsupported("CONFIGURE_MEM_SLOTS is not offered")
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> ProtoResult<Option<File>> {
        unsupported("DEVICE_STATE is not offered")
    }

    fn check_device_state(&mut self) -> ProtoResult<()> {
        unsupported("DEVICE_STATE is not offered")
    }

    fn get_shmem_config(&mut self) -> ProtoResult<VhostUserShMemConfig> {
        unsupported("SHMEM is not offered")
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> ProtoResult<()> {
        unsupported("LOG_SHMFD is not offered (no live migration)")
    }
}
