//! HL7 MLLP peers (python3-hl7) and helpers for the HL7 guard suite.
//!
//! The device behind moat is `hl7_upstream.py` (python3-hl7's asyncio MLLP
//! server, answering `create_ack()`), the senders are python3-hl7's own
//! `mllp_send`, `hl7_tls_client.py` (its asyncio client over Python's ssl),
//! and raw sockets for what no well-behaved client would send.

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{require, wait_for, Moat, Workspace, DEADLINE};

/// Debian's python3-hl7 is installed for Debian's python.
pub const PYTHON: &str = "/usr/bin/python3";

pub const SB: u8 = 0x0b;
pub const EB: u8 = 0x1c;
pub const CR: u8 = 0x0d;

/// A recognisable fake patient (PID-5): it must reach the device and never
/// the audit trail or moat's log.
pub const PATIENT_FAMILY: &str = "ZZFAKEPATIENT";
pub const PATIENT: &str = "ZZFAKEPATIENT^QUIXOTE";

fn script(name: &str) -> String {
    format!(
        "{}/../integration/tests/support/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Fails (not skips) without python3-hl7: `.ci/run` installs it.
pub fn require_hl7() {
    require("mllp_send");
    let ok = Command::new(PYTHON)
        .args(["-c", "import hl7.mllp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} cannot import hl7: apt-get install python3-hl7 (see .ci/run)"
    );
}

/// A child process killed when the test ends, pass or fail.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The device: `hl7_upstream.py`, logging every connection and block.
pub struct Upstream {
    child: Killed,
    pub addr: SocketAddr,
    pub log: PathBuf,
    output: PathBuf,
}

/// One line of the device's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Conn(u32),
    Msg(u32, Vec<u8>),
    Partial(u32, Vec<u8>),
    Err(u32, String),
    Reset(u32),
    Eof(u32),
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

impl Upstream {
    /// Starts the device and waits (with a deadline) for its ready file.
    pub fn start(ws: &Workspace, name: &str) -> Upstream {
        let ready = ws.path(&format!("{name}.ready"));
        let log = ws.path(&format!("{name}.log"));
        let output = ws.path(&format!("{name}.out"));
        let out = File::create(&output).unwrap();
        let child = Command::new(PYTHON)
            .arg(script("hl7_upstream.py"))
            .arg(&ready)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning hl7_upstream.py");
        let mut child = Killed(child);
        let port: u16 = wait_for("the HL7 device to listen", || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "hl7_upstream.py exited with {status}: {}",
                    std::fs::read_to_string(&output).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&ready).ok()?.trim().parse().ok()
        });
        Upstream {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            output,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ' ');
                let kind = parts.next()?;
                let n: u32 = parts.next()?.parse().ok()?;
                let rest = parts.next().unwrap_or("");
                Some(match kind {
                    "CONN" => Seen::Conn(n),
                    "MSG" => Seen::Msg(n, unhex(rest)),
                    "PARTIAL" => Seen::Partial(n, unhex(rest)),
                    "ERR" => Seen::Err(n, rest.to_string()),
                    "RESET" => Seen::Reset(n),
                    "EOF" => Seen::Eof(n),
                    _ => return None,
                })
            })
            .collect()
    }

    /// Every complete message the device received, in order.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Msg(_, m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Waits until the device has received `n` messages; returns them all.
    pub fn wait_messages(&self, n: usize) -> Vec<Vec<u8>> {
        wait_for(&format!("{n} messages at the device"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
    }

    /// Waits until every connection the device accepted has ended.
    pub fn wait_all_closed(&self) -> Vec<Seen> {
        wait_for("every device connection to close", || {
            let seen = self.seen();
            let opened = seen.iter().filter(|s| matches!(s, Seen::Conn(_))).count();
            let closed = seen.iter().filter(|s| matches!(s, Seen::Eof(_))).count();
            (opened == closed).then_some(seen)
        })
    }

    /// What the device received that was not a complete, well-formed block
    /// (partial frames, blocks python3-hl7 refused).
    pub fn garbage(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| matches!(s, Seen::Partial(..) | Seen::Err(..)))
            .collect()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// An HL7 v2 message, built from its header fields; the body carries the
/// fake patient.
#[derive(Debug, Clone)]
pub struct Msg {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-9 as written, e.g. "ORU^R01".
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-15 and MSH-16 set (enhanced acknowledgment mode).
    pub enhanced: bool,
    /// Characters of filler in an NTE segment (for size limits).
    pub filler: usize,
}

impl Msg {
    /// A message the suite's policy allows: LAB|MAIN → LIS|MAIN, ORU^R01.
    pub fn allowed(control_id: &str) -> Msg {
        Msg {
            sending_application: "LAB".into(),
            sending_facility: "MAIN".into(),
            receiving_application: "LIS".into(),
            receiving_facility: "MAIN".into(),
            message_type: "ORU^R01".into(),
            control_id: control_id.into(),
            enhanced: false,
            filler: 0,
        }
    }

    /// Segments separated by CR, none after the last (as `mllp_send`
    /// sends them: it strips trailing CRs).
    pub fn text(&self) -> String {
        let mut msh = format!(
            r"MSH|^~\&|{}|{}|{}|{}|20261202101500||{}|{}|P|2.5",
            self.sending_application,
            self.sending_facility,
            self.receiving_application,
            self.receiving_facility,
            self.message_type,
            self.control_id,
        );
        if self.enhanced {
            msh.push_str("|||AL|NE");
        }
        let mut segments = vec![
            msh,
            format!("PID|1||4711^^^MAIN^MR||{PATIENT}||19700101|M"),
            format!("OBR|1|{id}|{id}|GLU^Glucose", id = self.control_id),
            "OBX|1|NM|GLU^Glucose||105|mg/dL|70-110|N|||F".to_string(),
        ];
        if self.filler > 0 {
            segments.push(format!("NTE|1||{}", "x".repeat(self.filler)));
        }
        segments.join("\r")
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.text().into_bytes()
    }

    /// The message in its MLLP frame.
    pub fn frame(&self) -> Vec<u8> {
        frame(&self.bytes())
    }
}

pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(message.len() + 3);
    f.push(SB);
    f.extend_from_slice(message);
    f.extend_from_slice(&[EB, CR]);
    f
}

/// An acknowledgment as the sender saw it.
#[derive(Debug, Clone)]
pub struct Ack {
    pub raw: String,
    /// MSA-1: AA, AR, AE, CA, CR, CE.
    pub code: String,
    /// MSA-2: the acknowledged message's MSH-10.
    pub control_id: String,
    /// MSH-9 of the ACK itself.
    pub message_type: String,
}

impl Ack {
    /// Parses an ACK message (no framing).
    pub fn parse(raw: &str) -> Ack {
        let segments: Vec<&str> = raw.split('\r').filter(|s| !s.is_empty()).collect();
        let msh = segments
            .iter()
            .find(|s| s.starts_with("MSH|"))
            .unwrap_or_else(|| panic!("ACK without MSH: {raw:?}"));
        let msa = segments
            .iter()
            .find(|s| s.starts_with("MSA|"))
            .unwrap_or_else(|| panic!("ACK without MSA: {raw:?}"));
        let msa: Vec<&str> = msa.split('|').collect();
        Ack {
            raw: raw.to_string(),
            code: msa.get(1).unwrap_or(&"").to_string(),
            control_id: msa.get(2).unwrap_or(&"").to_string(),
            // MSH-1 is the field separator itself, so MSH-9 is index 8.
            message_type: msh.split('|').nth(8).unwrap_or("").to_string(),
        }
    }
}

/// Splits what a sender printed or received into the ACKs in it (each
/// between a start byte and an end byte).
pub fn acks_in(bytes: &[u8]) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut rest = bytes;
    while let Some(start) = rest.iter().position(|&b| b == SB) {
        let after = &rest[start + 1..];
        let Some(end) = after.iter().position(|&b| b == EB) else {
            break;
        };
        acks.push(Ack::parse(&String::from_utf8_lossy(&after[..end])));
        rest = &after[end + 1..];
    }
    acks
}

