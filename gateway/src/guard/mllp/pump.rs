//! The guarded relay's state machine: one `poll` moves both directions,
//! so neither waits for the other (a device busy writing ACKs never
//! blocks the client's next message, and the reverse).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::frame::{self, Boundaries, Event, Framer};
use super::msh::{self, Seen};
use super::policy::MllpPolicy;
use crate::audit::Hl7Decision;
use crate::controls::{Denial, Reason};

/// Client reads and device reads go through buffers this size.
const READ: usize = 4 * 1024;

/// Refusals whose ACKs may wait for the device's answers to earlier
/// messages; beyond this the client is not read until some go out.
pub const MAX_PENDING_ACKS: usize = 64;

/// Where the guard records (the runtime in production, a list in tests).
pub trait Record {
    fn message(
        &self,
        seen: Seen,
        decision: Hl7Decision,
        reason: Option<Reason>,
        ack: Option<&'static str>,
    );
    fn violation(&self, denial: &Denial);
    /// The service's HL7 policy in force now, when a reload changed it
    /// since the connection started: each message is judged by the policy
    /// in force when it arrives, so a sender taken off a list is refused
    /// on its next message.
    fn policy_now(&self) -> Option<std::sync::Arc<MllpPolicy>> {
        None
    }
}

/// How the pump stopped.
#[derive(Debug)]
pub enum End {
    /// Both sides finished; the one that reached EOF first.
    Closed {
        client_first: bool,
    },
    Violation(Denial),
    Io(io::Error),
}

/// A refusal's ACK, framed, and how many device frames must reach the
/// client before it.
struct Pending {
    after: u64,
    bytes: Vec<u8>,
}

pub struct Pump<'p, R> {
    policy: &'p MllpPolicy,
    rec: R,
    framer: Framer,
    cbuf: Box<[u8; READ]>,
    cpos: usize,
    cend: usize,
    client_eof: bool,
    /// Bytes of the framer's frame already written to the device, while
    /// one is being forwarded.
    to_device: Option<usize>,
    device_flush: bool,
    device_shut: bool,
    forwarded: u64,
    /// The frame timer, armed at each start byte.
    timer: Pin<Box<Sleep>>,

    dbuf: Box<[u8; READ]>,
    dpos: usize,
    dend: usize,
    device_eof: bool,
    seen: Boundaries,
    acks: VecDeque<Pending>,
    /// The ACK being written to the client, and how much of it is out.
    injecting: Option<(Vec<u8>, usize)>,
    client_flush: bool,
    first_eof_client: Option<bool>,
}

impl<'p, R: Record> Pump<'p, R> {
    pub fn new(policy: &'p MllpPolicy, rec: R) -> Self {
        Pump {
            policy,
            rec,
            framer: Framer::new(policy.max_message_bytes),
            cbuf: Box::new([0; READ]),
            cpos: 0,
            cend: 0,
            client_eof: false,
            to_device: None,
            device_flush: false,
            device_shut: false,
            forwarded: 0,
            timer: Box::pin(tokio::time::sleep(policy.frame_timeout)),
            dbuf: Box::new([0; READ]),
            dpos: 0,
            dend: 0,
            device_eof: false,
            seen: Boundaries::default(),
            acks: VecDeque::new(),
            injecting: None,
            client_flush: false,
            first_eof_client: None,
        }
    }

    pub fn recorder(&self) -> &R {
        &self.rec
    }

    /// Whether the client's bytes may be taken in: nothing is being
    /// forwarded and the ACK queue has room.
    fn client_open(&self) -> bool {
        self.to_device.is_none() && self.acks.len() < MAX_PENDING_ACKS
    }

