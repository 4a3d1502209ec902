//! The admin plane: health, readiness, metrics, policy version and the
//! device inventory. Loopback by default and never on a device's listener.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::policy::lifecycle::{ReloadOutcome, Trigger};
use crate::proxy::accept::{Accepted, Acceptor};
use crate::runtime::{PolicyControl, Runtime};

/// `POST /reload`: the same path as SIGHUP and file changes; answers with
/// the outcome (200 applied or unchanged, 422 rejected with the errors).
async fn reload(reloader: &dyn PolicyControl) -> Response<Full<Bytes>> {
    let outcome = reloader.reload(Trigger::Admin).await;
    let mut r = json(&outcome);
    if matches!(outcome, ReloadOutcome::Rejected { .. }) {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    r
}

pub async fn serve(
    listener: TcpListener,
    rt: Arc<Runtime>,
    reloader: Arc<dyn PolicyControl>,
    stop: CancellationToken,
) {
    let mut acceptor = Acceptor::new(listener);
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            a = acceptor.accept() => match a {
                Accepted::Conn(socket, peer) => (socket, peer),
                // Out of descriptors: closed at once (and logged, limited).
                Accepted::Shed { .. } => continue,
            },
        };
        let rt = rt.clone();
        let reloader = reloader.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                let reloader = reloader.clone();
                async move {
                    if req.method() == Method::POST && req.uri().path() == "/reload" {
                        return Ok::<_, Infallible>(reload(&*reloader).await);
                    }
                    if req.method() == Method::DELETE {
                        return Ok(end_grant(&rt, req.uri().path(), peer));
                    }
                    if req.method() == Method::GET && req.uri().path() == "/report" {
                        let query = req.uri().query().map(str::to_string);
                        return Ok(report(rt, query).await);
                    }
                    Ok(route(&rt, req))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// `GET /report`: the evidence report of the live policy. It reads the
/// audit file, so it is built on the blocking pool, not on a worker.
async fn report(rt: Arc<Runtime>, query: Option<String>) -> Response<Full<Bytes>> {
    let built =
        tokio::task::spawn_blocking(move || crate::report::serve(&rt, query.as_deref())).await;
    let (status, content_type, body) = built.unwrap_or_else(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            b"the report could not be built\n".to_vec(),
        )
    });
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// `DELETE /grants/ID`: ops end one grant (`moat grants revoke ID`).
fn end_grant(rt: &Runtime, path: &str, peer: std::net::SocketAddr) -> Response<Full<Bytes>> {
    let Some(id) = path.strip_prefix("/grants/") else {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    };
    let Some(id) = crate::auth::grants::GrantId::parse(id) else {
        return text(
            StatusCode::BAD_REQUEST,
            "a grant id is 16 hex digits (GET /grants lists them)\n",
        );
    };
    let by = format!("admin {peer}");
    let ended = rt.end_grants(
        &mut |g| (g.id == id).then_some(crate::auth::grants::GrantEnd::RevokedByOps),
        Some(&by),
    );
    match ended.into_iter().next() {
        Some((grant, _)) => json(&serde_json::json!({ "ended": grant })),
        None => text(StatusCode::NOT_FOUND, "no such grant\n"),
    }
}

fn route(rt: &Runtime, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            rt.metrics
                .audit_dropped
                .inner()
                .store(rt.audit.dropped(), std::sync::atomic::Ordering::Relaxed);
            let policy = rt.policy.borrow().clone();
            rt.metrics
                .inventory
                .refresh(&policy, rt.clock.now(), rt.audit.siem_stats());
            rt.metrics.process.refresh();
            rt.metrics
                .audit_writable
                .set(i64::from(rt.audit.writable()));
            let accept: Vec<&str> = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let (content_type, body) = rt.metrics.render(&accept.join(","));
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            r.headers_mut().insert(
                hyper::header::VARY,
                hyper::header::HeaderValue::from_static("accept"),
            );
            r
        }
        "/grants" => {
            let now = rt.clock.now();
            let grants: Vec<_> = rt
                .store
                .grants()
                .into_iter()
                .filter(|g| g.until > now)
                .collect();
            json(&serde_json::json!({ "now": now, "grants": grants }))
        }
        "/policy" => {
            let p = rt.policy.borrow().clone();
            json(&serde_json::json!({
                "version": p.version,
                "content_hash": p.content_hash,
                "sources": p.sources,
            }))
        }
        "/devices" => {
            let p = rt.policy.borrow().clone();
            let now = rt.clock.now();
            let devices: Vec<_> = p
                .devices
                .iter()
                .map(|d| {
                    let services: Vec<_> = p
                        .services
                        .iter()
                        .filter(|s| s.device.id == d.id)
                        .map(|s| {
                            serde_json::json!({
                                "name": s.name,
                                "listen": s.listen,
                                "upstream": s.upstream.to_string(),
                                "tls": s.tls.is_some(),
                                "allow_entries": s.access.allow.len(),
                                "deny_entries": s.access.deny.len(),
                            })
                        })
                        .collect();
                    let status = d.support_status(now);
                    serde_json::json!({
                        "device": d,
                        "support_status": status,
                        "support": status.describe(),
                        "services": services,
                    })
                })
                .collect();
            json(&devices)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
