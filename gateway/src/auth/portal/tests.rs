use super::*;
use proptest::prelude::*;

#[test]
fn open_redirects_are_refused() {
    let attacks = [
        "",
        "//evil",
        "//evil.example/x",
        "/\\evil",
        "\\\\evil",
        "\\/evil",
        "/%2fevil",
        "/%2Fevil",
        "/%2F%2Fevil",
        "%2f%2fevil",
        "%2F/evil",
        "/%5cevil",
        "/%5Cevil",
        "/x/%5c/evil",
        "/x\\y",
        "https://evil",
        "http:/evil",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,x",
        "evil",
        "evil/path",
        ".",
        "./x",
        "?x",
        "#x",
        "/\t/evil",
        "/%09/evil",
        "/%0d%0aLocation:x",
        "/%0D%0ASet-Cookie:x=y",
        "/x%00",
        "/x%7f",
        "/x%c2%85",
        " /x",
        "/x ",
        "/a b",
        "/x\r\n",
        "/x\n",
        "/x\0",
        "\u{a0}/x",
        "/é",
        "/\u{3000}/evil",
        "/\u{ff0f}evil",
        "///evil",
        "/%252f%252fevil",
        "/%25252f%25252fevil",
        "/%2525252f%2525252fevil",
        "/%25255cevil",
        "/%2509/evil",
        "/.moat/login",
        "/.moat/logout",
        "/.moat/",
        "/.moat",
        "/.MOAT/login",
        "/.moat/login?next=/",
        "/x/../.moat/login",
        "/./.moat/login",
        "/%2emoat/login",
        "/%2Emoat/Login",
        "/.moat;x/login",
        "/.moat/session/../login",
    ];
    for a in attacks {
        assert_eq!(safe_next(a), None, "{a:?} accepted");
    }
}

#[test]
fn same_origin_paths_are_accepted_as_given() {
    for ok in [
        "/",
        "/pump/status?id=3",
        "/a%20b",
        "/pump/status?id=3&x=%2F%2Fnot-a-host",
        "/pump#readings",
        "/100%25",
        "/%",
        "/a%zz",
        "/x:y",
        "/x/evil.example",
        "/?//evil",
        "/.well-known/x",
        "/.moatx/login",
        "/x/.moat/login",
        "/.moat/session",
        "/.MOAT/Session?tab=1",
        "/%252e",
    ] {
        assert_eq!(safe_next(ok).as_deref(), Some(ok), "{ok:?} refused");
    }
}

#[test]
fn next_has_a_length_limit() {
    let long = format!("/{}", "a".repeat(MAX_NEXT_LEN - 1));
    assert_eq!(safe_next(&long).as_deref(), Some(long.as_str()));
    let longer = format!("{long}a");
    assert_eq!(safe_next(&longer), None);
}

#[test]
fn next_encoded_too_many_times_is_refused() {
    // Three decodings reach a stable form: accepted.
    assert!(safe_next("/%252525").is_some());
    // Each layer decodes to another: refused once the rounds run out.
    assert_eq!(safe_next("/%2525252525"), None);
}

