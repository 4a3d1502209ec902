//! The portal's access pages: what a signed-in person may reach, opening
//! and ending their own grants to `mfa` TCP services, and break-glass.
//! Served on `portal` services and under `/.moat/` of `mfa` web services.

// A refusal here is rare and carries moat's whole answer; boxing it buys
// nothing on a path that runs once per form.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{authenticate, html, origin_ok, read_form, session_binding, text, SignedIn, Stop};
use crate::audit::Event;
use crate::auth::grants::{hex, Grant, GrantBinding, GrantEnd, GrantId};
use crate::auth::login::{self, AuthFailure, BreakGlassCredentials};
use crate::auth::portal::{self as pages, AccessView, DeviceAccess, GrantLine, ServiceAccess};
use crate::auth::{AccessMode, AuthPolicy, GrantRule, User};
use crate::config::schema::Protocol;
use crate::controls::{Denial, Principal, Reason};
use crate::policy::{Policy, Service};
use crate::proxy::http::record::RequestRecord;
use crate::proxy::http::{ProxyBody, Session};
use crate::runtime::grants::{requires_client_certificates, target};

/// What a signed-in `user` may reach under `policy`, from this connection.
pub(super) fn access_view(s: &Session, policy: &Policy, user: &User) -> AccessView {
    let now = s.rt.clock.now();
    let client = s.conn.client.ip();
    let mut view = AccessView {
        address: client.to_string(),
        certificate: s.facts.peer_key.is_some(),
        ..AccessView::default()
    };
    for device in &policy.devices {
        let mut services = Vec::new();
        for svc in policy.services.iter().filter(|s| s.device.id == device.id) {
            let Some(rule) = svc.access_mode.rule() else {
                continue;
            };
            if svc.protocol == Protocol::Portal || user.disabled || !rule.admits(user) {
                continue;
            }
            let kind = match &svc.access_mode {
                AccessMode::Grant(g) => pages::ServiceKind::Tcp {
                    max_minutes: g.max_grant.as_secs() / 60,
                    certificate: view.certificate && requires_client_certificates(svc),
                    address_allowed: svc.access.check(client).is_ok(),
                },
                _ => pages::ServiceKind::Web {
                    listen: svc.listen.to_string(),
                },
            };
            view.break_glass |= svc.access_mode.takes_break_glass();
            services.push(ServiceAccess {
                name: svc.name.to_string(),
                key: format!("{}/{}", svc.device.id, svc.name),
                kind,
            });
        }
        if !services.is_empty() {
            view.devices.push(DeviceAccess {
                name: device.name.clone(),
                location: device.location.clone(),
                support: device.support_status(now).describe(),
                end_of_support: device.end_of_support.clone(),
                services,
            });
        }
    }
    view.grants =
        s.rt.store
            .grants()
            .into_iter()
            .filter(|g| g.user == user.name && g.until > now)
            .map(|g| GrantLine {
                id: g.id.to_string(),
                device: g.device.to_string(),
                service: g.service.to_string(),
                binding: match g.binding {
                    GrantBinding::Address(ip) => format!("address {ip}"),
                    GrantBinding::Certificate(k) => format!("certificate key {}…", &hex(&k)[..16]),
                },
                until: g.until,
                break_glass: g.break_glass,
            })
            .collect();
    view
}

/// A refusal with a short text answer (moat's pages are plain).
fn refuse(
    reason: Reason,
    detail: impl Into<String>,
    status: StatusCode,
    msg: &'static str,
) -> Stop {
    Stop::DenyWith(Denial::with_detail(reason, detail), text(status, msg))
}

/// Back to the home page, which shows the change.
fn see_home() -> Response<ProxyBody> {
    let mut resp = text(StatusCode::SEE_OTHER, "Done.\n");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/.moat/"));
    resp
}

/// The signed-in user of a form post, with its CSRF token and origin
/// checked against the session (as logout does).
async fn signed_in_form(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Result<(SignedIn, std::collections::HashMap<String, String>), Stop> {
    let signed_in = authenticate(req.headers(), s, auth);
    let same_origin = origin_ok(req.headers(), host);
    let form = read_form(req.into_body()).await?;
    let Ok(signed_in) = signed_in else {
        let mut resp = text(StatusCode::SEE_OTHER, "Sign in first.\n");
        resp.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_static("/.moat/login?next=%2F.moat%2Fsession"),
        );
        return Err(Stop::DenyWith(Denial::new(Reason::AuthRequired), resp));
    };
    record.principal = Some(Principal::user(signed_in.user.name.clone()));
    let token = form.get("csrf").map(String::as_str).unwrap_or("");
    if !same_origin
        || !auth
            .keys
            .check_csrf(&session_binding(&signed_in.claims), token)
    {
        return Err(refuse(
            Reason::CsrfRejected,
            "grant form without a valid token",
            StatusCode::FORBIDDEN,
            "403 Forbidden\nreason: csrf_rejected\n",
        ));
    }
    Ok((signed_in, form))
}

