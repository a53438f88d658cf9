//! Target `guest_memory`: [`GuestMemory`] built from fuzzed region layouts, and every
//! translation and access on it with fuzzed (also overflowing) guest ranges.
//!
//! # Input layout
//!
//! `regions: u8` (`% 9`, so 0..=8), then per region a guest address ([`region_gpa`]) and a length
//! (`1 + u16 % 0x3000`); then operations until the input ends (at most [`MAX_OPS`]), one byte each
//! (`% 10`) and its operands: `translate`, `read`, `write`, `read_array`, `load_u16_acquire`,
//! `store_u16_release`, `gather`, `scatter`, either of these two with a segment of another guest
//! memory mixed in, and a fresh region hint.
//!
//! # Invariants
//!
//! - A region whose `gpa + len` overflows is refused ([`MemoryConfigError::Overflow`]); a layout is
//!   refused exactly when it is empty or two regions overlap ([`MemoryConfigError::Overlap`]
//!   naming two regions that do overlap); an accepted one lists the regions sorted by address.
//! - `translate` succeeds exactly when the whole range is mapped (and does not overflow); its
//!   segments are each inside one region's mapping, non-empty, one per region touched, in order,
//!   and cover exactly the requested range; on error the output keeps exactly what it held.
//! - `read`/`write`/`read_array`/`load_u16_acquire`/`store_u16_release` succeed exactly when the
//!   model says (the same typed error otherwise), read what the guest memory holds, write only
//!   their range (a refused write writes nothing).
//! - `gather`/`scatter` read and write exactly the segments' bytes, refuse a segment of another
//!   memory ([`MemoryError::ForeignSegment`]) and short segment lists ([`MemoryError::Short`]),
//!   and a refused `scatter` writes nothing.

use std::sync::Arc;

use vswitch_datapath::{GuestMemory, GuestRegion, HostSeg, MemoryConfigError, MemoryError, RegionHint};

use crate::guest::FuzzGuest;
use crate::input::Input;

/// Most operations per input.
pub const MAX_OPS: usize = 64;

/// A region's guest address: modes 0-1 a page-aligned address below 1 MiB, 2 the previous
/// region's end moved by a signed byte (adjacent or overlapping), 3 a raw `u64`, 4 just below the
/// top of the address space, 5 an unaligned address below 64 KiB.
pub fn region_gpa(i: &mut Input<'_>, prev_end: u64) -> u64 {
    match i.u8() % 6 {
        0 | 1 => (i.u8() as u64) << 12,
        2 => prev_end.wrapping_add(i.u8() as i8 as i64 as u64),
        3 => i.u64(),
        4 => u64::MAX - i.u16() as u64,
        _ => i.u16() as u64,
    }
}

/// A guest address for an access: modes 0-2 a region's start moved by a signed `u16`, 3 just
/// below a region's end, 4 a raw `u64`.
fn access_gpa(i: &mut Input<'_>, g: &FuzzGuest) -> u64 {
    let spans = g.spans();
    let s = spans[i.below(spans.len())];
    match i.u8() % 5 {
        0..=2 => s.gpa.wrapping_add(i.u16() as i16 as i64 as u64),
        3 => s.end().wrapping_sub(i.u8() as u64),
        _ => i.u64(),
    }
}

/// An access length: modes 0-2 up to 16 KiB, 3 a raw `u32`.
fn access_len(i: &mut Input<'_>) -> u32 {
    match i.u8() % 4 {
        0..=2 => i.u16() as u32 % 0x4000,
        _ => i.u32(),
    }
}

/// `n` bytes at `gpa` as the model sees them: the bytes, or the error the memory must return.
fn model_read(g: &FuzzGuest, gpa: u64, n: usize) -> Result<Vec<u8>, MemoryError> {
    if gpa.checked_add(n as u64).is_none() {
        return Err(MemoryError::Overflow { addr: gpa, len: n as u64 });
    }
    g.read(gpa, n).map_err(|addr| MemoryError::Unmapped { addr })
}

