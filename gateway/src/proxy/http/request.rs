//! One request through an L7 service, in named phases. The order is the
//! contract (docs/architecture.md, "Request phases"); each phase may end
//! the request with a typed [`Denial`], which the audit record, the
//! metrics and the error page share.
//!
//! 1. **admit**: the method (never CONNECT), then the policy in force now:
//!    the service is still there and still admits this connection, and
//!    (`on_audit_failure = "refuse"`) the audit trail is being written.
//! 2. **host**: `Host` / `:authority` names this service.
//! 3. **path**: normalised; forms that servers read differently refused.
//! 4. **portal** (`mfa` services): `/.moat/…` is answered by moat itself
//!    and never reaches the device; on a `portal` service every other
//!    path is sent to `/.moat/session`.
//! 5. **authenticate** (`mfa` services): the session cookie names the user.
//! 6. **authorize**: [`controls::authorize`], the step also run at accept
//!    and on every re-check: the source, then the user.
//! 7. **rules**: method and path rules under every reading, and the
//!    method- and URL-override headers.
//! 8. **limits**: rates per client and per principal, then a slot among
//!    the requests the device may have in flight.
//! 9. **upstream request**: header hygiene ([`crate::proxy::headers`]),
//!    forwarding headers, the user header; moat's cookies removed.
//! 10. **exchange**: the device answers within `response_timeout`.
//! 11. **response**: hop-by-hop headers removed, hardening headers and a
//!     refreshed session cookie added.
//! 12. **record**: the audit record, written when the body ends
//!     ([`super::record`]).
//!
//! [`handle`] records and answers; [`phases`] runs the checks, each a `?`.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use super::portal::{self, SignedIn};
use super::record::{AuditedBody, RequestRecord};
use super::{
    classify_upstream_error, drain_small_body, is_upgrade, rule_watch, value, BoxError, HostMemo,
    Live, ProxyBody, Resolved, Session,
};
use crate::auth::AccessMode;
use crate::controls::{self, Asking, Denial, Principal, Reason};
use crate::proxy::headers::{clean_response, strip_hop_by_hop};
use crate::upstream::DeviceBody;

/// How a request ends before or instead of the device answering.
pub(super) enum Stop {
    /// Refused: the short error page for the reason.
    Deny(Denial),
    /// Refused with moat's own answer (a redirect to the login page).
    DenyWith(Denial, Response<ProxyBody>),
    /// Answered by moat (a portal page).
    Answer(Response<ProxyBody>),
}

impl From<Denial> for Stop {
    fn from(d: Denial) -> Stop {
        Stop::Deny(d)
    }
}

/// The outer handler: runs the phases, then records and answers.
///
/// Not an `async fn`, like the other steps a request's future holds
/// (`phases`, `exchange`, `UpstreamClient::request`): an async fn's future
/// keeps each argument twice, as captured and as moved into the body
/// (rust-lang/rust#62958), where an `async move` block uses what it
/// captured in place. The request is 264 bytes; the whole future is
/// copied into its box once per request (docs/benchmarks.md, "Fourth
/// pass").
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(super) fn handle(
    req: Request<Incoming>,
    s: Arc<Session>,
    live: Arc<Live>,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        live.requests.fetch_add(1, Ordering::Relaxed);
        let mut record = RequestRecord::new(&req, s.clone(), live.clone());
        let head = req.method() == http::Method::HEAD;
        let resp = match phases(req, &s, &live, &mut record).await {
            Ok(proxied) => return proxied.into_response(record),
            Err(Stop::Deny(d)) => record.deny(d),
            Err(Stop::DenyWith(d, resp)) => record.deny_with(d, resp),
            Err(Stop::Answer(resp)) => record.answer(resp),
        };
        if head {
            // moat's own answers to HEAD carry no body (hyper's h2 server
            // would send it, and clients reset the stream).
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, Empty::new().map_err(BoxError::from).boxed());
        }
        resp
    }
}

/// The device's answer, on its way to the client.
pub(super) struct Proxied {
    resp: Response<DeviceBody>,
    permit: Option<OwnedSemaphorePermit>,
    /// A refreshed session cookie to set.
    set_cookie: Option<HeaderValue>,
    hardening: bool,
    tls: bool,
}

