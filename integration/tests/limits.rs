//! Rate limits and overload protection end to end: the real `moat` binary on
//! loopback, real load (`wrk`) and real clients (`curl`, raw sockets from
//! chosen loopback sources), a device that records what reached it, and the
//! audit trail and metrics checked against what the clients saw.
//!
//! Every load is bounded in count and time. The tests take a shared lock so
//! that one test's load does not skew another's timing on a small machine.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http_device;
use support::*;

/// Held by each test: loads and rate measurements run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// The device: a keep-alive HTTP/1.1 server that counts the requests it is
// working on at once.
// ---------------------------------------------------------------------------

/// A plaintext HTTP/1.1 device. Each request takes `work` to handle, then
/// gets `200` with the body `ok`. It records how many requests it was
/// handling at once, and the most ever.
struct Device {
    addr: SocketAddr,
    /// Requests received in full.
    requests: Arc<AtomicUsize>,
    /// Requests being handled right now.
    active: Arc<AtomicUsize>,
    /// The most requests ever handled at once.
    max_active: Arc<AtomicUsize>,
}

impl Device {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }
}

fn device(work: Duration) -> Device {
    let requests = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let max_active = Arc::new(AtomicUsize::new(0));
    let (count, now_active, most) = (requests.clone(), active.clone(), max_active.clone());
    let server = http_device::serve(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        let now = now_active.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        if !work.is_zero() {
            // The device being slow is what this simulates.
            std::thread::sleep(work);
        }
        // Done with the request before the answer leaves, so the count
        // never includes a request moat may already consider finished.
        now_active.fetch_sub(1, Ordering::SeqCst);
        "ok\n".to_string()
    });
    Device {
        addr: server.addr,
        requests,
        active,
        max_active,
    }
}

// ---------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------

fn config(services: &str) -> String {
    format!("[[device]]\nid = \"pump\"\nname = \"Infusion pump\"\n{services}")
}

/// A `protocol = "http"` service over TLS with the given limits table body.
fn http_service(
    ws: &Workspace,
    name: &str,
    upstream: SocketAddr,
    allow: &str,
    limits: &str,
) -> String {
    format!(
        r#"
[[device.service]]
name = "{name}"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = {allow}
{tls}
[device.service.limits]
{limits}
"#,
        tls = ws.tls_table()
    )
}

/// A plaintext `protocol = "tcp"` service with the given limits table body.
fn tcp_service(name: &str, upstream: SocketAddr, allow: &str, limits: &str) -> String {
    format!(
        r#"
[[device.service]]
name = "{name}"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = {allow}
plaintext = true

[device.service.limits]
{limits}
"#
    )
}

// ---------------------------------------------------------------------------
// Clients.
// ---------------------------------------------------------------------------

fn curl_command(ca: &Path, from: &str, url: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-i",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "--cacert",
    ])
    .arg(ca)
    .args(extra)
    .args(["--interface", from, url])
    .stdin(Stdio::null());
    c
}

/// One request with curl from the loopback address `from`.
fn curl(ws: &Workspace, from: &str, url: &str) -> Reply {
    let out = curl_command(&ws.certs.ca, from, url, &[])
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl {url} from {from} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&out.stdout)
}

fn url(addr: SocketAddr) -> String {
    format!("https://{addr}/")
}

/// moat with one `ui` service in front of `dev`, admitting `allow`, with
/// `limits` as its limits table; and that service's URL.
fn ui_in_front_of(ws: &Workspace, dev: &Device, allow: &str, limits: &str) -> (Moat, String) {
    let svc = http_service(ws, "ui", dev.addr, allow, limits);
    let moat = Moat::start(ws, &config(&svc), &["ui"]);
    let target = url(moat.addr("ui"));
    (moat, target)
}

/// Asserts a refusal answered by moat: status, reason and a sensible
/// `Retry-After` (whole seconds, 1..=`max_wait`).
fn assert_refused(reply: &Reply, status: u16, reason: &str, max_wait: u64) -> u64 {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some(reason), "{reply:?}");
    assert!(
        reply.body.contains(&format!("reason: {reason}")),
        "{reply:?}"
    );
    let wait: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after: {reply:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("retry-after is not whole seconds: {reply:?}"));
    assert!(
        (1..=max_wait).contains(&wait),
        "retry-after {wait}: {reply:?}"
    );
    wait
}

