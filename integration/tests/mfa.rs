//! Multi-factor access for people (issue 11), end to end: the real `moat`
//! binary on a test clock, curl with a cookie jar filling in moat's login
//! form, `oathtool` computing the codes, raw TLS requests where the exact
//! headers matter, and a recording device behind it all.
//!
//! Every test checks what the client was answered, what the device
//! received (or that it received nothing), and what the audit trail says.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::mfa::*;
use support::{exchange, require, wait_for, Moat, Reply, TlsStream, Workspace};

fn tools() {
    require("curl");
    require("oathtool");
}

/// Admits alice by name and anyone in the `biomed` group.
const ADMITS: &str = "users = [\"alice\"]\ngroups = [\"biomed\"]";

fn web(ws: &Workspace, device: &Device, http: &str) -> Vec<(&'static str, String)> {
    vec![("web", mfa_service(ws, "web", device.addr, ADMITS, http))]
}

/// The common start: curl and oathtool, one device behind one `mfa`
/// service ("web", admitting alice by name and the biomed group), alice
/// (in group ops) in the users file, the test clock at `T0`.
struct AliceBehindMfa {
    ws: Workspace,
    clock: TestClock,
    device: Device,
    alice: Account,
    moat: Moat,
}

fn alice_behind_mfa() -> AliceBehindMfa {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));
    AliceBehindMfa {
        ws,
        clock,
        device,
        alice,
        moat,
    }
}

/// Every portal answer's security headers.
fn assert_portal_headers(r: &Reply) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("no CSP: {r:?}"));
    for directive in [
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(
        r.header("cache-control")
            .is_some_and(|c| c.contains("no-store")),
        "{r:?}"
    );
}

/// A `Set-Cookie` of one of moat's `__Host-` cookies: only over HTTPS, not
/// for scripts, not sent cross-site, for the whole origin and no wider.
fn assert_host_cookie(set_cookie: &str) {
    let attrs = cookie_attributes(set_cookie);
    for wanted in ["path=/", "secure", "httponly", "samesite=strict"] {
        assert!(attrs.iter().any(|a| a == wanted), "{wanted}: {set_cookie}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain")),
        "{set_cookie}"
    );
    assert!(!cookie_value(set_cookie).is_empty(), "{set_cookie}");
}

/// The page without its CSRF token, to compare two answers.
fn without_csrf(body: &str) -> String {
    match input(body, "csrf") {
        Some(token) if !token.is_empty() => body.replace(&token, "TOKEN"),
        _ => body.to_string(),
    }
}

fn http_request(moat: &Moat, path: &str) -> Value {
    moat.wait_event("http_request", |e| e["path"] == path)
}

// ---------------------------------------------------------------------------

#[test]
fn the_portal_is_moats_own_with_strict_headers_a_csrf_cookie_and_a_new_session_key() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let key = ws.path("session.key");
    assert!(!key.exists());
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));

    // The first `moat run` created the session key: one line, base64 of
    // 32 bytes, readable by moat's user only.
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "session key mode {mode:o}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    let decoded = {
        use base64::Engine;
        let t = text.trim();
        base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
            .expect("the key file is base64")
    };
    assert_eq!(decoded.len(), 32);

    let agent = Agent::new(&ws, moat.addr("web"), "a");
    let page = agent.login_page(Some("/pump/status?x=1"));
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{page:?}"
    );
    for field in ["username", "password", "code", "csrf", "next"] {
        assert!(input(&page.body, field).is_some(), "no {field}: {page:?}");
    }
    assert_eq!(input(&page.body, "next").unwrap(), "/pump/status?x=1");
    assert!(!page.body.contains(WRONG), "{page:?}");
    assert_portal_headers(&page);
    let csrf_cookie = set_cookie(&page, CSRF_COOKIE).expect("the pre-login cookie");
    assert_host_cookie(csrf_cookie);
    assert!(
        agent.cookie(CSRF_COOKIE).is_some(),
        "curl kept no csrf cookie"
    );
    // The form's token is bound to the cookie, not the cookie itself.
    assert_ne!(
        input(&page.body, "csrf").unwrap(),
        cookie_value(csrf_cookie)
    );

    // A failed login answers the same page with the same headers.
    let failed = agent.login_as("alice", "not the password", "000000", None);
    assert_login_failed(&failed, 401);
    assert_portal_headers(&failed);

    // The session page without a session sends to the login page.
    let session = agent.get("/.moat/session");
    assert_eq!(session.status, 302, "{session:?}");
    assert!(
        session
            .header("location")
            .is_some_and(|l| l.starts_with("/.moat/login")),
        "{session:?}"
    );
    assert_portal_headers(&session);

    // Any spelling of the prefix is moat's; unknown pages are moat's 404.
    let upper = agent.get("/.MOAT/login");
    assert_eq!(upper.status, 200, "{upper:?}");
    assert!(input(&upper.body, "csrf").is_some(), "{upper:?}");
    let unknown = agent.get("/.moat/nothing-here");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_portal_headers(&unknown);
    let head = agent.get_with("/.moat/login", &["-I"]);
    assert_eq!(head.status, 200, "{head:?}");

    assert_eq!(
        device.count(),
        0,
        "a portal request reached the device: {:?}",
        device.seen()
    );
    assert_no_secrets(&moat, &[&alice.password, &alice.secret]);
}

