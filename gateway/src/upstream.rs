//! HTTP/1.1 connections to one device, kept open and reused.
//!
//! moat's own small pool over hyper's connection API rather than
//! hyper-util's general-purpose client: there is exactly one destination
//! per service, so no pool key to hash, no connect racing an idle
//! checkout (which opened twice as many device connections as there were
//! clients), and no task spawned per request to return a connection.
//! See docs/benchmarks.md for what it saved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};

use crate::policy::{Service, Upstream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every request moat sends a device and every response it
/// sends a client: bytes, with boxed errors.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Idle connections older than this are closed (the device may have
/// forgotten them long ago; legacy web servers often keep them for 5–15 s,
/// and a closed one is noticed and skipped anyway).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many connections are kept per device. The pool never
/// holds more than the peak of concurrent requests (which `max_in_flight`
/// caps for fragile devices); this only bounds what a burst leaves behind.
/// Set lower, a burst above it would open and close a connection for
/// nearly every request (h2 clients at 500 concurrent streams did).
const MAX_POOLED: usize = 1024;

/// The most moat reads from a device at once (see `handshake`).
const DEVICE_READ_BUF: usize = 16 * 1024;

/// A pooled HTTP/1.1 client to one device, plaintext or TLS.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
}

struct Pool {
    upstream: Upstream,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Most recently used last. A connection goes back when the client is
    /// done with its response body (`DeviceBody` is dropped); one the
    /// device or hyper closed meanwhile is skipped when next looked at.
    conns: Mutex<Vec<Pooled>>,
    /// Replaced by a pool for a changed service: takes nothing back.
    retired: AtomicBool,
}

struct Pooled {
    conn: DeviceConn,
    returned: Instant,
}

/// One connection to the device, with the timer of the request on it.
///
/// A connection carries one request at a time, so its timer is reused
/// from request to request: moving a registered tokio timer's deadline
/// later is one compare-and-swap (the wheel re-files the entry if it
/// reaches the old deadline first), where a timer per request costs a
/// wheel insertion and a removal (docs/benchmarks.md, "Third pass").
/// Between requests the timer holds the waker of the last request's task
/// until it next fires, at most `response_timeout` later.
struct DeviceConn {
    sender: SendRequest<ProxyBody>,
    timer: Pin<Box<Sleep>>,
}

/// Why a request did not get a response from the device.
#[derive(Debug)]
pub enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout(Duration),
    Tls(std::io::Error),
    Http(hyper::Error),
    /// No response head within the service's `response_timeout`.
    ResponseTimeout(Duration),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "tcp connect error: {e}"),
            UpstreamError::ConnectTimeout(t) => write!(f, "no connection within {t:?}"),
            UpstreamError::Tls(e) => write!(f, "tls handshake with the device failed: {e}"),
            UpstreamError::Http(e) => write!(f, "{e}"),
            UpstreamError::ResponseTimeout(t) => write!(f, "no response within {t:?}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) | UpstreamError::Tls(e) => e.source(),
            UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_) => None,
            UpstreamError::Http(e) => std::error::Error::source(e),
        }
    }
}

impl UpstreamClient {
    pub fn new(service: &Service) -> Self {
        let tls = service
            .http
            .as_ref()
            .and_then(|h| h.upstream_tls.as_ref())
            .map(|tls| {
                (
                    tokio_rustls::TlsConnector::from(tls.config.clone()),
                    tls.server_name.clone(),
                )
            });
        UpstreamClient {
            pool: Arc::new(Pool {
                upstream: service.upstream.clone(),
                connect_timeout: service.connect_timeout,
                idle_timeout: IDLE_TIMEOUT,
                tls,
                conns: Mutex::new(Vec::new()),
                retired: AtomicBool::new(false),
            }),
        }
    }

    /// Changes whenever a new client is needed for `service`.
    pub fn fingerprint(service: &Service) -> String {
        let tls = service
            .http
            .as_ref()
            .and_then(|h| h.upstream_tls.as_ref())
            .map(|t| t.fingerprint.as_str());
        format!(
            "{}|{:?}|{}",
            service.upstream,
            service.connect_timeout,
            tls.unwrap_or("-")
        )
    }

