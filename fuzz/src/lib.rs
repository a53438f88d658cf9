//! Fuzz targets for `vswitch-datapath`, as plain functions: each `run(&[u8])` decodes one input,
//! drives the switch's code with it, and panics when an invariant breaks. The libFuzzer binaries
//! (`fuzz_targets/`, feature `fuzzer`) and the corpus-replay test (`tests/replay.rs`) both call
//! them, so a crash found by the fuzzer replays as a plain `cargo test`.
//!
//! - [`split_ring`]: the device side of a split virtqueue against a model of the spec.
//! - [`packed_ring`]: the device side of a packed virtqueue against a model of the spec.
//! - [`net_header`]: the virtio-net header view and the southbound header check.
//! - [`guest_memory`]: region layouts, translation and guest-memory accesses.
//! - [`vhost_user`]: the vhost-user session and device over a real socket with real fds.
//!
//! Each module's first doc section gives its input layout and its invariants. `unsafe` code here
//! is the harness playing the guest or the frontend (raw guest-memory stores, `sendmsg` with
//! `SCM_RIGHTS`, `memfd_create`), never a way around the switch's API.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod guest;
pub mod guest_memory;
pub mod input;
pub mod net_header;
pub mod packed_ring;
pub mod seeds;
pub mod split_ring;
pub mod vhost_user;

/// Whether `VSWITCH_FUZZ_TRACE` is set: the targets then log what each input did (for
/// debugging a crash or checking that a seed reaches what it should).
pub fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VSWITCH_FUZZ_TRACE").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// A target: runs one input, panicking when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets, by name, as the fuzz binaries, the corpus directories and `scripts/fuzz.sh`
/// name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("split_ring", split_ring::run),
    ("packed_ring", packed_ring::run),
    ("net_header", net_header::run),
    ("guest_memory", guest_memory::run),
    ("vhost_user", vhost_user::run),
];
