//! copy-engine: asynchronous copy offload for poll-mode datapaths.
//!
//! A poll-mode (PMD) thread hands packet copies to a copy engine (a DPDK dmadev such as Intel DSA
//! or CBDMA/IOAT, a worker thread, or plain `memcpy`) and never waits for them: it enqueues, rings
//! the doorbell, does other work, and later polls for completions. This crate is the contract and
//! the machinery on top of it; it knows no backend and no virtio.
//!
//! - [`CopyEngine`]: the data-path trait every backend implements (dmadev semantics: a ring of
//!   descriptors, [`Ticket`]s, in-order completion, failed tickets with a status), one op at a
//!   time or a burst of [`CopyOp`]s (`enqueue_burst`; a backend that overrides it, as the memcpy
//!   engine does, checks its ring and counts once per burst).
//! - [`EngineControl`]: the `async` control plane (start, stop, map memory).
//! - [`Channel`]: an engine plus [`Policy`]: CPU copies below a threshold, CPU fallback or push-back
//!   on a full ring, CPU retry or report of failed ops, with completion order preserved across
//!   all of them, and [`PolicyStats`].
//! - [`CopyFuture`], [`poll_inline`], [`DeferQueue`]: non-waking futures a PMD loop polls inline.
//! - [`AsyncCopy`] and [`Channel::driver`]: the executor adapter, for ordinary runtimes.
//! - [`fault::FaultEngine`]: a wrapper that injects errors, ring-full and completion delay.
//! - `conformance` (feature `testing`): the suite every backend runs against itself.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod channel;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod defer;
pub mod engine;
pub mod error;
pub mod fault;
pub mod flags;
pub mod future;
pub mod policy;
pub mod stats;
pub mod ticket;
pub mod waker;

pub use channel::Channel;
pub use defer::{DeferQueue, PushError};
pub use engine::{check_copy, CopyEngine, CopyOp, EngineControl, EngineInfo, Reaped};
pub use error::{BurstError, ControlError, EnqueueError, FailedOp, OpStatus};
pub use flags::{Capabilities, OpFlags};
pub use future::{poll_inline, CopyFuture, CopyOutcome, Failures};
pub use policy::{Adaptive, OnError, OnRingFull, Policy};
pub use stats::{EngineStats, PolicyStats};
pub use ticket::{Ticket, TicketRange};
pub use waker::{AsyncCopy, Driver};
