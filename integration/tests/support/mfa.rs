//! Helpers for the MFA suites (issue 11): a test clock moat reads its time
//! from, users with passwords and TOTP secrets, `oathtool` codes, a curl
//! client with a cookie jar that fills in moat's login form, raw TLS
//! requests with exact headers, a recording device that serves an HTML
//! page, and checks that no secret reaches the audit trail or the log.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::http_device::read_request;
use super::{
    connect_from, curl_with_ca, exchange, tls_client, tls_connect, Moat, Reply, TlsStream,
    Workspace, DEADLINE,
};

/// The fixed start of every test's clock: 10 s into a 30 s TOTP step, so
/// codes and times are the same on every run.
pub const T0: u64 = 2_000_000_010;

/// The environment variable moat reads its test clock file from.
pub const CLOCK_ENV: &str = "MOAT_TEST_CLOCK_FILE";

/// The one message every failed login shows.
pub const WRONG: &str = "Wrong username, password or code.";

/// The text in every page the device serves.
pub const DEVICE_MARKER: &str = "PUMP-7-STATUS-PAGE-4f1c";

pub const SESSION_COOKIE: &str = "__Host-moat-session";
pub const CSRF_COOKIE: &str = "__Host-moat-csrf";

/// The time moat sees: a file holding Unix seconds, replaced atomically so
/// that moat never reads half a number.
pub struct TestClock {
    path: PathBuf,
    now: AtomicU64,
}

impl TestClock {
    pub fn new(ws: &Workspace, start: u64) -> TestClock {
        let clock = TestClock {
            path: ws.path("clock"),
            now: AtomicU64::new(start),
        };
        clock.set(start);
        clock
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub fn set(&self, t: u64) {
        self.now.store(t, Ordering::SeqCst);
        write_atomically(&self.path, &format!("{t}\n"), 0o644);
    }

    /// Moves the clock on by `secs`; returns the new time.
    pub fn advance(&self, secs: u64) -> u64 {
        let t = self.now() + secs;
        self.set(t);
        t
    }

    /// Moves the clock to the start of the next TOTP step, plus 10 s: a
    /// code that was never used yet.
    pub fn next_step(&self) -> u64 {
        let t = (self.now() / 30 + 1) * 30 + 10;
        self.set(t);
        t
    }
}

/// Writes `contents` to a temporary file next to `path` with `mode`, then
/// renames it over `path`: readers see the old file or the new one.
pub fn write_atomically(path: &Path, contents: &str, mode: u32) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, path).unwrap();
}

/// The TOTP code `oathtool` computes for `secret` (base32) at Unix time `at`.
pub fn totp(secret: &str, at: u64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "--base32", &format!("--now=@{at}"), secret])
        .output()
        .expect("running oathtool");
    assert!(
        out.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code:?}"
    );
    code
}

/// A six-digit code that is not `secret`'s code for any step within two
/// of `at`'s.
pub fn wrong_code(secret: &str, at: u64) -> String {
    let near: Vec<String> = (0..5).map(|i| totp(secret, at - 60 + i * 30)).collect();
    (0..)
        .map(|n: u32| format!("{:06}", 123_456 + n * 1_111))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// A user as the tests know it: the password and the base32 secret in
/// clear, the argon2id hash for the users file.
#[derive(Clone)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub secret: String,
    pub groups: Vec<String>,
    pub disabled: bool,
    hash: String,
}

impl Account {
    pub fn new(name: &str, groups: &[&str]) -> Account {
        let password = format!("pw-{name}-Quartz+Lantern-7391");
        let secret = moat::auth::totp::to_base32(&moat::auth::totp::generate_secret());
        Account {
            name: name.to_string(),
            hash: moat::auth::password::hash(&password),
            password,
            secret,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            disabled: false,
        }
    }

    /// An account whose password and secret come from elsewhere (`moat
    /// user add`).
    pub fn existing(name: &str, password: &str, secret: &str, groups: &[&str]) -> Account {
        Account {
            name: name.to_string(),
            password: password.to_string(),
            secret: secret.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            disabled: false,
            hash: String::new(),
        }
    }

    pub fn disabled(mut self) -> Account {
        self.disabled = true;
        self
    }

    pub fn code(&self, at: u64) -> String {
        totp(&self.secret, at)
    }

