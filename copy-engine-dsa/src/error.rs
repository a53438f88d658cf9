//! Control-plane errors of the DSA backend.

use std::path::PathBuf;

/// Why a DSA work queue could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum DsaError {
    /// The CPU lacks an instruction the WQ's mode needs.
    #[error("this CPU has no {0} instruction (CPUID leaf 7): DSA {1} work queues need it")]
    NoCpuSupport(&'static str, &'static str),
    /// No WQ of that name exists (or no DSA driver is loaded); `available` lists the usable ones.
    #[error("no DSA work queue {name:?} (is the idxd driver loaded and the WQ configured?); usable: {available:?}")]
    NoSuchWq {
        /// The name asked for.
        name: String,
        /// Usable WQs found.
        available: Vec<String>,
    },
    /// The WQ exists but cannot be used from user space.
    #[error("DSA work queue {name}: {reason}")]
    WqNotUsable {
        /// The WQ.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Reading a sysfs attribute or opening/mapping the WQ's device failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A sysfs attribute did not hold what it should.
    #[error("{}: unexpected value {value:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held.
        value: String,
    },
    /// A configuration value is out of range.
    #[error("invalid DSA configuration: {0}")]
    InvalidConfig(String),
    /// The device model's thread could not be started.
    #[error("device model thread: {0}")]
    Thread(std::io::Error),
}

impl From<DsaError> for copy_engine::ControlError {
    fn from(e: DsaError) -> Self {
        match e {
            DsaError::NoSuchWq { name, available } => copy_engine::ControlError::NoSuchDevice { name, available },
            DsaError::InvalidConfig(s) => copy_engine::ControlError::InvalidConfig(s),
            DsaError::Thread(e) => copy_engine::ControlError::Thread(e),
            other => copy_engine::ControlError::Unsupported { name: "dsa".into(), reason: other.to_string() },
        }
    }
}
