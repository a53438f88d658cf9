//! DSA work descriptors and completion records, as the device reads and writes them.
//!
//! This module owns the byte layouts (Intel DSA Architecture Specification, §8 "Descriptor
//! formats" and §8.2 "Completion record"; Linux `include/uapi/linux/idxd.h`, `struct dsa_hw_desc`
//! and `struct dsa_completion_record`) and the constants used here. It is plain safe code: it
//! never touches a portal or memory the device owns; [`crate::portal`] and [`crate::model`] do.
//!
//! Only what this crate uses is named: the NOOP, BATCH and MEMMOVE opcodes, the flags of a copy,
//! and the completion status codes the engine distinguishes.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Opcodes (descriptor dword 1, bits 24..31).
pub mod opcode {
    /// No operation: completes at once (used for zero-length copies).
    pub const NOOP: u8 = 0;
    /// Batch: `src` is the address of a list of `desc_count` descriptors.
    pub const BATCH: u8 = 1;
    /// Memory move (copy `xfer_size` bytes from `src` to `dst`).
    pub const MEMMOVE: u8 = 3;
}

/// Descriptor flags (descriptor dword 1, bits 0..23).
pub mod flags {
    /// Start only after every earlier descriptor of the same batch has completed.
    pub const FENCE: u32 = 0x0001;
    /// Block on fault: the device waits for the kernel to resolve a page fault instead of
    /// stopping with a partial completion (the WQ must have `block_on_fault` enabled).
    pub const BOF: u32 = 0x0002;
    /// The completion record address is valid.
    pub const CRAV: u32 = 0x0004;
    /// Request a completion record (also on success).
    pub const RCR: u32 = 0x0008;
    /// Cache control: write the destination into the cache (allocating), not to memory.
    pub const CC: u32 = 0x0100;
}

/// Completion status codes (completion record byte 0, bits 0..6).
pub mod status {
    /// Not written yet.
    pub const NONE: u8 = 0;
    /// Success.
    pub const SUCCESS: u8 = 1;
    /// Page fault with block-on-fault clear: `bytes_completed` bytes were done, `fault_addr` says
    /// where it stopped.
    pub const PAGE_FAULT_NOBOF: u8 = 3;
    /// Page fault with an interrupt request (not used here).
    pub const PAGE_FAULT_IR: u8 = 4;
    /// A batch in which at least one descriptor failed.
    pub const BATCH_FAIL: u8 = 5;
    /// A page fault while reading a batch's descriptor list: its descriptors were not run.
    pub const BATCH_PAGE_FAULT: u8 = 6;
    /// Unsupported opcode.
    pub const BAD_OPCODE: u8 = 0x10;
    /// Invalid flags.
    pub const INVALID_FLAGS: u8 = 0x11;
    /// Transfer size out of range.
    pub const XFER_ERANGE: u8 = 0x13;
    /// Batch descriptor count out of range.
    pub const DESC_CNT_ERANGE: u8 = 0x14;
    /// Overlapping buffers.
    pub const OVERLAP_BUFFERS: u8 = 0x16;
    /// Completion record address misaligned.
    pub const CRA_ALIGN: u8 = 0x1b;
    /// Address misaligned.
    pub const ADDR_ALIGN: u8 = 0x1c;
    /// An internal hardware error.
    pub const HW_ERR1: u8 = 0x20;
    /// Address translation failed.
    pub const TRANSLATION_FAIL: u8 = 0x22;
    /// Bits 0..6 of the status byte hold the code.
    pub const MASK: u8 = 0x7f;
}

/// One 64-byte DSA work descriptor (`struct dsa_hw_desc`), 64-byte aligned as MOVDIR64B, ENQCMD
/// and batch descriptor lists require.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwDesc {
    /// Bits 0..19 PASID, bit 31 privileged. Zero for user work queues: the kernel supplies the
    /// PASID (dedicated WQ: programmed into the WQ; shared WQ: from the IA32_PASID MSR by ENQCMD).
    pub pasid_priv: u32,
    /// Bits 0..23 flags, bits 24..31 opcode.
    pub flags_opcode: u32,
    /// Completion record address (32-byte aligned).
    pub completion_addr: u64,
    /// Source address, or for a batch the descriptor list address (64-byte aligned).
    pub src: u64,
    /// Destination address.
    pub dst: u64,
    /// Transfer size in bytes, or for a batch the descriptor count.
    pub xfer_size: u32,
    /// Interrupt handle (unused: completions are polled).
    pub int_handle: u16,
    /// Reserved, zero.
    pub rsvd: u16,
    /// Operation-specific fields (unused by NOOP, BATCH and MEMMOVE), zero.
    pub op_specific: [u64; 3],
}

