//! Capability and op flags, modelled on dmadev's `RTE_DMA_CAPA_*` and `RTE_DMA_OP_FLAG_*`.

use bitflags::bitflags;

bitflags! {
    /// What an engine can do. Backends map their device's capabilities onto these.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Capabilities: u32 {
        /// Memory-to-memory copy (every engine this crate accepts has it).
        const MEM_TO_MEM = 1 << 0;
        /// Fill (memset) ops.
        const FILL = 1 << 1;
        /// Shared virtual addressing: an IOVA is the process's virtual address, no mapping needed.
        const SVA = 1 << 2;
        /// Failed ops are reported per ticket with a status (dmadev `completed_status`).
        const ERROR_STATUS = 1 << 3;
        /// Honours [`OpFlags::FENCE`].
        const FENCE = 1 << 4;
        /// Completes every op synchronously at enqueue/submit (CPU engines).
        const SYNC = 1 << 5;
        /// Copies run on a device or thread other than the caller's: the caller's cycles are free.
        const OFFLOAD = 1 << 6;
    }
}

bitflags! {
    /// Per-op flags, passed to `enqueue`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct OpFlags: u32 {
        /// This op starts only after every earlier op of the channel has completed.
        const FENCE = 1 << 0;
        /// Ring the doorbell after this op (as if `submit` were called right after).
        const SUBMIT = 1 << 1;
        /// Hint: write the destination into the last-level cache (DSA/IOAT cache control).
        const LLC = 1 << 2;
    }
}
