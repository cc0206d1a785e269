//! Fuzz target: see `callguard::fuzzing::fuzz_sidecar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callguard::fuzzing::fuzz_sidecar(data));
