//! h2 control-frame floods and bounded buffering towards slow readers (issue 10, items 5 and 7)

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::support::*;
use serde_json::Value;

/// A raw h2 client: preface, SETTINGS, one GET, waits for its answer, then
/// `count` frames of `kind` (`settings`, `ping`, `priority` or
/// `window_update`) in batches, reading
/// between them; stops at GOAWAY. Prints what it saw as JSON.
const FLOODER: &str = r#"
import json, select, socket, ssl, struct, sys, time
host, port, tls, ca, kind, count = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tls", sys.argv[4], sys.argv[5], int(sys.argv[6])
def frame(t, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", stream) + payload
s = socket.create_connection((host, port), timeout=10)
if tls:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(s, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
auth = b"localhost"
hpack = bytes([0x82, 0x87 if tls else 0x86, 0x84, 0x41, len(auth)]) + auth
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 5, 1, hpack))
buf, seen = b"", {"goaway": None, "last_stream": None, "response": False, "eof": False, "sent": 0, "acks": 0, "error": None}
def parse():
    global buf
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + n: return
        t, sid, p = buf[3], int.from_bytes(buf[5:9], "big"), buf[9:9 + n]
        if t == 1 and sid == 1: seen["response"] = True
        if t in (4, 6) and buf[4] & 1: seen["acks"] += 1
        if t == 7:
            seen["last_stream"] = int.from_bytes(p[:4], "big")
            seen["goaway"] = int.from_bytes(p[4:8], "big")
        buf = buf[9 + n:]
def read_some(block):
    global buf
    while block or (tls and s.pending()) or select.select([s], [], [], 0)[0]:
        d = s.recv(65536)
        if not d:
            seen["eof"] = True
            return
        buf += d; parse()
        if block: return
deadline = time.time() + 15
try:
    while not seen["response"] and time.time() < deadline: read_some(True)
    one = {
        "settings": frame(4, 0, 0, struct.pack(">HI", 3, 100)),
        "ping": frame(6, 0, 0, b"12345678"),
        "priority": frame(2, 0, 1, struct.pack(">IB", 0, 15)),
        "window_update": frame(8, 0, 0, struct.pack(">I", 1)),
    }[kind]
    while seen["sent"] < count and seen["goaway"] is None and not seen["eof"]:
        n = min(500, count - seen["sent"])
        s.sendall(one * n); seen["sent"] += n
        read_some(False)
    while not seen["eof"] and time.time() < deadline: read_some(True)
except Exception as e:
    seen["error"] = repr(e)
print(json.dumps(seen))
"#;

