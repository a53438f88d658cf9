//! Hand-written seed inputs: well-formed sessions in each target's input layout, so the fuzzer
//! starts from deep states (queues that work, a vhost-user setup that attaches) and mutates from
//! there. `cargo run --manifest-path fuzz/Cargo.toml --bin seeds -- fuzz/corpus` writes them.

use crate::input::Encoder;
use crate::packed_ring::op as pop;
use crate::split_ring::op;

/// Seeds of a target: `(file name, input)`.
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every target's seeds.
pub fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("split_ring", split_ring()),
        ("packed_ring", packed_ring()),
        ("net_header", net_header()),
        ("guest_memory", guest_memory()),
        ("vhost_user", vhost_user()),
    ]
}

/// A split-ring setup: size `1 << size_log2`, features, default ring addresses, bases 0.
fn ring_setup(size_log2: u8, features: u8) -> Encoder {
    let mut e = Encoder::default();
    e.u8(size_log2).u8(features).u8(0).u8(0).u8(0).u16(0).u16(0);
    e
}

fn split_ring() -> Seeds {
    let mut out = Vec::new();
    // A direct chain (2 readable, 1 writable), taken, returned, published, notified.
    let mut e = ring_setup(3, 0);
    e.u8(op::WRITE_CHAIN).u16(0).u8(2).u8(2).u8(0).u16(0).u8(63).u8(63).u8(127);
    e.u8(op::POP).u8(op::PUSH_USED).u8(0).u8(op::PUBLISH).u8(op::NEEDS_NOTIFY);
    out.push(("direct-chain", e.0));
    // Indirect and event idx: an indirect table of 3, then a burst.
    let mut e = ring_setup(4, 3);
    e.u8(op::WRITE_INDIRECT).u8(0).u16(0x200).u8(2).u8(1);
    for k in 0..3u16 {
        e.u8(0).u16(0x400 + 0x100 * k).u8(200).u8(0);
    }
    e.u16(2).u8(0);
    e.u8(op::SET_EVENT_FIELD).u16(0).u8(0);
    e.u8(op::BURST).u8(3).u8(op::SET_KICKS).u8(1).u8(op::AVAIL_COUNT);
    out.push(("indirect-event-idx", e.0));
    // Mark, take two, rewind, take again; a buffer across the region 0/1 boundary.
    let mut e = ring_setup(2, 1);
    e.u8(op::WRITE_CHAIN).u16(0).u8(0).u8(0).u8(6).u8(0).u8(0x10).u8(255);
    e.u8(op::WRITE_CHAIN).u16(1).u8(1).u8(2).u8(0).u16(0x100).u8(20).u8(20);
    e.u8(op::MARK).u8(op::POP).u8(op::POP).u8(op::REWIND).u8(0).u8(op::POP).u8(op::POP);
    e.u8(op::PUSH_USED).u8(0).u8(op::PUSH_USED).u8(0).u8(op::PUBLISH).u8(op::CHECK_MEMORY);
    out.push(("rewind-and-boundary", e.0));
    // Dirty logging with event idx: a chain across the region 0/1 boundary, written and returned.
    let mut e = ring_setup(3, 6);
    e.u8(op::WRITE_CHAIN).u16(0).u8(1).u8(1).u8(6).u8(0).u8(0x40).u8(31).u8(255);
    e.u8(op::BURST).u8(0).u8(op::SET_KICKS).u8(1);
    out.push(("dirty-log", e.0));
    // Hostile: a loop, then calls on the broken queue.
    let mut e = ring_setup(3, 0);
    e.u8(op::WRITE_DESC).u16(0).u8(0).u16(0).u8(0).u8(64).u8(1).u8(0);
    e.u8(op::MAKE_AVAIL).u8(0).u8(op::POP).u8(op::PUSH_USED).u8(0x80).u16(0).u32(0).u8(op::PUBLISH);
    out.push(("loop-breaks", e.0));
    // Hostile: the avail idx jumps.
    let mut e = ring_setup(3, 2);
    e.u8(op::SET_AVAIL_IDX).u8(0x80).u16(100).u8(op::AVAIL_COUNT).u8(op::POP);
    out.push(("avail-jump", e.0));
    out
}

/// A packed-ring setup: size, features, default ring and event-area addresses, `base`.
fn packed_setup(size: u8, features: u8, base: u16) -> Encoder {
    let mut e = Encoder::default();
    e.u8(size - 1).u8(features).u8(0).u8(0).u8(0).u16(base);
    e
}

/// A chain of `lens.len()` descriptors at the driver's position, the first `fw` readable, with
/// the right wrap counter (or the wrong one), buffers from `buf` in region 0's buffer area.
fn packed_chain(e: &mut Encoder, lens: &[u8], fw: u8, id: u16, wrong: bool, buf: u16) {
    e.u8(pop::WRITE_CHAIN).u8(lens.len() as u8 - 1).u8(fw).u16(id).u8(if wrong { 0 } else { 1 });
    e.u8(0).u16(buf);
    for &l in lens {
        e.u8(l);
    }
}

