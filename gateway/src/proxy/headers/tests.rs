use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn names(h: &HeaderMap) -> Vec<&str> {
    h.keys().map(HeaderName::as_str).collect()
}

fn name(n: &str) -> HeaderName {
    HeaderName::from_bytes(n.as_bytes()).unwrap()
}

/// The whole forwarding family, in any case, including members no list
/// could name in advance.
#[test]
fn every_forwarding_header_is_client_asserted() {
    for n in [
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "X-Forwarded-Port",
        "X-Forwarded-Server",
        "X-Forwarded-Prefix",
        "X-Forwarded-Ssl",
        "X-Forwarded-Scheme",
        "X-Forwarded-Client-Cert",
        "X-Forwarded-Anything-New",
        "X-Forwarded",
        "Forwarded",
        "Forwarded-For",
        "X-Real-IP",
        "True-Client-IP",
        "X-Client-IP",
        "Client-IP",
        "X-Cluster-Client-IP",
        "CF-Connecting-IP",
        "Fastly-Client-IP",
        "X-Originating-IP",
        "X-Remote-IP",
        "X-Remote-Addr",
        "X-Host",
        "X-Original-Host",
        "X-ProxyUser-Ip",
        "WL-Proxy-Client-IP",
        "Proxy-Client-IP",
        "X-Envoy-External-Address",
        "X-Envoy-Internal",
        "X-SSL-Client-Cert",
        "X-Client-Cert",
        "SSL-Client-Verify",
        "Front-End-Https",
    ] {
        assert!(is_forwarding(&name(n)), "{n}");
        assert!(is_client_asserted(&name(n)), "{n}");
    }
}

#[test]
fn url_and_method_overrides_are_client_asserted() {
    for n in [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Override-URL",
        "X-Original-URI",
        "X-Envoy-Original-Path",
        "X-HTTP-DestinationURL",
    ] {
        assert!(is_url_override(&name(n)), "{n}");
        assert!(is_client_asserted(&name(n)), "{n}");
    }
    for n in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        assert!(is_method_override(&name(n)), "{n}");
        assert!(is_client_asserted(&name(n)), "{n}");
    }
}

/// CGI, PHP and WSGI servers read `_` as `-` (`HTTP_X_ORIGINAL_URL`), and
/// gunicorn takes a `SCRIPT_NAME` header as a prefix cut off the path.
#[test]
fn underscore_spellings_and_script_name_are_client_asserted() {
    for n in [
        "X_Original_URL",
        "x_rewrite-url",
        "X_Forwarded_For",
        "X_Forwarded_Host",
        "X_Real_IP",
        "X_HTTP_Method_Override",
        "SCRIPT_NAME",
        "Script-Name",
        "X-Script-Name",
        "X_SSL_Client_Cert",
    ] {
        assert!(is_client_asserted(&name(n)), "{n}");
    }
    assert!(is_url_override(&name("SCRIPT_NAME")));
    assert!(is_forwarding(&name("x_forwarded_for")));
    assert!(is_method_override(&name("x_http_method")));
    assert!(!is_client_asserted(&name("x_csrf_token")));
}

#[test]
fn ordinary_headers_pass() {
    for n in [
        "host",
        "accept",
        "cookie",
        "authorization",
        "content-type",
        "x-requested-with",
        "x-csrf-token",
        "x-forwardedfor-not-a-prefix",
        "via",
        "origin",
        "referer",
    ] {
        assert!(!is_client_asserted(&name(n)), "{n}");
        assert!(!is_hop_by_hop(&name(n)), "{n}");
    }
}

#[test]
fn stripping_removes_every_value_and_keeps_the_rest() {
    let mut h = map(&[
        ("accept", "*/*"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "7.7.7.7"),
        ("x-original-url", "/firmware/x"),
        ("connection", "keep-alive, x-drop-me"),
        ("x-drop-me", "1"),
        ("keep-alive", "timeout=5"),
        ("cookie", "a=1"),
    ]);
    strip_hop_by_hop(&mut h, false, true);
    assert_eq!(names(&h), ["accept", "cookie"]);
}

#[test]
fn responses_keep_client_asserted_names() {
    // A device's own X-Forwarded-* in a response is its business.
    let mut h = map(&[("x-forwarded-host", "d"), ("transfer-encoding", "chunked")]);
    strip_hop_by_hop(&mut h, false, false);
    assert_eq!(names(&h), ["x-forwarded-host"]);
}