/// A child process that is killed if the test fails before it ends.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `wrk` reported.
struct WrkRun {
    /// Responses completed.
    requests: u64,
    /// Responses with a status outside 2xx/3xx.
    non_2xx: u64,
    output: String,
}

/// `wrk -t1 -c<connections> -d<secs>s url`: bounded by wrk's own duration,
/// and killed if it overruns it by far.
fn wrk(connections: u32, secs: u32, url: &str) -> WrkRun {
    let child = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wrk");
    let mut child = Reaped(Some(child));
    let status = wait_for("wrk to finish", || {
        child.0.as_mut().unwrap().try_wait().unwrap()
    });
    // Already exited: this only collects what it printed.
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "wrk failed ({status}): {output}");
    let requests = output
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output: {output}"));
    let non_2xx = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map(|n| n.trim().parse().unwrap())
        .unwrap_or(0);
    WrkRun {
        requests,
        non_2xx,
        output,
    }
}

/// The sum of the `moat_<family>_total` samples with this outcome.
fn metric(moat: &Moat, family: &str, outcome: &str) -> u64 {
    let text = moat.admin_get("/metrics");
    let prefix = format!("moat_{family}_total{{");
    let label = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .map(|l| {
            let v = l.rsplit(' ').next().unwrap();
            v.parse::<f64>()
                .unwrap_or_else(|_| panic!("metric value: {l}")) as u64
        })
        .sum()
}

fn client_ip(e: &Value) -> String {
    let c: SocketAddr = e["client"].as_str().unwrap().parse().unwrap();
    c.ip().to_string()
}

/// One TCP connection from `from`: sends a byte and waits for the echo.
/// True when it came back (admitted); false when moat closed the
/// connection without a byte (refused).
fn echo_once(from: &str, to: SocketAddr) -> bool {
    let mut s = connect_from(from, to);
    // A refused connection may already be closed (EPIPE, reset): that is
    // a refusal too, seen by the read below.
    let _ = s.write_all(b"x");
    let mut b = [0u8; 1];
    let echoed = matches!(s.read(&mut b), Ok(1)) && b[0] == b'x';
    let _ = s.shutdown(std::net::Shutdown::Write);
    echoed
}

/// Waits until the audit trail holds `n` connection decisions (allowed or
/// denied) for clients whose address satisfies `from`; returns
/// (allowed, denied events).
fn decisions(moat: &Moat, n: usize, from: impl Fn(&str) -> bool) -> (Vec<Value>, Vec<Value>) {
    wait_for(&format!("{n} connection decisions"), || {
        let lines = moat.audit_lines();
        let of = |kind: &str| -> Vec<Value> {
            lines
                .iter()
                .filter(|e| e["event"] == kind && from(&client_ip(e)))
                .cloned()
                .collect()
        };
        let (allowed, denied) = (of("connection_allowed"), of("connection_denied"));
        (allowed.len() + denied.len() >= n).then_some((allowed, denied))
    })
}

/// Writes the config through a rename, so the file watcher never sees half
/// a file, then asks for a reload and waits until `version` is in force.
fn rewrite_and_reload(moat: &Moat, edit: impl Fn(&str) -> String, version: u64) {
    let text = std::fs::read_to_string(&moat.config).unwrap();
    let new = edit(&text);
    assert_ne!(new, text, "the edit changes the config");
    replace_by_rename(&moat.config, &new);
    let (status, body) = moat.admin_post("/reload");
    assert_eq!(status, 200, "{body}");
    moat.wait_event("reload_applied", |e| e["new_version"] == version);
    assert!(moat.events("reload_rejected").is_empty());
}