impl Proxied {
    /// Phase 11, then phase 12 armed: the record is written when the body
    /// ends.
    fn into_response(self, record: RequestRecord) -> Response<ProxyBody> {
        let status = self.resp.status();
        let (mut parts, body) = self.resp.into_parts();
        clean_response(
            &mut parts.headers,
            status == StatusCode::SWITCHING_PROTOCOLS,
            self.hardening.then_some(self.tls),
            portal::MOAT_COOKIES,
        );
        if let Some(cookie) = self.set_cookie {
            parts.headers.append(header::SET_COOKIE, cookie);
        }
        let body = AuditedBody {
            inner: body,
            bytes: 0,
            record: Some((record, status.as_u16())),
            _permit: self.permit,
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// Phases 1 to 10 (see the module comment), each check a `?`. (Not an
/// `async fn`: see `handle`.)
#[allow(clippy::manual_async_fn)] // on purpose: see `handle`
fn phases<'a>(
    mut req: Request<Incoming>,
    s: &'a Arc<Session>,
    live: &'a Arc<Live>,
    record: &'a mut RequestRecord,
) -> impl Future<Output = Result<Proxied, Stop>> + 'a {
    async move {
        // 1. admit: the policy in force now, not the one the connection
        // started under (resolved once per policy version, not per request).
        controls::request::check_method(req.method())?;
        let current = live
            .resolve(s)
            .ok_or_else(|| Denial::new(Reason::ServiceRemoved))?;
        current.verdict.clone()?;
        let service = &current.service;
        controls::audit_gate(service, s.rt.audit.writable())?;
        let http = service
            .http
            .as_ref()
            .expect("resolve() only keeps HTTP services");
        record.audit_allowed = http.audit_allowed;

        // 2. host: only a name of this service reaches the device, in Host or
        // any forwarding header.
        let (host, forwarded) = checked_host(&current, &req, s, live)?;

        // 3. path
        let uri = req.uri().clone();
        let path = controls::request::normalize_path(uri.path())?;
        if let std::borrow::Cow::Owned(p) = &path {
            record.path = Some(p.clone());
        }

        // 4. portal and 5. authenticate, on `mfa` services only.
        let signed_in = match &service.access_mode {
            // (Grants are for tcp services: never an http one.)
            AccessMode::Network | AccessMode::Grant(_) => None,
            AccessMode::Mfa(rule) => {
                // The client's request rate first: the portal and the
                // session check must not be a way round it.
                current.limiters.check_client_request(s.conn.client.ip())?;
                let auth = current
                    .auth
                    .as_deref()
                    .expect("an mfa service compiles only with [auth]");
                if portal::is_portal_path(&path) {
                    let portal = portal::Portal {
                        s,
                        live,
                        auth,
                        rule,
                        host: host.as_ref(),
                    };
                    // Boxed: the portal's pages (a login hashes a password) are
                    // a large future most requests never enter.
                    let answer = Box::pin(portal::serve(req, &path, &portal, record)).await;
                    return Err(answer);
                }
                if service.protocol == crate::config::schema::Protocol::Portal {
                    // A portal proxies nothing: every other path leads home.
                    drain_small_body(req.into_body()).await;
                    return Err(Stop::Answer(portal::to_home()));
                }
                match portal::authenticate(req.headers(), s, auth) {
                    Ok(signed_in) => Some(signed_in),
                    Err(problem) => {
                        let stop = portal::sign_in_first(&req, s, problem);
                        // An unread h2 body would follow the answer with a reset.
                        drain_small_body(req.into_body()).await;
                        return Err(stop);
                    }
                }
            }
        };
        if let Some(SignedIn { user, .. }) = &signed_in {
            record.principal = Some(Principal::user(user.name.clone()));
        }

        // 6. authorize: the one step, now with the user; then the connection
        // watches the user (user_watch), and a logout that came in between
        // is caught by checking the generation once more.
        let authorized = controls::authorize(
            service,
            s.conn.client.ip(),
            Asking::Request(signed_in.as_ref().map(|u| &*u.user)),
        )
        .and_then(|_| match &signed_in {
            Some(SignedIn { user, claims, .. }) => {
                if !live.saw_user(user, claims.generation) {
                    let detail = "too many users on one connection";
                    return Err(Denial::with_detail(Reason::AuthRequired, detail));
                }
                if crate::auth::ended_since(&*s.rt.store, &user.name, claims.generation) {
                    return Err(Denial::with_detail(Reason::SessionRevoked, "session ended"));
                }
                Ok(())
            }
            None => Ok(()),
        });
        if let Err(d) = authorized {
            drain_small_body(req.into_body()).await;
            return Err(d.into());
        }

        // 7. rules
        let checked =
            controls::request::check_request(http, req.method(), &path, req.uri(), req.headers());
        if let Err(d) = checked {
            if d.reason == Reason::RequestDenied {
                drain_small_body(req.into_body()).await;
            }
            return Err(d.into());
        }

        // 8. limits: rates first (cheap, no waiting), then a slot among the
        // requests the device may have in flight, queueing briefly for one.
        match service.access_mode {
            // The client's rate was charged before the portal (phase 4).
            AccessMode::Mfa(_) => current
                .limiters
                .check_principal_and_device(record.principal.as_ref())?,
            AccessMode::Network | AccessMode::Grant(_) => current
                .limiters
                .check_request(s.conn.client.ip(), record.principal.as_ref())?,
        }
        let permit = in_flight_slot(&current).await?;

        // 9. upstream request
        let websocket = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let user_header = match (&service.access_mode, &signed_in) {
            (AccessMode::Mfa(rule), Some(signed_in)) => rule
                .user_header
                .as_ref()
                .map(|h| (h, value(&signed_in.user.name))),
            _ => None,
        };
        let upstream_req = upstream_request(
            req,
            &current,
            live,
            &path,
            (host, forwarded),
            websocket,
            user_header,
        );

        // 10. exchange
        let mut resp = exchange(&current, upstream_req, permit).await?;
        let (resp_ok, permit) = (&mut resp.0, resp.1);
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, resp_ok.status())
        {
            tunnel(s, live, client_upgrade, resp_ok, path.into_owned());
        }
        Ok(Proxied {
            resp: resp.0,
            permit,
            set_cookie: signed_in.and_then(|s| s.refreshed),
            hardening: http.hardening_headers,
            tls: s.tls,
        })
    }
}

