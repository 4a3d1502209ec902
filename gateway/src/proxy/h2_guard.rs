//! Control-frame flood guard for h2 clients (CVE-2019-9512 ping flood,
//! CVE-2019-9515 settings flood and their kin: PRIORITY, RST_STREAM,
//! empty DATA, WINDOW_UPDATE and unknown frames).
//!
//! hyper exposes no frame hooks, so this wraps the client IO below hyper.
//! It recognises the h2 connection preface (h2c prior knowledge, or TLS
//! with ALPN h2 — hyper sniffs the preface either way); anything else is
//! HTTP/1.1 and passes through untouched. On h2 it reads the client's frame
//! headers as they pass (9 bytes each, payloads skipped, nothing copied)
//! and charges control frames to a per-connection token bucket.
//!
//! What h2 0.4 does on its own: it holds at most one pending PING ack and
//! one pending SETTINGS ack and stops reading until that one is written,
//! so a flood costs no memory — but it acknowledges every frame at the
//! pace the client sets, forever: CPU and bandwidth for nothing, and a
//! `warn!` log line per unexpected PING ack.
//!
//! Over budget, the guard stops passing client bytes to hyper, waits for
//! hyper's outgoing frame in progress to end (it tracks their headers, so a
//! frame is never split), writes GOAWAY(last stream seen,
//! ENHANCE_YOUR_CALM), flushes and half-closes, then discards what the
//! client still sends for a short linger — closing with unread data would
//! reset the connection and the client might never see the GOAWAY — and
//! finally fails hyper's IO so the connection ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::controls::rate::Bucket;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Control frames a connection may send at once. Envoy queues at most 1000
/// outbound control frames (`max_outbound_control_frames`); a browser
/// sends a handful of SETTINGS/PRIORITY frames plus one RST_STREAM per
/// cancelled request, far below this.
pub(crate) const BURST: f64 = 1000.0;
/// Control frames per second earned back: a PING every 10 ms for ever is
/// still allowed; the floods of the CVEs run at hundreds of thousands.
pub(crate) const RATE: f64 = 100.0;
/// WINDOW_UPDATEs are how a downloading client grants more data, one per
/// stream and one for the connection at most per DATA frame it received:
/// up to two per outgoing DATA frame (plus a start allowance) are free,
/// as Envoy ties them to DATA frames sent; only the excess is charged.
const WINDOW_UPDATES_PER_DATA: u64 = 2;
const WINDOW_UPDATES_FREE: u64 = 100;
/// How long, from the verdict, GOAWAY may take to go out and the client's
/// remaining bytes are discarded before the connection is dropped.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

const ENHANCE_YOUR_CALM: u32 = 0xb;
const GOAWAY_DEBUG: &[u8] = b"too many control frames";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// What the connection's owner sees of the guard: the verdict, and a way
/// to cut an h2 connection with GOAWAY for abuse found elsewhere (rapid
/// reset, counted per request).
#[derive(Default)]
pub(crate) struct Verdict {
    detail: OnceLock<String>,
    /// The connection task, parked in a read: woken to act on `cut`.
    waker: Mutex<Option<Waker>>,
    /// Set once the client is known to speak h2.
    h2: OnceLock<()>,
}

impl Verdict {
    /// Why the connection was cut for protocol abuse, if it was.
    pub fn abuse(&self) -> Option<&str> {
        self.detail.get().map(String::as_str)
    }

    /// Cuts the connection for `detail`. Returns false if it is not h2 (no
    /// GOAWAY to send: the caller just drops it).
    pub fn cut(&self, detail: String) -> bool {
        let _ = self.detail.set(detail);
        if self.h2.get().is_none() {
            return false;
        }
        if let Some(w) = self.lock_waker().take() {
            w.wake();
        }
        true
    }

    fn lock_waker(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.waker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An incremental reader of frame headers: 9 bytes gathered (possibly
/// across reads), then the payload skipped.
#[derive(Default)]
struct Frames {
    head: [u8; 9],
    have: usize,
    skip: usize,
}

struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl Frames {
    /// Moves over `bytes`, calling `on_head` with each complete header and
    /// the offset in `bytes` where it began (0 if it began in an earlier
    /// call). Stops early, returning that offset, when `on_head` says so.
    fn advance(
        &mut self,
        mut bytes: &[u8],
        mut on_head: impl FnMut(&Head) -> bool,
    ) -> Option<usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let start = (total - bytes.len()).saturating_sub(self.have);
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = &self.head;
            let head = Head {
                len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
                kind: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            };
            self.skip = head.len;
            if !on_head(&head) {
                return Some(start);
            }
        }
        None
    }

    /// Bytes until the current frame ends; `None` between frames.
    fn room(&self) -> Option<usize> {
        match (self.have, self.skip) {
            (0, 0) => None,
            (0, n) => Some(n),
            (h, _) => Some(9 - h),
        }
    }
}

/// The charging of one h2 connection's inbound frames.
struct Inbound {
    frames: Frames,
    bucket: Bucket,
    control: u64,
    window_updates: u64,
    last_stream: u32,
}

impl Inbound {
    fn new(now: Instant) -> Inbound {
        Inbound {
            frames: Frames::default(),
            bucket: Bucket::new(now, BURST, RATE),
            control: 0,
            window_updates: 0,
            last_stream: 0,
        }
    }

