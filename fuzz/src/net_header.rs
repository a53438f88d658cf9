//! Target `net_header`: the virtio-net header (virtio 1.2 spec, section 5.1.6) on arbitrary bytes
//! and feature sets: the checked view ([`NetHdr`]), its emission, and the TX header check of the
//! southbound path, which decides whether a guest's packet is forwarded.
//!
//! # Input layout
//!
//! `features: u64`, `len: u8` (the header length asked of `new_checked`), `mode: u8`, then:
//!
//! - mode even: the header view only. The rest of the input is the buffer.
//! - mode odd: also the datapath: up to 8 TX chains, each `frags: u8` (1..=4 buffers),
//!   `indirect: u8` (bit 0), `payload_len: u16` (`% 2100`), then the chain's bytes (header first;
//!   missing bytes are zero). The chains are posted on a guest TX queue, served by a
//!   [`Southbound`] on the memcpy engine, and the packets it forwards are compared with the
//!   model.
//!
//! # Invariants
//!
//! - `net_hdr_len` is 12 exactly when VERSION_1 (bit 32) or MRG_RXBUF (bit 15) is set, else 10.
//! - `new_checked` accepts exactly the buffers holding the (normalised) header length and refuses
//!   the others with the right `need`/`have`; every accessor of an accepted header reads its
//!   little-endian field, `num_buffers` is 0 in the legacy header; `repr().emit()` writes the same
//!   bytes back (and nothing past the header), and refuses a short buffer without writing.
//! - Southbound forwards a chain exactly when the model accepts its header (long enough, no GSO,
//!   any checksum request inside the packet, the packet fits a buffer), and then forwards the
//!   bytes after the header unchanged; every chain, forwarded or not, goes back on the used ring
//!   with length 0, in order; nothing outside the used ring is written.

use copy_engine::{Channel, Policy};
use copy_engine_cpu::MemcpyEngine;
use vswitch_datapath::net::{NET_HDR_LEN, NET_HDR_LEN_LEGACY};
use vswitch_datapath::testguest::{TestGuest, UsedElem, GUEST_BASE};
use vswitch_datapath::virtio::split::used_ring_len;
use vswitch_datapath::{net_hdr_len, Burst, NetHdr, NetHdrRepr, Notifier, PacketPool, RingFeatures, Southbound};

use crate::input::Input;

/// Size of the guest TX queue.
pub const QSIZE: u16 = 64;
/// Data room of the packet pool (a chain whose payload is longer is not forwarded).
pub const DATA_ROOM: usize = 2048;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// The header view, on `buf`.
fn check_view(features: u64, asked: usize, buf: &[u8]) {
    let hl = net_hdr_len(features);
    let modern = features & ((1 << 32) | (1 << 15)) != 0;
    assert_eq!(hl, if modern { NET_HDR_LEN } else { NET_HDR_LEN_LEGACY }, "net_hdr_len({features:#x})");

    let need = if asked >= NET_HDR_LEN { NET_HDR_LEN } else { NET_HDR_LEN_LEGACY };
    let h = match NetHdr::new_checked(buf, asked) {
        Ok(h) => h,
        Err(e) => {
            assert!(buf.len() < need, "a {}-byte buffer refused for a {need}-byte header", buf.len());
            assert_eq!((e.need, e.have), (need, buf.len()), "truncation error");
            return;
        }
    };
    assert!(buf.len() >= need, "a {}-byte buffer accepted for a {need}-byte header", buf.len());
    assert_eq!(h.header_len(), need);
    let r = h.repr();
    let want = NetHdrRepr {
        flags: buf[0],
        gso_type: buf[1],
        hdr_len: le16(buf, 2),
        gso_size: le16(buf, 4),
        csum_start: le16(buf, 6),
        csum_offset: le16(buf, 8),
        num_buffers: if need == NET_HDR_LEN { le16(buf, 10) } else { 0 },
    };
    assert_eq!(r, want, "header fields");
    assert_eq!(r.needs_csum(), buf[0] & 1 != 0);
    assert_eq!(
        (h.flags(), h.gso_type(), h.hdr_len(), h.gso_size(), h.csum_start(), h.csum_offset(), h.num_buffers()),
        (r.flags, r.gso_type, r.hdr_len, r.gso_size, r.csum_start, r.csum_offset, r.num_buffers)
    );

    // Emission: the same bytes back, nothing past the header; a short buffer is refused untouched.
    let mut out = vec![0xeeu8; need + 4];
    r.emit(&mut out, asked).expect("emit into a buffer that holds the header");
    assert_eq!(&out[..need], &buf[..need], "emitted header");
    assert!(out[need..].iter().all(|&b| b == 0xee), "emit wrote past the header");
    let mut short = vec![0xeeu8; need - 1];
    assert!(r.emit(&mut short, asked).is_err(), "emit into a short buffer");
    assert!(short.iter().all(|&b| b == 0xee), "a refused emit wrote");

    // The setters, through a mutable view over a copy.
    let mut copy = buf[..need].to_vec();
    let mut m = NetHdr::new_checked(&mut copy[..], asked).expect("same length");
    m.set_num_buffers(0x1234);
    m.set_csum_offset(!r.csum_offset);
    assert_eq!(m.csum_offset(), !r.csum_offset);
    assert_eq!(m.num_buffers(), if need == NET_HDR_LEN { 0x1234 } else { 0 });
    assert_eq!(m.flags(), r.flags);
}

