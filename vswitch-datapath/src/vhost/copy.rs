//! Copies between one flat host buffer (a packet) and guest segments, through a [`Channel`].
//!
//! This is the one place the vhost paths hand guest memory to a copy engine, so it is where the
//! engine's memory contract is upheld: guest segments come only from a validated descriptor chain
//! (inside a mapped region), packet buffers only from the [`PacketPool`](crate::switch::pool::PacketPool),
//! and both stay valid until the copies retire, because a queue frees a packet and returns a chain
//! only after its tickets retire, and stop/clear drain the channel before memory goes away.

use copy_engine::{Channel, CopyEngine, EnqueueError, OpFlags};

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
    mut skip: usize,
) -> Result<Copied, EnqueueError> {
    let mut done = 0usize;
    let mut out = Copied::default();
    for s in segs {
        if done == len {
            break;
        }
        let seg_len = s.len() as usize;
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let n = (seg_len - skip).min(len - done);
        // SAFETY: `flat + done .. + n` is inside the caller's buffer and the segment holds
        // `skip + n` bytes; both stay valid until the op retires (this function's contract).
        out.pushed_back += unsafe { copy_one(chan, dir, flat.wrapping_add(done), n, *s, skip) }?.pushed_back;
        done += n;
        skip = 0;
    }
    debug_assert_eq!(done, len, "segments shorter than checked");
    Ok(out)
}