    /// Its `[[user]]` table.
    pub fn toml(&self) -> String {
        assert!(!self.hash.is_empty(), "{} has no hash here", self.name);
        let groups: Vec<String> = self.groups.iter().map(|g| format!("{g:?}")).collect();
        format!(
            "[[user]]\nname = {:?}\npassword = {:?}\ntotp_secret = {:?}\ngroups = [{}]\ndisabled = {}\n",
            self.name,
            self.hash,
            self.secret,
            groups.join(", "),
            self.disabled
        )
    }
}

pub fn users_toml(accounts: &[&Account]) -> String {
    let tables: Vec<String> = accounts.iter().map(|a| a.toml()).collect();
    tables.join("\n")
}

/// Writes `users.toml` in the workspace (mode 0600, atomically).
pub fn write_users(ws: &Workspace, accounts: &[&Account]) -> PathBuf {
    let path = ws.path("users.toml");
    write_atomically(&path, &users_toml(accounts), 0o600);
    path
}

/// Runs `moat user --users FILE ARGS…` with `stdin` as its input.
pub fn moat_user(users: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(super::moat_bin())
        .arg("user")
        .arg("--users")
        .arg(users)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running moat user");
    // moat may refuse before it reads its input: a closed pipe then is
    // not the test's failure.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

/// `moat user --users FILE add NAME --group G… --password-stdin`: the
/// account it created, its secret read from the `otpauth://` URI printed.
pub fn add_user_cli(users: &Path, name: &str, groups: &[&str], password: &str) -> Account {
    let mut args = vec!["add", name];
    for g in groups {
        args.extend(["--group", g]);
    }
    args.push("--password-stdin");
    let out = moat_user(users, &args, &format!("{password}\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "moat user add {name} failed ({}): {stdout}{stderr}",
        out.status
    );
    let uri = stdout
        .split_whitespace()
        .find(|w| w.starts_with("otpauth://totp/"))
        .unwrap_or_else(|| panic!("no otpauth URI in: {stdout}"));
    assert!(uri.contains(&format!("moat:{name}")), "{uri}");
    assert!(uri.contains("issuer=moat"), "{uri}");
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    let secret = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {uri}"));
    Account::existing(name, password, &decode(secret), groups)
}

/// A random 32-byte session key file (base64, one line, mode 0600).
pub fn write_session_key(path: &Path) {
    use base64::Engine;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    write_atomically(path, &format!("{text}\n"), 0o600);
}

/// `[auth]` with the users file and key next to moat.toml, and a login
/// rate no test reaches unless it means to; `extra` adds settings.
pub fn auth_table(extra: &str) -> String {
    auth_table_at("users.toml", "session.key", extra)
}

/// `[auth]` naming its users file and session key (relative to moat.toml).
pub fn auth_table_at(users: &str, key: &str, extra: &str) -> String {
    let rate = if extra.contains("login_rate") {
        ""
    } else {
        "login_rate = \"100/s burst 100\"\n"
    };
    format!("[auth]\nusers_file = {users:?}\nsession_key_file = {key:?}\n{rate}{extra}\n")
}

/// One `mfa` HTTP service over TLS. `admits` lists its `users`/`groups`,
/// `http` goes into its `[device.service.http]` table.
pub fn mfa_service(
    ws: &Workspace,
    name: &str,
    upstream: SocketAddr,
    admits: &str,
    http: &str,
) -> String {
    format!(
        r#"
[[device.service]]
name = "{name}"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = ["127.0.0.0/8"]
access = "mfa"
{admits}
{tls}
[device.service.http]
{http}
"#,
        tls = ws.tls_table()
    )
}

/// A whole moat.toml: the gateway and admin tables `Moat::start` writes,
/// `auth`, and one device with `services`.
pub fn config_text(auth: &str, services: &str) -> String {
    format!(
        "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{auth}\n[[device]]\nid = \"pump\"\nname = \"Infusion pump\"\n{services}"
    )
}

/// Starts moat with `config` (a path) on the test clock.
pub fn start_config(config: &Path, clock: &TestClock, services: &[&str]) -> Moat {
    let clock = clock.path().to_path_buf();
    Moat::start_file_with(config, services, move |c| {
        c.env(CLOCK_ENV, &clock);
    })
}

/// Writes moat.toml into the workspace and starts moat on the test clock.
pub fn start_mfa(
    ws: &Workspace,
    clock: &TestClock,
    auth: &str,
    services: &[(&str, String)],
) -> Moat {
    let body: String = services.iter().map(|(_, s)| s.as_str()).collect();
    let names: Vec<&str> = services.iter().map(|(n, _)| *n).collect();
    let path = ws.write("moat.toml", &config_text(auth, &body));
    start_config(&path, clock, &names)
}

/// One request as the device received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every `Cookie` field, joined.
    pub fn cookies(&self) -> String {
        self.values("cookie").join("; ")
    }
}

/// A keep-alive HTTP/1.1 device that records every request and answers
/// each with a small HTML page holding `DEVICE_MARKER`.
pub struct Device {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Device {
    pub fn start() -> Device {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve_html(stream, &log);
                });
            }
        });
        Device { addr, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The requests that arrived for `path`.
    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// The one request that arrived for `path`.
    pub fn request(&self, path: &str) -> Seen {
        let found = self.requests(path);
        assert_eq!(found.len(), 1, "{path}: {:?}", self.seen());
        found.into_iter().next().unwrap()
    }

    /// No request ever carried one of moat's cookies.
    pub fn assert_never_saw_moat_cookies(&self) {
        for s in self.seen() {
            let cookies = s.cookies();
            assert!(
                !cookies.contains("__Host-moat"),
                "a moat cookie reached the device: {s:?}"
            );
        }
    }
}