const _: () = assert!(core::mem::size_of::<HwDesc>() == 64);
const _: () = assert!(core::mem::align_of::<HwDesc>() == 64);
const _: () = assert!(core::mem::offset_of!(HwDesc, completion_addr) == 8);
const _: () = assert!(core::mem::offset_of!(HwDesc, xfer_size) == 32);

impl HwDesc {
    /// The flags and opcode dword.
    #[inline]
    pub const fn pack(opcode: u8, flags: u32) -> u32 {
        ((opcode as u32) << 24) | (flags & 0x00ff_ffff)
    }

    /// A memmove of `len` bytes reporting to the record at `comp`.
    #[inline]
    pub fn memmove(src: u64, dst: u64, len: u32, comp: u64, flags: u32) -> Self {
        HwDesc {
            flags_opcode: Self::pack(opcode::MEMMOVE, flags),
            completion_addr: comp,
            src,
            dst,
            xfer_size: len,
            ..HwDesc::default()
        }
    }

    /// A no-op reporting to the record at `comp`.
    #[inline]
    pub fn noop(comp: u64, flags: u32) -> Self {
        HwDesc { flags_opcode: Self::pack(opcode::NOOP, flags), completion_addr: comp, ..HwDesc::default() }
    }

    /// A batch of the `count` descriptors at `list` reporting to the record at `comp`.
    #[inline]
    pub fn batch(list: u64, count: u32, comp: u64, flags: u32) -> Self {
        HwDesc {
            flags_opcode: Self::pack(opcode::BATCH, flags),
            completion_addr: comp,
            src: list,
            xfer_size: count,
            ..HwDesc::default()
        }
    }

    /// The opcode.
    #[inline]
    pub const fn opcode(&self) -> u8 {
        (self.flags_opcode >> 24) as u8
    }

    /// The flags.
    #[inline]
    pub const fn flags(&self) -> u32 {
        self.flags_opcode & 0x00ff_ffff
    }
}

/// A descriptor in memory the device reads (a batch's descriptor list): 64 bytes, 64-byte
/// aligned, held as eight atomic words so the engine may write one slot while the device (or the
/// model) reads another without `unsafe`. Relaxed word stores are plain stores on x86; the portal
/// write that follows orders them before the device's reads.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct DescSlot([AtomicU64; 8]);

const _: () = assert!(core::mem::size_of::<DescSlot>() == 64);

impl DescSlot {
    /// Stores `d` (little-endian words, the device's layout).
    #[inline]
    pub fn store(&self, d: &HwDesc) {
        let w = [
            d.pasid_priv as u64 | (d.flags_opcode as u64) << 32,
            d.completion_addr,
            d.src,
            d.dst,
            d.xfer_size as u64 | (d.int_handle as u64) << 32 | (d.rsvd as u64) << 48,
            d.op_specific[0],
            d.op_specific[1],
            d.op_specific[2],
        ];
        for (slot, v) in self.0.iter().zip(w) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Loads the descriptor.
    #[inline]
    pub fn load(&self) -> HwDesc {
        let w: [u64; 8] = core::array::from_fn(|i| self.0[i].load(Ordering::Relaxed));
        HwDesc {
            pasid_priv: w[0] as u32,
            flags_opcode: (w[0] >> 32) as u32,
            completion_addr: w[1],
            src: w[2],
            dst: w[3],
            xfer_size: w[4] as u32,
            int_handle: (w[4] >> 32) as u16,
            rsvd: (w[4] >> 48) as u16,
            op_specific: [w[5], w[6], w[7]],
        }
    }
}

/// One 32-byte completion record (`struct dsa_completion_record`), 32-byte aligned.
///
/// Every field is an atomic of the field's width, so the layout is the device's while the engine
/// (reader) and the device model (writer) may share it without `unsafe`. The device writes the
/// status byte last; readers load it with Acquire, writers of the model store it with Release.
#[repr(C, align(32))]
#[derive(Debug, Default)]
pub struct CompletionRecord {
    /// Bits 0..6 status code, bit 7 "write" (page fault on a write).
    pub status: AtomicU8,
    /// Operation result (unused by memmove).
    pub result: AtomicU8,
    /// Reserved.
    pub rsvd: AtomicU16,
    /// Bytes done before a page fault stopped the op.
    pub bytes_completed: AtomicU32,
    /// The faulting address.
    pub fault_addr: AtomicU64,
    /// Invalid flags (status INVALID_FLAGS) and reserved bits.
    pub invalid_flags: AtomicU32,
    /// Reserved.
    pub rsvd2: [AtomicU32; 3],
}

const _: () = assert!(core::mem::size_of::<CompletionRecord>() == 32);
const _: () = assert!(core::mem::align_of::<CompletionRecord>() == 32);
const _: () = assert!(core::mem::offset_of!(CompletionRecord, bytes_completed) == 4);
const _: () = assert!(core::mem::offset_of!(CompletionRecord, fault_addr) == 8);

impl CompletionRecord {
    /// The status code (Acquire: the other fields are valid once it is not [`status::NONE`]).
    #[inline]
    pub fn status(&self) -> u8 {
        self.status.load(Ordering::Acquire) & status::MASK
    }

