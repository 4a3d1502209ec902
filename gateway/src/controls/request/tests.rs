use super::*;
use crate::policy::http::{Glob, RequestRule};

fn n(p: &str) -> Result<String, Reason> {
    normalize_path(p)
        .map(|p| p.into_owned())
        .map_err(|d| d.reason)
}

#[test]
fn normalisation_resolves_what_could_bypass_a_rule() {
    assert_eq!(n("/firmware/upload").unwrap(), "/firmware/upload");
    assert_eq!(n("//firmware///upload").unwrap(), "/firmware/upload");
    assert_eq!(n("/a/../firmware/./upload").unwrap(), "/firmware/upload");
    assert_eq!(n("/%66irmware/upload").unwrap(), "/firmware/upload");
    assert_eq!(n("/%2e%2e/firmware/x").unwrap(), "/firmware/x");
    assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
    assert_eq!(n("/dir/").unwrap(), "/dir/");
    assert_eq!(n("/").unwrap(), "/");
    assert_eq!(n("/a%20b").unwrap(), "/a%20b");
}

#[test]
fn ambiguous_paths_are_refused() {
    for p in [
        "/firmware%2fupload",
        "/a%5cb",
        "/a\\b",
        "/a%00",
        "/a%zz",
        "/a%2",
        "*",
        "firmware",
    ] {
        assert_eq!(n(p), Err(Reason::BadRequest), "{p}");
    }
}

fn policy(rules: Vec<RequestRule>) -> HttpPolicy {
    let mut p = crate::policy::http::HttpPolicy {
        rules,
        max_body_bytes: 100,
        max_header_bytes: 2048,
        max_headers: 4,
        header_read_timeout: std::time::Duration::from_secs(1),
        response_timeout: std::time::Duration::from_secs(1),
        keepalive_timeout: std::time::Duration::from_secs(1),
        body_read_timeout: std::time::Duration::from_secs(1),
        min_body_rate: 0,
        host_rewrite: None,
        hardening_headers: true,
        audit_allowed: true,
        max_concurrent_streams: 10,
        upstream_tls: None,
        hosts: Default::default(),
    };
    p.max_headers = 4;
    p
}

fn deny_post_firmware() -> RequestRule {
    RequestRule {
        action: RuleAction::Deny,
        methods: vec![Method::POST],
        path: Glob::new("/firmware/*").unwrap(),
        text: "deny post /firmware/*".into(),
    }
}

#[test]
fn first_matching_rule_decides() {
    let allow_status = RequestRule {
        action: RuleAction::Allow,
        methods: vec![],
        path: Glob::new("/firmware/status").unwrap(),
        text: String::new(),
    };
    let p = policy(vec![allow_status, deny_post_firmware()]);
    let h = HeaderMap::new();
    assert!(check_request(&p, &Method::POST, "/firmware/status", &h).is_ok());
    let d = check_request(&p, &Method::POST, "/firmware/upload", &h).unwrap_err();
    assert_eq!(d.reason, Reason::RequestDenied);
    assert_eq!(d.detail.as_deref(), Some("deny post /firmware/*"));
    assert!(check_request(&p, &Method::GET, "/firmware/upload", &h).is_ok());
}

#[test]
fn limits_and_connect() {
    let p = policy(vec![]);
    let mut h = HeaderMap::new();
    h.insert("content-length", "101".parse().unwrap());
    assert_eq!(
        check_request(&p, &Method::POST, "/", &h)
            .unwrap_err()
            .reason,
        Reason::BodyTooLarge
    );
    let mut h = HeaderMap::new();
    for i in 0..5 {
        h.insert(
            http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    assert_eq!(
        check_request(&p, &Method::GET, "/", &h).unwrap_err().reason,
        Reason::HeadersTooLarge
    );
    let mut h = HeaderMap::new();
    h.insert("x-big", "a".repeat(3000).parse().unwrap());
    assert_eq!(
        check_request(&p, &Method::GET, "/", &h).unwrap_err().reason,
        Reason::HeadersTooLarge
    );
    assert_eq!(
        check_method(&Method::CONNECT).unwrap_err().reason,
        Reason::ConnectRefused
    );
    let lower = Method::from_bytes(b"post").unwrap();
    assert_eq!(check_method(&lower).unwrap_err().reason, Reason::BadRequest);
    assert!(check_method(&Method::POST).is_ok());
}

#[test]
fn rules_see_through_case_and_path_parameters() {
    let p = policy(vec![deny_post_firmware()]);
    let h = HeaderMap::new();
    for path in [
        "/FIRMWARE/upload",
        "/firmware;x=1/upload",
        "/Firmware;jsessionid=ab/up",
    ] {
        let d = check_request(&p, &Method::POST, path, &h).unwrap_err();
        assert_eq!(d.reason, Reason::RequestDenied, "{path}");
    }
    assert_eq!(match_form("/a/b"), "/a/b");
    assert_eq!(match_form("/A;x/b;y=2"), "/a/b");
}
