//! End-to-end tests of the L4 proxy: the real `moat` binary on loopback,
//! real clients (rustls, `openssl s_client`), a real upstream, and the
//! audit trail checked field by field.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

/// One device with one TLS service in front of `upstream`.
fn tls_service(ws: &Workspace, upstream: SocketAddr, extra: &str, tls_extra: &str) -> String {
    format!(
        r#"
[[device]]
id = "pacs-1"
name = "Legacy PACS"
end_of_support = 2018-05-31

[[device.service]]
name = "dicom"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = ["127.0.0.1", "127.0.0.2"]
deny = ["127.0.0.4"]
{extra}
{tls}{tls_extra}
"#,
        tls = ws.tls_table()
    )
}

fn assert_conn_fields(e: &Value, client: SocketAddr, listen: SocketAddr) {
    assert_eq!(e["device"], "pacs-1");
    assert_eq!(e["service"], "dicom");
    assert_eq!(e["client"], client.to_string());
    assert_eq!(e["listen"], listen.to_string());
    assert!(e["conn_id"].as_u64().unwrap() >= 1);
    assert!(e["ts"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn rustls_client_reaches_upstream_and_every_event_is_audited() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let listen = moat.addr("dicom");

    let tcp = connect_from("127.0.0.2", listen);
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"A-ASSOCIATE-RQ please").unwrap();
    tls.flush().unwrap();
    let mut reply = [0u8; 21];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"A-ASSOCIATE-RQ please");
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    assert!(rest.is_empty());

    let allowed = moat.wait_for_client("connection_allowed", client);
    assert_conn_fields(&allowed, client, listen);
    assert_eq!(allowed["matched"], "127.0.0.2/32");
    assert_eq!(allowed["upstream"], echo.addr.to_string());
    assert_eq!(allowed["tls"]["version"], "TLSv1.3");
    assert!(allowed["tls"]["cipher"]
        .as_str()
        .unwrap()
        .starts_with("TLS13_"));
    assert_eq!(allowed["tls"]["sni"], "localhost");
    assert!(allowed.get("principal").is_none());

    let closed = moat.wait_for_client("connection_closed", client);
    assert_conn_fields(&closed, client, listen);
    assert_eq!(closed["conn_id"], allowed["conn_id"]);
    assert_eq!(closed["bytes_from_client"], 21);
    assert_eq!(closed["bytes_to_client"], 21);
    assert_eq!(closed["closed_by"], "client");
    assert!(closed["duration_ms"].is_u64());

    let started = moat.events("gateway_started");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["policy_version"], 1);
    assert_eq!(started[0]["services"], 1);
    assert_eq!(started[0]["policy_hash"].as_str().unwrap().len(), 64);
    let listener = &moat.events("listener_started")[0];
    assert_eq!(listener["device"], "pacs-1");
    assert_eq!(listener["tls"], true);

    let metrics = moat.admin_get("/metrics");
    assert!(
        metrics.contains(
            r#"moat_connections_total{device="pacs-1",service="dicom",outcome="allowed"} 1"#
        ),
        "{metrics}"
    );
    assert!(moat.admin_get("/healthz").ends_with("ok\n"));
    // The container HEALTHCHECK probe.
    let health = |addr: String| {
        std::process::Command::new(moat_bin())
            .args(["health", "--admin", &addr])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(health(moat.admin.unwrap().to_string()));
    assert!(!health(closed_port().to_string()));
    let devices = moat.admin_get("/devices");
    assert!(
        devices.contains("\"end_of_support\": \"2018-05-31\""),
        "{devices}"
    );
}

