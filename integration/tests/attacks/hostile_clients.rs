//! Hostile clients: slow headers/bodies/readers (slowhttptest), per-client share, malformed or abandoned bodies (issue 10, items 4 and 6)
//!
//! The real `moat` binary, real clients (slowhttptest, curl, raw sockets from
//! chosen loopback sources) and a device that records what reached it. One
//! client's faults must stay its own: they never lock the others out, and
//! never show up as a failing device. Every load is bounded in count and
//! time, and the tests take the suite's `heavy` lock so that one test's load does not
//! starve another's on a small machine.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::http_device;
use crate::support::*;

// ---------------------------------------------------------------------------
// A device that records every byte of every connection, and whether moat
// closed it. It answers complete GETs and nothing else: a request whose body
// never completes gets no answer from it.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct ConnLog {
    data: Vec<u8>,
    closed: bool,
}

struct RawDevice {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>>,
}

impl RawDevice {
    fn start() -> RawDevice {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<ConnLog>>>>> = Arc::default();
        let all = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let log = Arc::new(Mutex::new(ConnLog::default()));
                all.lock().unwrap().push(log.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut answered = 0;
                    loop {
                        let n = stream.read(&mut buf).unwrap_or(0);
                        let mut l = log.lock().unwrap();
                        if n == 0 {
                            l.closed = true;
                            return;
                        }
                        l.data.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&l.data).into_owned();
                        let heads = text.matches("\r\n\r\n").count();
                        if text.starts_with("GET ") && heads > answered {
                            answered = heads;
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                        }
                    }
                });
            }
        });
        RawDevice { addr, conns }
    }

    /// (bytes received, closed) of each connection whose data holds `mark`.
    fn connections_with(&self, mark: &str) -> Vec<(String, bool)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| {
                let c = c.lock().unwrap();
                (String::from_utf8_lossy(&c.data).into_owned(), c.closed)
            })
            .filter(|(d, _)| d.contains(mark))
            .collect()
    }

    fn open_connections(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns.iter().filter(|c| !c.lock().unwrap().closed).count()
    }
}

fn config(services: &str) -> String {
    format!("[[device]]\nid = \"pump\"\nname = \"Infusion pump\"\n{services}")
}

fn plain_http(upstream: SocketAddr, http: &str, limits: &str) -> String {
    format!(
        "[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.0/8\"]\nplaintext = true\n[device.service.http]\n{http}\n[device.service.limits]\n{limits}\n"
    )
}

