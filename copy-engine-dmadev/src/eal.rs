//! EAL bring-up: DPDK's Environment Abstraction Layer, started at most once per process.
//!
//! This module owns the EAL's lifetime: [`EalBuilder`] assembles the arguments, [`Eal`] is a
//! cheap, clonable handle, and `rte_eal_cleanup` runs when the last handle is dropped (or on
//! [`Eal::cleanup`]). Every device and engine holds a handle, so EAL outlives them. DPDK cannot
//! start EAL twice in one process, not even after a cleanup: a second [`EalBuilder::init`] while a
//! handle is alive returns [`EalError::AlreadyInitialized`] ([`Eal::current`] gives the live one),
//! and one after cleanup returns [`EalError::CleanedUp`].
//!
//! `rte_eal_init` pins the calling thread to the main lcore (the first one of `-l`). Control
//! threads (including `dma_skeleton`'s copy thread) run on the CPUs *not* in `-l`; on a small
//! machine give EAL one lcore (`-l 0`) so those threads have a CPU of their own.

use std::ffi::CString;
use std::sync::{Arc, Mutex, Weak};

use crate::ffi;

/// Why EAL could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EalError {
    /// EAL is running in this process already; use [`Eal::current`].
    #[error("DPDK EAL is already initialised in this process")]
    AlreadyInitialized,
    /// EAL was cleaned up; DPDK cannot start it again in the same process.
    #[error("DPDK EAL was cleaned up and cannot be initialised again in this process")]
    CleanedUp,
    /// An argument contains a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// `rte_eal_init` failed.
    #[error("rte_eal_init({args:?}) failed: {message} (rte_errno {code})")]
    Init {
        /// The arguments EAL was given.
        args: Vec<String>,
        /// DPDK's message (`rte_strerror(rte_errno)`).
        message: String,
        /// `rte_errno`.
        code: i32,
    },
    /// `rte_eal_cleanup` failed.
    #[error("rte_eal_cleanup failed: {message} (code {code})")]
    Cleanup {
        /// DPDK's message.
        message: String,
        /// The error code.
        code: i32,
    },
    /// [`Eal::cleanup`] was called while other handles (devices, engines, clones) are alive.
    #[error("EAL still has {0} other handle(s); drop them first")]
    InUse(usize),
}

impl From<EalError> for copy_engine::ControlError {
    fn from(e: EalError) -> Self {
        let code = match &e {
            EalError::Init { code, .. } | EalError::Cleanup { code, .. } => *code,
            _ => 0,
        };
        copy_engine::ControlError::Backend { context: "DPDK EAL", message: e.to_string(), code }
    }
}

/// The process-wide EAL state.
enum Slot {
    Never,
    Live(Weak<EalInner>),
    Gone,
}

static EAL: Mutex<Slot> = Mutex::new(Slot::Never);

