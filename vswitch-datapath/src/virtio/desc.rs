//! The split virtqueue descriptor (virtio 1.2 spec, section 2.7.5 "The Virtqueue Descriptor
//! Table"), read through a checked view.
//!
//! This module owns the 16-byte wire format ([`RawDescriptor`], what the guest wrote, any values)
//! and [`Descriptor`], a copy that passed every check that depends only on the descriptor and
//! where it sits: validate once with [`Descriptor::new_checked`], then the accessors are free. It
//! must not read guest memory: the caller copies the 16 bytes out first (so the guest cannot change
//! them between check and use) and walks chains ([`super::split`]).

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

use super::error::VirtqError;
use super::MAX_QUEUE_SIZE;

/// Size of one descriptor in bytes (section 2.7.5).
pub const DESC_SIZE: usize = 16;

bitflags::bitflags! {
    /// Descriptor flags (section 2.7.5). Unknown bits are ignored.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DescFlags: u16 {
        /// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
        const NEXT = VRING_DESC_F_NEXT as u16;
        /// `VIRTQ_DESC_F_WRITE`: the buffer is device-writable (otherwise device-readable).
        const WRITE = VRING_DESC_F_WRITE as u16;
        /// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors (section 2.7.5.3).
        const INDIRECT = VRING_DESC_F_INDIRECT as u16;
    }
}

/// A descriptor as the guest wrote it: `le64 addr; le32 len; le16 flags; le16 next;`. Any values;
/// nothing is checked. The test guest uses it to write hostile descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDescriptor {
    /// Guest-physical address of the buffer (or of the indirect table).
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` bits.
    pub flags: u16,
    /// Index of the next descriptor when `flags` has `NEXT`.
    pub next: u16,
}

impl RawDescriptor {
    /// Decodes the little-endian wire format.
    #[inline]
    pub fn from_le_bytes(b: [u8; DESC_SIZE]) -> Self {
        RawDescriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Decodes the wire format read as two little-endian 64-bit words (already converted to
    /// native order): `addr`, then `len | flags << 32 | next << 48`.
    #[inline]
    pub fn from_le_words(w: [u64; 2]) -> Self {
        RawDescriptor { addr: w[0], len: w[1] as u32, flags: (w[1] >> 32) as u16, next: (w[1] >> 48) as u16 }
    }

    /// Encodes the little-endian wire format.
    #[inline]
    pub fn to_le_bytes(self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Where a descriptor was found: what its checks depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescContext {
    /// Entries in the table holding it (queue size, or an indirect table's count): `next` must be
    /// below this.
    pub table_len: u32,
    /// Whether it sits in an indirect table (another indirect descriptor is then forbidden).
    pub in_indirect: bool,
    /// Whether `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub indirect_negotiated: bool,
}

/// A descriptor that passed [`new_checked`](Self::new_checked): non-zero length, `addr + len`
/// does not overflow, `next` (if any) inside its table, and an indirect descriptor that is allowed
/// here, has no `NEXT`, and describes a table of 1 ..= [`MAX_QUEUE_SIZE`] descriptors.
///
/// Whether the buffer is in guest memory is checked when it is translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    addr: u64,
    len: u32,
    flags: DescFlags,
    next: u16,
}

impl Descriptor {
    /// Checks `raw`, found at `index` of a table described by `ctx` (sections 2.7.5.2 and
    /// 2.7.5.3.1).
    #[inline]
    pub fn new_checked(raw: RawDescriptor, index: u16, ctx: DescContext) -> Result<Self, VirtqError> {
        let flags = DescFlags::from_bits_truncate(raw.flags);
        if flags.contains(DescFlags::INDIRECT) {
            if ctx.in_indirect {
                return Err(VirtqError::NestedIndirect);
            }
            if !ctx.indirect_negotiated {
                return Err(VirtqError::IndirectNotNegotiated);
            }
            if flags.contains(DescFlags::NEXT) {
                return Err(VirtqError::IndirectWithNext);
            }
            if raw.len == 0 || raw.len % DESC_SIZE as u32 != 0 || raw.len / DESC_SIZE as u32 > MAX_QUEUE_SIZE as u32 {
                return Err(VirtqError::BadIndirectLen { len: raw.len });
            }
        }
        if raw.len == 0 {
            return Err(VirtqError::ZeroLength { index });
        }
        if raw.addr.checked_add(raw.len as u64).is_none() {
            return Err(VirtqError::AddrOverflow { index });
        }
        if flags.contains(DescFlags::NEXT) && raw.next as u32 >= ctx.table_len {
            return Err(VirtqError::DescIndexOutOfRange { index: raw.next, size: ctx.table_len });
        }
        Ok(Descriptor { addr: raw.addr, len: raw.len, flags, next: raw.next })
    }

