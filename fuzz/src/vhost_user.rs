//! Target `vhost_user`: the vhost-user backend ([`Session`] over a [`VhostUserDevice`]) fed
//! fuzz-built message sequences over a real socket pair, with real file descriptors attached:
//! memfds of fuzzed sizes and contents (guest memory, or hostile vring fds), eventfds, missing and
//! extra fds.
//!
//! The device thread runs the fuzzed session, disconnects the device as the server does, then
//! serves a second, well-behaved frontend on a new connection ([`good_frontend`]). Its PMD is a
//! small thread ([`pmd`]) that answers `Detach` with an empty list and, for each `Attach`, runs
//! one burst of each direction on the memcpy engine (forwarding what the guest's TX ring holds
//! back into its RX ring), so a queue pair built from bad ring addresses or memory is exercised,
//! and its interrupts go to whatever call fd the device accepted; then drops the pair.
//!
//! # Input layout
//!
//! Messages until the input ends (at most [`MAX_MESSAGES`]). Each: a request selector byte
//! (`% 48`: 0..=43 are requests 1..=44, the rest a raw `u32` code), a flags byte (bit 0
//! NEED_REPLY; bit 7: a raw `u32` header flags word follows), a payload byte (bit 7: a raw
//! payload of `u16 % 0x1100` bytes follows; bit 6 with it: the header lies about the size, which
//! desynchronises the stream on purpose; else the request's own layout, see [`Frontend::message`]),
//! then an fd byte (bit 0 drops the last fd, bit 1 adds one more: [`Fds::spec`]).
//!
//! # Invariants
//!
//! - No panic; the session never hangs: every request with a reply of its own gets one (with the
//!   request's code, the REPLY flag and the right payload: offered features, the queue-pair count,
//!   the vring index asked, an empty one for `SET_LOG_BASE`) or the connection is closed; every NEED_REPLY request without one gets
//!   an ack of 0 or 1; nothing else is ever sent; a header that cannot be trusted closes the
//!   connection; every read of the frontend has a 5 s timeout, and the session ends once the
//!   frontend closes. (Once the frontend desynchronised the stream, only the last two hold.)
//! - Memory outside what was handed over is never written: every memfd keeps its size, and every
//!   byte of it outside the ranges `[mmap_offset, mmap_offset + size)` that some `SET_MEM_TABLE`
//!   (guest memory) or `SET_LOG_BASE` (the dirty log) named for it is unchanged (a memfd offered
//!   as a kick, call or error fd must stay untouched).
//! - The device can be reset and served again: `disconnect` succeeds and leaves nothing attached,
//!   and a new frontend on the same device negotiates, maps memory, sets up a queue pair that
//!   attaches, and stops it, every request acked with 0.
//! - No file descriptor and no SIGBUS registration leaks (the number of open fds is the same
//!   after each input).

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use copy_engine::{Channel, Policy};
use copy_engine_cpu::MemcpyEngine;
use vswitch_datapath::vhost_user::features::{offered_features, offered_protocol_features};
use vswitch_datapath::vhost_user::session::Session;
use vswitch_datapath::vhost_user::wire::Connection;
use vswitch_datapath::vhost_user::{DeviceConfig, VhostUserDevice};
use vswitch_datapath::{Burst, Northbound, PacketPool, PortCommand, Southbound};

use crate::input::{Encoder, Input};

/// Most messages per input.
pub const MAX_MESSAGES: usize = 48;
/// Queue pairs the device offers (vrings 0..=3).
pub const QUEUE_PAIRS: usize = 2;
/// How long the frontend waits for an answer before calling it a hang.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The frontend's user address of region `k`'s first byte, in the usual layout.
pub const USER_BASE: u64 = 0x7f00_0000_0000;
/// Bytes of the ring template a memfd may hold (and the usual region size).
pub const TEMPLATE_LEN: usize = 0x10000;
/// Queue size of the template's rings.
pub const TEMPLATE_QSIZE: u16 = 16;
/// Template offsets: `[desc, avail, used]` of the guest's RX ring (even vrings) and TX ring (odd).
pub const TEMPLATE_RINGS: [[u64; 3]; 2] = [[0x0000, 0x1000, 0x2000], [0x3000, 0x4000, 0x5000]];

/// vhost-user request codes (vhost-user spec, "Front-end message types").
#[allow(missing_docs)]
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const RESET_DEVICE: u32 = 34;
}

const VERSION: u32 = 1;
const REPLY: u32 = 4;
const NEED_REPLY: u32 = 8;
const MAX_PAYLOAD: usize = 0x1000;
const MEMORY_HDR: usize = 8;
const MEMORY_REGION: usize = 32;

