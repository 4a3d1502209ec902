//! Helpers for the grant suite (issue 12): configs with a portal and
//! `mfa` TCP services, a person signed in on the portal with curl who opens
//! and ends grants there, the admin grant API and `moat grants`, TCP
//! clients from chosen loopback addresses, `openssl s_client` with a client
//! certificate, a second client certificate made with openssl, break-glass
//! codes from `moat breakglass issue` (dcmtk peers: `support::dicom`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::mfa::{input, inputs, start_config, Account, Agent, TestClock};
use super::{connect_from, moat_bin, wait_for, Moat, Reply, Workspace, DEADLINE};

// ---------------------------------------------------------------------------
// Configuration

/// A whole moat.toml: the `[gateway]` and `[admin]` tables `Moat::start`
/// writes, `auth` (see `mfa::auth_table`), then `devices`.
pub fn grants_config(auth: &str, devices: &str) -> String {
    format!(
        "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{auth}\n{devices}"
    )
}

/// One `[[device]]` table followed by its `services`. `end_of_support` is
/// a `YYYY-MM-DD` date (a TOML date, unquoted in the file).
pub fn device(
    id: &str,
    name: &str,
    location: &str,
    end_of_support: Option<&str>,
    services: &str,
) -> String {
    let eos = end_of_support.map_or(String::new(), |d| format!("end_of_support = {d}\n"));
    format!("\n[[device]]\nid = {id:?}\nname = {name:?}\nlocation = {location:?}\n{eos}{services}")
}

/// The portal device: moat's own HTTPS pages on a listener of their own
/// ("portal"). `client_certs`: ask for a client certificate from the dev
/// CA without requiring one (what lets a person bind a grant to it).
pub fn portal_device(ws: &Workspace, client_certs: bool) -> String {
    portal_device_named(ws, "moat portal", client_certs)
}

pub fn portal_device_named(ws: &Workspace, name: &str, client_certs: bool) -> String {
    let mut tls = ws.tls_table();
    if client_certs {
        tls.push_str(&format!(
            "client_ca = {:?}\nclient_cert = \"optional\"\n",
            ws.certs.ca
        ));
    }
    format!(
        "\n[[device]]\nid = \"moat\"\nname = {name:?}\n\n[[device.service]]\nname = \"portal\"\nprotocol = \"portal\"\nlisten = \"127.0.0.1:0\"\nallow = [\"127.0.0.0/8\"]\n{tls}"
    )
}

/// A `tcp` service that only grants open (`access = "mfa"`), on a free
/// port, admitting 127.0.0.0/8. `settings` adds lines (`groups`,
/// `max_grant`, `on_grant_end`, `break_glass`...); `tls` is a
/// `[device.service.tls]` table, or `None` for plaintext.
pub fn grant_service(
    name: &str,
    upstream: SocketAddr,
    settings: &str,
    tls: Option<&str>,
) -> String {
    grant_service_allowing(name, upstream, "127.0.0.0/8", settings, tls)
}

pub fn grant_service_allowing(
    name: &str,
    upstream: SocketAddr,
    allow: &str,
    settings: &str,
    tls: Option<&str>,
) -> String {
    format!(
        "\n[[device.service]]\nname = {name:?}\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [{allow:?}]\naccess = \"mfa\"\n{settings}\n{}\n",
        tls.unwrap_or("plaintext = true")
    )
}

/// A `[device.service.tls]` table with the dev server certificates that
/// requires a client certificate from the dev CA.
pub fn mtls_table(ws: &Workspace) -> String {
    format!(
        "{}client_ca = {:?}\nclient_cert = \"required\"\n",
        ws.tls_table(),
        ws.certs.ca
    )
}

/// Writes moat.toml (`text`) into the workspace and starts moat on the
/// test clock, waiting for `services` to listen.
pub fn start_grants(ws: &Workspace, clock: &TestClock, text: &str, services: &[&str]) -> Moat {
    let path = ws.write("moat.toml", text);
    start_config(&path, clock, services)
}

