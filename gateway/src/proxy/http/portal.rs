//! The `mfa` phases of an L7 request: moat's own pages under `/.moat/`
//! (phase 4) and the session check (phase 5). The pages, cookies and
//! tokens themselves are in [`crate::auth`]; this is where they meet a
//! request, the audit trail and the metrics.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};

use super::record::RequestRecord;
use super::request::Stop;
use super::{value, BoxError, Live, ProxyBody, Session};
use crate::audit::Event;
use crate::auth::login::{self, AuthFailure, Credentials, LoginContext};
use crate::auth::session::{self, SessionClaims, SESSION_COOKIE};
use crate::auth::{portal as pages, AuthPolicy, MfaRule, User};
use crate::controls::{Denial, Reason};

mod access;

/// The pre-login cookie the login form's CSRF token is bound to.
pub const CSRF_COOKIE: &str = "__Host-moat-csrf";
/// moat's cookies: never passed to any device.
pub const MOAT_COOKIES: &[&str] = &[SESSION_COOKIE, CSRF_COOKIE];

/// A session cookie is re-issued (new last-seen time) at most this often.
const REFRESH_AFTER: u64 = 60;
/// How far ahead of this gateway's clock a session's times may be (a peer
/// gateway's clock a little ahead).
const CLOCK_SKEW: u64 = 60;
/// How long a login refused by `login_rate` waits for its answer.
const RATE_LIMITED_DELAY: Duration = Duration::from_secs(1);
/// A login form body, at most.
const MAX_FORM_BYTES: usize = 8 * 1024;

/// A request of a signed-in user.
pub(super) struct SignedIn {
    pub user: Arc<User>,
    pub claims: SessionClaims,
    /// The refreshed cookie to set on the response, when it is due.
    pub refreshed: Option<HeaderValue>,
}

/// Why a request has no session (audit detail; the person is sent to the
/// login page either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoSession {
    Missing,
    /// Forged, tampered, or sealed with a key moat does not have.
    Invalid,
    Idle,
    Absolute,
    /// Logged out (here or elsewhere): the generation moved on.
    Revoked,
    /// The user is no longer in the users file.
    UnknownUser,
}

impl NoSession {
    fn detail(self) -> &'static str {
        match self {
            NoSession::Missing => "no session",
            NoSession::Invalid => "session cookie invalid (forged, tampered or another key)",
            NoSession::Idle => "session idle too long",
            NoSession::Absolute => "session too old",
            NoSession::Revoked => "session ended (logged out)",
            NoSession::UnknownUser => "session of a user no longer in the users file",
        }
    }

    /// The `session_ended` reason this is first noticed as, if any.
    fn ended(self) -> Option<&'static str> {
        match self {
            NoSession::Idle => Some("idle"),
            NoSession::Absolute => Some("absolute"),
            NoSession::Revoked => Some("revoked"),
            _ => None,
        }
    }
}

/// Is this (normalised) path moat's own? Matched in any case, so that no
/// spelling of it reaches the device.
pub(super) fn is_portal_path(path: &str) -> bool {
    let p = path.as_bytes();
    let prefix = b"/.moat";
    p.len() >= prefix.len()
        && p[..prefix.len()].eq_ignore_ascii_case(prefix)
        && (p.len() == prefix.len() || p[prefix.len()] == b'/')
}

