//! rsyslog as a real TLS syslog collector for the SIEM suite (issue 14):
//! Debian's `rsyslogd` with its GnuTLS driver (`rsyslog`, `rsyslog-gnutls`),
//! listening on loopback with imtcp and writing one line per message.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require, signal, wait_for};

/// How rsyslog checks the client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client (`anon`).
    Anon,
    /// A client certificate signed by the CA is required (`x509/certvalid`).
    CertValid,
}

/// The certificate rsyslog serves and the CA it trusts for clients.
pub struct CollectorTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One message as rsyslog parsed it.
#[derive(Debug, Clone)]
pub struct Received {
    pub pri: u32,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

impl Received {
    /// An SD-PARAM value of `moat@32473`, unescaped.
    pub fn param(&self, name: &str) -> Option<String> {
        let key = format!(" {name}=\"");
        let start = self.structured_data.find(&key)? + key.len();
        let mut out = String::new();
        let mut chars = self.structured_data[start..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        None
    }

    pub fn seq(&self) -> u64 {
        self.param("seq").and_then(|s| s.parse().ok()).unwrap()
    }
}

pub struct Rsyslog {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
    conf: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    /// Starts rsyslog on a free loopback port and waits until it listens.
    pub fn start(tls: &CollectorTls, auth: ClientAuth) -> Rsyslog {
        require("rsyslogd");
        let dir = tempfile::Builder::new()
            .prefix("moat-rsyslog-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("received.log");
        let conf = dir.path().join("rsyslog.conf");
        let mut r = Rsyslog {
            child: None,
            port: 0,
            dir,
            out,
            conf,
        };
        // Another process may take the port between our probe and rsyslog.
        for _ in 0..3 {
            r.port = free_port();
            r.write_conf(tls, auth);
            if r.spawn() {
                return r;
            }
            r.stop();
        }
        panic!(
            "rsyslog did not listen on any port we gave it (is rsyslog-gnutls installed?): {}",
            r.stderr()
        );
    }

    fn write_conf(&self, tls: &CollectorTls, auth: ClientAuth) {
        let mode = match auth {
            ClientAuth::Anon => "anon",
            ClientAuth::CertValid => "x509/certvalid",
        };
        let d = self.dir.path();
        let conf = format!(
            r#"global(workDirectory="{work}" maxMessageSize="256k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="{mode}")
template(name="moat_test" type="list") {{
  property(name="pri") constant(value=" ")
  property(name="msgid") constant(value=" ")
  property(name="structured-data") constant(value=" ")
  property(name="msg") constant(value="\n")
}}
input(type="imtcp" port="{port}" address="127.0.0.1")
action(type="omfile" file="{out}" template="moat_test")
"#,
            work = d.display(),
            ca = tls.ca.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            port = self.port,
            out = self.out.display(),
        );
        std::fs::write(&self.conf, conf).unwrap();
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&self.conf)
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("rsyslogd.stderr"))
                    .unwrap(),
            ))
            .spawn()
            .expect("spawning rsyslogd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            let addr = ("127.0.0.1", self.port);
            if TcpStream::connect(addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops rsyslog (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                signal(c.id(), "TERM");
            }
            wait_for("rsyslogd to exit", || c.try_wait().unwrap());
        }
    }

    /// Starts it again on the same port, same config.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "rsyslog did not listen again on port {}",
            self.port
        );
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// Every message received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().filter_map(parse_line).collect()
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf
    }
}

/// `PRI MSGID SD MSG` as the template writes it; `None` for a line cut
/// short (rsyslog is still writing it).
fn parse_line(line: &str) -> Option<Received> {
    let (pri, rest) = line.split_once(' ')?;
    let (msgid, rest) = rest.split_once(' ')?;
    let (sd, msg) = if let Some(r) = rest.strip_prefix("- ") {
        ("-".to_string(), r)
    } else {
        // The SD ends at the first `]` not escaped by a backslash.
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                ']' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        (rest[..=end].to_string(), rest[end + 1..].strip_prefix(' ')?)
    };
    if !msg.ends_with('}') {
        return None;
    }
    Some(Received {
        pri: pri.parse().ok()?,
        msgid: msgid.to_string(),
        structured_data: sd,
        msg: msg.to_string(),
    })
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