fn packed_ring() -> Seeds {
    let mut out = Vec::new();
    // Chains of two around a ring of 4: the wrap counters flip, used descriptors follow.
    let mut e = packed_setup(4, 0, 0x8000);
    for k in 0..5u16 {
        packed_chain(&mut e, &[63, 63], 1, k, false, 0x100 * k);
        e.u8(pop::BURST).u8(2);
    }
    packed_chain(&mut e, &[20, 20, 20], 2, 9, false, 0x40);
    e.u8(pop::POP).u8(pop::PUSH_USED).u8(0).u8(pop::PUBLISH).u8(pop::NEEDS_NOTIFY);
    out.push(("chains-wrap", e.0));
    // Indirect table of 3 and event suppression by descriptor position.
    let mut e = packed_setup(16, 3, 0x8000);
    e.u8(pop::WRITE_INDIRECT).u8(0).u16(0x200).u8(2).u8(1);
    for k in 0..3u16 {
        e.u8(0).u16(0x400 + 0x100 * k).u8(200).u8(0);
    }
    e.u8(0).u16(5);
    e.u8(pop::SET_EVENT).u16(0x8001).u8(0).u8(pop::SET_EVENT).u16(2).u8(1);
    e.u8(pop::BURST).u8(3).u8(pop::SET_KICKS).u8(1).u8(pop::SET_KICKS).u8(0);
    out.push(("indirect-event-desc", e.0));
    // Dirty log: a writable buffer across the region 0/1 boundary; mark, rewind, give back.
    let mut e = packed_setup(5, 5, 0x8000);
    packed_chain(&mut e, &[63], 0, 7, false, 0x0ef0);
    packed_chain(&mut e, &[16, 16], 1, 8, false, 0x10);
    e.u8(pop::MARK).u8(pop::POP).u8(pop::POP).u8(pop::REWIND).u8(0).u8(pop::POP).u8(pop::POP);
    e.u8(pop::GIVE_BACK).u8(1).u8(pop::POP).u8(pop::PUSH_USED).u8(0).u8(pop::PUSH_USED).u8(0);
    e.u8(pop::PUBLISH).u8(pop::CHECK_MEMORY).u8(pop::NEEDS_NOTIFY);
    out.push(("log-rewind-boundary", e.0));
    // A ring of 5 starting mid-ring in the second pass; a read-only (TX) queue.
    let mut e = packed_setup(5, 8, 0x0003);
    for k in 0..4u16 {
        packed_chain(&mut e, &[32, 32], 1, k, false, 0x80 * k);
        e.u8(pop::BURST).u8(1);
    }
    out.push(("odd-size-second-pass-tx", e.0));
    // Hostile: a wrong wrap counter (not available), then every slot chained: too long.
    let mut e = packed_setup(4, 0, 0x8000);
    packed_chain(&mut e, &[10], 0, 1, true, 0);
    e.u8(pop::POP).u8(pop::MOVE_DRIVER).u8(0x80).u16(0);
    for k in 0..4u16 {
        e.u8(pop::WRITE_DESC).u16(k).u8(0).u16(0x20 * k).u8(0).u8(16).u16(k).u8(1);
    }
    e.u8(pop::POP).u8(pop::PUSH_USED).u8(0x80).u16(0).u32(0).u8(pop::PUBLISH);
    out.push(("wrong-wrap-too-long", e.0));
    out
}