#[test]
fn password_and_code_open_a_session_that_reaches_the_device_as_alice() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    // The users file as an operator makes it.
    let users = ws.path("users.toml");
    let alice = add_user_cli(&users, "alice", &["ops"], "Correct-Horse-Battery-91");
    let mode = std::fs::metadata(&users).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o027,
        0,
        "moat user wrote a users file others may read: {mode:o}"
    );
    let moat = start_mfa(
        &ws,
        &clock,
        &auth_table(""),
        &web(&ws, &device, "user_header = \"X-Remote-User\""),
    );
    let agent = Agent::new(&ws, moat.addr("web"), "a");

    // A browser without a session is sent to sign in, `next` kept.
    let first = agent.get("/pump/status?x=1");
    assert_eq!(first.status, 302, "{first:?}");
    let location = first.header("location").unwrap().to_string();
    assert_eq!(login_next(&location), "/pump/status?x=1");

    let page = agent.get(&location);
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(input(&page.body, "next").unwrap(), "/pump/status?x=1");
    let csrf = input(&page.body, "csrf").unwrap();
    let code = alice.code(T0);
    let signed_in = agent.post_form(
        "/.moat/login",
        &[
            ("username", "alice"),
            ("password", &alice.password),
            ("code", &code),
            ("csrf", &csrf),
            ("next", "/pump/status?x=1"),
        ],
        &[],
    );
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    assert_eq!(signed_in.header("location"), Some("/pump/status?x=1"));
    assert_portal_headers(&signed_in);
    let set = set_cookie(&signed_in, SESSION_COOKIE).expect("a session cookie");
    assert_host_cookie(set);
    let session = cookie_value(set).to_string();
    assert_eq!(agent.session().as_deref(), Some(session.as_str()));

    // Following the redirect reaches the device, as alice.
    let status = agent.get("/pump/status?x=1");
    assert_eq!(status.status, 200, "{status:?}");
    assert!(status.body.contains(DEVICE_MARKER), "{status:?}");
    let seen = device.request("/pump/status?x=1");
    assert_eq!(seen.values("x-remote-user"), ["alice"], "{seen:?}");
    device.assert_never_saw_moat_cookies();

    let ok = moat.wait_event("auth_succeeded", |e| e["user"] == "alice");
    assert_eq!(ok["device"], "pump", "{ok}");
    assert_eq!(ok["service"], "web", "{ok}");
    assert!(
        ok["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{ok}"
    );
    let req = moat.wait_event("http_request", |e| {
        e["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/pump/status"))
            && e["status"] == 200
    });
    assert_eq!(
        req["principal"],
        json!({"kind": "user", "name": "alice"}),
        "{req}"
    );

    // The session page names alice and offers a logout form.
    let mine = agent.get("/.moat/session");
    assert_eq!(mine.status, 200, "{mine:?}");
    assert!(mine.body.contains("alice"), "{mine:?}");
    assert!(mine.body.contains("/.moat/logout"), "{mine:?}");
    assert!(
        input(&mine.body, "csrf").is_some_and(|t| !t.is_empty()),
        "{mine:?}"
    );
    assert_portal_headers(&mine);

    assert_eq!(
        metric(
            &moat,
            "moat_logins_total",
            &["service=\"web\"", "outcome=\"succeeded\""]
        ),
        Some(1.0)
    );
    assert_no_secrets(&moat, &[&alice.password, &code, &alice.secret, &session]);
}

#[test]
fn requests_without_a_session_are_sent_to_sign_in_and_never_reach_the_device() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device,
        alice: _alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let agent = Agent::new(&ws, addr, "a");

    // A browser (GET or HEAD accepting HTML) is redirected, with the path
    // and query url-encoded into `next`. (HEAD over HTTP/2: see
    // `head_over_http2_gets_moats_refusal_without_a_body`.)
    for args in [vec![], vec!["-I", "--http1.1"]] {
        let mut a = args.clone();
        a.extend(["-H", "Accept: text/html"]);
        let r = agent.get_with("/pump/status?x=1&y=a%20b", &a);
        assert_eq!(r.status, 302, "{args:?} {r:?}");
        let location = r.header("location").unwrap();
        assert!(location.starts_with("/.moat/login?next="), "{location}");
        assert!(
            !location.contains("/pump"),
            "next is not encoded: {location}"
        );
        assert_eq!(login_next(location), "/pump/status?x=1&y=a%20b");
    }

    // Anything else gets a 401 naming the reason.
    assert_auth_required(&raw_get(&ws, addr, "/api/1", &["Accept: application/json"]));
    assert_auth_required(&raw_get(&ws, addr, "/api/2", &[]));
    // (Over HTTP/2: see `a_post_without_a_session_over_http2_gets_a_clean_401`.)
    let post = agent.get_with(
        "/api/3",
        &["--http1.1", "-H", "Accept: text/html", "--data", "dose=5"],
    );
    assert_auth_required(&post);
    // A session cookie that is not one is still no session.
    assert_auth_required(&get_with_session(&ws, addr, "/api/4", ""));

    assert_eq!(device.count(), 0, "{:?}", device.seen());
    let denied = http_request(&moat, "/api/1");
    assert_eq!(denied["status"], 401, "{denied}");
    assert_eq!(denied["reason"], "auth_required", "{denied}");
    assert!(denied.get("principal").is_none(), "{denied}");
}

#[test]
fn every_wrong_login_gets_the_same_page_and_the_audit_the_exact_reason() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let moat = start_mfa(
        &ws,
        &clock,
        &auth_table("lockout_failures = 10"),
        &web(&ws, &device, ""),
    );
    let agent = Agent::new(&ws, moat.addr("web"), "a");
    let code = alice.code(T0);
    let bad_code = wrong_code(&alice.secret, T0);

    // (username, password, code, reason, is the user named in the trail)
    let cases: [(&str, &str, &str, &str, bool); 5] = [
        ("mallory", &alice.password, &code, "unknown_user", false),
        (
            "alice",
            "Correct-Horse-Battery-92",
            &code,
            "bad_password",
            true,
        ),
        ("alice", &alice.password, &bad_code, "bad_code", true),
        ("alice", &alice.password, "", "bad_code", true),
        // A password typed into the username field stays out of the trail.
        (&alice.password, "x", &code, "unknown_user", false),
    ];
    let mut pages = Vec::new();
    for (i, (user, password, c, reason, named)) in cases.iter().enumerate() {
        let r = agent.login_as(user, password, c, None);
        assert_login_failed(&r, 401);
        assert_portal_headers(&r);
        pages.push(without_csrf(&r.body));
        let e = nth_failure(&moat, i + 1);
        assert_eq!(e["reason"], *reason, "case {i}: {e}");
        if *named {
            assert_eq!(e["user"], "alice", "case {i}: {e}");
        } else {
            assert!(e.get("user").is_none(), "case {i}: {e}");
        }
        assert_eq!(e["service"], "web", "{e}");
    }
    // Nothing in the answer tells the reasons apart.
    assert!(pages.iter().all(|p| *p == pages[0]), "{pages:#?}");

    assert_eq!(
        metric(&moat, "moat_logins_total", &["outcome=\"unknown_user\""]),
        Some(2.0)
    );
    assert_eq!(
        metric(&moat, "moat_logins_total", &["outcome=\"bad_code\""]),
        Some(2.0)
    );
    assert_eq!(
        metric(&moat, "moat_logins_total", &["outcome=\"bad_password\""]),
        Some(1.0)
    );
    // Still not locked (limit 10): the right answer works.
    let session = agent.sign_in(&alice, T0);
    assert_eq!(device.count(), 0);
    assert_no_secrets(&moat, &[&alice.password, &alice.secret, &code, &session]);
}

