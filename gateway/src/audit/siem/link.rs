//! The TLS connection to the collector (RFC 5425), blocking, on the sink's
//! own thread. It also tells which bytes the collector's TCP stack has
//! acknowledged, so that what was in flight when the collector died is
//! sent again (at least once) instead of lost.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the handshake a collector may still refuse us (rsyslog
/// checks a client certificate after the handshake, then closes).
const CONFIRM_WINDOW: Duration = Duration::from_millis(300);

pub struct Link {
    conn: ClientConnection,
    sock: TcpStream,
    /// TLS bytes handed to the kernel on this connection.
    written: u64,
}

impl Link {
    pub fn connect(
        address: &str,
        server_name: &ServerName<'static>,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Link, String> {
        let addrs: Vec<_> = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .collect();
        let mut last = format!("{address} resolves to no address");
        let mut sock = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = format!("cannot connect to {a}: {e}"),
            }
        }
        let sock = sock.ok_or(last)?;
        let io = |e: io::Error| format!("TLS handshake with {address} failed: {e}");
        sock.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        sock.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let _ = sock.set_nodelay(true);
        let conn = ClientConnection::new(tls.clone(), server_name.clone())
            .map_err(|e| format!("TLS setup: {e}"))?;
        let mut link = Link {
            conn,
            sock,
            written: 0,
        };
        while link.conn.is_handshaking() {
            let mut counted = Counted {
                sock: &mut link.sock,
                written: &mut link.written,
            };
            link.conn.complete_io(&mut counted).map_err(io)?;
        }
        // A collector that refuses our certificate does so just after the
        // handshake (TLS 1.3): wait for that before sending anything.
        let until = Instant::now() + CONFIRM_WINDOW;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Some(why) = link.check_closed(left)? {
                return Err(format!(
                    "{address} closed the connection right after the TLS handshake \
                     (does it require a client certificate?): {why}"
                ));
            }
        }
        Ok(link)
    }

    pub fn describe(&self) -> String {
        let v = self
            .conn
            .protocol_version()
            .map_or("TLS", crate::tls::version_name);
        format!(
            "{v} with {}",
            self.sock
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string())
        )
    }

    /// Waits up to `wait` for the collector to say something; the only
    /// thing it ever says is goodbye (or TLS housekeeping such as session
    /// tickets). `Some(why)` when the connection is over.
    pub fn check_closed(&mut self, wait: Duration) -> Result<Option<String>, String> {
        let mut wait = wait;
        loop {
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = wait.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n <= 0 {
                return Ok(None);
            }
            wait = Duration::ZERO;
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(Some("the collector closed the connection".into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Ok(Some(e.to_string())),
            }
            match self.conn.process_new_packets() {
                Err(e) => return Ok(Some(format!("TLS: {e}"))),
                Ok(state) => {
                    if state.peer_has_closed() {
                        return Ok(Some("the collector closed the TLS session".into()));
                    }
                    let mut sink = vec![0u8; state.plaintext_bytes_to_read()];
                    let _ = self.conn.reader().read(&mut sink);
                }
            }
        }
    }

    /// Sends frames; returns, for each, the TLS byte offset at which it
    /// ends on this connection.
    pub fn send(&mut self, frames: &[Arc<[u8]>]) -> io::Result<Vec<u64>> {
        let mut ends = Vec::with_capacity(frames.len());
        for f in frames {
            self.conn.writer().write_all(f)?;
            self.push()?;
            ends.push(self.written);
        }
        Ok(ends)
    }

    fn push(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut counted = Counted {
                sock: &mut self.sock,
                written: &mut self.written,
            };
            self.conn.write_tls(&mut counted)?;
        }
        Ok(())
    }

    /// TLS bytes of this connection the collector has acknowledged.
    pub fn acked(&self) -> u64 {
        self.written.saturating_sub(unacked(&self.sock))
    }

    /// Ends the TLS session politely (close_notify), best effort.
    pub fn close(mut self) {
        self.conn.send_close_notify();
        let _ = self.push();
    }
}

/// Bytes the kernel holds for `sock` that the peer has not acknowledged.
#[cfg(target_os = "linux")]
fn unacked(sock: &TcpStream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        n.max(0) as u64
    } else {
        0
    }
}

/// Elsewhere: what the kernel took counts as delivered.
#[cfg(not(target_os = "linux"))]
fn unacked(_sock: &TcpStream) -> u64 {
    0
}

/// The socket, counting the bytes written through it.
struct Counted<'a> {
    sock: &'a mut TcpStream,
    written: &'a mut u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        *self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}