fn flood(ws: &Workspace, to: SocketAddr, tls: bool, kind: &str, count: usize) -> Value {
    require("python3");
    let script = ws.write("flood.py", FLOODER);
    let out = Command::new("python3")
        .arg(script)
        .args([
            to.ip().to_string(),
            to.port().to_string(),
            (if tls { "tls" } else { "plain" }).to_string(),
            ws.certs.ca.display().to_string(),
            kind.to_string(),
            count.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "flooder output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One TLS and one plaintext (h2c prior knowledge) UI service in front of
/// a device whose `/big` answer is 8 MiB.
fn start(ws: &Workspace) -> (Moat, http_device::HttpDevice) {
    let dev = http_device::serve(|req| {
        if req.path == "/big" {
            "x".repeat(8 << 20)
        } else {
            format!("{} {}\n", req.method, req.path)
        }
    });
    let service = |name: &str, tls: &str| {
        format!(
            "[[device.service]]\nname = \"{name}\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1\"]\n{tls}\n[device.service.http]\n",
            dev.addr
        )
    };
    let body = format!(
        "[[device]]\nid = \"pump\"\nname = \"infusion pump\"\n\n{}{}",
        service("ui", &ws.tls_table()),
        service("plain", "plaintext = true")
    );
    (Moat::start(ws, &body, &["ui", "plain"]), dev)
}

/// `moat_connections_total{outcome="protocol_abuse"}` of a service.
pub fn abuse_count(moat: &Moat, service: &str) -> u64 {
    let label = format!("service=\"{service}\",outcome=\"protocol_abuse\"");
    moat.admin_get("/metrics")
        .lines()
        .filter(|l| l.contains("connections") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn assert_cut(moat: &Moat, seen: &Value, kind: &str, service: &str) {
    assert_eq!(seen["response"], true, "the request was answered: {seen}");
    assert_eq!(seen["goaway"], 11, "GOAWAY ENHANCE_YOUR_CALM: {seen}");
    assert_eq!(seen["last_stream"], 1, "{seen}");
    assert_eq!(seen["eof"], true, "connection closed: {seen}");
    // The client wrote far ahead; moat acknowledged at most its budget of
    // 1,000 (plus 100/s), then cut.
    let acks = seen["acks"].as_u64().unwrap();
    assert!(acks < 2000, "{acks} acks: {seen}");
    let closed = moat.wait_event("connection_closed", |e| {
        e["service"] == service && e["closed_by"] == "protocol_abuse"
    });
    let detail = closed["error"].as_str().unwrap();
    assert!(detail.contains(kind), "{closed}");
    assert_eq!(abuse_count(moat, service), 1);
}

#[test]
fn settings_flood_over_tls_gets_goaway_enhance_your_calm() {
    let ws = Workspace::new();
    let (moat, _dev) = start(&ws);
    let seen = flood(&ws, moat.addr("ui"), true, "settings", 200_000);
    assert_cut(&moat, &seen, "SETTINGS", "ui");
}

#[test]
fn ping_flood_over_h2c_gets_goaway_enhance_your_calm() {
    let ws = Workspace::new();
    let (moat, _dev) = start(&ws);
    let seen = flood(&ws, moat.addr("plain"), false, "ping", 500_000);
    assert_cut(&moat, &seen, "PING", "plain");
}

#[test]
fn ping_flood_over_tls_and_settings_flood_over_h2c_are_cut_too() {
    let ws = Workspace::new();
    let (moat, _dev) = start(&ws);
    let seen = flood(&ws, moat.addr("ui"), true, "ping", 500_000);
    assert_cut(&moat, &seen, "PING", "ui");
    let seen = flood(&ws, moat.addr("plain"), false, "settings", 200_000);
    assert_cut(&moat, &seen, "SETTINGS", "plain");
}

/// Frames that ask for no answer cost moat CPU all the same.
#[test]
fn priority_and_window_update_floods_are_cut() {
    let ws = Workspace::new();
    let (moat, _dev) = start(&ws);
    let seen = flood(&ws, moat.addr("ui"), true, "priority", 500_000);
    assert_cut(&moat, &seen, "PRIORITY", "ui");
    let seen = flood(&ws, moat.addr("plain"), false, "window_update", 500_000);
    assert_cut(&moat, &seen, "WINDOW_UPDATE", "plain");
}

/// Browsers and ordinary clients: many requests and a large download on
/// one connection are never mistaken for a flood.
#[test]
fn ordinary_h2_clients_are_never_cut() {
    require("curl");
    require("nghttp");
    let ws = Workspace::new();
    let (moat, _dev) = start(&ws);
    let ui = moat.addr("ui");
    let base = format!("https://localhost:{}", ui.port());
    let resolve = format!("localhost:{}:127.0.0.1", ui.port());
    // 2,000 requests on one connection.
    let out = Command::new("nghttp")
        .args(["-n", "-s", "-m", "2000", "-t", "20"])
        .arg(format!("https://{ui}/page"))
        .stdin(Stdio::null())
        .output()
        .expect("running nghttp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nghttp: {stderr}");
    // A large download and a few small requests on one curl connection.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--noproxy", "*", "--max-time", "20"])
        .args(["--resolve", &resolve, "--cacert"])
        .arg(&ws.certs.ca)
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{num_connects}\n",
        ])
        .arg(format!("{base}/big"))
        .args(["-o", "/dev/null"])
        .arg(format!("{base}/a"))
        .args(["-o", "/dev/null"])
        .arg(format!("{base}/big"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines[0], format!("200 {} 1", 8 << 20));
    assert_eq!(lines[2], format!("200 {} 0", 8 << 20), "same connection");
    // h2c prior knowledge: a large download too.
    let plain = moat.addr("plain");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--noproxy",
            "*",
            "--max-time",
            "20",
        ])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{size_download}"])
        .arg(format!("http://{plain}/big"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("200 {}", 8 << 20)
    );

    let closed = wait_for("the three connections to close", || {
        let c = moat.events("connection_closed");
        (c.len() >= 3).then_some(c)
    });
    for c in &closed {
        assert_ne!(c["closed_by"], "protocol_abuse", "{c}");
    }
    assert_eq!(abuse_count(&moat, "ui") + abuse_count(&moat, "plain"), 0);
}