#[test]
fn login_needs_its_csrf_cookie_and_token_and_the_same_origin() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let code = alice.code(T0);
    let fields = |csrf: &str| {
        vec![
            ("username", "alice".to_string()),
            ("password", alice.password.clone()),
            ("code", code.clone()),
            ("csrf", csrf.to_string()),
            ("next", "/".to_string()),
        ]
    };
    let post = |agent: &Agent, csrf: &str, extra: &[&str]| {
        let f = fields(csrf);
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        agent.post_form("/.moat/login", &f, extra)
    };

    let a = Agent::new(&ws, addr, "a");
    let b = Agent::new(&ws, addr, "b");
    let token_a = input(&a.login_page(None).body, "csrf").unwrap();
    b.login_page(None);

    // 1. No pre-login cookie at all.
    let c = Agent::new(&ws, addr, "c");
    assert_login_failed(&post(&c, &token_a, &[]), 401);
    // 2. Another client's token with this client's cookie.
    assert_login_failed(&post(&b, &token_a, &[]), 401);
    // 3. A made-up token.
    let a2 = Agent::new(&ws, addr, "a2");
    let token = input(&a2.login_page(None).body, "csrf").unwrap();
    assert_login_failed(&post(&a2, &format!("{token}x"), &[]), 401);
    // 4. No token.
    let a3 = Agent::new(&ws, addr, "a3");
    a3.login_page(None);
    assert_login_failed(&post(&a3, "", &[]), 401);
    // 5. The right token from a page of another origin.
    let a4 = Agent::new(&ws, addr, "a4");
    let token = input(&a4.login_page(None).body, "csrf").unwrap();
    let evil = post(&a4, &token, &["-H", "Origin: https://evil.example"]);
    assert_login_failed(&evil, 401);
    assert_eq!(failure_reasons(&moat), ["bad_csrf"; 5]);
    for e in moat.events("auth_failed") {
        assert!(e.get("user").is_none(), "{e}");
    }

    // The same origin, cookie and token: signed in. (Over HTTP/1.1; for
    // HTTP/2 see `a_same_origin_login_and_logout_over_http2_are_accepted`.)
    let a5 = Agent::new(&ws, addr, "a5");
    let token = input(&a5.login_page(None).body, "csrf").unwrap();
    let origin = format!("Origin: https://127.0.0.1:{}", addr.port());
    let ok = post(&a5, &token, &["--http1.1", "-H", &origin]);
    assert_eq!(ok.status, 303, "{ok:?}");
    assert!(set_cookie(&ok, SESSION_COOKIE).is_some(), "{ok:?}");
    assert_eq!(moat.events("auth_succeeded").len(), 1);
    assert_eq!(device.count(), 0);
}

#[test]
fn a_code_is_accepted_once_per_user_and_step_even_within_the_skew() {
    let AliceBehindMfa {
        ws,
        clock,
        device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let agent = |n: &str| Agent::new(&ws, addr, n);
    let previous = alice.code(T0 - 30);
    let current = alice.code(T0);
    assert_ne!(previous, current);

    // The previous step's code is within the skew (1): accepted.
    let r = agent("p").login_as("alice", &alice.password, &previous, None);
    assert_eq!(r.status, 303, "{r:?}");
    let r = agent("c1").login_as("alice", &alice.password, &current, None);
    assert_eq!(r.status, 303, "{r:?}");
    // The same code again: refused, however right it is.
    let r = agent("c2").login_as("alice", &alice.password, &current, None);
    assert_login_failed(&r, 401);
    assert_eq!(nth_failure(&moat, 1)["reason"], "replayed_code");
    let r = agent("p2").login_as("alice", &alice.password, &previous, None);
    assert_login_failed(&r, 401);
    assert_eq!(nth_failure(&moat, 2)["reason"], "replayed_code");

    // One step later the used code is still within the skew: still refused.
    let t1 = clock.advance(30);
    let r = agent("c3").login_as("alice", &alice.password, &current, None);
    assert_login_failed(&r, 401);
    let e = nth_failure(&moat, 3);
    assert_eq!(e["reason"], "replayed_code", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    // The new step's code works once.
    let r = agent("n").login_as("alice", &alice.password, &alice.code(t1), None);
    assert_eq!(r.status, 303, "{r:?}");
    // A code three steps ahead is outside the skew.
    let r = agent("f").login_as("alice", &alice.password, &alice.code(t1 + 90), None);
    assert_login_failed(&r, 401);
    assert_eq!(nth_failure(&moat, 4)["reason"], "bad_code");

    assert_eq!(moat.events("auth_succeeded").len(), 3);
    assert_eq!(device.count(), 0);
}

#[test]
fn five_failures_lock_the_user_and_the_source_for_fifteen_minutes() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let bob = Account::new("bob", &["biomed"]);
    write_users(&ws, &[&alice, &bob]);
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));
    let addr = moat.addr("web");

    // Failures older than the window (5 min) do not count.
    let bob3 = Agent::new(&ws, addr, "bob3").with_source("127.0.0.3");
    for _ in 0..4 {
        assert_login_failed(&bob3.login_as("bob", "wrong-1", &bob.code(T0), None), 401);
    }
    let t = clock.advance(6 * 60);
    assert_login_failed(&bob3.login_as("bob", "wrong-2", &bob.code(t), None), 401);
    bob3.sign_in(&bob, t);
    assert!(
        moat.events("auth_lockout").is_empty(),
        "{:?}",
        moat.events("auth_lockout")
    );

    // Five wrong passwords for alice from 127.0.0.1.
    let t1 = clock.next_step();
    let a = Agent::new(&ws, addr, "a");
    let mut wrong_page = String::new();
    for i in 0..5 {
        let r = a.login_as("alice", &format!("wrong-{i}"), &alice.code(t1), None);
        assert_login_failed(&r, 401);
        wrong_page = without_csrf(&r.body);
    }
    let locks = wait_for("two lockouts", || {
        let l = moat.events("auth_lockout");
        (l.len() >= 2).then_some(l)
    });
    let mut kinds: Vec<&str> = locks.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["source", "user"], "{locks:?}");
    for l in &locks {
        assert_eq!(l["until"], t1 + 15 * 60, "{l}");
        if l["kind"] == "user" {
            assert_eq!(l["user"], "alice", "{l}");
        }
    }

    // Locked: the right password and code get the very same page.
    let n = moat.events("auth_failed").len();
    let r = a.login_as("alice", &alice.password, &alice.code(t1), None);
    assert_login_failed(&r, 401);
    assert_eq!(without_csrf(&r.body), wrong_page);
    let e = nth_failure(&moat, n + 1);
    assert_eq!(e["reason"], "locked_out", "{e}");
    assert_eq!(e["user"], "alice", "{e}");
    // The user is locked from anywhere…
    let a2 = Agent::new(&ws, addr, "a2").with_source("127.0.0.2");
    assert_login_failed(
        &a2.login_as("alice", &alice.password, &alice.code(t1), None),
        401,
    );
    assert_eq!(nth_failure(&moat, n + 2)["reason"], "locked_out");
    // …and the source for anyone.
    let b1 = Agent::new(&ws, addr, "b1");
    assert_login_failed(&b1.login_as("bob", &bob.password, &bob.code(t1), None), 401);
    assert_eq!(nth_failure(&moat, n + 3)["reason"], "locked_out");
    // Another user from another source is not locked.
    Agent::new(&ws, addr, "b2")
        .with_source("127.0.0.2")
        .sign_in(&bob, t1);

    // Still locked a second before the end, free after it.
    let t2 = t1 + 15 * 60 - 1;
    clock.set(t2);
    assert_login_failed(
        &a.login_as("alice", &alice.password, &alice.code(t2), None),
        401,
    );
    assert_eq!(nth_failure(&moat, n + 4)["reason"], "locked_out");
    let t3 = clock.next_step();
    assert!(t3 >= t1 + 15 * 60);
    let session = a.sign_in(&alice, t3);
    assert_eq!(a.get("/after-lockout").status, 200);

    assert_eq!(
        metric(&moat, "moat_auth_lockouts_total", &["kind=\"user\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(&moat, "moat_auth_lockouts_total", &["kind=\"source\""]),
        Some(1.0)
    );
    assert_eq!(
        metric(&moat, "moat_logins_total", &["outcome=\"locked_out\""]),
        Some(4.0)
    );
    assert_no_secrets(
        &moat,
        &[&alice.password, &alice.secret, &bob.secret, &session],
    );
}

