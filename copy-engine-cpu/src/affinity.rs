//! Pinning the calling thread to one CPU (`sched_setaffinity`). Control plane only: the worker
//! thread calls it once, before it touches the ring.
//!
//! This module owns the `cpu_set_t` handling and nothing else.

use std::io;

/// The highest CPU number a `cpu_set_t` can name, plus one.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The highest CPU number a `cpu_set_t` can name, plus one (no pinning on this platform).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const MAX_CPUS: usize = 0;

/// Pins the calling thread to `cpu`. The caller checks `cpu < MAX_CPUS`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE`, so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid, initialised `cpu_set_t` of the size passed; pid 0 names the calling
    // thread.
    let rc = unsafe { libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu`: not supported on this platform.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn pin_current_thread(_cpu: usize) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "CPU pinning needs sched_setaffinity"))
}

/// The CPUs the calling thread may run on (for tests: a CPU that pinning must accept).
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: all zeroes is a valid empty `cpu_set_t`.
    let mut set: libc::cpu_set_t = unsafe { core::mem::zeroed() };
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity: {}", io::Error::last_os_error());
    // SAFETY: every index is below CPU_SETSIZE.
    (0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}