fn replace_by_rename(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn an_abusive_client_is_throttled_while_a_polite_one_is_served() {
    require("wrk");
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::ZERO);
    let (moat, target) = ui_in_front_of(
        &ws,
        &dev,
        r#"["127.0.0.1", "127.0.0.2"]"#,
        r#"requests_per_client = "20/s burst 20""#,
    );

    // The polite client: one request every 200 ms for the same 3 s, from
    // its own address. The pause is its pacing, not synchronisation.
    let polite = {
        let (ca, target) = (ws.certs.ca.clone(), target.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut statuses = Vec::new();
            for i in 0..15u32 {
                let due = start + Duration::from_millis(200) * i;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let out = curl_command(&ca, "127.0.0.2", &target, &[])
                    .output()
                    .expect("running curl");
                statuses.push(if out.status.success() {
                    parse_reply(&out.stdout).status
                } else {
                    0
                });
            }
            statuses
        })
    };
    let started = Instant::now();
    let run = wrk(4, 3, &target);
    let elapsed = started.elapsed();
    let statuses = polite.join().unwrap();

    assert_eq!(
        statuses,
        vec![200u16; 15],
        "the polite client is never refused"
    );
    // 20 at once, then 20 a second: everything else was refused.
    let ok = run.requests - run.non_2xx;
    let most = 20 + (20.0 * elapsed.as_secs_f64()).ceil() as u64 + 5;
    assert!(
        ok <= most,
        "{ok} successes > {most} in {elapsed:?}:\n{}",
        run.output
    );
    assert!(
        run.non_2xx >= 100 && run.non_2xx * 2 > run.requests,
        "most of wrk's responses are refusals:\n{}",
        run.output
    );

    let requests = moat.events("http_request");
    let limited: Vec<&Value> = requests
        .iter()
        .filter(|e| e["reason"] == "rate_limited_client")
        .collect();
    assert!(!limited.is_empty());
    for e in &limited {
        assert_eq!(client_ip(e), "127.0.0.1", "{e}");
        assert_eq!(e["status"], 429, "{e}");
        assert_eq!(e["decision"], "denied", "{e}");
        assert_eq!(e["detail"], "requests_per_client 20/s burst 20", "{e}");
    }
    let polite_events = wait_for("the polite client's 15 requests audited", || {
        let e: Vec<Value> = moat
            .events("http_request")
            .into_iter()
            .filter(|e| client_ip(e) == "127.0.0.2")
            .collect();
        (e.len() >= 15).then_some(e)
    });
    assert_eq!(polite_events.len(), 15);
    assert!(polite_events
        .iter()
        .all(|e| e["status"] == 200 && e["decision"] == "allowed"));

    let counted = metric(&moat, "http_requests", "rate_limited_client");
    assert!(
        counted >= run.non_2xx,
        "metrics count every refusal: {counted} < {}",
        run.non_2xx
    );
}

#[test]
fn refusals_carry_a_sensible_retry_after() {
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::ZERO);
    let services = [
        http_service(
            &ws,
            "per-client",
            dev.addr,
            r#"["127.0.0.1", "127.0.0.2"]"#,
            r#"requests_per_client = "1/min""#,
        ),
        http_service(
            &ws,
            "per-device",
            dev.addr,
            r#"["127.0.0.1", "127.0.0.2"]"#,
            r#"device_rate = "1/min""#,
        ),
    ]
    .concat();
    let moat = Moat::start(&ws, &config(&services), &["per-client", "per-device"]);

    let per_client = url(moat.addr("per-client"));
    assert_eq!(curl(&ws, "127.0.0.1", &per_client).status, 200);
    let r = curl(&ws, "127.0.0.1", &per_client);
    let wait = assert_refused(&r, 429, "rate_limited_client", 60);
    assert!(wait >= 50, "the next request is a minute away: {wait}");
    // Another client has its own budget.
    assert_eq!(curl(&ws, "127.0.0.2", &per_client).status, 200);

    let per_device = url(moat.addr("per-device"));
    assert_eq!(curl(&ws, "127.0.0.1", &per_device).status, 200);
    let r = curl(&ws, "127.0.0.2", &per_device);
    let wait = assert_refused(&r, 503, "rate_limited_device", 60);
    assert!(wait >= 50, "the device admits one a minute: {wait}");

    let limited = moat.wait_event("http_request", |e| e["reason"] == "rate_limited_client");
    assert_eq!(limited["service"], "per-client");
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["detail"], "requests_per_client 1/min");
    let busy = moat.wait_event("http_request", |e| e["reason"] == "rate_limited_device");
    assert_eq!(busy["service"], "per-device");
    assert_eq!(client_ip(&busy), "127.0.0.2");
    assert_eq!(busy["status"], 503);
    assert_eq!(busy["detail"], "device_rate 1/min");
    assert_eq!(dev.requests(), 3, "refused requests never reach the device");
}