/// The grant service a form names (`device/service`), if `user` may open
/// grants on it under `policy`.
fn grant_service<'p>(
    policy: &'p Policy,
    key: &str,
    user: &User,
) -> Result<(&'p Arc<Service>, &'p GrantRule), Stop> {
    let found = key.split_once('/').and_then(|(device, name)| {
        policy
            .services
            .iter()
            .find(|s| &*s.device.id == device && &*s.name == name)
    });
    let Some((service, rule)) = found.and_then(|s| match &s.access_mode {
        AccessMode::Grant(rule) => Some((s, rule)),
        _ => None,
    }) else {
        return Err(refuse(
            Reason::BadRequest,
            "grant for no such grant service",
            StatusCode::BAD_REQUEST,
            "400 Bad Request\nNo such device service takes grants.\n",
        ));
    };
    if user.disabled || !rule.who.admits(user) {
        return Err(refuse(
            Reason::UserNotAuthorized,
            format!("user {} on {key}", user.name),
            StatusCode::FORBIDDEN,
            "403 Forbidden\nYou may not open this device.\n",
        ));
    }
    Ok((service, rule))
}

/// What the grant binds to, as the form asks and this connection allows.
fn binding(s: &Session, service: &Service, bind: &str) -> Result<GrantBinding, Stop> {
    let client = s.conn.client.ip();
    match bind {
        "address" | "" => {
            if service.access.check(client).is_err() {
                return Err(refuse(
                    Reason::NotAllowlisted,
                    format!("grant for {client}, which the service does not allow"),
                    StatusCode::FORBIDDEN,
                    "403 Forbidden\nYour address is not allowed on this service.\n",
                ));
            }
            Ok(GrantBinding::Address(client))
        }
        "certificate" => match s.facts.peer_key {
            Some(key) if requires_client_certificates(service) => {
                Ok(GrantBinding::Certificate(key))
            }
            _ => Err(refuse(
                Reason::BadRequest,
                "certificate grant without a certificate, or on a service that does not require them",
                StatusCode::BAD_REQUEST,
                "400 Bad Request\nA certificate grant needs a client certificate on this connection, for a service that requires them.\n",
            )),
        },
        _ => Err(refuse(
            Reason::BadRequest,
            "unknown grant binding",
            StatusCode::BAD_REQUEST,
            "400 Bad Request\nbind is \"address\" or \"certificate\".\n",
        )),
    }
}

/// Opens `grant`, or says why the store refused.
fn open(s: &Session, grant: Grant) -> Result<(), Stop> {
    s.rt.open_grant(grant, &s.conn).map_err(|refused| {
        refuse(
            Reason::BadRequest,
            format!("{refused:?}"),
            StatusCode::TOO_MANY_REQUESTS,
            "429 Too Many Requests\nYou hold as many open grants as one person may: end one first.\n",
        )
    })
}

