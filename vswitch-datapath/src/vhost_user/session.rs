//! [`Session`]: the message loop of one frontend connection: decode each request, check it, hand
//! it to the [`VhostUserDevice`], and answer it.
//!
//! The loop is ours rather than the `vhost` crate's `BackendReqHandler`, on the crate's request
//! codes and payload layouts, because the frontends we serve need a different contract from the
//! one that handler enforces:
//!
//! - **Any order the frontends use.** QEMU 7.2 sends `SET_VRING_ENABLE` at device reset, before
//!   `SET_FEATURES`; DPDK's vhost library records it, the crate's handler refuses it (the feature
//!   is not acked yet) and the rings of a single-queue QEMU guest never start. Here an enable is
//!   recorded whenever it comes and takes effect once `VHOST_USER_F_PROTOCOL_FEATURES` is acked
//!   (vhost-user spec, "Ring states").
//! - **Never silence.** A request with a reply of its own (`GET_FEATURES`, `GET_VRING_BASE`, ...)
//!   is answered, or, when it is refused and there is no honest answer, the connection is closed
//!   with a log line: a frontend never waits forever. A request without one is acked when the
//!   frontend sets NEED_REPLY (REPLY_ACK): 0 when done, 1 when refused.
//! - **Hostile input is refused, not trusted.** Payload sizes are exact, descriptor counts match
//!   the request, vring fds are eventfds, enable values are 0 or 1; a refusal is logged and
//!   counted, and the loop goes on (the stream stays in step: [`wire`](super::wire) reads exactly
//!   what a header announces). Only a header that cannot be trusted ends the connection.
//!
//! Setting `VSWITCH_VHOST_TRACE=1` in the environment logs every request and its outcome.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion, VhostUserU64, VhostUserVringAddr,
    VhostUserVringState,
};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::ByteValued;

use super::device::VhostUserDevice;
use super::memtable::UserRegion;
use super::wire::{self, Connection, Message, WireError};
use super::VhostUserError;

/// The most regions one `SET_MEM_TABLE` may carry (the spec's baseline without
/// CONFIGURE_MEM_SLOTS, which we do not offer; QEMU's and DPDK's limit too).
pub const MAX_MEM_REGIONS: usize = 8;

/// Vring fd messages: bits 0-7 are the vring index, bit 8 says "no fd" (polling).
const VRING_IDX_MASK: u64 = 0xff;
const VRING_NOFD: u64 = 0x100;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The frontend closed the socket (or the owner shut it down).
    Disconnected,
    /// The backend closed it: the reason was logged.
    Closed(String),
}

/// Counters of one session, for tests and log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests received.
    pub requests: u64,
    /// Requests refused.
    pub refused: u64,
}

/// One frontend connection being served.
#[derive(Debug)]
pub struct Session<'a> {
    conn: Connection,
    dev: &'a mut VhostUserDevice,
    name: &'a str,
    trace: bool,
    stats: SessionStats,
}

/// Whether `req` has a reply of its own (not a REPLY_ACK): refusing one of these without an answer
/// would leave the frontend waiting, so a refusal closes the connection.
fn has_own_reply(req: FrontendReq) -> bool {
    use FrontendReq as R;
    matches!(
        req,
        R::GET_FEATURES
            | R::GET_PROTOCOL_FEATURES
            | R::GET_VRING_BASE
            | R::GET_QUEUE_NUM
            | R::SET_LOG_BASE
            | R::GET_CONFIG
            | R::GET_INFLIGHT_FD
            | R::GET_MAX_MEM_SLOTS
            | R::GET_STATUS
            | R::GET_SHARED_OBJECT
            | R::SET_DEVICE_STATE_FD
            | R::CHECK_DEVICE_STATE
            | R::GET_SHMEM_CONFIG
            | R::POSTCOPY_ADVISE
    )
}

