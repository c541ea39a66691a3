//! libFuzzer driver of the `sender` target (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blockcast_fuzz::sender(data));