/// Phase 2: the validated host (`None` for an HTTP/1.0 request without
/// one) and the `Forwarded` value that names it, from the connection's
/// memo when the request repeats the last one's `Host` and target.
fn checked_host(
    current: &Resolved,
    req: &Request<Incoming>,
    s: &Session,
    live: &Live,
) -> Result<(Option<HeaderValue>, HeaderValue), Denial> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let host_header = values.next();
    let authority = req.uri().authority();
    // One `Host` at most (more is refused below), and something to key
    // on: without either, the answer depends on the HTTP version.
    let memo_key = values.next().is_none() && (host_header.is_some() || authority.is_some());
    let lock = || {
        current
            .host_memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if memo_key {
        if let Some(m) = lock().as_ref().filter(|m| m.is_for(host_header, authority)) {
            return Ok((m.host.clone(), m.forwarded.clone()));
        }
    }
    let http = current.service.http.as_ref().expect("an HTTP service");
    let host = controls::request::check_host(
        req.version(),
        req.uri(),
        req.headers(),
        &http.hosts,
        s.local,
    )?;
    let forwarded = crate::proxy::headers::forwarded(&live.forwarded_base, host.as_ref());
    if memo_key {
        *lock() = Some(HostMemo {
            host_header: host_header.cloned(),
            authority: authority.cloned(),
            host: host.clone(),
            forwarded: forwarded.clone(),
        });
    }
    Ok((host, forwarded))
}

