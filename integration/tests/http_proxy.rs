//! End-to-end tests of the HTTP (L7) proxy: the real `moat` binary on
//! loopback, real clients (`curl`, raw rustls sockets, a tungstenite
//! WebSocket client), a real keep-alive HTTP/1.1 device, and the audit
//! trail checked request by request.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http_device::{self, HttpDevice};
use support::*;

// ---------------------------------------------------------------------------
// The device: a small keep-alive HTTP/1.1 server that describes each request.
// ---------------------------------------------------------------------------

/// A plaintext HTTP/1.1 device. Every answer is `200` with a text body:
/// `METHOD PATH`, then each request header as `name: value` (lowercase
/// names), then `body-bytes: N`. `/slow` answers after 2 s.
struct Device {
    addr: SocketAddr,
    server: HttpDevice,
    /// `METHOD PATH` of every request received in full (head and body).
    seen: Arc<Mutex<Vec<String>>>,
}

impl Device {
    /// TCP connections accepted.
    fn accepted(&self) -> usize {
        self.server.accepted()
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn device() -> Device {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = http_device::serve(move |req| {
        log.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        if req.path == "/slow" {
            // The device being slow is what this path simulates.
            std::thread::sleep(Duration::from_secs(2));
        }
        let mut body = format!("{} {}\n", req.method, req.path);
        for (name, value) in &req.headers {
            body.push_str(&format!("{name}: {value}\n"));
        }
        body.push_str(&format!("body-bytes: {}\n", req.body_len));
        body
    });
    Device {
        addr: server.addr,
        server,
        seen,
    }
}

/// A WebSocket echo device (tungstenite, sync).
fn ws_echo_device() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(msg) = ws.read() {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A listener nothing should ever reach. Pending connections are counted
/// by draining its backlog, so a connection moat made cannot be missed.
struct Elsewhere {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Elsewhere {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        Elsewhere { listener, addr }
    }
    fn accepted(&self) -> usize {
        let mut n = 0;
        while self.listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

// ---------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------

fn config(services: &str) -> String {
    format!(
        "[[device]]\nid = \"pump-ui\"\nname = \"Infusion pump web UI\"\nend_of_support = 2016-12-31\n{services}"
    )
}

/// One `protocol = "http"` service over TLS. `service_extra` goes into the
/// service table, `http_extra` into `[device.service.http]` (and may end
/// with its sub-tables).
fn http_service(
    ws: &Workspace,
    name: &str,
    upstream: impl std::fmt::Display,
    service_extra: &str,
    http_extra: &str,
) -> String {
    format!(
        r#"
[[device.service]]
name = "{name}"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = ["127.0.0.1", "127.0.0.2"]
{service_extra}
{tls}
[device.service.http]
{http_extra}
"#,
        tls = ws.tls_table()
    )
}

fn start(ws: &Workspace, services: &[(&str, String)]) -> Moat {
    let body: String = services.iter().map(|(_, s)| s.as_str()).collect();
    let names: Vec<&str> = services.iter().map(|(n, _)| *n).collect();
    Moat::start(ws, &config(&body), &names)
}

// ---------------------------------------------------------------------------
// Clients and replies.
// ---------------------------------------------------------------------------

impl Reply {
    /// What the device saw, from its descriptive body.
    fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "not a device answer: {self:?}");
        let mut lines = self.body.lines();
        let line = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        let mut body_bytes = None;
        for l in lines {
            let (n, v) = l.split_once(": ").unwrap_or((l, ""));
            if n == "body-bytes" {
                body_bytes = v.parse().ok();
            } else {
                headers.push((n.to_string(), v.to_string()));
            }
        }
        Seen {
            line,
            headers,
            body_bytes: body_bytes.expect("device body ends with body-bytes"),
        }
    }
}

/// The request as the device received it.
#[derive(Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body_bytes: usize,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

/// A rustls client that speaks only HTTP/1.1 (moat offers h2 first).
fn h1_client(ws: &Workspace) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*tls_client(&ws.certs, false)).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn h1_connect(ws: &Workspace, to: SocketAddr) -> TlsStream {
    let tls = tls_connect(h1_client(ws), "localhost", connect_from("127.0.0.1", to)).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls
}

// ---------------------------------------------------------------------------
// Audit.
// ---------------------------------------------------------------------------

fn wait_request(moat: &Moat, method: &str, path: &str) -> Value {
    moat.wait_event("http_request", |e| {
        e["method"] == method && e["path"] == path
    })
}

/// Checks one `http_request` event against the reply the client got.
fn assert_request(e: &Value, reply: &Reply, decision: &str, reason: Option<&str>, version: &str) {
    assert_eq!(e["device"], "pump-ui", "{e}");
    assert_eq!(e["status"], reply.status, "{e}");
    assert_eq!(e["decision"], decision, "{e}");
    match reason {
        Some(r) => assert_eq!(e["reason"], r, "{e}"),
        None => assert!(e.get("reason").is_none(), "{e}"),
    }
    assert_eq!(e["version"], version, "{e}");
    assert_eq!(e["response_bytes"], reply.body.len(), "{e}");
    assert!(e["duration_ms"].as_u64().is_some(), "{e}");
    assert!(e["conn_id"].as_u64().unwrap() >= 1, "{e}");
}

/// A denial answered by moat itself: status, reason header and error page.
fn assert_denied(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some(reason), "{reply:?}");
    assert!(
        reply.body.contains(&format!("reason: {reason}")),
        "{reply:?}"
    );
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

/// Browsers drop spare TLS connections without close_notify (and, with
/// the server's session tickets unread, the kernel sends a reset): that is
/// the client closing, not an error (HTTP frames its own messages).
#[test]
fn a_tls_client_that_leaves_without_close_notify_closed_the_connection() {
    let ws = Workspace::new();
    let dev = device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut cfg = (*tls_client(&ws.certs, false)).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tls = tls_connect(Arc::new(cfg), "localhost", connect_from("127.0.0.1", ui)).unwrap();
        let client = tls.sock.local_addr().unwrap();
        drop(tls); // the socket closes; no close_notify is sent
        let closed = moat.wait_for_client("connection_closed", client);
        assert_eq!(closed["closed_by"], "client", "{closed}");
        assert!(closed.get("error").is_none(), "{closed}");
    }
}

#[test]
fn curl_http1_and_h2_reach_the_device_with_hardening_headers() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");

