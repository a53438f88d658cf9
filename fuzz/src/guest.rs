//! [`FuzzGuest`]: guest memory for the ring targets, seen the way a guest sees it: raw bytes
//! behind the device's back, with a shadow copy of what the guest wrote and what the device is
//! allowed to have written.
//!
//! The device side reads and writes the regions only through `vswitch_datapath`'s own code; the
//! harness writes them with plain stores (as a guest does) and compares the mappings with the
//! shadow after every device call, so a device write anywhere the model did not predict (outside
//! the used ring, or the wrong bytes inside it) is caught at the call that made it.

#![allow(unsafe_code)]

use std::sync::Arc;

use vswitch_datapath::{GuestMemory, GuestRegion};

/// One region of a [`FuzzGuest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: usize,
    /// Host address of the first byte (the device's mapping).
    pub host: usize,
}

impl Span {
    /// One past the last guest address.
    pub fn end(&self) -> u64 {
        self.gpa + self.len as u64
    }

    /// Whether host range `host .. host + len` lies inside this region's mapping.
    pub fn holds_host(&self, host: usize, len: usize) -> bool {
        host >= self.host && host.checked_add(len).is_some_and(|e| e <= self.host + self.len)
    }
}

/// Guarded anonymous regions, their shadow, and raw guest-side access.
#[derive(Debug)]
pub struct FuzzGuest {
    mem: Arc<GuestMemory>,
    spans: Vec<Span>,
    shadow: Vec<Vec<u8>>,
}

impl FuzzGuest {
    /// Regions `(gpa, len)`, sorted by `gpa`, each a zeroed anonymous mapping with guard pages
    /// (an access just outside a region faults: libFuzzer reports it as a crash).
    pub fn new(regions: &[(u64, usize)]) -> Self {
        let rs = regions
            .iter()
            .map(|&(gpa, len)| GuestRegion::anonymous_guarded(gpa, len).expect("map fuzz guest region"))
            .collect();
        Self::from_memory(Arc::new(GuestMemory::new(rs).expect("fuzz guest layout")))
    }

    /// Over guest memory built elsewhere, whose regions are all zero now.
    pub fn from_memory(mem: Arc<GuestMemory>) -> Self {
        let spans: Vec<Span> =
            mem.regions().iter().map(|r| Span { gpa: r.guest_addr(), len: r.len(), host: r.host_addr() }).collect();
        let shadow = spans.iter().map(|s| vec![0; s.len]).collect();
        FuzzGuest { mem, spans, shadow }
    }

    /// The device's view.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// The regions, sorted by guest address.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Zeroes every region and the shadow (a fresh guest for the next input).
    pub fn reset(&mut self) {
        for (s, sh) in self.spans.iter().zip(&mut self.shadow) {
            // SAFETY: `s.host .. s.host + s.len` is the live, writable mapping of a region of
            // `self.mem`, which `self` keeps alive; no queue or reference into it exists while the
            // harness resets it (queues are dropped at the end of each input).
            unsafe { std::ptr::write_bytes(s.host as *mut u8, 0, s.len) };
            sh.fill(0);
        }
    }

    /// Region index and offset of `gpa`.
    pub fn locate(&self, gpa: u64) -> Option<(usize, usize)> {
        self.spans.iter().position(|s| gpa >= s.gpa && gpa < s.end()).map(|i| (i, (gpa - self.spans[i].gpa) as usize))
    }

