//! Resources: file-descriptor exhaustion, listen backlog, /metrics format checked by promtool (issue 10, items 8-10)

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const HANDSHAKES: &str = r#"moat_tls_handshakes_in_progress{device="ct",service="dicom"}"#;

/// `moat.toml` with `gateway` added to the `[gateway]` table and `body`.
fn config(ws: &Workspace, gateway: &str, body: &str) -> PathBuf {
    ws.write(
        "moat.toml",
        &format!(
            "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n{gateway}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{body}"
        ),
    )
}

/// Device `ct` with an L4 service `dicom` to `upstream`, TLS-terminated.
fn dicom(ws: &Workspace, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"dicom\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.1/32\"]\n{extra}\n{}",
        ws.tls_table()
    )
}

/// Device `cam` with a plaintext web UI `ui` at `upstream`.
fn web_ui(upstream: SocketAddr) -> String {
    format!(
        "[[device]]\nid = \"cam\"\nname = \"Camera\"\n[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.1/32\"]\nplaintext = true\n"
    )
}

/// One `GET` on a fresh connection; the whole answer as text.
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The value of one series on `/metrics`, if it is there.
fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let body = get(admin, "/metrics", None).ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: state is the
    // 3rd field of the line, utime and stime the 14th and 15th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// Starts the process with at most `n` open files.
fn max_files(c: &mut Command, n: libc::rlim_t) {
    // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        });
    }
}

/// Refused promptly: EOF or reset, not an answer and not a hang.
fn refused(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn out_of_descriptors_moat_refuses_promptly_without_spinning_or_flooding_its_log() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let extra = "max_connections = 1000\nhandshake_timeout = \"60s\"\n";
    let path = config(&ws, "", &dicom(&ws, echo.addr, extra));
    let mut moat = Moat::start_file_with(&path, &["dicom"], |c| max_files(c, 64));
    let (to, admin, pid) = (moat.addr("dicom"), moat.admin.unwrap(), moat.pid());

    // Clients that never start their handshake hold a descriptor each.
    let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(to).unwrap()).collect();
    wait_for("3 handshakes in progress", || {
        metric(admin, HANDSHAKES).filter(|v| *v == 3.0)
    });
    // Far more than the 64 descriptors moat may hold.
    held.extend((0..80).map(|_| TcpStream::connect(to).unwrap()));
    let shed = moat.wait_event("connection_denied", |e| e["reason"] == "fd_exhausted");
    assert_eq!(
        (shed["device"].as_str(), shed["service"].as_str()),
        (Some("ct"), Some("dicom"))
    );
    // A descriptor moat frees late (an admin connection of the wait above)
    // goes to one of these; the rest are shed.
    held.extend((0..5).map(|_| TcpStream::connect(to).unwrap()));

    // An excess client is refused at once, not left in the accept queue
    // (where it would wait, unanswered, for as long as it cares to).
    let started = Instant::now();
    let mut excess = TcpStream::connect(to).unwrap();
    assert!(refused(&mut excess), "the excess client was not refused");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A storm of health checks: each is refused at once, and in between
    // (and after) moat does nothing; it used to spin on the failing accept
    // at 100 % CPU. (A probe may still be answered when a descriptor comes
    // free for a moment, such as one the shedding of another listener
    // releases.)
    let (cpu_before, window) = (cpu_time(pid), Instant::now());
    let (mut answered, mut turned_away) = (0, 0);
    for _ in 0..200 {
        match get(admin, "/healthz", None) {
            Ok(r) if r.starts_with("HTTP/1.1 200") => answered += 1,
            Ok(r) if r.is_empty() => turned_away += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                turned_away += 1
            }
            other => panic!("a probe neither answered nor refused: {other:?}"),
        }
    }
    // The measurement window, in which a spinning loop would burn a core.
    std::thread::sleep(Duration::from_secs(1));
    let (cpu, window) = (cpu_time(pid) - cpu_before, window.elapsed());
    assert!(
        turned_away >= 150,
        "{turned_away} probes refused, {answered} answered: not out of descriptors?"
    );
    assert!(
        cpu < window / 4,
        "moat used {cpu:?} of CPU in {window:?} while out of descriptors"
    );
    let log = moat.stderr();
    assert!(
        log.len() < 16 * 1024,
        "{} bytes of log: {}",
        log.len(),
        log.chars().take(2000).collect::<String>()
    );
    assert!(log.contains("out of file descriptors"), "{log}");

    // Once the clients leave, moat serves as before.
    drop(held);
    drop(excess);
    wait_for("/healthz answered again", || {
        get(admin, "/healthz", None)
            .ok()
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    });
    wait_for("no handshake left in progress", || {
        metric(admin, HANDSHAKES).filter(|v| *v == 0.0)
    });
    let shed_count = metric(
        admin,
        r#"moat_connections_total{device="ct",service="dicom",outcome="fd_exhausted"}"#,
    )
    .unwrap_or(0.0);
    assert!(shed_count >= 1.0, "fd_exhausted not counted");
    let mut tls = tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        TcpStream::connect(to).unwrap(),
    )
    .expect("a TLS session after the exhaustion");
    tls.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    tls.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    moat.terminate();
}