    for (flag, path, version, alpn) in [
        ("--http1.1", "/h1/index.html", "HTTP/1.1", "http/1.1"),
        ("--http2", "/h2/index.html", "HTTP/2", "h2"),
    ] {
        let reply = curl_with_ca(&ws, &[flag, &url(ui, path)]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.version, version);
        let seen = reply.seen();
        assert_eq!(seen.line, format!("GET {path}"));
        assert_eq!(seen.body_bytes, 0);
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(reply.header("content-type"), Some("text/plain"));

        let e = wait_request(&moat, "GET", path);
        assert_request(&e, &reply, "allowed", None, version);
        assert_eq!(e["service"], "ui");
        moat.wait_event("connection_allowed", |c| c["tls"]["alpn"] == alpn);
    }
    assert_eq!(moat.events("http_request").len(), 2);
    assert!(dev.accepted() >= 1);
}

#[test]
fn only_allowlisted_sources_reach_the_ui() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");

    // 127.0.0.3 is on no allow entry: closed before any TLS.
    let out = curl_with_ca_output(&ws, &["--interface", "127.0.0.3", &url(ui, "/from-3")]);
    assert!(!out.status.success(), "127.0.0.3 got an answer");
    assert!(out.stdout.is_empty());
    let denied = moat.wait_event("connection_denied", |e| {
        e["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.3:"))
    });
    assert_eq!(denied["reason"], "not_allowlisted");
    assert_eq!(denied["service"], "ui");
    assert!(denied.get("tls").is_none(), "TLS work for a refused source");

    let reply = curl_with_ca(&ws, &["--interface", "127.0.0.2", &url(ui, "/from-2")]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.seen().values("x-forwarded-for"), ["127.0.0.2"]);
    let e = wait_request(&moat, "GET", "/from-2");
    assert_request(&e, &reply, "allowed", None, "HTTP/2");
    assert!(e["client"].as_str().unwrap().starts_with("127.0.0.2:"));
    let allowed = moat.wait_event("connection_allowed", |_| true);
    assert_eq!(allowed["matched"], "127.0.0.2/32");
    assert!(allowed["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.2:"));

    // The refused client never got as far as a request.
    assert_eq!(moat.events("http_request").len(), 1);
    assert_eq!(moat.events("connection_allowed").len(), 1);
    assert_eq!(dev.seen(), ["GET /from-2"]);
}

