//! Faults (issue 16, point 4): a device that resets, never answers,
//! answers garbage or flaps under load; an audit disk that fills up; SIGHUP
//! storms and reloads during shutdown.
//!
//! Each fault must end in a clean, audited outcome, leave no connection,
//! slot, task or descriptor behind (the gauges come back), and never make
//! moat send a request with a body twice. (A device that refuses
//! connections, and one that answers too slowly, are in `http_proxy.rs`;
//! an audit file deleted or rotated under moat is in `audit_chain.rs`.)

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The status code curl got (000: no answer), from 127.0.0.1.
fn status_of(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--noproxy", "*", "--max-time", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// A device that misbehaves on demand, by path.
// ---------------------------------------------------------------------------

/// A plaintext HTTP/1.1 device that reads each request in full (head and
/// `Content-Length` body), then by its path: `/ok` answers 200; `/reset`
/// sends a head promising 1,000 bytes, 10 of them, then resets;
/// `/garbage` answers bytes that are not HTTP and closes; `/silent` never
/// answers (the connection stays open until moat closes it); `/post-reset`
/// resets without answering. It records each request (`METHOD PATH`,
/// read by `http_device::read_request`) and counts its connections open
/// now.
struct FaultyDevice {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
}

impl FaultyDevice {
    fn start() -> FaultyDevice {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let open = Arc::new(AtomicUsize::new(0));
        let (log, count) = (requests.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, count) = (log.clone(), count.clone());
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    serve_faultily(stream, &log);
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FaultyDevice {
            addr,
            requests,
            open,
        }
    }

    fn count(&self, line: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|l| *l == line).count()
    }
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn serve_faultily(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    while let Ok(Some(req)) = http_device::read_request(&mut reader) {
        log.lock()
            .unwrap()
            .push(format!("{} {}", req.method, req.path));
        match req.path.as_str() {
            "/reset" => {
                let _ =
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
                let _ = stream.flush();
                return reset(stream);
            }
            "/garbage" => {
                let _ = stream.write_all(b"\x00\x01 this is not HTTP \xff\r\n\r\n");
                return;
            }
            "/silent" => {
                // Hold the connection until moat gives up on it.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                return;
            }
            "/post-reset" => return reset(stream),
            _ => {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn http_service(name: &str, upstream: SocketAddr, http: &str) -> String {
    format!(
        "[[device.service]]\nname = \"{name}\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.1\"]\nplaintext = true\n[device.service.http]\nresponse_timeout = \"1s\"\n{http}\n"
    )
}

fn device_config(services: &str) -> String {
    format!("[[device]]\nid = \"pump\"\nname = \"Infusion pump\"\n\n{services}")
}

/// moat with one plaintext `http` service, `ui`, in front of `device`.
fn start_ui(ws: &Workspace, device: SocketAddr) -> Moat {
    Moat::start(ws, &device_config(&http_service("ui", device, "")), &["ui"])
}

/// `(active connections, tasks, descriptors)` now.
fn at_rest(moat: &Moat) -> (f64, f64, f64) {
    (
        moat.metric("moat_connections_active"),
        moat.metric("moat_runtime_tasks"),
        moat.metric("moat_process_open_fds"),
    )
}

#[test]
fn device_faults_end_in_audited_answers_and_leave_nothing_behind() {
    require("curl");
    let device = FaultyDevice::start();
    let ws = Workspace::new();
    let moat = start_ui(&ws, device.addr);
    let ui = moat.addr("ui");
    let (_, tasks_before, fds_before) = at_rest(&moat);
    let url = |path: &str| format!("http://{ui}{path}");

    // A device that dies mid-response: the head went out, so the client
    // sees a cut body, and the trail says so.
    let out = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code} %{size_download}"])
        .arg(url("/reset"))
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "curl saw the cut: {seen}");
    assert_eq!(seen, "200 10", "the head and the 10 bytes sent");
    let e = moat.wait_event("http_request", |e| e["path"] == "/reset");
    assert_eq!(e["status"], 200, "{e}");
    assert_eq!(e["response_bytes"], 10, "{e}");

    // Garbage instead of a response: 502, the device's fault.
    assert_eq!(status_of(&[&url("/garbage")]), "502");
    let e = moat.wait_event("http_request", |e| e["path"] == "/garbage");
    assert_eq!(e["reason"], "upstream_unreachable", "{e}");

    // Accepted, read, never answered: 504 after response_timeout.
    let started = Instant::now();
    assert_eq!(status_of(&[&url("/silent")]), "504");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = moat.wait_event("http_request", |e| e["path"] == "/silent");
    assert_eq!(e["reason"], "upstream_timeout", "{e}");

    // A POST whose device resets after reading the body: 502, and the
    // request went to the device once, never again on another connection
    // (the ok request first makes a pooled connection that could tempt a
    // retry).
    assert_eq!(status_of(&[&url("/ok")]), "200");
    assert_eq!(
        status_of(&["--data-binary", "dose=5ml", &url("/post-reset")]),
        "502"
    );
    let e = moat.wait_event("http_request", |e| e["path"] == "/post-reset");
    assert_eq!(e["reason"], "upstream_unreachable", "{e}");
    assert_eq!(device.count("POST /post-reset"), 1);

    // None of it counts as moat's own error, and nothing is left: no
    // client connection, and at the device only the idle pooled one.
    wait_for_or(
        "the gauges back at rest",
        || {
            let (active, tasks, fds) = at_rest(&moat);
            let device_open = device.open.load(Ordering::SeqCst);
            (active == 0.0
                && device_open <= 1
                && tasks <= tasks_before + device_open as f64
                && fds <= fds_before + device_open as f64)
                .then_some(())
        },
        || {
            format!(
                "{:?} (before: tasks {tasks_before}, fds {fds_before}); device connections {}",
                at_rest(&moat),
                device.open.load(Ordering::SeqCst)
            )
        },
    );
    assert!(!moat.stderr().contains("panicked"), "{}", moat.stderr());
}

/// A free loopback port below Linux's ephemeral range (32768 and up): a
/// port from `closed_port()` is ephemeral, and while the flapping device
/// is down any outgoing connection of the parallel tests may take it as
/// its source port, so that the device could not come back up.
fn port_below_the_ephemeral_range() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 8_000) as u16;
    loop {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], base + step));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A device on a fixed port that is up for 200 ms (answering each read
/// with `answer`, or nothing) and down for 200 ms (connections refused,
/// the open ones reset), until stopped.
struct Flapping {
    addr: SocketAddr,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<usize>,
}

impl Flapping {
    fn start(answer: fn(&[u8]) -> Option<Vec<u8>>) -> Flapping {
        let addr = port_below_the_ephemeral_range();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // Waits up to `d` for the stop; true once asked to stop.
        let asked_to_stop = move |d: Duration| {
            !matches!(
                stopped.recv_timeout(d),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            )
        };
        let thread = std::thread::spawn(move || {
            let mut up_cycles = 0;
            loop {
                let Ok(listener) = TcpListener::bind(addr) else {
                    // Held for a moment by something else: still down.
                    if asked_to_stop(Duration::from_millis(20)) {
                        return up_cycles;
                    }
                    continue;
                };
                listener.set_nonblocking(true).unwrap();
                let until = Instant::now() + Duration::from_millis(200);
                let mut conns = Vec::new();
                while Instant::now() < until {
                    if let Ok((s, _)) = listener.accept() {
                        s.set_nonblocking(true).unwrap();
                        conns.push(s);
                    }
                    for s in &mut conns {
                        let mut buf = [0u8; 4096];
                        if let Ok(n @ 1..) = s.read(&mut buf) {
                            if let Some(reply) = answer(&buf[..n]) {
                                let _ = s.write_all(&reply);
                            }
                        }
                    }
                    // Between polls of the non-blocking sockets.
                    if asked_to_stop(Duration::from_millis(5)) {
                        return up_cycles;
                    }
                }
                drop(listener);
                for s in conns {
                    reset(s);
                }
                up_cycles += 1;
                if asked_to_stop(Duration::from_millis(200)) {
                    return up_cycles;
                }
            }
        });
        Flapping { addr, stop, thread }
    }

    /// Stops it; how many times it was up.
    fn stop(self) -> usize {
        let _ = self.stop.send(());
        self.thread.join().unwrap()
    }
}

/// `clients` threads, each calling `one(i)` again and again for `secs`
/// seconds; every outcome, with how long it took.
fn load<T: Send>(clients: usize, secs: u64, one: impl Fn(usize) -> T + Sync) -> Vec<(T, Duration)> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let one = &one;
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    let until = Instant::now() + Duration::from_secs(secs);
                    while Instant::now() < until {
                        let started = Instant::now();
                        let outcome = one(i);
                        seen.push((outcome, started.elapsed()));
                    }
                    seen
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

/// A device that goes up and down every 200 ms while 6 clients keep
/// asking: every request gets an answer (200 while it is up, 502 while it
/// is down), none hangs, and once the load stops nothing is left behind.
#[test]
fn a_flapping_device_under_load_gets_answers_not_hangs() {
    let flapping = Flapping::start(|request| {
        request
            .windows(4)
            .any(|w| w == b"\r\n\r\n")
            .then(|| b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec())
    });
    let addr = flapping.addr;
    let ws = Workspace::new();
    let moat = start_ui(&ws, addr);
    let (_, tasks_before, fds_before) = at_rest(&moat);
    let ui = moat.addr("ui");
    let outcomes = load(6, 4, |_| {
        let mut s = connect_from("127.0.0.1", ui);
        let request = "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        exchange(&mut s, request).status
    });
    let up_cycles = flapping.stop();
    assert!(up_cycles >= 5, "the device flapped {up_cycles} times");
    let ok = outcomes.iter().filter(|(s, _)| *s == 200).count();
    let down = outcomes.iter().filter(|(s, _)| *s == 502).count();
    let slowest = outcomes.iter().map(|(_, d)| *d).max().unwrap();
    assert!(ok > 10 && down > 10, "{ok} answered, {down} device down");
    assert_eq!(
        ok + down,
        outcomes.len(),
        "every request 200 or 502: {:?}",
        outcomes
            .iter()
            .filter(|(s, _)| *s != 200 && *s != 502)
            .collect::<Vec<_>>()
    );
    // response_timeout is 1 s: nothing waits longer than that and a bit.
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    wait_for_or(
        "the gauges back at rest",
        || {
            let (active, tasks, fds) = at_rest(&moat);
            (active == 0.0 && tasks <= tasks_before + 1.0 && fds <= fds_before + 1.0).then_some(())
        },
        || {
            format!(
                "{:?} (before: tasks {tasks_before}, fds {fds_before})",
                at_rest(&moat)
            )
        },
    );
}

/// The same flapping device behind an L4 (TCP) service, echoing: each
/// client connection is echoed, or closed when the device is down or goes
/// down under it (never left hanging), each end is audited, and nothing
/// is left behind.
#[test]
fn a_flapping_device_behind_an_l4_service_closes_connections_cleanly() {
    let flapping = Flapping::start(|data| Some(data.to_vec()));
    let ws = Workspace::new();
    let service = format!(
        "[[device.service]]\nname = \"tcp\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1\"]\nplaintext = true\nconnect_timeout = \"1s\"\n",
        flapping.addr
    );
    let moat = Moat::start(&ws, &device_config(&service), &["tcp"]);
    let (_, tasks_before, fds_before) = at_rest(&moat);
    let tcp = moat.addr("tcp");
    let outcomes = load(6, 4, |i| {
        let mut s = connect_from("127.0.0.1", tcp);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = format!("client {i}\n");
        let mut echo = vec![0u8; line.len()];
        let echoed = s.write_all(line.as_bytes()).is_ok()
            && s.read_exact(&mut echo).is_ok()
            && echo == line.as_bytes();
        // Not echoed: the connection must have been closed, not left open.
        let closed = echoed || {
            let mut rest = Vec::new();
            match s.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        };
        assert!(closed, "a connection left hanging");
        echoed
    });
    let up_cycles = flapping.stop();
    assert!(up_cycles >= 5, "the device flapped {up_cycles} times");
    let echoed = outcomes.iter().filter(|(e, _)| *e).count();
    let cut = outcomes.len() - echoed;
    let slowest = outcomes.iter().map(|(_, d)| *d).max().unwrap();
    assert!(echoed > 10 && cut > 10, "{echoed} echoed, {cut} cut");
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    let refused = moat
        .events("connection_denied")
        .into_iter()
        .filter(|e| e["reason"] == "upstream_unreachable")
        .count();
    assert!(refused > 0, "the device being down is audited");
    wait_for_or(
        "the gauges back at rest",
        || {
            let (active, tasks, fds) = at_rest(&moat);
            (active == 0.0 && tasks <= tasks_before && fds <= fds_before + 1.0).then_some(())
        },
        || {
            format!(
                "{:?} (before: tasks {tasks_before}, fds {fds_before})",
                at_rest(&moat)
            )
        },
    );
}

// ---------------------------------------------------------------------------
// The audit disk fills up.
// ---------------------------------------------------------------------------

/// A small tmpfs mounted for the test (root only), unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0750"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallDisk {
            path: at.to_path_buf(),
        })
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// While the audit disk is full, a service with the default
/// `on_audit_failure = "serve"` keeps serving and one set to "refuse"
/// answers 503 `audit_unavailable`; the loss is counted and, once there is
/// room again, recording resumes with an `audit_records_lost` line, the
/// refusing service serves again, and the trail still verifies.
#[test]
fn a_full_audit_disk_is_counted_reported_and_survived() {
    require("curl");
    let ws = Workspace::new();
    let Some(disk) = SmallDisk::mount(&ws.path("auditfs"), "1m") else {
        // Mounting needs root (CI runs as root).
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let device = FaultyDevice::start();
    // The policy lives on the small disk too: the trail (`audit.jsonl`
    // beside it) and its head file go there.
    let audit = disk.path.join("audit.jsonl");
    let body = format!(
        "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        device_config(&format!(
            "{}{}",
            http_service("serve", device.addr, ""),
            http_service("refuse", device.addr, "")
                .replace("plaintext = true\n", "plaintext = true\non_audit_failure = \"refuse\"\n")
        ))
    );
    let config = disk.path.join("moat.toml");
    std::fs::write(&config, body).unwrap();
    let moat = Moat::start_file(&config, &["serve", "refuse"]);
    assert_eq!(moat.audit, audit);
    let serve = format!("http://{}/ok", moat.addr("serve"));
    let refuse = format!("http://{}/ok", moat.addr("refuse"));
    assert_eq!(status_of(&[&refuse]), "200");
    assert_eq!(moat.metric("moat_audit_writable"), 1.0);
    // A keep-alive connection to the refusing service, open before.
    let mut kept = connect_from("127.0.0.1", moat.addr("refuse"));
    let get = "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    assert_eq!(exchange(&mut kept, get).status, 200);

    let filler = disk.fill();
    // Enough requests to fill moat's write buffer too: records are lost.
    let mut s = connect_from("127.0.0.1", moat.addr("serve"));
    for _ in 0..400 {
        let reply = exchange(&mut s, "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert_eq!(reply.status, 200, "served while the disk is full");
    }
    drop(s);
    wait_for("the trail reported unwritable", || {
        (moat.metric("moat_audit_writable") == 0.0).then_some(())
    });
    assert!(moat.metric("moat_audit_dropped_total") > 0.0);
    assert_eq!(status_of(&[&serve]), "200");
    // The refusing service: a request on the open connection gets 503,
    // a new connection is refused at accept like any other connection
    // the chain refuses (closed, counted).
    let reply = exchange(&mut kept, get);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some("audit_unavailable"));
    assert_eq!(status_of(&[&refuse]), "000");
    let refused = moat.metric(
        "moat_connections_total{device=\"pump\",service=\"refuse\",outcome=\"audit_unavailable\"}",
    );
    assert_eq!(refused, 1.0);
    assert!(moat.stderr().contains("writing audit trail failed"));

    // Room again: recording resumes by itself (moat retries every second).
    std::fs::remove_file(&filler).unwrap();
    wait_for("the trail writable again", || {
        (moat.metric("moat_audit_writable") == 1.0).then_some(())
    });
    assert_eq!(status_of(&[&refuse]), "200");
    let lost = wait_for("the loss on record", || {
        moat.events("audit_records_lost").into_iter().next()
    });
    let dropped = moat.metric("moat_audit_dropped_total");
    assert_eq!(lost["count"].as_f64().unwrap(), dropped, "{lost}");
    assert!(
        lost["error"].as_str().unwrap().contains("No space left"),
        "{lost}"
    );
    // The chain skips nothing it links: the trail verifies.
    let verify = Command::new(moat_bin())
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

