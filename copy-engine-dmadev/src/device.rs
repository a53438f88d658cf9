//! Opening a dmadev: lookup by name or id, capability checks, configuration and start.
//!
//! This module owns a device's configuration and its running state, shared by the channels
//! (virtual channels, one [`DmadevEngine`] each) opened on it. It does not touch the data path.
//!
//! A device is configured once when opened (all its vchans at once, since `rte_dma_configure`
//! fixes their number) and started; dmadev starts and stops whole devices, so the device runs while
//! any of its channels runs. Dropping the last handle stops it but does not close it: a closed
//! dmadev is released by DPDK and could not be opened again in this process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use copy_engine::{Capabilities, ControlError};

use crate::eal::Eal;
use crate::engine::DmadevEngine;
use crate::ffi;

/// Devices opened in this process (a device may be opened once at a time).
static OPEN: Mutex<Option<HashSet<i16>>> = Mutex::new(None);

/// Largest ring this crate configures: tickets map to dmadev's `u16` ring index, so fewer than
/// 65,536 ops may be in flight.
pub const MAX_RING: usize = 32_768;

/// Default descriptors per channel.
pub const DEFAULT_RING: usize = 1024;

/// What a dmadev is, as DPDK reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device id.
    pub id: i16,
    /// The device name (`dma_skeleton0`, `0000:00:04.0`, `wq0.0`, ...).
    pub name: String,
    /// Raw `RTE_DMA_CAPA_*` bits.
    pub raw_capabilities: u64,
    /// Mapped onto copy-engine's capabilities.
    pub capabilities: Capabilities,
    /// Most virtual channels.
    pub max_vchans: u16,
    /// Fewest descriptors per channel.
    pub min_desc: u16,
    /// Most descriptors per channel.
    pub max_desc: u16,
    /// NUMA node, -1 if unknown.
    pub numa_node: i16,
    /// The driver implements `rte_dma_completed_status` (per-op error status).
    pub completed_status: bool,
}

impl DeviceInfo {
    fn query(id: i16) -> Result<DeviceInfo, ControlError> {
        let raw = ffi::dma_info(id).map_err(|code| backend("rte_dma_info_get", code))?;
        Ok(DeviceInfo {
            id,
            capabilities: map_capabilities(raw.capa, raw.has_completed_status),
            name: raw.name,
            raw_capabilities: raw.capa,
            max_vchans: raw.max_vchans,
            min_desc: raw.min_desc,
            max_desc: raw.max_desc,
            numa_node: raw.numa_node,
            completed_status: raw.has_completed_status,
        })
    }
}

/// Maps `RTE_DMA_CAPA_*` onto [`Capabilities`].
///
/// - `MEM_TO_MEM` needs both `RTE_DMA_CAPA_MEM_TO_MEM` and `RTE_DMA_CAPA_OPS_COPY`.
/// - `FILL` from `RTE_DMA_CAPA_OPS_FILL` (this backend does not issue fills yet).
/// - `SVA` from `RTE_DMA_CAPA_SVA`.
/// - `ERROR_STATUS` when the driver implements `rte_dma_completed_status`.
/// - `FENCE`: `RTE_DMA_OP_FLAG_FENCE` is part of every dmadev's enqueue API (there is no
///   capability bit for it), so every device gets it.
/// - `OFFLOAD`: always; the copy runs on the device (or, for `dma_skeleton`, its own thread).
pub fn map_capabilities(capa: u64, completed_status: bool) -> Capabilities {
    let mut c = Capabilities::FENCE | Capabilities::OFFLOAD;
    if capa & ffi::RTE_DMA_CAPA_MEM_TO_MEM != 0 && capa & ffi::RTE_DMA_CAPA_OPS_COPY != 0 {
        c |= Capabilities::MEM_TO_MEM;
    }
    if capa & ffi::RTE_DMA_CAPA_OPS_FILL != 0 {
        c |= Capabilities::FILL;
    }
    if capa & ffi::RTE_DMA_CAPA_SVA != 0 {
        c |= Capabilities::SVA;
    }
    if completed_status {
        c |= Capabilities::ERROR_STATUS;
    }
    c
}

pub(crate) fn backend(context: &'static str, code: i32) -> ControlError {
    ControlError::Backend { context, message: ffi::strerror(code), code }
}

