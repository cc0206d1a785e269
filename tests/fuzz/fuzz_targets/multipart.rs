//! Fuzz target: see `callguard::fuzzing::fuzz_multipart`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callguard::fuzzing::fuzz_multipart(data));
