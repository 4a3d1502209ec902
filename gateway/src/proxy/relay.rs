//! Bidirectional byte copy between client and device, with byte counts,
//! half-close, an idle timeout and "who closed first".
//!
//! The copy itself is tokio's `copy_bidirectional_with_sizes`: one buffer per
//! direction, allocated once per connection, reused for every read, and a
//! shutdown of the write side when the other side reaches EOF (half-close).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::ClosedBy;
use crate::controls::Denial;

/// One TLS record's worth: reads line up with records on the client side.
const BUF_SIZE: usize = 16 * 1024;

const SIDE_CLIENT: u8 = 1;
const SIDE_UPSTREAM: u8 = 2;

/// Shared by both sides of a connection: activity for the idle timer,
/// which side reached EOF first, and the client-side byte counts.
pub(crate) struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last byte moved on either side.
    last_ms: AtomicU64,
    first_eof: AtomicU8,
    pub from_client: AtomicU64,
    pub to_client: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            first_eof: AtomicU8::new(0),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_expired(&self, idle: Duration) {
        loop {
            let last = self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    pub fn bytes(&self) -> (u64, u64) {
        (
            self.from_client.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

/// A stream that records activity and EOF, and counts the client's bytes.
pub(crate) struct Metered<S> {
    inner: S,
    side: u8,
    activity: Arc<Activity>,
}

impl<S> Metered<S> {
    pub fn client(inner: S, activity: Arc<Activity>) -> Self {
        Metered {
            inner,
            side: SIDE_CLIENT,
            activity,
        }
    }

    fn upstream(inner: S, activity: Arc<Activity>) -> Self {
        Metered {
            inner,
            side: SIDE_UPSTREAM,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let n = (buf.filled().len() - before) as u64;
            if n == 0 {
                let _ = self.activity.first_eof.compare_exchange(
                    0,
                    self.side,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            } else {
                if self.side == SIDE_CLIENT {
                    self.activity.from_client.fetch_add(n, Ordering::Relaxed);
                }
                self.activity.touch();
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if self.side == SIDE_CLIENT {
                self.activity
                    .to_client
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            self.activity.touch();
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a relayed connection ended.
#[derive(Debug)]
pub struct RelayOutcome {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub closed_by: ClosedBy,
    pub error: Option<String>,
    /// Why a new policy cut the connection, when it did.
    pub revoked: Option<Denial>,
}

/// Copies bytes both ways until both sides are done, the connection is idle
/// for `idle_timeout`, `stop` is cancelled, or `revoked` resolves.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    idle_timeout: Duration,
    stop: &CancellationToken,
    revoked: impl std::future::Future<Output = Denial>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut client = Metered::client(client, activity.clone());
    let mut upstream = Metered::upstream(upstream, activity.clone());
    let mut revocation = None;
    let (closed_by, error) = tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF_SIZE, BUF_SIZE) => match res {
            Ok(_) => {
                let by = match activity.first_eof.load(Ordering::Relaxed) {
                    SIDE_UPSTREAM => ClosedBy::Upstream,
                    _ => ClosedBy::Client,
                };
                (by, None)
            }
            // A TLS client that closes TCP without close_notify (most do)
            // surfaces as UnexpectedEof: that is the client leaving.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (ClosedBy::Client, None),
            Err(e) => (ClosedBy::Error, Some(e.to_string())),
        },
        _ = activity.idle_expired(idle_timeout) => (ClosedBy::IdleTimeout, None),
        _ = stop.cancelled() => (ClosedBy::Shutdown, None),
        denial = revoked => {
            revocation = Some(denial);
            (ClosedBy::Revoked, None)
        }
    };
    let (bytes_from_client, bytes_to_client) = activity.bytes();
    RelayOutcome {
        bytes_from_client,
        bytes_to_client,
        closed_by,
        error,
        revoked: revocation,
    }
}