/// Every dmadev EAL found (`--vdev`s, bound PCI devices, idxd work queues).
pub fn list_devices(_eal: &Eal) -> Vec<DeviceInfo> {
    ffi::dma_ids().into_iter().filter_map(|id| DeviceInfo::query(id).ok()).collect()
}

/// Which device to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSelector {
    /// By DPDK device name.
    Name(String),
    /// By dmadev id.
    Id(i16),
}

impl From<&str> for DeviceSelector {
    fn from(s: &str) -> Self {
        DeviceSelector::Name(s.to_owned())
    }
}

impl From<String> for DeviceSelector {
    fn from(s: String) -> Self {
        DeviceSelector::Name(s)
    }
}

impl From<i16> for DeviceSelector {
    fn from(id: i16) -> Self {
        DeviceSelector::Id(id)
    }
}

/// How to configure a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Virtual channels to set up (one per thread that copies; default 1).
    pub vchans: u16,
    /// Descriptors per channel; rounded to a power of two and clamped to the device's range and to
    /// [`MAX_RING`] (default [`DEFAULT_RING`]).
    pub ring_size: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig { vchans: 1, ring_size: DEFAULT_RING }
    }
}

/// The descriptor count used for a requested ring size on a device with `[min, max]` descriptors.
pub fn descriptor_count(requested: usize, min: u16, max: u16) -> u16 {
    let max = (max as usize).clamp(1, MAX_RING);
    // A power of two no larger than the device's maximum (dma_skeleton requires powers of two).
    let max_pow2 = 1usize << (usize::BITS - 1 - max.leading_zeros());
    let n = requested.max(1).checked_next_power_of_two().unwrap_or(max_pow2).min(max_pow2);
    n.max(min as usize).min(max) as u16
}

pub(crate) struct DeviceShared {
    pub(crate) eal: Eal,
    pub(crate) info: DeviceInfo,
    pub(crate) nb_desc: u16,
    pub(crate) state: Mutex<RunState>,
}

pub(crate) struct RunState {
    /// Set-up vchans not handed out, by index (`None` while an engine holds it).
    pub(crate) free: Vec<Option<ffi::Vchan>>,
    /// Channels running.
    pub(crate) running: usize,
    /// The device is started.
    pub(crate) started: bool,
    /// Incremented on every device start: ring indices restart at zero then.
    pub(crate) epoch: u64,
}

impl DeviceShared {
    /// A channel starts: start the device if it is stopped. Returns the device's start epoch.
    pub(crate) fn channel_start(&self) -> Result<u64, ControlError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.started {
            let rc = ffi::dma_start(self.info.id);
            if rc < 0 {
                return Err(backend("rte_dma_start", rc));
            }
            st.started = true;
            st.epoch += 1;
        }
        st.running += 1;
        Ok(st.epoch)
    }

    /// A channel stopped (nothing of it in flight): stop the device when none runs.
    pub(crate) fn channel_stop(&self) -> Result<(), ControlError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.running = st.running.saturating_sub(1);
        if st.running == 0 && st.started {
            st.started = false;
            let rc = ffi::dma_stop(self.info.id);
            if rc < 0 {
                return Err(backend("rte_dma_stop", rc));
            }
        }
        Ok(())
    }

    pub(crate) fn release(&self, index: u16, vchan: ffi::Vchan) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = st.free.get_mut(index as usize) {
            *c = Some(vchan);
        }
    }
}

impl Drop for DeviceShared {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if st.started {
            let _ = ffi::dma_stop(self.info.id);
        }
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = open.as_mut() {
            set.remove(&self.info.id);
        }
    }
}

/// An opened, configured and started dmadev; hands out one [`DmadevEngine`] per vchan.
///
/// A device with several vchans serves several threads, one channel each:
///
/// ```no_run
/// # use copy_engine_dmadev::{DmadevDevice, DeviceConfig, EalBuilder};
/// let eal = EalBuilder::new().allow("0000:00:04.0").init()?;
/// let dev = DmadevDevice::open(&eal, "0000:00:04.0", DeviceConfig { vchans: 2, ring_size: 1024 })?;
/// let ch0 = dev.channel(0)?;
/// let ch1 = dev.channel(1)?;
/// std::thread::spawn(move || { let _ = ch1; /* thread 1 copies through vchan 1 */ });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct DmadevDevice {
    shared: Arc<DeviceShared>,
}

impl std::fmt::Debug for DmadevDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmadevDevice").field("info", &self.shared.info).field("nb_desc", &self.shared.nb_desc).finish()
    }
}

