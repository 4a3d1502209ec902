//! h2 abuse beyond control-frame floods: endless CONTINUATION, HPACK
//! decompression bombs, rapid reset, and readers that open no window.
//!
//! Raw frames from `h2_abuse.py` (python3's socket and ssl, nothing else),
//! over TLS and h2c. Each attack runs again and again from 127.0.0.1 while
//! the bystander on 127.0.0.2 is served; the device must never see the
//! abusive streams, and moat audits and counts the cut as
//! `protocol_abuse`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::bystander;
use crate::h2_floods;
use crate::support::http_device::{self, HttpDevice};
use crate::support::*;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../integration/tests/attacks/h2_abuse.py"
);

/// One run of `h2_abuse.py MODE COUNT` against `to`; what it saw.
fn abuse(ws: &Workspace, to: SocketAddr, tls: bool, mode: &str, count: usize) -> Value {
    require("python3");
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(to.ip().to_string())
        .arg(to.port().to_string())
        .arg(if tls { "tls" } else { "h2c" })
        .arg(&ws.certs.ca)
        .arg(mode)
        .arg(count.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "h2_abuse.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "h2_abuse.py {mode} printed {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

struct Setup {
    ws: Workspace,
    moat: Moat,
    device: HttpDevice,
    /// The path of every request the device received.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Setup {
    /// A TLS service `ui` and an h2c service `plain` in front of a device
    /// whose `/big` is 4 MiB; `http` goes into both `[device.service.http]`.
    fn start(http: &str) -> Setup {
        let ws = Workspace::new();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let device = http_device::serve(move |req| {
            log.lock().unwrap().push(req.path.clone());
            if req.path == "/big" {
                "x".repeat(4 << 20)
            } else {
                "ok\n".to_string()
            }
        });
        let service = |name: &str, tls: &str| {
            format!(
                "[[device.service]]\nname = \"{name}\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1\", \"127.0.0.2\"]\n{tls}\n[device.service.http]\nhosts = [\"localhost\", \"127.0.0.1\"]\n{http}\n",
                device.addr
            )
        };
        let body = format!(
            "[[device]]\nid = \"pump\"\nname = \"infusion pump\"\n\n{}{}",
            service("ui", &ws.tls_table()),
            service("plain", "plaintext = true")
        );
        let moat = Moat::start(&ws, &body, &["ui", "plain"]);
        Setup {
            ws,
            moat,
            device,
            seen,
        }
    }

    fn url(&self, service: &str, path: &str) -> String {
        let scheme = if service == "ui" { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.moat.addr(service))
    }

    /// Runs `mode` `rounds` times against each service while the bystander
    /// makes requests to each; returns what every round saw.
    fn under_attack(&self, mode: &str, count: usize, rounds: usize) -> Vec<(bool, Value)> {
        std::thread::scope(|scope| {
            let attacker = scope.spawn(|| {
                let mut seen = Vec::new();
                for _ in 0..rounds {
                    for (service, tls) in [("ui", true), ("plain", false)] {
                        seen.push((
                            tls,
                            abuse(&self.ws, self.moat.addr(service), tls, mode, count),
                        ));
                    }
                }
                seen
            });
            // At least one round, however short the attack.
            loop {
                for service in ["ui", "plain"] {
                    bystander::served(mode, &self.ws, &self.url(service, "/bystander"), 1);
                }
                if attacker.is_finished() {
                    break;
                }
            }
            attacker.join().unwrap()
        })
    }

    /// Paths the device saw, other than the bystander's.
    fn device_saw(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|p| *p != "/bystander")
            .cloned()
            .collect()
    }

    /// Waits for `n` connections closed as `protocol_abuse` and checks the
    /// counter agrees.
    fn assert_audited_abuse(&self, n: usize) {
        let cut = wait_for(&format!("{n} protocol_abuse closes"), || {
            let cut: Vec<Value> = self
                .moat
                .events("connection_closed")
                .into_iter()
                .filter(|e| e["closed_by"] == "protocol_abuse")
                .collect();
            (cut.len() >= n).then_some(cut)
        });
        assert_eq!(cut.len(), n, "{cut:?}");
        let counted =
            h2_floods::abuse_count(&self.moat, "ui") + h2_floods::abuse_count(&self.moat, "plain");
        assert_eq!(counted, n as u64);
    }
}

/// 10,000 CONTINUATION frames of 16 KiB offered (160 MiB of headers that
/// never end): h2 stops the connection with GOAWAY ENHANCE_YOUR_CALM after
/// a few hundred KiB, and nothing reaches the device.
#[test]
fn endless_continuation_frames_are_cut_with_enhance_your_calm() {
    let _heavy = crate::heavy();
    let s = Setup::start("");
    let rounds = s.under_attack("continuation", 10_000, 3);
    for (tls, seen) in &rounds {
        // The GOAWAY may be lost to the client: moat closes while the
        // client is still writing, and the kernel resets the connection.
        assert!(
            seen["goaway"] == 11 || seen["goaway"].is_null(),
            "tls {tls}: {seen}"
        );
        assert_eq!(seen["eof"], true, "tls {tls}: {seen}");
        let sent = seen["sent"].as_u64().unwrap();
        assert!(sent < 1_000, "tls {tls}: {sent} frames read before the cut");
        assert_eq!(seen["responses"], serde_json::json!({}), "{seen}");
    }
    assert_eq!(s.device_saw(), Vec::<String>::new());
    s.assert_audited_abuse(rounds.len());
}

/// One 4,000-byte header stored in the HPACK table, then a request that
/// references it 4,000 times: 16 MB decoded from 4 KB. The request is
/// refused (RST_STREAM) by the header-list limit before it is a request;
/// the connection's first request is served; moat's memory does not jump.
#[test]
fn hpack_bombs_are_refused_before_the_device() {
    let _heavy = crate::heavy();
    let s = Setup::start("");
    let rss = |m: &Moat| -> f64 {
        m.admin_get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("moat_process_resident_memory_bytes "))
            .expect("the resident memory gauge")
            .parse()
            .unwrap()
    };
    let before = rss(&s.moat);
    let rounds = s.under_attack("hpack", 4_000, 3);
    for (tls, seen) in &rounds {
        assert_eq!(seen["responses"]["1"], 200, "tls {tls}: {seen}");
        assert!(seen["responses"].get("3").is_none(), "tls {tls}: {seen}");
        assert_eq!(seen["rst"], 1, "tls {tls}: the bomb is reset: {seen}");
    }
    // Each round's first request, and nothing of the bombs.
    assert_eq!(s.device_saw(), vec!["/".to_string(); rounds.len()]);
    let grown = rss(&s.moat) - before;
    assert!(
        grown < 16.0 * 1024.0 * 1024.0,
        "resident memory grew {grown} bytes"
    );
}

/// 20,000 streams opened and reset at once (CVE-2023-44487): the
/// connection is cut (GOAWAY ENHANCE_YOUR_CALM from the h2 library after
/// 20 pending resets), and the device sees at most a handful of the
/// requests.
#[test]
fn rapid_reset_is_cut_before_the_device_sees_the_streams() {
    let _heavy = crate::heavy();
    let s = Setup::start("");
    let rounds = s.under_attack("rapid_reset", 20_000, 3);
    for (tls, seen) in &rounds {
        assert_eq!(seen["eof"], true, "tls {tls}: {seen}");
        let sent = seen["sent"].as_u64().unwrap();
        // The client writes in batches of 100 and only reads between
        // them, so it may write thousands into socket buffers before it
        // notices; it is cut before its 20,000.
        assert!(sent < 20_000, "tls {tls}: {sent} streams before the cut");
    }
    let reached = s.device_saw().len();
    assert!(
        reached <= 20 * rounds.len(),
        "{reached} reset requests reached the device"
    );
    s.assert_audited_abuse(rounds.len());
}

/// Readers that announce a zero window and ask for 4 MiB: moat cannot
/// send a byte of the body, so the connection is idle and `keepalive_timeout`
/// ends it; the device connection held for it is closed with it, and no
/// slot or task is left behind. 40 of them at once leave the bystander
/// served.
#[test]
fn zero_window_readers_are_cut_at_keepalive_timeout_and_free_the_device() {
    let _heavy = crate::heavy();
    let s = Setup::start("response_timeout = \"2s\"\nkeepalive_timeout = \"3s\"");
    let device_port = s.device.addr.port();
    let baseline_tasks = s.moat.metric("moat_runtime_tasks");
    let results = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..40)
            .map(|i| {
                let (service, tls) = if i % 2 == 0 {
                    ("ui", true)
                } else {
                    ("plain", false)
                };
                let (ws, to) = (&s.ws, s.moat.addr(service));
                scope.spawn(move || (tls, abuse(ws, to, tls, "zero_window", 30)))
            })
            .collect();
        // All 40 hold a stalled /big at the device, and the bystander is
        // still served.
        wait_for_or(
            "40 stalled readers at the device",
            || (s.device_saw().iter().filter(|p| *p == "/big").count() == 40).then_some(()),
            || format!("{:?}", s.device_saw()),
        );
        for service in ["ui", "plain"] {
            bystander::served(
                "zero-window readers",
                &s.ws,
                &s.url(service, "/bystander"),
                3,
            );
        }
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (tls, seen) in &results {
        assert_eq!(seen["responses"]["1"], 200, "tls {tls}: {seen}");
        assert_eq!(seen["data_bytes"], 0, "tls {tls}: {seen}");
        assert_eq!(seen["eof"], true, "tls {tls}: {seen}");
        let after = seen["closed_after"].as_f64().unwrap();
        assert!(
            (2.5..15.0).contains(&after),
            "tls {tls}: closed after {after} s: {seen}"
        );
    }
    let idle = s
        .moat
        .events("connection_closed")
        .into_iter()
        .filter(|e| e["closed_by"] == "idle_timeout")
        .count();
    assert!(idle >= 40, "{idle} idle_timeout closes");
    // Nothing left: no client connection, no device connection held for
    // a stalled reader, no task.
    let at_rest = || {
        (
            s.moat.metric("moat_connections_active"),
            s.moat.metric("moat_runtime_tasks"),
            established_to(device_port),
        )
    };
    wait_for_or(
        "the gauges back at rest",
        || {
            // What may stay: the bystander's idle pooled connection to the
            // device on each service, and its task.
            let (active, tasks, device) = at_rest();
            (active == 0.0 && device <= 2 && tasks <= baseline_tasks + device as f64).then_some(())
        },
        || {
            format!(
                "(active, tasks, device connections) = {:?}, tasks before {baseline_tasks}",
                at_rest()
            )
        },
    );
}

/// Established TCP connections to a local port (`ss`), i.e. moat's
/// connections to the device.
pub fn established_to(port: u16) -> usize {
    require("ss");
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
