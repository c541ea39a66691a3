//! libFuzzer driver of the `catalog` target (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blockcast_fuzz::catalog(data));