/// Requests with a reply of their own (the session's `has_own_reply`, by number).
fn has_own_reply(code: u32) -> bool {
    matches!(code, 1 | 6 | 11 | 15 | 17 | 24 | 28 | 31 | 36 | 40..=44)
}

/// Of those, the ones the backend implements (the others are refused, closing the connection).
fn answered(code: u32) -> bool {
    matches!(
        code,
        req::GET_FEATURES | req::GET_PROTOCOL_FEATURES | req::GET_VRING_BASE | req::GET_QUEUE_NUM | req::SET_LOG_BASE
    )
}

// ---------------------------------------------------------------------------------------------
// File descriptors

fn memfd(len: u64, content: &[u8]) -> File {
    // SAFETY: `memfd_create` takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vswitch-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).expect("memfd size");
    let n = content.len().min(len as usize);
    f.write_all_at(&content[..n], 0).expect("memfd content");
    f
}

fn eventfd() -> File {
    // SAFETY: `eventfd` has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    unsafe { File::from_raw_fd(fd) }
}

/// The ring template: an RX ring with 4 writable 2 KiB buffers and a TX ring with 4 chains of a
/// 12-byte zero header and 60 payload bytes, for a region whose first byte is at guest address
/// `gpa`. Everything else is a pattern.
pub fn template(gpa: u64) -> Vec<u8> {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let mut m =
        BASE.get_or_init(|| (0..TEMPLATE_LEN).map(|k| (k as u8).wrapping_mul(31).wrapping_add(7)).collect()).clone();
    let mut put = |off: u64, b: &[u8]| m[off as usize..off as usize + b.len()].copy_from_slice(b);
    for (ring, (bufs, len, flags)) in [(0x9000u64, 0x800u32, 2u16), (0x8000, 72, 0)].into_iter().enumerate() {
        let [desc, avail, used] = TEMPLATE_RINGS[ring];
        put(desc, &[0; 16 * TEMPLATE_QSIZE as usize]);
        put(avail, &[0; 6 + 2 * TEMPLATE_QSIZE as usize]);
        put(used, &[0; 6 + 8 * TEMPLATE_QSIZE as usize]);
        for d in 0..4u64 {
            let addr = gpa.wrapping_add(bufs + d * len as u64);
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            put(desc + 16 * d, &raw);
            put(avail + 4 + 2 * d, &(d as u16).to_le_bytes());
        }
        put(avail + 2, &4u16.to_le_bytes());
    }
    for d in 0..4u64 {
        put(0x8000 + d * 72, &[0; 12]);
        put(0x8000 + d * 72 + 12, &[d as u8 + 1; 60]);
    }
    m
}

/// A memfd the frontend made, what it held, and which of its byte ranges it handed over as guest
/// memory (the only bytes the switch may change).
#[derive(Debug)]
struct MemFd {
    file: File,
    initial: Vec<u8>,
    handed: Vec<(u64, u64)>,
}

/// Every fd the frontend made for one input.
#[derive(Debug, Default)]
pub struct Fds {
    memfds: Vec<MemFd>,
    eventfds: Vec<File>,
}

/// Which fd a message carries: a memfd or an eventfd, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdRef {
    Mem(usize),
    Event(usize),
}

impl Fds {
    fn new_memfd(&mut self, len: u64, content: Vec<u8>) -> FdRef {
        let file = memfd(len, &content);
        let mut initial = content;
        initial.resize(len as usize, 0);
        self.memfds.push(MemFd { file, initial, handed: Vec::new() });
        FdRef::Mem(self.memfds.len() - 1)
    }

    fn new_eventfd(&mut self) -> FdRef {
        self.eventfds.push(eventfd());
        FdRef::Event(self.eventfds.len() - 1)
    }

    /// A memfd's content: mode 0 the ring template for a region at `gpa`, 1 a pattern, 2 the
    /// template patched by up to 3 writes (`offset: u16`, `len: u8 % 16`, bytes).
    fn content(i: &mut Input<'_>, gpa: u64) -> Vec<u8> {
        match i.u8() % 3 {
            0 => template(gpa),
            1 => {
                static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
                PATTERN.get_or_init(|| (0..TEMPLATE_LEN).map(|k| (k as u8) ^ 0xa5).collect()).clone()
            }
            _ => {
                let mut t = template(gpa);
                for _ in 0..i.below(4) {
                    let off = i.u16() as usize;
                    let n = i.below(16);
                    for (k, b) in i.bytes(n).iter().enumerate() {
                        if let Some(slot) = t.get_mut(off + k) {
                            *slot = *b;
                        }
                    }
                }
                t
            }
        }
    }