// ---------------------------------------------------------------------------
// Signals.
// ---------------------------------------------------------------------------

/// 300 SIGHUPs as fast as they can be sent while a client keeps
/// requesting: moat keeps serving, applies at most what changed (nothing),
/// and stays healthy.
#[test]
fn a_sighup_storm_changes_nothing_and_stops_nothing() {
    require("curl");
    let device = FaultyDevice::start();
    let ws = Workspace::new();
    let moat = start_ui(&ws, device.addr);
    let ui = moat.addr("ui");
    let version = moat.metric("moat_policy_version");
    let served = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut s = connect_from("127.0.0.1", ui);
            (0..200)
                .map(|_| exchange(&mut s, "GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").status)
                .filter(|s| *s == 200)
                .count()
        });
        for _ in 0..300 {
            signal(moat.pid(), "HUP");
        }
        client.join().unwrap()
    });
    assert_eq!(served, 200);
    assert_eq!(status_of(&[&format!("http://{ui}/ok")]), "200");
    assert!(moat.admin_get("/healthz").contains("ok"));
    // Nothing changed, so nothing was applied or rejected.
    assert_eq!(moat.metric("moat_policy_version"), version);
    assert!(moat.events("reload_rejected").is_empty());
}

/// SIGTERM, then a changed policy and SIGHUPs during the grace period:
/// moat does not start new listeners or reload on its way out; it finishes
/// the live request, stops within the grace period, and its trail ends
/// with `gateway_stopped`.
#[test]
fn reloads_during_shutdown_are_not_applied_and_the_stop_is_clean() {
    let device = FaultyDevice::start();
    let ws = Workspace::new();
    let mut moat = start_ui(&ws, device.addr);
    let ui = moat.addr("ui");
    // A request in flight at the device when the stop begins.
    let mut s = connect_from("127.0.0.1", ui);
    s.write_all(b"GET /silent HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    wait_for("the request at the device", || {
        (device.count("GET /silent") == 1).then_some(())
    });
    let started = Instant::now();
    signal(moat.pid(), "TERM");
    moat.wait_event("gateway_stopping", |_| true);
    // A second service appears in the file, and SIGHUPs ask for it.
    let text = std::fs::read_to_string(&moat.config).unwrap();
    std::fs::write(
        &moat.config,
        format!("{text}\n{}", http_service("late", device.addr, "")),
    )
    .unwrap();
    for _ in 0..20 {
        signal(moat.pid(), "HUP");
    }
    let status = moat.terminate();
    assert!(status.success(), "exit {status:?}: {}", moat.stderr());
    // The grace period is 3 s (support's default); the silent request was
    // answered 504 at its 1 s response_timeout, well within it.
    assert!(started.elapsed() < Duration::from_secs(8));
    let reply = {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse_reply(&out)
    };
    assert_eq!(reply.status, 504, "{reply:?}");
    let lines = moat.audit_lines();
    assert_eq!(
        lines.last().unwrap()["event"],
        "gateway_stopped",
        "{:?}",
        lines.last()
    );
    assert!(
        !lines.iter().any(|e| e["event"] == "reload_applied"),
        "a reload was applied while stopping"
    );
    assert!(!moat.stderr().contains("panicked"), "{}", moat.stderr());
}
