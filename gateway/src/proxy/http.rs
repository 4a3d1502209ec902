//! The L7 proxy for device web UIs: HTTP/1.1 and h2 from clients, HTTP/1.1
//! over a pooled client to the device. Runs after the same connection-level
//! chain and TLS termination as the L4 proxy, then per request: re-check the
//! source against the current policy, normalise the path, apply the request
//! controls, forward with clean headers, audit.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::Version;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::h2_guard::{self, H2Guard};
use super::relay::{Activity, Metered, RelayOutcome};
use super::wake::{race, Raced};
use crate::audit::{ClosedBy, ConnMeta};
use crate::controls::rate::Bucket;
use crate::controls::{self, ConnFacts, Denial, Principal, Reason};
use crate::policy::{ListenerId, Service};
use crate::runtime::{Runtime, ServiceKey};
use crate::upstream::{UpstreamClient, UpstreamError};
use record::{ABANDONED_LIMIT, ABANDONED_REFILL};
use request::handle;

pub use crate::upstream::{BoxError, ProxyBody};

/// One client connection's context, shared by its requests.
pub struct Session {
    pub rt: Arc<Runtime>,
    pub id: ListenerId,
    pub facts: ConnFacts,
    pub conn: ConnMeta,
    pub tls: bool,
    /// The client certificate's identity, when one was presented.
    pub principal: Option<Principal>,
    /// The address the client connected to (the listen address, or for
    /// 0.0.0.0 / `::` the one it reached): a name the service answers to.
    pub local: Option<IpAddr>,
}