    /// The raw status byte, write bit included (Acquire).
    #[inline]
    pub fn raw_status(&self) -> u8 {
        self.status.load(Ordering::Acquire)
    }

    /// Clears the record before its descriptor is (re)submitted.
    #[inline]
    pub fn clear(&self) {
        self.result.store(0, Ordering::Relaxed);
        self.bytes_completed.store(0, Ordering::Relaxed);
        self.fault_addr.store(0, Ordering::Relaxed);
        self.status.store(status::NONE, Ordering::Relaxed);
    }

    /// Writes the record the way the device does: the fields first, the status byte last (Release).
    #[inline]
    pub fn write(&self, code: u8, bytes_completed: u32, fault_addr: u64) {
        self.bytes_completed.store(bytes_completed, Ordering::Relaxed);
        self.fault_addr.store(fault_addr, Ordering::Relaxed);
        self.status.store(code, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memmove_descriptor_has_the_uapi_layout() {
        let d = HwDesc::memmove(0x1000, 0x2000, 300, 0x3000, flags::CRAV | flags::RCR);
        // The descriptor as 16 little-endian dwords, field by field.
        let words: Vec<u32> = {
            let bytes: [u8; 64] = unsafe_free_bytes(&d);
            bytes.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        assert_eq!(words[0], 0, "pasid/priv");
        assert_eq!(words[1], (3 << 24) | 0xc, "opcode in bits 24..31, flags below");
        assert_eq!((words[2], words[3]), (0x3000, 0), "completion address");
        assert_eq!((words[4], words[6]), (0x1000, 0x2000), "src, dst");
        assert_eq!(words[8], 300, "xfer size");
        assert_eq!(d.opcode(), opcode::MEMMOVE);
        assert_eq!(d.flags(), flags::CRAV | flags::RCR);
    }

    fn unsafe_free_bytes(d: &HwDesc) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[0..4].copy_from_slice(&d.pasid_priv.to_le_bytes());
        out[4..8].copy_from_slice(&d.flags_opcode.to_le_bytes());
        out[8..16].copy_from_slice(&d.completion_addr.to_le_bytes());
        out[16..24].copy_from_slice(&d.src.to_le_bytes());
        out[24..32].copy_from_slice(&d.dst.to_le_bytes());
        out[32..36].copy_from_slice(&d.xfer_size.to_le_bytes());
        out[36..38].copy_from_slice(&d.int_handle.to_le_bytes());
        out
    }

    #[test]
    fn descriptor_slot_round_trips_every_field() {
        let mut d = HwDesc::batch(0x4000, 16, 0x5000, flags::CRAV);
        d.pasid_priv = 0x8000_0123;
        d.int_handle = 7;
        d.op_specific = [1, 2, 3];
        let s = DescSlot::default();
        s.store(&d);
        assert_eq!(s.load(), d);
    }

    #[test]
    fn completion_record_status_is_masked_and_written_last() {
        let r = CompletionRecord::default();
        assert_eq!(r.status(), status::NONE);
        r.write(status::PAGE_FAULT_NOBOF | 0x80, 17, 0xdead);
        assert_eq!(r.status(), status::PAGE_FAULT_NOBOF, "write bit masked off");
        assert_eq!(r.bytes_completed.load(Ordering::Relaxed), 17);
        r.clear();
        assert_eq!(r.status(), status::NONE);
    }
}