    /// Feeds buffered client bytes to the framer until it is drained or
    /// a message must wait.
    fn take_client(&mut self) -> Result<(), End> {
        while self.client_open() && self.cpos < self.cend {
            let (n, ev) = self.framer.feed(&self.cbuf[self.cpos..self.cend]);
            self.cpos += n;
            match ev {
                None => {}
                Some(Ok(Event::Start)) => {
                    let deadline = Instant::now() + self.policy.frame_timeout;
                    self.timer.as_mut().reset(deadline);
                }
                Some(Ok(Event::Frame)) => self.decide()?,
                Some(Err(e)) => return Err(End::Violation(e.denial())),
            }
        }
        Ok(())
    }

    /// A complete message: forward it, or queue its refusal.
    fn decide(&mut self) -> Result<(), End> {
        let header = msh::parse(self.framer.message()).map_err(|e| {
            End::Violation(Denial::with_detail(Reason::Hl7Malformed, e.to_string()))
        })?;
        let seen = Seen::of(&header);
        let now = self.rec.policy_now();
        match msh::verdict(now.as_deref().unwrap_or(self.policy), &header) {
            None => {
                self.rec.message(seen, Hl7Decision::Forwarded, None, None);
                self.to_device = Some(0);
                self.forwarded += 1;
            }
            Some(reason) => {
                let code = header.refusal_code();
                let ack = msh::ack(&header, reason, &fresh_control_id(), &timestamp());
                self.rec
                    .message(seen, Hl7Decision::Refused, Some(reason), Some(code));
                self.acks.push_back(Pending {
                    after: self.forwarded,
                    bytes: frame::wrap(&ack),
                });
            }
        }
        Ok(())
    }