/// Where a `u16` at `gpa` must be: inside one region, 2-aligned.
fn model_u16_place(g: &FuzzGuest, gpa: u64) -> Result<(), MemoryError> {
    if gpa.checked_add(2).is_none() {
        return Err(MemoryError::Overflow { addr: gpa, len: 2 });
    }
    let (r, off) = g.locate(gpa).ok_or(MemoryError::Unmapped { addr: gpa })?;
    let s = g.spans()[r];
    if off + 2 > s.len || !(s.host + off).is_multiple_of(2) {
        return Err(MemoryError::NotContiguous { addr: gpa });
    }
    Ok(())
}

/// A second guest memory per thread: its segments are foreign to the memory under test.
fn with_foreign<R>(f: impl FnOnce(&FuzzGuest) -> R) -> R {
    thread_local! {
        static OTHER: FuzzGuest = FuzzGuest::new(&[(0x1000, 0x1000)]);
    }
    OTHER.with(|g| f(g))
}

struct Harness {
    g: FuzzGuest,
    hint: RegionHint,
    out: Vec<HostSeg>,
    /// Segments from earlier translations (and `true` for one of the other memory).
    segs: Vec<(HostSeg, bool)>,
    step: usize,
}

impl Harness {
    fn translate(&mut self, gpa: u64, len: u32) {
        if self.out.len() > 32 {
            self.out.clear();
        }
        let before = self.out.clone();
        let got = self.g.memory().translate(gpa, len, &mut self.hint, &mut self.out);
        let want = if gpa.checked_add(len as u64).is_none() {
            Err(MemoryError::Overflow { addr: gpa, len: len as u64 })
        } else {
            self.g.host_segments(gpa, len).map_err(|addr| MemoryError::Unmapped { addr })
        };
        let at = self.step;
        match (got, want) {
            (Err(e), Err(w)) => {
                assert_eq!(e, w, "op {at}: translate({gpa:#x}, {len:#x}) error");
                assert_eq!(self.out, before, "op {at}: a failed translate changed its output");
            }
            (Ok(()), Ok(w)) => {
                assert_eq!(&self.out[..before.len()], &before[..], "op {at}: translate changed earlier segments");
                let new = &self.out[before.len()..];
                // Independent of the model: inside the regions, non-empty, contiguous in guest
                // space from `gpa`, splitting only at region ends, covering exactly `len`.
                let mut cur = gpa;
                for (k, s) in new.iter().enumerate() {
                    assert!(!s.is_empty(), "op {at}: empty segment");
                    let (r, off) = self
                        .g
                        .locate_host(s.host_addr(), s.len() as usize)
                        .unwrap_or_else(|| panic!("op {at}: segment {s:?} is outside every region"));
                    let span = self.g.spans()[r];
                    assert_eq!(span.gpa + off as u64, cur, "op {at}: segment {k} is not where the range continues");
                    if k + 1 < new.len() {
                        assert_eq!(off + s.len() as usize, span.len, "op {at}: segment {k} splits inside a region");
                    }
                    cur += s.len() as u64;
                }
                assert_eq!(cur - gpa, len as u64, "op {at}: segments cover {} bytes, {len} asked", cur - gpa);
                let have: Vec<(usize, u32)> = new.iter().map(|s| (s.host_addr(), s.len())).collect();
                assert_eq!(have, w, "op {at}: segments");
                for s in new.iter().take(4) {
                    if self.segs.len() >= 16 {
                        self.segs.remove(0);
                    }
                    self.segs.push((*s, false));
                }
            }
            (got, want) => panic!("op {at}: translate({gpa:#x}, {len:#x}) = {got:?}, the model says {want:?}"),
        }
    }

    /// The segments an operation uses: `n` of the saved ones from `first`, maybe with a foreign
    /// one at `foreign_at`.
    fn pick_segs(&self, i: &mut Input<'_>, foreign: bool) -> Vec<(HostSeg, bool)> {
        let mut v: Vec<(HostSeg, bool)> = if self.segs.is_empty() {
            Vec::new()
        } else {
            let first = i.below(self.segs.len());
            let n = i.below(self.segs.len() + 1);
            self.segs.iter().cycle().skip(first).take(n).copied().collect()
        };
        if foreign {
            let off = i.u16() as u64 % 0x800;
            let len = 1 + i.u16() as u32 % 0x800;
            let mut out = Vec::<HostSeg>::new();
            with_foreign(|o| o.memory().translate(0x1000 + off, len, &mut RegionHint::default(), &mut out))
                .expect("a range inside the other memory");
            let at = i.below(v.len() + 1);
            v.insert(at, (out[0], true));
        }
        v
    }

