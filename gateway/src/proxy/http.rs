//! The L7 proxy for device web UIs: HTTP/1.1 and h2 from clients, HTTP/1.1
//! over a pooled client to the device. Runs after the same connection-level
//! chain and TLS termination as the L4 proxy, then per request: re-check the
//! source against the current policy, normalise the path, apply the request
//! controls, forward with clean headers, audit.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::h2_guard::{self, H2Guard};
use super::headers::{harden, strip_hop_by_hop};
use super::relay::{Activity, Metered, RelayOutcome};
use crate::audit::{ClosedBy, ConnMeta, Event};
use crate::controls::rate::Bucket;
use crate::controls::{self, ConnFacts, Denial, Principal, Reason};
use crate::policy::{ListenerId, Service};
use crate::runtime::{Runtime, ServiceKey};
use crate::upstream::{UpstreamClient, UpstreamError};

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
    });
    let session = Arc::new(session);
    let svc = {
        let session = session.clone();
        let live = live.clone();
        hyper::service::service_fn(move |req| {
            let session = session.clone();
            let live = live.clone();
            async move { Ok::<_, Infallible>(handle(req, session, live).await) }
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
    let mut revocation = None;
    let (mut closed_by, mut error) = tokio::select! {
        res = connection.as_mut() => match res {
            Ok(()) => (ClosedBy::Client, None),
            Err(e) => classify_connection_error(e, &live),
        },
        _ = activity.idle_expired(idle) => (ClosedBy::IdleTimeout, None),
        // hyper's header timer covers HTTP/1 heads only; this one also
        // covers an h2 preface and first HEADERS trickled in byte by byte.
        _ = first_request_overdue(&live, http.header_read_timeout) => {
            live.head_timed_out("no complete request in time".to_string())
        }
        _ = rt.hard_stop.cancelled() => (ClosedBy::Shutdown, None),
        _ = live.abusive.cancelled() => {
            let detail = format!("over {ABANDONED_LIMIT} abandoned requests at once (rapid reset?)");
            if verdict.cut(detail.clone()) {
                // The guard sends GOAWAY and fails hyper's IO within its
                // linger; the extra second only bounds a stuck hyper.
                let _ = tokio::time::timeout(h2_guard::LINGER + Duration::from_secs(1), connection.as_mut()).await;
            }
            (ClosedBy::ProtocolAbuse, Some(detail))
        }
        d = &mut revoked => {
            revocation = Some(d);
            (ClosedBy::Revoked, None)
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
    client: UpstreamClient,
    authority: http::uri::Authority,
    host_rewrite: Option<HeaderValue>,
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
        let authority: http::uri::Authority = service.upstream.to_string().parse().ok()?;
        let resolved = Arc::new(Resolved {
            version: policy.version,
            verdict: controls::recheck(Some(&service), &s.facts),
            limiters: s
                .rt
                .state(&ServiceKey::of(&service))
                .limiters(&service.limits),
            client: s.rt.http_client(&service),
            authority,
            host_rewrite: http.host_rewrite.as_deref().map(value),
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
}

fn classify_connection_error(e: BoxError, live: &Live) -> (ClosedBy, Option<String>) {
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_timeout() {
            return live.head_timed_out(h.to_string());
        }
        if h.is_incomplete_message() || h.is_canceled() {
            return (ClosedBy::Client, None);
        }
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

async fn handle(
    mut req: Request<Incoming>,
    s: Arc<Session>,
    live: Arc<Live>,
) -> Response<ProxyBody> {
    live.requests.fetch_add(1, Ordering::Relaxed);
    let mut record = RequestRecord {
        session: s.clone(),
        live: live.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        path: None,
        version: version_name(req.version()),
        started: Instant::now(),
        audit_allowed: true,
        done: false,
    };
    if let Err(d) = controls::request::check_method(req.method()) {
        return record.deny(d);
    }
    // The policy in force now, not the one the connection started under
    // (resolved once per policy version, not per request).
    let resolved = live.resolve(&s);
    let Some(current) = resolved.as_ref() else {
        return record.deny(Denial::new(Reason::ServiceRemoved));
    };
    if let Err(d) = &current.verdict {
        return record.deny(d.clone());
    }
    let service = &current.service;
    let http = service
        .http
        .as_ref()
        .expect("resolve() only keeps HTTP services");
    record.audit_allowed = http.audit_allowed;
    // Only a name of this service reaches the device, in Host or any
    // forwarding header.
    let host = match controls::request::check_host(
        req.version(),
        req.uri(),
        req.headers(),
        &http.hosts,
        s.local,
    ) {
        Ok(h) => h,
        Err(d) => return record.deny(d),
    };
    let uri = req.uri().clone();
    let path = match controls::request::normalize_path(uri.path()) {
        Ok(p) => p,
        Err(d) => return record.deny(d),
    };
    if let std::borrow::Cow::Owned(p) = &path {
        record.path = Some(p.clone());
    }
    let checked = controls::request::check_request(http, req.method(), &path, req.headers())
        .and_then(|()| {
            controls::request::check_overrides(http, req.method(), &path, req.uri(), req.headers())
        });
    if let Err(d) = checked {
        if d.reason == Reason::RequestDenied {
            drain_small_body(req.into_body()).await;
        }
        return record.deny(d);
    }
    // Shield the device: rates first (cheap, no waiting), then a slot among
    // the requests it may have in flight, queueing briefly for one.
    let limiters = &current.limiters;
    if let Err(d) = limiters.check_request(s.conn.client.ip(), s.principal.as_ref()) {
        return record.deny(d);
    }
    let permit = match limiters.in_flight() {
        None => None,
        Some(slots) => {
            match tokio::time::timeout(service.limits.queue_timeout, slots.acquire_owned()).await {
                Ok(Ok(p)) => Some(p),
                _ => {
                    let limit = service.limits.max_in_flight.unwrap_or_default();
                    let mut d =
                        Denial::with_detail(Reason::DeviceBusy, format!("max_in_flight {limit}"));
                    d.retry_after = Some(Duration::from_secs(1));
                    return record.deny(d);
                }
            }
        }
    };

    let websocket = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = upstream_request(req, current, &live, &path, host, websocket);
    let client = current.client.clone();
    let response_timeout = http.response_timeout;
    let capped = permit.is_some();
    let exchange = async move {
        let result = tokio::time::timeout(response_timeout, client.request(upstream_req)).await;
        (result, permit)
    };
    // With an in-flight cap, the exchange runs in its own task that owns
    // the slot: a client that gives up (hyper drops this handler) must not
    // free a slot while its request is still at the device.
    let (result, permit) = if capped {
        match tokio::spawn(exchange).await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    } else {
        exchange.await
    };
    let mut resp = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return record.deny(classify_upstream_error(&e, service)),
        Err(_) => {
            let detail = format!(
                "{}: no response within {:?}",
                service.upstream, response_timeout
            );
            return record.deny(Denial::with_detail(Reason::UpstreamTimeout, detail));
        }
    };

    let status = resp.status();
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, status) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let cut = live.cut.clone();
        let rules = rule_watch(&s, path.into_owned());
        live.tunnels.spawn(async move {
            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
                tokio::select! {
                    _ = copy => {}
                    _ = cut.cancelled() => {}
                    _ = rules => {}
                }
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(
        &mut parts.headers,
        status == StatusCode::SWITCHING_PROTOCOLS,
        false,
    );
    if http.hardening_headers {
        harden(&mut parts.headers, s.tls);
    }
    let body = AuditedBody {
        inner: body.map_err(BoxError::from).boxed(),
        bytes: 0,
        record: Some((record, status.as_u16())),
        _permit: permit,
    };
    Response::from_parts(parts, body.boxed())
}

/// Reads and drops a small request body before a refusal. An h2 client
/// whose body is left unread gets the answer followed by RST_STREAM, which
/// some clients (curl 7.88) report as an error instead of showing the 403.
async fn drain_small_body(body: Incoming) {
    const LIMIT: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), Limited::new(body, LIMIT).collect()).await;
}

/// Resolves when a newly published policy would refuse the upgrade request
/// (`GET path`) that opened a WebSocket tunnel: a tunnel is one long
/// request, and a new deny rule must reach it like a new request.
fn rule_watch(s: &Session, path: String) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (policy, id) = (s.rt.policy.clone(), s.id.clone());
    async move {
        super::tcp::refused_by_policy(policy, move |current| {
            match current.service_for(&id).and_then(|svc| svc.http.as_ref()) {
                None => Err(Denial::new(Reason::ServiceRemoved)),
                Some(http) => controls::request::check_rules(http, &http::Method::GET, &path),
            }
        })
        .await;
    }
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request the device receives. Whatever the client wrote as target
/// (origin-form, absolute-form naming another host, h2 `:authority`), it
/// goes to this service's upstream and nowhere else: never an open proxy.
fn upstream_request(
    req: Request<Incoming>,
    current: &Resolved,
    live: &Live,
    path: &str,
    host: Option<HeaderValue>,
    websocket: bool,
) -> Request<ProxyBody> {
    let http = current.service.http.as_ref().expect("an HTTP service");
    let (mut parts, body) = req.into_parts();
    let from_h2 = parts.version == Version::HTTP_2;
    // The normalised path, the client's query, this service's device.
    let path_and_query = match (parts.uri.path_and_query(), parts.uri.query()) {
        (Some(pq), _) if pq.path() == path => pq.clone(),
        (_, Some(q)) => format!("{path}?{q}")
            .parse()
            .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
        (_, None) => path
            .parse()
            .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
    };
    // Origin-form: the device is named by the connection, not the target.
    parts.uri = http::Uri::from(path_and_query);
    parts.version = Version::HTTP_11;

    let headers = &mut parts.headers;
    // moat states who the client is and what it asked for; nothing the
    // client sent about that survives (proxy::headers has the list).
    strip_hop_by_hop(headers, websocket, true);
    if from_h2 {
        super::headers::join_cookie_crumbs(headers);
    }
    headers.insert(X_FORWARDED_FOR, live.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, live.forwarded_proto.clone());
    let forwarded = super::headers::forwarded(&live.forwarded_base, host.as_ref());
    headers.insert(header::FORWARDED, forwarded);
    // `host` passed `check_host`: one of this service's names.
    if let Some(host) = &host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    let host = match (&current.host_rewrite, host) {
        (Some(rewrite), _) => rewrite.clone(),
        (None, Some(validated)) => validated,
        (None, None) => value(current.authority.as_str()),
    };
    headers.insert(header::HOST, host);

    let body = if websocket {
        Empty::<Bytes>::new().map_err(BoxError::from).boxed()
    } else {
        super::client_body::ClientBody::new(body, http.body_limits()).boxed()
    };
    Request::from_parts(parts, body)
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn classify_upstream_error(e: &UpstreamError, service: &Service) -> Denial {
    // The whole cause chain: "tcp connect error: Connection refused", or a
    // body error behind hyper's "error from user's Body stream".
    let mut detail = format!("{}: {e}", service.upstream);
    let mut timed_out = matches!(e, UpstreamError::ConnectTimeout(_));
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

/// What the audit record of one request needs, until its response ends.
struct RequestRecord {
    session: Arc<Session>,
    live: Arc<Live>,
    method: http::Method,
    uri: http::Uri,
    /// The normalised path, when it differs from the request's.
    path: Option<String>,
    /// Set once the record is written; a record dropped unwritten is a
    /// request the client abandoned (or an h2 stream it reset).
    done: bool,
    version: &'static str,
    started: Instant,
    audit_allowed: bool,
}

impl RequestRecord {
    /// Answers with the short error page for `denial`, and audits it.
    fn deny(self, denial: Denial) -> Response<ProxyBody> {
        let status =
            StatusCode::from_u16(denial.reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        let text = format!(
            "{} {}\nreason: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            denial.reason
        );
        let len = text.len() as u64;
        let mut resp = Response::new(Full::new(Bytes::from(text)).map_err(BoxError::from).boxed());
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "x-moat-reason",
            HeaderValue::from_static(denial.reason.as_str()),
        );
        if let Some(wait) = denial.retry_after {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        if denial.reason == Reason::ConnectRefused {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
            );
        }
        self.finish(status.as_u16(), len, Some(denial));
        resp
    }

    fn finish(mut self, status: u16, response_bytes: u64, denial: Option<Denial>) {
        self.write(status, response_bytes, denial);
    }

    fn write(&mut self, status: u16, response_bytes: u64, denial: Option<Denial>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let (read, _) = self.live.activity.bytes();
        self.live.idle_mark.store(read, Ordering::Relaxed);
        let s = &self.session;
        match &denial {
            // The connection's counter handle: no label allocation per request.
            None => self.live.allowed.inc(),
            Some(d) => {
                s.rt.metrics
                    .request_counter(&s.conn.device, &s.conn.service, Err(d.reason))
                    .inc()
            }
        };
        if denial.is_none() && !self.audit_allowed {
            return;
        }
        let event = Event::HttpRequest {
            conn: s.conn.clone(),
            method: self.method.to_string(),
            path: match self.path.take() {
                Some(p) => p,
                None if self.method == http::Method::CONNECT => self.uri.to_string(),
                None => self.uri.path().to_string(),
            },
            version: self.version,
            status,
            response_bytes,
            duration_ms: self.started.elapsed().as_millis() as u64,
            decision: if denial.is_some() {
                "denied"
            } else {
                "allowed"
            },
            reason: denial.as_ref().map(|d| d.reason),
            detail: denial.as_ref().and_then(|d| d.detail.clone()),
            principal: s.principal.clone(),
        };
        match &denial {
            None => s.rt.audit.record(event),
            Some(d) => {
                if s.rt.audit.record_denial(event) {
                    super::log_device_failure(&s.conn, d);
                }
            }
        }
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // 499, as nginx logs it: the client went away before the answer
        // (an h2 stream reset or a connection gone mid-body ends the
        // handler here). The client's doing: never counted as allowed, nor
        // as a device failure.
        let gone = Denial::new(Reason::ClientAborted);
        self.write(CLIENT_CLOSED_REQUEST, 0, Some(gone));
        // Browsers cancel a request now and then; a client that cancels
        // them by the hundred is resetting streams to make the device work
        // for nothing (CVE-2023-44487). hyper's own limit only counts
        // streams reset before they are accepted.
        let over = !self
            .live
            .abandoned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(Instant::now());
        if over {
            self.live.abusive.cancel();
        }
    }
}

/// Abandoned (cancelled or reset) requests one connection may make at
/// once; the allowance comes back at `ABANDONED_REFILL` per second. A
/// browser on a long-lived connection abandons a few now and then (a page
/// left while its requests wait on a slow device), hundreds in a day;
/// rapid reset abandons thousands a second.
const ABANDONED_LIMIT: u64 = 100;
const ABANDONED_REFILL: f64 = 1.0;

const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A response body that counts what reaches the client and writes the
/// request's audit record when it ends (or the client goes away).
struct AuditedBody {
    inner: ProxyBody,
    bytes: u64,
    record: Option<(RequestRecord, u16)>,
    /// The device's in-flight slot, held until the response is delivered.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl AuditedBody {
    fn finish(&mut self) {
        if let Some((record, status)) = self.record.take() {
            record.finish(status, self.bytes, None);
        }
    }
}

impl Drop for AuditedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests;