/// Runs `mllp_send --file` against `addr` with `messages` (one connection,
/// each message's ACK awaited before the next), bounded by the deadline.
/// Returns its exit success and its stdout (the ACKs, as received).
pub fn mllp_send(
    ws: &Workspace,
    name: &str,
    addr: SocketAddr,
    messages: &[Msg],
) -> (bool, Vec<u8>) {
    let input = ws.path(&format!("{name}.hl7"));
    let stdout = ws.path(&format!("{name}.stdout"));
    let stderr = ws.path(&format!("{name}.stderr"));
    let mut file = Vec::new();
    for m in messages {
        file.extend_from_slice(&m.frame());
    }
    std::fs::write(&input, file).unwrap();
    let child = Command::new("mllp_send")
        .arg("--port")
        .arg(addr.port().to_string())
        .arg("--file")
        .arg(&input)
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).unwrap())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .expect("spawning mllp_send");
    let mut child = Killed(child);
    let status = wait_for("mllp_send to finish", || child.0.try_wait().unwrap());
    let out = std::fs::read(&stdout).unwrap_or_default();
    if !status.success() {
        eprintln!(
            "mllp_send {status}: {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
    }
    (status.success(), out)
}

/// Runs `hl7_tls_client.py` against `addr` over TLS: the negotiated TLS
/// version and the ACKs.
pub fn tls_send(
    ws: &Workspace,
    name: &str,
    addr: SocketAddr,
    messages: &[Msg],
) -> (String, Vec<Ack>) {
    let input = ws.path(&format!("{name}.jsonl"));
    let output = ws.path(&format!("{name}.out"));
    let lines: String = messages
        .iter()
        .map(|m| format!("{}\n", serde_json::Value::String(m.text())))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = File::create(&output).unwrap();
    let child = Command::new(PYTHON)
        .arg(script("hl7_tls_client.py"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&ws.certs.ca)
        .arg("localhost")
        .arg(&input)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(File::create(ws.path(&format!("{name}.stderr"))).unwrap())
        .spawn()
        .expect("spawning hl7_tls_client.py");
    let mut child = Killed(child);
    let status = wait_for("hl7_tls_client.py to finish", || {
        child.0.try_wait().unwrap()
    });
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(
        status.success(),
        "hl7_tls_client.py {status}: {text}{}",
        std::fs::read_to_string(ws.path(&format!("{name}.stderr"))).unwrap_or_default()
    );
    let mut values = text
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap());
    let version = values.next().expect("the TLS version line");
    (version, values.map(|a| Ack::parse(&a)).collect())
}

