//! Header hygiene and host validation: override headers, forwarding headers, Host/:authority (issue 10, items 2-3)
//!
//! Every test checks at a recording device exactly which headers and which
//! `Host` arrived, or that nothing arrived at all.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::support::http_device::{self, HttpDevice};
use crate::support::{
    connect_from, curl_with_ca, exchange, require, tls_client, tls_connect, Moat, Reply, Workspace,
};
use serde_json::Value;

/// A request as the device received it: `METHOD PATH` and its headers.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
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

struct Device {
    http: HttpDevice,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Device {
    fn start() -> Device {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let http = http_device::serve(move |r| {
            log.lock().unwrap().push(Seen {
                line: format!("{} {}", r.method, r.path),
                headers: r.headers.clone(),
            });
            format!("{} {}\n", r.method, r.path)
        });
        Device { http, seen }
    }

    fn addr(&self) -> SocketAddr {
        self.http.addr
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The one request that arrived with this path.
    fn request(&self, path: &str) -> Seen {
        let all = self.seen();
        let found: Vec<&Seen> = all
            .iter()
            .filter(|s| s.line.ends_with(&format!(" {path}")))
            .collect();
        assert_eq!(found.len(), 1, "{path}: {all:?}");
        found[0].clone()
    }
}

/// One HTTP service, TLS (the dev certificates: `localhost`, 127.0.0.1,
/// ::1, rsa.moat.test) or plaintext.
fn service(
    ws: &Workspace,
    name: &str,
    listen: &str,
    upstream: SocketAddr,
    tls: bool,
    http: &str,
) -> String {
    let tls = if tls {
        ws.tls_table()
    } else {
        "plaintext = true\n".to_string()
    };
    format!(
        r#"
[[device.service]]
name = "{name}"
protocol = "http"
listen = "{listen}"
upstream = "{upstream}"
allow = ["127.0.0.0/8"]
{tls}
[device.service.http]
{http}
"#
    )
}

fn start(ws: &Workspace, services: &[(&str, String)]) -> Moat {
    let body: String = services.iter().map(|(_, s)| s.as_str()).collect();
    let names: Vec<&str> = services.iter().map(|(n, _)| *n).collect();
    let config = format!("[[device]]\nid = \"pump\"\nname = \"Infusion pump\"\n{body}");
    Moat::start(ws, &config, &names)
}

/// One request on a new plaintext connection.
fn raw(to: SocketAddr, request: &str) -> Reply {
    exchange(&mut connect_from("127.0.0.1", to), request)
}

fn assert_denied(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some(reason), "{reply:?}");
    assert!(
        reply.body.contains(&format!("reason: {reason}")),
        "{reply:?}"
    );
}

fn wait_request(moat: &Moat, path: &str) -> Value {
    moat.wait_event("http_request", |e| e["path"] == path)
}

/// Every header a client could use to speak for moat or to redirect the
/// device: the issue's lists, and family members no list names.
const CLIENT_ASSERTED: &[&str] = &[
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Client-Cert",
    "X-Forwarded-Invented-Tomorrow",
    "Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Originating-IP",
    "X-Remote-IP",
    "X-Remote-Addr",
    "X-Host",
    "X-Original-Host",
    "X-ProxyUser-Ip",
    "WL-Proxy-Client-IP",
    "X-Envoy-External-Address",
    "X-SSL-Client-Cert",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Override-URL",
    "X-Original-URI",
    "X-Envoy-Original-Path",
    "X-HTTP-DestinationURL",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    // `_` for `-`: the same HTTP_* variable to CGI, PHP and WSGI servers
    "X_Original_URL",
    "X_Forwarded_For",
    "X_Forwarded_Host",
    "X_HTTP_Method_Override",
    // gunicorn cuts a SCRIPT_NAME header's prefix off the path
    "SCRIPT_NAME",
    "X-Script-Name",
];

/// Checks what the device saw of one request sent with every
/// `CLIENT_ASSERTED` header: none of them, only moat's own forwarding
/// headers, and the validated host.
fn assert_clean(seen: &Seen, proto: &str, host: &str) {
    for name in CLIENT_ASSERTED {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "forwarded"
        ) {
            continue;
        }
        assert!(
            seen.values(&lower).is_empty(),
            "{name} reached the device: {seen:?}"
        );
    }
    assert_eq!(seen.values("x-forwarded-for"), ["127.0.0.1"], "{seen:?}");
    assert_eq!(seen.values("x-forwarded-proto"), [proto], "{seen:?}");
    assert_eq!(seen.values("x-forwarded-host"), [host], "{seen:?}");
    assert_eq!(seen.values("host"), [host], "{seen:?}");
    let quoted = if host.contains(':') {
        format!("\"{host}\"")
    } else {
        host.to_string()
    };
    assert_eq!(
        seen.values("forwarded"),
        [format!("for=127.0.0.1;proto={proto};host={quoted}")],
        "{seen:?}"
    );
    assert!(
        seen.headers.iter().all(|(_, v)| {
            let v = v.to_ascii_lowercase();
            !v.contains("6.6.6.6")
                && !v.contains("evil")
                && !v.contains("firmware")
                && !v.contains("delete")
        }),
        "{seen:?}"
    );
}