#[test]
fn request_rules_apply_to_the_normalised_path() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let rule = "[[device.service.http.rule]]\naction = \"deny\"\nmethods = [\"POST\"]\npath = \"/firmware/*\"\n";
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", rule))]);
    let ui = moat.addr("ui");

    // HTTP/1.1: curl 7.88 reports the RST_STREAM(NO_ERROR) that rightly
    // follows an early h2 answer to an unread body as a stream error.
    let reply = curl_with_ca(
        &ws,
        &[
            "--http1.1",
            "--data-binary",
            "FIRMWARE",
            &url(ui, "/firmware/upload"),
        ],
    );
    assert_denied(&reply, 403, "request_denied");
    let e = wait_request(&moat, "POST", "/firmware/upload");
    assert_request(&e, &reply, "denied", Some("request_denied"), "HTTP/1.1");
    assert_eq!(e["detail"], "deny POST /firmware/*");

    // Reading is allowed; so is POST elsewhere, body and all.
    let reply = curl_with_ca(&ws, &[&url(ui, "/firmware/upload")]);
    assert_eq!(reply.seen().line, "GET /firmware/upload");
    assert_request(
        &wait_request(&moat, "GET", "/firmware/upload"),
        &reply,
        "allowed",
        None,
        "HTTP/2",
    );
    let reply = curl_with_ca(&ws, &["--data-binary", "volume=5", &url(ui, "/settings")]);
    let seen = reply.seen();
    assert_eq!(seen.line, "POST /settings");
    assert_eq!(seen.body_bytes, 8);

    // Bypass attempts: dot segments and an escaped unreserved character
    // normalise to the denied path.
    for (args, raw, path, version) in [
        (
            vec!["--path-as-is", "-X", "POST", "--http1.1"],
            "/a/../firmware/x",
            "/firmware/x",
            "HTTP/1.1",
        ),
        (vec!["-X", "POST"], "/%66irmware/y", "/firmware/y", "HTTP/2"),
        (
            vec!["--path-as-is", "-X", "POST"],
            "/firmware/./z//",
            "/firmware/z/",
            "HTTP/2",
        ),
    ] {
        let target = url(ui, raw);
        let mut all = args.clone();
        all.push(&target);
        let reply = curl_with_ca(&ws, &all);
        assert_denied(&reply, 403, "request_denied");
        let e = wait_request(&moat, "POST", path);
        assert_request(&e, &reply, "denied", Some("request_denied"), version);
    }

    // An encoded '/' is ambiguous: refused outright.
    let reply = curl_with_ca(&ws, &["-X", "POST", &url(ui, "/firmware%2fx")]);
    assert_denied(&reply, 400, "bad_request");
    let e = wait_request(&moat, "POST", "/firmware%2fx");
    assert_request(&e, &reply, "denied", Some("bad_request"), "HTTP/2");

    // The device saw exactly the allowed requests.
    assert_eq!(dev.seen(), ["GET /firmware/upload", "POST /settings"]);
}

#[test]
fn forwarding_headers_are_moats_own_and_host_is_rewritten() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let moat = start(
        &ws,
        &[
            (
                "ui",
                http_service(&ws, "ui", dev.addr, "", "host_rewrite = \"upstream\"\n"),
            ),
            ("ui-host", http_service(&ws, "ui-host", dev.addr, "", "")),
        ],
    );
    let ui = moat.addr("ui");
    let spoof = [
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "Forwarded: for=6.6.6.6;proto=http",
        "-H",
        "X-Forwarded-Proto: http",
        "-H",
        "X-Forwarded-Host: evil.example",
        "-H",
        "X-Real-IP: 6.6.6.6",
    ];

    for (flag, path) in [("--http1.1", "/spoof-h1"), ("--http2", "/spoof-h2")] {
        let target = url(ui, path);
        let mut args = vec![flag];
        args.extend(spoof);
        if flag == "--http1.1" {
            // Hop-by-hop, named by Connection: must not reach the device.
            args.extend([
                "-H",
                "Connection: keep-alive, X-Drop-Me",
                "-H",
                "X-Drop-Me: 1",
            ]);
        }
        args.push(&target);
        let reply = curl_with_ca(&ws, &args);
        let seen = reply.seen();
        assert_eq!(seen.line, format!("GET {path}"));
        assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"], "{seen:?}");
        assert_eq!(seen.values("x-forwarded-proto"), ["https"], "{seen:?}");
        assert_eq!(
            seen.values("forwarded"),
            // RFC 7239: a host with a port is a quoted-string.
            [format!("for=127.0.0.1;proto=https;host=\"{ui}\"")],
            "{seen:?}"
        );
        assert_eq!(
            seen.values("x-forwarded-host"),
            [ui.to_string()],
            "{seen:?}"
        );
        assert_eq!(seen.values("host"), [dev.addr.to_string()], "{seen:?}");
        assert!(seen.values("x-real-ip").is_empty(), "{seen:?}");
        assert!(seen.values("x-drop-me").is_empty(), "{seen:?}");
        assert!(
            seen.headers
                .iter()
                .all(|(_, v)| !v.contains("6.6.6.6") && !v.contains("evil")),
            "{seen:?}"
        );
        let version = if flag == "--http2" {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        assert_request(
            &wait_request(&moat, "GET", path),
            &reply,
            "allowed",
            None,
            version,
        );
    }

    // Without host_rewrite the device sees the Host the client asked for.
    let plain = moat.addr("ui-host");
    let reply = curl_with_ca(&ws, &[&url(plain, "/host")]);
    let seen = reply.seen();
    assert_eq!(seen.values("host"), [plain.to_string()], "{seen:?}");
    assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"]);
    let e = wait_request(&moat, "GET", "/host");
    assert_eq!(e["service"], "ui-host");
    assert_request(&e, &reply, "allowed", None, "HTTP/2");
}