    fn gather(&mut self, i: &mut Input<'_>, foreign: bool) {
        let segs = self.pick_segs(i, foreign);
        let n = i.u16() as usize % 0x1000;
        let plain: Vec<HostSeg> = segs.iter().map(|s| s.0).collect();
        let mut dst = vec![0x5au8; n];
        let got = self.g.memory().gather(&plain, &mut dst);
        // The model: segments in order until `n` bytes are copied.
        let mut want = Vec::with_capacity(n);
        let mut err = None;
        for &(s, is_foreign) in &segs {
            if want.len() == n {
                break;
            }
            if is_foreign {
                err = Some(MemoryError::ForeignSegment);
                break;
            }
            let (r, off) = self.g.locate_host(s.host_addr(), s.len() as usize).expect("own segment");
            let take = (s.len() as usize).min(n - want.len());
            want.extend_from_slice(self.g.shadow_at(r, off, take));
        }
        let want_res = match err {
            Some(e) => Err(e),
            None if want.len() < n => Err(MemoryError::Short { have: want.len(), need: n }),
            None => Ok(()),
        };
        assert_eq!(got, want_res, "op {}: gather of {n} bytes", self.step);
        if got.is_ok() {
            assert_eq!(dst, want, "op {}: gathered bytes", self.step);
        }
    }

    fn scatter(&mut self, i: &mut Input<'_>, foreign: bool) {
        let segs = self.pick_segs(i, foreign);
        let n = i.u16() as usize % 0x1000;
        let fill = i.u8();
        let src: Vec<u8> = (0..n).map(|k| fill.wrapping_add(k as u8)).collect();
        let plain: Vec<HostSeg> = segs.iter().map(|s| s.0).collect();
        let got = self.g.memory().scatter(&src, &plain);
        // The model: every segment needed is checked first; then written in order.
        let mut have = 0usize;
        let mut want = Ok(());
        for &(s, is_foreign) in &segs {
            if have >= n {
                break;
            }
            if is_foreign {
                want = Err(MemoryError::ForeignSegment);
                break;
            }
            have += s.len() as usize;
        }
        if want.is_ok() && have < n {
            want = Err(MemoryError::Short { have, need: n });
        }
        assert_eq!(got, want, "op {}: scatter of {n} bytes", self.step);
        if want.is_ok() {
            let mut at = 0;
            for &(s, _) in &segs {
                if at == n {
                    break;
                }
                let (r, off) = self.g.locate_host(s.host_addr(), s.len() as usize).expect("own segment");
                let take = (s.len() as usize).min(n - at);
                self.g.expect_write_at(r, off, &src[at..at + take]);
                at += take;
            }
        }
        self.g.assert_unchanged(&format!("op {}: scatter", self.step));
    }