/// `moat_<family>_total{…outcome="<outcome>"…}`, summed over services.
pub fn metric(moat: &Moat, family: &str, outcome: &str) -> u64 {
    let text = moat.admin_get("/metrics");
    let prefix = format!("moat_{family}_total{{");
    let label = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// `moat_connections_active` of one service.
fn active(moat: &Moat, service: &str) -> u64 {
    let label = format!("service=\"{service}\"");
    moat.admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("moat_connections_active{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// Sends `raw` from 127.0.0.1 and returns what came back (until moat
/// closes, or `DEADLINE`).
fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = connect_from("127.0.0.1", addr);
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn chunked_post(path: &str, rest: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{rest}")
        .into_bytes()
}

/// The device side of a failed body: the connections opened for it since
/// `before`, once moat has closed each (so none waits in the pool for the
/// next request), and what each received.
fn device_side(device: &RawDevice, before: usize) -> Vec<String> {
    wait_for("the device connections closed", || {
        let conns = device.conns.lock().unwrap();
        let new: Vec<_> = conns[before..].iter().map(|c| c.lock().unwrap()).collect();
        (!new.is_empty() && new.iter().all(|c| c.closed)).then(|| {
            new.iter()
                .map(|c| String::from_utf8_lossy(&c.data).into_owned())
                .collect()
        })
    })
}

fn device_connections(device: &RawDevice) -> usize {
    device.conns.lock().unwrap().len()
}

fn assert_no_device_failure(moat: &Moat) {
    assert_eq!(metric(moat, "http_requests", "upstream_unreachable"), 0);
    assert_eq!(metric(moat, "http_requests", "upstream_timeout"), 0);
    assert!(
        !moat.stderr().contains("device unreachable"),
        "{}",
        moat.stderr()
    );
}

#[test]
fn malformed_chunked_bodies_are_bad_requests_not_device_failures() {
    let _heavy = crate::heavy();
    let device = RawDevice::start();
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&plain_http(device.addr, "", "")), &["ui"]);
    let addr = moat.addr("ui");
    let cases = [
        ("/overflow", "fffffffffffffffff\r\n".to_string()),
        ("/bare-lf", "5\nhello\r\n0\r\n\r\n".to_string()),
        ("/extension", format!("5;{}\r\n", "e".repeat(17 * 1024))),
        ("/past-chunk", "3\r\nhello\r\n0\r\n\r\n".to_string()),
    ];
    for (path, rest) in &cases {
        let before = device_connections(&device);
        let reply = parse_reply(&exchange(addr, &chunked_post(path, rest)));
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_eq!(
            reply.header("x-moat-reason"),
            Some("malformed_body"),
            "{path}"
        );
        let e = moat.wait_event("http_request", |e| e["path"] == *path);
        assert_eq!(e["reason"], "malformed_body", "{path}: {e}");
        assert_eq!(e["status"], 400, "{path}: {e}");
        // The device got at most the head: hyper fails the body before it
        // sends the head on, so the device usually sees a connection open
        // and close with nothing on it. Never any of the broken framing.
        let seen = device_side(&device, before);
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert!(
            seen[0].is_empty() || seen[0].starts_with(&format!("POST {path} ")),
            "{path}: {seen:?}"
        );
        assert!(
            !seen[0].contains("hello") && !seen[0].contains("eee"),
            "{path}: {seen:?}"
        );
    }
    assert_eq!(metric(&moat, "http_requests", "malformed_body"), 4);
    assert_no_device_failure(&moat);
    assert_eq!(
        device.open_connections(),
        0,
        "a failed body left a device connection open"
    );
}

#[test]
fn a_client_gone_mid_body_is_a_client_abort() {
    let _heavy = crate::heavy();
    let device = RawDevice::start();
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&plain_http(device.addr, "", "")), &["ui"]);
    let addr = moat.addr("ui");
    let heads = [
        (
            "/length",
            "POST /length HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n0123456789",
        ),
        (
            "/chunked",
            "POST /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789",
        ),
    ];
    for (path, raw) in heads {
        let before = device_connections(&device);
        let mut s = connect_from("127.0.0.1", addr);
        s.write_all(raw.as_bytes()).unwrap();
        // The body has reached the device before the client leaves.
        wait_for(&format!("{path} body at the device"), || {
            device
                .connections_with(&format!("POST {path} "))
                .iter()
                .any(|(d, _)| d.contains("0123456789"))
                .then_some(())
        });
        s.shutdown(Shutdown::Both).unwrap();
        drop(s);
        let e = moat.wait_event("http_request", |e| e["path"] == path);
        assert_eq!(e["reason"], "client_aborted", "{path}: {e}");
        assert_eq!(e["status"], 499, "{path}: {e}");
        let seen = device_side(&device, before);
        assert_eq!(seen.len(), 1, "{path}: {seen:?}");
        assert!(seen[0].starts_with(&format!("POST {path} ")), "{seen:?}");
        // Cut short: no end of body (a last chunk, or the declared length).
        assert!(seen[0].trim_end().ends_with("0123456789"), "{seen:?}");
    }
    assert_eq!(metric(&moat, "http_requests", "client_aborted"), 2);
    assert_no_device_failure(&moat);
    assert_eq!(device.open_connections(), 0);
}