/// Whether the southbound path must forward a chain of `bytes` (header first).
fn model_accepts(hdr_len: usize, bytes: &[u8]) -> bool {
    if bytes.len() < hdr_len {
        return false;
    }
    let plen = bytes.len() - hdr_len;
    let (gso_type, needs_csum) = (bytes[1], bytes[0] & 1 != 0);
    let (csum_start, csum_offset) = (le16(bytes, 6) as usize, le16(bytes, 8) as usize);
    gso_type == 0 && (!needs_csum || csum_start + csum_offset + 2 <= plen) && plen <= DATA_ROOM
}

fn check_southbound(features: u64, i: &mut Input<'_>) {
    let hdr_len = net_hdr_len(features);
    let g = TestGuest::with_regions(&[(GUEST_BASE, 64 << 10)]);
    let mut dq = g.add_queue(QSIZE, RingFeatures::INDIRECT_DESC);
    let mut chains = Vec::new();
    for _ in 0..8 {
        if i.is_empty() {
            break;
        }
        let frags = 1 + i.below(4);
        let indirect = i.bool();
        let len = (i.u16() as usize % 2100).max(frags);
        let mut bytes = i.bytes(len).to_vec();
        bytes.resize(len, 0);
        let indirect = indirect || dq.free_descriptors() < frags;
        let head = dq.post_tx(&g, &bytes, frags, indirect);
        chains.push((head, bytes));
    }
    let mut south = Southbound::new(dq.device(&g), hdr_len, Notifier::Polling);
    let chan = Channel::new(MemcpyEngine::new(64), Policy::default());
    let mut pool = PacketPool::new(16, DATA_ROOM);
    let used_ring = dq.config().used_ring;
    let before = g.snapshot();

    let taken = south.dequeue_burst(&chan, &mut pool, 32).expect("a valid TX ring");
    assert_eq!(taken, chains.len(), "chains taken");
    chan.submit();
    chan.progress();
    let mut out = Burst::new();
    let done = south.complete(&chan, &mut pool, &mut out, 32).expect("complete");
    assert_eq!(done, chains.len(), "chains completed");

    let mut forwarded = out.into_iter();
    for (head, bytes) in &chains {
        assert_eq!(dq.pop_used(&g), Some(UsedElem { id: *head as u32, len: 0 }), "used entry of chain {head}");
        if model_accepts(hdr_len, bytes) {
            let p = forwarded.next().unwrap_or_else(|| panic!("chain {head} with a valid header was not forwarded"));
            assert_eq!(pool.data(&p), &bytes[hdr_len..], "payload of chain {head}");
            pool.free(p);
        }
    }
    assert!(forwarded.next().is_none(), "a chain with an invalid header was forwarded");
    assert_eq!(dq.pop_used(&g), None);
    assert!(!south.queue().is_broken());

    // Only the used ring changed.
    let after = g.snapshot();
    let base = GUEST_BASE;
    let used = (used_ring - base) as usize..(used_ring - base) as usize + used_ring_len(QSIZE);
    let (b, a) = (&before[0], &after[0]);
    if b[..used.start] != a[..used.start] || b[used.end..] != a[used.end..] {
        let k = (0..b.len()).find(|&k| !used.contains(&k) && a[k] != b[k]).expect("a difference");
        panic!("southbound wrote guest memory at gpa {:#x}", base + k as u64);
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let features = i.u64();
    let asked = i.u8() as usize;
    let mode = i.u8();
    if mode & 1 == 0 {
        check_view(features, asked, i.rest());
    } else {
        let hdr = i.bytes(NET_HDR_LEN);
        check_view(features, asked, hdr);
        check_southbound(features, &mut i);
    }
}