// ---------------------------------------------------------------------------
// The portal, as a person with curl uses it

/// A person signed in on the portal with curl (`--interface SOURCE`),
/// optionally presenting a client certificate on every request after the
/// login.
pub struct PortalUser<'a> {
    pub agent: Agent<'a>,
    pub account: Account,
    pub source: String,
    portal: SocketAddr,
    cert: Option<(PathBuf, PathBuf)>,
}

impl<'a> PortalUser<'a> {
    /// Signs `account` in on the portal at `portal` from `source` with
    /// its TOTP code at `at` (oathtool's); the login must succeed.
    pub fn sign_in(
        ws: &'a Workspace,
        portal: SocketAddr,
        account: &Account,
        source: &str,
        at: u64,
    ) -> PortalUser<'a> {
        let agent =
            Agent::new(ws, portal, &format!("{}-{source}", account.name)).with_source(source);
        agent.sign_in(account, at);
        PortalUser {
            agent,
            account: account.clone(),
            source: source.to_string(),
            portal,
            cert: None,
        }
    }

    /// From now on, every request shows this client certificate.
    pub fn with_cert(mut self, cert: &Path, key: &Path) -> PortalUser<'a> {
        self.cert = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// The same session (the same cookie jar and address), without a
    /// client certificate.
    pub fn without_cert(&self) -> PortalUser<'a> {
        PortalUser {
            agent: self.agent.at(self.portal),
            account: self.account.clone(),
            source: self.source.clone(),
            portal: self.portal,
            cert: None,
        }
    }

    fn extra<'s>(&'s self, more: &[&'s str]) -> Vec<&'s str> {
        let mut args = Vec::new();
        if let Some((cert, key)) = &self.cert {
            args.extend([
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ]);
        }
        args.extend_from_slice(more);
        args
    }

    /// `GET /.moat/`: the home page, which must be answered 200.
    pub fn home(&self) -> Reply {
        let extra = self.extra(&["-H", "Accept: text/html"]);
        let page = self.agent.get_with("/.moat/", &extra);
        assert_eq!(
            page.status, 200,
            "home page of {}: {page:?}",
            self.account.name
        );
        page
    }

    /// The home page's CSRF token: the same in every form of the page.
    pub fn csrf(&self) -> String {
        let page = self.home();
        let tokens: Vec<String> = inputs(&page.body)
            .into_iter()
            .filter(|(n, _)| n == "csrf")
            .map(|(_, v)| v)
            .collect();
        assert!(!tokens.is_empty(), "no csrf field: {page:?}");
        assert!(
            tokens.iter().all(|t| *t == tokens[0] && !t.is_empty()),
            "one token per page: {tokens:?}"
        );
        tokens[0].clone()
    }

    /// `POST path` with these form fields (and the certificate, if any).
    pub fn post(&self, path: &str, fields: &[(&str, &str)], more: &[&str]) -> Reply {
        let extra = self.extra(more);
        self.agent.post_form(path, fields, &extra)
    }

    /// Fills in the grant form for `service` ("DEVICE/SERVICE") with the
    /// page's CSRF token: the portal's answer, whatever it is.
    pub fn open(&self, service: &str, minutes: &str, bind: &str) -> Reply {
        let csrf = self.csrf();
        self.post(
            "/.moat/grants",
            &[
                ("csrf", &csrf),
                ("service", service),
                ("minutes", minutes),
                ("bind", bind),
            ],
            &[],
        )
    }

    /// Opens a grant that must be granted (303 to `/.moat/`); returns its
    /// `grant_opened` audit event.
    pub fn open_grant(&self, moat: &Moat, service: &str, minutes: u64, bind: &str) -> Value {
        let before = moat.events("grant_opened").len();
        let reply = self.open(service, &minutes.to_string(), bind);
        assert_eq!(
            reply.status, 303,
            "{} could not open {service}: {reply:?}",
            self.account.name
        );
        assert_eq!(reply.header("location"), Some("/.moat/"), "{reply:?}");
        let name = self.account.name.clone();
        wait_for("grant_opened", || {
            let opened = moat.events("grant_opened");
            (opened.len() > before)
                .then(|| {
                    opened
                        .into_iter()
                        .skip(before)
                        .find(|e| e["user"] == name.as_str())
                })
                .flatten()
        })
    }

    /// `POST /.moat/grants/end` for grant `id`: the portal's answer.
    pub fn end(&self, id: &str) -> Reply {
        let csrf = self.csrf();
        self.post("/.moat/grants/end", &[("csrf", &csrf), ("id", id)], &[])
    }
}