/// An MLLP sender on a raw socket.
pub struct Raw<S> {
    pub s: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Raw<S> {
    pub fn new(s: S) -> Raw<S> {
        Raw { s, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }

    /// Reads one ACK (bounded by the socket's read timeout).
    pub fn ack(&mut self) -> Ack {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [EB, CR]) {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                assert_eq!(block[0], SB, "an ACK not framed: {block:?}");
                return Ack::parse(&String::from_utf8_lossy(&block[1..end]));
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed before an ACK; had {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no ACK: {e}"),
            }
        }
    }

    /// Expects moat to close the connection within the deadline; returns
    /// what came before the close. A reset counts as closed; a read that
    /// times out does not.
    pub fn expect_closed(&mut self) -> Vec<u8> {
        let start = Instant::now();
        let mut got = std::mem::take(&mut self.buf);
        loop {
            assert!(
                start.elapsed() < DEADLINE,
                "moat did not close the connection; got {:?}",
                String::from_utf8_lossy(&got)
            );
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return got
                }
                Err(e) => panic!(
                    "moat did not close the connection ({e}); got {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
    }
}

/// The sum of `family` samples with guard="hl7-mllp" and the given outcome.
pub fn guard_metric(moat: &Moat, family: &str, outcome: &str) -> u64 {
    let text = moat.admin_get("/metrics");
    let outcome = format!("outcome=\"{outcome}\"");
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{family}{{"))
                && l.contains("guard=\"hl7-mllp\"")
                && l.contains(&outcome)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits for a guard metric to reach `want` exactly (it may lag the ACK by
/// a moment); panics with the metrics page if it never does.
pub fn wait_metric(moat: &Moat, family: &str, outcome: &str, want: u64) {
    let what = format!("{family} outcome={outcome} to reach {want}");
    super::wait_for_or(
        &what,
        || {
            let got = guard_metric(moat, family, outcome);
            // Past the count is as wrong as short of it: no waiting.
            assert!(
                got <= want,
                "{family} outcome={outcome}: {got}, want {want}\n{}",
                moat.admin_get("/metrics")
            );
            (got == want).then_some(())
        },
        || moat.admin_get("/metrics"),
    )
}