/// A slot among the requests the device may have in flight, if it caps
/// them, waiting up to `queue_timeout`.
async fn in_flight_slot(current: &Resolved) -> Result<Option<OwnedSemaphorePermit>, Denial> {
    let Some(slots) = current.limiters.in_flight() else {
        return Ok(None);
    };
    let limits = &current.service.limits;
    match tokio::time::timeout(limits.queue_timeout, slots.acquire_owned()).await {
        Ok(Ok(p)) => Ok(Some(p)),
        _ => {
            let limit = limits.max_in_flight.unwrap_or_default();
            let mut d = Denial::with_detail(Reason::DeviceBusy, format!("max_in_flight {limit}"));
            d.retry_after = Some(Duration::from_secs(1));
            Err(d)
        }
    }
}

/// Sends the request to the device and waits for its answer head. (Not
/// an `async fn`: see `handle`.)
#[allow(clippy::manual_async_fn)] // on purpose: see `handle`
fn exchange(
    current: &Resolved,
    upstream_req: Request<ProxyBody>,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = Result<(Response<DeviceBody>, Option<OwnedSemaphorePermit>), Denial>> + '_
{
    async move {
        let service = &current.service;
        let response_timeout = service.http.as_ref().expect("HTTP").response_timeout;
        // With an in-flight cap, the exchange runs in its own task that owns
        // the slot: a client that gives up (hyper drops this handler) must not
        // free a slot while its request is still at the device. Without one
        // it runs here, with no async block around it: such a block would
        // keep one more copy of the request in this future.
        let (result, permit) = if permit.is_some() {
            let client = current.client.clone();
            let exchange =
                async move { (client.request(upstream_req, response_timeout).await, permit) };
            match tokio::spawn(exchange).await {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        } else {
            let sent = current.client.request(upstream_req, response_timeout).await;
            (sent, permit)
        };
        match result {
            Ok(r) => Ok((r, permit)),
            Err(e) => Err(classify_upstream_error(&e, service)),
        }
    }
}

/// A WebSocket upgrade the device accepted: the two sockets are joined in
/// a task of the connection, cut with it or by a rule that now refuses it.
fn tunnel(
    s: &Session,
    live: &Live,
    client_upgrade: hyper::upgrade::OnUpgrade,
    resp: &mut Response<DeviceBody>,
    path: String,
) {
    let upstream_upgrade = hyper::upgrade::on(resp);
    let cut = live.cut.clone();
    let rules = rule_watch(s, path);
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

/// Headers beyond the client's that the upstream request's map makes room
/// for: moat's five, and enough for a typical device answer plus the three
/// hardening headers.
const UPSTREAM_ROOM: usize = 12;

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
    (host, forwarded): (Option<HeaderValue>, HeaderValue),
    websocket: bool,
    user: Option<(&HeaderName, HeaderValue)>,
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
    // Room, at once, for the five headers moat adds here and for the
    // device's answer: hyper parses the response into this same map (it
    // keeps a sent message's map for the next one it reads), and the
    // hardening headers then fit without the map growing again.
    crate::proxy::headers::make_room(headers, UPSTREAM_ROOM);
    // moat states who the client is and what it asked for; nothing the
    // client sent about that survives (proxy::headers has the list).
    let fields = strip_hop_by_hop(headers, websocket, true);
    // (Both cookie steps look the header up: the pass above saw whether
    // there is one, and most requests carry none.)
    if fields.cookie {
        if from_h2 {
            crate::proxy::headers::join_cookie_crumbs(headers);
        }
        // The device never sees moat's cookies, on any service: browsers
        // send a host's cookies to every port of it.
        crate::auth::session::strip_cookies(headers, portal::MOAT_COOKIES);
    }
    // Whatever the client wrote in any service's user header, in any
    // spelling, on every service: a device that trusts the header because
    // an mfa service sets it must not hear it from a network service.
    crate::proxy::headers::remove_any_spelling(headers, &current.identity_headers);
    if let Some((name, user)) = user {
        headers.insert(name.clone(), user);
    }
    headers.insert(X_FORWARDED_FOR, live.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, live.forwarded_proto.clone());
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
        crate::proxy::client_body::ClientBody::new(body, http.body_limits()).boxed()
    };
    Request::from_parts(parts, body)
}
