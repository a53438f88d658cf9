//! Test support: a raw vhost-user frontend that sends any message, in any order, with any payload
//! and descriptors, and reads replies with a timeout. It shares no code with the switch's framing,
//! so what it proves about the wire format is independent of it.

#![allow(dead_code)] // Each test binary uses a different part of it.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Request codes (vhost-user spec).
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

/// Header flags.
pub const VERSION: u32 = 1;
/// The REPLY flag of a header.
pub const REPLY: u32 = 4;
/// The NEED_REPLY flag of a header.
pub const NEED_REPLY: u32 = 8;
/// VHOST_USER_F_PROTOCOL_FEATURES.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
/// VIRTIO_F_RING_PACKED: acked only by frontends whose rings are packed.
pub const RING_PACKED: u64 = 1 << 34;
/// VHOST_USER_PROTOCOL_F_MQ | VHOST_USER_PROTOCOL_F_REPLY_ACK.
pub const PF_MQ_REPLY_ACK: u64 = (1 << 0) | (1 << 3);

/// One reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as a u64 (panics if it is not 8 bytes).
    pub fn u64(&self) -> u64 {
        u64::from_ne_bytes(self.payload[..].try_into().expect("an 8-byte reply"))
    }
}

/// The frontend end of a vhost-user connection.
#[derive(Debug)]
pub struct RawFrontend {
    sock: UnixStream,
}

impl RawFrontend {
    /// Connects to `path`, retrying for a few seconds while the switch comes up.
    pub fn connect(path: &Path) -> RawFrontend {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => return RawFrontend { sock },
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {}: {e}", path.display()),
            }
        }
    }

    /// Sends a message: header (`request`, `flags | VERSION`, body length), body, `fds`.
    pub fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(12 + body.len());
        bytes.extend_from_slice(&request.to_ne_bytes());
        bytes.extend_from_slice(&(flags | VERSION).to_ne_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_ne_bytes());
        bytes.extend_from_slice(body);
        self.send_bytes(&bytes, fds)
    }

    /// Sends raw bytes (a malformed message, for instance) with `fds` on the first byte.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut cmsg = [0u64; 32];
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE computes a size; `cmsg` has 256 bytes, enough for 32 fds.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(len) } as _;
            // SAFETY: the control buffer is msg_controllen bytes long and 8-aligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(len) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), len as usize);
            }
        }
        // SAFETY: `msg` describes live buffers; MSG_NOSIGNAL turns a closed peer into EPIPE.
        let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The rest (if the kernel took only part) goes without descriptors.
        let mut sent = n as usize;
        while sent < bytes.len() {
            sent += std::io::Write::write(&mut self.sock, &bytes[sent..])?;
        }
        Ok(())
    }

    /// Reads one reply, waiting at most `timeout`: `Ok(None)` if none came in time, an
    /// `UnexpectedEof` error if the switch closed the connection.
    pub fn recv(&mut self, timeout: Duration) -> std::io::Result<Option<Reply>> {
        self.sock.set_read_timeout(Some(timeout))?;
        let mut hdr = [0u8; 12];
        match self.sock.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().unwrap());
        let mut payload = vec![0u8; word(8) as usize];
        self.sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        self.sock.read_exact(&mut payload)?;
        Ok(Some(Reply { request: word(0), flags: word(4), payload }))
    }

    /// Sends a request and waits for its reply (panics on no reply or a closed connection).
    pub fn call(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> Reply {
        self.send(request, flags, body, fds).expect("send");
        let r = self.recv(Duration::from_secs(10)).expect("the switch closed the connection").expect("a reply");
        assert_eq!(r.request, request, "reply to the request sent");
        assert_eq!(r.flags & 0x7, REPLY | VERSION, "reply flags");
        r
    }

    /// A request acknowledged with REPLY_ACK: `true` if the switch accepted it.
    pub fn acked(&mut self, request: u32, body: &[u8], fds: &[RawFd]) -> bool {
        match self.call(request, NEED_REPLY, body, fds).u64() {
            0 => true,
            1 => false,
            v => panic!("REPLY_ACK value {v}"),
        }
    }

    /// Whether the switch closed the connection (EOF within `timeout`, and nothing else came).
    pub fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        matches!(self.recv(timeout), Err(e) if e.kind() == ErrorKind::UnexpectedEof)
    }
}

/// A u64 payload.
pub fn u64_body(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A vring state payload (index, num).
pub fn state(index: u32, num: u32) -> Vec<u8> {
    let mut v = index.to_ne_bytes().to_vec();
    v.extend_from_slice(&num.to_ne_bytes());
    v
}

/// A vring address payload.
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut v = index.to_ne_bytes().to_vec();
    v.extend_from_slice(&0u32.to_ne_bytes());
    for a in [desc, used, avail, 0] {
        v.extend_from_slice(&a.to_ne_bytes());
    }
    v
}

/// A `SET_VRING_ADDR` payload with `VHOST_VRING_F_LOG` (live migration): the used ring is logged
/// at guest-physical `log_gpa`, as QEMU sends it when dirty logging starts.
pub fn vring_addr_logged(index: u32, desc: u64, used: u64, avail: u64, log_gpa: u64) -> Vec<u8> {
    let mut v = index.to_ne_bytes().to_vec();
    v.extend_from_slice(&1u32.to_ne_bytes());
    for a in [desc, used, avail, log_gpa] {
        v.extend_from_slice(&a.to_ne_bytes());
    }
    v
}

/// A memory table payload: `(gpa, size, user_addr, mmap_offset)` per region.
pub fn mem_table(regions: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let mut v = (regions.len() as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(&0u32.to_ne_bytes());
    for &(gpa, size, ua, off) in regions {
        for x in [gpa, size, ua, off] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
    }
    v
}