#[test]
fn body_and_header_limits_answer_413_and_431() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let limits = "max_body_bytes = 1000\nmax_headers = 20\nmax_header_bytes = 2048\n";
    let moat = start(
        &ws,
        &[("ui", http_service(&ws, "ui", dev.addr, "", limits))],
    );
    let ui = moat.addr("ui");
    let small = "s".repeat(500);
    let big = "b".repeat(2000);
    let chunked = ["-H", "Transfer-Encoding: chunked", "--http1.1"];

    // Under the limit, with either framing: delivered whole.
    let reply = curl_with_ca(&ws, &["--data-binary", &small, &url(ui, "/small")]);
    assert_eq!(reply.seen().body_bytes, 500);
    let mut args = chunked.to_vec();
    args.extend(["--data-binary", &small]);
    let target = url(ui, "/small-chunked");
    args.push(&target);
    let reply = curl_with_ca(&ws, &args);
    let seen = reply.seen();
    assert_eq!(seen.body_bytes, 500);
    assert_eq!(seen.values("transfer-encoding"), ["chunked"]);

    // Declared too large: refused before the device is involved (HTTP/1.1
    // for curl 7.88's sake, as above).
    let reply = curl_with_ca(&ws, &["--http1.1", "--data-binary", &big, &url(ui, "/big")]);
    assert_denied(&reply, 413, "body_too_large");
    let e = wait_request(&moat, "POST", "/big");
    assert_request(&e, &reply, "denied", Some("body_too_large"), "HTTP/1.1");
    assert_eq!(e["detail"], "content-length 2000, limit 1000");

    // Chunked, so only counting can catch it.
    let mut args = chunked.to_vec();
    args.extend(["--data-binary", &big]);
    let target = url(ui, "/big-chunked");
    args.push(&target);
    let reply = curl_with_ca(&ws, &args);
    assert_denied(&reply, 413, "body_too_large");
    let e = wait_request(&moat, "POST", "/big-chunked");
    assert_request(&e, &reply, "denied", Some("body_too_large"), "HTTP/1.1");

    // 30 extra headers on top of curl's own.
    let extra: Vec<String> = (0..30).map(|i| format!("X-Extra-{i}: {i}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &extra {
        args.extend(["-H", h]);
    }
    let target = url(ui, "/many-headers");
    args.push(&target);
    let reply = curl_with_ca(&ws, &args);
    assert_denied(&reply, 431, "headers_too_large");
    let e = wait_request(&moat, "GET", "/many-headers");
    assert_request(&e, &reply, "denied", Some("headers_too_large"), "HTTP/2");
    assert!(
        e["detail"].as_str().unwrap().ends_with("headers, limit 20"),
        "{e}"
    );

    // One header larger than all headers may be together.
    let huge = format!("X-Huge: {}", "h".repeat(3000));
    let reply = curl_with_ca(&ws, &["--http1.1", "-H", &huge, &url(ui, "/huge-header")]);
    assert_denied(&reply, 431, "headers_too_large");
    let e = wait_request(&moat, "GET", "/huge-header");
    assert_request(&e, &reply, "denied", Some("headers_too_large"), "HTTP/1.1");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .ends_with("header bytes, limit 2048"),
        "{e}"
    );

    // Nothing over a limit ever reached the device whole.
    assert_eq!(dev.seen(), ["POST /small", "POST /small-chunked"]);
}

#[test]
fn device_down_is_502_and_slow_device_is_504() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let down = closed_port();
    let moat = start(
        &ws,
        &[
            ("down", http_service(&ws, "down", down, "", "")),
            (
                "slow",
                http_service(&ws, "slow", dev.addr, "", "response_timeout = \"300ms\"\n"),
            ),
        ],
    );

    let reply = curl_with_ca(&ws, &[&url(moat.addr("down"), "/status")]);
    assert_denied(&reply, 502, "upstream_unreachable");
    let e = wait_request(&moat, "GET", "/status");
    assert_request(&e, &reply, "denied", Some("upstream_unreachable"), "HTTP/2");
    let detail = e["detail"].as_str().unwrap();
    assert!(detail.starts_with(&down.to_string()), "{e}");
    assert!(detail.contains("connect"), "{e}");
    assert!(detail.contains("refused"), "{e}");

    let started = Instant::now();
    let reply = curl_with_ca(&ws, &[&url(moat.addr("slow"), "/slow")]);
    let took = started.elapsed();
    assert_denied(&reply, 504, "upstream_timeout");
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    let e = wait_request(&moat, "GET", "/slow");
    assert_request(&e, &reply, "denied", Some("upstream_timeout"), "HTTP/2");
    let ms = e["duration_ms"].as_u64().unwrap();
    assert!((300..1800).contains(&ms), "{e}");
    assert_eq!(
        e["detail"],
        format!("{}: no response within 300ms", dev.addr)
    );
    // The device did get the request; it was just too slow.
    wait_for("device to see /slow", || {
        dev.seen().contains(&"GET /slow".to_string()).then_some(())
    });
}

