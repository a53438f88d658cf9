//! Surviving guest memory that vanishes under the switch.
//!
//! A vhost-user frontend hands over its guest memory as file descriptors, and the switch maps
//! them shared. The frontend keeps the file: it may shrink it (`ftruncate`) while the switch runs,
//! and the next access to a page past the new end of file raises `SIGBUS`, whose default action
//! kills the whole switch, every port. `SET_MEM_TABLE` refuses regions beyond the file's size at
//! the time (fstat), which covers a bad table; this module covers a file that shrinks later.
//!
//! Each shared file mapping is registered here ([`guard`]) for its lifetime. A process-wide
//! `SIGBUS` handler looks the faulting address up in the registry. If a registered mapping holds
//! it, the handler maps anonymous zero pages over that whole mapping (`MAP_FIXED`, same address,
//! same length) and flags it as lost; the faulting access is then restarted and completes on the
//! zero pages. The datapath checks the flag once per burst and breaks the queues that use that
//! memory ([`VirtqError::MemoryLost`](crate::VirtqError::MemoryLost)), so only that guest's port
//! stops. A fault at any other address goes to the handler that was installed before (Rust's
//! stack-overflow handler, or the default action), as if this module were not there.
//!
//! The handler is async-signal-safe: it reads fixed static slots with atomics and makes one
//! `mmap` system call. A slot is registered before its mapping is used and unregistered only when
//! the mapping is dropped, which happens after every user of it (queues, copies in flight) is gone,
//! so a fault never races with the unregistration of its own slot.

#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// How many shared mappings may be registered at once (vhost-user allows 8 regions per frontend).
pub const SLOTS: usize = 1024;

struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    lost: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise the array below
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    lost: AtomicBool::new(false),
};

static REGISTRY: [Slot; SLOTS] = [EMPTY; SLOTS];

/// The `SIGBUS` action that was installed before ours (to pass on faults that are not ours).
static PREVIOUS: OnceLock<Result<libc::sigaction, i32>> = OnceLock::new();

/// A registered mapping. Dropping it unregisters the range: drop it before unmapping.
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Whether the mapping's file shrank under it and its pages were replaced by zero pages.
    #[inline]
    pub fn lost(&self) -> bool {
        REGISTRY[self.slot].lost.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &REGISTRY[self.slot];
        s.len.store(0, Ordering::Release);
        s.lost.store(false, Ordering::Release);
        s.used.store(false, Ordering::Release);
    }
}

/// Registers the page-aligned mapping `start .. start + len` so that a `SIGBUS` inside it is
/// survived (installing the handler on first use). Fails if every slot is taken or the handler
/// cannot be installed.
pub fn guard(start: usize, len: usize) -> io::Result<Guard> {
    install()?;
    for (i, s) in REGISTRY.iter().enumerate() {
        if s.used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            s.lost.store(false, Ordering::Release);
            s.start.store(start, Ordering::Release);
            s.len.store(len, Ordering::Release);
            return Ok(Guard { slot: i });
        }
    }
    Err(io::Error::other("too many guest memory mappings registered for SIGBUS recovery"))
}

fn install() -> io::Result<()> {
    let prev = PREVIOUS.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill; `on_sigbus` has the SA_SIGINFO
        // signature; sigaction only reads `act` and writes `old`, both valid for the call.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &act, &mut old) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(old)
        }
    });
    match prev {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::from_raw_os_error(*e)),
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in REGISTRY.iter() {
        if !s.used.load(Ordering::Acquire) {
            continue;
        }
        let (start, len) = (s.start.load(Ordering::Acquire), s.len.load(Ordering::Acquire));
        if addr >= start && addr - start < len {
            // SAFETY: `start .. start + len` is a live mapping that this crate created and still
            // owns (its slot is registered); replacing it with private anonymous memory at the
            // same address changes what its pages hold, never which addresses are mapped, and no
            // Rust reference points into it (all access is through raw pointers).
            let r = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                s.lost.store(true, Ordering::SeqCst);
                return; // the faulting access restarts on the zero pages
            }
        }
    }
    // Not ours: what would have happened without this module.
    match PREVIOUS.get() {
        Some(Ok(prev)) if prev.sa_sigaction != libc::SIG_DFL && prev.sa_sigaction != libc::SIG_IGN => {
            if prev.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the previous handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
                f(sig);
            }
        }
        _ => {
            // SAFETY: resetting SIGBUS to its default action; returning re-executes the faulting
            // access, which then takes the default action (the process dies with SIGBUS).
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}
