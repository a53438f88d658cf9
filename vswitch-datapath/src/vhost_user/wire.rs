//! vhost-user framing on a Unix stream socket: one message is a 12-byte header (request, flags,
//! payload size), a payload of at most [`MAX_PAYLOAD`] bytes, and file descriptors passed as
//! `SCM_RIGHTS` ancillary data (vhost-user spec, "Message Specification").
//!
//! This module owns the socket calls (`recvmsg`/`sendmsg` with ancillary data, the only `unsafe`
//! of the vhost-user backend) and nothing of what a message means: that is
//! [`session`](super::session). It reads exactly the bytes the header announces, so a message the
//! session refuses leaves the stream in step; only a header it cannot trust (size beyond
//! [`MAX_PAYLOAD`], a wrong version) or a connection that ends mid-message is a [`WireError`].
//!
//! The header is our own: the `vhost` crate's header type is private to it; its request codes and
//! payload layouts are public and used by the session.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

/// Bytes in a message header.
pub const HEADER_LEN: usize = 12;
/// The largest payload a message may announce (the spec's and QEMU's 4 KiB message buffer).
pub const MAX_PAYLOAD: usize = 0x1000;
/// The most file descriptors one message may carry (more is a protocol error).
pub const MAX_FDS: usize = 32;

/// Header flag bits (vhost-user spec, "Header").
pub mod flags {
    /// Bits 0-1: the protocol version, always 1.
    pub const VERSION_MASK: u32 = 0x3;
    /// The one protocol version.
    pub const VERSION: u32 = 0x1;
    /// The message is a reply.
    pub const REPLY: u32 = 0x4;
    /// The sender wants a reply (REPLY_ACK) to a request that has none of its own.
    pub const NEED_REPLY: u32 = 0x8;
}

/// A message header as it is on the wire (native byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The request code.
    pub request: u32,
    /// Version and flag bits ([`flags`]).
    pub flags: u32,
    /// Payload bytes that follow.
    pub size: u32,
}

impl Header {
    /// Whether the sender asked for a REPLY_ACK.
    pub fn need_reply(&self) -> bool {
        self.flags & flags::NEED_REPLY != 0
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { request: word(0), flags: word(4), size: word(8) }
    }
}

/// One request as received: header, payload, and the file descriptors that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// Every descriptor received with the message (closed when dropped).
    pub fds: Vec<File>,
}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frontend closed the socket between messages.
    #[error("the frontend closed the connection")]
    Disconnected,
    /// The socket ended in the middle of a message.
    #[error("the connection ended inside a message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received of this part.
        got: usize,
        /// Bytes the part needs.
        want: usize,
    },
    /// A header announces a payload larger than [`MAX_PAYLOAD`]: its bytes cannot be skipped safely.
    #[error("a message announces {0} payload bytes (at most {MAX_PAYLOAD})")]
    TooLarge(u32),
    /// A header's version bits are not 1, or it is marked as a reply.
    #[error("a message has flags {0:#x} (version 1, not a reply, expected)")]
    BadFlags(u32),
    /// More descriptors than [`MAX_FDS`], or ancillary data the kernel had to cut.
    #[error("a message carries too many file descriptors")]
    TooManyFds,
    /// The socket call failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// A vhost-user connection (the backend's end).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
}

/// Room for [`MAX_FDS`] descriptors in one control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 256]);

const _: () = assert!(std::mem::size_of::<CmsgBuf>() >= 16 + MAX_FDS * std::mem::size_of::<RawFd>());

impl Connection {
    /// Wraps a connected (blocking) stream.
    pub fn new(stream: UnixStream) -> Self {
        Connection { stream }
    }

    /// The socket, e.g. to shut it down from another thread.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Receives the next request: its header, its whole payload and its descriptors.
    pub fn recv(&mut self) -> Result<Message, WireError> {
        let mut fds = Vec::new();
        let mut hdr = [0u8; HEADER_LEN];
        let got = self.recv_exact(&mut hdr, &mut fds)?;
        if got == 0 {
            return Err(WireError::Disconnected);
        }
        if got < HEADER_LEN {
            return Err(WireError::Truncated { got, want: HEADER_LEN });
        }
        let header = Header::from_bytes(&hdr);
        if header.flags & flags::VERSION_MASK != flags::VERSION || header.flags & flags::REPLY != 0 {
            return Err(WireError::BadFlags(header.flags));
        }
        if header.size as usize > MAX_PAYLOAD {
            return Err(WireError::TooLarge(header.size));
        }
        let mut payload = vec![0u8; header.size as usize];
        let got = self.recv_exact(&mut payload, &mut fds)?;
        if got < payload.len() {
            return Err(WireError::Truncated { got, want: payload.len() });
        }
        Ok(Message { header, payload, fds })
    }

    /// Sends a reply to `request`: `body` as the payload, `fds` as ancillary data.
    pub fn reply(&mut self, request: u32, body: &[u8], fds: &[RawFd]) -> Result<(), WireError> {
        let size = u32::try_from(body.len())
            .ok()
            .filter(|&s| s as usize <= MAX_PAYLOAD)
            .ok_or(WireError::TooLarge(u32::MAX))?;
        let hdr = Header { request, flags: flags::VERSION | flags::REPLY, size }.to_bytes();
        let mut sent = self.send_with_fds(&[IoSlice::new(&hdr), IoSlice::new(body)], fds)?;
        // A short write: send the rest without descriptors (they went with the first byte).
        let total = HEADER_LEN + body.len();
        while sent < total {
            let rest: Vec<u8> = hdr.iter().chain(body).skip(sent).copied().collect();
            let n = self.send_with_fds(&[IoSlice::new(&rest)], &[])?;
            if n == 0 {
                return Err(WireError::Io(io::ErrorKind::WriteZero.into()));
            }
            sent += n;
        }
        Ok(())
    }