    /// Guest-physical address of the buffer (or indirect table).
    #[inline]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes (never zero).
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false (zero-length descriptors fail the check).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flags.
    #[inline]
    pub fn flags(&self) -> DescFlags {
        self.flags
    }

    /// Whether the buffer is device-writable.
    #[inline]
    pub fn is_write_only(&self) -> bool {
        self.flags.contains(DescFlags::WRITE)
    }

    /// The number of descriptors in the indirect table this descriptor points to, if it does.
    #[inline]
    pub fn indirect_count(&self) -> Option<u32> {
        self.flags.contains(DescFlags::INDIRECT).then_some(self.len / DESC_SIZE as u32)
    }

    /// The next descriptor's index, if the chain continues.
    #[inline]
    pub fn next(&self) -> Option<u16> {
        self.flags.contains(DescFlags::NEXT).then_some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: DescContext = DescContext { table_len: 8, in_indirect: false, indirect_negotiated: true };

    #[test]
    fn wire_format_round_trips_little_endian() {
        let raw = RawDescriptor { addr: 0x1122_3344_5566_7788, len: 0x99aa_bbcc, flags: 3, next: 0x0102 };
        let b = raw.to_le_bytes();
        assert_eq!(b[0], 0x88);
        assert_eq!(b[14], 0x02);
        assert_eq!(RawDescriptor::from_le_bytes(b), raw);
        let words = [u64::from_le_bytes(b[..8].try_into().unwrap()), u64::from_le_bytes(b[8..].try_into().unwrap())];
        assert_eq!(RawDescriptor::from_le_words(words), raw);
    }

    #[test]
    fn checks_reject_what_the_spec_forbids() {
        let ok = RawDescriptor { addr: 0x1000, len: 64, flags: DescFlags::NEXT.bits(), next: 7 };
        assert_eq!(Descriptor::new_checked(ok, 0, CTX).unwrap().next(), Some(7));
        let e = |r, ctx| Descriptor::new_checked(r, 0, ctx).unwrap_err();
        assert_eq!(e(RawDescriptor { next: 8, ..ok }, CTX), VirtqError::DescIndexOutOfRange { index: 8, size: 8 });
        assert_eq!(e(RawDescriptor { len: 0, ..ok }, CTX), VirtqError::ZeroLength { index: 0 });
        assert_eq!(e(RawDescriptor { addr: u64::MAX - 10, ..ok }, CTX), VirtqError::AddrOverflow { index: 0 });
        let ind = RawDescriptor { addr: 0x1000, len: 32, flags: DescFlags::INDIRECT.bits(), next: 0 };
        assert_eq!(Descriptor::new_checked(ind, 0, CTX).unwrap().indirect_count(), Some(2));
        assert_eq!(e(ind, DescContext { in_indirect: true, ..CTX }), VirtqError::NestedIndirect);
        assert_eq!(e(ind, DescContext { indirect_negotiated: false, ..CTX }), VirtqError::IndirectNotNegotiated);
        assert_eq!(
            e(RawDescriptor { flags: (DescFlags::INDIRECT | DescFlags::NEXT).bits(), ..ind }, CTX),
            VirtqError::IndirectWithNext
        );
        for len in [0, 17, (MAX_QUEUE_SIZE as u32 + 1) * 16] {
            assert_eq!(e(RawDescriptor { len, ..ind }, CTX), VirtqError::BadIndirectLen { len });
        }
    }
}
