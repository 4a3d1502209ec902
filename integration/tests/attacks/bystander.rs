//! The well-behaved client that every crowding attack must leave served.
//!
//! It comes from [`SOURCE`], an address no attack uses, makes a fresh
//! connection for each request (so it needs a connection slot, a TLS
//! handshake and a device slot of its own, as a new clinician's browser
//! would), and must be answered promptly. Called while the attack is at
//! full strength, it is the proof that the attack stayed the attacker's
//! problem.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The bystander's source address; attacks come from 127.0.0.1 (or other
/// addresses, never this one).
pub const SOURCE: &str = "127.0.0.2";

/// How long one bystander request may take while an attack runs.
pub const PROMPT: Duration = Duration::from_secs(5);

/// `n` HTTP requests for `url` (`http://` or `https://` on 127.0.0.1; TLS
/// to the name `localhost`, which the dev certificate carries), each
/// on a new connection from [`SOURCE`]; each must be answered 200 within
/// [`PROMPT`]. Panics naming `attack` otherwise.
pub fn served(attack: &str, ws: &Workspace, url: &str, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--noproxy", "*", "--interface", SOURCE])
            .args(["--max-time", &PROMPT.as_secs().to_string()])
            .args(["-o", "/dev/null", "-w", "%{http_code}"]);
        if url.starts_with("https:") {
            // The dev certificate names localhost.
            curl.arg("--cacert")
                .arg(&ws.certs.ca)
                .args(["--resolve", &resolve_localhost(url)])
                .arg(url.replace("127.0.0.1", "localhost"));
        } else {
            curl.arg(url);
        }
        let out = curl.stdin(Stdio::null()).output().expect("running curl");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && code == "200",
            "during {attack}: bystander request {i} for {url} got {code:?} after {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `n` round trips through an L4 service at `addr` from [`SOURCE`], each on
/// a new connection: TLS when `tls` names the workspace whose CA to trust,
/// else plaintext; the device behind it must echo.
pub fn echoed(attack: &str, addr: SocketAddr, tls: Option<&Workspace>, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        let tcp = connect_from(SOURCE, addr);
        tcp.set_read_timeout(Some(PROMPT)).unwrap();
        let message = format!("bystander {i}\n");
        let mut echo = vec![0u8; message.len()];
        let result = match tls {
            Some(ws) => {
                tls_connect(tls_client(&ws.certs, false), "localhost", tcp).and_then(|mut s| {
                    s.write_all(message.as_bytes())?;
                    s.read_exact(&mut echo)
                })
            }
            None => {
                let mut s = tcp;
                s.write_all(message.as_bytes())
                    .and_then(|()| s.read_exact(&mut echo))
            }
        };
        assert!(
            result.is_ok() && echo == message.as_bytes(),
            "during {attack}: bystander connection {i} to {addr} failed after {:?}: {result:?}",
            started.elapsed()
        );
    }
}

/// `localhost:PORT:127.0.0.1` for curl's `--resolve`, from a URL on
/// 127.0.0.1.
fn resolve_localhost(url: &str) -> String {
    let port = url
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{url}: not a URL on 127.0.0.1 with a port"));
    format!("localhost:{port}:127.0.0.1")
}
