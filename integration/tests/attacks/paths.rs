//! Deny rules against every common server's reading of a path (issue 10, item 1)
//!
//! The real moat in front of a recording device: each form a common server
//! (Tomcat/Jetty, IIS, Apache, nginx) reads as a denied path is refused,
//! with the reason in `x-moat-reason` and the audit trail, and never
//! reaches the device; ordinary requests still do, with the normalised path.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::support::http_device::{self, HttpDevice};
use crate::support::*;

const CONFIG: &str = r#"
[[device]]
id = "pump-ui"
name = "Infusion pump web UI"

[[device.service]]
name = "ui"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "DEVICE"
allow = ["127.0.0.1"]
plaintext = true
[device.service.http]
[[device.service.http.rule]]
action = "deny"
methods = ["POST"]
path = "/firmware/*"
[[device.service.http.rule]]
action = "deny"
methods = ["GET"]
path = "/api/reboot"
[[device.service.http.rule]]
action = "deny"
path = "/config/*"

[[device.service]]
name = "strict"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "DEVICE"
allow = ["127.0.0.1"]
plaintext = true
[device.service.http]
[[device.service.http.rule]]
action = "allow"
methods = ["GET"]
path = "/ok"
[[device.service.http.rule]]
action = "deny"
path = "*"
"#;

struct Setup {
    _ws: Workspace,
    moat: Moat,
    _device: HttpDevice,
    /// `METHOD PATH` of every request the device received.
    seen: Arc<Mutex<Vec<String>>>,
}

fn setup() -> Setup {
    let ws = Workspace::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let device = http_device::serve(move |req| {
        let line = format!("{} {}", req.method, req.path);
        log.lock().unwrap().push(line.clone());
        line
    });
    let config = CONFIG.replace("DEVICE", &device.addr.to_string());
    let moat = Moat::start(&ws, &config, &["ui", "strict"]);
    Setup {
        _ws: ws,
        moat,
        _device: device,
        seen,
    }
}