fn serve_html(stream: TcpStream, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader)? {
        let body = format!(
            "<!doctype html><html><head><title>Pump 7</title></head><body><h1>{DEVICE_MARKER}</h1><p>{} {}</p></body></html>\n",
            html_escape(&req.method),
            html_escape(&req.path)
        );
        log.lock().unwrap().push(Seen {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
        });
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if req.close { "Connection: close\r\n" } else { "" }
        )?;
        out.flush()?;
        if req.close {
            break;
        }
    }
    Ok(())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Undoes the HTML escapes a page may use in attribute values.
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `(name, value)` of every `<input>` in `html`, values unescaped.
pub fn inputs(html: &str) -> Vec<(String, String)> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<input") {
        let start = from + i + "<input".len();
        let end = lower[start..].find('>').map_or(html.len(), |e| start + e);
        let attrs = attributes(&html[start..end]);
        let get = |n: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        found.push((get("name"), get("value")));
        from = end;
    }
    found
}

/// The value of the `<input name=…>` called `name`.
pub fn input(html: &str, name: &str) -> Option<String> {
    inputs(html)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn attributes(tag: &str) -> Vec<(String, String)> {
    let b = tag.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let ns = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        if ns == i {
            break;
        }
        let name = tag[ns..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                i = vs;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = tag[vs..i.min(b.len())].to_string();
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = tag[vs..i].to_string();
            }
        }
        out.push((name, html_unescape(&value)));
    }
    out
}

/// Every `Set-Cookie` field of a reply.
pub fn set_cookies(reply: &Reply) -> Vec<&str> {
    reply
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The `Set-Cookie` field that sets `name`.
pub fn set_cookie<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    set_cookies(reply)
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// The value a `Set-Cookie` field gives its cookie.
pub fn cookie_value(set_cookie: &str) -> &str {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.trim()
}

/// The attributes of a `Set-Cookie` field, lowercased, without the pair.
pub fn cookie_attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// Does this `Set-Cookie` field delete its cookie?
pub fn clears(set_cookie: &str) -> bool {
    cookie_value(set_cookie).is_empty()
        || cookie_attributes(set_cookie)
            .iter()
            .any(|a| a == "max-age=0" || a.starts_with("expires=thu, 01 jan 1970"))
}

/// curl with a cookie jar of its own, speaking to one service.
pub struct Agent<'a> {
    ws: &'a Workspace,
    pub base: String,
    jar: PathBuf,
    source: Option<String>,
}

impl<'a> Agent<'a> {
    pub fn new(ws: &'a Workspace, addr: SocketAddr, name: &str) -> Agent<'a> {
        let jar = ws.path(&format!("jar-{name}-{}.txt", addr.port()));
        std::fs::write(&jar, "").unwrap();
        Agent {
            ws,
            base: format!("https://127.0.0.1:{}", addr.port()),
            jar,
            source: None,
        }
    }

    /// The same client from another loopback address.
    pub fn with_source(mut self, source: &str) -> Agent<'a> {
        self.source = Some(source.to_string());
        self
    }

