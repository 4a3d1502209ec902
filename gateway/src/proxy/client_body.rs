//! The client's request body on its way to the device. It enforces
//! `max_body_bytes`, a longest gap between pieces (`body_read_timeout`, as
//! nginx's `client_body_timeout`) and a slowest average (`min_body_rate`),
//! so a slow body cannot hold a device connection (or an in-flight slot)
//! for the whole `response_timeout`.
//!
//! Every fault is the client's, never the device's: it ends the body with a
//! [`ClientBodyError`] carrying a typed [`Denial`] (malformed framing, a
//! client gone mid-body, too slow, too large). hyper's client hands that
//! error back as the cause of the failed exchange, where the handler finds
//! it (`classify_upstream_error`), so it is neither audited nor counted as
//! an unreachable device. hyper closes a device connection whose request
//! body failed, so it never goes back to the pool half-written.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::http::BoxError;
use crate::controls::{Denial, Reason};

/// The body limits of one HTTP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_bytes: u64,
    /// Longest wait for the next piece of the body.
    pub read_timeout: Duration,
    /// Bytes per second, averaged over the time spent waiting for the
    /// client, once `read_timeout` of grace has passed; 0: no minimum.
    pub min_rate: u64,
}

/// Why the client's body ended early; the cause of the failed exchange.
#[derive(Debug)]
pub struct ClientBodyError(pub Denial);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0.detail {
            Some(d) => write!(f, "client request body: {}: {d}", self.0.reason),
            None => write!(f, "client request body: {}", self.0.reason),
        }
    }
}

impl std::error::Error for ClientBodyError {}

/// The client's body with its limits, as sent to the device.
pub struct ClientBody<B> {
    inner: B,
    limits: BodyLimits,
    received: u64,
    /// Time spent waiting for the client so far. Time the device took to
    /// read what was already sent is not the client's and is not counted.
    waited: Duration,
    /// Set while the client owes the next piece.
    waiting_since: Option<Instant>,
    /// Made the first time the client keeps the body waiting: most
    /// requests (every GET) never do, and pay no allocation for it.
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
    done: bool,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, limits: BodyLimits) -> Self {
        ClientBody {
            inner,
            limits,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            armed: None,
            done: false,
        }
    }

    fn fail(&mut self, denial: Denial) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        Poll::Ready(Some(Err(Box::new(ClientBodyError(denial)))))
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// When the client, silent since `since`, is too slow: the gap limit,
    /// or the moment its average falls under `min_rate`.
    fn deadline(&self, since: Instant) -> Option<Instant> {
        let l = &self.limits;
        let gap = (!l.read_timeout.is_zero()).then(|| since + l.read_timeout);
        let rate = (l.min_rate > 0).then(|| {
            let earned = Duration::from_secs_f64(self.received as f64 / l.min_rate as f64);
            let allowed = earned.max(l.read_timeout);
            since + allowed.saturating_sub(self.waited)
        });
        match (gap, rate) {
            (Some(g), Some(r)) => Some(g.min(r)),
            (g, r) => g.or(r),
        }
    }

    fn too_slow(&self, since: Instant) -> Denial {
        let silent = since.elapsed();
        if !self.limits.read_timeout.is_zero() && silent >= self.limits.read_timeout {
            let detail = format!(
                "no body data for {:?} (body_read_timeout), {} bytes received",
                self.limits.read_timeout, self.received
            );
            return Denial::with_detail(Reason::BodyTimeout, detail);
        }
        let waited = (self.waited + silent).as_secs_f64().max(0.001);
        let detail = format!(
            "{} bytes in {waited:.1}s, under min_body_rate {} bytes/s",
            self.received, self.limits.min_rate
        );
        Denial::with_detail(Reason::BodyTimeout, detail)
    }
}

fn too_large(limit: u64) -> Denial {
    Denial::with_detail(
        Reason::BodyTooLarge,
        format!("request body over max_body_bytes {limit}"),
    )
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // A declared length over the limit is refused before any of it.
        if this.received == 0 && this.inner.size_hint().lower() > this.limits.max_bytes {
            return this.fail(too_large(this.limits.max_bytes));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.stop_waiting();
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limits.max_bytes {
                        return this.fail(too_large(this.limits.max_bytes));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stop_waiting();
                let e: BoxError = e.into();
                this.fail(classify_client_error(&*e))
            }
            Poll::Ready(None) => {
                this.stop_waiting();
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let Some(deadline) = this.deadline(since) else {
                    return Poll::Pending;
                };
                let timer = match &mut this.timer {
                    Some(timer) => timer,
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if this.armed != Some(deadline) {
                    timer.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let denial = this.too_slow(since);
                    return this.fail(denial);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What an error reading the client's body means. hyper reports a broken
/// chunked framing (size line, extension, data past a chunk's size) as
/// `InvalidInput`/`InvalidData`, a body cut short as `UnexpectedEof` or an
/// incomplete message, an h2 stream the client reset as a remote h2 error.
pub fn classify_client_error(e: &(dyn std::error::Error + 'static)) -> Denial {
    use std::io::ErrorKind;
    let detail = error_chain(e);
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return Denial::with_detail(Reason::ClientAborted, detail);
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            let reason = match io.kind() {
                ErrorKind::InvalidInput | ErrorKind::InvalidData => Reason::MalformedBody,
                _ => Reason::ClientAborted,
            };
            return Denial::with_detail(reason, detail);
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // h2 found the client breaking the protocol (DATA past its
            // content-length, flow control); otherwise the client ended it.
            let reason = if h2.is_io() || h2.is_remote() {
                Reason::ClientAborted
            } else {
                Reason::MalformedBody
            };
            return Denial::with_detail(reason, detail);
        }
        source = err.source();
    }
    // The client's connection failed in some other way ("connection
    // error"): still the client's side, never the device's.
    Denial::with_detail(Reason::ClientAborted, detail)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

/// Parses a `min_body_rate`: "0" (no minimum), or bytes per second such as
/// "500B/s", "1KiB/s", "2 MB/s" (KB = 1000, KiB = 1024 bytes).
pub fn parse_byte_rate(s: &str) -> Result<u64, String> {
    let err =
        || format!("{s:?} is not a rate such as \"1KiB/s\", \"500B/s\" or \"0\" (no minimum)");
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let amount = t.strip_suffix("/s").ok_or_else(err)?.trim_end();
    let digits = amount.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = amount.split_at(digits);
    let number: u64 = number.parse().map_err(|_| err())?;
    let scale: u64 = match unit.trim_start() {
        "B" => 1,
        "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        _ => return Err(err()),
    };
    number.checked_mul(scale).ok_or_else(err)
}

#[cfg(test)]
mod tests;
