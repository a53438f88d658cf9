//! libFuzzer entry point; the target's logic and invariants are in [`vswitch_fuzz::packed_ring`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vswitch_fuzz::packed_ring::run(data));