#[test]
fn openssl_s_client_reaches_upstream_and_tls_1_1_is_refused() {
    require("openssl");
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let listen = moat.addr("dicom");
    let connect = listen.to_string();
    let ca = ws.certs.ca.display().to_string();

    let echoed = s_client_echo(
        &[
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-servername",
            "localhost",
            "-verify_return_error",
        ],
        "HL7-PING",
    );
    assert_eq!(echoed, "HL7-PING");
    moat.wait_event("connection_allowed", |e| e["tls"]["version"] == "TLSv1.3");

    for old in ["-tls1_1", "-tls1"] {
        let out = run_with_input(
            &["s_client", "-connect", &connect, old, "-CAfile", &ca],
            b"",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || stdout.contains("Cipher is (NONE)"),
            "{old} was accepted: {stdout}"
        );
    }
    let denied = moat.wait_event("connection_denied", |e| {
        e["reason"] == "tls_handshake_failed"
    });
    assert!(denied["detail"].as_str().is_some());
    wait_for("two TLS<1.2 denials", || {
        (moat.events("connection_denied").len() >= 2).then_some(())
    });

    // TLS 1.2 still works for old-but-acceptable clients.
    let echoed = s_client_echo(
        &[
            "-connect",
            &connect,
            "-tls1_2",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
        "v12",
    );
    assert_eq!(echoed, "v12");
    moat.wait_event("connection_allowed", |e| e["tls"]["version"] == "TLSv1.2");
}

#[test]
fn moat_picks_the_cipher_suite_not_the_client() {
    require("openssl");
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let connect = moat.addr("dicom").to_string();
    let ca = ws.certs.ca.display().to_string();
    // The client would rather have AES-256; moat's order puts AES-128-GCM
    // first. A client that offers only AES-256 still gets it.
    for (offered, expected) in [
        (
            "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
            "TLS13_AES_128_GCM_SHA256",
        ),
        ("TLS_AES_256_GCM_SHA384", "TLS13_AES_256_GCM_SHA384"),
    ] {
        let args = [
            "-connect",
            &connect,
            "-CAfile",
            &ca,
            "-ciphersuites",
            offered,
        ];
        assert_eq!(s_client_echo(&args, expected), expected);
        moat.wait_event("connection_allowed", |e| e["tls"]["cipher"] == expected);
    }
}

/// Sends `line` through `openssl s_client -quiet` and returns the first line
/// that comes back. s_client never exits on its own while stdin is open, so
/// it is killed once the echo has arrived (or the deadline passes).
fn s_client_echo(args: &[&str], line: &str) -> String {
    use std::io::BufRead;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let got = rx.recv_timeout(DEADLINE).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    got.trim_end().to_string()
}

fn run_with_input(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_client closes its write side at stdin EOF and keeps reading until
    // the server closes, so the echo arrives before it exits.
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn allowed_source_is_admitted_and_others_are_refused_before_tls() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let listen = moat.addr("dicom");

    // 127.0.0.3 matches no allow entry: moat closes without a byte of TLS.
    let mut refused = connect_from("127.0.0.3", listen);
    let refused_addr = refused.local_addr().unwrap();
    assert!(closed_without_data(&mut refused));
    let denied = moat.wait_for_client("connection_denied", refused_addr);
    assert_conn_fields(&denied, refused_addr, listen);
    assert_eq!(denied["reason"], "not_allowlisted");
    assert!(
        denied.get("tls").is_none(),
        "no TLS work for a refused source"
    );

    // 127.0.0.4 is on the deny list.
    let mut denylisted = connect_from("127.0.0.4", listen);
    let denylisted_addr = denylisted.local_addr().unwrap();
    assert!(closed_without_data(&mut denylisted));
    let denied = moat.wait_for_client("connection_denied", denylisted_addr);
    assert_eq!(denied["reason"], "denylisted");
    assert_eq!(denied["detail"], "matched deny 127.0.0.4/32");

    let tcp = connect_from("127.0.0.2", listen);
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"ok").unwrap();
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    moat.wait_for_client("connection_allowed", client);
    // Only the admitted client ever reached the device.
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn client_certificate_required_and_identity_audited() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mtls = format!("client_ca = {:?}\n", ws.certs.ca);
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", &mtls), &["dicom"]);
    let listen = moat.addr("dicom");

    // Without a certificate the handshake fails and nothing reaches the device.
    let tcp = connect_from("127.0.0.1", listen);
    let anon = tcp.local_addr().unwrap();
    let result = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).and_then(|mut s| {
        s.write_all(b"x")?;
        s.flush()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
    });
    assert!(
        result.is_err(),
        "a client without a certificate got through"
    );
    let denied = moat.wait_for_client("connection_denied", anon);
    assert_eq!(denied["reason"], "client_cert_required");

    // With the dev client certificate: admitted, identity recorded.
    let tcp = connect_from("127.0.0.1", listen);
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, true), "localhost", tcp).unwrap();
    tls.write_all(b"C-ECHO").unwrap();
    let mut buf = [0u8; 6];
    tls.read_exact(&mut buf).unwrap();
    let allowed = moat.wait_for_client("connection_allowed", client);
    let id = &allowed["principal"];
    assert_eq!(id["kind"], "certificate");
    assert_eq!(id["name"], moat::certs::CLIENT_NAME);
    assert_eq!(id["common_name"], moat::certs::CLIENT_NAME);
    assert_eq!(id["subject"], "O=moat development, CN=dev-client");
    assert_eq!(id["sans"], serde_json::json!(["DNS:dev-client.moat.test"]));
    assert_eq!(id["fingerprint_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn sni_chooses_between_ecdsa_and_rsa_certificates() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let listen = moat.addr("dicom");
    for (sni, expected) in [
        ("localhost", "ECDSA"),
        (moat::certs::RSA_SERVER_NAME, "RSA"),
    ] {
        let tls = tls_connect(
            tls_client(&ws.certs, false),
            sni,
            connect_from("127.0.0.1", listen),
        )
        .unwrap();
        let leaf = &tls.conn.peer_certificates().unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let algo = cert.public_key().algorithm.algorithm.to_id_string();
        let got = if algo == "1.2.840.10045.2.1" {
            "ECDSA"
        } else if algo == "1.2.840.113549.1.1.1" {
            "RSA"
        } else {
            "?"
        };
        assert_eq!(got, expected, "SNI {sni}");
    }
}

#[test]
fn connection_cap_refuses_at_once_and_frees_slots() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(
        &ws,
        &tls_service(&ws, echo.addr, "max_connections = 2", ""),
        &["dicom"],
    );
    let listen = moat.addr("dicom");
    let cfg = tls_client(&ws.certs, false);

    let open = |n: u8| {
        let mut s =
            tls_connect(cfg.clone(), "localhost", connect_from("127.0.0.1", listen)).unwrap();
        s.write_all(&[n]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        s
    };
    let first = open(1);
    let _second = open(2);
    let mut third = connect_from("127.0.0.1", listen);
    let third_addr = third.local_addr().unwrap();
    assert!(closed_without_data(&mut third));
    let denied = moat.wait_for_client("connection_denied", third_addr);
    assert_eq!(denied["reason"], "max_connections");
    assert_eq!(denied["detail"], "limit 2");
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);

    let first_addr = first.sock.local_addr().unwrap();
    drop(first);
    moat.wait_for_client("connection_closed", first_addr);
    let _again = open(3);
}