    /// Reads `bytes`; on a frame over budget returns the offset where that
    /// frame began and why.
    fn feed(&mut self, bytes: &[u8], data_out: u64, now: Instant) -> Option<(usize, String)> {
        let mut over = None;
        let Inbound {
            frames,
            bucket,
            control,
            window_updates,
            last_stream,
        } = self;
        let at = frames.advance(bytes, |h| {
            let charged = match h.kind {
                DATA => h.len == 0 && h.flags & END_STREAM == 0,
                HEADERS => {
                    *last_stream = (*last_stream).max(h.stream);
                    false
                }
                CONTINUATION => false,
                WINDOW_UPDATE => {
                    *window_updates += 1;
                    *window_updates > WINDOW_UPDATES_FREE + WINDOW_UPDATES_PER_DATA * data_out
                }
                // PRIORITY, RST_STREAM, SETTINGS, PING (acks too: h2 logs
                // each unexpected one), GOAWAY, PUSH_PROMISE (an error
                // anyway) and unknown types, which h2 skips silently.
                _ => true,
            };
            if !charged {
                return true;
            }
            *control += 1;
            if bucket.take(now) {
                return true;
            }
            over = Some(format!(
                "h2 control-frame flood: {} frames over the budget of {BURST} at {RATE}/s ({} control frames so far)",
                kind_name(h.kind),
                control
            ));
            false
        });
        at.zip(over)
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        DATA => "empty DATA",
        PRIORITY => "PRIORITY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PING => "PING",
        GOAWAY => "GOAWAY",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "unknown-type",
    }
}

fn goaway(last_stream: u32) -> Vec<u8> {
    let len = 8 + GOAWAY_DEBUG.len();
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    f.extend_from_slice(GOAWAY_DEBUG);
    f
}

enum Mode {
    /// No byte read yet, or a prefix of the preface.
    Detect(usize),
    /// HTTP/1.x: untouched.
    Http1,
    H2(Box<H2State>),
}

struct H2State {
    inbound: Inbound,
    /// hyper's outgoing frames, to find their boundaries.
    outbound: Frames,
    data_out: u64,
    phase: Phase,
}

enum Phase {
    Normal,
    /// Over budget: GOAWAY goes out at the next outgoing frame boundary.
    Calm {
        frame: Vec<u8>,
        sent: usize,
        deadline: Pin<Box<Sleep>>,
    },
    /// GOAWAY sent and the write side shut: client bytes are discarded.
    Linger {
        deadline: Pin<Box<Sleep>>,
    },
    Closed,
}

/// The client IO as hyper sees it.
pub(crate) struct H2Guard<S> {
    inner: S,
    mode: Mode,
    verdict: Arc<Verdict>,
}

impl<S> H2Guard<S> {
    pub fn new(inner: S) -> (Self, Arc<Verdict>) {
        let verdict = Arc::new(Verdict::default());
        let guard = H2Guard {
            inner,
            mode: Mode::Detect(0),
            verdict: verdict.clone(),
        };
        (guard, verdict)
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "h2 connection cut for protocol abuse",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> H2Guard<S> {
    /// Looks at bytes just read; returns how many of them hyper may have.
    fn inspect(&mut self, bytes: &[u8]) -> usize {
        let mut from = 0;
        if let Mode::Detect(matched) = self.mode {
            let n = (PREFACE.len() - matched).min(bytes.len());
            if bytes[..n] != PREFACE[matched..matched + n] {
                self.mode = Mode::Http1;
                return bytes.len();
            }
            if matched + n < PREFACE.len() {
                self.mode = Mode::Detect(matched + n);
                return bytes.len();
            }
            let now = Instant::now();
            self.mode = Mode::H2(Box::new(H2State {
                inbound: Inbound::new(now),
                outbound: Frames::default(),
                data_out: 0,
                phase: Phase::Normal,
            }));
            let _ = self.verdict.h2.set(());
            from = n;
        }
        let Mode::H2(st) = &mut self.mode else {
            return bytes.len();
        };
        if !matches!(st.phase, Phase::Normal) {
            return 0;
        }
        match st.inbound.feed(&bytes[from..], st.data_out, Instant::now()) {
            None => bytes.len(),
            Some((at, detail)) => {
                tracing::debug!(%detail, "h2 client over its control-frame budget");
                let _ = self.verdict.detail.set(detail);
                st.calm();
                from + at
            }
        }
    }

    /// Drives the GOAWAY out once hyper is between frames. Ready(Ok) once
    /// it is sent and the write side is shut (or it was given up).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Mode::H2(st) = &mut self.mode else {
            return Poll::Ready(Err(aborted()));
        };
        let Phase::Calm {
            frame,
            sent,
            deadline,
        } = &mut st.phase
        else {
            return Poll::Ready(Ok(()));
        };
        if deadline.as_mut().poll(cx).is_ready() {
            st.phase = Phase::Closed;
            return Poll::Ready(Ok(()));
        }
        if st.outbound.room().is_some() {
            // hyper's frame in progress first: its own write of the rest
            // comes back here.
            return Poll::Pending;
        }
        let inner = &mut self.inner;
        let step = (|| {
            while *sent < frame.len() {
                match std::task::ready!(Pin::new(&mut *inner).poll_write(cx, &frame[*sent..])) {
                    Ok(0) | Err(_) => return Poll::Ready(false),
                    Ok(n) => *sent += n,
                }
            }
            // Flush, then FIN (close_notify first, on TLS).
            if std::task::ready!(Pin::new(&mut *inner).poll_flush(cx)).is_err() {
                return Poll::Ready(false);
            }
            let _ = std::task::ready!(Pin::new(&mut *inner).poll_shutdown(cx));
            Poll::Ready(true)
        })();
        let sent_all = std::task::ready!(step);
        let old = std::mem::replace(&mut st.phase, Phase::Closed);
        if let (true, Phase::Calm { deadline, .. }) = (sent_all, old) {
            st.phase = Phase::Linger { deadline };
        }
        Poll::Ready(Ok(()))
    }