#[test]
fn escape_html_escapes_the_five() {
    assert_eq!(escape_html("plain text"), "plain text");
    assert!(matches!(escape_html("plain"), Cow::Borrowed(_)));
    assert_eq!(
        escape_html(r#"<a href="x" title='y'>&amp;</a>"#),
        "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
    );
    assert_eq!(escape_html("é—\u{0}"), "é—\u{0}");
}

#[test]
fn interpolated_values_cannot_leave_their_attribute() {
    let evil = r#""><script>alert(1)</script><input value='"#;
    let page = login_page(evil, evil, false);
    assert!(!page.contains("<script"));
    assert!(!page.contains(evil));
    let escaped = escape_html(evil);
    assert!(page.contains(&format!("name=\"csrf\" value=\"{escaped}\"")));
    assert!(page.contains(&format!("name=\"next\" value=\"{escaped}\"")));
    let page = session_page(evil, 0, 0, evil);
    assert!(!page.contains("<script"));
    assert!(page.contains(&format!("<dd>{escaped}</dd>")));
    assert!(page.contains(&format!("name=\"csrf\" value=\"{escaped}\"")));
}

/// Every quoted attribute value in `html`, checked to have no raw quote,
/// `<` or `>` and returned.
fn attributes(html: &str) -> Vec<&str> {
    html.split("=\"")
        .skip(1)
        .map(|rest| {
            let value = &rest[..rest.find('"').unwrap()];
            assert!(!value.contains(['<', '>', '\'']), "{value:?}");
            value
        })
        .collect()
}

#[test]
fn the_login_page_is_complete_and_accessible() {
    let page = login_page("tok-en_1", "/pump/status?id=3&x=1", false);
    assert!(page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(page.ends_with("</html>\n"));
    assert!(page.contains("<meta charset=\"utf-8\">"));
    assert!(page.contains("<title>moat — sign in</title>"));
    assert!(page.contains("<main>"));
    assert!(page.contains("<h1>"));
    assert!(page.contains("<form method=\"post\" action=\"/.moat/login\">"));
    assert!(page.contains("<input type=\"hidden\" name=\"csrf\" value=\"tok-en_1\">"));
    assert!(
        page.contains("<input type=\"hidden\" name=\"next\" value=\"/pump/status?id=3&amp;x=1\">")
    );
    for (id, extra) in [
        ("username", "type=\"text\" autocomplete=\"username\""),
        ("password", "type=\"password\" autocomplete=\"current-password\""),
        (
            "code",
            "type=\"text\" autocomplete=\"one-time-code\" inputmode=\"numeric\" pattern=\"[0-9]{6}\"",
        ),
    ] {
        assert!(page.contains(&format!("<label for=\"{id}\">")), "{id}");
        assert!(
            page.contains(&format!("<input id=\"{id}\" name=\"{id}\" {extra}")),
            "{id}"
        );
    }
    assert!(page.contains("<button type=\"submit\">Sign in</button>"));
    assert!(!page.contains(LOGIN_ERROR));
    assert!(!page.contains("role=\"alert\""));
    attributes(&page);
}

#[test]
fn the_login_error_is_the_one_generic_message() {
    let page = login_page("t", "/", true);
    assert_eq!(LOGIN_ERROR, "Wrong username, password or code.");
    assert!(page.contains(&format!(
        "<p class=\"error\" role=\"alert\">{LOGIN_ERROR}</p>"
    )));
    assert_eq!(page.matches(LOGIN_ERROR).count(), 1);
    // The error comes before the form, where a screen reader meets it first.
    assert!(page.find(LOGIN_ERROR) < page.find("<form"));
}

#[test]
fn the_session_page_shows_the_session_and_a_logout_form() {
    let page = session_page("alice", 1_700_000_000, 1_700_043_200, "csrf-tok");
    assert!(page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(page.contains("<title>moat — session</title>"));
    assert!(page.contains("<dd>alice</dd>"));
    assert!(page.contains("<time datetime=\"2023-11-14T22:13:20Z\">2023-11-14 22:13:20 UTC</time>"));
    assert!(page.contains("<time datetime=\"2023-11-15T10:13:20Z\">2023-11-15 10:13:20 UTC</time>"));
    assert!(page.contains("<form method=\"post\" action=\"/.moat/logout\">"));
    assert!(page.contains("<input type=\"hidden\" name=\"csrf\" value=\"csrf-tok\">"));
    assert!(page.contains("<button type=\"submit\">Sign out</button>"));
    attributes(&page);
}

#[test]
fn the_logged_out_page() {
    let page = logged_out_page();
    assert!(page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(page.contains("<title>moat — signed out</title>"));
    assert!(page.contains("<h1>Signed out</h1>"));
    assert!(!page.contains("<form"));
}

fn all_pages() -> Vec<String> {
    vec![
        login_page("t", "/", false),
        login_page("t", "/", true),
        session_page("alice", 0, 1, "t"),
        logged_out_page(),
    ]
}

#[test]
fn pages_have_no_script_no_external_assets_and_one_style() {
    for page in all_pages() {
        let lower = page.to_ascii_lowercase();
        for banned in [
            "<script",
            "javascript:",
            " on",
            "<link",
            "<img",
            "<iframe",
            "<object",
            "<embed",
            "src=",
            "http:",
            "https:",
            "url(",
            "@import",
            "style=\"",
        ] {
            assert!(!lower.contains(banned), "{banned:?} in {page}");
        }
        assert_eq!(lower.matches("<style>").count(), 1);
        assert_eq!(lower.matches("</style>").count(), 1);
    }
}

#[test]
fn the_csp_has_the_required_directives_and_the_styles_hash() {
    let csp = content_security_policy();
    let directives: Vec<&str> = csp.split("; ").collect();
    for d in [
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(directives.contains(&d), "{d:?} missing from {csp}");
    }
    for page in all_pages() {
        let start = page.find("<style>").unwrap() + "<style>".len();
        let end = page.find("</style>").unwrap();
        let style = &page[start..end];
        let hash = STANDARD.encode(digest::digest(&digest::SHA256, style.as_bytes()));
        assert!(
            directives.contains(&format!("style-src 'sha256-{hash}'").as_str()),
            "{csp}"
        );
    }
    assert!(std::ptr::eq(csp, content_security_policy()), "built once");
}

#[test]
fn security_headers_are_all_there() {
    let headers = security_headers();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    };
    assert_eq!(
        get("content-security-policy"),
        Some(content_security_policy())
    );
    assert_eq!(get("cache-control"), Some("no-store"));
    assert_eq!(get("x-content-type-options"), Some("nosniff"));
    assert_eq!(get("referrer-policy"), Some("no-referrer"));
    assert_eq!(get("x-frame-options"), Some("DENY"));
    assert_eq!(get("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(headers.len(), 6);
    assert!(std::ptr::eq(headers, security_headers()), "built once");
}

#[test]
fn times_are_shown_in_utc() {
    assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc_time(1_709_251_199), "2024-02-29 23:59:59 UTC");
    assert_eq!(utc_time(253_402_300_799), "9999-12-31 23:59:59 UTC");
    assert_eq!(utc_time(253_402_300_800), "10000-01-01 00:00:00 UTC");
    // Any u64 gives some date, without overflow.
    assert!(utc_time(u64::MAX).ends_with(" UTC"));
}

#[test]
fn forms_are_parsed() {
    let f = parse_form(
        b"username=al+ice&password=p%26ss%3Dw%2Bord+x&code=123456&csrf=a-b_c&next=%2Fpump%3Fid%3D3",
    );
    assert_eq!(f["username"], "al ice");
    assert_eq!(f["password"], "p&ss=w+ord x");
    assert_eq!(f["code"], "123456");
    assert_eq!(f["csrf"], "a-b_c");
    assert_eq!(f["next"], "/pump?id=3");
    assert_eq!(f.len(), 5);

    let f = parse_form(b"a=1&a=2&&b&c=&=d&e=x=y&%E2%82%AC=%C3%A9");
    assert_eq!(f["a"], "2");
    assert_eq!(f["b"], "");
    assert_eq!(f["c"], "");
    assert_eq!(f[""], "d");
    assert_eq!(f["e"], "x=y");
    assert_eq!(f["€"], "é");
    assert!(parse_form(b"").is_empty());
    assert!(parse_form(b"&&&").is_empty());
}

#[test]
fn form_oddities_do_not_fail() {
    let f = parse_form(b"u=%ff%fe&p=\xff&q=%&r=%4&s=%zz&t=%2");
    assert_eq!(f["u"], "\u{fffd}\u{fffd}");
    assert_eq!(f["p"], "\u{fffd}");
    assert_eq!(f["q"], "%");
    assert_eq!(f["r"], "%4");
    assert_eq!(f["s"], "%zz");
    assert_eq!(f["t"], "%2");
}

#[test]
fn forms_are_read_up_to_the_field_cap() {
    let body: Vec<String> = (0..100).map(|i| format!("f{i}={i}")).collect();
    let f = parse_form(body.join("&").as_bytes());
    assert_eq!(f.len(), MAX_FORM_FIELDS);
    assert_eq!(f["f63"], "63");
    assert!(!f.contains_key("f64"));
    // Empty pairs do not count.
    let body = format!("{}&last=1", "&".repeat(1000));
    assert_eq!(parse_form(body.as_bytes())["last"], "1");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn an_accepted_next_is_a_plain_same_origin_path(s in "[/\\\\%a-z0-9:.?#\t 2fFcC5]{0,24}") {
        if let Some(n) = safe_next(&s) {
            prop_assert_eq!(&n, &s);
            prop_assert!(s.starts_with('/'));
            prop_assert!(!s.starts_with("//"));
            prop_assert!(!s.contains('\\') && !s.contains('\t') && !s.contains(' '));
            let once = percent_decode_str(&s).decode_utf8_lossy();
            prop_assert!(!once.starts_with("//") && !once.contains('\\'));
        }
    }

    #[test]
    fn safe_next_never_panics(s in any::<String>()) {
        let _ = safe_next(&s);
    }

    #[test]
    fn parse_form_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(parse_form(&body).len() <= MAX_FORM_FIELDS);
    }

    #[test]
    fn times_match_humantime(secs in 0u64..=253_402_300_799) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let rfc = humantime::format_rfc3339_seconds(t).to_string();
        prop_assert_eq!(iso_time(secs), rfc.clone());
        prop_assert_eq!(utc_time(secs), rfc.replace('T', " ").replace('Z', " UTC"));
    }
}