/// Phase 5: the session the request carries, if it is valid now.
pub(super) fn authenticate(
    headers: &HeaderMap,
    s: &Session,
    auth: &AuthPolicy,
) -> Result<SignedIn, NoSession> {
    let now = s.rt.clock.now();
    let mut problem = NoSession::Missing;
    // Several values can arrive (h2 crumbs, a stale cookie): the first
    // valid one wins, else the most telling problem is reported.
    for cookie in session::cookie_values(headers, SESSION_COOKIE) {
        let claims = match auth.keys.open(cookie) {
            Ok(c) => c,
            Err(_) => {
                problem = problem.max_by(NoSession::Invalid);
                continue;
            }
        };
        match check_claims(&claims, s, auth, now) {
            Ok(user) => {
                let refreshed =
                    (now.saturating_sub(claims.last_seen) >= REFRESH_AFTER).then(|| {
                        let renewed = SessionClaims {
                            last_seen: now,
                            ..claims.clone()
                        };
                        value(&session::set_cookie(&auth.keys.seal(&renewed), None))
                    });
                return Ok(SignedIn {
                    user,
                    claims,
                    refreshed,
                });
            }
            Err(p) => problem = problem.max_by(p),
        }
    }
    Err(problem)
}

impl NoSession {
    /// The more specific of two problems (anything beats `Missing`).
    fn max_by(self, other: NoSession) -> NoSession {
        if self == NoSession::Missing {
            other
        } else {
            self
        }
    }
}

fn check_claims(
    claims: &SessionClaims,
    s: &Session,
    auth: &AuthPolicy,
    now: u64,
) -> Result<Arc<User>, NoSession> {
    if now.saturating_sub(claims.issued_at) >= auth.absolute_timeout.as_secs() {
        return Err(NoSession::Absolute);
    }
    // Sealed by a gateway whose clock runs ahead (or made to last longer):
    // a session never starts or was never used in the future.
    if claims.issued_at > now + CLOCK_SKEW || claims.last_seen > now + CLOCK_SKEW {
        return Err(NoSession::Invalid);
    }
    if now.saturating_sub(claims.last_seen) >= auth.idle_timeout.as_secs() {
        return Err(NoSession::Idle);
    }
    let user = auth.users.get(&claims.user).ok_or(NoSession::UnknownUser)?;
    if crate::auth::session_generation(&*s.rt.store, user) != claims.generation {
        return Err(NoSession::Revoked);
    }
    Ok(user.clone())
}

/// No valid session: a browser is sent to the login page (302), any other
/// client gets 401. A session that just ended is recorded once, and its
/// cookie cleared.
pub(super) fn sign_in_first<B>(req: &Request<B>, s: &Session, problem: NoSession) -> Stop {
    let denial = Denial::with_detail(Reason::AuthRequired, problem.detail());
    if let Some(reason) = problem.ended() {
        if let Some(user) = ended_user(req.headers(), s) {
            session_ended(s, user, reason);
        }
    }
    let wants_html = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    let mut resp = if wants_html && matches!(*req.method(), Method::GET | Method::HEAD) {
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let next = pages::safe_next(target).unwrap_or_else(|| "/".to_string());
        let location = format!("/.moat/login?next={}", encode_query(&next));
        let mut r = text(StatusCode::FOUND, "Sign in first.\n");
        r.headers_mut().insert(header::LOCATION, value(&location));
        r
    } else {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized\nreason: auth_required\n",
        );
        r.headers_mut()
            .insert("x-moat-reason", HeaderValue::from_static("auth_required"));
        r
    };
    if problem != NoSession::Missing {
        resp.headers_mut()
            .append(header::SET_COOKIE, value(&session::clear_cookie()));
    }
    Stop::DenyWith(denial, resp)
}

/// The user a stale session cookie names (for the `session_ended` record).
fn ended_user(headers: &HeaderMap, s: &Session) -> Option<Arc<str>> {
    let policy = s.rt.policy.borrow().clone();
    let auth = policy.auth.as_ref()?;
    session::cookie_values(headers, SESSION_COOKIE)
        .find_map(|v| auth.keys.open(v).ok())
        .map(|c| Arc::from(c.user.as_str()))
}

fn session_ended(s: &Session, user: Arc<str>, reason: &'static str) {
    s.rt.metrics
        .session_ended(&s.conn.device, &s.conn.service, reason);
    s.rt.audit.record(Event::SessionEnded {
        conn: s.conn.clone(),
        user,
        reason,
    });
}

