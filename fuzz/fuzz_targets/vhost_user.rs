//! libFuzzer entry point; the target's logic and invariants are in [`vswitch_fuzz::vhost_user`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vswitch_fuzz::vhost_user::run(data));
