//! Shared helpers for the end-to-end tests: start the real `moat` binary on
//! loopback with a generated config, talk to it with real clients, and read
//! its audit trail. Every wait has a deadline; nothing sleeps to synchronise.
#![allow(dead_code)]

pub mod dicom;
pub mod grants;
pub mod hl7;
pub mod http_device;
pub mod mfa;
pub mod siem;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use moat::certs::DevCerts;

pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn moat_bin() -> &'static str {
    env!("CARGO_BIN_EXE_moat")
}

fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::CryptoProvider::install_default(
            rustls::crypto::aws_lc_rs::default_provider(),
        );
    });
}

/// Runs `program` with `args` (stdin closed) and panics, with its output,
/// unless it succeeds.
pub fn run_ok(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` until it returns `Some`, or panics after `DEADLINE`.
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_or(what, f, || "nothing to show".into())
}

/// [`wait_for`], whose panic on timeout also says what was seen instead
/// (`context`, read only then).
pub fn wait_for_or<T>(what: &str, f: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    wait_for_within(what, DEADLINE, f, context)
}

/// [`wait_for_or`] with its own deadline, for what takes longer by design
/// (a reconnect after backoff).
pub fn wait_for_within<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}; seen: {}", context());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary folder with dev certificates in `certs/`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub certs: DevCerts,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("moat-it-")
            .tempdir()
            .unwrap();
        let certs = moat::certs::write_dev_set(&dir.path().join("certs")).unwrap();
        Workspace { dir, certs }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
    /// A `[device.service.tls]` table using the dev server certificates.
    pub fn tls_table(&self) -> String {
        format!(
            "[device.service.tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}, {{ cert = {:?}, key = {:?} }}]\n",
            self.certs.server_cert, self.certs.server_key, self.certs.server_rsa_cert, self.certs.server_rsa_key
        )
    }
}

/// A running `moat run` process.
pub struct Moat {
    child: Option<Child>,
    pub config: PathBuf,
    pub audit: PathBuf,
    pub admin: Option<SocketAddr>,
    bound: HashMap<String, SocketAddr>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl Moat {
    /// Writes `body` (devices and networks) into `ws/moat.toml` with an audit
    /// file and a free admin port, starts moat and waits until each of
    /// `services` is listening.
    pub fn start(ws: &Workspace, body: &str, services: &[&str]) -> Moat {
        let config = format!(
            "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{body}"
        );
        let path = ws.write("moat.toml", &config);
        Self::start_file(&path, services)
    }

    pub fn start_file(config: &Path, services: &[&str]) -> Moat {
        Self::start_file_with(config, services, |_| {})
    }

    /// Like `start_file`, with `tweak` applied to the command first (limits,
    /// environment).
    pub fn start_file_with(
        config: &Path,
        services: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Moat {
        let audit = config.parent().unwrap().join("audit.jsonl");
        let _ = std::fs::remove_file(&audit);
        Self::launch(config, services, tweak, 0)
    }

    /// Starts moat again on `config`, keeping its audit file (a restart),
    /// and waits for the listeners of this run.
    pub fn restart_file(config: &Path, services: &[&str]) -> Moat {
        let audit = config.parent().unwrap().join("audit.jsonl");
        let earlier = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.ends_with('}'))
            .count();
        Self::launch(config, services, |_| {}, earlier)
    }

    /// Starts moat; `earlier` audit lines are from before this run.
    fn launch(
        config: &Path,
        services: &[&str],
        tweak: impl FnOnce(&mut Command),
        earlier: usize,
    ) -> Moat {
        let audit = config.parent().unwrap().join("audit.jsonl");
        let mut command = Command::new(moat_bin());
        command
            .args(["run", "-c"])
            .arg(config)
            .env("MOAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tweak(&mut command);
        let mut child = command.spawn().expect("spawning moat");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut moat = Moat {
            child: Some(child),
            config: config.to_path_buf(),
            audit,
            admin: None,
            bound: HashMap::new(),
            stderr,
        };
        let wanted = services.len();
        wait_for("moat listeners", || {
            if let Some(Ok(Some(status))) = moat.child.as_mut().map(|c| c.try_wait()) {
                panic!("moat exited early with {status}: {}", moat.stderr());
            }
            let started: Vec<Value> = moat
                .audit_lines()
                .into_iter()
                .skip(earlier)
                .filter(|e| e["event"] == "listener_started")
                .collect();
            (started.len() >= wanted).then_some(started)
        })
        .into_iter()
        .for_each(|e| {
            moat.bound.insert(
                e["service"].as_str().unwrap().to_string(),
                e["listen"].as_str().unwrap().parse().unwrap(),
            );
        });
        moat.admin = wait_for("admin address in log", || {
            let log = moat.stderr();
            let line = log.lines().find(|l| l.contains("admin listening"))?;
            let addr = line.rsplit("addr=").next()?;
            addr.trim().parse::<SocketAddr>().ok()
        })
        .into();
        moat
    }

    pub fn stderr(&self) -> String {
        strip_ansi(&self.stderr.lock().unwrap())
    }

    pub fn addr(&self, service: &str) -> SocketAddr {
        *self
            .bound
            .get(service)
            .unwrap_or_else(|| panic!("service {service} is not bound"))
    }

    /// Every audit line so far, parsed. Each line must be valid JSON.
    pub fn audit_lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.audit_lines()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Waits for an audit event of `kind` that satisfies `pred`.
    pub fn wait_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("audit event {kind}"), || {
            self.events(kind).into_iter().find(|e| pred(e))
        })
    }

    /// Waits for the audit events of the connection from `client`.
    pub fn wait_for_client(&self, kind: &str, client: SocketAddr) -> Value {
        let c = client.to_string();
        self.wait_event(kind, |e| e["client"] == c.as_str())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("moat is running");
        signal(child.id(), "TERM");
        wait_for("moat to exit", || child.try_wait().unwrap())
    }

    /// `POST path` on the admin listener: (status code, body).
    pub fn admin_post(&self, path: &str) -> (u16, String) {
        self.admin_request("POST", path)
    }

    /// `METHOD path` without a body on the admin listener: (status code,
    /// body).
    pub fn admin_request(&self, method: &str, path: &str) -> (u16, String) {
        let addr = self.admin.expect("admin listener");
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn admin_get(&self, path: &str) -> String {
        let addr = self.admin.expect("admin listener");
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A metric on `/metrics` (Prometheus text format), summed over its
    /// series: `name` is a family (`moat_connections_active`) or one
    /// series written out (`moat_x_total{service="ui",outcome="allowed"}`).
    /// 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        self.admin_get("/metrics")
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A plaintext echo server standing in for a device. Echoes until the
/// client half-closes, then half-closes back. Counts accepted connections.
pub struct Echo {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

pub fn echo_upstream() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Echo { addr, accepted }
}

/// An address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TCP connection from a chosen loopback source address.
pub fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let src: IpAddr = source.parse().unwrap();
    // Binding the source first picks a port before the destination is
    // known; in a tight loop of connections that port can still be tied
    // to the same destination. That is the client's problem, not the
    // server's: pick another.
    let mut attempts = 0;
    loop {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        let connected = socket
            .bind(&SocketAddr::new(src, 0).into())
            .and_then(|()| socket.connect_timeout(&to.into(), DEADLINE));
        match connected {
            Ok(()) => {
                let s: TcpStream = socket.into();
                s.set_read_timeout(Some(DEADLINE)).unwrap();
                return s;
            }
            Err(e)
                if attempts < 3
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                    ) =>
            {
                attempts += 1
            }
            Err(e) => panic!("connect from {source} to {to}: {e}"),
        }
    }
}

/// A rustls client config trusting the dev CA, optionally with the dev
/// client certificate.
pub fn tls_client(certs: &DevCerts, client_cert: bool) -> Arc<rustls::ClientConfig> {
    install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in moat::tls::load_certs(&certs.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let cfg = if client_cert {
        let chain = moat::tls::load_certs(&certs.client_cert).unwrap();
        let key = moat::tls::load_key(&certs.client_key).unwrap();
        b.with_client_auth_cert(chain, key).unwrap()
    } else {
        b.with_no_client_auth()
    };
    Arc::new(cfg)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Opens TLS over `tcp` with the given SNI and completes the handshake.
pub fn tls_connect(
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
    tcp: TcpStream,
) -> std::io::Result<TlsStream> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// True when the peer closed `s` without sending anything.
pub fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails (not skips) when a peer tool is missing: `.ci/run` installs them.
pub fn require(tool: &str) {
    assert!(
        have(tool),
        "{tool} is not installed; run .ci/run or see README (apt-get install ...)"
    );
}

/// An HTTP response as a client saw it (`curl -i`, a raw socket).
#[derive(Debug)]
pub struct Reply {
    pub version: String,
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a response as `curl -i` prints it (interim 1xx answers skipped).
pub fn parse_reply(bytes: &[u8]) -> Reply {
    let mut rest = bytes;
    loop {
        let end = find(rest, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap().split_whitespace();
        let version = status_line.next().unwrap().to_string();
        let status: u16 = status_line.next().unwrap().parse().unwrap();
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Reply {
            version,
            status,
            headers,
            body: String::from_utf8_lossy(rest).into_owned(),
        };
    }
}

/// Writes `request` as is and reads one Content-Length-framed response.
pub fn exchange(s: &mut (impl Read + Write), request: &str) -> Reply {
    s.write_all(request.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let mut reply = parse_reply(&head);
    let len: usize = reply
        .header("content-length")
        .expect("a framed response")
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    reply.body = String::from_utf8_lossy(&body).into_owned();
    reply
}

/// curl trusting the workspace's dev CA, bounded in time; returns what it
/// printed (`-i`: the head and body) whatever its exit status.
pub fn curl_with_ca_output(ws: &Workspace, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "--cacert",
        ])
        .arg(&ws.certs.ca)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running curl")
}

/// Runs curl (which must succeed at the transport level) and parses its answer.
pub fn curl_with_ca(ws: &Workspace, args: &[&str]) -> Reply {
    let out = curl_with_ca_output(ws, args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&out.stdout)
}