/// Serves HTTP on an admitted (and TLS-terminated) client connection until
/// the client leaves, it idles out, the gateway stops, or `revoked` fires.
pub async fn serve<C>(
    client: C,
    service: &Service,
    session: Session,
    revoked: impl std::future::Future<Output = Denial>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = service
        .http
        .as_ref()
        .expect("an HTTP service has an HTTP policy");
    let activity = Activity::new();
    // Below hyper: h2 control-frame floods end with GOAWAY (h2_guard.rs).
    let (guarded, verdict) = H2Guard::new(Metered::client(client, activity.clone()));
    let io = TokioIo::new(guarded);
    let client_ip = session.conn.client.ip().to_canonical();
    let proto = if session.tls { "https" } else { "http" };
    let node = match client_ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("\"[{a}]\""),
    };
    let live = Arc::new(Live {
        resolved: std::sync::Mutex::new(None),
        forwarded_for: value(&client_ip.to_string()),
        forwarded_proto: HeaderValue::from_static(proto),
        forwarded_base: format!("for={node};proto={proto}"),
        requests: AtomicU64::new(0),
        allowed: session.rt.metrics.request_counter(
            &session.conn.device,
            &session.conn.service,
            Ok(()),
        ),
        activity: activity.clone(),
        idle_mark: AtomicU64::new(0),
        tunnels: TaskTracker::new(),
        cut: CancellationToken::new(),
        abandoned: std::sync::Mutex::new(Bucket::new(
            Instant::now(),
            ABANDONED_LIMIT as f64,
            ABANDONED_REFILL,
        )),
        abusive: CancellationToken::new(),
        users: std::sync::Mutex::new(Vec::new()),
        logged_out: CancellationToken::new(),
        client: client_ip,
    });
    let session = Arc::new(session);
    let svc = {
        let session = session.clone();
        let live = live.clone();
        hyper::service::service_fn(move |req| {
            let session = session.clone();
            let live = live.clone();
            // Boxed once here, the request's future is not moved again
            // by hyper or tokio (an h2 stream is a task of its own: spawned,
            // then its stage rewritten on completion).
            let handling = Box::pin(handle(req, session, live));
            async move { Ok::<_, Infallible>(handling.await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        // moat's own header limits answer 431 with an audit record; hyper's
        // are only the outer bound.
        .max_headers(http.max_headers + 16)
        // The read buffer must hold a request head up to hyper's outer
        // bound; the same figure caps what hyper buffers towards a slow
        // reader (400 KiB by default: most of a megabyte per connection).
        .max_buf_size((http.max_header_bytes * 2 + 8192).max(SERVER_BUF))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.max_concurrent_streams)
        .max_header_list_size(u32::try_from(http.max_header_bytes * 2).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): a client that keeps resetting
        // streams is disconnected.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        // What waits for a slow reader's window, per stream (400 KiB by
        // default), and what an upload may park in moat before the device
        // takes it (1 MiB per stream and per connection by default).
        .max_send_buf_size(H2_SEND_BUF)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW);
    let connection = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(connection);

    // Keep-alive idle, but never shorter than a request may legitimately wait.
    let idle = http
        .keepalive_timeout
        .max(http.response_timeout + Duration::from_secs(1));
    let rt = &session.rt;
    tokio::pin!(revoked);
    let signed_out = user_watch(&session, live.clone());
    tokio::pin!(signed_out);
    let mut revocation = None;
    // (In a block: the stop signals borrow `revoked` and `signed_out`,
    // which the tunnel wait below uses again.)
    let (mut closed_by, mut error) = {
        // Everything that may end the connection besides hyper, polled only
        // when one of its own wakers fires (proxy::wake), not on every read.
        let stop = async {
            tokio::select! {
                _ = activity.idle_expired(idle) => Ended::Idle,
                // hyper's header timer covers HTTP/1 heads only; this one also
                // covers an h2 preface and first HEADERS trickled in byte by byte.
                _ = first_request_overdue(&live, http.header_read_timeout) => Ended::FirstRequestOverdue,
                _ = rt.hard_stop.cancelled() => Ended::Shutdown,
                _ = live.abusive.cancelled() => Ended::Abusive,
                d = &mut revoked => Ended::Revoked(d),
                (d, _) = &mut signed_out => Ended::Revoked(d),
                _ = live.logged_out.cancelled() => Ended::LoggedOut,
            }
        };
        tokio::pin!(stop);
        match race(connection.as_mut(), stop.as_mut()).await {
            Raced::Main(Ok(())) => (ClosedBy::Client, None),
            Raced::Main(Err(e)) => classify_connection_error(e, &live),
            Raced::Stop(Ended::Idle) => (ClosedBy::IdleTimeout, None),
            Raced::Stop(Ended::FirstRequestOverdue) => {
                live.head_timed_out("no complete request in time".to_string())
            }
            Raced::Stop(Ended::Shutdown) => (ClosedBy::Shutdown, None),
            Raced::Stop(Ended::Abusive) => {
                let detail =
                    format!("over {ABANDONED_LIMIT} abandoned requests at once (rapid reset?)");
                if verdict.cut(detail.clone()) {
                    // The guard sends GOAWAY and fails hyper's IO within its
                    // linger; the extra second only bounds a stuck hyper.
                    let _ = tokio::time::timeout(
                        h2_guard::LINGER + Duration::from_secs(1),
                        connection.as_mut(),
                    )
                    .await;
                }
                (ClosedBy::ProtocolAbuse, Some(detail))
            }
            Raced::Stop(Ended::Revoked(d)) => {
                revocation = Some(d);
                (ClosedBy::Revoked, None)
            }
            Raced::Stop(Ended::LoggedOut) => {
                // The logout answer is on its way: let it (and only briefly
                // anything else) finish, then the connection ends.
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(LOGOUT_FLUSH, connection.as_mut()).await;
                revocation = Some(Denial::with_detail(
                    Reason::SessionRevoked,
                    "logged out on this connection",
                ));
                (ClosedBy::Revoked, None)
            }
        }
    };
    // hyper ends a cut connection with an I/O error, or the client may
    // idle first (it stopped reading): the abuse is why it was closed.
    if let Some(detail) = verdict.abuse() {
        if !matches!(closed_by, ClosedBy::Revoked | ClosedBy::Shutdown) {
            (closed_by, error) = (ClosedBy::ProtocolAbuse, Some(detail.to_string()));
        }
    }
    // A WebSocket upgrade hands the socket to a tunnel task; the connection
    // lasts as long as the tunnel does, and ends with it however it ends.
    let tunnels = &live.tunnels;
    tunnels.close();
    if closed_by == ClosedBy::Client && !tunnels.is_empty() {
        tokio::select! {
            _ = tunnels.wait() => {}
            _ = activity.idle_expired(idle) => closed_by = ClosedBy::IdleTimeout,
            _ = rt.hard_stop.cancelled() => closed_by = ClosedBy::Shutdown,
            d = &mut revoked => {
                revocation = Some(d);
                closed_by = ClosedBy::Revoked;
                error = None;
            }
            (d, _) = &mut signed_out => {
                revocation = Some(d);
                closed_by = ClosedBy::Revoked;
                error = None;
            }
        }
    }
    live.cut.cancel();
    tunnels.wait().await;
    RelayOutcome::new(&activity, closed_by, error, revocation)
}

/// Buffering towards slow clients (issue 10; docs/benchmarks.md, "Slow
/// readers"): moat reads from the device only as fast as the client takes
/// the response, holding at most about this much per connection (h1) or
/// stream (h2) on the way.
const SERVER_BUF: usize = 32 * 1024;
const H2_SEND_BUF: usize = 64 * 1024;
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 512 * 1024;

/// Why a client connection ended, when hyper did not end it itself.
enum Ended {
    Idle,
    FirstRequestOverdue,
    Shutdown,
    Abusive,
    Revoked(Denial),
    LoggedOut,
}

/// Resolves if no request has arrived `limit` after the connection opened.
async fn first_request_overdue(live: &Live, limit: Duration) {
    tokio::time::sleep(limit).await;
    if live.requests.load(Ordering::Relaxed) > 0 {
        std::future::pending::<()>().await;
    }
}

/// A connection's view of the policy in force, worked out once per policy
/// version rather than once per request.
struct Resolved {
    version: u64,
    service: Arc<Service>,
    /// The connection-level re-check against this policy.
    verdict: Result<(), Denial>,
    limiters: Arc<crate::controls::rate::Limiters>,
    /// `[auth]` of this policy version, for `mfa` services.
    auth: Option<Arc<crate::auth::AuthPolicy>>,
    /// Every `user_header` of this policy version.
    identity_headers: Arc<[http::HeaderName]>,
    client: UpstreamClient,
    authority: http::uri::Authority,
    host_rewrite: Option<HeaderValue>,
    /// The last checked host of this connection under this policy version
    /// (keep-alive requests repeat it): see [`HostMemo`].
    host_memo: std::sync::Mutex<Option<HostMemo>>,
}

/// A request's `Host` and target authority, what `check_host` made of them
/// and the `Forwarded` value moat sends with it. Both are functions of
/// exactly these bytes, the policy version (a `Resolved` lives for one) and
/// the connection, so a request with the same two values reuses them
/// instead of parsing the host again (docs/benchmarks.md, "Performance
/// (issue 15)"). Only allowed hosts are kept.
struct HostMemo {
    host_header: Option<HeaderValue>,
    authority: Option<http::uri::Authority>,
    host: Option<HeaderValue>,
    forwarded: HeaderValue,
}

impl HostMemo {
    /// Byte for byte (`Authority`'s own `==` ignores case).
    fn is_for(
        &self,
        host_header: Option<&HeaderValue>,
        authority: Option<&http::uri::Authority>,
    ) -> bool {
        self.host_header.as_ref().map(HeaderValue::as_bytes)
            == host_header.map(HeaderValue::as_bytes)
            && self.authority.as_ref().map(http::uri::Authority::as_str)
                == authority.map(http::uri::Authority::as_str)
    }
}

impl Live {
    /// A request-head deadline passed. Header timers also run between
    /// keep-alive requests: only a started-but-unfinished head (bytes read
    /// since the last answer) is a slow client; otherwise it is just idle.
    fn head_timed_out(&self, detail: String) -> (ClosedBy, Option<String>) {
        let (read, _) = self.activity.bytes();
        if read == self.idle_mark.load(Ordering::Relaxed) {
            (ClosedBy::IdleTimeout, None)
        } else {
            (ClosedBy::HeaderTimeout, Some(detail))
        }
    }

    /// The service behind this connection's listener in the current policy
    /// (`None` if it is gone, or is no longer an HTTP service).
    fn resolve(&self, s: &Session) -> Option<Arc<Resolved>> {
        let policy = s.rt.policy.borrow().clone();
        let mut cache = self
            .resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = cache.as_ref().filter(|r| r.version == policy.version) {
            return Some(r.clone());
        }
        let service = policy.service_for(&s.id)?.clone();
        let http = service.http.as_ref()?;
        let authority: http::uri::Authority = if service.upstream.is_none() {
            // A portal: nothing is ever sent upstream (phase 4 answers all).
            http::uri::Authority::from_static("portal.moat.invalid")
        } else {
            service.upstream.to_string().parse().ok()?
        };
        let resolved = Arc::new(Resolved {
            version: policy.version,
            verdict: controls::recheck(Some(&service), &s.facts, s.rt.grants()),
            limiters: s
                .rt
                .state(&ServiceKey::of(&service))
                .limiters(&service.limits),
            client: s.rt.http_client(&service),
            auth: policy.auth.clone(),
            identity_headers: policy.identity_headers.clone(),
            authority,
            host_rewrite: http.host_rewrite.as_deref().map(value),
            host_memo: std::sync::Mutex::new(None),
            service,
        });
        *cache = Some(resolved.clone());
        Some(resolved)
    }
}

/// What a client connection shares with its requests.
struct Live {
    resolved: std::sync::Mutex<Option<Arc<Resolved>>>,
    /// `X-Forwarded-For`, `X-Forwarded-Proto` and the start of `Forwarded`:
    /// fixed for the connection.
    forwarded_for: HeaderValue,
    forwarded_proto: HeaderValue,
    forwarded_base: String,
    /// Requests seen so far.
    requests: AtomicU64,
    /// `moat_http_requests_total{outcome="allowed"}` for this service.
    allowed: prometheus_client::metrics::counter::Counter,
    activity: Arc<Activity>,
    /// Client bytes read when the last response finished: no new bytes
    /// since means the connection is merely idle between requests.
    idle_mark: AtomicU64,
    /// WebSocket tunnels of this connection.
    tunnels: TaskTracker,
    /// Cancelled when the connection ends for any reason: tunnels stop too.
    cut: CancellationToken,
    abandoned: std::sync::Mutex<Bucket>,
    /// Cancelled when the client abandons too many requests.
    abusive: CancellationToken,
    /// Every user a request of this connection was authorized for, with
    /// their session generation then: re-checked whenever the policy or
    /// the identity store changes ([`user_watch`]).
    users: std::sync::Mutex<Vec<(Arc<str>, u64)>>,
    /// Cancelled when a logout's answer has been sent: the connection ends.
    logged_out: CancellationToken,
    client: IpAddr,
}

impl Live {
    fn users(&self) -> Vec<(Arc<str>, u64)> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Notes a user a request of this connection was authorized for, with
    /// their session generation; `false` (refuse the request) past
    /// [`MAX_USERS_PER_CONNECTION`] distinct users.
    fn saw_user(&self, user: &crate::auth::User, generation: u64) -> bool {
        let mut users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(seen) = users.iter_mut().find(|(name, _)| *name == user.name) {
            seen.1 = generation;
            return true;
        }
        if users.len() >= MAX_USERS_PER_CONNECTION {
            return false;
        }
        users.push((user.name.clone(), generation));
        true
    }

    /// The user is logging out on this connection: it stops watching them
    /// (their sessions are about to end by their own request), and the
    /// connection closes once the answer has gone out ([`Self::logged_out`]),
    /// so that no other stream of it goes on as them.
    fn logging_out(&self, user: &str) {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(name, _)| &**name != user);
    }
}

/// The h2 library's own flood limits (CONTINUATION frames without end,
/// streams reset before they are served, pending resets): it ends such a
/// connection with GOAWAY `ENHANCE_YOUR_CALM`. That is the client's abuse,
/// audited and counted as `protocol_abuse` like the floods moat's own
/// guard cuts, not a gateway error.
fn h2_abuse(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let calm = h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
            return (calm && h2.is_go_away() && !h2.is_remote())
                .then(|| format!("h2 flood limit: {h2}"));
        }
        source = err.source();
    }
    None
}