#[test]
fn upstream_down_is_a_clean_close_with_a_reason() {
    let ws = Workspace::new();
    let moat = Moat::start(
        &ws,
        &tls_service(&ws, closed_port(), "connect_timeout = \"2s\"", ""),
        &["dicom"],
    );
    let listen = moat.addr("dicom");
    let tcp = connect_from("127.0.0.1", listen);
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    let mut buf = Vec::new();
    // The TLS session is closed by moat (close_notify or EOF), not hung.
    let n = tls.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let denied = moat.wait_for_client("connection_denied", client);
    assert_eq!(denied["reason"], "upstream_unreachable");
    assert_eq!(denied["tls"]["version"], "TLSv1.3");
    assert!(
        denied["detail"].as_str().unwrap().contains("refused"),
        "{denied}"
    );
    assert!(moat.events("connection_allowed").is_empty());
}

#[test]
fn half_close_delivers_everything_both_ways() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    // Plaintext service too, so half-close is checked on raw TCP as well.
    let body = format!(
        "{}\n[[device.service]]\nname = \"raw\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.0/8\"]\nplaintext = true\n",
        tls_service(&ws, echo.addr, "", ""),
        echo.addr
    );
    let moat = Moat::start(&ws, &body, &["dicom", "raw"]);

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut raw = connect_from("127.0.0.1", moat.addr("raw"));
    let raw_addr = raw.local_addr().unwrap();
    let writer = {
        let mut w = raw.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || {
            w.write_all(&p).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    raw.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    assert_eq!(echoed, payload);
    let closed = moat.wait_for_client("connection_closed", raw_addr);
    assert_eq!(closed["bytes_from_client"], payload.len());
    assert_eq!(closed["bytes_to_client"], payload.len());
    assert_eq!(closed["closed_by"], "client");

    // Over TLS: close_notify is the client's half-close.
    let tcp = connect_from("127.0.0.1", moat.addr("dicom"));
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"last words").unwrap();
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    let mut back = Vec::new();
    tls.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"last words");
}