    /// Sends `req` (origin-form, with a `Host` header) to the device on an
    /// idle pooled connection, or a new one, and waits for the response
    /// head for at most `response_timeout` (connecting included).
    ///
    /// Not an `async fn`, which would keep `req` twice in the future
    /// (see `proxy::http::request::handle`).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn request(
        &self,
        mut req: Request<ProxyBody>,
        response_timeout: Duration,
    ) -> impl Future<Output = Result<Response<DeviceBody>, UpstreamError>> + '_ {
        async move {
            // One clock read serves the deadline and the pool's idle check.
            let start = Instant::now();
            let deadline = start + response_timeout;
            loop {
                let (mut conn, reused) = match self.checkout(start) {
                    Some(conn) => (conn, true),
                    // Boxed: connecting (TCP, TLS) is rare next to reusing a
                    // pooled connection, and its future is large.
                    None => (
                        Box::pin(self.connect(deadline, response_timeout)).await?,
                        false,
                    ),
                };
                conn.timer.as_mut().reset(deadline);
                let DeviceConn { sender, timer } = &mut conn;
                let mut sent = pin!(sender.try_send_request(req));
                let sent = std::future::poll_fn(|cx| match sent.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
                })
                .await;
                match sent {
                    Some(Ok(response)) => {
                        // Returned with the body, not now: until the body is
                        // read the connection is busy, and a request arriving
                        // meanwhile would open another one.
                        let checkin = Some((conn, self.pool.clone()));
                        return Ok(response.map(|inner| DeviceBody { inner, checkin }));
                    }
                    // Dropped with its request in flight: hyper closes it.
                    None => return Err(UpstreamError::ResponseTimeout(response_timeout)),
                    // A pooled connection the device closed while it sat idle
                    // is only found out when used. The request never left, so
                    // it goes out on the next connection; each retry uses up a
                    // pooled one, and a fresh connection is not retried.
                    Some(Err(mut e)) => match e.take_message() {
                        Some(unsent) if reused => req = unsent,
                        _ => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
        }
    }

    /// For a pool replaced on reload: closes its idle connections now, and
    /// those still in use once their response ends.
    pub fn retire(&self) {
        self.pool.retired.store(true, Ordering::Relaxed);
        self.pool.lock().clear();
    }

    /// Closes connections idle for too long, and forgets closed ones.
    pub fn evict_idle(&self) {
        let now = Instant::now();
        self.pool
            .lock()
            .retain(|p| !p.conn.sender.is_closed() && now - p.returned < self.pool.idle_timeout);
    }

    /// The most recently returned connection that is open, ready and not
    /// idle for too long at `now`.
    fn checkout(&self, now: Instant) -> Option<DeviceConn> {
        let mut conns = self.pool.lock();
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            let p = &conns[i];
            if p.conn.sender.is_closed() || now - p.returned >= self.pool.idle_timeout {
                // Everything above `i` was already looked at, so moving
                // the last entry here skips nothing.
                conns.swap_remove(i);
            } else if p.conn.sender.is_ready() {
                return Some(conns.swap_remove(i).conn);
            }
        }
        None
    }
}

impl UpstreamClient {
    /// A new connection, by the connect timeout or the request's
    /// `deadline` (`response_timeout` from the request's start), whichever
    /// comes first.
    async fn connect(
        &self,
        deadline: Instant,
        response_timeout: Duration,
    ) -> Result<DeviceConn, UpstreamError> {
        let pool = &self.pool;
        let target = (pool.upstream.host.as_str(), pool.upstream.port);
        // The TLS handshake counts towards the connect timeout too: a
        // device that accepts TCP and then says nothing is unreachable.
        let connect = async {
            let tcp = TcpStream::connect(target)
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &pool.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(UpstreamError::Tls)?;
                    handshake(tls).await
                }
            }
        };
        let connect_by = Instant::now() + pool.connect_timeout;
        match timeout_at(connect_by.min(deadline), connect).await {
            Ok(sender) => Ok(DeviceConn {
                sender: sender?,
                timer: Box::pin(sleep_until(deadline)),
            }),
            Err(_) if connect_by <= deadline => {
                Err(UpstreamError::ConnectTimeout(pool.connect_timeout))
            }
            Err(_) => Err(UpstreamError::ResponseTimeout(response_timeout)),
        }
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn checkin(&self, conn: DeviceConn) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let mut conns = self.lock();
        // Over the cap the connection is dropped: hyper finishes the
        // response in progress, then closes it.
        if conns.len() < MAX_POOLED {
            conns.push(Pooled {
                conn,
                returned: Instant::now(),
            });
        }
    }
}

/// A response body from the device. Its connection goes back to the pool
/// when hyper is done with the body: read to the end (the usual case), or
/// given up, in which case hyper closes the connection.
pub struct DeviceBody {
    inner: Incoming,
    checkin: Option<(DeviceConn, Arc<Pool>)>,
}

impl Body for DeviceBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DeviceBody {
    fn drop(&mut self) {
        if let Some((conn, pool)) = self.checkin.take() {
            pool.checkin(conn);
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<ProxyBody>, UpstreamError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        // Body chunks are read from the device only as the client takes
        // them; this bounds each (and the response head) at 16 KiB rather
        // than hyper's 400 KiB. A chunk is also what hyper's server side
        // copies into its write buffer past its own limit.
        .max_buf_size(DEVICE_READ_BUF)
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Http)?;
    // The connection's reads and writes run in a task of their own; it
    // ends when the device closes, or once every sender is gone.
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "device connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests;