/// Distinct users one connection may carry requests for (a shared
/// workstation's browser, a few people in turn); more is refused.
const MAX_USERS_PER_CONNECTION: usize = 16;

/// How long the other streams of a connection whose user logged out may
/// go on while the logout answer is flushed.
const LOGOUT_FLUSH: Duration = Duration::from_secs(1);

fn classify_connection_error(e: BoxError, live: &Live) -> (ClosedBy, Option<String>) {
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_timeout() {
            return live.head_timed_out(h.to_string());
        }
        if h.is_incomplete_message() || h.is_canceled() {
            return (ClosedBy::Client, None);
        }
    }
    if let Some(detail) = h2_abuse(e.as_ref()) {
        return (ClosedBy::ProtocolAbuse, Some(detail));
    }
    // The client went away: a TLS socket closed without close_notify, or
    // closed with data still unread, which the kernel turns into a reset
    // (browsers drop spare connections both ways). HTTP frames its own
    // messages, so that is an ordinary close, not an error to alert on;
    // device failures are per request and never end up here.
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe))
        {
            return (ClosedBy::Client, None);
        }
        source = err.source();
    }
    (ClosedBy::Error, Some(e.to_string()))
}

/// Reads and drops a small request body before a refusal. An h2 client
/// whose body is left unread gets the answer followed by RST_STREAM, which
/// some clients (curl 7.88) report as an error instead of showing the 403.
/// Boxed: a refusal's path, kept out of the request future's size
/// (docs/benchmarks.md, "Performance (issue 15)").
fn drain_small_body(body: Incoming) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    const LIMIT: usize = 64 * 1024;
    Box::pin(async move {
        let collect = Limited::new(body, LIMIT).collect();
        let _ = tokio::time::timeout(Duration::from_secs(1), collect).await;
    })
}