/// Phase 4: a request for one of moat's own pages. It never reaches the
/// device; every answer carries the portal's security headers.
/// What a portal page needs of its request's connection and service.
pub(super) struct Portal<'a> {
    pub s: &'a Session,
    pub live: &'a Live,
    pub auth: &'a AuthPolicy,
    pub rule: &'a MfaRule,
    /// The host the request named, validated in phase 2.
    pub host: Option<&'a HeaderValue>,
}

pub(super) async fn serve(
    req: Request<Incoming>,
    path: &str,
    portal: &Portal<'_>,
    record: &mut RequestRecord,
) -> Stop {
    let Portal {
        s,
        live,
        auth,
        rule,
        host,
    } = *portal;
    let page = path[b"/.moat".len()..].to_ascii_lowercase();
    let method = req.method().clone();
    let stop = match (page.as_str(), &method) {
        ("/login", &Method::GET) | ("/login", &Method::HEAD) => Ok(login_form(&req, auth, false)),
        ("/login", &Method::POST) => login_submit(req, host, s, auth, rule, record).await,
        ("/logout", &Method::POST) => logout(req, host, s, live, auth, record).await,
        ("/session", &Method::GET)
        | ("/session", &Method::HEAD)
        | ("", &Method::GET)
        | ("/", &Method::GET)
        | ("/", &Method::HEAD) => Ok(session_page(&req, s, auth, record)),
        ("/grants", &Method::POST) => access::open_submit(req, host, s, auth, record).await,
        ("/grants/end", &Method::POST) => access::end_submit(req, host, s, auth, record).await,
        ("/break-glass", &Method::GET) | ("/break-glass", &Method::HEAD) => {
            Ok(access::break_glass_form(s, auth, false))
        }
        ("/break-glass", &Method::POST) => {
            access::break_glass_submit(req, host, s, auth, record).await
        }
        ("/login" | "/logout" | "/session" | "/grants" | "/grants/end" | "/break-glass", _) => Ok(
            text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n"),
        ),
        _ => Ok(text(StatusCode::NOT_FOUND, "404 Not Found\n")),
    };
    match stop {
        Ok(mut resp) => {
            secure(resp.headers_mut());
            if method == Method::HEAD {
                let (parts, _) = resp.into_parts();
                resp = Response::from_parts(parts, empty());
            }
            Stop::Answer(resp)
        }
        Err(Stop::DenyWith(d, mut resp)) => {
            secure(resp.headers_mut());
            Stop::DenyWith(d, resp)
        }
        Err(other) => other,
    }
}

/// The login form, with a fresh pre-login cookie and the CSRF token bound
/// to it.
fn login_form<B>(req: &Request<B>, auth: &AuthPolicy, failed: bool) -> Response<ProxyBody> {
    let next = query_param(req.uri().query().unwrap_or(""), "next");
    login_form_to(next.as_deref().unwrap_or("/"), auth, failed)
}

/// The login form that goes on to `next` (if it is a safe target).
fn login_form_to(next: &str, auth: &AuthPolicy, failed: bool) -> Response<ProxyBody> {
    let next = pages::safe_next(next).unwrap_or_else(|| "/".to_string());
    pre_login_form(auth, failed, |csrf| pages::login_page(csrf, &next, failed))
}

