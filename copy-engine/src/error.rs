//! Error types. Data-path errors are small `Copy` enums; control-path errors are `thiserror` enums.

use crate::ticket::Ticket;

/// Why an op was not accepted by `enqueue`. Nothing was enqueued and no ticket was consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EnqueueError {
    /// The descriptor ring has no free slot; reap completions (or fall back) and try again.
    #[error("descriptor ring full")]
    RingFull,
    /// The op is longer than the engine's maximum op length.
    #[error("copy of {len} bytes exceeds the engine maximum of {max}")]
    TooLong {
        /// Requested length.
        len: usize,
        /// The engine's maximum.
        max: usize,
    },
    /// Source and destination overlap; engines copy only between disjoint buffers.
    #[error("source and destination overlap")]
    Overlap,
    /// A null pointer or an address range that wraps around the address space.
    #[error("invalid address range")]
    BadAddress,
    /// The op asks for something the engine cannot do (e.g. a fence on an engine without one).
    #[error("operation not supported by this engine")]
    Unsupported,
    /// The channel is stopped or its device has failed.
    #[error("channel not running")]
    NotRunning,
}

/// Why a burst ([`CopyEngine::enqueue_burst`](crate::CopyEngine::enqueue_burst),
/// [`Channel::enqueue_burst`](crate::Channel::enqueue_burst)) was not accepted whole: the first
/// `accepted` ops were, with consecutive tickets; the next one was refused for `error`, and it and
/// the ops after it were not enqueued (they consumed no ticket).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("op {accepted} of a burst refused: {error}")]
pub struct BurstError {
    /// Ops accepted before the refused one.
    pub accepted: usize,
    /// Why the op at index `accepted` was refused.
    pub error: EnqueueError,
}

/// Why one op failed on the engine, reported with its ticket at completion time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum OpStatus {
    /// The engine could not read the source (page fault, IOMMU fault, bad IOVA).
    #[error("source read failed")]
    SourceError,
    /// The engine could not write the destination.
    #[error("destination write failed")]
    DestinationError,
    /// The op was not started because the device aborted or was stopped.
    #[error("op not attempted")]
    NotAttempted,
    /// A data or bus error during the transfer.
    #[error("data error")]
    DataError,
    /// A backend status with no closer match (the raw code is kept).
    #[error("engine error status {0}")]
    Other(u32),
}

/// One op that completed with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailedOp {
    /// The op's ticket.
    pub ticket: Ticket,
    /// What went wrong.
    pub status: OpStatus,
}

impl FailedOp {
    /// A placeholder used to initialise caller-supplied output buffers.
    pub const EMPTY: FailedOp = FailedOp { ticket: Ticket::ZERO, status: OpStatus::Other(0) };
}

/// Control-plane errors: opening, configuring, starting, stopping, mapping memory.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The named device does not exist; `available` lists the ones that do.
    #[error("no copy device named {name:?}; available: {available:?}")]
    NoSuchDevice {
        /// The name asked for.
        name: String,
        /// Names of the devices that exist.
        available: Vec<String>,
    },
    /// The device cannot do what this crate needs (e.g. no memory-to-memory copy).
    #[error("device {name:?} unsupported: {reason}")]
    Unsupported {
        /// The device.
        name: String,
        /// What it lacks.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The backend (a driver, a library) reported an error.
    #[error("{context}: {message} (code {code})")]
    Backend {
        /// What was being done.
        context: &'static str,
        /// The backend's own message.
        message: String,
        /// The backend's error code.
        code: i32,
    },
    /// Spawning or pinning a worker thread failed.
    #[error("worker thread: {0}")]
    Thread(#[from] std::io::Error),
}