/// Requests that may carry file descriptors.
fn takes_fds(req: FrontendReq) -> bool {
    use FrontendReq as R;
    matches!(
        req,
        R::SET_MEM_TABLE
            | R::SET_VRING_KICK
            | R::SET_VRING_CALL
            | R::SET_VRING_ERR
            | R::SET_LOG_BASE
            | R::SET_LOG_FD
            | R::SET_BACKEND_REQ_FD
            | R::SET_INFLIGHT_FD
            | R::ADD_MEM_REG
            | R::SET_DEVICE_STATE_FD
    )
}

/// The payload as a `T`, if it is exactly `T`'s size.
fn body<T: ByteValued + Default>(m: &Message) -> Result<T, VhostUserError> {
    let mut v = T::default();
    if m.payload.len() != std::mem::size_of::<T>() {
        return Err(VhostUserError::BadPayload { request: m.header.request, len: m.payload.len() });
    }
    v.as_mut_slice().copy_from_slice(&m.payload);
    Ok(v)
}

fn no_payload(m: &Message) -> Result<(), VhostUserError> {
    if !m.payload.is_empty() {
        return Err(VhostUserError::BadPayload { request: m.header.request, len: m.payload.len() });
    }
    Ok(())
}

fn u64_reply(v: u64) -> Vec<u8> {
    VhostUserU64::new(v).as_slice().to_vec()
}

/// The payload of a vring fd message (`SET_VRING_KICK/CALL/ERR`): the vring index and its
/// eventfd, or `None` for "no fd" (the ring is polled).
fn vring_fd(m: &mut Message) -> Result<(u32, Option<File>), VhostUserError> {
    let v = body::<VhostUserU64>(m)?.value;
    if v & !(VRING_IDX_MASK | VRING_NOFD) != 0 {
        return Err(VhostUserError::BadPayload { request: m.header.request, len: m.payload.len() });
    }
    let index = (v & VRING_IDX_MASK) as u32;
    let want = usize::from(v & VRING_NOFD == 0);
    if m.fds.len() != want {
        return Err(VhostUserError::WrongFds { request: m.header.request, want, got: m.fds.len() });
    }
    let fd = m.fds.pop();
    if let Some(f) = &fd {
        if !wire::is_eventfd(f) {
            return Err(VhostUserError::NotAnEventfd(index));
        }
    }
    Ok((index, fd))
}

