#![no_main]
// moat::fuzzing::request_path: see gateway/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat::fuzzing::request_path(data));