#[test]
fn an_upgrade_keeps_upgrade_and_connection() {
    let mut h = map(&[
        ("connection", "Upgrade, x-drop-me"),
        ("upgrade", "websocket"),
        ("x-drop-me", "1"),
        ("x-real-ip", "6.6.6.6"),
    ]);
    strip_hop_by_hop(&mut h, true, true);
    assert_eq!(h.get("upgrade").unwrap(), "websocket");
    assert_eq!(h.get("connection").unwrap(), "upgrade");
    assert_eq!(h.len(), 2);
}

#[test]
fn connection_tokens_match_in_any_case_and_keep_alive_is_hop_by_hop_anyway() {
    let mut h = map(&[
        ("connection", "Keep-Alive, X-Drop-Me , Close"),
        ("x-drop-me", "1"),
        ("keep-alive", "timeout=5"),
        ("close", "named, so it goes too"),
        ("server", "pump"),
    ]);
    strip_hop_by_hop(&mut h, false, false);
    assert_eq!(names(&h), ["server"]);
}

#[test]
fn nothing_to_remove_changes_nothing() {
    let mut h = map(&[("accept", "*/*"), ("host", "pump")]);
    let before = h.clone();
    strip_hop_by_hop(&mut h, false, true);
    assert_eq!(h, before);
}

#[test]
fn hardening_fills_in_only_what_is_missing() {
    let mut h = map(&[("x-frame-options", "DENY")]);
    harden(&mut h, true);
    assert_eq!(h.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert!(h.contains_key("strict-transport-security"));
    assert_eq!(h.len(), 3);
    let mut h = HeaderMap::new();
    harden(&mut h, false);
    assert!(!h.contains_key("strict-transport-security"));
    assert_eq!(h.len(), 2);
}

/// What the pass reports is what is left: a cookie that `Connection`
/// named is gone, and the report says so.
#[test]
fn stripping_reports_the_cookie_that_is_left() {
    let mut h = map(&[("cookie", "a=1"), ("accept", "*/*")]);
    assert!(strip_hop_by_hop(&mut h, false, true).cookie);
    let mut h = map(&[("accept", "*/*")]);
    assert!(!strip_hop_by_hop(&mut h, false, true).cookie);
    let mut h = map(&[("connection", "Cookie"), ("cookie", "a=1")]);
    assert!(!strip_hop_by_hop(&mut h, false, true).cookie);
    assert!(h.is_empty());
}

/// A device's answer: `Connection: keep-alive` out, its own headers kept,
/// moat's hardening added where missing, moat's cookies never set.
#[test]
fn a_cleaned_response_keeps_the_device_s_own_and_adds_the_missing() {
    let mut h = map(&[
        ("server", "pump"),
        ("connection", "keep-alive"),
        ("x-content-type-options", "nosniff"),
        ("set-cookie", "SESSIONID=abc"),
        ("set-cookie", "__Host-moat-session=forged"),
    ]);
    clean_response(&mut h, false, Some(true), &["__Host-moat-session"]);
    // (A removal moves the last name into the gap: compare as a set.)
    let mut left = names(&h);
    left.sort_unstable();
    assert_eq!(
        left,
        [
            "server",
            "set-cookie",
            "strict-transport-security",
            "x-content-type-options",
            "x-frame-options"
        ]
    );
    assert_eq!(h.get_all("set-cookie").iter().count(), 1);
    assert_eq!(h.get("set-cookie").unwrap(), "SESSIONID=abc");
    // Hardening off: nothing added, the rest the same.
    let mut h = map(&[("connection", "keep-alive"), ("server", "pump")]);
    clean_response(&mut h, false, None, &["__Host-moat-session"]);
    assert_eq!(names(&h), ["server"]);
}

/// A hardening header that `Connection` names is removed as hop-by-hop;
/// moat's own takes its place (the device cannot opt out of framing
/// protection that way).
#[test]
fn a_hardening_header_named_by_connection_is_replaced_by_moat_s() {
    let mut h = map(&[
        ("connection", "X-Frame-Options, strict-transport-security"),
        ("x-frame-options", "ALLOWALL"),
        ("strict-transport-security", "max-age=0"),
        ("x-content-type-options", "nosniff"),
    ]);
    clean_response(&mut h, false, Some(true), &[]);
    assert_eq!(h.get("x-frame-options").unwrap(), "SAMEORIGIN");
    assert_eq!(
        h.get("strict-transport-security").unwrap(),
        "max-age=31536000"
    );
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert_eq!(h.len(), 3);
    // And a `Set-Cookie` it names is gone before moat looks for its own.
    let mut h = map(&[
        ("connection", "set-cookie"),
        ("set-cookie", "__Host-moat-session=forged"),
    ]);
    clean_response(&mut h, false, None, &["__Host-moat-session"]);
    assert!(h.is_empty());
}

#[test]
fn forwarded_quotes_hosts_with_ports_or_brackets() {
    let base = "for=127.0.0.1;proto=https";
    let v = |s: &str| HeaderValue::from_str(s).unwrap();
    assert_eq!(forwarded(base, None), base);
    assert_eq!(
        forwarded(base, Some(&v("pump.example"))),
        "for=127.0.0.1;proto=https;host=pump.example"
    );
    assert_eq!(
        forwarded(base, Some(&v("pump.example:8443"))),
        "for=127.0.0.1;proto=https;host=\"pump.example:8443\""
    );
    assert_eq!(
        forwarded(base, Some(&v("[::1]"))),
        "for=127.0.0.1;proto=https;host=\"[::1]\""
    );
}

#[test]
fn h2_cookie_crumbs_become_one_line() {
    let mut h = map(&[("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2; c=3")]);
    join_cookie_crumbs(&mut h);
    assert_eq!(
        h.get_all("cookie").iter().collect::<Vec<_>>(),
        ["a=1; b=2; c=3"]
    );
    let mut h = map(&[("cookie", "only=1")]);
    join_cookie_crumbs(&mut h);
    assert_eq!(h.get_all("cookie").iter().collect::<Vec<_>>(), ["only=1"]);
}

#[test]
fn a_device_cannot_set_or_clear_moat_s_cookies() {
    let mut h = HeaderMap::new();
    for v in [
        "SESSIONID=abc; Path=/",
        "__Host-moat-session=forged; Path=/; Secure",
        " __Host-moat-csrf=x",
        "__Host-moat-session2=theirs",
        "__host-moat-session=other-case",
        "=__Host-moat-session=planted; Path=/; Secure",
        " = __HOST-anything=x",
        "=plain-nameless",
    ] {
        h.append(header::SET_COOKIE, HeaderValue::from_static(v));
    }
    strip_set_cookies(&mut h, &["__Host-moat-session", "__Host-moat-csrf"]);
    let left: Vec<&str> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        left,
        [
            "SESSIONID=abc; Path=/",
            "__Host-moat-session2=theirs",
            "__host-moat-session=other-case",
            "=plain-nameless"
        ]
    );
}