    /// Another agent sharing this one's jar, at another service.
    pub fn at(&self, addr: SocketAddr) -> Agent<'a> {
        Agent {
            ws: self.ws,
            base: format!("https://127.0.0.1:{}", addr.port()),
            jar: self.jar.clone(),
            source: self.source.clone(),
        }
    }

    fn run(&self, args: &[&str]) -> Reply {
        let jar = self.jar.to_str().unwrap();
        let mut all = vec!["-b", jar, "-c", jar];
        if let Some(s) = &self.source {
            all.extend(["--interface", s.as_str()]);
        }
        all.extend_from_slice(args);
        curl_with_ca(self.ws, &all)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` as a browser would (accepting HTML).
    pub fn get(&self, path: &str) -> Reply {
        self.get_with(
            path,
            &["-H", "Accept: text/html,application/xhtml+xml,*/*;q=0.8"],
        )
    }

    pub fn get_with(&self, path: &str, extra: &[&str]) -> Reply {
        let url = self.url(path);
        let mut args = extra.to_vec();
        args.push(&url);
        self.run(&args)
    }

    /// `POST path` with an urlencoded form.
    pub fn post_form(&self, path: &str, fields: &[(&str, &str)], extra: &[&str]) -> Reply {
        let url = self.url(path);
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args: Vec<&str> = extra.to_vec();
        for e in &encoded {
            args.extend(["--data-urlencode", e.as_str()]);
        }
        if encoded.is_empty() {
            args.extend(["--data", ""]);
        }
        args.push(&url);
        self.run(&args)
    }

    /// The value of cookie `name` in the jar.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.jar).unwrap_or_default();
        text.lines()
            .map(|l| l.strip_prefix("#HttpOnly_").unwrap_or(l))
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 7 && f[5] == name).then(|| f[6].to_string())
            })
            .next()
    }

    pub fn session(&self) -> Option<String> {
        self.cookie(SESSION_COOKIE)
    }

    /// `GET /.moat/login?next=…`: the page, which must be the form.
    pub fn login_page(&self, next: Option<&str>) -> Reply {
        let path = match next {
            Some(n) => format!("/.moat/login?next={}", encode(n)),
            None => "/.moat/login".to_string(),
        };
        let page = self.get(&path);
        assert_eq!(page.status, 200, "{page:?}");
        assert!(
            input(&page.body, "csrf").is_some(),
            "no csrf field: {page:?}"
        );
        page
    }

    /// Fetches the form, then submits these credentials with its CSRF
    /// token and `next` (the form's own, when `next` is `None`).
    pub fn login_as(
        &self,
        username: &str,
        password: &str,
        code: &str,
        next: Option<&str>,
    ) -> Reply {
        self.login_with(username, password, code, next, &[])
    }

    pub fn login_with(
        &self,
        username: &str,
        password: &str,
        code: &str,
        next: Option<&str>,
        extra: &[&str],
    ) -> Reply {
        let page = self.login_page(None);
        let csrf = input(&page.body, "csrf").unwrap();
        let form_next = input(&page.body, "next").unwrap_or_default();
        let next = next.unwrap_or(&form_next);
        self.post_form(
            "/.moat/login",
            &[
                ("username", username),
                ("password", password),
                ("code", code),
                ("csrf", &csrf),
                ("next", next),
            ],
            extra,
        )
    }

    /// Signs `account` in with its code at `at`; the login must succeed.
    /// Returns the session cookie's value.
    pub fn sign_in(&self, account: &Account, at: u64) -> String {
        let reply = self.login_as(&account.name, &account.password, &account.code(at), None);
        assert_eq!(
            reply.status, 303,
            "login of {} failed: {reply:?}",
            account.name
        );
        let set = set_cookie(&reply, SESSION_COOKIE).expect("a session cookie");
        let value = cookie_value(set).to_string();
        assert_eq!(self.session().as_deref(), Some(value.as_str()));
        value
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The `next` a login redirect (`/.moat/login?next=…`) carries, decoded.
pub fn login_next(location: &str) -> String {
    let query = location
        .strip_prefix("/.moat/login?")
        .unwrap_or_else(|| panic!("not the login page: {location}"));
    let next = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("next="))
        .unwrap_or_else(|| panic!("no next in {location}"));
    decode(&next.replace('+', " "))
}

/// A TLS connection from 127.0.0.1 to a service, handshake done.
pub fn tls_to(ws: &Workspace, addr: SocketAddr) -> TlsStream {
    tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        connect_from("127.0.0.1", addr),
    )
    .unwrap()
}

/// `METHOD path` with exactly these extra header lines, on `s`.
pub fn request_on(s: &mut TlsStream, method: &str, path: &str, headers: &[&str]) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    exchange(s, &req)
}

/// `GET path` on a new TLS connection with exactly these header lines.
pub fn raw_get(ws: &Workspace, addr: SocketAddr, path: &str, headers: &[&str]) -> Reply {
    let mut s = tls_to(ws, addr);
    let mut all = headers.to_vec();
    all.push("Connection: close");
    request_on(&mut s, "GET", path, &all)
}

/// `GET path` with a session cookie, as a non-browser client (no HTML).
pub fn get_with_session(ws: &Workspace, addr: SocketAddr, path: &str, cookie: &str) -> Reply {
    let header = format!("Cookie: {SESSION_COOKIE}={cookie}");
    raw_get(ws, addr, path, &[&header, "Accept: application/json"])
}

/// Waits until the peer closes `s` (any data before the close is
/// ignored); panics if it stays open for `DEADLINE`.
pub fn wait_closed(s: &mut TlsStream) {
    s.sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection is still open after {DEADLINE:?}")
            }
            Err(_) => return,
        }
    }
}

/// The reply is moat's refusal of a request without a valid session, for
/// a client that does not ask for HTML.
pub fn assert_auth_required(reply: &Reply) {
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.header("x-moat-reason"),
        Some("auth_required"),
        "{reply:?}"
    );
    assert!(!reply.body.contains(DEVICE_MARKER), "{reply:?}");
}

/// The reply is a refusal with `status` and `x-moat-reason: reason`.
pub fn assert_denied(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some(reason), "{reply:?}");
    assert!(!reply.body.contains(DEVICE_MARKER), "{reply:?}");
}

/// The reply is the login page again with the one generic message.
pub fn assert_login_failed(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.body.contains(WRONG), "{reply:?}");
    assert_eq!(reply.body.matches(WRONG).count(), 1, "{reply:?}");
    assert!(
        set_cookie(reply, SESSION_COOKIE).map_or(true, clears),
        "a failed login set a session: {reply:?}"
    );
}

/// The `auth_failed` reasons so far, in order.
pub fn failure_reasons(moat: &Moat) -> Vec<String> {
    moat.events("auth_failed")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Waits for the `n`th `auth_failed` event (1-based) and returns it.
pub fn nth_failure(moat: &Moat, n: usize) -> Value {
    super::wait_for(&format!("auth_failed #{n}"), || {
        moat.events("auth_failed").into_iter().nth(n - 1)
    })
}

/// Neither the audit trail nor moat's log holds any of `secrets`
/// (passwords, secrets, cookie values; codes are matched as whole
/// numbers).
pub fn assert_no_secrets(moat: &Moat, secrets: &[&str]) {
    let audit = std::fs::read_to_string(&moat.audit).unwrap_or_default();
    let log = moat.stderr();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for (what, text) in [("audit trail", &audit), ("log", &log)] {
            assert!(
                !contains_token(text, secret),
                "the {what} holds a secret ({secret}): {text}"
            );
        }
    }
}

/// Does `hay` contain `needle`, not as part of a longer run of digits
/// (for numeric needles such as codes)?
pub fn contains_token(hay: &str, needle: &str) -> bool {
    let numeric = needle.bytes().all(|b| b.is_ascii_digit());
    hay.match_indices(needle).any(|(i, _)| {
        if !numeric {
            return true;
        }
        let before = hay[..i].bytes().next_back();
        let after = hay[i + needle.len()..].bytes().next();
        // A timestamp's fraction ("51.620710Z") is not a leak.
        !before.is_some_and(|b| b.is_ascii_digit() || b == b'.')
            && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

/// The value of the first `/metrics` sample called `name` whose labels
/// contain every one of `labels` (`key="value"`).
pub fn metric(moat: &Moat, name: &str, labels: &[&str]) -> Option<f64> {
    let text = moat.admin_get("/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Waits for `reload_applied` number `n` (counting from the first).
pub fn wait_reloads(moat: &Moat, n: usize) -> Value {
    super::wait_for(&format!("reload #{n}"), || {
        moat.events("reload_applied").into_iter().nth(n - 1)
    })
}