impl<'a> Session<'a> {
    /// A session serving `conn` with `dev` (named `name` in log lines).
    pub fn new(conn: Connection, dev: &'a mut VhostUserDevice, name: &'a str) -> Self {
        let trace = std::env::var_os("VSWITCH_VHOST_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
        Session { conn, dev, name, trace, stats: SessionStats::default() }
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Serves requests until the frontend goes away, the connection has to be closed, or `stop`
    /// is set (checked between requests; shutting the socket down wakes a blocked read).
    pub fn run(&mut self, stop: &AtomicBool) -> SessionEnd {
        while !stop.load(Ordering::Acquire) {
            let m = match self.conn.recv() {
                Ok(m) => m,
                Err(WireError::Disconnected) => return SessionEnd::Disconnected,
                Err(WireError::Io(e)) if stop.load(Ordering::Acquire) => {
                    let _ = e;
                    return SessionEnd::Disconnected;
                }
                Err(e) => return self.close(format!("{e}")),
            };
            if let Err(reason) = self.handle(m) {
                return self.close(reason);
            }
        }
        SessionEnd::Disconnected
    }

    fn close(&self, reason: String) -> SessionEnd {
        log::warn!("vhost-user {}: closing the connection: {reason}", self.name);
        SessionEnd::Closed(reason)
    }

    /// Handles one request; `Err` closes the connection.
    fn handle(&mut self, mut m: Message) -> Result<(), String> {
        self.stats.requests += 1;
        let hdr = m.header;
        let req = FrontendReq::try_from(hdr.request).ok();
        if self.trace {
            let shown: Vec<String> = m.payload.iter().take(48).map(|b| format!("{b:02x}")).collect();
            log::info!(
                "vhost-user {}: <- {} flags={:#x} size={} fds={} [{}]",
                self.name,
                req.map_or_else(|| format!("request {}", hdr.request), |r| format!("{r:?}")),
                hdr.flags,
                hdr.size,
                m.fds.len(),
                shown.join("")
            );
        }
        let result = match req {
            None => Err(VhostUserError::UnknownRequest(hdr.request)),
            Some(r) if !takes_fds(r) && !m.fds.is_empty() => {
                Err(VhostUserError::WrongFds { request: hdr.request, want: 0, got: m.fds.len() })
            }
            Some(r) => self.dispatch(r, &mut m),
        };
        let own_reply = req.is_some_and(has_own_reply);
        match result {
            Ok(Some(reply)) => {
                if self.trace {
                    let shown: Vec<String> = reply.iter().take(48).map(|b| format!("{b:02x}")).collect();
                    self.trace_out(&format!("-> reply {} bytes [{}]", reply.len(), shown.join("")));
                }
                self.conn.reply(hdr.request, &reply, &[]).map_err(|e| format!("sending a reply: {e}"))
            }
            Ok(None) => {
                self.trace_out("-> ok");
                if hdr.need_reply() {
                    self.conn.reply(hdr.request, &u64_reply(0), &[]).map_err(|e| format!("sending an ack: {e}"))?;
                }
                Ok(())
            }
            Err(e) => {
                self.stats.refused += 1;
                let what = req.map_or_else(|| format!("request {}", hdr.request), |r| format!("{r:?}"));
                if own_reply {
                    // There is no honest answer, and silence would hang the frontend.
                    return Err(format!("{what} refused: {e}"));
                }
                log::warn!("vhost-user {}: {what} refused: {e}", self.name);
                if hdr.need_reply() {
                    self.conn.reply(hdr.request, &u64_reply(1), &[]).map_err(|e| format!("sending a nack: {e}"))?;
                }
                Ok(())
            }
        }
    }

    fn trace_out(&self, what: &str) {
        if self.trace {
            log::info!("vhost-user {}:    {what}", self.name);
        }
    }

    /// Carries out one request: `Some(payload)` for a request with a reply of its own.
    fn dispatch(&mut self, req: FrontendReq, m: &mut Message) -> Result<Option<Vec<u8>>, VhostUserError> {
        use FrontendReq as R;
        let dev = &mut *self.dev;
        match req {
            R::GET_FEATURES => {
                no_payload(m)?;
                Ok(Some(u64_reply(dev.features())))
            }
            R::SET_FEATURES => dev.set_features(body::<VhostUserU64>(m)?.value).map(|_| None),
            R::GET_PROTOCOL_FEATURES => {
                no_payload(m)?;
                Ok(Some(u64_reply(dev.protocol_features().bits())))
            }
            R::SET_PROTOCOL_FEATURES => dev.set_protocol_features(body::<VhostUserU64>(m)?.value).map(|_| None),
            R::SET_OWNER => {
                no_payload(m)?;
                dev.set_owner().map(|_| None)
            }
            R::RESET_OWNER | R::RESET_DEVICE => {
                no_payload(m)?;
                dev.reset().map(|_| None)
            }
            R::GET_QUEUE_NUM => {
                no_payload(m)?;
                Ok(Some(u64_reply(dev.max_queue_pairs() as u64)))
            }
            R::SET_MEM_TABLE => {
                let regions = mem_table(m)?;
                dev.set_mem_table(&regions, std::mem::take(&mut m.fds)).map(|_| None)
            }
            R::SET_VRING_NUM => {
                let s = body::<VhostUserVringState>(m)?;
                dev.set_vring_num(s.index, s.num).map(|_| None)
            }
            R::SET_VRING_ADDR => {
                let a = body::<VhostUserVringAddr>(m)?;
                dev.set_vring_addr(a.index, a.descriptor, a.used, a.available).map(|_| None)
            }
            R::SET_VRING_BASE => {
                let s = body::<VhostUserVringState>(m)?;
                dev.set_vring_base(s.index, s.num).map(|_| None)
            }
            R::GET_VRING_BASE => {
                let s = body::<VhostUserVringState>(m)?;
                let base = dev.get_vring_base(s.index)?;
                Ok(Some(VhostUserVringState::new(s.index, base).as_slice().to_vec()))
            }
            R::SET_VRING_KICK => {
                let (index, fd) = vring_fd(m)?;
                dev.set_vring_kick(index, fd).map(|_| None)
            }
            R::SET_VRING_CALL => {
                let (index, fd) = vring_fd(m)?;
                dev.set_vring_call(index, fd).map(|_| None)
            }
            R::SET_VRING_ERR => {
                let (index, fd) = vring_fd(m)?;
                dev.set_vring_err(index, fd).map(|_| None)
            }
            R::SET_VRING_ENABLE => {
                let s = body::<VhostUserVringState>(m)?;
                let enable = match s.num {
                    0 => false,
                    1 => true,
                    v => return Err(VhostUserError::BadEnable(v)),
                };
                dev.set_vring_enable(s.index, enable).map(|_| None)
            }
            R::SET_LOG_BASE => {
                // The log is a shared memory fd (LOG_SHMFD); the reply says it is mapped.
                if !dev.acked_protocol_features().contains(VhostUserProtocolFeatures::LOG_SHMFD) {
                    return Err(VhostUserError::NotNegotiated(req));
                }
                let l = body::<VhostUserLog>(m)?;
                if m.fds.len() != 1 {
                    return Err(VhostUserError::WrongFds { request: m.header.request, want: 1, got: m.fds.len() });
                }
                let (size, offset) = (l.mmap_size, l.mmap_offset);
                dev.set_log_base(size, offset, m.fds.pop().expect("one fd"))?;
                Ok(Some(Vec::new()))
            }
            other => Err(VhostUserError::NotOffered(other)),
        }
    }
}

/// The regions of a `SET_MEM_TABLE` payload, as `(region, mmap_offset)`, checked against the
/// descriptors that came with it.
fn mem_table(m: &Message) -> Result<Vec<(UserRegion, u64)>, VhostUserError> {
    let hdr = std::mem::size_of::<VhostUserMemory>();
    let each = std::mem::size_of::<VhostUserMemoryRegion>();
    let bad = || VhostUserError::BadPayload { request: m.header.request, len: m.payload.len() };
    if m.payload.len() < hdr {
        return Err(bad());
    }
    let mut head = VhostUserMemory::default();
    head.as_mut_slice().copy_from_slice(&m.payload[..hdr]);
    let n = head.num_regions as usize;
    if n == 0 || n > MAX_MEM_REGIONS {
        return Err(VhostUserError::RegionCount(head.num_regions));
    }
    if m.payload.len() != hdr + n * each {
        return Err(bad());
    }
    if m.fds.len() != n {
        return Err(VhostUserError::WrongFds { request: m.header.request, want: n, got: m.fds.len() });
    }
    Ok(m.payload[hdr..]
        .chunks_exact(each)
        .map(|c| {
            let mut r = VhostUserMemoryRegion::default();
            r.as_mut_slice().copy_from_slice(c);
            (UserRegion { user_addr: r.user_addr, gpa: r.guest_phys_addr, len: r.memory_size }, r.mmap_offset)
        })
        .collect())
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.trace {
            let s = self.stats;
            log::info!(
                "vhost-user {}: session over ({} requests, {} refused, fd {})",
                self.name,
                s.requests,
                s.refused,
                self.conn.stream().as_raw_fd()
            );
        }
    }
}
