use super::*;
use crate::policy::http::{Glob, RequestRule};

/// A request target for a path.
fn target(path: &str) -> http::Uri {
    path.parse().unwrap()
}

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
    assert_eq!(n("/a/..%2F").map_err(|_| ()), Err(()));
}

#[test]
fn each_character_has_one_spelling() {
    // pchars decoded, everything else encoded in upper-case hex.
    assert_eq!(n("/api/%24batch").unwrap(), "/api/$batch");
    assert_eq!(n("/a%3d%40%3A%21").unwrap(), "/a=@:!");
    assert_eq!(n("/%7Euser").unwrap(), "/~user");
    assert_eq!(n("/a%7cb").unwrap(), "/a%7Cb");
    assert_eq!(n("/a|b\"{}x").unwrap(), "/a%7Cb%22%7B%7Dx");
    assert_eq!(n("/a%3fb%23c").unwrap(), "/a%3Fb%23c");
    // Already normal: returned as it is, without allocating.
    assert!(matches!(
        normalize_path("/a;x=1/b").unwrap(),
        Cow::Borrowed(_)
    ));
    assert!(matches!(
        normalize_path("/pumps/12/status").unwrap(),
        Cow::Borrowed(_)
    ));
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
        "/a%+1",
        "*",
        "firmware",
        // what Tomcat and Jetty read as dot or empty segments
        "/a/..;/firmware/x",
        "/a/..;x=1/firmware/x",
        "/a/.;/firmware/x",
        "/a/%2e%2e;/firmware/x",
        "/a/;x/../firmware/x",
        "/;jsessionid=1",
        // decoded before ;parameters are dropped, by some
        "/firmware%3bx/y",
        "/firmware%3Bx/y",
        // what Windows trims
        "/firmware./x",
        "/firmware%2e/x",
        "/firmware%20/x",
        "/firmware.%20/x",
        "/firmware...",
        "/firmware.;x/y",
        "/firmware;x./y",
        // NTFS data streams and 8.3 short names
        "/firmware/x::$DATA",
        "/cfg.ini:$DATA",
        "/cfg.ini:s:$DATA",
        "/FIRMWA~1/x",
        "/FIRMWA%7e1/x",
        // beyond ASCII, controls
        "/%c0%ae%c0%ae/firmware/x",
        "/caf%C3%A9",
        "/caf\u{e9}",
        "/a%09b",
        "/a%7f",
        "/a%1b",
        // a second layer of encoding
        "/a%252e",
        // '..' over an empty segment: /x or /a/x, by whether '//' is merged
        "/a//../x",
        "/a/.//../x",
    ] {
        assert_eq!(n(p), Err(Reason::BadRequest), "{p}");
    }
    let d = normalize_path("/a/..;/firmware/x").unwrap_err();
    assert!(d.detail.unwrap().contains("dot segment"));
}

