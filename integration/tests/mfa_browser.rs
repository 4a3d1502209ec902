//! A real browser through moat's login portal (issue 11): headless
//! Chromium driven by Selenium (`integration/browser/login.py`) opens a page
//! behind an `mfa` service, is sent to the login form, signs in with a
//! password and an `oathtool` code, and must end on the device's page.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use support::mfa::*;
use support::{require, wait_for, Workspace};

const PYTHON: &str = "/usr/bin/python3";

/// Fails (not skips) without Chromium, ChromeDriver or Debian's Selenium.
fn require_browser() {
    require("oathtool");
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver", PYTHON] {
        require(tool);
    }
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        selenium,
        "{PYTHON} cannot import selenium: apt-get install python3-selenium (see .ci/run)"
    );
}

/// Runs the login script: whether it succeeded, its stdout and stderr.
fn run_login_script(args: &[&str], http1: bool) -> (bool, String, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration/browser/login.py"
    );
    let mut child = Command::new(PYTHON)
        .arg(script)
        .args(args)
        .env("MOAT_BROWSER_HTTP1", if http1 { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running login.py");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Chromium's start on a busy machine is slow: a deadline of its own.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("login.py did not finish in 180 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// Chromium as it comes: HTTP/2 over TLS, so the login form's POST goes
/// over h2 with an `Origin`.
#[test]
fn chromium_signs_in_through_the_portal_and_lands_on_the_device_page() {
    browser_login(false);
}

/// The same with Chromium limited to HTTP/1.1 (`--disable-http2`).
#[test]
fn chromium_over_http1_signs_in_through_the_portal_and_lands_on_the_device_page() {
    browser_login(true);
}

fn browser_login(http1: bool) {
    require_browser();
    let ws = Workspace::new();
    let clock = TestClock::new(&ws, T0);
    let device = Device::start();
    let alice = Account::new("alice", &["ops"]);
    write_users(&ws, &[&alice]);
    let services = vec![(
        "web",
        mfa_service(
            &ws,
            "web",
            device.addr,
            "users = [\"alice\"]",
            "user_header = \"X-Remote-User\"",
        ),
    )];
    let moat = start_mfa(&ws, &clock, &auth_table(""), &services);
    let port = moat.addr("web").port();
    let code = alice.code(T0);
    let url = format!("https://127.0.0.1:{port}/pump/status?x=1");

    let (ok, out, err) = run_login_script(
        &[&url, "alice", &alice.password, &code, DEVICE_MARKER],
        http1,
    );
    assert!(
        ok,
        "login.py failed:\n{out}\n{err}\nauth_failed: {:?}",
        moat.events("auth_failed")
    );
    let line = |tag: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {tag} in:\n{out}"))
            .to_string()
    };
    let login_url = line("LOGIN_URL ");
    assert!(
        login_url.starts_with(&format!("https://127.0.0.1:{port}/.moat/login?next=")),
        "{login_url}"
    );
    assert_eq!(line("FINAL_URL "), url);
    let text: String = serde_json::from_str(&line("PAGE_TEXT ")).unwrap();
    assert!(text.contains(DEVICE_MARKER), "{text}");

    // The device saw the browser's request as alice, without moat's cookies.
    let seen = wait_for("the device request", || {
        device.requests("/pump/status?x=1").into_iter().next()
    });
    assert_eq!(seen.values("x-remote-user"), ["alice"], "{seen:?}");
    device.assert_never_saw_moat_cookies();
    assert!(
        device.seen().iter().all(|s| !s.path.starts_with("/.moat")),
        "{:?}",
        device.seen()
    );

    let ok = moat.wait_event("auth_succeeded", |e| e["user"] == "alice");
    assert_eq!(ok["service"], "web", "{ok}");
    let req = moat.wait_event("http_request", |e| {
        e["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/pump/status"))
            && e["status"] == 200
    });
    assert_eq!(req["principal"]["name"], "alice", "{req}");
    assert_no_secrets(&moat, &[&alice.password, &code, &alice.secret]);
}