#[test]
fn the_login_rate_per_source_answers_429_before_any_password_work() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let moat = start_mfa(
        &ws,
        &clock,
        &auth_table("login_rate = \"1/h burst 2\""),
        &web(&ws, &device, ""),
    );
    let addr = moat.addr("web");
    let a = Agent::new(&ws, addr, "a");
    for _ in 0..2 {
        assert_login_failed(&a.login_as("alice", "wrong", &alice.code(T0), None), 401);
    }
    // The third attempt, right as it is, is refused before any check.
    let r = a.login_as("alice", &alice.password, &alice.code(T0), None);
    // A fixed, cheap answer (what a flood gets), never a session.
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.body.contains("Too many sign-in attempts"), "{r:?}");
    assert!(set_cookie(&r, SESSION_COOKIE).is_none(), "{r:?}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert_portal_headers(&r);
    let e = nth_failure(&moat, 3);
    assert_eq!(e["reason"], "rate_limited", "{e}");
    assert!(moat.events("auth_succeeded").is_empty());
    assert_eq!(
        metric(&moat, "moat_logins_total", &["outcome=\"rate_limited\""]),
        Some(1.0)
    );
    // The rate is per source address.
    Agent::new(&ws, addr, "b")
        .with_source("127.0.0.2")
        .sign_in(&alice, T0);
    assert_eq!(device.count(), 0);
}

#[test]
fn only_the_services_users_and_groups_get_through() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let bob = Account::new("bob", &["biomed"]);
    let carol = Account::new("carol", &["billing"]);
    let dave = Account::new("dave", &["biomed"]).disabled();
    write_users(&ws, &[&alice, &bob, &carol, &dave]);
    let mut services = web(&ws, &device, "");
    services.push((
        "billing",
        mfa_service(&ws, "billing", device.addr, "users = [\"carol\"]", ""),
    ));
    let moat = start_mfa(&ws, &clock, &auth_table(""), &services);
    let (web_addr, billing) = (moat.addr("web"), moat.addr("billing"));

    // alice by name, bob by group.
    let a = Agent::new(&ws, web_addr, "alice");
    a.sign_in(&alice, T0);
    assert_eq!(a.get("/alice-in").status, 200);
    let b = Agent::new(&ws, web_addr, "bob");
    b.sign_in(&bob, T0);
    assert_eq!(b.get("/bob-in").status, 200);
    assert_eq!(device.request("/alice-in").method, "GET");
    device.request("/bob-in");

    // carol, with the right password and code, is not admitted at web.
    let c = Agent::new(&ws, web_addr, "carol");
    let n = moat.events("auth_failed").len();
    assert_login_failed(
        &c.login_as("carol", &carol.password, &carol.code(T0), None),
        401,
    );
    let e = nth_failure(&moat, n + 1);
    assert_eq!(e["reason"], "not_authorized", "{e}");
    assert_eq!(e["user"], "carol", "{e}");
    // dave is disabled.
    let d = Agent::new(&ws, web_addr, "dave");
    assert_login_failed(
        &d.login_as("dave", &dave.password, &dave.code(T0), None),
        401,
    );
    let e = nth_failure(&moat, n + 2);
    assert_eq!(e["reason"], "disabled", "{e}");
    assert_eq!(e["user"], "dave", "{e}");

    // carol signs in at billing; her session is refused at web.
    let c_billing = c.at(billing);
    let t = clock.next_step();
    let session = c_billing.sign_in(&carol, t);
    assert_eq!(c_billing.get("/carol-billing").status, 200);
    let r = get_with_session(&ws, web_addr, "/carol-web", &session);
    assert_denied(&r, 403, "user_not_authorized");
    // The same from the browser's jar (cookies are per host, not port).
    let r = c.get("/carol-web-2");
    assert_denied(&r, 403, "user_not_authorized");
    assert!(device.requests("/carol-web").is_empty());
    assert!(device.requests("/carol-web-2").is_empty());
    let denied = http_request(&moat, "/carol-web");
    assert_eq!(denied["reason"], "user_not_authorized", "{denied}");
    assert_eq!(
        denied["principal"],
        json!({"kind": "user", "name": "carol"}),
        "{denied}"
    );
}