#[test]
fn idle_connections_are_closed_and_audited() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let moat = Moat::start(
        &ws,
        &tls_service(&ws, echo.addr, "idle_timeout = \"300ms\"", ""),
        &["dicom"],
    );
    let tcp = connect_from("127.0.0.1", moat.addr("dicom"));
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    tls.read_exact(&mut b).unwrap();
    let closed = moat.wait_for_client("connection_closed", client);
    assert_eq!(closed["closed_by"], "idle_timeout");
    assert!(closed["duration_ms"].as_u64().unwrap() >= 300);
}

#[test]
fn sigterm_drains_then_cuts_and_says_so() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = Moat::start(&ws, &tls_service(&ws, echo.addr, "", ""), &["dicom"]);
    let listen = moat.addr("dicom");
    let tcp = connect_from("127.0.0.1", listen);
    let client = tcp.local_addr().unwrap();
    let mut tls = tls_connect(tls_client(&ws.certs, false), "localhost", tcp).unwrap();
    tls.write_all(b"1").unwrap();
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).unwrap();

    signal(moat.pid(), "TERM");
    let stopping = moat.wait_event("gateway_stopping", |_| true);
    assert_eq!(stopping["active_connections"], 1);
    assert_eq!(stopping["grace_ms"], 3000);
    // During the grace period the live connection keeps working …
    tls.write_all(b"2").unwrap();
    tls.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"2");
    // … and no new connection is accepted.
    assert!(
        std::net::TcpStream::connect(listen).is_err() || {
            let mut s = std::net::TcpStream::connect(listen).unwrap();
            closed_without_data(&mut s)
        }
    );
    let status = moat.terminate();
    assert!(status.success(), "{status}");
    let closed = moat.wait_for_client("connection_closed", client);
    assert_eq!(closed["closed_by"], "shutdown");
    let stopped = moat.wait_event("gateway_stopped", |_| true);
    assert_eq!(stopped["cut_connections"], 1);
}

#[test]
fn ipv6_listener_and_allowlist() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let body = format!(
        "[[device]]\nid = \"v6\"\nname = \"v6 device\"\n[[device.service]]\nname = \"raw6\"\nprotocol = \"tcp\"\nlisten = \"[::1]:0\"\nupstream = \"{}\"\nallow = [\"::1/128\"]\nplaintext = true\n",
        echo.addr
    );
    let moat = Moat::start(&ws, &body, &["raw6"]);
    let mut s = std::net::TcpStream::connect(moat.addr("raw6")).unwrap();
    s.write_all(b"v6").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"v6");
    let allowed = moat.wait_event("connection_allowed", |_| true);
    assert_eq!(allowed["matched"], "::1/128");
}

#[test]
fn session_resumption_is_on_by_default_and_can_be_turned_off() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let body = format!(
        "{}\n[[device.service]]\nname = \"full\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1\"]\n{}session_resumption = false\n",
        tls_service(&ws, echo.addr, "", ""),
        echo.addr,
        ws.tls_table()
    );
    let moat = Moat::start(&ws, &body, &["dicom", "full"]);
    // One client config, so one client-side session cache, per service.
    let second_kind = |service: &str| {
        let cfg = tls_client(&ws.certs, false);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = tls_connect(
                cfg.clone(),
                "localhost",
                connect_from("127.0.0.1", moat.addr(service)),
            )
            .unwrap();
            // Tickets arrive after the handshake: one round trip collects them.
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            kinds.push(s.conn.handshake_kind());
        }
        kinds[1]
    };
    assert_eq!(second_kind("dicom"), Some(rustls::HandshakeKind::Resumed));
    assert_eq!(second_kind("full"), Some(rustls::HandshakeKind::Full));
}