/// A device that never completes a TCP handshake: its accept queue is full
/// (backlog 0, connections parked, none accepted), so the kernel drops new
/// SYNs and a connect hangs until the connector gives up.
struct Unresponsive {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _parked: Vec<TcpStream>,
}

fn unresponsive_device() -> Unresponsive {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut parked = Vec::new();
    while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        parked.push(s);
        assert!(parked.len() < 64, "the accept queue never filled");
    }
    Unresponsive {
        addr,
        _listener: listener,
        _parked: parked,
    }
}

/// A device that accepts no connection: a connect timeout, not a refusal
/// (the refused case is `device_down_is_502_and_slow_device_is_504`).
#[test]
fn device_connect_timeout_is_504_with_its_cause() {
    require("curl");
    let ws = Workspace::new();
    let hung = unresponsive_device();
    let moat = start(
        &ws,
        &[(
            "hung",
            http_service(&ws, "hung", hung.addr, "connect_timeout = \"300ms\"", ""),
        )],
    );

    let started = Instant::now();
    let reply = curl_with_ca(&ws, &[&url(moat.addr("hung"), "/hung")]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_denied(&reply, 504, "upstream_timeout");
    let e = wait_request(&moat, "GET", "/hung");
    assert_request(&e, &reply, "denied", Some("upstream_timeout"), "HTTP/2");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .starts_with(&hung.addr.to_string()),
        "{e}"
    );
}

#[test]
fn websocket_echo_passes_through_over_tls() {
    let ws = Workspace::new();
    let echo = ws_echo_device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", echo, "", ""))]);
    let tls = h1_connect(&ws, moat.addr("ui"));
    let client = tls.sock.local_addr().unwrap();

    let (mut socket, response) = tungstenite::client::client("wss://localhost/echo", tls)
        .unwrap_or_else(|e| panic!("WebSocket handshake through moat failed: {e}"));
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("sec-websocket-accept"));

    socket
        .send(tungstenite::Message::Text("vitals please".into()))
        .unwrap();
    match socket.read().unwrap() {
        tungstenite::Message::Text(t) => assert_eq!(t, "vitals please"),
        other => panic!("unexpected {other:?}"),
    }
    let payload = vec![0u8, 1, 2, 254, 255];
    socket
        .send(tungstenite::Message::Binary(payload.clone()))
        .unwrap();
    match socket.read().unwrap() {
        tungstenite::Message::Binary(b) => assert_eq!(b, payload),
        other => panic!("unexpected {other:?}"),
    }

    let e = wait_request(&moat, "GET", "/echo");
    assert_eq!(e["status"], 101, "{e}");
    assert_eq!(e["decision"], "allowed");
    assert!(e.get("reason").is_none(), "{e}");
    assert_eq!(e["version"], "HTTP/1.1");
    assert_eq!(e["response_bytes"], 0);

    socket.close(None).unwrap();
    while socket.read().is_ok() {}
    drop(socket);
    let closed = moat.wait_for_client("connection_closed", client);
    assert_eq!(closed["closed_by"], "client", "{closed}");
    assert!(closed["bytes_from_client"].as_u64().unwrap() > 0);
    let allowed = moat.wait_for_client("connection_allowed", client);
    assert_eq!(allowed["tls"]["alpn"], "http/1.1");
}

#[test]
fn device_connections_are_pooled_across_clients() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");
    for i in 0..20 {
        let path = format!("/poll/{i}");
        let reply = curl_with_ca(&ws, &[&url(ui, &path)]);
        assert_eq!(reply.seen().line, format!("GET {path}"));
    }
    wait_for("20 audited requests", || {
        (moat.events("http_request").len() == 20).then_some(())
    });
    wait_for("20 closed client connections", || {
        (moat.events("connection_closed").len() == 20).then_some(())
    });
    let events = moat.events("http_request");
    for e in &events {
        assert!(e["path"].as_str().unwrap().starts_with("/poll/"), "{e}");
        assert_eq!(e["status"], 200, "{e}");
        assert_eq!(e["decision"], "allowed", "{e}");
        assert_eq!(e["version"], "HTTP/2", "{e}");
        assert!(e["response_bytes"].as_u64().unwrap() > 0, "{e}");
    }
    let conn_ids: std::collections::HashSet<u64> = events
        .iter()
        .map(|e| e["conn_id"].as_u64().unwrap())
        .collect();
    assert_eq!(conn_ids.len(), 20, "each curl is its own client connection");
    assert_eq!(dev.seen().len(), 20);
    let accepted = dev.accepted();
    assert!(
        (1..=2).contains(&accepted),
        "device accepted {accepted} connections for 20 requests"
    );
}