fn lock() -> std::sync::MutexGuard<'static, Slot> {
    EAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The arguments of `rte_eal_init`, built up by name. Defaults: no lcore list (EAL's default: all
/// CPUs), hugepages on, PCI scan on, a unique `--file-prefix` (`copy-engine-<pid>`), telemetry off.
#[derive(Clone, Debug)]
pub struct EalBuilder {
    program: String,
    lcores: Option<String>,
    no_huge: bool,
    memory_mb: Option<usize>,
    no_pci: bool,
    in_memory: bool,
    iova_va: bool,
    vdevs: Vec<String>,
    allow: Vec<String>,
    file_prefix: Option<String>,
    log_level: Vec<String>,
    no_telemetry: bool,
    extra: Vec<String>,
}

impl Default for EalBuilder {
    fn default() -> Self {
        EalBuilder {
            program: "copy-engine".into(),
            lcores: None,
            no_huge: false,
            memory_mb: None,
            no_pci: false,
            in_memory: false,
            iova_va: false,
            vdevs: Vec::new(),
            allow: Vec::new(),
            file_prefix: None,
            log_level: Vec::new(),
            no_telemetry: true,
            extra: Vec::new(),
        }
    }
}

impl EalBuilder {
    /// Default arguments (see the type's docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Arguments for a machine without DMA hardware or hugepages: `--no-huge --no-pci -m 256
    /// --iova-mode=va -l 0 --vdev=dma_skeleton0`, warnings only. What the tests use.
    pub fn skeleton() -> Self {
        Self::new()
            .no_huge(true)
            .memory_mb(256)
            .no_pci(true)
            .iova_va(true)
            .lcores("0")
            .vdev("dma_skeleton0")
            .log_level("*:warning")
    }

    /// `argv[0]`.
    pub fn program(mut self, name: impl Into<String>) -> Self {
        self.program = name.into();
        self
    }

    /// `-l <list>`: the lcores, e.g. `"0"` or `"0-3"`; the first is the main lcore.
    pub fn lcores(mut self, list: impl Into<String>) -> Self {
        self.lcores = Some(list.into());
        self
    }

    /// `--no-huge`: plain anonymous memory instead of hugepages.
    pub fn no_huge(mut self, on: bool) -> Self {
        self.no_huge = on;
        self
    }

    /// `-m <MB>`: memory to preallocate.
    pub fn memory_mb(mut self, mb: usize) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// `--no-pci`: skip the PCI bus scan (no PCI devices, DSA/IOAT on vfio-pci included).
    pub fn no_pci(mut self, on: bool) -> Self {
        self.no_pci = on;
        self
    }

    /// `--in-memory`: no shared runtime files (implies no secondary processes).
    pub fn in_memory(mut self, on: bool) -> Self {
        self.in_memory = on;
        self
    }

    /// `--iova-mode=va`: IOVA = VA. Needed for devices without SVA so that this crate can hand them
    /// plain virtual addresses of memory mapped with `map_memory`.
    pub fn iova_va(mut self, on: bool) -> Self {
        self.iova_va = on;
        self
    }

    /// `--vdev=<spec>`, e.g. `dma_skeleton0` or `dma_skeleton0,lcore=1`. May be repeated.
    pub fn vdev(mut self, spec: impl Into<String>) -> Self {
        self.vdevs.push(spec.into());
        self
    }

    /// `-a <device>`: allow only these PCI devices (e.g. `0000:00:04.0` for a CBDMA channel). May be
    /// repeated.
    pub fn allow(mut self, device: impl Into<String>) -> Self {
        self.allow.push(device.into());
        self
    }

    /// `--file-prefix=<prefix>` (default `copy-engine-<pid>`, unique per process).
    pub fn file_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.file_prefix = Some(prefix.into());
        self
    }

    /// `--log-level=<spec>`, e.g. `"*:warning"` or `"dma.skeleton:debug"`. May be repeated.
    pub fn log_level(mut self, spec: impl Into<String>) -> Self {
        self.log_level.push(spec.into());
        self
    }

    /// `--no-telemetry` (on by default).
    pub fn no_telemetry(mut self, on: bool) -> Self {
        self.no_telemetry = on;
        self
    }

    /// Any other EAL argument, passed as is (e.g. `-d /path/to/librte_dma_idxd.so`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// The argument vector `init` would pass (program name first).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![self.program.clone()];
        if let Some(l) = &self.lcores {
            a.extend(["-l".into(), l.clone()]);
        }
        if self.no_huge {
            a.push("--no-huge".into());
        }
        if let Some(m) = self.memory_mb {
            a.extend(["-m".into(), m.to_string()]);
        }
        if self.no_pci {
            a.push("--no-pci".into());
        }
        if self.in_memory {
            a.push("--in-memory".into());
        }
        if self.iova_va {
            a.push("--iova-mode=va".into());
        }
        for v in &self.vdevs {
            a.push(format!("--vdev={v}"));
        }
        for d in &self.allow {
            a.extend(["-a".into(), d.clone()]);
        }
        let prefix = self.file_prefix.clone().unwrap_or_else(|| format!("copy-engine-{}", std::process::id()));
        a.push(format!("--file-prefix={prefix}"));
        for l in &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        if self.no_telemetry {
            a.push("--no-telemetry".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts EAL with these arguments. Call it on the thread that will stay the main lcore: it
    /// gets pinned to the first lcore.
    pub fn init(self) -> Result<Eal, EalError> {
        let args = self.args();
        let mut slot = lock();
        match &*slot {
            Slot::Live(w) if w.strong_count() > 0 => return Err(EalError::AlreadyInitialized),
            Slot::Live(_) | Slot::Gone => return Err(EalError::CleanedUp),
            Slot::Never => {}
        }
        let cargs = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| EalError::BadArgument(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        if let Err(code) = ffi::eal_init(cargs) {
            // DPDK refuses any later init after a failed one, too.
            *slot = Slot::Gone;
            return Err(EalError::Init { args, message: ffi::strerror(code), code });
        }
        let inner = Arc::new(EalInner { args });
        *slot = Slot::Live(Arc::downgrade(&inner));
        Ok(Eal { inner })
    }
}

/// The one EAL of this process, live while any handle is.
#[derive(Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

struct EalInner {
    args: Vec<String>,
}

impl std::fmt::Debug for Eal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eal").field("args", &self.inner.args).finish()
    }
}

impl Eal {
    /// The live EAL, if one was initialised and not cleaned up.
    pub fn current() -> Option<Eal> {
        match &*lock() {
            Slot::Live(w) => w.upgrade().map(|inner| Eal { inner }),
            _ => None,
        }
    }

    /// The arguments EAL was started with.
    pub fn args(&self) -> &[String] {
        &self.inner.args
    }

    /// True when EAL runs in IOVA-as-VA mode (`--iova-mode=va`, or EAL's own choice).
    pub fn iova_is_va(&self) -> bool {
        ffi::iova_is_va()
    }

    /// Stops EAL now (`rte_eal_cleanup`). Fails with [`EalError::InUse`] while other handles live.
    pub fn cleanup(self) -> Result<(), EalError> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                let mut slot = lock();
                *slot = Slot::Gone;
                let rc = ffi::eal_cleanup();
                std::mem::forget(inner);
                if rc < 0 {
                    Err(EalError::Cleanup { message: ffi::strerror(rc), code: rc })
                } else {
                    Ok(())
                }
            }
            Err(arc) => Err(EalError::InUse(Arc::strong_count(&arc) - 1)),
        }
    }
}

impl Drop for EalInner {
    fn drop(&mut self) {
        let mut slot = lock();
        *slot = Slot::Gone;
        // Errors cannot be reported from drop; `Eal::cleanup` reports them.
        let _ = ffi::eal_cleanup();
    }
}
