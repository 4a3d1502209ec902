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

/// What the bystander asks for: a page (`http://` or `https://` on
/// 127.0.0.1; TLS to the name `localhost`, which the dev certificate
/// carries), or an echo through an L4 service (TLS when a workspace whose
/// CA to trust is given).
pub enum Ask<'a> {
    Page(&'a Workspace, &'a str),
    Echo(SocketAddr, Option<&'a Workspace>),
}

impl Ask<'_> {
    /// One try on a new connection from [`SOURCE`].
    fn once(&self, i: usize) -> Result<(), String> {
        match *self {
            Ask::Page(ws, url) => page(ws, url),
            Ask::Echo(addr, tls) => echo(addr, tls, i),
        }
    }
}

/// `n` tries of `ask`, each answered within [`PROMPT`]; panics naming
/// `attack` otherwise.
pub fn answered(attack: &str, ask: &Ask<'_>, n: usize) {
    for i in 0..n {
        let started = Instant::now();
        if let Err(e) = ask.once(i) {
            panic!(
                "during {attack}: bystander try {i} failed after {:?}: {e}",
                started.elapsed()
            );
        }
    }
}

/// Tries `ask` until it is answered, for at most `limit`; returns how
/// long that took. For attacks moat answers by shedding: the first tries
/// may be refused while nothing is old enough to shed.
pub fn answered_within(attack: &str, ask: &Ask<'_>, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    for i in 0.. {
        match ask.once(i) {
            Ok(()) => return started.elapsed(),
            Err(e) if started.elapsed() < limit => last = e,
            Err(e) => {
                panic!("during {attack}: the bystander was not served in {limit:?}: {e} (before: {last})")
            }
        }
    }
    unreachable!()
}

/// `n` HTTP requests for `url`, each answered 200 within [`PROMPT`].
pub fn served(attack: &str, ws: &Workspace, url: &str, n: usize) {
    answered(attack, &Ask::Page(ws, url), n)
}

/// `n` round trips through the L4 service at `addr`.
pub fn echoed(attack: &str, addr: SocketAddr, tls: Option<&Workspace>, n: usize) {
    answered(attack, &Ask::Echo(addr, tls), n)
}

fn page(ws: &Workspace, url: &str) -> Result<(), String> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--noproxy", "*", "--interface", SOURCE])
        .args(["--max-time", &PROMPT.as_secs().to_string()])
        .args(["-o", "/dev/null", "-w", "%{http_code}"]);
    if url.starts_with("https:") {
        curl.arg("--cacert")
            .arg(&ws.certs.ca)
            .args(["--resolve", &resolve_localhost(url)])
            .arg(url.replace("127.0.0.1", "localhost"));
    } else {
        curl.arg(url);
    }
    let out = curl.stdin(Stdio::null()).output().expect("running curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && code == "200" {
        Ok(())
    } else {
        Err(format!(
            "{url}: got {code:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn echo(addr: SocketAddr, tls: Option<&Workspace>, i: usize) -> Result<(), String> {
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
    match result {
        Ok(()) if echo == message.as_bytes() => Ok(()),
        Ok(()) => Err(format!("{addr}: echoed {echo:?}")),
        Err(e) => Err(format!("{addr}: {e}")),
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