    /// Fills `buf` (fewer bytes only at end of stream), collecting descriptors into `fds`.
    fn recv_exact(&mut self, buf: &mut [u8], fds: &mut Vec<File>) -> Result<usize, WireError> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.recv_some(&mut buf[got..], fds)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    }

    fn recv_some(&mut self, buf: &mut [u8], fds: &mut Vec<File>) -> Result<usize, WireError> {
        let mut cmsg = CmsgBuf([0; 256]);
        let mut iov = [IoSliceMut::new(buf)];
        // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr().cast();
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.0.len() as _;
        let n = loop {
            // SAFETY: `msg` points at `iov` (one buffer of buf.len() bytes we may write) and at
            // `cmsg` (msg_controllen bytes); both outlive the call. MSG_CMSG_CLOEXEC keeps the
            // received descriptors from leaking into children.
            let n = unsafe { libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        };
        // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
        // msg_controllen; each SCM_RIGHTS entry's data holds (cmsg_len - CMSG_LEN(0)) / 4 fds,
        // read unaligned. Each fd is new to this process and owned by no one else: File takes it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(File::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
            return Err(WireError::TooManyFds);
        }
        Ok(n)
    }

    fn send_with_fds(&mut self, parts: &[IoSlice<'_>], fds: &[RawFd]) -> Result<usize, WireError> {
        if fds.len() > MAX_FDS {
            return Err(WireError::TooManyFds);
        }
        let mut cmsg = CmsgBuf([0; 256]);
        // SAFETY: an all-zero msghdr is a valid empty one; its pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = parts.len() as _;
        if !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds) as u32;
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as _;
            // SAFETY: msg_control points at `cmsg`, which has room for CMSG_SPACE(bytes) (the
            // const assertion above); the header and the fds are written inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes as usize);
            }
        }
        loop {
            // SAFETY: `msg` points at `parts` (IoSlice is ABI-compatible with iovec) and at
            // `cmsg`, both alive for the call; the kernel only reads them. MSG_NOSIGNAL: a closed
            // peer is an EPIPE error, not a SIGPIPE that kills the switch.
            let n = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
    }
}

/// Whether `file` is an eventfd (what a vring's kick, call and error descriptors must be): its
/// `/proc/self/fd` link reads `anon_inode:[eventfd]`.
pub fn is_eventfd(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map(|p| p.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn raw(request: u32, fl: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Header { request, flags: fl, size: body.len() as u32 }.to_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn messages_split_across_writes_are_reassembled_with_their_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut front = Connection::new(a);
        let mut back = Connection::new(b);
        let f = File::open("/proc/self/exe").unwrap();
        // Header and half the payload with an fd, then the rest.
        let bytes = raw(13, flags::VERSION, &7u64.to_ne_bytes());
        let parts = [IoSlice::new(&bytes[..16])];
        assert_eq!(front.send_with_fds(&parts, &[f.as_raw_fd()]).unwrap(), 16);
        front.stream.write_all(&bytes[16..]).unwrap();
        let m = back.recv().unwrap();
        assert_eq!(m.header, Header { request: 13, flags: 1, size: 8 });
        assert_eq!(m.payload, 7u64.to_ne_bytes());
        assert_eq!(m.fds.len(), 1);
        assert!(!is_eventfd(&m.fds[0]));
    }

    #[test]
    fn untrustworthy_headers_and_early_ends_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut back = Connection::new(b);
        let mut a = a;
        a.write_all(&raw(1, flags::VERSION, &[])[..5]).unwrap();
        drop(a);
        assert!(matches!(back.recv(), Err(WireError::Truncated { got: 5, want: 12 })));

        let (mut a, b) = UnixStream::pair().unwrap();
        let mut back = Connection::new(b);
        a.write_all(&Header { request: 1, flags: 1, size: 0x1001 }.to_bytes()).unwrap();
        assert!(matches!(back.recv(), Err(WireError::TooLarge(0x1001))));
        a.write_all(&raw(1, 2, &[])).unwrap();
        assert!(matches!(back.recv(), Err(WireError::BadFlags(2))));
        a.write_all(&raw(1, flags::VERSION | flags::REPLY, &[])).unwrap();
        assert!(matches!(back.recv(), Err(WireError::BadFlags(5))));
        drop(a);
        assert!(matches!(back.recv(), Err(WireError::Disconnected)));
    }

    #[test]
    fn replies_carry_the_request_code_and_the_reply_flag() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut back = Connection::new(b);
        back.reply(11, &[1, 2, 3, 4, 5, 6, 7, 8], &[]).unwrap();
        let mut got = [0u8; 20];
        std::io::Read::read_exact(&mut &a, &mut got).unwrap();
        assert_eq!(Header::from_bytes(got[..12].try_into().unwrap()), Header { request: 11, flags: 5, size: 8 });
        assert_eq!(&got[12..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