#[test]
fn device_hanging_up_idle_connections_costs_no_request() {
    require("curl");
    let ws = Workspace::new();
    let dev = http_device::serve_one_per_connection(|r| format!("{} {}\n", r.method, r.path));
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");
    for i in 0..10 {
        let path = format!("/poll/{i}");
        let reply = curl_with_ca(&ws, &[&url(ui, &path)]);
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.body, format!("GET {path}\n"));
    }
    assert_eq!(dev.accepted(), 10, "one device connection per request");
    assert!(moat
        .events("http_request")
        .iter()
        .all(|e| e["status"] == 200));
}

/// Sends `data` one byte every 100 ms until moat hangs up: (time until
/// then or the end, bytes sent, bytes received). Each wait for moat to close
/// is also the pause between two bytes. `started` hears of the first byte.
fn drip(
    tls: &mut TlsStream,
    data: &[u8],
    started: Option<std::sync::mpsc::Sender<()>>,
) -> (Duration, usize, Vec<u8>) {
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    'drip: for &b in data {
        if tls.write_all(&[b]).and_then(|_| tls.flush()).is_err() {
            break;
        }
        sent += 1;
        if sent == 1 {
            if let Some(tx) = &started {
                let _ = tx.send(());
            }
        }
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break 'drip,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(_) => break 'drip,
            }
        }
    }
    (t0.elapsed(), sent, got)
}

#[test]
fn slowloris_is_cut_off_while_others_are_served() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let moat = start(
        &ws,
        &[(
            "ui",
            http_service(&ws, "ui", dev.addr, "", "header_read_timeout = \"500ms\"\n"),
        )],
    );
    let ui = moat.addr("ui");

    let mut tls = h1_connect(&ws, ui);
    let slow_client = tls.sock.local_addr().unwrap();
    let head = format!(
        "GET /slowloris HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {}\r\n\r\n",
        "s".repeat(100)
    );
    let total = head.len();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || drip(&mut tls, head.as_bytes(), Some(started_tx)));
    started_rx
        .recv_timeout(DEADLINE)
        .expect("slow client started");

    // Meanwhile, a normal client is served.
    let reply = curl_with_ca(&ws, &[&url(ui, "/meanwhile")]);
    assert_eq!(reply.seen().line, "GET /meanwhile");
    assert_request(
        &wait_request(&moat, "GET", "/meanwhile"),
        &reply,
        "allowed",
        None,
        "HTTP/2",
    );

    let (elapsed, sent, got) = slow.join().unwrap();
    assert!(
        sent < total,
        "moat waited for the whole {total}-byte head ({elapsed:?})"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(5),
        "slow client cut after {elapsed:?}"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains(" 200 "), "slow client was answered: {got}");

    let closed = moat.wait_for_client("connection_closed", slow_client);
    assert_eq!(closed["closed_by"], "header_timeout", "{closed}");
    assert!(moat
        .events("http_request")
        .iter()
        .all(|e| e["path"] != "/slowloris"));
    assert_eq!(dev.seen(), ["GET /meanwhile"]);
}

#[test]

fn slow_h2_preface_is_cut_off_too() {
    let ws = Workspace::new();
    let dev = device();
    let moat = start(
        &ws,
        &[(
            "ui",
            http_service(&ws, "ui", dev.addr, "", "header_read_timeout = \"500ms\"\n"),
        )],
    );
    let mut cfg = (*tls_client(&ws.certs, false)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = connect_from("127.0.0.1", moat.addr("ui"));
    let slow_client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(Arc::new(cfg), "localhost", tcp).unwrap();
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));

    // The 24-byte preface alone takes 2.4 s at this pace.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let (elapsed, sent, _) = drip(&mut tls, preface, None);
    assert!(
        sent < preface.len(),
        "moat waited for the whole h2 preface ({elapsed:?})"
    );
    assert!(elapsed < Duration::from_secs(2), "cut after {elapsed:?}");
    let closed = moat.wait_for_client("connection_closed", slow_client);
    assert_eq!(closed["closed_by"], "header_timeout", "{closed}");
    assert_eq!(dev.accepted(), 0);
}