#[test]
fn near_misses_stay_allowed() {
    for (raw, normal) in [
        ("/a/./b/../c", "/a/c"),
        ("/a.b/c.html", "/a.b/c.html"),
        ("/a%20b/c", "/a%20b/c"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a;jsessionid=1/b", "/a;jsessionid=1/b"),
        ("/~user/x", "/~user/x"),
        ("/a~b1", "/a~b1"),
        ("/api/v1/pump:start", "/api/v1/pump:start"),
        ("/a//b/../c", "/a/c"),
        ("/..", "/"),
    ] {
        assert_eq!(n(raw).as_deref(), Ok(normal), "{raw}");
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
    assert!(check_request(
        &p,
        &Method::POST,
        "/firmware/status",
        &target("/firmware/status"),
        &h
    )
    .is_ok());
    let d = check_request(
        &p,
        &Method::POST,
        "/firmware/upload",
        &target("/firmware/upload"),
        &h,
    )
    .unwrap_err();
    assert_eq!(d.reason, Reason::RequestDenied);
    assert_eq!(d.detail.as_deref(), Some("deny post /firmware/*"));
    assert!(check_request(
        &p,
        &Method::GET,
        "/firmware/upload",
        &target("/firmware/upload"),
        &h
    )
    .is_ok());
}

#[test]
fn limits_and_connect() {
    let p = policy(vec![]);
    let mut h = HeaderMap::new();
    h.insert("content-length", "101".parse().unwrap());
    assert_eq!(
        check_request(&p, &Method::POST, "/", &target("/"), &h)
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
        check_request(&p, &Method::GET, "/", &target("/"), &h)
            .unwrap_err()
            .reason,
        Reason::HeadersTooLarge
    );
    let mut h = HeaderMap::new();
    h.insert("x-big", "a".repeat(3000).parse().unwrap());
    assert_eq!(
        check_request(&p, &Method::GET, "/", &target("/"), &h)
            .unwrap_err()
            .reason,
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

fn rule(action: RuleAction, methods: &[&str], path: &str) -> RequestRule {
    RequestRule {
        action,
        methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
        path: Glob::new(path).unwrap(),
        text: format!("{action:?} {} {path}", methods.join(",")),
    }
}

fn denied(p: &HttpPolicy, method: Method, path: &str) -> Option<String> {
    check_rules(p, &method, path).err().map(|d| {
        assert_eq!(d.reason, Reason::RequestDenied);
        d.detail.unwrap()
    })
}

#[test]
fn rules_see_through_case_and_path_parameters() {
    let p = policy(vec![deny_post_firmware()]);
    assert_eq!(
        denied(&p, Method::POST, "/FIRMWARE/upload").unwrap(),
        "deny post /firmware/* (path read ignoring case)"
    );
    assert_eq!(
        denied(&p, Method::POST, "/firmware;x=1/upload").unwrap(),
        "deny post /firmware/* (path read without ;parameters)"
    );
    assert_eq!(
        denied(&p, Method::POST, "/Firmware;jsessionid=ab/up").unwrap(),
        "deny post /firmware/* (path read without ;parameters, ignoring case)"
    );
    assert_eq!(without_params("/a/b"), "/a/b");
    assert_eq!(without_params("/A;x/b;y=2;z"), "/A/b");
}

#[test]
fn every_reading_gets_its_own_first_match() {
    use RuleAction::{Allow, Deny};
    // Lower-casing alone let /OK through: a case-sensitive device serves
    // another resource for /OK than the allowed /ok.
    let p = policy(vec![rule(Allow, &["GET"], "/ok"), rule(Deny, &[], "*")]);
    assert_eq!(denied(&p, Method::GET, "/ok"), None);
    assert_eq!(denied(&p, Method::GET, "/OK").unwrap(), "Deny  *");
    assert!(denied(&p, Method::GET, "/ok;x").is_some());
    // A pattern is kept as written and also met ignoring case.
    let p = policy(vec![rule(Deny, &[], "/Admin/*")]);
    assert!(denied(&p, Method::GET, "/admin/x").is_some());
    assert!(denied(&p, Method::GET, "/ADMIN/x").is_some());
    assert_eq!(denied(&p, Method::GET, "/admins/x"), None);
    // An allow for the exact spelling, a deny for any other.
    let p = policy(vec![
        rule(Allow, &[], "/Status"),
        rule(Deny, &[], "/status"),
    ]);
    assert_eq!(denied(&p, Method::GET, "/Status"), None);
    assert!(denied(&p, Method::GET, "/status").is_some());
    // No spelling is denied where it is allowed ignoring case, and no
    // rule names /STATUS as written.
    assert_eq!(denied(&p, Method::GET, "/STATUS"), None);
    // A ;parameter an allow rule names does not shield the bare path's deny.
    let p = policy(vec![rule(Allow, &[], "/a;v=1/*"), rule(Deny, &[], "/a/*")]);
    assert!(denied(&p, Method::GET, "/a;v=1/x").is_some());
    assert_eq!(denied(&p, Method::GET, "/b;v=1/x"), None);
}

#[test]
fn head_is_also_read_as_get() {
    use RuleAction::{Allow, Deny};
    // Flask, Express, Go and PHP run the GET handler for HEAD: a denied
    // GET (a reboot, a firmware download) must not run as HEAD.
    let p = policy(vec![rule(Deny, &["GET"], "/api/reboot")]);
    assert_eq!(
        denied(&p, Method::HEAD, "/api/reboot").unwrap(),
        "Deny GET /api/reboot (HEAD read as GET)"
    );
    assert_eq!(
        denied(&p, Method::HEAD, "/API/reboot;x").unwrap(),
        "Deny GET /api/reboot (path read without ;parameters, ignoring case) (HEAD read as GET)"
    );
    assert_eq!(denied(&p, Method::HEAD, "/api/status"), None);
    // Reading HEAD as GET only ever adds refusals: an allow for GET does
    // not lift a deny that names HEAD or every method.
    let p = policy(vec![rule(Allow, &["GET"], "/ui/*"), rule(Deny, &[], "*")]);
    assert!(denied(&p, Method::HEAD, "/ui/x").is_some());
    assert_eq!(denied(&p, Method::GET, "/ui/x"), None);
    let p = policy(vec![rule(Deny, &["HEAD"], "/x")]);
    assert!(denied(&p, Method::HEAD, "/x").is_some());
    assert_eq!(denied(&p, Method::GET, "/x"), None);
}

mod readings;

#[test]
fn a_method_named_in_the_query_is_judged_too() {
    let deny_delete = RequestRule {
        action: RuleAction::Deny,
        methods: vec![Method::DELETE],
        path: Glob::new("/pumps/*").unwrap(),
        text: "deny DELETE /pumps/*".into(),
    };
    let p = policy(vec![deny_delete]);
    let check = |target: &str| {
        let uri: http::Uri = target.parse().unwrap();
        check_overrides(&p, &Method::POST, uri.path(), &uri, None)
    };
    for target in [
        "/pumps/3?_method=DELETE",
        "/pumps/3?a=1&_method=delete",
        "/pumps/3?%5Fmethod=DELETE",
        "/pumps/3?_METHOD=+DELETE+",
        "/pumps/3?X-HTTP-Method-Override=DELETE",
    ] {
        let d = check(target).unwrap_err();
        assert_eq!(d.reason, Reason::RequestDenied, "{target}");
        assert_eq!(
            d.detail.as_deref(),
            Some("deny DELETE /pumps/* (method read from the query: DELETE)"),
            "{target}"
        );
    }
    assert!(check("/pumps/3?_method=PUT").is_ok());
    assert!(check("/pumps/3?method=DELETE&x_y=1").is_ok());
    assert!(check("/pumps/3").is_ok());
    assert_eq!(
        check("/pumps/3?_method=DEL%20ETE").unwrap_err().reason,
        Reason::BadRequest
    );
}

#[test]
fn a_webdav_destination_is_judged_like_the_path() {
    let deny_firmware = RequestRule {
        action: RuleAction::Deny,
        methods: vec![],
        path: Glob::new("/firmware/*").unwrap(),
        text: "deny * /firmware/*".into(),
    };
    let p = policy(vec![deny_firmware]);
    let uri: http::Uri = "/ok/a".parse().unwrap();
    let with = |dest: &str| {
        let mut h = HeaderMap::new();
        h.insert("destination", http::HeaderValue::from_str(dest).unwrap());
        check_request(&p, &Method::from_bytes(b"MOVE").unwrap(), "/ok/a", &uri, &h)
    };
    for dest in [
        "/firmware/x",
        "http://pump.example/firmware/x",
        "/ok/../firmware/x",
        "/FIRMWARE/x",
    ] {
        let d = with(dest).unwrap_err();
        assert_eq!(d.reason, Reason::RequestDenied, "{dest}");
        assert!(d.detail.unwrap().ends_with("(the Destination path)"));
    }
    assert_eq!(
        with("/a/..;/firmware/x").unwrap_err().reason,
        Reason::BadRequest
    );
    assert_eq!(with("not a uri").unwrap_err().reason, Reason::BadRequest);
    assert!(with("/ok/b").is_ok());
}

#[test]
fn h2_cookie_crumbs_count_as_one_header() {
    // max_headers is 4 in this policy.
    let p = policy(vec![]);
    let mut h = HeaderMap::new();
    for i in 0..10 {
        h.append(
            http::header::COOKIE,
            http::HeaderValue::from_str(&format!("c{i}=v")).unwrap(),
        );
    }
    h.insert("accept", http::HeaderValue::from_static("*/*"));
    assert!(check_request(&p, &Method::GET, "/", &target("/"), &h).is_ok());
    for name in ["a", "b", "c", "d"] {
        h.insert(name, http::HeaderValue::from_static("x"));
    }
    let d = check_request(&p, &Method::GET, "/", &target("/"), &h).unwrap_err();
    assert_eq!(d.detail.as_deref(), Some("6 headers, limit 4"));
}
