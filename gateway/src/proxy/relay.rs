//! Bidirectional byte copy between client and device, with byte counts,
//! half-close, an idle timeout and "who closed first".
//!
//! Each direction reads into a 1 KiB buffer kept in the connection's task
//! and switches to a 64 KiB one only while data arrives in bulk, returning
//! it once traffic is small again. An idle relayed connection therefore
//! holds 2 KiB of copy buffers, not 128 KiB: with
//! thousands of idle clinical connections that is most of the memory.
//! When one side reaches EOF, the other side's write half is shut down
//! (half-close), as with tokio's `copy_bidirectional`.

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

/// What an idle direction holds.
const SMALL: usize = 1024;
/// Used while data arrives in bulk: four TLS records' worth per write to
/// the other side (16 KiB, one record, gave 8 % less L4 TLS throughput and
/// 25 % less plaintext; docs/benchmarks.md).
const BIG: usize = 64 * 1024;

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

    pub fn upstream(inner: S, activity: Arc<Activity>) -> Self {
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

impl RelayOutcome {
    /// The outcome of a connection whose traffic `activity` counted.
    pub(crate) fn new(
        activity: &Activity,
        closed_by: ClosedBy,
        error: Option<String>,
        revoked: Option<Denial>,
    ) -> RelayOutcome {
        let (bytes_from_client, bytes_to_client) = activity.bytes();
        RelayOutcome {
            bytes_from_client,
            bytes_to_client,
            closed_by,
            error,
            revoked,
        }
    }
}

/// What ends a relayed connection besides its two sides: nothing moving
/// for `idle_timeout`, `stop` (the end of the shutdown grace) cancelled,
/// or `revoked` resolving (the policy or a grant no longer admits it).
/// Shared by the plain relay and the protocol guards' relays.
pub struct Ends<'a, R> {
    pub idle_timeout: Duration,
    pub stop: &'a CancellationToken,
    pub revoked: R,
}

/// Copies bytes both ways until both sides are done or one of `ends`
/// comes.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    ends: Ends<'_, impl std::future::Future<Output = Denial>>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let Ends {
        idle_timeout,
        stop,
        revoked,
    } = ends;
    let activity = Activity::new();
    let mut client = Metered::client(client, activity.clone());
    let mut upstream = Metered::upstream(upstream, activity.clone());
    let mut revocation = None;
    let (closed_by, error) = tokio::select! {
        res = copy_bidirectional(&mut client, &mut upstream) => match res {
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
    RelayOutcome::new(&activity, closed_by, error, revocation)
}

/// One direction's buffer and progress.
struct Pipe {
    small: [u8; SMALL],
    big: Option<Box<[u8]>>,
    /// The bytes `pos..cap` of the current buffer are still to be written.
    pos: usize,
    cap: usize,
    in_big: bool,
    /// A small read came through the big buffer: give it back once written.
    release: bool,
    need_flush: bool,
    read_done: bool,
    done: bool,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            small: [0; SMALL],
            big: None,
            pos: 0,
            cap: 0,
            in_big: false,
            release: false,
            need_flush: false,
            read_done: false,
            done: false,
        }
    }

    /// Moves bytes from `r` to `w` until `r` is exhausted (then shuts `w`
    /// down) or one of them is not ready.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                let use_big = self.big.is_some();
                let slice: &mut [u8] = match self.big.as_mut() {
                    Some(b) => b,
                    None => &mut self.small,
                };
                let mut buf = ReadBuf::new(slice);
                match r.as_mut().poll_read(cx, &mut buf) {
                    Poll::Pending => {
                        if self.need_flush {
                            std::task::ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            (self.pos, self.cap, self.in_big) = (0, n, use_big);
                            if !use_big && n == SMALL {
                                // Bulk: read whole records from now on.
                                self.big = Some(vec![0; BIG].into_boxed_slice());
                            }
                            self.release = use_big && n < SMALL;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let data = if self.in_big {
                    &self.big.as_ref().expect("in use")[self.pos..self.cap]
                } else {
                    &self.small[self.pos..self.cap]
                };
                let n = std::task::ready!(w.as_mut().poll_write(cx, data))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.release {
                self.big = None;
                self.release = false;
            }
            if self.read_done {
                std::task::ready!(w.as_mut().poll_flush(cx))?;
                std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies both ways until both directions have seen EOF, half-closing each
/// write side as its source ends.
async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Box::new(Pipe::new());
    let mut b_to_a = Box::new(Pipe::new());
    std::future::poll_fn(|cx| {
        let ab = if a_to_b.done {
            Poll::Ready(Ok(()))
        } else {
            a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))
        };
        if let Poll::Ready(Err(e)) = ab {
            return Poll::Ready(Err(e));
        }
        let ba = if b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))
        };
        match (ab, ba) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}