#[test]
fn no_forwarding_or_override_header_from_the_client_reaches_the_device() {
    require("curl");
    let ws = Workspace::new();
    let dev = Device::start();
    // The device would serve /firmware/x for `POST /ok` if it honoured
    // X-Original-URL; moat's rule must be the one that decides.
    let rule = "[[device.service.http.rule]]\naction = \"deny\"\npath = \"/firmware/*\"\n";
    let moat = start(
        &ws,
        &[
            (
                "tls",
                service(&ws, "tls", "127.0.0.1:0", dev.addr(), true, rule),
            ),
            (
                "plain",
                service(&ws, "plain", "127.0.0.1:0", dev.addr(), false, rule),
            ),
        ],
    );
    let value = |name: &str| {
        let lower = name.to_ascii_lowercase();
        if lower.contains("url") || lower.contains("uri") || lower.contains("path") {
            "/firmware/x".to_string()
        } else if lower.contains("method") {
            "DELETE".to_string()
        } else {
            "6.6.6.6, evil.example".to_string()
        }
    };
    let headers: Vec<String> = CLIENT_ASSERTED
        .iter()
        .map(|n| format!("{n}: {}", value(n)))
        .collect();

    let tls = moat.addr("tls");
    let host = format!("localhost:{}", tls.port());
    for (flag, path) in [("--http1.1", "/ok-h1"), ("--http2", "/ok-h2")] {
        let mut args = vec![flag, "-X", "POST", "-d", "x"];
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        let url = format!("https://{host}{path}");
        args.push(&url);
        let reply = curl_with_ca(&ws, &args);
        assert_eq!(reply.status, 200, "{reply:?}");
        let seen = dev.request(path);
        assert_eq!(seen.line, format!("POST {path}"));
        assert_clean(&seen, "https", &host);
        let e = wait_request(&moat, path);
        assert_eq!(e["decision"], "allowed", "{e}");
    }

    // Plaintext, raw: names in odd case, values repeated.
    let plain = moat.addr("plain");
    let mut request = format!("POST /ok-raw HTTP/1.1\r\nHost: {plain}\r\nContent-Length: 1\r\n");
    for h in &headers {
        request.push_str(&format!("{}\r\n{}\r\n", h.to_ascii_uppercase(), h));
    }
    request.push_str("\r\nx");
    let reply = raw(plain, &request);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = dev.request("/ok-raw");
    assert_eq!(seen.line, "POST /ok-raw");
    assert_clean(&seen, "http", &plain.to_string());

    assert!(dev
        .seen()
        .iter()
        .all(|s| !s.line.contains("firmware") && !s.line.starts_with("DELETE")));
}