#[test]
fn moat_cookies_and_client_sent_user_headers_never_reach_the_device() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let mut services = web(&ws, &device, "user_header = \"X-Remote-User\"");
    services.push(("plain", mfa_service(&ws, "plain", device.addr, ADMITS, "")));
    let moat = start_mfa(&ws, &clock, &auth_table(""), &services);
    let addr = moat.addr("web");
    let a = Agent::new(&ws, addr, "a");
    let session = a.sign_in(&alice, T0);
    let moat_cookie = format!("{SESSION_COOKIE}={session}");

    let mut s = tls_to(&ws, addr);
    let cookie = format!("Cookie: theme=dark; {moat_cookie}; {CSRF_COOKIE}=abc; lang=en");
    let r = request_on(
        &mut s,
        "GET",
        "/hygiene-1",
        &[
            &cookie,
            "X-Remote-User: mallory",
            "x-remote-user: eve",
            "X_Remote_User: mallory",
            "Remote-User: mallory",
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = device.request("/hygiene-1");
    assert_eq!(seen.values("x-remote-user"), ["alice"], "{seen:?}");
    assert!(seen.values("x_remote_user").is_empty(), "{seen:?}");
    assert!(seen.values("remote-user").is_empty(), "{seen:?}");
    let cookies = seen.cookies();
    assert!(cookies.contains("theme=dark"), "{seen:?}");
    assert!(cookies.contains("lang=en"), "{seen:?}");
    assert!(!cookies.contains("moat"), "{seen:?}");
    assert!(!cookies.contains(&session), "{seen:?}");

    // Split over two fields, and moat's cookie alone.
    let r = request_on(
        &mut s,
        "GET",
        "/hygiene-2",
        &[&format!("Cookie: {moat_cookie}"), "Cookie: a=1"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = device.request("/hygiene-2");
    assert!(seen.cookies().contains("a=1"), "{seen:?}");
    let r = request_on(
        &mut s,
        "GET",
        "/hygiene-3",
        &[&format!("Cookie: {moat_cookie}")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    device.request("/hygiene-3");

    // A service without user_header: the device hears no user header at all.
    let mut p = tls_to(&ws, moat.addr("plain"));
    let r = request_on(
        &mut p,
        "GET",
        "/plain-1",
        &[&format!("Cookie: {moat_cookie}"), "X-Remote-User: alice"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = device.request("/plain-1");
    assert!(seen.values("x-remote-user").is_empty(), "{seen:?}");

    // Through curl's own jar, too.
    assert_eq!(
        a.get_with("/hygiene-curl", &["-H", "X-Remote-User: root"])
            .status,
        200
    );
    assert_eq!(
        device.request("/hygiene-curl").values("x-remote-user"),
        ["alice"]
    );

    device.assert_never_saw_moat_cookies();
    let e = http_request(&moat, "/hygiene-1");
    assert_eq!(
        e["principal"],
        json!({"kind": "user", "name": "alice"}),
        "{e}"
    );
    assert_no_secrets(&moat, &[&session, &alice.password, &alice.secret]);
}

#[test]
fn logout_ends_every_session_of_the_user_and_cuts_their_live_connections() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let bob = Account::new("bob", &["biomed"]);
    write_users(&ws, &[&alice, &bob]);
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));
    let addr = moat.addr("web");

    let a1 = Agent::new(&ws, addr, "a1");
    let s1 = a1.sign_in(&alice, T0);
    let a2 = Agent::new(&ws, addr, "a2");
    let t = clock.next_step();
    let s2 = a2.sign_in(&alice, t);
    let b = Agent::new(&ws, addr, "b");
    let sb = b.sign_in(&bob, t);
    assert_ne!(s1, s2);

    // alice's second session keeps a connection open.
    let mut live = tls_to(&ws, addr);
    let live_cookie = format!("Cookie: {SESSION_COOKIE}={s2}");
    let r = request_on(&mut live, "GET", "/live-1", &[&live_cookie]);
    assert_eq!(r.status, 200, "{r:?}");
    let live_addr = live.sock.local_addr().unwrap();

    let page = a1.get("/.moat/session");
    assert_eq!(page.status, 200, "{page:?}");
    let token = input(&page.body, "csrf").unwrap();

    // A logout without the page's token, or from another origin, is refused.
    for (fields, extra) in [
        (vec![], vec![]),
        (vec![("csrf", "forged")], vec![]),
        (
            vec![("csrf", token.as_str())],
            vec!["-H", "Origin: https://evil.example"],
        ),
    ] {
        let r = a1.post_form("/.moat/logout", &fields, &extra);
        assert_eq!(r.status, 403, "{fields:?} {extra:?}: {r:?}");
        assert!(r.body.contains("csrf_rejected"), "{r:?}");
    }
    assert_eq!(get_with_session(&ws, addr, "/still-in", &s1).status, 200);

    let out = a1.post_form("/.moat/logout", &[("csrf", &token)], &[]);
    assert_eq!(out.status, 200, "{out:?}");
    assert_portal_headers(&out);
    let cleared = set_cookie(&out, SESSION_COOKIE).expect("the cookie is cleared");
    assert!(clears(cleared), "{cleared}");
    assert_eq!(a1.session(), None);
    let ended = moat.wait_event("session_ended", |e| e["reason"] == "logout");
    assert_eq!(ended["user"], "alice", "{ended}");

    // Both of alice's sessions are over; bob's is not.
    assert_auth_required(&get_with_session(&ws, addr, "/after-1", &s1));
    assert_auth_required(&get_with_session(&ws, addr, "/after-2", &s2));
    assert_eq!(get_with_session(&ws, addr, "/bob-after", &sb).status, 200);
    let revoked = moat.wait_event("session_ended", |e| e["reason"] == "revoked");
    assert_eq!(revoked["user"], "alice", "{revoked}");
    let r = a1.get("/after-3");
    assert_eq!(r.status, 302, "{r:?}");
    assert!(device.requests("/after-1").is_empty());
    assert!(device.requests("/after-2").is_empty());
    assert!(device.requests("/after-3").is_empty());

    // Her open connection was cut.
    let cut = moat.wait_for_client("connection_revoked", live_addr);
    assert_eq!(cut["service"], "web", "{cut}");
    wait_closed(&mut live);
    assert_no_secrets(&moat, &[&s1, &s2, &sb, &alice.password]);
}

#[test]
fn forged_tampered_and_expired_cookies_never_reach_the_device() {
    let AliceBehindMfa {
        ws,
        clock,
        device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let a = Agent::new(&ws, addr, "a");
    let s = a.sign_in(&alice, T0);

    let forged = {
        use base64::Engine;
        let mut bytes = [0u8; 64];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let tampered = {
        let mut chars: Vec<char> = s.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let truncated = s[..s.len() - 4].to_string();
    for (name, cookie) in [
        ("forged", &forged),
        ("tampered", &tampered),
        ("truncated", &truncated),
    ] {
        let path = format!("/{name}");
        assert_auth_required(&get_with_session(&ws, addr, &path, cookie));
        // A browser with it is sent to sign in.
        let header = format!("Cookie: {SESSION_COOKIE}={cookie}");
        let r = raw_get(&ws, addr, &path, &[&header, "Accept: text/html"]);
        assert_eq!(r.status, 302, "{name}: {r:?}");
        assert!(
            device.requests(&path).is_empty(),
            "{name} reached the device"
        );
    }
    assert_eq!(get_with_session(&ws, addr, "/valid", &s).status, 200);

    // Idle: 14 minutes later it works and is renewed; the old value
    // then idles out first.
    clock.set(T0 + 14 * 60);
    let r = get_with_session(&ws, addr, "/idle-ok", &s);
    assert_eq!(r.status, 200, "{r:?}");
    let renewed =
        cookie_value(set_cookie(&r, SESSION_COOKIE).expect("a renewed cookie")).to_string();
    assert_ne!(renewed, s);
    clock.set(T0 + 15 * 60);
    assert_auth_required(&get_with_session(&ws, addr, "/idle-old", &s));
    assert_eq!(
        get_with_session(&ws, addr, "/idle-renewed", &renewed).status,
        200
    );
    clock.set(T0 + 14 * 60 + 15 * 60);
    assert_auth_required(&get_with_session(&ws, addr, "/idle-gone", &renewed));
    let idle = moat.wait_event("session_ended", |e| e["reason"] == "idle");
    assert_eq!(idle["user"], "alice", "{idle}");
    for p in ["/idle-old", "/idle-gone"] {
        assert!(device.requests(p).is_empty(), "{p} reached the device");
    }

    // Absolute: used every 14 minutes, the session still ends 12 h after
    // login.
    let start = clock.next_step();
    let b = Agent::new(&ws, addr, "b");
    b.sign_in(&alice, start);
    let json = ["-H", "Accept: application/json"];
    let mut t = start;
    while t + 14 * 60 < start + 12 * 3600 {
        t = clock.advance(14 * 60);
        let r = b.get_with("/active", &json);
        assert_eq!(r.status, 200, "at +{}s: {r:?}", t - start);
    }
    let used = device.requests("/active").len();
    clock.set(start + 12 * 3600);
    assert_auth_required(&b.get_with("/too-old", &json));
    let old = moat.wait_event("session_ended", |e| e["reason"] == "absolute");
    assert_eq!(old["user"], "alice", "{old}");
    assert!(device.requests("/too-old").is_empty());
    assert_eq!(device.requests("/active").len(), used);
    device.assert_never_saw_moat_cookies();
}

#[test]
fn gateways_sharing_a_session_key_accept_each_others_cookies_and_no_one_elses() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    write_session_key(&ws.path("session.key"));
    let services = |name: &str| {
        vec![(
            "web",
            mfa_service(&ws, "web", device.addr, ADMITS, "").replace(
                "name = \"web\"",
                &format!("name = \"web\"\n# gateway {name}"),
            ),
        )]
    };
    let a = start_mfa(&ws, &clock, &auth_table(""), &services("a"));
    let other = |dir: &str, auth: String| -> Moat {
        std::fs::create_dir(ws.path(dir)).unwrap();
        let body: String = services(dir).into_iter().map(|(_, s)| s).collect();
        let path = ws.path(&format!("{dir}/moat.toml"));
        std::fs::write(&path, config_text(&auth, &body)).unwrap();
        start_config(&path, &clock, &["web"])
    };
    // b shares a's key; c has its own; d has its own and a's as previous.
    let b = other("b", auth_table_at("../users.toml", "../session.key", ""));
    let c = other("c", auth_table_at("../users.toml", "own.key", ""));
    let d = other(
        "d",
        auth_table_at(
            "../users.toml",
            "own.key",
            "previous_session_key_file = \"../session.key\"",
        ),
    );
    assert_ne!(
        std::fs::read(ws.path("c/own.key")).unwrap(),
        std::fs::read(ws.path("session.key")).unwrap()
    );

    let from_a = Agent::new(&ws, a.addr("web"), "a").sign_in(&alice, T0);
    assert_eq!(
        get_with_session(&ws, b.addr("web"), "/a-at-b", &from_a).status,
        200
    );
    assert_eq!(
        get_with_session(&ws, d.addr("web"), "/a-at-d", &from_a).status,
        200
    );
    assert_auth_required(&get_with_session(&ws, c.addr("web"), "/a-at-c", &from_a));

    let t = clock.next_step();
    let from_c = Agent::new(&ws, c.addr("web"), "c").sign_in(&alice, t);
    assert_eq!(
        get_with_session(&ws, c.addr("web"), "/c-at-c", &from_c).status,
        200
    );
    assert_auth_required(&get_with_session(&ws, a.addr("web"), "/c-at-a", &from_c));
    assert_auth_required(&get_with_session(&ws, b.addr("web"), "/c-at-b", &from_c));

    for p in ["/a-at-b", "/a-at-d", "/c-at-c"] {
        device.request(p);
    }
    for p in ["/a-at-c", "/c-at-a", "/c-at-b"] {
        assert!(device.requests(p).is_empty(), "{p} reached the device");
    }
    let at_b = http_request(&b, "/a-at-b");
    assert_eq!(
        at_b["principal"],
        json!({"kind": "user", "name": "alice"}),
        "{at_b}"
    );
}

#[test]
fn users_file_edits_disable_or_remove_a_user_and_cut_their_live_connections() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let bob = Account::new("bob", &["biomed"]);
    let carol = Account::new("carol", &["biomed"]);
    write_users(&ws, &[&alice, &bob, &carol]);
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));
    let addr = moat.addr("web");

    let mut sessions = Vec::new();
    let mut live = Vec::new();
    for (i, account) in [&alice, &bob, &carol].into_iter().enumerate() {
        let agent = Agent::new(&ws, addr, &account.name);
        let session = agent.sign_in(account, T0);
        let mut s = tls_to(&ws, addr);
        let cookie = format!("Cookie: {SESSION_COOKIE}={session}");
        let r = request_on(&mut s, "GET", &format!("/live-{i}"), &[&cookie]);
        assert_eq!(r.status, 200, "{r:?}");
        sessions.push((agent, session, cookie));
        live.push(s);
    }
    let live_addrs: Vec<_> = live.iter().map(|s| s.sock.local_addr().unwrap()).collect();

    // alice disabled by `moat user disable`: her next request is refused,
    // her connection is cut.
    let out = moat_user(&ws.path("users.toml"), &["disable", "alice"], "");
    assert!(out.status.success(), "{out:?}");
    wait_reloads(&moat, 1);
    let cut = moat.wait_for_client("connection_revoked", live_addrs[0]);
    assert_eq!(cut["service"], "web", "{cut}");
    wait_closed(&mut live[0]);
    assert_denied(
        &get_with_session(&ws, addr, "/alice-disabled", &sessions[0].1),
        403,
        "user_disabled",
    );
    assert_denied(
        &sessions[0].0.get("/alice-disabled-2"),
        403,
        "user_disabled",
    );

    // bob removed by rewriting the file (atomically): his session is no
    // session, his connection is cut.
    write_users(&ws, &[&alice.clone().disabled(), &carol]);
    wait_reloads(&moat, 2);
    moat.wait_for_client("connection_revoked", live_addrs[1]);
    wait_closed(&mut live[1]);
    assert_auth_required(&get_with_session(&ws, addr, "/bob-removed", &sessions[1].1));
    let r = sessions[1].0.get("/bob-removed-2");
    assert_eq!(r.status, 302, "{r:?}");

    // carol was never touched.
    let r = request_on(&mut live[2], "GET", "/carol-still", &[&sessions[2].2]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(moat
        .events("connection_revoked")
        .iter()
        .all(|e| e["client"] != live_addrs[2].to_string().as_str()));
    for p in [
        "/alice-disabled",
        "/alice-disabled-2",
        "/bob-removed",
        "/bob-removed-2",
    ] {
        assert!(device.requests(p).is_empty(), "{p} reached the device");
    }
    device.request("/carol-still");
}

#[test]
fn a_users_file_others_may_read_or_its_group_may_write_is_refused() {
    tools();
    let ws = Workspace::new();
    let alice = Account::new("alice", &["ops"]);
    let users = write_users(&ws, &[&alice]);
    write_session_key(&ws.path("session.key"));
    let device = Device::start();
    let body: String = web(&ws, &device, "").into_iter().map(|(_, s)| s).collect();
    let config = ws.write("moat.toml", &config_text(&auth_table(""), &body));
    let check = |config: &Path| {
        let out = Command::new(support::moat_bin())
            .args(["check", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), support::strip_ansi(&text))
    };
    for mode in [0o600, 0o640, 0o400] {
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(mode)).unwrap();
        let (ok, text) = check(&config);
        assert!(ok, "mode {mode:o} refused: {text}");
    }
    for mode in [0o644, 0o604, 0o660, 0o666] {
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(mode)).unwrap();
        let (ok, text) = check(&config);
        assert!(!ok, "mode {mode:o} accepted: {text}");
        assert!(text.contains("users.toml"), "{text}");
        assert!(text.contains(&format!("{mode:04o}")), "{mode:o}: {text}");
        assert!(text.contains("chmod 600"), "{text}");
    }

    // `moat run` refuses it too, and exits.
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(support::moat_bin())
        .args(["run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for("moat run to refuse the users file", || {
        child.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("users.toml") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn after_login_next_only_ever_leads_to_a_path_on_this_site() {
    let AliceBehindMfa {
        ws,
        clock,
        device: _device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let evil = [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "/%2f%2fevil.example",
        "%2F%2Fevil.example",
        "/%5cevil.example",
        "javascript:alert(1)",
        "/\t/evil.example",
    ];
    for (i, next) in evil.iter().enumerate() {
        let t = clock.next_step();
        let agent = Agent::new(&ws, addr, &format!("r{i}"));
        // The form never carries it…
        let page = agent.login_page(Some(next));
        assert_eq!(input(&page.body, "next").as_deref(), Some("/"), "{next:?}");
        // …and a hand-made form with it still lands on this site's root.
        let r = agent.login_as("alice", &alice.password, &alice.code(t), Some(next));
        assert_eq!(r.status, 303, "{next:?}: {r:?}");
        assert_eq!(r.header("location"), Some("/"), "{next:?}: {r:?}");
    }
    let t = clock.next_step();
    let agent = Agent::new(&ws, addr, "good");
    let r = agent.login_as(
        "alice",
        &alice.password,
        &alice.code(t),
        Some("/pump/status?x=1"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/pump/status?x=1"));
    assert_eq!(moat.events("auth_succeeded").len(), evil.len() + 1);
}

#[test]
fn a_failed_login_keeps_where_the_person_was_going() {
    let AliceBehindMfa {
        ws,
        clock,
        device: _device,
        alice,
        moat,
    } = alice_behind_mfa();
    let agent = Agent::new(&ws, moat.addr("web"), "k");
    let failed = agent.login_as("alice", "not the password", "000000", Some("/pump/status"));
    assert_eq!(failed.status, 401, "{failed:?}");
    // The form shown again still goes on to the page asked for.
    assert_eq!(input(&failed.body, "next").as_deref(), Some("/pump/status"));
    let t = clock.next_step();
    let r = agent.login_as(
        "alice",
        &alice.password,
        &alice.code(t),
        Some("/pump/status"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/pump/status"));
}

/// What every browser does: a form POST carries `Origin`, over HTTP/2
/// when the server offers it (moat does, over TLS). HTTP/2 has no `Host`
/// field, only `:authority`, and the origin must match that.
#[test]
fn a_same_origin_login_and_logout_over_http2_are_accepted() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device: _device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let origin = format!("Origin: https://127.0.0.1:{}", addr.port());
    let h2 = ["--http2", "-H", origin.as_str()];

    let agent = Agent::new(&ws, addr, "a");
    let r = agent.login_with("alice", &alice.password, &alice.code(T0), None, &h2);
    assert_eq!(r.version, "HTTP/2", "{r:?}");
    assert_eq!(
        r.status,
        303,
        "{r:?}\nauth_failed: {:?}",
        moat.events("auth_failed")
    );
    let session = agent.session().expect("a session cookie");
    let page = agent.get("/.moat/session");
    let token = input(&page.body, "csrf").unwrap();
    let out = agent.post_form("/.moat/logout", &[("csrf", &token)], &h2);
    assert_eq!(out.status, 200, "{out:?}");
    assert_auth_required(&get_with_session(&ws, addr, "/after", &session));
}

/// A HEAD answer has no content (RFC 9110 §9.3.2); over HTTP/2 a DATA
/// frame after it is a protocol error the client must treat as such.
#[test]
fn head_over_http2_gets_moats_refusal_without_a_body() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device,
        alice: _alice,
        moat,
    } = alice_behind_mfa();
    let agent = Agent::new(&ws, moat.addr("web"), "a");
    let browser = agent.get_with("/pump", &["-I", "--http2", "-H", "Accept: text/html"]);
    assert_eq!(browser.version, "HTTP/2", "{browser:?}");
    assert_eq!(browser.status, 302, "{browser:?}");
    let api = agent.get_with("/pump", &["-I", "--http2"]);
    assert_eq!(api.status, 401, "{api:?}");
    assert_eq!(api.header("x-moat-reason"), Some("auth_required"));
    assert_eq!(device.count(), 0);
}

/// A form posted without a session (an expired tab, a script) must get
/// the 401 over HTTP/2 as well. moat answers before reading the body;
/// unless it drains it first, as it does for rule denials, the answer is
/// followed by RST_STREAM and curl 7.88 reports a framing error instead.
#[test]
fn a_post_without_a_session_over_http2_gets_a_clean_401() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device,
        alice: _alice,
        moat,
    } = alice_behind_mfa();
    let agent = Agent::new(&ws, moat.addr("web"), "a");
    for i in 0..20 {
        let out = support::curl_with_ca_output(
            &ws,
            &[
                "--http2",
                "--data",
                "dose=5&rate=2",
                &agent.url(&format!("/api/post-{i}")),
            ],
        );
        assert!(
            out.status.success(),
            "attempt {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = support::parse_reply(&out.stdout);
        assert_auth_required(&r);
    }
    assert_eq!(device.count(), 0);
}

/// A browser posts a form with the `Origin` the page's Referrer-Policy
/// dictates (Fetch, "append a request `Origin` header"): `null` when the
/// page said `no-referrer`, else the page's origin. Whatever policy the
/// login page chooses, the form it serves must then pass the origin check.
#[test]
fn the_login_form_passes_the_origin_check_with_the_origin_browsers_send_for_it() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device: _device,
        alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let agent = Agent::new(&ws, addr, "a");
    let page = agent.login_page(None);
    let policy = page
        .header("referrer-policy")
        .unwrap_or("strict-origin-when-cross-origin")
        .to_ascii_lowercase();
    // The last token a browser understands wins; all of ours are known.
    let policy = policy.rsplit(',').next().unwrap().trim().to_string();
    let origin = if policy == "no-referrer" {
        "null".to_string()
    } else {
        format!("https://127.0.0.1:{}", addr.port())
    };
    let header = format!("Origin: {origin}");
    let r = agent.post_form(
        "/.moat/login",
        &[
            ("username", "alice"),
            ("password", &alice.password),
            ("code", &alice.code(T0)),
            ("csrf", &input(&page.body, "csrf").unwrap()),
            ("next", "/"),
        ],
        &["--http1.1", "-H", &header],
    );
    assert_eq!(
        r.status,
        303,
        "Referrer-Policy {policy:?}, so a browser sends {header:?}: {r:?}\nauth_failed: {:?}",
        moat.events("auth_failed")
    );
}

#[test]
fn requests_per_identity_counts_per_signed_in_user() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let bob = Account::new("bob", &["biomed"]);
    write_users(&ws, &[&alice, &bob]);
    let limited = "\n[device.service.limits]\nrequests_per_identity = \"3/min\"";
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, limited));
    let addr = moat.addr("web");
    let (as_alice, as_bob) = (Agent::new(&ws, addr, "a"), Agent::new(&ws, addr, "b"));
    as_alice.sign_in(&alice, T0);
    as_bob.sign_in(&bob, T0);
    // The login requests themselves are the portal's, not the device's:
    // each user has the whole allowance for the device.
    for _ in 0..3 {
        assert_eq!(as_alice.get("/pump").status, 200);
    }
    let over = as_alice.get("/pump");
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("x-moat-reason"), Some("rate_limited_identity"));
    // Same address, another user: a bucket of its own.
    assert_eq!(as_bob.get("/pump").status, 200);
    let denied = moat.wait_event("http_request", |e| e["reason"] == "rate_limited_identity");
    assert_eq!(denied["principal"]["kind"], "user");
    assert_eq!(denied["principal"]["name"], "alice");
}

/// A network service to the same device, for the header tests.
fn network_service(ws: &Workspace, name: &str, device: &Device) -> String {
    format!(
        "\n[[device.service]]\nname = \"{name}\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.0/8\"]\n{}\n",
        device.addr,
        ws.tls_table()
    )
}

#[test]
fn any_spelling_of_a_user_header_is_stripped_on_every_service() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    // Written with `_`: CGI reads X-Device-User and X_Device_User alike.
    let mut services = web(&ws, &device, "user_header = \"X_Device_User\"");
    services.push(("net", network_service(&ws, "net", &device)));
    let moat = start_mfa(&ws, &clock, &auth_table(""), &services);
    let agent = Agent::new(&ws, moat.addr("web"), "a");
    let cookie = agent.sign_in(&alice, T0);
    let forged = [
        "X-Device-User: admin",
        "x_device_user: admin",
        "X-DEVICE_USER: admin",
    ];
    let session = format!("Cookie: {SESSION_COOKIE}={cookie}");
    let mut headers = vec![session.as_str(), "Accept: application/json"];
    headers.extend(forged);
    assert_eq!(raw_get(&ws, moat.addr("web"), "/mfa", &headers).status, 200);
    let seen = device.request("/mfa");
    let told: Vec<(&str, &str)> = seen
        .headers
        .iter()
        .filter(|(n, _)| n.replace('_', "-") == "x-device-user")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    assert_eq!(told, [("x_device_user", "alice")], "{seen:?}");
    // A network service to the same device never passes it on either: the
    // device may trust it because the mfa service sets it.
    assert_eq!(raw_get(&ws, moat.addr("net"), "/net", &forged).status, 200);
    let seen = device.request("/net");
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| n.replace('_', "-") != "x-device-user"),
        "{seen:?}"
    );
}

