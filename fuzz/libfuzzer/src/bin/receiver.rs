//! libFuzzer driver of the `receiver` target (fuzz/src/lib.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| blockcast_fuzz::receiver(data));