#[test]
fn a_slow_body_is_cut_after_body_read_timeout_and_frees_its_device_slot() {
    let _heavy = crate::heavy();
    let device = RawDevice::start();
    let ws = Workspace::new();
    let svc = plain_http(
        device.addr,
        "body_read_timeout = \"1s\"\nresponse_timeout = \"60s\"",
        "max_in_flight = 1\nqueue_timeout = \"30s\"",
    );
    let moat = Moat::start(&ws, &config(&svc), &["ui"]);
    let addr = moat.addr("ui");
    // Holds the one device slot with a body that stops coming.
    let mut slow = connect_from("127.0.0.1", addr);
    slow.write_all(
        b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    wait_for("the slow body at the device", || {
        let conns = device.connections_with("POST /slow ");
        conns
            .iter()
            .any(|(d, _)| d.ends_with("0123456789"))
            .then_some(())
    });
    // Queued behind it: with only the response timeout, it would wait 60s.
    let mut next = connect_from("127.0.0.2", addr);
    next.write_all(b"GET /next HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    slow.read_to_end(&mut out).unwrap();
    let reply = parse_reply(&out);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some("body_timeout"));
    let e = moat.wait_event("http_request", |e| e["path"] == "/slow");
    assert_eq!(e["reason"], "body_timeout", "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("body_read_timeout"),
        "{e}"
    );
    // The device got the head and the ten bytes, then a closed connection.
    let seen = wait_for("the slow body's device connection closed", || match device
        .connections_with("POST /slow ")
        .as_slice()
    {
        [(data, true)] => Some(data.clone()),
        _ => None,
    });
    assert!(seen.ends_with("\r\n\r\n0123456789"), "{seen:?}");
    // And the queued request got the slot.
    let mut out = Vec::new();
    next.read_to_end(&mut out).unwrap();
    assert_eq!(parse_reply(&out).status, 200);
    assert_no_device_failure(&moat);
}

// ---------------------------------------------------------------------------
// slowhttptest: 300 slow connections from 127.0.0.1 against the defaults.
// ---------------------------------------------------------------------------

/// A running slowhttptest, killed when dropped.
struct Attack(Child);

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slowhttptest(mode: &str, url: &str) -> Attack {
    let mut cmd = Command::new("slowhttptest");
    // 300 connections at once, for at most 60 s; slow read asks for the
    // device's large page and reads it 5 bytes a second.
    cmd.args([
        mode, "-c", "300", "-r", "300", "-l", "60", "-i", "5", "-u", url,
    ]);
    if mode == "-X" {
        cmd.args(["-k", "4", "-n", "1", "-z", "5", "-w", "1", "-y", "64"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running slowhttptest");
    Attack(child)
}

#[test]
fn slow_clients_from_one_address_do_not_lock_out_another() {
    require("slowhttptest");
    require("curl");
    let _heavy = crate::heavy();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let device = http_device::serve(move |req| {
        if let Some(from) = req.header("x-forwarded-for") {
            record.lock().unwrap().push(format!("{from} {}", req.path));
        }
        if req.path == "/big" {
            "x".repeat(1 << 20)
        } else {
            "ok\n".to_string()
        }
    });
    let ws = Workspace::new();
    // Everything at its default but the listeners.
    let services = format!(
        "[[device.service]]\nname = \"plain\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{up}\"\nallow = [\"127.0.0.0/8\"]\nplaintext = true\n\n[[device.service]]\nname = \"tls\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{up}\"\nallow = [\"127.0.0.0/8\"]\n{tls}",
        up = device.addr,
        tls = ws.tls_table()
    );
    let moat = Moat::start(&ws, &config(&services), &["plain", "tls"]);
    for (service, scheme) in [("plain", "http"), ("tls", "https")] {
        let port = moat.addr(service).port();
        for mode in ["-H", "-B", "-X"] {
            let path = if mode == "-X" { "/big" } else { "/" };
            let url = format!("{scheme}://127.0.0.1:{port}{path}");
            let before = metric(&moat, "connections", "max_connections");
            let attack = slowhttptest(mode, &url);
            // The attacker is at its share: moat refuses its extra connections.
            wait_for(&format!("{mode} {scheme}: attacker at its share"), || {
                (metric(&moat, "connections", "max_connections") > before).then_some(())
            });
            let probe = format!("/probe{mode}-{scheme}");
            let out = Command::new("curl")
                .args(["-sk", "--interface", "127.0.0.2", "--max-time", "5"])
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{scheme}://127.0.0.1:{port}{probe}"))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                code, "200",
                "{mode} {scheme}: the other client was not served"
            );
            assert!(
                seen.lock().unwrap().contains(&format!("127.0.0.2 {probe}")),
                "{mode} {scheme}: the probe did not reach the device"
            );
            // The attacker still held its share while the probe was served.
            let held = active(&moat, service);
            assert!(
                held >= 64,
                "{mode} {scheme}: only {held} connections active"
            );
            drop(attack);
        }
    }
    let refused = moat
        .events("connection_denied")
        .into_iter()
        .find(|e| e["reason"] == "max_connections")
        .expect("a per-client refusal in the audit trail");
    assert_eq!(refused["detail"], "per-client limit 64", "{refused}");
    assert!(refused["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[test]
fn slowhttptest_slow_bodies_are_cut_with_body_timeout() {
    require("slowhttptest");
    let _heavy = crate::heavy();
    let device = RawDevice::start();
    let ws = Workspace::new();
    let svc = plain_http(
        device.addr,
        "body_read_timeout = \"1s\"",
        "max_in_flight = 4\nqueue_timeout = \"20s\"",
    );
    let moat = Moat::start(&ws, &config(&svc), &["ui"]);
    let url = format!("http://127.0.0.1:{}/", moat.addr("ui").port());
    let mut cmd = Command::new("slowhttptest");
    // Follow-up body bytes every 3 s: over the 1 s gap limit.
    cmd.args([
        "-B", "-c", "20", "-r", "20", "-l", "30", "-i", "3", "-u", &url,
    ]);
    let _attack = Attack(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("running slowhttptest"),
    );
    wait_for("slow bodies cut", || {
        (metric(&moat, "http_requests", "body_timeout") >= 8).then_some(())
    });
    let e = moat.wait_event("http_request", |e| e["reason"] == "body_timeout");
    assert_eq!(e["status"], 408, "{e}");
    // At the device: each cut body's connection closed, none left pooled.
    wait_for("the cut bodies' device connections closed", || {
        let closed = device
            .connections_with("POST / ")
            .iter()
            .filter(|(_, closed)| *closed)
            .count();
        (closed >= 8).then_some(())
    });
    assert_no_device_failure(&moat);
}

/// One h2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn h2_data_past_its_content_length_is_a_malformed_body() {
    let _heavy = crate::heavy();
    let device = RawDevice::start();
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&plain_http(device.addr, "", "")), &["ui"]);
    let mut s = connect_from("127.0.0.1", moat.addr("ui"));
    // POST /h2cl with content-length 5 (HPACK: static-table names, literal
    // values), then 10 bytes of DATA.
    let mut block = vec![0x83, 0x86, 0x44, 5];
    block.extend_from_slice(b"/h2cl");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"127.0.0.1");
    block.extend_from_slice(&[0x5c, 1, b'5']);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(4, 0, 0, &[]));
    out.extend(h2_frame(1, 0x4, 1, &block));
    out.extend(h2_frame(0, 0, 1, b"0123456789"));
    s.write_all(&out).unwrap();
    // h2 resets the stream for it. Whether moat's handler sees the body
    // fail first (400) or the reset first (its request dropped, 499) is a
    // race inside hyper; both are the client's outcome, typed.
    let e = moat.wait_event("http_request", |e| e["path"] == "/h2cl");
    assert!(
        e["reason"] == "malformed_body" || e["reason"] == "client_aborted",
        "{e}"
    );
    assert_eq!(e["decision"], "denied", "{e}");
    assert_eq!(e["version"], "HTTP/2", "{e}");
    assert_no_device_failure(&moat);
    drop(s);
    wait_for("device connections closed", || {
        (device.open_connections() == 0).then_some(())
    });
}