#[test]
fn a_device_socket_moat_cannot_open_is_fd_exhausted_not_an_unreachable_device() {
    // Two limits, an odd and an even one: whatever moat's own descriptors
    // count, one of them reaches the device connect directly, the other
    // after a shed.
    let mut paths = [false, false];
    for limit in [64, 65] {
        paths[usize::from(device_connect_exhausts(limit))] = true;
    }
    assert_eq!(paths, [true, true], "both ways to the device connect");
}

/// Fills moat (at most `limit` files) until a connection to the device
/// cannot be opened. True if that happened without a shed first.
fn device_connect_exhausts(limit: libc::rlim_t) -> bool {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let device = http_device::serve(|r| format!("{} {}\n", r.method, r.path));
    let body = format!(
        "[[device]]\nid = \"lis\"\nname = \"LIS\"\n[[device.service]]\nname = \"hl7\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1/32\"]\nplaintext = true\nmax_connections = 1000\n\n{}",
        echo.addr,
        web_ui(device.addr)
    );
    let path = config(&ws, "", &body);
    let moat = Moat::start_file_with(&path, &["hl7", "ui"], |c| max_files(c, limit));
    let (hl7, ui) = (moat.addr("hl7"), moat.addr("ui"));
    let upstream = echo.addr.to_string();
    // How a connection from `s` ended up: "allowed", or the denial.
    let settled = |s: &TcpStream| {
        let client = s.local_addr().unwrap().to_string();
        wait_for(&format!("the fate of {client}"), || {
            moat.audit_lines().into_iter().find(|e| {
                e["client"] == client.as_str()
                    && matches!(
                        e["event"].as_str(),
                        Some("connection_allowed" | "connection_denied")
                    )
            })
        })
    };

    // A relayed connection holds two descriptors (client and device), so
    // filling moat one connection at a time ends in one of two ways: no
    // descriptor left to accept with (shed), or exactly one, enough for
    // the client but not for the device.
    let mut held = Vec::new();
    let (denied, mut last) = loop {
        assert!(held.len() < 64, "never ran out of descriptors");
        let s = TcpStream::connect(hl7).unwrap();
        let fate = settled(&s);
        if fate["event"] == "connection_denied" {
            break (fate, s);
        }
        held.push(s);
    };
    assert_eq!(denied["reason"], "fd_exhausted", "{denied}");
    let direct = denied["detail"].as_str().unwrap().contains(&upstream);
    let denied = if direct {
        denied
    } else {
        // Shed: free two descriptors, take one with a client that needs
        // no device socket yet (an HTTP connection), and try again.
        let gone = held.pop().unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        moat.wait_for_client("connection_closed", gone_addr);
        let web = TcpStream::connect(ui).unwrap();
        assert_eq!(settled(&web)["event"], "connection_allowed");
        held.push(web);
        last = TcpStream::connect(hl7).unwrap();
        settled(&last)
    };
    assert_eq!(denied["event"], "connection_denied", "{denied}");
    assert_eq!(denied["reason"], "fd_exhausted", "{denied}");
    assert!(
        denied["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{upstream}: Too many open files")),
        "{denied}"
    );
    assert!(moat
        .events("connection_denied")
        .iter()
        .all(|e| e["reason"] != "upstream_unreachable"));
    assert!(moat
        .stderr()
        .contains("out of file descriptors: connection refused"));

    // The same for the pool towards an HTTP device. Once moat has closed
    // the client above, one descriptor is free: a web client takes it,
    // and none is left for the device connection of its request.
    assert!(closed_without_data(&mut last));
    let mut web = TcpStream::connect(ui).unwrap();
    assert_eq!(settled(&web)["event"], "connection_allowed");
    write!(
        web,
        "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = web.read_to_end(&mut answer);
    assert_eq!(parse_reply(&answer).status, 503);
    let client = web.local_addr().unwrap();
    let request = moat.wait_for_client("http_request", client);
    assert_eq!(request["reason"], "fd_exhausted", "{request}");
    assert_eq!(device.accepted(), 0);
    drop(held);
    direct
}