/// One HTTP/1.1 request with the target exactly as given (bytes curl
/// would not send as they are), on its own connection.
fn send(to: SocketAddr, method: &str, target: &[u8]) -> Reply {
    let mut s = connect_from("127.0.0.1", to);
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(target);
    req.extend_from_slice(
        b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse_reply(&out)
}

fn curl(to: SocketAddr, method: &str, path: &str) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--noproxy", "*", "--max-time", "20"])
        .args(["--http1.1", "--path-as-is", "-X", method])
        .arg(format!("http://{to}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_reply(&out.stdout)
}

/// The refusal the client saw, and its audit event (by method, path as
/// audited, and reason); returns the event's detail.
fn assert_refused(s: &Setup, reply: &Reply, method: &str, audited: &str, status: u16) -> String {
    let reason = if status == 400 {
        "bad_request"
    } else {
        "request_denied"
    };
    assert_eq!(reply.status, status, "{method} {audited}: {reply:?}");
    assert_eq!(reply.header("x-moat-reason"), Some(reason), "{reply:?}");
    let e = s.moat.wait_event("http_request", |e| {
        e["method"] == method && e["path"] == audited && e["reason"] == reason
    });
    assert_eq!(e["decision"], "denied", "{e}");
    assert_eq!(e["status"], status, "{e}");
    e["detail"].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_ambiguous_form_of_a_denied_path_is_refused_before_the_device() {
    let s = setup();
    let ui = s.moat.addr("ui");

    // Refused outright (400): servers read these in different ways.
    let refused: &[(&[u8], &str)] = &[
        // Tomcat and Jetty: a dot or empty segment once ;parameters go
        (b"/a/..;/firmware/x", "dot segment"),
        (b"/a/..;x=1/firmware/x", "dot segment"),
        (b"/a/.;/../firmware/x", "dot segment"),
        (b"/a/;x/../firmware/x", "dot segment"),
        (b"/a/%2e%2e;/firmware/x", "dot segment"),
        // decoded before ;parameters are dropped, by some
        (b"/firmware%3bx/y", "encoded ';'"),
        (b"/firmware%3B/x", "encoded ';'"),
        // IIS and Windows drop trailing dots and spaces
        (b"/firmware./x", "ending in '.' or a space"),
        (b"/firmware%2e/x", "ending in '.' or a space"),
        (b"/firmware%20/x", "ending in '.' or a space"),
        (b"/firmware.%20./x", "ending in '.' or a space"),
        // NTFS: a directory's index stream is the directory; 8.3 names
        (b"/firmware::$INDEX_ALLOCATION/x", "data stream"),
        (b"/firmware:$i30:$INDEX_ALLOCATION/x", "data stream"),
        (b"/FIRMWA~1/x", "short name"),
        (b"/firmwa%7e1/x", "short name"),
        // beyond ASCII: overlong UTF-8 dots, a fullwidth solidus
        (b"/a/%c0%ae%c0%ae/firmware/x", "non-ASCII"),
        (b"/firmware%ef%bc%8fx", "non-ASCII"),
        ("/firmware\u{ff0f}x".as_bytes(), "non-ASCII"),
        (b"/firmware%09/x", "control"),
        // '..' over an empty segment: nginx /firmware/x, Apache /a/firmware/x
        (b"/a//../firmware/x", "empty segment"),
        // refused before too
        (b"/firmware%2fx", "encoded '/'"),
        (b"/firmware%5cx", "backslash"),
        (b"/firmware\\x", "backslash"),
        (b"/firmware%00", "control"),
        (b"/firmware%252fx", "encoded '%'"),
    ];
    for (target, why) in refused {
        let reply = send(ui, "POST", target);
        let audited = String::from_utf8(target.to_vec()).unwrap();
        let detail = assert_refused(&s, &reply, "POST", &audited, 400);
        assert!(detail.contains(why), "{audited}: {detail}");
    }

    // Denied (403) under the reading that meets the rule.
    let denied: &[(&[u8], &str, &str)] = &[
        (b"/FIRMWARE/x", "/FIRMWARE/x", "ignoring case"),
        (b"/firmware;v=2/x", "/firmware;v=2/x", "without ;parameters"),
        (
            b"/Firmware;jsessionid=1/x",
            "/Firmware;jsessionid=1/x",
            "without ;parameters, ignoring case",
        ),
        (
            b"/a/../%66irmware/./x",
            "/firmware/x",
            "deny POST /firmware/*",
        ),
    ];
    for (target, audited, how) in denied {
        let reply = send(ui, "POST", target);
        let detail = assert_refused(&s, &reply, "POST", audited, 403);
        assert!(detail.starts_with("deny POST /firmware/*"), "{detail}");
        assert!(detail.contains(how), "{audited}: {detail}");
    }

    // The issue's examples from a real client, curl --path-as-is.
    require("curl");
    for (path, status) in [
        ("/a/..;/firmware/x", 400),
        ("/firmware./x", 400),
        ("/firmware%20/x", 400),
        ("/firmware%2e/x", 400),
        ("/firmware%3bx/y", 400),
        ("/FIRMWARE/x", 403),
    ] {
        let reply = curl(ui, "POST", path);
        assert_refused(&s, &reply, "POST", path, status);
    }

    // Reading the firmware page is allowed, and ordinary requests go
    // through with the normalised path.
    for (target, normal) in [
        ("/firmware/status", "/firmware/status"),
        ("/a/./b/../settings;v=1/a%21b%7E", "/a/settings;v=1/a!b~"),
        ("/pump%20list/x", "/pump%20list/x"),
    ] {
        let reply = send(
            ui,
            if target.starts_with("/firm") {
                "GET"
            } else {
                "POST"
            },
            target.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{target}: {reply:?}");
        assert!(reply.body.ends_with(normal), "{target}: {reply:?}");
    }
    assert_eq!(
        *s.seen.lock().unwrap(),
        [
            "GET /firmware/status",
            "POST /a/settings;v=1/a!b~",
            "POST /pump%20list/x"
        ]
    );
}

/// Lower-casing alone let `/OK` past "allow GET /ok, deny the rest": a
/// case-sensitive device serves another resource for it.
#[test]
fn an_allow_rule_covers_only_its_own_spelling_where_case_matters() {
    let s = setup();
    let strict = s.moat.addr("strict");
    let reply = send(strict, "GET", b"/ok");
    assert_eq!(reply.status, 200, "{reply:?}");
    for target in ["/OK", "/Ok", "/ok;x=1", "/ok/"] {
        let reply = send(strict, "GET", target.as_bytes());
        let detail = assert_refused(&s, &reply, "GET", target, 403);
        assert!(detail.starts_with("deny * *"), "{detail}");
    }
    assert_eq!(*s.seen.lock().unwrap(), ["GET /ok"]);
}

/// A pattern that spells a character otherwise than normalised paths do
/// would be a rule that never matches: `moat check` names it.
#[test]
fn a_pattern_that_could_never_match_is_a_config_error() {
    let ws = Workspace::new();
    for (pattern, why) in [
        ("/pump list/*", "write ' ' as %20"),
        ("/%66irmware/*", "write 'f' rather than %66"),
        ("/firmware%2Fx", "can never match"),
    ] {
        let config = CONFIG.replace("DEVICE", "127.0.0.1:9").replacen(
            "\"/firmware/*\"",
            &format!("{pattern:?}"),
            1,
        );
        let out = Command::new(moat_bin())
            .args(["check", "-c"])
            .arg(ws.write("moat.toml", &config))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{pattern}: {err}");
        assert!(
            err.contains("moat.toml:17:8:") && err.contains(why),
            "{pattern}: {err}"
        );
    }
}

/// Flask, Express, Go's net/http and PHP run the GET handler for HEAD:
/// `HEAD /api/reboot` reboots a device that a rule keeps from `GET`.
#[test]
fn head_is_refused_where_get_is_denied() {
    let s = setup();
    let ui = s.moat.addr("ui");
    for target in ["/api/reboot", "/API/reboot"] {
        let reply = send(ui, "HEAD", target.as_bytes());
        let detail = assert_refused(&s, &reply, "HEAD", target, 403);
        assert!(
            detail.starts_with("deny GET /api/reboot") && detail.ends_with("(HEAD read as GET)"),
            "{detail}"
        );
    }
    // HEAD of anything GET may reach still goes through.
    let reply = send(ui, "HEAD", b"/api/status");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(*s.seen.lock().unwrap(), ["HEAD /api/status"]);
}

/// Frameworks run `POST /x?_method=DELETE` as DELETE, and a WebDAV `MOVE`
/// writes to its `Destination`: both are judged by the same rules.
#[test]
fn a_query_method_override_or_a_webdav_destination_cannot_walk_around_a_rule() {
    require("curl");
    let s = setup();
    let ui = s.moat.addr("ui");
    // deny GET /api/reboot: a POST that a framework reads as GET.
    let reply = send(ui, "POST", b"/api/reboot?_method=GET");
    let detail = assert_refused(&s, &reply, "POST", "/api/reboot", 403);
    assert!(
        detail.ends_with("(method read from the query: GET)"),
        "{detail}"
    );
    // deny * /config/*: a MOVE of a harmless file onto it, from curl.
    let mv = |dest: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-i",
                "--noproxy",
                "*",
                "--max-time",
                "20",
                "-X",
                "MOVE",
            ])
            .args(["-H", &format!("Destination: {dest}")])
            .arg(format!("http://{ui}/uploads/pump.cfg"))
            .output()
            .expect("running curl");
        parse_reply(&out.stdout)
    };
    for dest in [
        "/config/pump.cfg",
        &format!("http://{ui}/Config/./pump.cfg"),
    ] {
        let reply = mv(dest);
        let detail = assert_refused(&s, &reply, "MOVE", "/uploads/pump.cfg", 403);
        assert!(detail.ends_with("(the Destination path)"), "{detail}");
    }
    assert_eq!(mv("/uploads/old.cfg").status, 200);
    // Only the MOVE that no rule refuses reached the device.
    assert_eq!(*s.seen.lock().unwrap(), ["MOVE /uploads/pump.cfg"]);
}
