//! libFuzzer driver of the `http` target (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blockcast_fuzz::http(data));
