//! CPU copy engines for [`copy_engine`].
//!
//! - [`MemcpyEngine`]: copies synchronously at enqueue; the baseline and the fallback.
//! - [`WorkerEngine`]: a second thread copies from an SPSC descriptor ring and publishes its
//!   completion index with release/acquire ordering: a real asynchronous engine on any machine.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod memcpy;

pub use memcpy::MemcpyEngine;