/// `POST /.moat/grants`: opens a grant for the signed-in user.
pub(super) async fn open_submit(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Stop> {
    let (signed_in, form) = signed_in_form(req, host, s, auth, record).await?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let policy = s.rt.policy.borrow().clone();
    let user = &signed_in.user;
    let (service, rule) = grant_service(&policy, field("service"), user)?;
    let max = rule.max_grant.as_secs() / 60;
    let minutes = match field("minutes").trim().parse::<u64>() {
        Ok(m) if (1..=max).contains(&m) => m,
        _ => return Err(refuse(
            Reason::BadRequest,
            format!("grant of {:?} minutes (max {max})", field("minutes")),
            StatusCode::BAD_REQUEST,
            "400 Bad Request\nChoose a number of minutes between 1 and the service's maximum.\n",
        )),
    };
    let binding = binding(s, service, field("bind"))?;
    let now = s.rt.clock.now();
    open(
        s,
        Grant {
            id: GrantId::random(),
            user: user.name.clone(),
            device: service.device.id.clone(),
            service: service.name.clone(),
            binding,
            opened_at: now,
            until: now + minutes * 60,
            break_glass: false,
            target: target(service),
        },
    )?;
    Ok(see_home())
}

/// `POST /.moat/grants/end`: the signed-in user ends one of their grants.
pub(super) async fn end_submit(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Stop> {
    let (signed_in, form) = signed_in_form(req, host, s, auth, record).await?;
    let id = form.get("id").and_then(|id| GrantId::parse(id));
    let user = signed_in.user.name.clone();
    let by = format!("user {user}");
    let ended = id.map_or_else(Vec::new, |id| {
        s.rt.end_grants(
            &mut |g| (g.id == id && g.user == user).then_some(GrantEnd::RevokedByUser),
            Some(&by),
        )
    });
    if ended.is_empty() {
        return Err(refuse(
            Reason::BadRequest,
            "end of a grant that is not the user's or not open",
            StatusCode::NOT_FOUND,
            "404 Not Found\nNo such open grant of yours.\n",
        ));
    }
    Ok(see_home())
}

/// The break-glass services `policy` has, as (key, label) for the form.
fn break_glass_services(policy: &Policy) -> Vec<(String, String)> {
    policy
        .services
        .iter()
        .filter(|s| s.access_mode.takes_break_glass())
        .map(|s| {
            (
                format!("{}/{}", s.device.id, s.name),
                format!("{} ({}) — {}", s.device.name, s.device.location, s.name),
            )
        })
        .collect()
}

/// `GET /.moat/break-glass`: the form, with a fresh pre-login CSRF cookie.
pub(super) fn break_glass_form(
    s: &Session,
    auth: &AuthPolicy,
    failed: bool,
) -> Response<ProxyBody> {
    let policy = s.rt.policy.borrow().clone();
    let services = break_glass_services(&policy);
    if services.is_empty() {
        return text(StatusCode::NOT_FOUND, "404 Not Found\n");
    }
    super::pre_login_form(auth, failed, |csrf| {
        pages::break_glass_page(csrf, &services, failed)
    })
}

/// `POST /.moat/break-glass`: password and a one-time code open one grant
/// of the service's `break_glass_grant`, bound to this address.
pub(super) async fn break_glass_submit(
    req: Request<Incoming>,
    host: Option<&HeaderValue>,
    s: &Session,
    auth: &AuthPolicy,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Stop> {
    let (form, csrf_ok) = super::read_pre_login_form(req, host, auth).await?;
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let policy = s.rt.policy.borrow().clone();
    let now = s.rt.clock.now();
    // The service first (a form names one), then the attempt proper.
    let service = field("service").split_once('/').and_then(|(device, name)| {
        policy.services.iter().find(|s| {
            &*s.device.id == device && &*s.name == name && s.access_mode.takes_break_glass()
        })
    });
    let (Some(service), Some(file), true) = (service, auth.break_glass_file.as_deref(), csrf_ok)
    else {
        let reason = if csrf_ok {
            Reason::BadRequest
        } else {
            Reason::CsrfRejected
        };
        return Err(Stop::DenyWith(
            Denial::with_detail(
                reason,
                "break-glass form for no break-glass service, or without a valid token",
            ),
            break_glass_form(s, auth, true),
        ));
    };
    let AccessMode::Grant(rule) = &service.access_mode else {
        unreachable!("filtered above")
    };
    let grant_for = rule.break_glass.expect("filtered above");
    let binding = binding(s, service, "address")?;
    let cx = super::login_context(s, auth, now);
    let creds = BreakGlassCredentials {
        username: field("username"),
        password: field("password"),
        code: field("code"),
        file,
    };
    // A code must never be spent on a grant that cannot open: a person
    // at the cap of open grants is told so first.
    let held =
        s.rt.store
            .grants()
            .iter()
            .filter(|g| &*g.user == field("username"))
            .count();
    if held >= crate::runtime::store::MAX_GRANTS_PER_USER {
        return Err(refuse(
            Reason::BadRequest,
            "break-glass at the cap of open grants",
            StatusCode::TOO_MANY_REQUESTS,
            "429 Too Many Requests\nYou hold as many open grants as one person may: end one first. Your code was not used.\n",
        ));
    }
    let (device, svc) = (&s.conn.device, &s.conn.service);
    match login::attempt_break_glass(&cx, &rule.who, &creds).await {
        Ok((user, code_id)) => {
            s.rt.metrics.login(device, svc, "break_glass");
            record.principal = Some(Principal::user(user.name.clone()));
            let grant = Grant {
                id: GrantId::random(),
                user: user.name.clone(),
                device: service.device.id.clone(),
                service: service.name.clone(),
                binding,
                opened_at: now,
                until: now + grant_for.as_secs(),
                break_glass: true,
                target: target(service),
            };
            let (grant_id, until) = (grant.id, grant.until);
            open(s, grant)?;
            s.rt.metrics
                .break_glass_used
                .get_or_create(&crate::metrics::ServiceLabels {
                    device: service.device.id.to_string(),
                    service: service.name.to_string(),
                })
                .inc();
            tracing::warn!(user = %user.name, device = %service.device.id, service = %service.name, code = %code_id, "BREAK-GLASS code used");
            s.rt.audit.record(Event::BreakGlassUsed {
                conn: s.conn.clone(),
                severity: "high",
                user: user.name.clone(),
                granted_device: service.device.id.clone(),
                granted_service: service.name.clone(),
                code_id,
                grant_id,
                until,
            });
            Ok(html(
                StatusCode::OK,
                pages::break_glass_opened_page(
                    &service.device.name,
                    &service.name,
                    &s.conn.client.ip().to_string(),
                    until,
                ),
            ))
        }
        Err(failed) => {
            super::record_failed_login(s, &failed);
            let detail = format!("break-glass failed: {}", failed.reason.as_str());
            if let AuthFailure::RateLimited | AuthFailure::Busy = failed.reason {
                return Err(super::too_many_attempts(failed.reason, detail).await);
            }
            Err(Stop::DenyWith(
                Denial::with_detail(Reason::AuthRequired, detail),
                break_glass_form(s, auth, true),
            ))
        }
    }
}
