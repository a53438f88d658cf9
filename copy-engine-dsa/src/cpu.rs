//! CPU support for DSA submission: CPUID leaf 7, sub-leaf 0, ECX bit 28 (MOVDIR64B, dedicated
//! WQs) and bit 29 (ENQCMD, shared WQs).
//!
//! This module only asks the CPU; it submits nothing.

// `__cpuid` is an `unsafe fn` before Rust 1.87 and safe after: the block below is needed on the
// workspace's minimum Rust and redundant on newer ones.
#![allow(unsafe_code)]

/// What the CPU offers for submitting descriptors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSupport {
    /// MOVDIR64B (64-byte direct store): submission to dedicated WQs.
    pub movdir64b: bool,
    /// ENQCMD (enqueue command with a retry status): submission to shared WQs.
    pub enqcmd: bool,
}

/// Asks this CPU.
pub fn detect() -> CpuSupport {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is asked for only when leaf 0 says it
        // exists, and CPUID has no other precondition.
        let (max_leaf, ecx) = unsafe {
            let max = core::arch::x86_64::__cpuid(0).eax;
            (max, if max >= 7 { core::arch::x86_64::__cpuid_count(7, 0).ecx } else { 0 })
        };
        if max_leaf < 7 {
            return CpuSupport::default();
        }
        CpuSupport { movdir64b: ecx & (1 << 28) != 0, enqcmd: ecx & (1 << 29) != 0 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    CpuSupport::default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn detection_agrees_with_proc_cpuinfo() {
        let d = super::detect();
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else { return };
        let has = |f: &str| flags.split_whitespace().any(|w| w == f);
        assert_eq!(d.movdir64b, has("movdir64b"), "MOVDIR64B");
        // The kernel hides `enqcmd` from cpuinfo unless it supports PASID for user space, so only
        // one direction holds.
        if has("enqcmd") {
            assert!(d.enqcmd, "ENQCMD");
        }
    }
}
