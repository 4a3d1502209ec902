#![no_main]
// moat::fuzzing::dicom: see gateway/src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| moat::fuzzing::dicom(data));