    fn apply(&mut self, i: &mut Input<'_>) {
        let at = self.step;
        match i.u8() % 10 {
            0 => {
                let gpa = access_gpa(i, &self.g);
                let len = access_len(i);
                self.translate(gpa, len);
            }
            1 => {
                let gpa = access_gpa(i, &self.g);
                let n = i.below(65);
                let mut dst = vec![0u8; n];
                let got = self.g.memory().read(gpa, &mut dst);
                let want = model_read(&self.g, gpa, n);
                assert_eq!(got.map(|()| dst), want, "op {at}: read({gpa:#x}, {n})");
            }
            2 => {
                let gpa = access_gpa(i, &self.g);
                let n = i.below(65);
                let src = i.bytes(n).to_vec();
                let got = self.g.memory().write(gpa, &src);
                let want = model_read(&self.g, gpa, src.len()).map(|_| ());
                assert_eq!(got, want, "op {at}: write({gpa:#x}, {})", src.len());
                if want.is_ok() {
                    for (k, b) in src.iter().enumerate() {
                        self.g.expect_device_write(gpa + k as u64, &[*b]);
                    }
                }
                self.g.assert_unchanged(&format!("op {at}: write"));
            }
            3 => {
                let gpa = access_gpa(i, &self.g);
                let got = self.g.memory().read_array::<16>(gpa, &mut self.hint);
                let want = match self.g.locate(gpa) {
                    None => Err(MemoryError::Unmapped { addr: gpa }),
                    Some(_) => model_read(&self.g, gpa, 16).map(|v| <[u8; 16]>::try_from(v).expect("16")),
                };
                assert_eq!(got, want, "op {at}: read_array({gpa:#x})");
            }
            4 => {
                let gpa = access_gpa(i, &self.g);
                let got = self.g.memory().load_u16_acquire(gpa);
                let want = model_u16_place(&self.g, gpa).map(|()| self.g.read_u16(gpa));
                assert_eq!(got, want, "op {at}: load_u16_acquire({gpa:#x})");
            }
            5 => {
                let gpa = access_gpa(i, &self.g);
                let v = i.u16();
                let got = self.g.memory().store_u16_release(gpa, v);
                let want = model_u16_place(&self.g, gpa);
                assert_eq!(got, want, "op {at}: store_u16_release({gpa:#x})");
                if want.is_ok() {
                    self.g.expect_device_write(gpa, &v.to_le_bytes());
                }
                self.g.assert_unchanged(&format!("op {at}: store_u16_release"));
            }
            6 => self.gather(i, false),
            7 => self.scatter(i, false),
            8 => {
                if i.bool() {
                    self.gather(i, true)
                } else {
                    self.scatter(i, true)
                }
            }
            _ => self.hint = RegionHint::default(),
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let n = i.below(9);
    let mut layout = Vec::new();
    let mut regions = Vec::new();
    let mut prev_end = 0x10_0000u64;
    for _ in 0..n {
        let gpa = region_gpa(&mut i, prev_end);
        let len = 1 + i.u16() as usize % 0x3000;
        match GuestRegion::anonymous_guarded(gpa, len) {
            Ok(r) => {
                assert!(gpa.checked_add(len as u64).is_some(), "region {gpa:#x} + {len:#x} overflows, yet accepted");
                assert_eq!((r.guest_addr(), r.len()), (gpa, len));
                regions.push(r);
                layout.push((gpa, len as u64));
                prev_end = gpa + len as u64;
            }
            Err(MemoryConfigError::Overflow { gpa: g, len: l }) => {
                assert!(gpa.checked_add(len as u64).is_none(), "region {gpa:#x} + {len:#x} refused as overflowing");
                assert_eq!((g, l), (gpa, len as u64));
            }
            Err(e) => panic!("region {gpa:#x} + {len:#x}: unexpected error {e}"),
        }
    }
    let overlaps = |a: (u64, u64), b: (u64, u64)| a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
    let any_overlap = (0..layout.len()).any(|x| (x + 1..layout.len()).any(|y| overlaps(layout[x], layout[y])));
    let mem = match GuestMemory::new(regions) {
        Ok(m) => {
            assert!(!layout.is_empty() && !any_overlap, "layout {layout:x?} accepted");
            m
        }
        Err(MemoryConfigError::Empty) => {
            assert!(layout.is_empty(), "a layout of {} regions refused as empty", layout.len());
            return;
        }
        Err(MemoryConfigError::Overlap { a, b }) => {
            assert!(any_overlap, "layout {layout:x?} refused as overlapping");
            let named = (0..layout.len()).any(|x| {
                layout[x].0 == a
                    && (0..layout.len()).any(|y| y != x && layout[y].0 == b && overlaps(layout[x], layout[y]))
            });
            assert!(named, "Overlap {{ a: {a:#x}, b: {b:#x} }} does not name two overlapping regions of {layout:x?}");
            return;
        }
        Err(e) => panic!("layout {layout:x?}: unexpected error {e}"),
    };
    let mut sorted = layout.clone();
    sorted.sort_by_key(|r| r.0);
    let listed: Vec<(u64, u64)> = mem.regions().iter().map(|r| (r.guest_addr(), r.len() as u64)).collect();
    assert_eq!(listed, sorted, "regions are listed sorted by guest address");
    assert!(!mem.lost());

    let mut h = Harness {
        g: FuzzGuest::from_memory(Arc::new(mem)),
        hint: RegionHint::default(),
        out: Vec::new(),
        segs: Vec::new(),
        step: 0,
    };
    while !i.is_empty() && h.step < MAX_OPS {
        h.apply(&mut i);
        h.step += 1;
    }
    h.g.assert_unchanged(&"the end of the input");
}
