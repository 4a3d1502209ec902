#![no_main]
// moat::fuzzing::policy: see gateway/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat::fuzzing::policy(data));
