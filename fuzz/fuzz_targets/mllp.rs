#![no_main]
// moat::fuzzing::mllp: see gateway/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat::fuzzing::mllp(data));
