//! `check_host`: which names a request may carry, and what is forwarded.

use http::{HeaderMap, HeaderValue, Uri, Version};

use super::*;
use crate::policy::http::HostNames;

fn hosts() -> HostNames {
    HostNames::parse(&["pump.ward3.example", "*.ward4.example", "10.20.0.5", "::1"]).unwrap()
}

fn headers(host: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in host {
        h.append(http::header::HOST, HeaderValue::from_str(v).unwrap());
    }
    h
}

/// `check_host` for an origin-form HTTP/1.1 request with these `Host`s.
fn h1(host: &[&str]) -> Result<Option<String>, (Reason, String)> {
    check(Version::HTTP_11, "/", host)
}

fn check(
    version: Version,
    target: &str,
    host: &[&str],
) -> Result<Option<String>, (Reason, String)> {
    let uri: Uri = target.parse().unwrap();
    check_host(version, &uri, &headers(host), &hosts(), None)
        .map(|v| v.map(|v| v.to_str().unwrap().to_string()))
        .map_err(|d| (d.reason, d.detail.unwrap_or_default()))
}

fn ok(v: &str) -> Result<Option<String>, (Reason, String)> {
    Ok(Some(v.to_string()))
}

#[test]
fn the_services_names_pass_in_normal_form() {
    assert_eq!(h1(&["pump.ward3.example"]), ok("pump.ward3.example"));
    assert_eq!(h1(&["PUMP.Ward3.Example."]), ok("pump.ward3.example"));
    assert_eq!(
        h1(&["pump.ward3.example.:8443"]),
        ok("pump.ward3.example:8443")
    );
    assert_eq!(h1(&["a.ward4.example"]), ok("a.ward4.example"));
    assert_eq!(h1(&["10.20.0.5:443"]), ok("10.20.0.5:443"));
    assert_eq!(h1(&["[::1]"]), ok("[::1]"));
    assert_eq!(h1(&["[0:0::0001]:8443"]), ok("[::1]:8443"));
    // The port is any valid port: behind a port mapping clients use the outer one.
    assert_eq!(h1(&["pump.ward3.example:1"]), ok("pump.ward3.example:1"));
    assert_eq!(
        h1(&["pump.ward3.example:0443"]),
        ok("pump.ward3.example:443")
    );
}

#[test]
fn other_names_are_misdirected() {
    for host in [
        "evil.example",
        "pump.ward3.example.evil.example",
        "ward4.example",
        "a.b.ward4.example",
        "10.20.0.6",
        "[::2]",
        "localhost",
    ] {
        let (reason, detail) = h1(&[host]).unwrap_err();
        assert_eq!(reason, Reason::MisdirectedRequest, "{host}");
        assert!(detail.contains(host), "{detail}");
    }
}

#[test]
fn malformed_missing_or_repeated_hosts_are_bad_requests() {
    for host in [
        "",
        "pump.ward3.example:",
        "pump.ward3.example:x",
        "pump.ward3.example:+80",
        "pump.ward3.example:0",
        "pump.ward3.example:65536",
        "pump.ward3.example:80:80",
        "user@pump.ward3.example",
        "::1",
        "[::1",
        "[::1]x",
        "[evil]",
        "127.1",
        "a..b",
        "pump.ward3.example/x",
        "pump_ward3 example",
        "10.20.0.5.:80x",
    ] {
        assert_eq!(h1(&[host]).unwrap_err().0, Reason::BadRequest, "{host:?}");
    }
    assert_eq!(h1(&[]).unwrap_err().0, Reason::BadRequest);
    let (reason, detail) = h1(&["pump.ward3.example", "pump.ward3.example"]).unwrap_err();
    assert_eq!(
        (reason, detail.as_str()),
        (Reason::BadRequest, "more than one Host header")
    );
    // HTTP/1.0 needs no Host: there is then no name to forward.
    assert_eq!(check(Version::HTTP_10, "/", &[]), Ok(None));
    assert_eq!(
        check(Version::HTTP_10, "/", &["evil.example"])
            .unwrap_err()
            .0,
        Reason::MisdirectedRequest
    );
}

#[test]
fn the_target_authority_must_agree_with_host() {
    // Absolute form (HTTP/1.1) or :authority (h2) alone names the host.
    assert_eq!(
        check(Version::HTTP_11, "http://pump.ward3.example/x", &[]),
        ok("pump.ward3.example")
    );
    assert_eq!(
        check(Version::HTTP_2, "https://PUMP.ward3.example:8443/", &[]),
        ok("pump.ward3.example:8443")
    );
    let (reason, _) = check(Version::HTTP_2, "https://evil.example/", &[]).unwrap_err();
    assert_eq!(reason, Reason::MisdirectedRequest);
    // With both, they must name the same host and port.
    assert_eq!(
        check(
            Version::HTTP_11,
            "http://Pump.ward3.example/",
            &["pump.ward3.example."]
        ),
        ok("pump.ward3.example")
    );
    for (target, host) in [
        ("http://evil.example/", "pump.ward3.example"),
        ("http://pump.ward3.example/", "evil.example"),
        ("http://pump.ward3.example:80/", "pump.ward3.example"),
        ("http://user@pump.ward3.example/", "pump.ward3.example"),
    ] {
        let (reason, detail) = check(Version::HTTP_11, target, &[host]).unwrap_err();
        assert_eq!(reason, Reason::BadRequest, "{target} {host}");
        assert!(detail.starts_with("request target names"), "{detail}");
    }
    assert_eq!(
        check(Version::HTTP_2, "https://x/", &[]).unwrap_err().0,
        Reason::MisdirectedRequest
    );
    assert_eq!(
        check(Version::HTTP_2, "/", &[]).unwrap_err().0,
        Reason::BadRequest
    );
}

#[test]
fn a_wildcard_listener_answers_to_the_address_the_client_reached() {
    let any = HostNames::default_for(&[], "0.0.0.0:80".parse().unwrap());
    let uri: Uri = "/".parse().unwrap();
    let local = Some("10.0.0.7".parse().unwrap());
    let h = headers(&["10.0.0.7:8080"]);
    assert!(check_host(Version::HTTP_11, &uri, &h, &any, local).is_ok());
    let h = headers(&["10.0.0.8:8080"]);
    let d = check_host(Version::HTTP_11, &uri, &h, &any, local).unwrap_err();
    assert_eq!(d.reason, Reason::MisdirectedRequest);
}

#[test]
fn audit_details_are_escaped_and_short() {
    let long = format!("{}.example", "a".repeat(200));
    let raw = HeaderValue::from_bytes(format!("evil\t\"x{long}").as_bytes()).unwrap();
    let mut h = HeaderMap::new();
    h.insert(http::header::HOST, raw);
    let uri: Uri = "/".parse().unwrap();
    let d = check_host(Version::HTTP_11, &uri, &h, &hosts(), None).unwrap_err();
    let detail = d.detail.unwrap();
    assert!(detail.contains(r#""evil\t\"xaaa"#), "{detail}");
    assert!(detail.len() < 120, "{detail}");
}