    /// Reads while cut: drives the GOAWAY, then discards until the client
    /// closes or the linger ends; hyper gets only the final error.
    fn poll_read_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_goaway(cx))?;
        let Mode::H2(st) = &mut self.mode else {
            return Poll::Ready(Err(aborted()));
        };
        let Phase::Linger { deadline } = &mut st.phase else {
            return Poll::Ready(Err(aborted()));
        };
        if deadline.as_mut().poll(cx).is_ready() {
            st.phase = Phase::Closed;
            return Poll::Ready(Err(aborted()));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => {
                    st.phase = Phase::Closed;
                    return Poll::Ready(Err(aborted()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Takes up a cut requested from outside (`Verdict::cut`).
    fn take_cut(&mut self) {
        if let Mode::H2(st) = &mut self.mode {
            if matches!(st.phase, Phase::Normal) && self.verdict.abuse().is_some() {
                st.calm();
            }
        }
    }

    fn cut(&self) -> bool {
        matches!(&self.mode, Mode::H2(st) if !matches!(st.phase, Phase::Normal))
    }
}

impl H2State {
    fn calm(&mut self) {
        self.phase = Phase::Calm {
            frame: goaway(self.inbound.last_stream),
            sent: 0,
            deadline: Box::pin(tokio::time::sleep(LINGER)),
        };
    }

    /// Gives up on a cut connection once its linger is over, even while
    /// hyper only writes (h2 reads nothing until its writes are flushed,
    /// and a client that stops reading would keep them pending).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) {
        if let Phase::Calm { deadline, .. } | Phase::Linger { deadline } = &mut self.phase {
            if deadline.as_mut().poll(cx).is_ready() {
                self.phase = Phase::Closed;
            }
        }
    }

    /// hyper wrote `bytes`.
    fn wrote(&mut self, bytes: &[u8]) {
        let data_out = &mut self.data_out;
        self.outbound.advance(bytes, |h| {
            if h.kind == DATA {
                *data_out += 1;
            }
            true
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.mode, Mode::Http1) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        this.take_cut();
        if this.cut() {
            return this.poll_read_cut(cx);
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match res {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled().len();
                if filled > before {
                    let keep = this.inspect(&buf.filled()[before..]);
                    buf.set_filled(before + keep);
                    if this.cut() && keep == 0 {
                        return this.poll_read_cut(cx);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if matches!(this.mode, Mode::H2(_)) {
                    let mut w = this.verdict.lock_waker();
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H2Guard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Mode::H2(st) = &mut this.mode else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        st.poll_deadline(cx);
        let limit = match &st.phase {
            Phase::Normal => buf.len(),
            Phase::Calm { .. } => match st.outbound.room() {
                Some(room) => room.min(buf.len()),
                None => {
                    std::task::ready!(this.poll_goaway(cx))?;
                    return Pin::new(this).poll_write(cx, buf);
                }
            },
            // Swallowed: an error now would make hyper drop the socket
            // before the linger is over.
            Phase::Linger { .. } => return Poll::Ready(Ok(buf.len())),
            Phase::Closed => return Poll::Ready(Err(aborted())),
        };
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
        st.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Mode::H2(st) = &mut this.mode {
            st.poll_deadline(cx);
            match st.phase {
                Phase::Normal => {}
                Phase::Calm { .. } if st.outbound.room().is_some() => {}
                Phase::Calm { .. } => {
                    std::task::ready!(this.poll_goaway(cx))?;
                    return Poll::Ready(Ok(()));
                }
                Phase::Linger { .. } => return Poll::Ready(Ok(())),
                Phase::Closed => return Poll::Ready(Err(aborted())),
            }
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut() {
            // The GOAWAY's own shutdown stands for hyper's.
            std::task::ready!(this.poll_goaway(cx))?;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