/// The values of every `<input name=NAME>` of a page.
pub fn input_values(html: &str, name: &str) -> Vec<String> {
    inputs(html)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

/// The grant forms of a page: for each, the service it names and the
/// bindings it offers.
pub fn grant_forms(html: &str) -> Vec<(String, Vec<String>)> {
    html.split("<form")
        .skip(1)
        .map(|f| f.split("</form>").next().unwrap_or(f))
        .filter_map(|f| {
            let service = input(f, "service")?;
            Some((service, input_values(f, "bind")))
        })
        .collect()
}

/// The bindings the page's form for `service` offers (panics if it has no
/// form for it).
pub fn binds_for(html: &str, service: &str) -> Vec<String> {
    grant_forms(html)
        .into_iter()
        .find(|(s, _)| s == service)
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no grant form for {service}: {html}"))
}

/// The break-glass form's CSRF token, fetched by `agent` (which keeps the
/// pre-login cookie that goes with it).
pub fn break_glass_form(agent: &Agent) -> Reply {
    let page = agent.get("/.moat/break-glass");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(input(&page.body, "csrf").is_some(), "no csrf: {page:?}");
    page
}

// ---------------------------------------------------------------------------
// The admin API and `moat grants`

/// The body of an admin answer (`admin_get` returns the whole response).
fn body_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `GET /grants` on the admin listener: the open grants.
pub fn admin_grants(moat: &Moat) -> Vec<Value> {
    let raw = moat.admin_get("/grants");
    assert!(raw.starts_with("HTTP/1.1 200"), "GET /grants: {raw}");
    let v: Value = serde_json::from_str(body_of(&raw))
        .unwrap_or_else(|e| panic!("GET /grants is not JSON ({e}): {raw}"));
    v["grants"]
        .as_array()
        .unwrap_or_else(|| panic!("no grants array: {v}"))
        .clone()
}

/// The open grant with this id, if the admin API lists it.
pub fn admin_grant(moat: &Moat, id: &str) -> Option<Value> {
    admin_grants(moat).into_iter().find(|g| g["id"] == id)
}

/// `DELETE path` on the admin listener: (status, body).
pub fn admin_delete(moat: &Moat, path: &str) -> (u16, String) {
    moat.admin_request("DELETE", path)
}

/// `moat grants ARGS… --admin ADDR` against this moat's admin listener.
pub fn moat_grants(moat: &Moat, args: &[&str]) -> Output {
    let admin = moat.admin.expect("admin listener").to_string();
    Command::new(moat_bin())
        .arg("grants")
        .args(args)
        .args(["--admin", &admin])
        .stdin(Stdio::null())
        .output()
        .expect("running moat grants")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Is this a grant id as the API writes them: 16 lower-case hex digits?
pub fn is_grant_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

// ---------------------------------------------------------------------------
// TCP clients through moat

/// A plaintext connection through moat to an echo device.
pub struct Line {
    pub s: TcpStream,
    pub local: SocketAddr,
}

/// Connects from `source` to `addr` (a TCP connection; moat decides after).
pub fn line_from(source: &str, addr: SocketAddr) -> Line {
    let s = connect_from(source, addr);
    let local = s.local_addr().unwrap();
    Line { s, local }
}

impl Line {
    /// Sends `msg` and reads it back.
    pub fn echo(&mut self, msg: &[u8]) -> std::io::Result<()> {
        self.s.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        self.s.read_exact(&mut back)?;
        if back != msg {
            return Err(std::io::Error::other(format!(
                "echoed {:?} for {:?}",
                String::from_utf8_lossy(&back),
                String::from_utf8_lossy(msg)
            )));
        }
        Ok(())
    }

    pub fn assert_echoes(&mut self, msg: &str) {
        if let Err(e) = self.echo(msg.as_bytes()) {
            panic!(
                "the connection from {} does not echo {msg:?}: {e}",
                self.local
            );
        }
    }

    /// Reads until moat closes the connection; the time that took. Panics
    /// if it is still open after `DEADLINE`.
    pub fn wait_eof(&mut self) -> Duration {
        let start = Instant::now();
        self.s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!(
                        "the connection from {} is still open after {DEADLINE:?}",
                        self.local
                    )
                }
                Err(_) => return start.elapsed(),
            }
        }
    }
}

