//! The virtio-net header (virtio 1.2 spec, section 5.1.6 "Device Operation", `struct
//! virtio_net_hdr`), read through a checked view and written in place.
//!
//! This module owns the header's layout ([`NetHdr`], a view over caller bytes, smoltcp style:
//! `new_checked` validates the length once, then accessors are free), its parsed form
//! ([`NetHdrRepr`]) and how long it is for a feature set ([`net_hdr_len`]). It must not read guest
//! memory: the datapath gathers the header bytes out of a chain first
//! ([`crate::mem::GuestMemory::gather`]), since a header may span descriptors.

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_NEEDS_CSUM};

/// Length of the header with `num_buffers` (VERSION_1 or MRG_RXBUF negotiated).
pub const NET_HDR_LEN: usize = 12;
/// Length of the legacy header without `num_buffers`.
pub const NET_HDR_LEN_LEGACY: usize = 10;

/// Header length for the negotiated features (section 5.1.6: `num_buffers` is present with
/// `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF`).
#[inline]
pub fn net_hdr_len(features: u64) -> usize {
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        NET_HDR_LEN
    } else {
        NET_HDR_LEN_LEGACY
    }
}

/// The buffer is shorter than the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("virtio-net header needs {need} bytes, buffer has {have}")]
pub struct NetHdrTruncated {
    /// Bytes needed.
    pub need: usize,
    /// Bytes given.
    pub have: usize,
}

/// The header's parsed fields (little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdrRepr {
    /// `VIRTIO_NET_HDR_F_*` flags.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to copy for each GSO segment.
    pub hdr_len: u16,
    /// GSO segment size.
    pub gso_size: u16,
    /// Where checksumming starts (with `NEEDS_CSUM`).
    pub csum_start: u16,
    /// Where to store the checksum, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers (chains) the packet spans, mergeable RX; 0 in the legacy header.
    pub num_buffers: u16,
}

impl NetHdrRepr {
    /// Whether the packet needs its checksum completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0
    }

    /// Writes the header into `buf`'s first `len` bytes (`len` from [`net_hdr_len`]).
    pub fn emit(&self, buf: &mut [u8], len: usize) -> Result<(), NetHdrTruncated> {
        let mut h = NetHdr::new_checked(buf, len)?;
        h.set_flags(self.flags);
        h.set_gso_type(self.gso_type);
        h.set_hdr_len(self.hdr_len);
        h.set_gso_size(self.gso_size);
        h.set_csum_start(self.csum_start);
        h.set_csum_offset(self.csum_offset);
        h.set_num_buffers(self.num_buffers);
        Ok(())
    }
}

/// A virtio-net header over the bytes `T`, `len` (10 or 12) bytes long.
#[derive(Clone, Copy, Debug)]
pub struct NetHdr<T> {
    buf: T,
    len: usize,
}

mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
    pub const NUM_BUFFERS: usize = 10;
}

impl<T: AsRef<[u8]>> NetHdr<T> {
    /// Checks that `buf` holds a header of `len` bytes ([`NET_HDR_LEN`] or
    /// [`NET_HDR_LEN_LEGACY`]; other values are treated as the nearer of the two).
    #[inline]
    pub fn new_checked(buf: T, len: usize) -> Result<Self, NetHdrTruncated> {
        let len = if len >= NET_HDR_LEN { NET_HDR_LEN } else { NET_HDR_LEN_LEGACY };
        let have = buf.as_ref().len();
        if have < len {
            return Err(NetHdrTruncated { need: len, have });
        }
        Ok(NetHdr { buf, len })
    }

    /// Header length (10 or 12).
    #[inline]
    pub fn header_len(&self) -> usize {
        self.len
    }

    #[inline]
    fn u16_at(&self, at: usize) -> u16 {
        let b = self.buf.as_ref();
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    /// `flags`.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[field::FLAGS]
    }

    /// Whether `flags` asks for the checksum to be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags() & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0
    }

    /// `gso_type`.
    #[inline]
    pub fn gso_type(&self) -> u8 {
        self.buf.as_ref()[field::GSO_TYPE]
    }

    /// `hdr_len`.
    #[inline]
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }

    /// `gso_size`.
    #[inline]
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }

    /// `csum_start`.
    #[inline]
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }

    /// `csum_offset`.
    #[inline]
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }

    /// `num_buffers` (0 for the legacy header, which has none).
    #[inline]
    pub fn num_buffers(&self) -> u16 {
        if self.len == NET_HDR_LEN {
            self.u16_at(field::NUM_BUFFERS)
        } else {
            0
        }
    }

    /// All fields.
    #[inline]
    pub fn repr(&self) -> NetHdrRepr {
        NetHdrRepr {
            flags: self.flags(),
            gso_type: self.gso_type(),
            hdr_len: self.hdr_len(),
            gso_size: self.gso_size(),
            csum_start: self.csum_start(),
            csum_offset: self.csum_offset(),
            num_buffers: self.num_buffers(),
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NetHdr<T> {
    #[inline]
    fn set_u16_at(&mut self, at: usize, v: u16) {
        self.buf.as_mut()[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets `flags`.
    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.buf.as_mut()[field::FLAGS] = v;
    }

    /// Sets `gso_type`.
    #[inline]
    pub fn set_gso_type(&mut self, v: u8) {
        self.buf.as_mut()[field::GSO_TYPE] = v;
    }

    /// Sets `hdr_len`.
    #[inline]
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_u16_at(field::HDR_LEN, v);
    }

    /// Sets `gso_size`.
    #[inline]
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_u16_at(field::GSO_SIZE, v);
    }

    /// Sets `csum_start`.
    #[inline]
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_START, v);
    }

    /// Sets `csum_offset`.
    #[inline]
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_OFFSET, v);
    }

    /// Sets `num_buffers` (ignored for the legacy header).
    #[inline]
    pub fn set_num_buffers(&mut self, v: u16) {
        if self.len == NET_HDR_LEN {
            self.set_u16_at(field::NUM_BUFFERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(net_hdr_len(0), 10);
        assert_eq!(net_hdr_len(1 << VIRTIO_F_VERSION_1), 12);
        assert_eq!(net_hdr_len(1 << VIRTIO_NET_F_MRG_RXBUF), 12);
    }

    #[test]
    fn header_round_trips_and_short_buffers_are_refused() {
        let repr = NetHdrRepr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut b = [0u8; 12];
        repr.emit(&mut b, 12).unwrap();
        assert_eq!(&b[2..4], &[0x02, 0x01]);
        let h = NetHdr::new_checked(&b[..], 12).unwrap();
        assert_eq!(h.repr(), repr);
        assert!(h.repr().needs_csum());
        let legacy = NetHdr::new_checked(&b[..10], 10).unwrap();
        assert_eq!(legacy.num_buffers(), 0);
        assert_eq!(NetHdr::new_checked(&b[..11], 12).unwrap_err(), NetHdrTruncated { need: 12, have: 11 });
        let mut short = [0u8; 9];
        assert!(repr.emit(&mut short, 10).is_err());
    }
}