fn net_header() -> Seeds {
    let version_1: u64 = 1 << 32;
    let mut out = Vec::new();
    let hdr = |flags: u8, gso: u8, cs: u16, co: u16| {
        let mut h = vec![flags, gso, 0, 0, 0, 0];
        h.extend_from_slice(&cs.to_le_bytes());
        h.extend_from_slice(&co.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h
    };
    let mut e = Encoder::default();
    e.u64(version_1).u8(12).u8(0).bytes(&hdr(1, 0, 14, 16));
    out.push(("view-modern", e.0));
    let mut e = Encoder::default();
    e.u64(0).u8(10).u8(0).bytes(&hdr(0, 0, 0, 0)[..10]);
    out.push(("view-legacy", e.0));
    // The datapath: a plain packet, a checksum request inside and one outside, a GSO header.
    let mut e = Encoder::default();
    e.u64(version_1).u8(12).u8(1).bytes(&hdr(0, 0, 0, 0));
    for (frags, h) in [(1u8, hdr(0, 0, 0, 0)), (2, hdr(1, 0, 14, 16)), (3, hdr(1, 0, 60, 10)), (1, hdr(0, 4, 0, 0))] {
        let body: Vec<u8> = (0..64u8).collect();
        e.u8(frags).u8(frags & 1).u16((h.len() + body.len()) as u16).bytes(&h).bytes(&body);
    }
    out.push(("southbound", e.0));
    out
}

fn guest_memory() -> Seeds {
    let mut out = Vec::new();
    // Two adjacent regions and one after a gap; translate across the boundary, read, write,
    // gather, scatter.
    let mut e = Encoder::default();
    e.u8(3).u8(0).u8(0x10).u16(0x1fff).u8(2).u8(0).u16(0x0fff).u8(0).u8(0x40).u16(0x0fff);
    e.u8(0).u8(0).u8(0).u16(0x1f00).u8(0).u16(0x200);
    e.u8(2).u8(1).u8(0).u16(0x10).u8(8).bytes(&[1, 2, 3, 4, 5, 6, 7, 8]);
    e.u8(1).u8(1).u8(0).u16(0x10).u8(8);
    e.u8(6).u8(0).u8(2).u16(0x100);
    e.u8(7).u8(0).u8(2).u16(0x180).u8(9);
    e.u8(3).u8(0).u8(3).u8(8).u8(4).u8(1).u8(0).u16(0x20).u8(5).u8(2).u8(0).u16(0x21).u16(7);
    e.u8(8).u8(1).u8(0).u8(1).u16(0).u16(16).u8(0).u16(0x40);
    out.push(("three-regions", e.0));
    // Overlapping and overflowing layouts.
    let mut e = Encoder::default();
    e.u8(2).u8(0).u8(0x10).u16(0x1000).u8(2).u8(0xf0).u16(0x100);
    out.push(("overlap", e.0));
    let mut e = Encoder::default();
    e.u8(1).u8(4).u16(5).u16(0x100);
    out.push(("overflow", e.0));
    out
}

/// The vhost-user message encoder for seeds (the decoder is `vhost_user::Frontend::message`).
struct Msg(Encoder);

impl Msg {
    fn new() -> Self {
        Msg(Encoder::default())
    }
    /// A request by code (1..=44), NEED_REPLY or not, with a structured payload `p`, no fd tweak.
    fn req(&mut self, code: u8, need_reply: bool, p: &[u8]) -> &mut Self {
        self.0.u8(code - 1).u8(need_reply as u8).u8(0).bytes(p).u8(0);
        self
    }
    fn setup(&mut self, call_mode: u8) -> &mut Self {
        self.req(1, false, &[]).req(2, true, &[0]).req(15, false, &[]).req(16, true, &[0]);
        // One region: gpa 0, 64 KiB, USER_BASE, offset 0, a new memfd sized to fit, the template.
        self.req(5, true, &[1, 0, 0, 0, 0, 0, 0]);
        for v in 0..2u8 {
            self.req(8, true, &[v, 0]).req(9, true, &[v, 0, 0, 0]).req(10, true, &[v, 0]);
            // A memfd as the call fd also takes the index of an earlier memfd.
            let call: &[u8] = if call_mode & 4 != 0 { &[v, call_mode, 0] } else { &[v, call_mode] };
            self.req(13, true, call).req(12, true, &[v, 0]);
        }
        self.req(18, true, &[0, 0]).req(18, true, &[1, 0])
    }
}

fn vhost_user() -> Seeds {
    let mut out = Vec::new();
    let mut m = Msg::new();
    m.setup(0).req(11, false, &[1, 0]);
    out.push(("setup-and-stop", m.0 .0));
    // A memfd offered as the call fd (refused), then a reset and a good setup again.
    let mut m = Msg::new();
    m.setup(4).req(4, true, &[]).setup(0).req(11, false, &[0, 0]);
    out.push(("memfd-as-call-fd", m.0 .0));
    // No protocol features: rings start as soon as they are kicked; a memory table change while
    // attached; then an unknown request and a bad GET_VRING_BASE (closes the connection).
    let mut m = Msg::new();
    m.req(2, true, &[1, 0xff, 0xff, 0xff, 0xbf, 0xff, 0xff, 0xff, 0xff]); // all but PROTOCOL_FEATURES
    m.req(5, true, &[1, 0, 0, 0, 0, 0, 0]);
    for v in 0..2u8 {
        m.req(8, false, &[v, 0]).req(9, false, &[v, 0, 0, 0]).req(13, false, &[v, 1]).req(12, false, &[v, 0]);
    }
    m.req(5, true, &[2, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]);
    m.0.u8(47).u32(999).u8(1).u8(0).u8(0);
    m.req(11, false, &[0x80, 9, 0, 0, 0, 0]);
    out.push(("legacy-remap-unknown", m.0 .0));
    // Live migration: the dirty log (LOG_SHMFD, a 4 KiB memfd), VHOST_F_LOG_ALL, traffic, stop.
    let mut m = Msg::new();
    m.setup(0).req(6, false, &[0, 0, 0, 1]).req(2, true, &[0]).req(11, false, &[0, 0]);
    out.push(("dirty-log", m.0 .0));
    // A header that lies about its size.
    let mut m = Msg::new();
    m.req(1, false, &[]);
    m.0.u8(1).u8(0).u8(0xc0).u16(4).bytes(&[1, 2, 3, 4]).u16(64).u8(0);
    out.push(("lying-header", m.0 .0));
    out
}
