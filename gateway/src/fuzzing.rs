//! Entry points for the `fuzz/` crate (cargo fuzz, nightly) and for the
//! property tests that run the same functions on stable (`fuzzing/tests.rs`).
//! Each takes arbitrary bytes and must not panic, hang or grow without
//! bound; asserts inside are properties that hold for every input.

use std::path::Path;

/// The policy loader: TOML text through parsing, validation and
/// compilation, and a network-set file. Text that names a file under
/// `/dev`, `/proc` or `/sys` is only parsed: compiling reads the files a
/// policy names, and a fuzzer that finds `/dev/zero` would hang on it.
pub fn policy(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let _ = crate::config::netfile::parse(Path::new("fuzz.net"), text);
    let Ok(cfg) = crate::config::parse(path, text.to_string()) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let _ = crate::policy::compile(&cfg, 1);
}

/// Path normalisation, and the `Host` check on the same bytes.
pub fn request_path(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(path) = crate::controls::request::normalize_path(text) {
        // Normal form is a fixed point.
        let again = crate::controls::request::normalize_path(&path)
            .unwrap_or_else(|d| panic!("{path:?} was normalised but is then refused: {d:?}"));
        assert_eq!(again, path);
        assert!(path.starts_with('/'), "{path:?}");
    }
    if let Ok(host) = http::HeaderValue::from_bytes(input) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, host);
        let hosts = crate::policy::http::HostNames::default();
        let _ = crate::controls::request::check_host(
            http::Version::HTTP_11,
            &http::Uri::from_static("/"),
            &headers,
            &hosts,
            None,
        );
    }
}

/// The session cookie decoder: a forged or mangled cookie never opens.
pub fn session_cookie(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let keys = crate::auth::session::SessionKeys::new([7; 32], Some([9; 32]));
    assert!(
        keys.open(text).is_err(),
        "an arbitrary cookie opened: {text:?}"
    );
    let _ = keys.check_csrf("binding", text);
}

/// The DICOM association parsers and the data-phase framer.
pub fn dicom(input: &[u8]) {
    crate::guard::dicom::fuzz::parse_and_frame(input);
}

/// The MLLP framer and the MSH reader.
pub fn mllp(input: &[u8]) {
    crate::guard::mllp::fuzz::frame_and_read(input);
}

#[cfg(test)]
mod tests;