/// A form posted before anyone is signed in (login, break-glass): a fresh
/// pre-login cookie and, in the page `page` makes, the CSRF token bound
/// to it. 401 when it is shown again after a failure.
fn pre_login_form(
    auth: &AuthPolicy,
    failed: bool,
    page: impl FnOnce(&str) -> String,
) -> Response<ProxyBody> {
    let nonce = random_token();
    let csrf = auth.keys.csrf_token(&format!("login:{nonce}"));
    let status = if failed {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut resp = html(status, page(&csrf));
    resp.headers_mut().append(
        header::SET_COOKIE,
        value(&format!(
            "{CSRF_COOKIE}={nonce}; Path=/; Secure; HttpOnly; SameSite=Strict"
        )),
    );
    resp
}

/// `POST /.moat/login`: CSRF and origin, then [`login::attempt`]; a new
/// session and a redirect to `next` on success, the form again (401) with
/// the generic message on any failure.
async fn login_submit(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    auth: &AuthPolicy,
    rule: &MfaRule,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Stop> {
    let (form, csrf_ok) = read_pre_login_form(req, host, auth).await?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let now = s.rt.clock.now();
    let outcome = if csrf_ok {
        let cx = login_context(s, auth, now);
        let creds = Credentials {
            username: field("username"),
            password: field("password"),
            code: field("code"),
        };
        login::attempt(&cx, rule, &creds).await
    } else {
        Err(login::Failed {
            reason: AuthFailure::BadCsrf,
            user: None,
            locked: Vec::new(),
        })
    };
    let (device, service) = (&s.conn.device, &s.conn.service);
    match outcome {
        Ok(user) => {
            s.rt.metrics.login(device, service, "succeeded");
            s.rt.audit.record(Event::AuthSucceeded {
                conn: s.conn.clone(),
                user: user.name.clone(),
            });
            record.principal = Some(crate::controls::Principal::user(user.name.clone()));
            let claims = SessionClaims {
                user: user.name.to_string(),
                issued_at: now,
                last_seen: now,
                generation: crate::auth::session_generation(&*s.rt.store, &user),
            };
            let next = pages::safe_next(field("next")).unwrap_or_else(|| "/".to_string());
            let mut resp = text(StatusCode::SEE_OTHER, "Signed in.\n");
            let h = resp.headers_mut();
            h.insert(header::LOCATION, value(&next));
            h.append(
                header::SET_COOKIE,
                value(&session::set_cookie(&auth.keys.seal(&claims), None)),
            );
            h.append(
                header::SET_COOKIE,
                value(&format!(
                    "{CSRF_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
                )),
            );
            Ok(resp)
        }
        Err(failed) => {
            record_failed_login(s, &failed);
            // The same page for every failure; the request's record gets
            // the typed reason (a flood of these is summarised).
            let detail = format!("login failed: {}", failed.reason.as_str());
            if let AuthFailure::RateLimited | AuthFailure::Busy = failed.reason {
                return Err(too_many_attempts(failed.reason, detail).await);
            }
            let resp = login_form_to(field("next"), auth, true);
            let denial = match failed.reason {
                AuthFailure::BadCsrf => Denial::with_detail(Reason::CsrfRejected, detail),
                _ => Denial::with_detail(Reason::AuthRequired, detail),
            };
            Err(Stop::DenyWith(denial, resp))
        }
    }
}

/// The redirect a `portal` service answers every non-portal path with.
pub(super) fn to_home() -> Response<ProxyBody> {
    let mut resp = text(StatusCode::FOUND, "See /.moat/session.\n");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/.moat/session"));
    secure(resp.headers_mut());
    resp
}

/// A form posted before sign-in (login, break-glass), and whether its
/// CSRF token matches the pre-login cookie and its origin is this one.
async fn read_pre_login_form(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    auth: &AuthPolicy,
) -> Result<(std::collections::HashMap<String, String>, bool), Stop> {
    let same_origin = origin_ok(req.headers(), host);
    let nonce = session::cookie_values(req.headers(), CSRF_COOKIE)
        .next()
        .map(str::to_string);
    let form = read_form(req.into_body()).await?;
    let token = form.get("csrf").map(String::as_str).unwrap_or("");
    let csrf_ok = same_origin
        && nonce
            .as_deref()
            .is_some_and(|n| auth.keys.check_csrf(&format!("login:{n}"), token));
    Ok((form, csrf_ok))
}

/// What a login or break-glass attempt on this connection needs.
fn login_context<'a>(s: &'a Session, auth: &'a AuthPolicy, now: u64) -> LoginContext<'a> {
    LoginContext {
        auth,
        runtime: &s.rt.auth,
        store: &*s.rt.store,
        metrics: &s.rt.metrics,
        now,
        client: s.conn.client.ip(),
    }
}

/// A failed login or break-glass attempt: counted, its lockouts and the
/// failure audited.
fn record_failed_login(s: &Session, failed: &login::Failed) {
    let (device, service) = (&s.conn.device, &s.conn.service);
    s.rt.metrics.login(device, service, failed.reason.as_str());
    for (kind, failures, until) in &failed.locked {
        s.rt.metrics
            .lockouts
            .get_or_create(&crate::metrics::LockoutLabels { kind })
            .inc();
        s.rt.audit.record(Event::AuthLockout {
            conn: s.conn.clone(),
            kind,
            user: (*kind == "user").then(|| failed.user.clone()).flatten(),
            failures: *failures,
            until: *until,
        });
    }
    s.rt.audit.record_denial(Event::AuthFailed {
        conn: s.conn.clone(),
        user: failed.user.clone(),
        reason: failed.reason,
    });
}

/// What a flood gets: a fixed answer, no new form or token to make (it
/// cost more than a proxied request), and late: a client that waits for
/// its answers (every keep-alive one) is slowed to one attempt per
/// connection and second, and the connections it may hold are capped.
async fn too_many_attempts(reason: AuthFailure, detail: String) -> Stop {
    if reason == AuthFailure::RateLimited {
        tokio::time::sleep(RATE_LIMITED_DELAY).await;
    }
    let mut resp = text(
        StatusCode::TOO_MANY_REQUESTS,
        "429 Too Many Requests\nToo many sign-in attempts: try again in a minute.\n",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
    let denial = Denial::with_detail(Reason::LoginRateLimited, detail);
    Stop::DenyWith(denial, resp)
}

/// `POST /.moat/logout`: ends every session of the user (the generation
/// moves on), clears the cookie.
async fn logout(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    live: &Live,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Stop> {
    let signed_in = authenticate(req.headers(), s, auth).ok();
    let same_origin = origin_ok(req.headers(), host);
    let form = read_form(req.into_body()).await?;
    let Some(signed_in) = signed_in else {
        // Nothing to end. A cross-site form carries no session cookie
        // (SameSite=Strict); clearing it from here would let any page
        // sign people out, so no cookie is touched.
        if !same_origin {
            let d = Denial::with_detail(Reason::CsrfRejected, "logout from another origin");
            let resp = text(
                StatusCode::FORBIDDEN,
                "403 Forbidden\nreason: csrf_rejected\n",
            );
            return Err(Stop::DenyWith(d, resp));
        }
        return Ok(html(StatusCode::OK, pages::logged_out_page()));
    };
    let binding = session_binding(&signed_in.claims);
    let token = form.get("csrf").map(String::as_str).unwrap_or("");
    if !same_origin || !auth.keys.check_csrf(&binding, token) {
        let d = Denial::with_detail(Reason::CsrfRejected, "logout without a valid token");
        let resp = text(
            StatusCode::FORBIDDEN,
            "403 Forbidden\nreason: csrf_rejected\n",
        );
        return Err(Stop::DenyWith(d, resp));
    }
    // This connection's own answer must still go out: it stops watching
    // the user before their sessions end, and ends once the answer is sent.
    live.logging_out(&signed_in.user.name);
    s.rt.store.end_sessions(&signed_in.user.name);
    session_ended(s, signed_in.user.name.clone(), "logout");
    record.principal = Some(crate::controls::Principal::user(
        signed_in.user.name.clone(),
    ));
    let resp = html(StatusCode::OK, pages::logged_out_page());
    let (mut parts, body) = resp.into_parts();
    parts
        .headers
        .append(header::SET_COOKIE, value(&session::clear_cookie()));
    let body = ThenCut {
        inner: body,
        cut: Some(live.logged_out.clone()),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// `GET /.moat/session`: who is signed in, with the logout form.
fn session_page<B>(
    req: &Request<B>,
    s: &Session,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Response<ProxyBody> {
    match authenticate(req.headers(), s, auth) {
        Ok(signed_in) => {
            record.principal = Some(crate::controls::Principal::user(
                signed_in.user.name.clone(),
            ));
            let c = &signed_in.claims;
            let expires = (c.issued_at + auth.absolute_timeout.as_secs())
                .min(s.rt.clock.now() + auth.idle_timeout.as_secs());
            let csrf = auth.keys.csrf_token(&session_binding(c));
            let policy = s.rt.policy.borrow().clone();
            let view = access::access_view(s, &policy, &signed_in.user);
            html(
                StatusCode::OK,
                pages::home_page(&c.user, c.issued_at, expires, &csrf, &view),
            )
        }
        Err(_) => {
            let mut r = text(StatusCode::FOUND, "Sign in first.\n");
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_static("/.moat/login?next=%2F.moat%2Fsession"),
            );
            r
        }
    }
}

fn session_binding(c: &SessionClaims) -> String {
    format!("session:{}:{}", c.user, c.issued_at)
}

/// A form's `Origin`, when the browser sends one, must be this origin:
/// `https://` and the host the request named (`Host`, or h2's
/// `:authority`), which phase 2 validated as one of the service's.
fn origin_ok(headers: &HeaderMap, host: Option<&HeaderValue>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not every client sends one; the CSRF token and SameSite=Strict
        // still stand.
        return true;
    };
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
    origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
}

async fn read_form(body: Incoming) -> Result<std::collections::HashMap<String, String>, Stop> {
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await;
    match read {
        Ok(Ok(collected)) => Ok(pages::parse_form(&collected.to_bytes())),
        Ok(Err(_)) => Err(Stop::Deny(Denial::with_detail(
            Reason::BodyTooLarge,
            format!("login form over {MAX_FORM_BYTES} bytes"),
        ))),
        Err(_) => Err(Stop::Deny(Denial::with_detail(
            Reason::BodyTimeout,
            "login form not received in 10s",
        ))),
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    pages::parse_form(query.as_bytes()).remove(name)
}

fn encode_query(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 18];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn secure(headers: &mut HeaderMap) {
    for (name, value) in pages::security_headers() {
        headers.insert(name.clone(), value.clone());
    }
}

fn html(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(BoxError::from).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(BoxError::from)
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A response body that ends its connection once it has been sent (or
/// dropped): the logout answer.
struct ThenCut {
    inner: ProxyBody,
    cut: Option<tokio_util::sync::CancellationToken>,
}

impl hyper::body::Body for ThenCut {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            if let Some(cut) = self.cut.take() {
                cut.cancel();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ThenCut {
    fn drop(&mut self) {
        if let Some(cut) = self.cut.take() {
            cut.cancel();
        }
    }
}

fn empty() -> ProxyBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(BoxError::from)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_portal_prefix_is_moat_s() {
        for p in [
            "/.moat",
            "/.moat/",
            "/.moat/login",
            "/.MOAT/login",
            "/.Moat/x",
        ] {
            assert!(is_portal_path(p), "{p}");
        }
        for p in ["/", "/.moatx", "/.mo", "/x/.moat/login", "/moat/login"] {
            assert!(!is_portal_path(p), "{p}");
        }
    }

    #[test]
    fn origin_must_be_this_https_origin_when_sent() {
        // The validated host, from Host or (h2) :authority.
        let host = HeaderValue::from_static("pump.example:8443");
        let mut h = HeaderMap::new();
        assert!(origin_ok(&h, Some(&host)));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://pump.example:8443"),
        );
        assert!(origin_ok(&h, Some(&host)));
        assert!(!origin_ok(&h, None));
        for bad in ["https://evil.example", "http://pump.example:8443", "null"] {
            h.insert(header::ORIGIN, HeaderValue::from_static(bad));
            assert!(!origin_ok(&h, Some(&host)), "{bad}");
        }
    }
}