    /// Moves what can be moved; `Ready` once the connection is over.
    pub fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        mut client: Pin<&mut C>,
        mut device: Pin<&mut U>,
    ) -> Poll<End>
    where
        C: AsyncRead + AsyncWrite + ?Sized,
        U: AsyncRead + AsyncWrite + ?Sized,
    {
        match self.step(cx, client.as_mut(), device.as_mut()) {
            Ok(Some(end)) => Poll::Ready(end),
            Ok(None) => Poll::Pending,
            Err(end) => Poll::Ready(end),
        }
    }

    fn step<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        mut client: Pin<&mut C>,
        mut device: Pin<&mut U>,
    ) -> Result<Option<End>, End>
    where
        C: AsyncRead + AsyncWrite + ?Sized,
        U: AsyncRead + AsyncWrite + ?Sized,
    {
        loop {
            let mut progress = false;

            // Client → device: the message being forwarded.
            if let Some(pos) = self.to_device {
                let frame = self.framer.frame();
                if let Poll::Ready(r) = device.as_mut().poll_write(cx, &frame[pos..]) {
                    let n = written(r)?;
                    self.device_flush = true;
                    progress = true;
                    self.to_device = (pos + n < frame.len()).then_some(pos + n);
                }
            }
            // The bytes already read, then more.
            if self.client_open() && self.cpos < self.cend {
                self.take_client()?;
                progress = true;
            }
            if self.client_open() && self.cpos == self.cend && !self.client_eof {
                let mut buf = ReadBuf::new(&mut self.cbuf[..]);
                if let Poll::Ready(r) = client.as_mut().poll_read(cx, &mut buf) {
                    progress = true;
                    let n = match r {
                        Ok(()) => buf.filled().len(),
                        // A TLS client that closes without close_notify.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                        Err(e) => return Err(End::Io(e)),
                    };
                    if n == 0 {
                        self.client_eof = true;
                        self.first_eof_client.get_or_insert(true);
                        if self.framer.in_frame() {
                            return Err(End::Violation(Denial::with_detail(
                                Reason::Hl7Framing,
                                "the client closed inside an MLLP frame",
                            )));
                        }
                    } else {
                        (self.cpos, self.cend) = (0, n);
                    }
                }
            }
            // Client done and everything forwarded: half-close the device.
            if self.client_eof
                && self.cpos == self.cend
                && self.to_device.is_none()
                && !self.device_shut
            {
                if let Poll::Ready(r) = device.as_mut().poll_shutdown(cx) {
                    r.map_err(End::Io)?;
                    self.device_shut = true;
                    self.device_flush = false;
                    progress = true;
                }
            }

            // Device → client, with moat's ACKs in message order.
            if self.injecting.is_none() {
                let due = self.acks.front().is_some_and(|a| {
                    // Once the device is gone, nothing more will come
                    // before them.
                    self.device_eof && self.dpos == self.dend
                        || self.seen.ended >= a.after && self.seen.at_boundary()
                });
                if due {
                    let a = self.acks.pop_front().expect("due");
                    self.injecting = Some((a.bytes, 0));
                    progress = true;
                }
            }
            if let Some((ack, pos)) = &mut self.injecting {
                if let Poll::Ready(r) = client.as_mut().poll_write(cx, &ack[*pos..]) {
                    *pos += written(r)?;
                    self.client_flush = true;
                    progress = true;
                    if *pos == ack.len() {
                        self.injecting = None;
                    }
                }
            } else if self.dpos < self.dend {
                let pending = &self.dbuf[self.dpos..self.dend];
                let limit = match self.acks.front() {
                    Some(a) => self.seen.until(pending, a.after),
                    None => pending.len(),
                };
                if limit > 0 {
                    if let Poll::Ready(r) = client.as_mut().poll_write(cx, &pending[..limit]) {
                        let n = written(r)?;
                        self.seen.pass(&pending[..n]);
                        self.dpos += n;
                        self.client_flush = true;
                        progress = true;
                    }
                }
            }
            if self.dpos == self.dend && !self.device_eof {
                let mut buf = ReadBuf::new(&mut self.dbuf[..]);
                if let Poll::Ready(r) = device.as_mut().poll_read(cx, &mut buf) {
                    r.map_err(End::Io)?;
                    progress = true;
                    let n = buf.filled().len();
                    if n == 0 {
                        self.device_eof = true;
                        self.first_eof_client.get_or_insert(false);
                    } else {
                        (self.dpos, self.dend) = (0, n);
                    }
                }
            }
            // The device is gone and everything it and moat had to say
            // reached the client: done (what the client still sends has
            // nowhere to go).
            if self.device_eof
                && self.dpos == self.dend
                && self.injecting.is_none()
                && self.acks.is_empty()
            {
                if let Poll::Ready(r) = client.as_mut().poll_shutdown(cx) {
                    // The client may be gone already; that is no error.
                    let _ = r;
                    return Ok(Some(End::Closed {
                        client_first: self.first_eof_client.unwrap_or(false),
                    }));
                }
                return Ok(None);
            }

            if progress {
                continue;
            }
            // Nothing moved: push written bytes out, and watch the frame timer.
            if self.device_flush {
                if let Poll::Ready(r) = device.as_mut().poll_flush(cx) {
                    r.map_err(End::Io)?;
                    self.device_flush = false;
                }
            }
            if self.client_flush {
                if let Poll::Ready(r) = client.as_mut().poll_flush(cx) {
                    r.map_err(End::Io)?;
                    self.client_flush = false;
                }
            }
            if self.framer.in_frame() && self.timer.as_mut().poll(cx).is_ready() {
                return Err(End::Violation(Denial::with_detail(
                    Reason::Hl7Timeout,
                    format!(
                        "MLLP frame not complete within {:?}",
                        self.policy.frame_timeout
                    ),
                )));
            }
            return Ok(None);
        }
    }
}

fn written(r: io::Result<usize>) -> Result<usize, End> {
    match r {
        Ok(0) => Err(End::Io(io::ErrorKind::WriteZero.into())),
        Ok(n) => Ok(n),
        Err(e) => Err(End::Io(e)),
    }
}

/// MSH-10 of moat's ACKs: unique in this process and, by its start,
/// across restarts; 20 characters, the v2.5 limit.
fn fresh_control_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("MOAT{:016X}", base.wrapping_add(n))
}

/// MSH-7 of moat's ACKs: YYYYMMDDHHMMSS, UTC.
fn timestamp() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(char::from)
        .take(14)
        .collect()
}