#[test]
fn the_device_never_sees_more_than_max_in_flight() {
    require("wrk");
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::from_millis(200));
    let (moat, target) = ui_in_front_of(
        &ws,
        &dev,
        r#"["127.0.0.1", "127.0.0.2"]"#,
        "max_in_flight = 3\nqueue_timeout = \"50ms\"",
    );

    let load = {
        let target = target.clone();
        std::thread::spawn(move || wrk(20, 3, &target))
    };
    // While the load runs, a client of its own is turned away too, and
    // told when to come back.
    let mut busy = None;
    while busy.is_none() && !load.is_finished() {
        let r = curl(&ws, "127.0.0.2", &target);
        if r.status != 200 {
            busy = Some(r);
        }
    }
    let run = load.join().unwrap();
    let busy = busy.expect("a request during the load was refused as device_busy");
    let wait = assert_refused(&busy, 503, "device_busy", 1);
    assert_eq!(wait, 1);

    assert!(dev.requests() > 0, "the device was served");
    // The load keeps every slot busy, and never more than that.
    assert_eq!(
        dev.max_active(),
        3,
        "the device handled {} requests at once",
        dev.max_active()
    );
    assert!(run.non_2xx > 0, "{}", run.output);
    let refused = moat.events("http_request");
    // wrk exits with requests in flight: those are client_aborted.
    let refused: Vec<&Value> = refused
        .iter()
        .filter(|e| e["decision"] == "denied" && e["reason"] != "client_aborted")
        .collect();
    assert!(!refused.is_empty());
    for e in &refused {
        assert_eq!(e["reason"], "device_busy", "{e}");
        assert_eq!(e["status"], 503, "{e}");
        assert_eq!(e["detail"], "max_in_flight 3", "{e}");
    }
    assert!(metric(&moat, "http_requests", "device_busy") >= run.non_2xx);
}

/// The `device_busy` answer on its own, with no abandoned request involved:
/// a request that finds the only slot taken waits `queue_timeout`, then gets
/// `503` with `Retry-After: 1`, and never reaches the device.
#[test]
fn a_busy_device_answers_503_with_retry_after_once_the_queue_times_out() {
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::from_secs(1));
    let (moat, target) = ui_in_front_of(
        &ws,
        &dev,
        r#"["127.0.0.1", "127.0.0.2"]"#,
        "max_in_flight = 1\nqueue_timeout = \"50ms\"",
    );

    let first = curl_command(&ws.certs.ca, "127.0.0.1", &target, &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running curl");
    let mut first = Reaped(Some(first));
    wait_for("the device to work on the first request", || {
        (dev.active() == 1).then_some(())
    });
    let r = curl(&ws, "127.0.0.2", &target);
    assert_refused(&r, 503, "device_busy", 1);
    assert_eq!(dev.active(), 1, "still on the first request");

    let out = first.0.take().unwrap().wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(parse_reply(&out.stdout).status, 200);
    assert_eq!(dev.requests(), 1, "the refused request never reached it");
    assert_eq!(dev.max_active(), 1);

    let busy = moat.wait_event("http_request", |e| e["reason"] == "device_busy");
    assert_eq!(client_ip(&busy), "127.0.0.2");
    assert_eq!(busy["status"], 503);
    assert_eq!(busy["detail"], "max_in_flight 1");
    assert!(
        busy["duration_ms"].as_u64().unwrap() >= 50,
        "it queued for queue_timeout first: {busy}"
    );
    assert_eq!(metric(&moat, "http_requests", "device_busy"), 1);
}

#[test]
fn tcp_connections_per_client_are_refused_before_the_device() {
    let _serial = serial();
    let echo = echo_upstream();
    let svc = tcp_service(
        "echo",
        echo.addr,
        r#"["127.0.0.0/8"]"#,
        r#"connections_per_client = "5/s burst 5""#,
    );
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&svc), &["echo"]);
    let addr = moat.addr("echo");

    let started = Instant::now();
    let admitted = (0..30).filter(|_| echo_once("127.0.0.2", addr)).count();
    let elapsed = started.elapsed();
    let most = 5 + (5.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        (5..=most).contains(&admitted),
        "{admitted} of 30 admitted in {elapsed:?} (at most {most})"
    );

    // Another client is unaffected.
    for _ in 0..5 {
        assert!(echo_once("127.0.0.3", addr), "127.0.0.3 is admitted");
    }

    let (allowed, denied) = decisions(&moat, 30, |ip| ip == "127.0.0.2");
    assert_eq!(allowed.len(), admitted);
    assert_eq!(denied.len(), 30 - admitted);
    for e in &denied {
        assert_eq!(e["reason"], "rate_limited_client", "{e}");
        assert_eq!(e["detail"], "connections_per_client 5/s burst 5", "{e}");
    }
    let (others, refused) = decisions(&moat, 5, |ip| ip == "127.0.0.3");
    assert_eq!((others.len(), refused.len()), (5, 0));
    // Refused connections never reached the device.
    assert_eq!(echo.accepted.load(Ordering::SeqCst), admitted + 5);
    assert_eq!(
        metric(&moat, "connections", "rate_limited_client"),
        (30 - admitted) as u64
    );
}

