//! Fuzz target: see `callguard::fuzzing::fuzz_spool_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callguard::fuzzing::fuzz_spool_name(data));
