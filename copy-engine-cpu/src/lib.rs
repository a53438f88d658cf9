//! CPU copy engines for [`copy_engine`].
//!
//! - [`MemcpyEngine`]: copies synchronously at enqueue; the baseline and the fallback.
//! - [`WorkerEngine`]: a second thread copies from an SPSC descriptor ring and publishes its
//!   completion index with release/acquire ordering: a real asynchronous engine on any machine.
//!
//! `unsafe` code lives in the copies themselves, in the descriptor ring (`ring`, which owns the
//! slots and the ordering of their indices) and in CPU pinning (`affinity`, one system call).

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod affinity;
pub mod memcpy;
mod ring;
pub mod worker;

pub use memcpy::MemcpyEngine;
pub use worker::{IdleStrategy, WorkerConfig, WorkerEngine};

mod control {
    //! The control plane of the CPU engines: always running, SVA, nothing to map.

    use copy_engine::{ControlError, EngineControl};

    macro_rules! always_ready {
        ($($t:ty),*) => {$(
            #[async_trait::async_trait]
            impl EngineControl for $t {
                async fn start(&mut self) -> Result<(), ControlError> {
                    Ok(())
                }

                async fn stop(&mut self) -> Result<(), ControlError> {
                    // Drain: nothing the engine does touches memory after this returns.
                    let mut none = [];
                    copy_engine::CopyEngine::submit(self);
                    while copy_engine::CopyEngine::in_flight(self) != 0 {
                        copy_engine::CopyEngine::reap(self, usize::MAX, &mut none);
                    }
                    Ok(())
                }

                async fn map_memory(&mut self, _addr: usize, _len: usize) -> Result<(), ControlError> {
                    Ok(())
                }

                async fn unmap_memory(&mut self, _addr: usize, _len: usize) -> Result<(), ControlError> {
                    Ok(())
                }
            }
        )*};
    }

    always_ready!(crate::MemcpyEngine, crate::WorkerEngine);
}
