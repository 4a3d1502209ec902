//! The audit record of one request: written once, when the response has
//! been delivered (its body ended), when moat refuses it, or when the
//! client abandons it (499).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use tokio::time::Instant;

use super::{version_name, BoxError, Live, ProxyBody, Session};
use crate::audit::Event;
use crate::controls::{Denial, Principal, Reason};
use crate::upstream::DeviceBody;

/// What the audit record of one request needs, until its response ends.
pub(super) struct RequestRecord {
    session: Arc<Session>,
    live: Arc<Live>,
    method: http::Method,
    uri: http::Uri,
    /// The normalised path, when it differs from the request's.
    pub path: Option<String>,
    /// Who made the request: the session's user once one is known, else
    /// the connection's client certificate.
    pub principal: Option<Principal>,
    /// Set once the record is written; a record dropped unwritten is a
    /// request the client abandoned (or an h2 stream it reset).
    done: bool,
    version: &'static str,
    started: Instant,
    pub audit_allowed: bool,
}

impl RequestRecord {
    pub fn new<B>(req: &http::Request<B>, session: Arc<Session>, live: Arc<Live>) -> RequestRecord {
        RequestRecord {
            principal: session.principal.clone(),
            session,
            live,
            method: req.method().clone(),
            uri: req.uri().clone(),
            path: None,
            version: version_name(req.version()),
            started: Instant::now(),
            audit_allowed: true,
            done: false,
        }
    }

    /// Answers with `resp` (moat's own page) and audits the request as
    /// served by moat.
    pub fn answer(self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let len = resp.body().size_hint().exact().unwrap_or(0);
        self.finish(resp.status().as_u16(), len, None);
        resp
    }

    /// Answers with `resp` for a refusal (a redirect to the login page)
    /// and audits `denial`.
    pub fn deny_with(self, denial: Denial, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let len = resp.body().size_hint().exact().unwrap_or(0);
        self.finish(resp.status().as_u16(), len, Some(denial));
        resp
    }

    /// Answers with the short error page for `denial`, and audits it.
    pub fn deny(self, denial: Denial) -> Response<ProxyBody> {
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
            principal: self.principal.take(),
        };
        match &denial {
            None => s.rt.audit.record(event),
            Some(d) => {
                if s.rt.audit.record_denial(event) {
                    crate::proxy::log_device_failure(&s.conn, d);
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
pub(super) const ABANDONED_LIMIT: u64 = 100;
pub(super) const ABANDONED_REFILL: f64 = 1.0;

const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A response body that counts what reaches the client and writes the
/// request's audit record when it ends (or the client goes away).
pub(super) struct AuditedBody {
    /// The device's body itself, not boxed: this body is boxed once, for
    /// hyper.
    pub inner: DeviceBody,
    pub bytes: u64,
    pub record: Option<(RequestRecord, u16)>,
    /// The device's in-flight slot, held until the response is delivered.
    pub _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Body for AuditedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(BoxError::from);
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