    /// A memfd size: modes 0-1 [`TEMPLATE_LEN`], 2 `1..=16` pages, 3 a `u16` (0 and odd sizes).
    fn size(i: &mut Input<'_>) -> u64 {
        match i.u8() % 4 {
            0 | 1 => TEMPLATE_LEN as u64,
            2 => (1 + i.below(16) as u64) << 12,
            _ => i.u16() as u64,
        }
    }

    /// An fd by spec byte: 0 a new eventfd, 1 a new memfd (size, content), 2 an earlier memfd
    /// (index byte), 3 an earlier eventfd (index byte).
    fn spec(&mut self, i: &mut Input<'_>) -> FdRef {
        match i.u8() % 4 {
            0 => self.new_eventfd(),
            1 => {
                let len = Self::size(i);
                let c = Self::content(i, 0);
                self.new_memfd(len, c)
            }
            2 if !self.memfds.is_empty() => FdRef::Mem(i.below(256) % self.memfds.len()),
            3 if !self.eventfds.is_empty() => FdRef::Event(i.below(256) % self.eventfds.len()),
            _ => self.new_eventfd(),
        }
    }

    fn raw(&self, r: FdRef) -> RawFd {
        match r {
            FdRef::Mem(k) => self.memfds[k].file.as_raw_fd(),
            FdRef::Event(k) => self.eventfds[k].as_raw_fd(),
        }
    }

    /// Panics if a memfd changed size, or changed outside the ranges handed over as memory.
    fn assert_untouched_outside_handed(&self) {
        for (k, m) in self.memfds.iter().enumerate() {
            let len = m.file.metadata().expect("memfd stat").len();
            assert_eq!(len, m.initial.len() as u64, "memfd {k} changed size");
            let mut now = vec![0u8; m.initial.len()];
            m.file.read_exact_at(&mut now, 0).expect("read memfd");
            if now == m.initial {
                continue;
            }
            // Compare only what lies outside every handed-over range.
            let mut allowed: Vec<(u64, u64)> =
                m.handed.iter().map(|&(o, l)| (o.min(len), o.saturating_add(l).min(len))).collect();
            allowed.sort_unstable();
            let mut at = 0u64;
            for (a, b) in allowed.into_iter().chain([(len, len)]) {
                if a > at && now[at as usize..a as usize] != m.initial[at as usize..a as usize] {
                    let off = (at..a).find(|&o| now[o as usize] != m.initial[o as usize]).expect("a difference");
                    panic!(
                        "memfd {k} (handed over as memory at {:x?}) was written at byte {off:#x}: {:#04x} -> {:#04x}",
                        m.handed, m.initial[off as usize], now[off as usize]
                    );
                }
                at = at.max(b);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The PMD

fn free_all(pool: &mut PacketPool, pkts: impl IntoIterator<Item = vswitch_datapath::Packet>) {
    for p in pkts {
        pool.free(p);
    }
}

/// One burst each way on a freshly attached pair, then the pair is stopped and dropped.
fn exercise(mut north: Northbound, mut south: Southbound, chan: &Channel<MemcpyEngine>, pool: &mut PacketPool) {
    let mut out = Burst::new();
    if south.dequeue_burst(chan, pool, 8).is_ok() {
        chan.submit();
        chan.progress();
        let _ = south.complete(chan, pool, &mut out, 8);
    }
    if let Some(mut p) = pool.alloc() {
        pool.set_len(&mut p, 60);
        pool.data_mut(&mut p).fill(0x3c);
        out.push(p);
    }
    let _ = north.enqueue_burst(chan, pool, &mut out);
    free_all(pool, out);
    chan.submit();
    chan.progress();
    let _ = north.complete(chan, pool);
    let _ = north.drain(chan, pool);
    let mut rest = Vec::new();
    let _ = south.drain(chan, pool, &mut rest);
    free_all(pool, rest);
    north.clear(chan, pool);
    south.clear(chan, pool);
}

/// The fake PMD thread's command channel (started on first use, shared by every device).
pub fn pmd() -> Sender<PortCommand> {
    static PMD: OnceLock<Mutex<Sender<PortCommand>>> = OnceLock::new();
    let tx = PMD.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<PortCommand>();
        std::thread::Builder::new()
            .name("fuzz-pmd".into())
            .spawn(move || {
                let chan = Channel::new(MemcpyEngine::new(64), Policy::default());
                let mut pool = PacketPool::new(64, 2048);
                for cmd in rx {
                    match cmd {
                        PortCommand::Attach { north, south, .. } => {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                exercise(north, south, &chan, &mut pool)
                            }));
                            if r.is_err() {
                                eprintln!("the PMD panicked serving an attached queue pair");
                                std::process::abort();
                            }
                        }
                        PortCommand::Detach { reply, .. } => {
                            let _ = reply.send(Vec::new());
                        }
                    }
                }
            })
            .expect("spawn the PMD thread");
        Mutex::new(tx)
    });
    tx.lock().expect("PMD sender").clone()
}