/// A plaintext connection from `source` that moat must refuse for want of
/// a grant, before a byte reaches the device and before any TLS work: its
/// `connection_denied` event.
pub fn assert_no_grant(moat: &Moat, source: &str, addr: SocketAddr) -> Value {
    let mut line = line_from(source, addr);
    // Were it admitted, the echo device would answer this.
    let _ = line.s.write_all(b"probe\n");
    let mut buf = [0u8; 64];
    match line.s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{source} was let through without a grant: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{source}: neither refused nor answered within {DEADLINE:?}")
        }
        Err(_) => {} // reset: refused
    }
    let denied = moat.wait_for_client("connection_denied", line.local);
    assert_eq!(denied["reason"], "no_grant", "{denied}");
    assert!(
        denied.get("tls").is_none(),
        "TLS work before the refusal: {denied}"
    );
    denied
}

/// Asserts that `moat` records no `kind` event for the client `local`.
pub fn assert_no_event_for(moat: &Moat, kind: &str, local: SocketAddr) {
    let c = local.to_string();
    let found: Vec<Value> = moat
        .events(kind)
        .into_iter()
        .filter(|e| e["client"] == c.as_str())
        .collect();
    assert!(found.is_empty(), "{kind} for {c}: {found:#?}");
}

/// The events of `kind` on `service` whose client is from `ip` (any port).
pub fn events_from(moat: &Moat, kind: &str, service: &str, ip: &str) -> Vec<Value> {
    let prefix = format!("{ip}:");
    moat.events(kind)
        .into_iter()
        .filter(|e| e["service"] == service)
        .filter(|e| e["client"].as_str().is_some_and(|c| c.starts_with(&prefix)))
        .collect()
}

// ---------------------------------------------------------------------------
// openssl: a second client certificate, key hashes, s_client

use super::run_ok as run;

/// Another client certificate from the dev CA (its key is the `ca.key`
/// that `moat certs dev` writes), made with openssl: (cert, key).
pub fn other_client_cert(ws: &Workspace) -> (PathBuf, PathBuf) {
    let dir = &ws.certs.dir;
    let key = dir.join("other.key");
    let csr = dir.join("other.csr");
    let cert = dir.join("other.pem");
    let ext = ws.write(
        "other-ext.cnf",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    let p = |p: &Path| p.to_str().unwrap().to_string();
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&key),
            "-subj",
            "/O=moat development/CN=other-client",
            "-out",
            &p(&csr),
        ],
    );
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ws.certs.ca),
            "-CAkey",
            &p(&dir.join("ca.key")),
            "-set_serial",
            "4242",
            "-days",
            "3650",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&cert),
        ],
    );
    run(
        "openssl",
        &["verify", "-CAfile", &p(&ws.certs.ca), &p(&cert)],
    );
    (cert, key)
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (DER), in hex, as
/// openssl computes it.
pub fn spki_sha256(cert: &Path) -> String {
    let out = run(
        "sh",
        &[
            "-c",
            &format!(
                "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
                cert.display()
            ),
        ],
    );
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex.len(), 64, "{hex:?}");
    hex
}