#[test]
fn tcp_device_rate_counts_all_clients_together() {
    let _serial = serial();
    let echo = echo_upstream();
    let svc = tcp_service(
        "echo",
        echo.addr,
        r#"["127.0.0.0/8"]"#,
        r#"device_rate = "3/s burst 3""#,
    );
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&svc), &["echo"]);
    let addr = moat.addr("echo");

    let sources: Vec<String> = (2..=11).map(|i| format!("127.0.0.{i}")).collect();
    let started = Instant::now();
    let admitted = sources.iter().filter(|s| echo_once(s, addr)).count();
    let elapsed = started.elapsed();
    let most = 3 + (3.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        (3..=most).contains(&admitted),
        "{admitted} of 10 admitted in {elapsed:?} (at most {most})"
    );

    let (allowed, denied) = decisions(&moat, 10, |ip| sources.iter().any(|s| s == ip));
    assert_eq!(allowed.len(), admitted);
    assert_eq!(denied.len(), 10 - admitted);
    for e in &denied {
        assert_eq!(e["reason"], "rate_limited_device", "{e}");
        assert_eq!(e["detail"], "device_rate 3/s burst 3", "{e}");
    }
    assert_eq!(echo.accepted.load(Ordering::SeqCst), admitted);
}

#[test]
fn a_denial_flood_is_summarised_in_the_audit_trail() {
    let _serial = serial();
    let echo = echo_upstream();
    let svc = tcp_service("echo", echo.addr, r#"["127.0.0.1"]"#, "");
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&svc), &["echo"]);
    let addr = moat.addr("echo");

    const THREADS: usize = 4;
    const PER_THREAD: usize = 500;
    const ATTEMPTS: usize = THREADS * PER_THREAD;
    let budget = Duration::from_secs(10);
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut refused = 0;
                for _ in 0..PER_THREAD {
                    if started.elapsed() > budget {
                        break;
                    }
                    let mut s = connect_from("127.0.0.9", addr);
                    if closed_without_data(&mut s) {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let elapsed = started.elapsed();
    assert_eq!(refused, ATTEMPTS, "every attempt refused within {budget:?}");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 0);

    // Individual lines plus the summaries account for every refusal; the
    // last summary comes within a second of the flood's end.
    let (individual, summaries) = wait_for("every denial accounted for", || {
        let lines = moat.audit_lines();
        let individual = lines
            .iter()
            .filter(|e| e["event"] == "connection_denied")
            .inspect(|e| {
                assert_eq!(e["reason"], "not_allowlisted", "{e}");
                assert_eq!(client_ip(e), "127.0.0.9", "{e}");
            })
            .count();
        let summaries: Vec<Value> = lines
            .into_iter()
            .filter(|e| e["event"] == "denials_suppressed")
            .collect();
        let suppressed: u64 = summaries.iter().map(|e| e["count"].as_u64().unwrap()).sum();
        (individual as u64 + suppressed == ATTEMPTS as u64).then_some((individual, summaries))
    });
    let most = 1000 + (200.0 * elapsed.as_secs_f64()).ceil() as usize + 50;
    assert!(
        individual <= most,
        "{individual} denials written one by one in {elapsed:?} (at most {most})"
    );
    assert!(!summaries.is_empty());
    for s in &summaries {
        assert_eq!(s["window_ms"], 1000, "{s}");
        assert!(s["count"].as_u64().unwrap() > 0, "{s}");
    }
    assert_eq!(
        metric(&moat, "connections", "not_allowlisted"),
        ATTEMPTS as u64,
        "metrics count every denial"
    );
}

