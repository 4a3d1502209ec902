//! The fuzz targets' functions on stable, with proptest's inputs: arbitrary
//! bytes, and bytes near the real inputs (the seed corpus of `fuzz/`).

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn policy_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        policy(&bytes);
    }

    #[test]
    fn policy_text_never_panics(text in "[\\[\\]a-z_.=\"0-9/ \n{},:-]{0,400}") {
        policy(text.as_bytes());
    }

    #[test]
    fn paths_normalise_to_a_fixed_point(text in "[/%.a-zA-Z0-9;\\\\?#~_-]{0,64}") {
        request_path(text.as_bytes());
    }

    #[test]
    fn request_path_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        request_path(&bytes);
    }

    #[test]
    fn no_arbitrary_cookie_opens(text in "[A-Za-z0-9_.-]{0,200}") {
        session_cookie(text.as_bytes());
    }

    #[test]
    fn dicom_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        dicom(&bytes);
    }

    #[test]
    fn mllp_framer_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        mllp(&bytes);
    }
}

/// The seed corpus is read too: each real input passes through its target.
#[test]
fn every_seed_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Target = fn(&[u8]);
    let targets: [(&str, Target); 5] = [
        ("policy", policy),
        ("request_path", request_path),
        ("session_cookie", session_cookie),
        ("dicom", dicom),
        ("mllp", mllp),
    ];
    for (name, target) in targets {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            target(&bytes);
            n += 1;
        }
        assert!(n > 0, "no seeds for {name}");
    }
}