/// Never an open proxy: a target naming another port of the service's own
/// address (ports are not part of a name, so it passes `check_host`) still
/// reaches this device, never that port. Foreign names are 421
/// (l7_headers.rs).
#[test]
fn absolute_form_naming_another_port_still_goes_to_the_device() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let elsewhere = Elsewhere::new();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");
    let other = elsewhere.addr;

    let mut tls = h1_connect(&ws, ui);
    let reply = exchange(
        &mut tls,
        &format!("GET http://{other}/secret HTTP/1.1\r\nHost: {other}\r\n\r\n"),
    );
    let seen = reply.seen();
    assert_eq!(seen.line, "GET /secret");
    assert_request(
        &wait_request(&moat, "GET", "/secret"),
        &reply,
        "allowed",
        None,
        "HTTP/1.1",
    );

    // h2 with a foreign :authority.
    let reply = curl_with_ca(
        &ws,
        &[
            "--http2",
            "-H",
            &format!("Host: {other}"),
            &url(ui, "/secret-h2"),
        ],
    );
    assert_eq!(reply.seen().line, "GET /secret-h2");
    assert_request(
        &wait_request(&moat, "GET", "/secret-h2"),
        &reply,
        "allowed",
        None,
        "HTTP/2",
    );

    assert_eq!(elsewhere.accepted(), 0, "moat connected elsewhere");
    assert_eq!(dev.seen(), ["GET /secret", "GET /secret-h2"]);
}

#[test]
fn connect_is_refused_with_405() {
    let ws = Workspace::new();
    let dev = device();
    let elsewhere = Elsewhere::new();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let other = elsewhere.addr;

    let mut tls = h1_connect(&ws, moat.addr("ui"));
    let reply = exchange(
        &mut tls,
        &format!("CONNECT {other} HTTP/1.1\r\nHost: {other}\r\n\r\n"),
    );
    assert_denied(&reply, 405, "connect_refused");
    assert!(reply
        .header("allow")
        .is_some_and(|a| !a.contains("CONNECT")));
    let e = moat.wait_event("http_request", |e| e["method"] == "CONNECT");
    assert_request(&e, &reply, "denied", Some("connect_refused"), "HTTP/1.1");

    assert_eq!(elsewhere.accepted(), 0, "moat connected elsewhere");
    assert_eq!(dev.accepted(), 0);
}

/// `openssl s_server`, killed when dropped.
struct SServer {
    child: Child,
    addr: SocketAddr,
}

impl SServer {
    fn start(ws: &Workspace) -> SServer {
        let addr = closed_port();
        let child = Command::new("openssl")
            .arg("s_server")
            .args(["-accept", &addr.to_string(), "-www", "-cert"])
            .arg(&ws.certs.server_cert)
            .arg("-key")
            .arg(&ws.certs.server_key)
            // Kept open: s_server must never see end of input.
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning openssl s_server");
        let mut server = SServer { child, addr };
        wait_for("openssl s_server to listen", || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("openssl s_server exited early: {status}");
            }
            TcpStream::connect(addr).ok().map(drop)
        });
        server
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(der: &[u8]) -> String {
    moat::tls::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

#[test]

fn upstream_tls_with_a_pinned_certificate() {
    require("curl");
    require("openssl");
    let ws = Workspace::new();
    let s_server = SServer::start(&ws);
    let right = sha256_hex(moat::tls::load_certs(&ws.certs.server_cert).unwrap()[0].as_ref());
    // A real certificate, just not the device's.
    let wrong = sha256_hex(moat::tls::load_certs(&ws.certs.server_rsa_cert).unwrap()[0].as_ref());
    let plain = device();
    let pinned =
        |pin: &str| format!("[device.service.http.upstream_tls]\npin_sha256 = \"{pin}\"\n");
    let moat = start(
        &ws,
        &[
            (
                "good",
                http_service(&ws, "good", s_server.addr, "", &pinned(&right)),
            ),
            (
                "bad",
                http_service(&ws, "bad", s_server.addr, "", &pinned(&wrong)),
            ),
            ("plain", http_service(&ws, "plain", plain.addr, "", "")),
        ],
    );

    let reply = curl_with_ca(&ws, &[&url(moat.addr("good"), "/")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("<HTML>"), "{reply:?}");
    assert!(reply.body.contains("s_server"), "{reply:?}");
    let e = moat.wait_event("http_request", |e| e["service"] == "good");
    assert_eq!(e["path"], "/");
    assert_request(&e, &reply, "allowed", None, "HTTP/2");

    let reply = curl_with_ca(&ws, &[&url(moat.addr("bad"), "/")]);
    assert_denied(&reply, 502, "upstream_unreachable");
    let e = moat.wait_event("http_request", |e| e["service"] == "bad");
    assert_request(&e, &reply, "denied", Some("upstream_unreachable"), "HTTP/2");
    assert!(e["detail"].as_str().unwrap().contains("certificate"), "{e}");

    // Nothing about one device's TLS affects another service.
    let reply = curl_with_ca(&ws, &[&url(moat.addr("plain"), "/after")]);
    assert_eq!(reply.seen().line, "GET /after");
    assert_request(
        &wait_request(&moat, "GET", "/after"),
        &reply,
        "allowed",
        None,
        "HTTP/2",
    );
}

/// Rapid reset (CVE-2023-44487): an h2 client that opens streams and resets
/// them at once makes the device work for nothing. moat counts abandoned
/// requests per connection and hangs up after a hundred.
#[test]
fn rapid_reset_clients_are_disconnected() {
    let ws = Workspace::new();
    let dev = device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", ""))]);
    let ui = moat.addr("ui");
    let mut cfg = (*tls_client(&ws.certs, false)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sent, local) = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(ui).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let mut sent = 0;
        for _ in 0..1000 {
            if send.ready().await.is_err() {
                break;
            }
            let req = http::Request::get("https://localhost/slow")
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                .unwrap();
            // Let the HEADERS go out, then drop the request: RST_STREAM.
            let _ = tokio::time::timeout(Duration::from_millis(2), send.send_request(req)).await;
            sent += 1;
        }
        let ended = tokio::time::timeout(DEADLINE, conn)
            .await
            .expect("moat closes the connection");
        // With GOAWAY ENHANCE_YOUR_CALM (proxy/h2_guard.rs).
        let ended = format!("{ended:?}");
        assert!(ended.contains("ENHANCE_YOUR_CALM"), "{ended}");
        (sent, local)
    });
    assert!(sent < 1000, "moat kept accepting resets: {sent}");
    let closed = moat.wait_for_client("connection_closed", local);
    assert_eq!(closed["closed_by"], "protocol_abuse");
    assert!(
        closed["error"].as_str().unwrap().contains("rapid reset"),
        "{closed}"
    );
    let abandoned = moat
        .events("http_request")
        .iter()
        .filter(|e| e["status"] == 499)
        .count();
    assert!(
        (100..=120).contains(&abandoned),
        "{abandoned} abandoned requests audited"
    );
}

