//! libFuzzer driver of the `origin` target (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blockcast_fuzz::origin(data));