#[test]
fn limits_survive_an_unrelated_reload_and_a_changed_limit_starts_afresh() {
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::ZERO);
    let (moat, target) = ui_in_front_of(
        &ws,
        &dev,
        r#"["127.0.0.1"]"#,
        r#"requests_per_client = "2/min""#,
    );

    assert_eq!(curl(&ws, "127.0.0.1", &target).status, 200);
    assert_eq!(curl(&ws, "127.0.0.1", &target).status, 200);
    assert_refused(
        &curl(&ws, "127.0.0.1", &target),
        429,
        "rate_limited_client",
        60,
    );

    // An unrelated edit: the used-up budget stays used up.
    rewrite_and_reload(
        &moat,
        |t| {
            t.replace(
                r#"allow = ["127.0.0.1"]"#,
                r#"allow = ["127.0.0.1", "10.9.9.9"]"#,
            )
        },
        2,
    );
    assert_refused(
        &curl(&ws, "127.0.0.1", &target),
        429,
        "rate_limited_client",
        60,
    );

    // A changed limit starts afresh.
    rewrite_and_reload(&moat, |t| t.replace("\"2/min\"", "\"100/min\""), 3);
    assert_eq!(curl(&ws, "127.0.0.1", &target).status, 200);
    assert_eq!(dev.requests(), 3);
}

/// A client that gives up on its request does not free the device: the
/// device is still working on it, so its in-flight slot stays taken until
/// the device answers.
fn abandoned_request_keeps_its_slot(http_version: &str) {
    require("curl");
    let _serial = serial();
    let ws = Workspace::new();
    let dev = device(Duration::from_secs(1));
    // Held to the end: dropping it stops the gateway.
    let (_moat, target) = ui_in_front_of(
        &ws,
        &dev,
        r#"["127.0.0.1", "127.0.0.2"]"#,
        "max_in_flight = 1\nqueue_timeout = \"5s\"",
    );

    // Client A asks, and gives up after 300 ms: the device needs 1 s.
    let impatient = curl_command(
        &ws.certs.ca,
        "127.0.0.1",
        &target,
        &[http_version, "--max-time", "0.3"],
    )
    .spawn()
    .expect("running curl");
    let mut impatient = Reaped(Some(impatient));
    wait_for("the device to work on A's request", || {
        (dev.active() == 1).then_some(())
    });
    let gave_up = wait_for("A to give up", || {
        impatient.0.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(!gave_up.success(), "A's curl timed out");
    assert_eq!(dev.active(), 1, "the device is still on A's request");

    // Client B asks while the device is still busy with A's request: it
    // must wait for that slot, not join A's request at the device.
    let out = curl_command(&ws.certs.ca, "127.0.0.2", &target, &[http_version])
        .output()
        .expect("running curl");
    assert!(out.status.success());
    assert_eq!(parse_reply(&out.stdout).status, 200);
    assert_eq!(dev.requests(), 2);
    assert_eq!(
        dev.max_active(),
        1,
        "the device handled two requests at once with max_in_flight = 1"
    );
}

#[test]
fn an_abandoned_http1_request_keeps_its_in_flight_slot() {
    abandoned_request_keeps_its_slot("--http1.1");
}

#[test]
fn an_abandoned_h2_request_keeps_its_in_flight_slot() {
    abandoned_request_keeps_its_slot("--http2");
}

/// One client cannot hold every connection slot of a device.
#[test]
fn one_client_holds_at_most_its_share_of_connections() {
    let _serial = serial();
    let echo = echo_upstream();
    let svc = tcp_service(
        "echo",
        echo.addr,
        r#"["127.0.0.0/8"]"#,
        "max_connections_per_client = 2",
    );
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &config(&svc), &["echo"]);
    let addr = moat.addr("echo");
    let round_trip = |s: &mut std::net::TcpStream| {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    };
    let mut held: Vec<_> = (0..2).map(|_| connect_from("127.0.0.2", addr)).collect();
    held.iter_mut().for_each(round_trip);
    let mut third = connect_from("127.0.0.2", addr);
    let third_addr = third.local_addr().unwrap();
    assert!(closed_without_data(&mut third));
    let denied = moat.wait_for_client("connection_denied", third_addr);
    assert_eq!(denied["reason"], "max_connections");
    assert_eq!(denied["detail"], "per-client limit 2");
    // Another client is not affected, and a freed share can be used again.
    assert!(echo_once("127.0.0.3", addr));
    let first = held.remove(0);
    let first_addr = first.local_addr().unwrap();
    drop(first);
    moat.wait_for_client("connection_closed", first_addr);
    assert!(echo_once("127.0.0.2", addr));
}