    /// The guest stores `bytes` at `gpa`: every byte that falls in a region is written (to the
    /// mapping and the shadow), the rest is dropped, as a store to unbacked guest memory would be.
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as u128;
        let end = start + bytes.len() as u128;
        for (s, sh) in self.spans.iter().zip(&mut self.shadow) {
            let (lo, hi) = (start.max(s.gpa as u128), end.min(s.end() as u128));
            if lo >= hi {
                continue;
            }
            let (off, n) = ((lo - s.gpa as u128) as usize, (hi - lo) as usize);
            let src = &bytes[(lo - start) as usize..][..n];
            sh[off..off + n].copy_from_slice(src);
            // SAFETY: `off + n <= s.len` (the overlap computed above), inside the live writable
            // mapping of this region; `src` is a harness buffer, not guest memory.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), (s.host + off) as *mut u8, n) };
        }
    }

    /// Stores a little-endian `u16`.
    pub fn write_u16(&mut self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Records in the shadow a write the device is expected to make (the used ring). Panics if
    /// any byte of it is outside guest memory: the model never predicts such a write.
    pub fn expect_device_write(&mut self, gpa: u64, bytes: &[u8]) {
        for (k, b) in bytes.iter().enumerate() {
            let (i, off) = self.locate(gpa + k as u64).expect("predicted device write outside guest memory");
            self.shadow[i][off] = *b;
        }
    }

    /// The region and offset of the host range `host .. host + len`, if one region holds it.
    pub fn locate_host(&self, host: usize, len: usize) -> Option<(usize, usize)> {
        self.spans.iter().position(|s| s.holds_host(host, len)).map(|i| (i, host - self.spans[i].host))
    }

    /// The shadow's bytes of a host range inside region `i` at offset `off`.
    pub fn shadow_at(&self, i: usize, off: usize, n: usize) -> &[u8] {
        &self.shadow[i][off..off + n]
    }

    /// Records in the shadow an expected device write into region `i` at offset `off`.
    pub fn expect_write_at(&mut self, i: usize, off: usize, bytes: &[u8]) {
        self.shadow[i][off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// `n` bytes at `gpa` as the shadow holds them, or the first guest address that is in no
    /// region.
    pub fn read(&self, gpa: u64, n: usize) -> Result<Vec<u8>, u64> {
        let mut v = Vec::with_capacity(n);
        for k in 0..n as u64 {
            let a = gpa.checked_add(k).ok_or(u64::MAX)?;
            let (i, off) = self.locate(a).ok_or(a)?;
            v.push(self.shadow[i][off]);
        }
        Ok(v)
    }

    /// A little-endian `u16` from the shadow (0 where unmapped).
    pub fn read_u16(&self, gpa: u64) -> u16 {
        let b = self.read(gpa, 2).unwrap_or_else(|_| vec![0, 0]);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Panics unless every region holds exactly what the shadow holds, naming the first
    /// difference and `what` (the call that made it).
    pub fn assert_unchanged(&self, what: &dyn std::fmt::Display) {
        for (s, sh) in self.spans.iter().zip(&self.shadow) {
            // SAFETY: the live mapping of this region, read while no other thread runs on it (the
            // queues are driven from this thread only); the slice does not outlive this statement's
            // comparison.
            let live = unsafe { std::slice::from_raw_parts(s.host as *const u8, s.len) };
            if live != &sh[..] {
                let off = live.iter().zip(sh).position(|(a, b)| a != b).unwrap_or(0);
                panic!(
                    "{what}: guest memory at gpa {:#x} is {:#04x}, expected {:#04x} (a write the guest did not \
                     make and the model did not predict)",
                    s.gpa + off as u64,
                    live[off],
                    sh[off]
                );
            }
        }
    }

    /// The guest-physical pieces of `gpa .. gpa + len` as host segments `(host, len)`, one per
    /// region touched, or the first unmapped guest address.
    pub fn host_segments(&self, gpa: u64, len: u32) -> Result<Vec<(usize, u32)>, u64> {
        let mut out = Vec::new();
        let (mut cur, mut left) = (gpa, len as u64);
        while left > 0 {
            let (i, off) = self.locate(cur).ok_or(cur)?;
            let s = self.spans[i];
            let take = left.min((s.len - off) as u64);
            out.push((s.host + off, take as u32));
            cur += take;
            left -= take;
        }
        Ok(out)
    }
}
