//! Copies between one flat host buffer (a packet) and guest segments, through a [`Channel`].
//!
//! This is the one place the vhost paths hand guest memory to a copy engine, so it is where the
//! engine's memory contract is upheld: guest segments come only from a validated descriptor chain
//! (inside a mapped region), packet buffers only from the [`PacketPool`](crate::switch::pool::PacketPool),
//! and both stay valid until the copies retire, because a queue frees a packet and returns a chain
//! only after its tickets retire, and stop/clear drain the channel before memory goes away.

use copy_engine::{Channel, CopyEngine, CopyOp, EnqueueError, OpFlags, Ticket};
use smallvec::SmallVec;

use crate::mem::HostSeg;

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Packet -> guest (northbound).
    ToGuest,
    /// Guest -> packet (southbound).
    FromGuest,
}

/// What one scatter/gather copy did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Copied {
    /// Pieces the channel pushed back (ring full under the push-back policy) that were copied by
    /// the CPU here instead.
    pub pushed_back: u32,
}

/// Copies `len` bytes between `flat` and one guest segment, starting `skip` bytes into it, as one
/// channel op (or, pushed back, by the CPU here). Inline in the caller: a chain of one segment
/// (what virtio drivers post for a small TX packet, header and packet in one buffer) calls it
/// directly, [`copy_segments`] once per piece. The caller checked that `seg` holds `skip + len`
/// bytes.
///
/// # Safety
/// As [`copy_segments`].
#[inline(always)]
pub(crate) unsafe fn copy_one<E: CopyEngine>(
    chan: &Channel<E>,
    dir: Dir,
    flat: *mut u8,
    len: usize,
    seg: HostSeg,
    skip: usize,
) -> Result<Copied, EnqueueError> {
    debug_assert!(skip + len <= seg.len() as usize, "segment shorter than checked");
    if len == 0 {
        return Ok(Copied::default());
    }
    let guest = (seg.host_addr() + skip) as *mut u8;
    let (src, dst) = match dir {
        Dir::ToGuest => (flat as *const u8, guest),
        Dir::FromGuest => (guest as *const u8, flat),
    };
    // SAFETY: as in `copy_segments`: `guest..guest+len` lies inside the segment of a validated
    // chain, `flat..flat+len` inside the caller's buffer, both valid until the op retires.
    match unsafe { chan.enqueue(src, dst, len, OpFlags::empty()) } {
        Ok(_) => Ok(Copied { pushed_back: 0 }),
        Err(EnqueueError::RingFull) => {
            // Push-back policy: the engine has no room; this piece is copied by the CPU now.
            // It is still reported done only with the packet, after every earlier ticket.
            // SAFETY: as above; the ranges are disjoint (guest memory vs. the packet pool).
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
            Ok(Copied { pushed_back: 1 })
        }
        Err(e) => Err(e),
    }
}

/// Copies `len` bytes between `flat` and `segs` (starting `skip` bytes into the segments), one
/// channel op per contiguous piece. The caller checked that the segments hold `skip + len` bytes.
///
/// # Safety
/// `flat` is valid for `len` bytes (reads for [`Dir::ToGuest`], writes for [`Dir::FromGuest`]) and
/// stays so, with the guest segments, until the channel retires the ops enqueued here.
pub(crate) unsafe fn copy_segments<E: CopyEngine>(
    chan: &Channel<E>,
    dir: Dir,
    flat: *mut u8,
    len: usize,
    segs: &[HostSeg],
    skip: usize,
) -> Result<Copied, EnqueueError> {
    let mut out = Copied::default();
    let mut done = 0usize;
    for (at, seg, skip, n) in pieces(len, segs, skip) {
        // SAFETY: `flat + at .. + n` is inside the caller's buffer and the segment holds
        // `skip + n` bytes; both stay valid until the op retires (this function's contract).
        out.pushed_back += unsafe { copy_one(chan, dir, flat.wrapping_add(at), n, seg, skip) }?.pushed_back;
        done += n;
    }
    debug_assert_eq!(done, len, "segments shorter than checked");
    Ok(out)
}

/// The contiguous pieces of `len` bytes laid over `segs` from `skip` bytes into them, in order:
/// `(offset in the flat buffer, segment, offset in the segment, length)`. Fewer than `len` bytes
/// when the segments are shorter (the callers checked they are not).
#[inline]
fn pieces(len: usize, segs: &[HostSeg], mut skip: usize) -> impl Iterator<Item = (usize, HostSeg, usize, usize)> + '_ {
    let mut done = 0usize;
    segs.iter()
        .filter_map(move |s| {
            let seg_len = s.len() as usize;
            if skip >= seg_len {
                skip -= seg_len;
                return None;
            }
            let n = (seg_len - skip).min(len - done);
            let piece = (done, *s, skip, n);
            (done, skip) = (done + n, 0);
            Some(piece)
        })
        .take_while(|p| p.3 != 0)
}