/// Resolves when a newly published policy would refuse the upgrade request
/// (`GET path`) that opened a WebSocket tunnel: a tunnel is one long
/// request, and a new deny rule must reach it like a new request.
fn rule_watch(s: &Session, path: String) -> impl std::future::Future<Output = ()> + Send + 'static {
    let id = s.id.clone();
    let refused = super::tcp::refused_by_change(&s.rt, move |current| {
        match current.service_for(&id).and_then(|svc| svc.http.as_ref()) {
            None => Err(Denial::new(Reason::ServiceRemoved)),
            Some(http) => controls::request::check_rules(http, &http::Method::GET, &path),
        }
    });
    async move {
        refused.await;
    }
}

/// Resolves when a user a request of this connection was made for may no
/// longer use the service: removed from the users file, disabled, taken
/// out of the service's users or groups, or their sessions ended (a
/// logout elsewhere, new credentials). The whole connection is cut, not
/// just their next request: its other h2 streams may be theirs.
fn user_watch(s: &Session, live: Arc<Live>) -> impl std::future::Future<Output = (Denial, u64)> {
    let id = s.id.clone();
    let store = s.rt.store.clone();
    super::tcp::refused_by_change(&s.rt, move |current| {
        let Some(service) = current.service_for(&id) else {
            return Ok(()); // the connection-level re-check says so
        };
        for (name, generation) in live.users() {
            let user = current.auth.as_ref().and_then(|a| a.users.get(&name));
            let Some(user) = user else {
                let detail = format!("user {name} is no longer in the users file");
                return Err(Denial::with_detail(Reason::SessionRevoked, detail));
            };
            if crate::auth::session_generation(&*store, user) != generation {
                let detail = format!("the sessions of user {name} were ended");
                return Err(Denial::with_detail(Reason::SessionRevoked, detail));
            }
            controls::authorize(service, live.client, controls::Asking::Request(Some(user)))?;
        }
        Ok(())
    })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    connection_upgrade && websocket
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn classify_upstream_error(e: &UpstreamError, service: &Service) -> Denial {
    // The whole cause chain: "tcp connect error: Connection refused", or a
    // body error behind hyper's "error from user's Body stream".
    let mut detail = format!("{}: {e}", service.upstream);
    let mut timed_out = matches!(
        e,
        UpstreamError::ConnectTimeout(_) | UpstreamError::ResponseTimeout(_)
    );
    // Out of descriptors is moat's own failure, not the device's.
    let mut fd_exhausted = false;
    if let UpstreamError::Connect(io) | UpstreamError::Tls(io) = e {
        timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        fd_exhausted |= super::accept::is_fd_exhaustion(io);
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        // The client's body failed: its fault, never the device's.
        if let Some(b) = err.downcast_ref::<super::client_body::ClientBodyError>() {
            return b.0.clone();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            fd_exhausted |= super::accept::is_fd_exhaustion(io);
        }
        detail.push_str(&format!(": {err}"));
        source = err.source();
    }
    let reason = if fd_exhausted {
        Reason::FdExhausted
    } else if timed_out {
        Reason::UpstreamTimeout
    } else {
        Reason::UpstreamUnreachable
    };
    Denial::with_detail(reason, detail)
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

mod portal;
mod record;
mod request;

#[cfg(test)]
mod tests;