/// Spellings a lenient or case-insensitive device treats as the same
/// request must meet the same rule.
#[test]
fn rules_hold_against_case_parameters_lowercase_methods_and_overrides() {
    require("curl");
    let ws = Workspace::new();
    let dev = device();
    let rule = "[[device.service.http.rule]]\naction = \"deny\"\nmethods = [\"POST\", \"DELETE\"]\npath = \"/firmware/*\"\n";
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", dev.addr, "", rule))]);
    let ui = moat.addr("ui");
    for path in [
        "/FIRMWARE/upload",
        "/firmware;jsessionid=1/upload",
        "/Firmware/Upload",
    ] {
        let reply = curl_with_ca(&ws, &["--http1.1", "-X", "POST", &url(ui, path)]);
        assert_denied(&reply, 403, "request_denied");
    }
    // `post` is not POST to HTTP, but some device servers run it as POST.
    let reply = curl_with_ca(
        &ws,
        &["--http1.1", "-X", "post", &url(ui, "/firmware/upload")],
    );
    assert_denied(&reply, 400, "bad_request");
    // Double encoding would let a device that decodes twice see `..`.
    let reply = curl_with_ca(
        &ws,
        &[
            "--http1.1",
            "--path-as-is",
            &url(ui, "/x/%252e%252e/firmware/y"),
        ],
    );
    assert_denied(&reply, 400, "bad_request");
    // A method override header never reaches the device.
    let reply = curl_with_ca(
        &ws,
        &[
            "-H",
            "X-HTTP-Method-Override: DELETE",
            &url(ui, "/firmware/upload"),
        ],
    );
    let seen = reply.seen();
    assert_eq!(seen.line, "GET /firmware/upload");
    assert!(seen.values("x-http-method-override").is_empty(), "{seen:?}");
    assert!(
        dev.seen()
            .iter()
            .all(|l| !l.starts_with("POST") && !l.starts_with("post")),
        "{:?}",
        dev.seen()
    );
}

/// A WebSocket tunnel is one long request: a rule published later that
/// refuses its path ends it.
#[test]
fn a_new_rule_ends_an_open_websocket_tunnel() {
    let ws = Workspace::new();
    let echo = ws_echo_device();
    let moat = start(&ws, &[("ui", http_service(&ws, "ui", echo, "", ""))]);
    let (mut socket, _) =
        tungstenite::client::client("wss://localhost/console", h1_connect(&ws, moat.addr("ui")))
            .unwrap();
    socket
        .send(tungstenite::Message::Text("before".into()))
        .unwrap();
    assert!(matches!(socket.read().unwrap(), tungstenite::Message::Text(t) if t == "before"));

    let text = std::fs::read_to_string(&moat.config).unwrap();
    let denied =
        format!("{text}\n[[device.service.http.rule]]\naction = \"deny\"\npath = \"/console\"\n");
    std::fs::write(&moat.config, denied).unwrap();
    let (status, body) = moat.admin_post("/reload");
    assert_eq!(status, 200, "{body}");
    // The tunnel is closed by moat as the published policy reaches it (a
    // message sent in that instant may still be echoed): it ends.
    wait_for("the tunnel to end", || {
        if socket
            .send(tungstenite::Message::Text("after".into()))
            .is_err()
        {
            return Some(());
        }
        match socket.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => Some(()),
            Ok(_) => None,
        }
    });
}