#[test]
fn a_logout_without_a_session_touches_no_cookie() {
    let AliceBehindMfa {
        ws,
        clock: _clock,
        device: _device,
        alice: _alice,
        moat,
    } = alice_behind_mfa();
    let addr = moat.addr("web");
    let mut s = tls_to(&ws, addr);
    let post = |s: &mut TlsStream, origin: &str| {
        let req = format!(
            "POST /.moat/logout HTTP/1.1\r\nHost: 127.0.0.1\r\n{origin}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n"
        );
        exchange(s, &req)
    };
    // What a cross-site form sends: no cookie (SameSite=Strict), another
    // origin. Clearing the cookie from here would sign anyone out.
    let cross = post(&mut s, "Origin: https://evil.example\r\n");
    assert_eq!(cross.status, 403, "{cross:?}");
    assert_eq!(cross.header("set-cookie"), None, "{cross:?}");
    let plain = post(&mut s, "");
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.header("set-cookie"), None, "{plain:?}");
}

#[test]
fn every_user_on_a_connection_is_watched_and_a_logout_ends_it() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    let carol = Account::new("carol", &["biomed"]);
    write_users(&ws, &[&alice, &carol]);
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, ""));
    let addr = moat.addr("web");
    let alice_cookie = Agent::new(&ws, addr, "a").sign_in(&alice, T0);
    let carol_cookie = Agent::new(&ws, addr, "c").sign_in(&carol, T0);
    let as_user = |c: &str| format!("Cookie: {SESSION_COOKIE}={c}");

    // One keep-alive connection carries alice, then carol (a shared
    // workstation; or h2 streams of two tabs).
    let mut shared = tls_to(&ws, addr);
    let shared_addr = shared.sock.local_addr().unwrap();
    for c in [&alice_cookie, &carol_cookie] {
        let r = request_on(&mut shared, "GET", "/pump", &[&as_user(c)]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Disabling alice, who is not the last user seen, still cuts it.
    let alice = alice.disabled();
    write_users(&ws, &[&alice, &carol]);
    let cut = moat.wait_for_client("connection_revoked", shared_addr);
    assert_eq!(cut["reason"], "user_disabled", "{cut}");
    wait_closed(&mut shared);

    // carol logs out on a connection: the answer arrives, then the
    // connection ends, so no other stream of it goes on as carol.
    let mut own = tls_to(&ws, addr);
    let own_addr = own.sock.local_addr().unwrap();
    let page = request_on(
        &mut own,
        "GET",
        "/.moat/session",
        &[&as_user(&carol_cookie)],
    );
    let csrf = input(&page.body, "csrf").expect("a logout form");
    let body = format!("csrf={}", encode(&csrf));
    let logout = exchange(
        &mut own,
        &format!(
            "POST /.moat/logout HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            as_user(&carol_cookie),
            body.len()
        ),
    );
    assert_eq!(logout.status, 200, "{logout:?}");
    wait_closed(&mut own);
    let ended = moat.wait_for_client("connection_revoked", own_addr);
    assert_eq!(ended["reason"], "session_revoked", "{ended}");
}

#[test]
fn visitors_without_a_session_are_held_to_requests_per_client() {
    tools();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let limited = "\n[device.service.limits]\nrequests_per_client = \"3/min\"";
    let moat = start_mfa(&ws, &clock, &auth_table(""), &web(&ws, &device, limited));
    let agent = Agent::new(&ws, moat.addr("web"), "a");
    // The portal's form and refusals of requests without a session count
    // like any request: neither is a way round the client's rate.
    assert_eq!(agent.login_page(None).status, 200);
    let refused = agent.get_with("/pump", &[]);
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(agent.login_page(None).status, 200);
    let over = agent.get_with("/.moat/login", &[]);
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("x-moat-reason"), Some("rate_limited_client"));
    let over = agent.get_with("/pump", &[]);
    assert_eq!(
        over.header("x-moat-reason"),
        Some("rate_limited_client"),
        "{over:?}"
    );
    assert_eq!(device.count(), 0);
}