// ---------------------------------------------------------------------------------------------
// The frontend

/// What the frontend saw of one session.
#[derive(Debug, Default)]
struct Seen {
    closed: bool,
    desync: bool,
}

/// The frontend's end of one connection.
pub struct Frontend {
    s: UnixStream,
    seen: Seen,
    sent: usize,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend").field("sent", &self.sent).field("closed", &self.seen.closed).finish()
    }
}

/// A reply as received.
#[derive(Debug)]
struct Reply {
    request: u32,
    flags: u32,
    payload: Vec<u8>,
}

fn u64_at(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

impl Frontend {
    fn new(s: UnixStream) -> Self {
        s.set_read_timeout(Some(REPLY_TIMEOUT)).expect("read timeout");
        s.set_write_timeout(Some(REPLY_TIMEOUT)).expect("write timeout");
        Frontend { s, seen: Seen::default(), sent: 0 }
    }

    /// Sends `bytes` with `fds` on the first byte; `false` once the backend has closed.
    fn send(&mut self, bytes: &[u8], fds: &[RawFd]) -> bool {
        let mut cmsg = [0u64; 32];
        let mut off = 0;
        let mut first = true;
        while off < bytes.len() {
            let mut iov =
                libc::iovec { iov_base: bytes[off..].as_ptr() as *mut libc::c_void, iov_len: bytes.len() - off };
            // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            if first && !fds.is_empty() {
                let n = std::mem::size_of_val(fds) as u32;
                msg.msg_control = cmsg.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                msg.msg_controllen = unsafe { libc::CMSG_SPACE(n) } as _;
                assert!(msg.msg_controllen <= std::mem::size_of_val(&cmsg));
                // SAFETY: `msg_control` points at `cmsg`, which has room for CMSG_SPACE(n) bytes
                // (asserted); the header and the fds are written inside it.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(n) as _;
                    std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), n as usize);
                }
            }
            // SAFETY: `msg` points at `iov` (inside `bytes`) and `cmsg`, alive for the call, which
            // only reads them. MSG_NOSIGNAL: a closed peer is EPIPE, not SIGPIPE.
            let r = unsafe { libc::sendmsg(self.s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                        self.seen.closed = true;
                        return false;
                    }
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        panic!("the backend stopped reading: a send blocked for {REPLY_TIMEOUT:?}")
                    }
                    _ => panic!("sendmsg: {e}"),
                }
            }
            off += r as usize;
            first = false;
        }
        true
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` at end of stream before the first byte.
    fn read_exact_or_eof(&mut self, buf: &mut [u8], what: &str) -> bool {
        let mut got = 0;
        while got < buf.len() {
            match self.s.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return false,
                Ok(0) => panic!("{what}: the connection ended inside a reply ({got} of {} bytes)", buf.len()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    panic!("{what}: the session hung (no reply and no close within {REPLY_TIMEOUT:?})")
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return false,
                Err(e) => panic!("{what}: read: {e}"),
            }
        }
        true
    }

    /// The next reply, or `None` if the backend closed the connection.
    fn reply(&mut self, what: &str) -> Option<Reply> {
        let mut h = [0u8; 12];
        if !self.read_exact_or_eof(&mut h, what) {
            self.seen.closed = true;
            return None;
        }
        let word = |k: usize| u32::from_ne_bytes(h[k..k + 4].try_into().expect("4 bytes"));
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        assert!(size <= MAX_PAYLOAD, "{what}: reply announces {size} bytes");
        let mut payload = vec![0u8; size];
        assert!(self.read_exact_or_eof(&mut payload, what) || size == 0, "{what}: reply payload missing");
        Some(Reply { request, flags, payload })
    }

    /// Sends one message and checks what comes back against the protocol. `false` once the
    /// connection is closed.
    fn exchange(&mut self, code: u32, flags: u32, size: u32, payload: &[u8], fds: &[RawFd]) -> bool {
        if self.seen.closed {
            return false;
        }
        let mut bytes = Vec::with_capacity(12 + payload.len());
        bytes.extend_from_slice(&code.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        bytes.extend_from_slice(payload);
        self.sent += 1;
        let what =
            format!("message {} (request {code}, flags {flags:#x}, {} bytes, {} fds)", self.sent, size, fds.len());
        if size as usize != payload.len() {
            self.seen.desync = true;
        }
        if !self.send(&bytes, fds) {
            return false;
        }
        if self.seen.desync {
            return true;
        }
        let untrusted = flags & 3 != VERSION || flags & REPLY != 0 || size as usize > MAX_PAYLOAD;
        if untrusted {
            // The header cannot be trusted: the session must close, answering nothing.
            if let Some(r) = self.reply(&what) {
                panic!("{what}: an untrusted header got a reply {r:?} instead of a close");
            }
            return false;
        }
        if has_own_reply(code) {
            let Some(r) = self.reply(&what) else { return false };
            assert!(answered(code), "{what}: a refused request got a reply {r:?}");
            assert_eq!((r.request, r.flags), (code, VERSION | REPLY), "{what}: reply header");
            if code == req::SET_LOG_BASE {
                // The log is mapped: an empty reply (what QEMU and DPDK expect with LOG_SHMFD).
                assert!(r.payload.is_empty(), "{what}: SET_LOG_BASE reply of {} bytes", r.payload.len());
                return true;
            }
            assert_eq!(r.payload.len(), 8, "{what}: reply size");
            let v = u64_at(&r.payload);
            match code {
                req::GET_FEATURES => assert_eq!(v, offered_features(), "{what}: features"),
                req::GET_PROTOCOL_FEATURES => assert_eq!(v, offered_protocol_features().bits(), "{what}"),
                req::GET_QUEUE_NUM => assert_eq!(v, QUEUE_PAIRS as u64, "{what}: queue pairs"),
                _ => {
                    assert_eq!(payload.len(), 8, "{what}: GET_VRING_BASE answered a malformed request");
                    let asked = u32::from_ne_bytes(payload[..4].try_into().expect("index"));
                    assert_eq!(v as u32, asked, "{what}: GET_VRING_BASE answers another vring");
                    // Split: a 16-bit index. Packed: the avail position (index and wrap counter)
                    // in bits 0..16 and the used one in bits 16..32, equal once the ring drained.
                    let num = v >> 32;
                    assert!(
                        num <= u16::MAX as u64 || num & 0xffff == num >> 16,
                        "{what}: a vring base {num:#x} that is neither a split index nor a drained packed position"
                    );
                }
            }
        } else if flags & NEED_REPLY != 0 {
            let Some(r) = self.reply(&what) else { return false };
            assert_eq!((r.request, r.flags, r.payload.len()), (code, VERSION | REPLY, 8), "{what}: ack {r:?}");
            assert!(u64_at(&r.payload) <= 1, "{what}: ack value {}", u64_at(&r.payload));
        }
        true
    }

    /// Closes the sending side and waits for the backend to close its end: nothing may come first
    /// (while the stream is in step), and it must come within the timeout.
    fn finish(mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        if self.seen.closed && !self.seen.desync {
            return;
        }
        loop {
            let mut b = [0u8; 4096];
            match self.s.read(&mut b) {
                Ok(0) => return,
                Ok(n) if !self.seen.desync => {
                    panic!(
                        "after message {}: {n} bytes the frontend never asked for: {:x?}",
                        self.sent,
                        &b[..n.min(24)]
                    )
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("the session did not end after the frontend closed ({e})"),
            }
        }
    }

    /// Decodes and sends the next message of the input.
    fn message(&mut self, i: &mut Input<'_>, fds: &mut Fds) -> bool {
        let sel = i.u8() % 48;
        let code = if sel < 44 { sel as u32 + 1 } else { i.u32() };
        let fb = i.u8();
        let mut flags = VERSION | if fb & 1 != 0 { NEED_REPLY } else { 0 };
        if fb & 0x80 != 0 {
            flags = i.u32();
        }
        let pb = i.u8();
        let mut carried: Vec<FdRef> = Vec::new();
        let (payload, size) = if pb & 0x80 != 0 {
            let n = i.u16() as usize % 0x1100;
            let mut p = i.bytes(n).to_vec();
            p.resize(n, 0);
            let size = if pb & 0x40 != 0 { i.u16() as u32 % 0x1100 } else { n as u32 };
            (p, size)
        } else {
            let p = Self::payload(code, i, fds, &mut carried);
            let n = p.len() as u32;
            (p, n)
        };
        let tb = i.u8();
        if tb & 1 != 0 {
            carried.pop();
        }
        if tb & 2 != 0 {
            carried.push(fds.spec(i));
        }
        if code == req::SET_MEM_TABLE && payload.len() >= MEMORY_HDR {
            // Whatever the switch could map: region k of the payload from fd k.
            for (k, r) in payload[MEMORY_HDR..].chunks_exact(MEMORY_REGION).enumerate() {
                if let Some(FdRef::Mem(m)) = carried.get(k) {
                    let (len, offset) = (u64_at(&r[8..]), u64_at(&r[24..]));
                    fds.memfds[*m].handed.push((offset, len));
                }
            }
        }
        if code == req::SET_LOG_BASE && payload.len() >= 16 {
            // The dirty log: `mmap_size`, `mmap_offset` of the first fd.
            if let Some(FdRef::Mem(m)) = carried.first() {
                let (size, offset) = (u64_at(&payload[..8]), u64_at(&payload[8..]));
                fds.memfds[*m].handed.push((offset, size));
            }
        }
        let raw: Vec<RawFd> = carried.iter().map(|&r| fds.raw(r)).collect();
        self.exchange(code, flags, size, &payload, &raw)
    }

    fn vring_index(i: &mut Input<'_>) -> u32 {
        let b = i.u8();
        if b & 0x80 != 0 {
            i.u32()
        } else {
            b as u32 % 6
        }
    }

    /// The payload of `code` in its own layout (fds it carries go to `carried`).
    fn payload(code: u32, i: &mut Input<'_>, fds: &mut Fds, carried: &mut Vec<FdRef>) -> Vec<u8> {
        let mut e = Encoder::default();
        match code {
            req::SET_FEATURES => {
                let v = match i.u8() % 3 {
                    0 => offered_features(),
                    1 => offered_features() & i.u64(),
                    _ => i.u64(),
                };
                e.u64(v);
            }
            req::SET_PROTOCOL_FEATURES => {
                let all = offered_protocol_features().bits();
                let v = match i.u8() % 3 {
                    0 => all,
                    1 => all & i.u64(),
                    _ => i.u64(),
                };
                e.u64(v);
            }
            req::SET_MEM_TABLE => {
                let nb = i.u8();
                let n = nb as usize % 10;
                e.u32(if nb & 0x80 != 0 { i.u32() } else { n as u32 }).u32(0);
                let mut prev_end = 0u64;
                for k in 0..n {
                    let gpa = match i.u8() % 4 {
                        0 => 0,
                        1 => (i.u8() as u64) << 20,
                        2 => i.u64(),
                        _ => prev_end,
                    };
                    let len = match i.u8() % 4 {
                        0 => TEMPLATE_LEN as u64,
                        1 => (1 + i.below(16) as u64) << 12,
                        2 => i.u64(),
                        _ => i.u16() as u64,
                    };
                    let user = match i.u8() % 3 {
                        0 => USER_BASE + ((k as u64) << 24),
                        1 => USER_BASE + ((i.u8() as u64) << 24),
                        _ => i.u64(),
                    };
                    let offset = match i.u8() % 4 {
                        0 | 1 => 0,
                        2 => (i.below(16) as u64) << 12,
                        _ => i.u64(),
                    };
                    prev_end = gpa.wrapping_add(len);
                    e.u64(gpa).u64(len).u64(user).u64(offset);
                    let fd = match i.u8() % 4 {
                        0 | 1 => {
                            let flen = offset.checked_add(len).filter(|&l| l <= 1 << 18).unwrap_or(TEMPLATE_LEN as u64);
                            let c = Fds::content(i, gpa.wrapping_sub(offset));
                            fds.new_memfd(flen, c)
                        }
                        2 => {
                            let flen = Fds::size(i);
                            let c = Fds::content(i, gpa);
                            fds.new_memfd(flen, c)
                        }
                        _ => fds.spec(i),
                    };
                    carried.push(fd);
                }
            }
            req::SET_LOG_BASE => {
                let size = match i.u8() % 3 {
                    0 => 0x1000,
                    1 => i.u16() as u64,
                    _ => i.u64(),
                };
                let offset = match i.u8() % 3 {
                    0 => 0,
                    1 => (i.below(4) as u64) << 12,
                    _ => i.u64(),
                };
                e.u64(size).u64(offset);
                match i.u8() % 4 {
                    0 | 1 => {
                        let flen = offset.checked_add(size).filter(|&l| l <= 1 << 18).unwrap_or(0x1000);
                        let c = Fds::content(i, 0);
                        carried.push(fds.new_memfd(flen, c));
                    }
                    2 => carried.push(fds.spec(i)),
                    _ => {}
                }
            }
            req::SET_VRING_NUM | req::SET_VRING_BASE | req::GET_VRING_BASE | req::SET_VRING_ENABLE => {
                let index = Self::vring_index(i);
                let m = i.u8() % 3;
                let num = match (code, m) {
                    (_, 2) => i.u32(),
                    (req::SET_VRING_NUM, 0) => TEMPLATE_QSIZE as u32,
                    (req::SET_VRING_NUM, _) => 1 << (i.u8() % 16),
                    (req::SET_VRING_ENABLE, 0) => 1,
                    (req::SET_VRING_BASE, 1) => i.u16() as u32,
                    _ => 0,
                };
                e.u32(index).u32(num);
            }
            req::SET_VRING_ADDR => {
                let index = Self::vring_index(i);
                e.u32(index).u32(0);
                let rings = TEMPLATE_RINGS[index as usize % 2];
                // desc, used, avail: the payload's order.
                for part in [0, 2, 1] {
                    let a = match i.u8() % 4 {
                        0 | 1 => USER_BASE + rings[part],
                        2 => USER_BASE + ((i.below(8) as u64) << 24) + i.u16() as u64,
                        _ => i.u64(),
                    };
                    e.u64(a);
                }
                e.u64(0);
            }
            req::SET_VRING_KICK | req::SET_VRING_CALL | req::SET_VRING_ERR => {
                let index = Self::vring_index(i);
                let m = i.u8();
                let v = if m & 2 != 0 { i.u64() } else { (index as u64 & 0xff) | if m & 1 != 0 { 0x100 } else { 0 } };
                e.u64(v);
                if m & 1 == 0 {
                    let fd = if m & 4 != 0 {
                        // The hostile case: guest memory (or any file) offered as an eventfd.
                        match fds.memfds.len() {
                            0 => fds.new_memfd(TEMPLATE_LEN as u64, template(0)),
                            n => FdRef::Mem(i.below(256) % n),
                        }
                    } else {
                        fds.new_eventfd()
                    };
                    carried.push(fd);
                }
            }
            _ => {}
        }
        e.0
    }
}

/// The second frontend: a plain, valid setup of queue pair 0 on the ring template, every request
/// with NEED_REPLY; panics unless every step is acked with 0 and answered right. Returns the
/// memfd of its guest memory.
pub fn good_frontend(s: UnixStream, fds: &mut Fds) -> File {
    let mut f = Frontend::new(s);
    let ack = |f: &mut Frontend, code: u32, payload: &[u8], carry: &[RawFd]| {
        let what = format!("the second frontend's request {code}");
        assert!(f.send(&frame(code, VERSION | NEED_REPLY, payload), carry), "{what}: connection closed");
        let r = f.reply(&what).unwrap_or_else(|| panic!("{what}: connection closed"));
        assert_eq!((r.request, r.payload.len()), (code, 8), "{what}");
        assert_eq!(u64_at(&r.payload), 0, "{what} refused: the device was not reset cleanly");
    };
    let ask = |f: &mut Frontend, code: u32, payload: &[u8]| -> u64 {
        let what = format!("the second frontend's request {code}");
        assert!(f.send(&frame(code, VERSION, payload), &[]), "{what}: connection closed");
        let r = f.reply(&what).unwrap_or_else(|| panic!("{what}: connection closed"));
        assert_eq!((r.request, r.payload.len()), (code, 8), "{what}");
        u64_at(&r.payload)
    };
    assert_eq!(ask(&mut f, req::GET_FEATURES, &[]), offered_features());
    // The template's rings are split: everything offered but packed rings.
    ack(&mut f, req::SET_FEATURES, &(offered_features() & !(1 << 34)).to_le_bytes(), &[]);
    let pf = ask(&mut f, req::GET_PROTOCOL_FEATURES, &[]);
    ack(&mut f, req::SET_PROTOCOL_FEATURES, &pf.to_le_bytes(), &[]);
    let mem = fds.new_memfd(TEMPLATE_LEN as u64, template(0));
    if let FdRef::Mem(m) = mem {
        fds.memfds[m].handed.push((0, TEMPLATE_LEN as u64));
    }
    let mut table = Encoder::default();
    table.u32(1).u32(0).u64(0).u64(TEMPLATE_LEN as u64).u64(USER_BASE).u64(0);
    ack(&mut f, req::SET_MEM_TABLE, &table.0, &[fds.raw(mem)]);
    for v in 0..2u32 {
        let [desc, avail, used] = TEMPLATE_RINGS[v as usize];
        ack(&mut f, req::SET_VRING_NUM, &Encoder::default().u32(v).u32(TEMPLATE_QSIZE as u32).0, &[]);
        let addr = Encoder::default()
            .u32(v)
            .u32(0)
            .u64(USER_BASE + desc)
            .u64(USER_BASE + used)
            .u64(USER_BASE + avail)
            .u64(0)
            .0
            .clone();
        ack(&mut f, req::SET_VRING_ADDR, &addr, &[]);
        ack(&mut f, req::SET_VRING_BASE, &Encoder::default().u32(v).u32(0).0, &[]);
        let call = fds.new_eventfd();
        ack(&mut f, req::SET_VRING_CALL, &(v as u64).to_le_bytes(), &[fds.raw(call)]);
        let kick = fds.new_eventfd();
        ack(&mut f, req::SET_VRING_KICK, &(v as u64).to_le_bytes(), &[fds.raw(kick)]);
    }
    for v in 0..2u32 {
        ack(&mut f, req::SET_VRING_ENABLE, &Encoder::default().u32(v).u32(1).0, &[]);
    }
    let base = ask(&mut f, req::GET_VRING_BASE, &Encoder::default().u32(1).u32(0).0);
    assert_eq!(base as u32, 1, "GET_VRING_BASE answers vring 1");
    f.finish();
    let FdRef::Mem(m) = mem else { unreachable!("a memfd") };
    fds.memfds[m].file.try_clone().expect("dup the memfd")
}

/// The used idx of the template's RX and TX rings in `mem`.
fn template_used_idx(mem: &File) -> [u16; 2] {
    TEMPLATE_RINGS.map(|[_, _, used]| {
        let mut b = [0u8; 2];
        mem.read_exact_at(&mut b, used + 2).expect("read the used idx");
        u16::from_le_bytes(b)
    })
}

/// A message with a payload whose size the header tells truthfully.
fn frame(code: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + payload.len());
    b.extend_from_slice(&code.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    b.extend_from_slice(payload);
    b
}

/// What the device thread reports.
#[derive(Debug)]
struct Report {
    first_disconnect: Result<(), String>,
    attached_after_first: bool,
    attaches_before_second: u64,
    attaches_after_second: u64,
    second_disconnect: Result<(), String>,
    attached_at_end: bool,
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // libFuzzer's `main` is not Rust's: SIGPIPE is not ignored there. Sends use MSG_NOSIGNAL,
        // but be safe for any write the switch makes to a closed peer.
        // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        drop(pmd());
    });
}

/// Runs one input.
pub fn run(data: &[u8]) {
    init();
    let fds_before = open_fds();
    let mut fds = Fds::default();
    let (front, back) = UnixStream::pair().expect("socket pair");
    let (front2, back2) = UnixStream::pair().expect("socket pair");
    let (done_tx, done_rx) = mpsc::channel();
    let cfg = DeviceConfig::new("fuzz", 0, pmd(), Duration::from_secs(5));
    let device = std::thread::Builder::new()
        .name("fuzz-vhost-user".into())
        .spawn(move || {
            let mut dev = VhostUserDevice::with_queue_pairs(cfg, QUEUE_PAIRS);
            let stop = AtomicBool::new(false);
            Session::new(Connection::new(back), &mut dev, "fuzz").run(&stop);
            let first_disconnect = dev.disconnect().map_err(|e| e.to_string());
            let attached_after_first = dev.is_attached();
            let attaches_before_second = dev.attaches();
            Session::new(Connection::new(back2), &mut dev, "fuzz-again").run(&stop);
            let attaches_after_second = dev.attaches();
            let second_disconnect = dev.disconnect().map_err(|e| e.to_string());
            let _ = done_tx.send(Report {
                first_disconnect,
                attached_after_first,
                attaches_before_second,
                attaches_after_second,
                second_disconnect,
                attached_at_end: dev.is_attached(),
            });
        })
        .expect("spawn the device thread");

    let mut f = Frontend::new(front);
    let mut i = Input::new(data);
    let mut n = 0;
    while !i.is_empty() && n < MAX_MESSAGES {
        n += 1;
        if !f.message(&mut i, &mut fds) {
            break;
        }
    }
    f.finish();
    let mem2 = good_frontend(front2, &mut fds);

    let r = done_rx
        .recv_timeout(REPLY_TIMEOUT * 2)
        .unwrap_or_else(|e| panic!("the device thread did not finish after both frontends left ({e})"));
    device.join().expect("device thread");
    assert_eq!(r.first_disconnect, Ok(()), "disconnecting the device after the fuzzed frontend");
    assert!(!r.attached_after_first, "a queue pair stayed attached after disconnect");
    assert_eq!(r.attaches_after_second, r.attaches_before_second + 1, "the second frontend's queue pair attached once");
    assert_eq!(r.second_disconnect, Ok(()), "disconnecting the device after the second frontend");
    assert!(!r.attached_at_end);
    // The PMD served the second frontend's pair: all 4 TX chains forwarded into the 4 RX buffers.
    assert_eq!(template_used_idx(&mem2), [4, 4], "used idx of RX and TX after the second frontend's burst");
    fds.assert_untouched_outside_handed();
    drop(mem2);
    drop(fds);
    assert_eq!(open_fds(), fds_before, "file descriptors leaked");
}
