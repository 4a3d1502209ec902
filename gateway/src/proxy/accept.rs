//! Binding and accepting, for every listener (services and admin).
//!
//! An accept that fails must never spin: a failing `accept` stays "ready",
//! so retrying at once burns a core and, with a log line per failure, fills
//! the disk. Errors back off (5 ms doubling to 1 s) and are logged at most
//! once per [`crate::log_limit::INTERVAL`].
//!
//! Out of file descriptors (EMFILE/ENFILE), the connection waiting in the
//! accept queue cannot be taken, and would otherwise wait there until the
//! client gives up. A reserve descriptor is released to accept it and close
//! it at once, so excess clients are refused promptly instead.

use std::fs::File;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Binds `addr` with a listen queue of `backlog` (the kernel caps it at
/// `net.core.somaxconn`). SO_REUSEADDR like `TcpListener::bind`, so a
/// restart can rebind a port with connections in TIME_WAIT.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The process (EMFILE) or the system (ENFILE) is out of file descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Errors that concern one connection only (it was reset while queued):
/// the next accept is unaffected.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// One descriptor held back for shedding connections when out of them.
static RESERVE: Mutex<Option<File>> = Mutex::new(None);
/// Set while the reserve is not held (spent, or not yet opened).
static RESERVE_MISSING: AtomicBool = AtomicBool::new(true);

/// Opens the reserve descriptor if it is not held. Cheap when it is.
pub fn keep_reserve() {
    if !RESERVE_MISSING.load(Ordering::Relaxed) {
        return;
    }
    let mut reserve = RESERVE.lock().unwrap_or_else(PoisonError::into_inner);
    if reserve.is_none() {
        *reserve = File::open("/dev/null").ok();
    }
    RESERVE_MISSING.store(reserve.is_none(), Ordering::Relaxed);
}

fn take_reserve() -> Option<File> {
    let taken = RESERVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if taken.is_some() {
        RESERVE_MISSING.store(true, Ordering::Relaxed);
    }
    taken
}

/// Waits after failed accepts: 5 ms, doubling to 1 s; reset by a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(5);
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// How long to wait now; the wait after that is twice as long.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

pub enum Accepted {
    Conn(TcpStream, SocketAddr),
    /// Accepted and closed at once: moat is out of file descriptors.
    Shed {
        client: SocketAddr,
        error: String,
    },
}

/// Accepts on one listener with back-off and shedding.
pub struct Acceptor {
    listener: TcpListener,
    listen: SocketAddr,
    backoff: Backoff,
}

impl Acceptor {
    pub fn new(listener: TcpListener) -> Self {
        let listen = listener
            .local_addr()
            .expect("bound listener has an address");
        keep_reserve();
        Acceptor {
            listener,
            listen,
            backoff: Backoff::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The next connection, or the next one shed. Cancel-safe: dropping the
    /// future loses no accepted connection.
    pub async fn accept(&mut self) -> Accepted {
        loop {
            // The reserve is lost when a task claims it while it is
            // released: take it back the first time a descriptor is free.
            keep_reserve();
            let e = match self.listener.accept().await {
                Ok((socket, client)) => {
                    self.backoff.reset();
                    return Accepted::Conn(socket, client);
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => e,
            };
            if is_fd_exhaustion(&e) {
                if let Some(client) = self.shed().await {
                    self.backoff.reset();
                    crate::warn_limited!(listen = %self.listen, error = %e,
                        "out of file descriptors: refusing new connections (raise LimitNOFILE)");
                    return Accepted::Shed {
                        client,
                        error: e.to_string(),
                    };
                }
            }
            crate::warn_limited!(listen = %self.listen, error = %e, "accept failed; backing off");
            tokio::time::sleep(self.backoff.next_wait()).await;
        }
    }

    /// Frees the reserve descriptor, takes the connection waiting in the
    /// queue, closes it, and re-opens the reserve.
    async fn shed(&self) -> Option<SocketAddr> {
        drop(take_reserve()?);
        // Only what is queued now: never wait without the reserve.
        let taken = poll_fn(|cx| Poll::Ready(self.listener.poll_accept(cx))).await;
        let client = match taken {
            // Closed here, before anything else can claim the descriptor.
            Poll::Ready(Ok((socket, client))) => {
                drop(socket);
                Some(client)
            }
            _ => None,
        };
        keep_reserve();
        client
    }
}

#[cfg(test)]
mod tests;