/// The copies of a group of packets, gathered first and handed to the channel in one
/// [`Channel::enqueue_burst`]: one borrow of the channel and one ring-room check per run of engine
/// ops instead of per op. Each packet remembers [`len`](Self::len) after its own ops (its mark),
/// and after [`enqueue`](Self::enqueue) asks [`end`](Self::end) for its last ticket.
///
/// Refusals are handled as [`copy_one`] handles them: an op pushed back (ring full under the
/// push-back policy) is copied by the CPU at once and takes no ticket; any other refusal stops
/// the batch, and [`accepted`](Self::accepted) tells the packets before it from the rest.
#[derive(Debug, Default)]
pub(crate) struct CopyBatch {
    ops: Vec<CopyOp>,
    /// Indices of the ops copied by the CPU here (pushed back), ascending.
    pushed_back: SmallVec<[usize; 4]>,
    /// The channel ticket of the first op.
    first: Ticket,
    /// The op the channel refused, and why.
    failed: Option<(usize, EnqueueError)>,
}

// SAFETY: the ops are plain addresses that grant no access by themselves: they are read only by
// `enqueue`, whose caller vouches for the buffers, on whichever thread owns the batch then.
unsafe impl Send for CopyBatch {}

impl CopyBatch {
    /// Empties the batch for the next group.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.ops.clear();
        self.pushed_back.clear();
        self.failed = None;
    }

    /// Ops gathered so far: a packet's mark once its ops are in.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// Adds the copy of `len` bytes between `flat` and one guest segment, `skip` bytes into it
    /// (nothing when `len` is 0). The caller checked that `seg` holds `skip + len` bytes.
    #[inline(always)]
    pub(crate) fn push(&mut self, dir: Dir, flat: *mut u8, len: usize, seg: HostSeg, skip: usize) {
        debug_assert!(skip + len <= seg.len() as usize, "segment shorter than checked");
        if len == 0 {
            return;
        }
        let guest = (seg.host_addr() + skip) as *mut u8;
        self.ops.push(match dir {
            Dir::ToGuest => CopyOp::new(flat, guest, len),
            Dir::FromGuest => CopyOp::new(guest, flat, len),
        });
    }

    /// Adds the copies of `len` bytes between `flat` and `segs` (from `skip` bytes into them), one
    /// op per contiguous piece. The caller checked that the segments hold `skip + len` bytes.
    pub(crate) fn push_segments(&mut self, dir: Dir, flat: *mut u8, len: usize, segs: &[HostSeg], skip: usize) {
        let mut done = 0usize;
        for (at, seg, skip, n) in pieces(len, segs, skip) {
            self.push(dir, flat.wrapping_add(at), n, seg, skip);
            done += n;
        }
        debug_assert_eq!(done, len, "segments shorter than checked");
    }

    /// Hands every op to `chan`, in order (the caller submits). A refusal other than a full ring
    /// stops it; it is kept for [`end`](Self::end) and [`accepted`](Self::accepted) and returned.
    ///
    /// # Safety
    /// Every op's flat buffer and guest segment stay valid, and untouched by anything else, until
    /// the channel retires the op's ticket (what [`copy_segments`] asks for each of its ops).
    pub(crate) unsafe fn enqueue<E: CopyEngine>(&mut self, chan: &Channel<E>) -> Result<(), EnqueueError> {
        self.first = chan.next_ticket();
        let mut i = 0;
        while i < self.ops.len() {
            // SAFETY: forwarded from this function's contract.
            match unsafe { chan.enqueue_burst(&self.ops[i..], OpFlags::empty()) } {
                Ok(_) => break,
                Err(b) => {
                    i += b.accepted;
                    if b.error != EnqueueError::RingFull {
                        self.failed = Some((i, b.error));
                        return Err(b.error);
                    }
                    // Push-back policy: the engine has no room; this piece is copied by the CPU
                    // now. It is still reported done only with its packet, after every earlier
                    // ticket.
                    let op = self.ops[i];
                    // SAFETY: as above; the ranges are disjoint (guest memory vs. the packet pool).
                    unsafe { core::ptr::copy_nonoverlapping(op.src, op.dst, op.len) };
                    self.pushed_back.push(i);
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Ops of the last [`enqueue`](Self::enqueue) pushed back and copied here.
    #[inline]
    pub(crate) fn pushed_back(&self) -> usize {
        self.pushed_back.len()
    }

    /// Whether every op before `mark` was accepted (or pushed back and copied).
    #[inline]
    pub(crate) fn accepted(&self, mark: usize) -> bool {
        self.failed.is_none_or(|(at, _)| mark <= at)
    }

    /// One past the channel ticket of the last accepted op before `mark`: what a packet whose ops
    /// end at `mark` waits for (after [`enqueue`](Self::enqueue)).
    #[inline]
    pub(crate) fn end(&self, mark: usize) -> Ticket {
        let mark = self.failed.map_or(mark, |(at, _)| mark.min(at));
        let copied_here = self.pushed_back.iter().take_while(|&&k| k < mark).count();
        self.first.add((mark - copied_here) as u64)
    }
}