/// Send-Q of a listening socket is its accept queue's length.
fn listen_backlog(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-Hltn", "sport", "=", &format!(":{port}")])
        .output()
        .expect("running ss");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn every_listener_has_the_configured_backlog_4096_by_default() {
    require("ss");
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let echo = echo_upstream();
    for (gateway, backlog) in [("", 4096), ("listen_backlog = 100\n", 100)] {
        let ws = Workspace::new();
        let path = config(&ws, gateway, &dicom(&ws, echo.addr, ""));
        let moat = Moat::start_file(&path, &["dicom"]);
        for addr in [moat.addr("dicom"), moat.admin.unwrap()] {
            // The kernel caps what moat asks for at net.core.somaxconn.
            assert_eq!(
                listen_backlog(addr.port()),
                backlog.min(somaxconn),
                "{addr} with {gateway:?}"
            );
        }
    }
}

/// `curl -s -D -` of `url`, with extra arguments.
fn curl(args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-s", "-D", "-"])
        .args(args)
        .output()
        .expect("running curl");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    parse_reply(&out.stdout)
}

#[test]
fn metrics_come_in_the_format_asked_for_and_promtool_finds_nothing_to_lint() {
    require("curl");
    require("promtool");
    let ws = Workspace::new();
    let echo = echo_upstream();
    let device = http_device::serve(|r| format!("{} {}\n", r.method, r.path));
    let body = format!("{}\n{}", dicom(&ws, echo.addr, ""), web_ui(device.addr));
    let path = config(&ws, "", &body);
    let moat = Moat::start_file(&path, &["dicom", "ui"]);
    let admin = moat.admin.unwrap();

    // Traffic, so that every family has samples: a TLS session relayed,
    // an HTTP request allowed, a client denied, a reload applied.
    let tcp = TcpStream::connect(moat.addr("dicom")).unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"ping").unwrap();
    tls.read_exact(&mut [0u8; 4]).unwrap();
    drop(tls);
    let ui = format!("http://{}/status", moat.addr("ui"));
    assert_eq!(curl(&[&ui]).status, 200);
    let mut stranger = connect_from("127.0.0.2", moat.addr("ui"));
    assert!(closed_without_data(&mut stranger));
    let source = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{source}\n# touched\n")).unwrap();
    moat.admin_post("/reload");
    wait_for("an applied reload counted", || {
        metric(admin, r#"moat_reloads_total{result="applied"}"#).filter(|n| *n >= 1.0)
    });
    wait_for("the TLS session closed", || {
        metric(
            admin,
            r#"moat_connections_active{device="ct",service="dicom"}"#,
        )
        .filter(|n| *n == 0.0)
    });

    let url = format!("http://{admin}/metrics");
    let text = curl(&[&url]);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for family in [
        "moat_connections_total",
        "moat_connections_active",
        "moat_bytes_total",
        "moat_audit_dropped_total",
        "moat_policy_version",
        "moat_reloads_total",
        "moat_http_requests_total",
        "moat_tls_handshakes_in_progress",
    ] {
        assert!(
            text.body.contains(&format!("# TYPE {family} "))
                && text
                    .body
                    .lines()
                    .any(|l| l.starts_with(family) && !l.starts_with(&format!("{family}_"))),
            "{family} has no samples:\n{}",
            text.body
        );
    }
    assert!(!text.body.contains("# EOF"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.body.as_bytes())
        .unwrap();
    let lint = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.is_empty(),
        "promtool: {said}\n{}",
        text.body
    );

    let open = curl(&["-H", &format!("Accept: {PROMETHEUS_ACCEPT}"), &url]);
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.trim_end().ends_with("# EOF"), "{}", open.body);
    assert!(open.body.contains("# TYPE moat_connections counter\n"));
}