impl DmadevDevice {
    /// Opens the device by name or id, configures `config.vchans` channels of `config.ring_size`
    /// descriptors each, and starts it.
    ///
    /// Errors: [`ControlError::NoSuchDevice`] (listing the devices that exist),
    /// [`ControlError::Unsupported`] for a device without memory-to-memory copy or
    /// `completed_status`, or a non-SVA device while EAL is not in IOVA-as-VA mode,
    /// [`ControlError::InvalidConfig`] for too many vchans, [`ControlError::Backend`] when DPDK
    /// refuses (the device is already open in this process: code `-EBUSY`).
    pub fn open(eal: &Eal, device: impl Into<DeviceSelector>, config: DeviceConfig) -> Result<Self, ControlError> {
        let sel = device.into();
        let id = match &sel {
            DeviceSelector::Name(name) => ffi::dma_id_by_name(name),
            DeviceSelector::Id(id) => ffi::dma_ids().into_iter().find(|d| d == id),
        };
        let Some(id) = id else {
            let name = match sel {
                DeviceSelector::Name(n) => n,
                DeviceSelector::Id(id) => format!("#{id}"),
            };
            let available = list_devices(eal).into_iter().map(|d| d.name).collect();
            return Err(ControlError::NoSuchDevice { name, available });
        };
        let info = DeviceInfo::query(id)?;
        let unsupported = |reason: &str| ControlError::Unsupported { name: info.name.clone(), reason: reason.into() };
        if !info.capabilities.contains(Capabilities::MEM_TO_MEM) {
            return Err(unsupported("no memory-to-memory copy (RTE_DMA_CAPA_MEM_TO_MEM | RTE_DMA_CAPA_OPS_COPY)"));
        }
        if !info.completed_status {
            return Err(unsupported("driver lacks rte_dma_completed_status (per-op error status)"));
        }
        if !info.capabilities.contains(Capabilities::SVA) && !eal.iova_is_va() {
            return Err(unsupported("device has no SVA and EAL is not in IOVA-as-VA mode (pass --iova-mode=va)"));
        }
        if config.vchans == 0 || config.vchans > info.max_vchans {
            return Err(ControlError::InvalidConfig(format!(
                "{} vchans requested, device {} has 1..={}",
                config.vchans, info.name, info.max_vchans
            )));
        }
        {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            if !open.get_or_insert_with(HashSet::new).insert(id) {
                return Err(ControlError::Backend {
                    context: "open dmadev",
                    message: format!("device {} is already open in this process", info.name),
                    code: -16,
                });
            }
        }
        let nb_desc = descriptor_count(config.ring_size, info.min_desc, info.max_desc);
        let shared = Arc::new(DeviceShared {
            eal: eal.clone(),
            info,
            nb_desc,
            state: Mutex::new(RunState {
                free: Vec::with_capacity(config.vchans as usize),
                running: 0,
                started: false,
                epoch: 0,
            }),
        });
        // From here on, dropping `shared` releases the device again.
        let rc = ffi::dma_configure(id, config.vchans);
        if rc < 0 {
            return Err(backend("rte_dma_configure", rc));
        }
        for v in 0..config.vchans {
            let vchan = ffi::Vchan::setup(id, v, nb_desc).map_err(|rc| backend("rte_dma_vchan_setup", rc))?;
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).free.push(Some(vchan));
        }
        Ok(DmadevDevice { shared })
    }

    /// The EAL this device lives in.
    pub fn eal(&self) -> &Eal {
        &self.shared.eal
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.shared.info
    }

    /// Descriptors configured per channel.
    pub fn descriptors(&self) -> u16 {
        self.shared.nb_desc
    }

    /// Sets up vchan `vchan` and returns it as a running engine. Each vchan can be taken once at a
    /// time (it comes back when its engine is dropped); give each thread its own.
    pub fn channel(&self, vchan: u16) -> Result<DmadevEngine, ControlError> {
        let token = {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let n = st.free.len();
            let Some(slot) = st.free.get_mut(vchan as usize) else {
                return Err(ControlError::InvalidConfig(format!("vchan {vchan} out of range (device has {n})")));
            };
            slot.take().ok_or_else(|| ControlError::InvalidConfig(format!("vchan {vchan} is already in use")))?
        };
        DmadevEngine::new(self.shared.clone(), vchan, token)
    }
}
