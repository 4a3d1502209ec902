//! Thousands of connections that send nothing, or half a TLS ClientHello.
//!
//! One attacking address opens 2,000 connections to each service and goes
//! silent (or stops in the middle of its ClientHello). moat holds at most
//! the client's share (`max_connections_per_client`, 64 by default) and
//! refuses the rest at once; the held ones are cut when the handshake (TLS)
//! or the first request (plaintext HTTP) is overdue. Meanwhile the
//! bystander is served on every service, and afterwards no slot,
//! descriptor or handshake is left behind.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::bystander;
use crate::hostile_clients;
use crate::support::http_device;
use crate::support::*;

/// Connections per service.
const CROWD: usize = 2_000;

/// The first 43 bytes of a ClientHello whose record announces 512: a TLS
/// record header, the handshake header, the version and the random.
const HALF_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // TLS 1.2 legacy version
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00,
    0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00,
];

/// Lifts this process's descriptor limit for the crowd (root may raise the
/// hard limit too).
fn enough_descriptors() {
    let want = (4 * CROWD + 1_000) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max.max(want));
            limit.rlim_max = limit.rlim_max.max(want);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "raising RLIMIT_NOFILE to {want}"
            );
        }
    }
}

struct Setup {
    ws: Workspace,
    moat: Moat,
    _web: http_device::HttpDevice,
    _echo: Echo,
}

/// Services `ui` (HTTPS), `plain` (HTTP) and `tcp` (TLS echo), each with
/// this `handshake_timeout` (and `header_read_timeout` on `plain`).
fn start(timeout: &str) -> Setup {
    let ws = Workspace::new();
    let web = http_device::serve(|_| "ok\n".to_string());
    let echo = echo_upstream();
    let service = |name: &str, protocol: &str, upstream: SocketAddr, tail: &str| {
        format!(
            "[[device.service]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.0/8\"]\nhandshake_timeout = \"{timeout}\"\n{tail}\n"
        )
    };
    let body = format!(
        "[[device]]\nid = \"pump\"\nname = \"infusion pump\"\n\n{}{}{}",
        service("ui", "http", web.addr, &ws.tls_table()),
        service(
            "plain",
            "http",
            web.addr,
            &format!(
                "plaintext = true\n[device.service.http]\nheader_read_timeout = \"{timeout}\""
            )
        ),
        service("tcp", "tcp", echo.addr, &ws.tls_table()),
    );
    let moat = Moat::start(&ws, &body, &["ui", "plain", "tcp"]);
    Setup {
        ws,
        moat,
        _web: web,
        _echo: echo,
    }
}