#[test]
fn remove_matching_takes_every_value_of_every_doomed_name_and_keeps_the_rest() {
    // Interleaved, repeated, and as many as a hostile client may send:
    // each doomed name is found and removed whole (all its values), the
    // others keep their values and order.
    let mut pairs = vec![("accept", "*/*")];
    let doomed: Vec<String> = (0..100).map(|i| format!("x-forwarded-{i}")).collect();
    for d in &doomed {
        pairs.push((d.as_str(), "a"));
        pairs.push(("cookie", "k=v"));
        pairs.push((d.as_str(), "b"));
    }
    let mut h = map(&pairs);
    remove_matching(&mut h, is_forwarding);
    assert_eq!(names(&h), ["accept", "cookie"]);
    assert_eq!(h.get_all("cookie").iter().count(), 100);
}

/// The first-letter gate passes every name of every list, in any case
/// and spelling, and the lists are written as the gate reads them.
#[test]
fn the_first_letter_gate_lets_every_listed_name_through() {
    for list in CLIENT_ASSERTED {
        for &n in list {
            assert_eq!(n, n.to_ascii_lowercase(), "{n}: lists are lower-case");
            assert!(!n.contains('_') && !n.starts_with('-'), "{n}");
            let upper = n.to_ascii_uppercase();
            for spelling in [n.to_owned(), upper.clone(), upper.replace('-', "_")] {
                assert!(is_client_asserted(&name(&spelling)), "{spelling}");
            }
        }
    }
    for n in [
        "user-agent",
        "accept",
        "host",
        "origin",
        "if-none-match",
        "_x",
    ] {
        assert!(!is_client_asserted(&name(n)), "{n}");
    }
}

/// Room is made without losing, reordering or merging a field: repeated
/// names keep every value, in order.
#[test]
fn making_room_keeps_every_field_in_order() {
    let mut h = map(&[
        ("accept", "*/*"),
        ("cookie", "a=1"),
        ("user-agent", "pump-ui"),
        ("cookie", "b=2"),
        ("x-device", "7"),
    ]);
    make_room(&mut h, 12);
    assert!(h.capacity() >= 5 + 12, "capacity {}", h.capacity());
    assert_eq!(names(&h), ["accept", "cookie", "user-agent", "x-device"]);
    let cookies: Vec<_> = h.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(h.len(), 5);
    // Enough room already: the map is left as it is.
    let before = h.capacity();
    make_room(&mut h, 1);
    assert_eq!(h.capacity(), before);
}