#[test]
fn a_foreign_host_is_misdirected_and_nothing_reaches_the_device() {
    require("curl");
    let ws = Workspace::new();
    let dev = Device::start();
    let moat = start(
        &ws,
        &[
            (
                "tls",
                service(&ws, "tls", "127.0.0.1:0", dev.addr(), true, ""),
            ),
            (
                "plain",
                service(&ws, "plain", "127.0.0.1:0", dev.addr(), false, ""),
            ),
        ],
    );
    let tls = moat.addr("tls");
    let plain = moat.addr("plain");

    // h1 Host, and the h2 :authority curl makes of it.
    for (flag, path) in [
        ("--http1.1", "/misdirected-h1"),
        ("--http2", "/misdirected-h2"),
    ] {
        let url = format!("https://localhost:{}{path}", tls.port());
        let reply = curl_with_ca(&ws, &[flag, "-H", "Host: evil.example", &url]);
        assert_denied(&reply, 421, "misdirected_request");
        let e = wait_request(&moat, path);
        assert_eq!(e["status"], 421, "{e}");
        assert_eq!(e["decision"], "denied", "{e}");
        assert_eq!(e["reason"], "misdirected_request", "{e}");
        assert_eq!(
            e["detail"], "Host \"evil.example\" is not a name of this service",
            "{e}"
        );
    }
    // A raw h2 :authority.
    if crate::support::have("nghttp") {
        let url = format!("https://127.0.0.1:{}/misdirected-nghttp", tls.port());
        let out = Command::new("nghttp")
            .args(["-v", "-H", ":authority: evil.example:443", &url])
            .output()
            .expect("running nghttp");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(":status: 421"), "{text}");
        assert_eq!(
            wait_request(&moat, "/misdirected-nghttp")["reason"],
            "misdirected_request"
        );
    }

    // Absolute form naming another host, with or without a matching Host.
    let reply = raw(
        plain,
        "GET http://evil.example/abs-1 HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    );
    assert_denied(&reply, 421, "misdirected_request");
    let reply = raw(
        plain,
        &format!("GET http://evil.example/abs-2 HTTP/1.1\r\nHost: {plain}\r\n\r\n"),
    );
    assert_denied(&reply, 400, "bad_request");
    let e = wait_request(&moat, "/abs-2");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .starts_with("request target names"),
        "{e}"
    );
    let reply = raw(
        plain,
        &format!("GET http://{plain}/abs-3 HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
    );
    assert_denied(&reply, 400, "bad_request");

    // No Host, two Hosts, a Host that is no host.
    let reply = raw(plain, "GET /no-host HTTP/1.1\r\n\r\n");
    assert_denied(&reply, 400, "bad_request");
    assert_eq!(wait_request(&moat, "/no-host")["detail"], "no Host header");
    let reply = raw(
        plain,
        &format!("GET /two-hosts HTTP/1.1\r\nHost: {plain}\r\nHost: evil.example\r\n\r\n"),
    );
    assert_denied(&reply, 400, "bad_request");
    for bad in ["evil.example/x", "user@127.0.0.1", "127.0.0.1:+80", "127.1"] {
        let reply = raw(
            plain,
            &format!("GET /bad-host HTTP/1.1\r\nHost: {bad}\r\n\r\n"),
        );
        assert_denied(&reply, 400, "bad_request");
    }
    // Attacker-chosen text in the audit detail is escaped and cut short.
    let long = format!("{}evil.example", "abcdefgh.".repeat(25));
    let reply = raw(
        plain,
        &format!("GET /long-host HTTP/1.1\r\nHost: {long}\r\n\r\n"),
    );
    assert_denied(&reply, 421, "misdirected_request");
    let e = wait_request(&moat, "/long-host");
    assert!(e["detail"].as_str().unwrap().len() < 120, "{e}");

    assert_eq!(dev.http.accepted(), 0, "{:?}", dev.seen());

    // HTTP/1.0 needs no Host: the device is told its own address, and no
    // forwarded host.
    let reply = raw(plain, "GET /http10 HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = dev.request("/http10");
    assert_eq!(seen.values("host"), [dev.addr().to_string()], "{seen:?}");
    assert!(seen.values("x-forwarded-host").is_empty(), "{seen:?}");
    assert_eq!(
        seen.values("forwarded"),
        ["for=127.0.0.1;proto=http"],
        "{seen:?}"
    );
}

#[test]
fn configured_hosts_admit_their_names_and_nothing_else() {
    require("curl");
    let ws = Workspace::new();
    let dev = Device::start();
    let hosts = "hosts = [\"pump.ward3.example\", \"*.ward4.example\"]\n";
    let moat = start(
        &ws,
        &[
            (
                "tls",
                service(&ws, "tls", "127.0.0.1:0", dev.addr(), true, hosts),
            ),
            (
                "plain",
                service(&ws, "plain", "127.0.0.1:0", dev.addr(), false, hosts),
            ),
        ],
    );
    let tls = moat.addr("tls");
    let plain = moat.addr("plain");

    for (host, path, forwarded) in [
        ("pump.ward3.example", "/cfg-1", "pump.ward3.example"),
        (
            "PUMP.Ward3.Example.:8080",
            "/cfg-2",
            "pump.ward3.example:8080",
        ),
        ("bed7.ward4.example", "/cfg-3", "bed7.ward4.example"),
    ] {
        let reply = raw(
            plain,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
        let seen = dev.request(path);
        assert_eq!(seen.values("host"), [forwarded], "{seen:?}");
        assert_eq!(seen.values("x-forwarded-host"), [forwarded], "{seen:?}");
    }
    // The explicit list is the whole list: not the listen address, not the
    // certificates' names, not two labels under a wildcard.
    for host in [
        plain.to_string(),
        "localhost".into(),
        "a.b.ward4.example".into(),
        "ward4.example".into(),
    ] {
        let reply = raw(
            plain,
            &format!("GET /cfg-refused HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_denied(&reply, 421, "misdirected_request");
    }
    // Over TLS (SNI localhost), h1 and h2.
    for flag in ["--http1.1", "--http2"] {
        let url = format!("https://localhost:{}/cfg-tls{flag}", tls.port());
        let reply = curl_with_ca(&ws, &[flag, "-H", "Host: pump.ward3.example", &url]);
        assert_eq!(reply.status, 200, "{reply:?}");
        let seen = dev.request(&format!("/cfg-tls{flag}"));
        assert_eq!(seen.values("host"), ["pump.ward3.example"], "{seen:?}");
        let reply = curl_with_ca(&ws, &[flag, &url]);
        assert_denied(&reply, 421, "misdirected_request");
    }
    assert_eq!(
        dev.seen()
            .iter()
            .filter(|s| s.line.contains("refused"))
            .count(),
        0
    );
}

#[test]
fn the_default_admits_the_certificate_names_and_the_listen_address() {
    require("curl");
    let ws = Workspace::new();
    let dev = Device::start();
    let moat = start(
        &ws,
        &[
            (
                "tls",
                service(&ws, "tls", "127.0.0.1:0", dev.addr(), true, ""),
            ),
            (
                "any",
                service(&ws, "any", "0.0.0.0:0", dev.addr(), false, ""),
            ),
        ],
    );
    let tls = moat.addr("tls");
    let port = tls.port();

    // The ECDSA certificate's names (localhost, 127.0.0.1, ::1), the RSA
    // one's (rsa.moat.test), and the listen address.
    let resolve = format!("rsa.moat.test:{port}:127.0.0.1");
    let cases = [
        (
            format!("https://localhost:{port}/d-1"),
            vec![],
            format!("localhost:{port}"),
        ),
        (
            format!("https://127.0.0.1:{port}/d-2"),
            vec![],
            format!("127.0.0.1:{port}"),
        ),
        (
            format!("https://rsa.moat.test:{port}/d-3"),
            vec!["--resolve", resolve.as_str()],
            format!("rsa.moat.test:{port}"),
        ),
        (
            format!("https://localhost:{port}/d-4"),
            vec!["-H", "Host: [::1]"],
            "[::1]".to_string(),
        ),
    ];
    for (url, extra, host) in &cases {
        for flag in ["--http1.1", "--http2"] {
            let mut args = vec![flag];
            args.extend(extra.iter().copied());
            let url = format!("{url}{flag}");
            args.push(&url);
            let reply = curl_with_ca(&ws, &args);
            assert_eq!(reply.status, 200, "{url}: {reply:?}");
            let path = url.rsplit_once(&format!(":{port}")).unwrap().1;
            let seen = dev.request(path);
            assert_eq!(seen.values("host"), [host.as_str()], "{seen:?}");
        }
    }
    // Another address of this machine is not a name of a 127.0.0.1 listener.
    let reply = curl_with_ca(
        &ws,
        &[
            "-H",
            "Host: 127.0.0.2",
            &format!("https://localhost:{port}/d-other"),
        ],
    );
    assert_denied(&reply, 421, "misdirected_request");

    // Listening on 0.0.0.0: the address the client reached counts, another does not.
    let any = moat.addr("any");
    let reached: SocketAddr = format!("127.0.0.2:{}", any.port()).parse().unwrap();
    let mut conn = connect_from("127.0.0.2", reached);
    let reply = exchange(
        &mut conn,
        &format!("GET /any-1 HTTP/1.1\r\nHost: {reached}\r\n\r\n"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(dev.request("/any-1").values("host"), [reached.to_string()]);
    let reply = exchange(
        &mut conn,
        &format!(
            "GET /any-2 HTTP/1.1\r\nHost: 127.0.0.3:{}\r\n\r\n",
            any.port()
        ),
    );
    assert_denied(&reply, 421, "misdirected_request");
    let reply = exchange(&mut conn, "GET /any-3 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_denied(&reply, 421, "misdirected_request");
    assert!(dev
        .seen()
        .iter()
        .all(|s| s.line != "GET /any-2" && s.line != "GET /any-3"));

    // A raw TLS h1 client naming the certificate's IP.
    let mut s = tls_connect(
        tls_client(&ws.certs, false),
        "localhost",
        connect_from("127.0.0.1", tls),
    )
    .unwrap();
    let reply = exchange(
        &mut s,
        &format!("GET /d-raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Browsers send h2 cookies as separate fields (crumbs); the HTTP/1.1
/// device gets them as one `Cookie` line (RFC 9113 §8.2.3), as it would
/// from the same browser over HTTP/1.1.
#[test]
fn h2_cookie_crumbs_reach_the_device_as_one_line() {
    require("curl");
    let ws = Workspace::new();
    let dev = Device::start();
    let moat = start(
        &ws,
        &[(
            "tls",
            service(&ws, "tls", "127.0.0.1:0", dev.addr(), true, ""),
        )],
    );
    let host = format!("localhost:{}", moat.addr("tls").port());
    for (flag, path) in [("--http2", "/cookies-h2"), ("--http1.1", "/cookies-h1")] {
        let url = format!("https://{host}{path}");
        let args = [
            flag,
            "-H",
            "Cookie: session=abc",
            "-H",
            "Cookie: csrf=xyz",
            &url,
        ];
        let reply = curl_with_ca(&ws, &args);
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(
        dev.request("/cookies-h2").values("cookie"),
        ["session=abc; csrf=xyz"]
    );
    // HTTP/1.1 lines are the client's own: passed as they came.
    assert_eq!(
        dev.request("/cookies-h1").values("cookie"),
        ["session=abc", "csrf=xyz"]
    );
}
