#![no_main]
// moat::fuzzing::session_cookie: see gateway/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat::fuzzing::session_cookie(data));