/// `n` connections to `to` from `source`, each sending `first` (maybe
/// nothing) and then nothing more.
fn crowd(source: &str, to: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = connect_from(source, to);
            if !first.is_empty() {
                // A refused connection may already be closed: fine.
                let _ = s.write_all(first);
            }
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// How many of `conns` moat has closed (EOF or reset) by now.
fn closed(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 256];
    conns
        .iter()
        .filter(|s| loop {
            // `Read` is implemented for `&TcpStream`.
            let mut stream: &TcpStream = s;
            match stream.read(&mut buf) {
                Ok(0) => break true,
                // A TLS alert or an HTTP 408 on the way out.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        })
        .count()
}

fn hold_the_crowd(first: &[u8], attack: &str, services: &[&str]) {
    let _heavy = crate::heavy();
    enough_descriptors();
    let s = start("3s");
    let fds_before = s.moat.metric("moat_process_open_fds");
    let mut conns = Vec::new();
    for service in services {
        conns.extend(crowd("127.0.0.1", s.moat.addr(service), CROWD, first));
    }
    let total = conns.len();
    // All but the share of each service refused at once.
    let expect_refused = (total - 64 * services.len()) as u64;
    wait_for(&format!("{attack}: the excess refused"), || {
        (hostile_clients::metric(&s.moat, "connections", "max_connections") >= expect_refused)
            .then_some(())
    });
    let held = total - closed(&conns);
    assert_eq!(held, 64 * services.len(), "{attack}: connections held");
    // The attacker holds its share; the bystander gets slots of its own.
    for service in services {
        match *service {
            "ui" => bystander::served(attack, &s.ws, &format!("https://{}/", s.moat.addr("ui")), 3),
            "plain" => bystander::served(
                attack,
                &s.ws,
                &format!("http://{}/", s.moat.addr("plain")),
                3,
            ),
            _ => bystander::echoed(attack, s.moat.addr("tcp"), Some(&s.ws), 3),
        }
    }
    // The held ones are cut when their handshake or first request is
    // overdue (3 s here), and nothing is left behind.
    wait_for_within(
        &format!("{attack}: every held connection cut"),
        std::time::Duration::from_secs(20),
        || (closed(&conns) == total).then_some(()),
        || format!("{} of {total} closed", closed(&conns)),
    );
    let cut = s
        .moat
        .events("connection_denied")
        .into_iter()
        .chain(s.moat.events("connection_closed"))
        .filter(|e| {
            e["reason"] == "tls_handshake_timeout"
                || e["closed_by"] == "header_timeout"
                || e["closed_by"] == "idle_timeout"
        })
        .count();
    assert!(
        cut >= 64 * services.len(),
        "{attack}: {cut} cut for an overdue handshake or request"
    );
    drop(conns);
    wait_for(&format!("{attack}: gauges back at rest"), || {
        let active = s.moat.metric("moat_connections_active");
        let handshakes = s.moat.metric("moat_tls_handshakes_in_progress");
        let fds = s.moat.metric("moat_process_open_fds");
        (active == 0.0 && handshakes == 0.0 && fds <= fds_before + 2.0).then_some(())
    });
}

#[test]
fn thousands_of_silent_connections_hold_only_their_share() {
    hold_the_crowd(b"", "silent connections", &["ui", "plain", "tcp"]);
}

#[test]
fn thousands_of_half_client_hellos_hold_only_their_share() {
    hold_the_crowd(HALF_CLIENT_HELLO, "half ClientHellos", &["ui", "tcp"]);
}

/// Silent connections from eight addresses (64 each, their share) fill
/// every one of `max_connections` (256) on a TLS service, where slots would
/// otherwise be held for the whole `handshake_timeout` (10 s). A new
/// client makes moat shed the oldest stalled handshake (one older than
/// `handshake_timeout / 4`) and is served, on L7 and L4 alike; the shed
/// connection is audited as such.
#[test]
fn silent_connections_from_many_addresses_are_shed_for_a_new_client() {
    let _heavy = crate::heavy();
    enough_descriptors();
    let s = start("10s");
    let started = std::time::Instant::now();
    let mut conns = Vec::new();
    for service in ["ui", "tcp"] {
        for host in 10..18 {
            let source = format!("127.0.0.{host}");
            conns.extend(crowd(&source, s.moat.addr(service), 64, b""));
        }
    }
    // Each holds its slot in its handshake.
    wait_for_or(
        "both services full",
        || (s.moat.metric("moat_tls_handshakes_in_progress") == 512.0).then_some(()),
        || {
            format!(
                "{} handshakes",
                s.moat.metric("moat_tls_handshakes_in_progress")
            )
        },
    );
    let limit = std::time::Duration::from_secs(8);
    let url = format!("https://{}/", s.moat.addr("ui"));
    let asks = [
        bystander::Ask::Page(&s.ws, &url),
        bystander::Ask::Echo(s.moat.addr("tcp"), Some(&s.ws)),
    ];
    for ask in &asks {
        bystander::answered_within("silent connections from 8 addresses", ask, limit);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "served only after {:?}, when the handshake timeout would have freed slots anyway",
        started.elapsed()
    );
    let shed: Vec<_> = s
        .moat
        .events("connection_denied")
        .into_iter()
        .filter(|e| {
            e["reason"] == "max_connections"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("shed for a new connection"))
        })
        .collect();
    let services: std::collections::BTreeSet<_> =
        shed.iter().map(|e| e["service"].to_string()).collect();
    assert_eq!(services.len(), 2, "{shed:?}");
    // Of the 1,024 opened, 512 found the services full and were refused;
    // of the rest only what the new clients needed was shed.
    let closed = closed(&conns);
    assert!(
        closed <= 512 + shed.len() + 8,
        "{closed} closed, {} shed",
        shed.len()
    );
}