/// `openssl s_client` from a chosen loopback address (`-bind`), trusting
/// the dev CA, with a client certificate or none; `-quiet`, so what it
/// prints is what the server sent.
pub struct SClient {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    eof: Arc<AtomicBool>,
    log: PathBuf,
}

pub fn s_client(
    ws: &Workspace,
    name: &str,
    source: &str,
    addr: SocketAddr,
    cert: Option<(&Path, &Path)>,
) -> SClient {
    let log = ws.path(&format!("s_client-{name}.log"));
    let connect = addr.to_string();
    let mut args = vec![
        "s_client".to_string(),
        "-connect".into(),
        connect,
        "-bind".into(),
        source.into(),
        "-servername".into(),
        "localhost".into(),
        "-CAfile".into(),
        ws.certs.ca.to_str().unwrap().into(),
        "-verify_return_error".into(),
        "-quiet".into(),
    ];
    if let Some((c, k)) = cert {
        args.extend([
            "-cert".into(),
            c.to_str().unwrap().into(),
            "-key".into(),
            k.to_str().unwrap().into(),
        ]);
    }
    let mut child = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("running openssl s_client");
    let out = Arc::new(Mutex::new(Vec::new()));
    let eof = Arc::new(AtomicBool::new(false));
    let mut pipe = child.stdout.take().unwrap();
    let (sink, done) = (out.clone(), eof.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    SClient {
        stdin: child.stdin.take(),
        child,
        out,
        eof,
        log,
    }
}

impl SClient {
    /// Types `data` into s_client (errors ignored: it may be gone).
    pub fn send(&mut self, data: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(data.as_bytes());
            let _ = stdin.flush();
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server's answers contain `needle`.
    pub fn wait_output(&self, needle: &str) {
        wait_for(&format!("{needle:?} from s_client"), || {
            if self.output().contains(needle) {
                return Some(());
            }
            if self.eof.load(Ordering::SeqCst) && !self.output().contains(needle) {
                panic!(
                    "s_client ended without {needle:?}: {:?}\n{}",
                    self.output(),
                    self.log()
                );
            }
            None
        })
    }

    /// Waits until the server closed the connection and s_client exited.
    pub fn wait_closed(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let eof = &self.eof;
        wait_for("s_client to end", || {
            let status = child.try_wait().unwrap()?;
            eof.load(Ordering::SeqCst).then_some(status)
        })
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Break-glass codes

/// Is `s` a code as `moat breakglass issue` prints them: dash-separated
/// groups of capitals and digits, 20 to 30 of them in all (`K7QF-ABCD-EFGH-
/// JKLM-NPQR`; moat prints an id of 4 then four groups of 5).
pub fn is_break_glass_code(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let chars: usize = groups.iter().map(|g| g.len()).sum();
    groups.len() >= 4
        && (20..=30).contains(&chars)
        && groups.iter().all(|g| {
            (4..=5).contains(&g.len())
                && g.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

/// `moat breakglass --codes FILE issue --user USER --count N`: the codes
/// it printed, one a line.
pub fn issue_codes(codes: &Path, user: &str, count: usize) -> Vec<String> {
    let out = Command::new(moat_bin())
        .arg("breakglass")
        .arg("--codes")
        .arg(codes)
        .args(["issue", "--user", user, "--count", &count.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("running moat breakglass");
    assert!(
        out.status.success(),
        "moat breakglass issue failed ({}): {}",
        out.status,
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found: Vec<String> = stdout
        .lines()
        .flat_map(|l| l.split_whitespace())
        .filter(|w| is_break_glass_code(w))
        .map(str::to_string)
        .collect();
    assert_eq!(found.len(), count, "codes printed: {stdout}");
    found
}
