//! The submission portal: where a descriptor leaves the engine. The [`Portal`] trait stands
//! between the engine and the device, so the hardware portal and the device model
//! ([`crate::model`]) share every line of descriptor, batch and completion code.
//!
//! This module owns the hardware portal ([`HwPortal`]): opening `/dev/dsa/wqN.M`, mapping its
//! 4 KiB portal page, and writing descriptors with MOVDIR64B (dedicated WQ) or ENQCMD (shared
//! WQ). It is the crate's only module touching memory-mapped I/O or issuing these instructions;
//! it knows nothing of tickets, batches or completion records.

#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;

use crate::cpu;
use crate::desc::HwDesc;
use crate::error::DsaError;
use crate::sysfs::{WqInfo, WqMode};

/// A shared WQ was full: the descriptor was not accepted; submit it again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry;

/// Where descriptors are submitted: a work queue's portal, or something standing where it stands.
pub trait Portal: Send {
    /// Dedicated or shared. On a dedicated portal `submit` never returns [`Retry`]: the caller must
    /// never have more descriptors outstanding than the WQ holds (the device drops the excess).
    fn mode(&self) -> WqMode;

    /// Hands one descriptor to the device. Every store the caller made before (descriptor lists,
    /// cleared completion records) is visible to the device before the descriptor is.
    ///
    /// The descriptor is copied: it may be reused when this returns.
    ///
    /// # Safety
    ///
    /// The device reads and writes the memory the descriptor names, after this returns: its
    /// completion record (a 32-byte aligned [`CompletionRecord`](crate::desc::CompletionRecord)),
    /// a batch's descriptor list (64-byte aligned [`DescSlot`](crate::desc::DescSlot)s, unchanged
    /// meanwhile) and the buffers of every copy (valid, disjoint, untouched by anyone else). All of
    /// it must stay valid until the device has written the completion record, or the batch's.
    unsafe fn submit(&mut self, desc: &HwDesc) -> Result<(), Retry>;
}

/// The mapped portal of one user work queue (`/dev/dsa/wqN.M`).
#[derive(Debug)]
pub struct HwPortal {
    /// Start of the 4 KiB write-only portal page.
    page: *mut u8,
    /// Keeps the WQ open for as long as the mapping exists.
    _file: std::fs::File,
    mode: WqMode,
}

// SAFETY: the portal page is a device register window, not Rust-owned memory; submitting from
// another thread is fine as long as one thread at a time does (`submit` takes `&mut self`).
unsafe impl Send for HwPortal {}

const PORTAL_SIZE: usize = 4096;

impl HwPortal {
    /// Opens and maps the portal of `wq`, after checking that this CPU can submit to it.
    ///
    /// # Errors
    ///
    /// [`DsaError::NoCpuSupport`] without MOVDIR64B (dedicated) or ENQCMD (shared);
    /// [`DsaError::Io`] when the device cannot be opened (missing, or no permission: the file
    /// belongs to root unless udev or `chmod` says otherwise) or mapped.
    pub fn open(wq: &WqInfo) -> Result<Self, DsaError> {
        let cpu = cpu::detect();
        match wq.mode {
            WqMode::Dedicated if !cpu.movdir64b => return Err(DsaError::NoCpuSupport("MOVDIR64B", "dedicated")),
            WqMode::Shared if !cpu.enqcmd => return Err(DsaError::NoCpuSupport("ENQCMD", "shared")),
            _ => {}
        }
        let io = |source| DsaError::Io { path: wq.dev_path.clone(), source };
        let file = OpenOptions::new().read(true).write(true).open(&wq.dev_path).map_err(io)?;
        // SAFETY: a fresh shared mapping of the WQ's portal chosen by the kernel (no address
        // hint), write-only as the idxd driver requires; it aliases no Rust object.
        let page = unsafe {
            libc::mmap(core::ptr::null_mut(), PORTAL_SIZE, libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if page == libc::MAP_FAILED {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(HwPortal { page: page.cast(), _file: file, mode: wq.mode })
    }
}

impl Portal for HwPortal {
    fn mode(&self) -> WqMode {
        self.mode
    }

    #[inline]
    unsafe fn submit(&mut self, desc: &HwDesc) -> Result<(), Retry> {
        #[cfg(target_arch = "x86_64")]
        {
            let src: *const HwDesc = desc;
            match self.mode {
                WqMode::Dedicated => {
                    // SAFETY: `open` checked CPUID for MOVDIR64B; `page` is the live, 64-byte
                    // aligned portal mapping (kept until drop) and `src` a 64-byte aligned
                    // `HwDesc`.
                    unsafe { movdir64b(self.page, src) };
                    Ok(())
                }
                WqMode::Shared => {
                    let retry: u8;
                    // SAFETY: as above, with ENQCMD (checked in `open`); ZF set means the WQ
                    // did not accept the descriptor.
                    unsafe {
                        core::arch::asm!(
                            "sfence",
                            "enqcmd {dst}, zmmword ptr [{src}]",
                            "setz {retry}",
                            dst = in(reg) self.page,
                            src = in(reg) src,
                            retry = out(reg_byte) retry,
                            options(nostack),
                        );
                    }
                    if retry != 0 {
                        Err(Retry)
                    } else {
                        Ok(())
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // `open` refuses every WQ on other architectures (no MOVDIR64B/ENQCMD).
            let _ = desc;
            unreachable!("DSA portal on a CPU without MOVDIR64B/ENQCMD")
        }
    }
}

/// One 64-byte direct store of `*src` to `dst`, after an SFENCE that orders the caller's earlier
/// stores (cleared records, batch lists) before this weakly ordered store.
///
/// # Safety
///
/// The CPU has MOVDIR64B; `dst` is 64-byte aligned and valid for a 64-byte write (a portal, or
/// ordinary memory); `src` is valid for a 64-byte read.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn movdir64b(dst: *mut u8, src: *const HwDesc) {
    // SAFETY: the caller's contract above; the instruction touches only those 128 bytes.
    unsafe {
        core::arch::asm!(
            "sfence",
            "movdir64b {dst}, zmmword ptr [{src}]",
            dst = in(reg) dst,
            src = in(reg) src,
            options(nostack, preserves_flags),
        );
    }
}

impl Drop for HwPortal {
    fn drop(&mut self) {
        // SAFETY: `page` is the mapping made in `open`, unmapped once; the engine that owns this
        // portal has waited for (or leaked the memory of) every descriptor in flight.
        unsafe { libc::munmap(self.page.cast(), PORTAL_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MOVDIR64B also stores to ordinary write-back memory, so on a CPU that has it (this one
    /// does) the instruction the dedicated portal uses is checked here: operand order, encoding,
    /// all 64 bytes written. What a real portal does with them only hardware shows.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn movdir64b_stores_the_whole_descriptor() {
        if !cpu::detect().movdir64b {
            return;
        }
        let mut d = HwDesc::memmove(0x1111_2222_3333_4444, 0x5555_6666_7777_8888, 4096, 0x40, 0xc);
        d.op_specific = [9, 10, 11];
        let mut target = HwDesc::default();
        // SAFETY: this CPU has MOVDIR64B (checked); both are 64-byte aligned `HwDesc`s on the
        // stack, valid for 64 bytes.
        unsafe { movdir64b((&mut target as *mut HwDesc).cast(), &d) };
        // SAFETY: MFENCE has no operands or preconditions. (The direct store is weakly ordered,
        // so the read-back below waits for it.)
        unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
        assert_eq!(core::hint::black_box(target), d);
    }
}
