//! The L4 proxy: accept → connection controls (before any TLS work) → TLS
//! termination → connect to the device → relay → audit.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::accept::{self, Accepted, Acceptor};
use super::relay::Ends;
use crate::audit::{ClosedBy, ConnMeta, Event, TlsInfo};
use crate::config::schema::Protocol;
use crate::controls::Principal;
use crate::controls::{self, Asking, ConnFacts, Denial, Reason, ServiceState};
use crate::guard::{self, GuardCx};
use crate::metrics::{ByteLabels, ServiceLabels};
use crate::policy::{ListenerId, Policy, Service};
use crate::runtime::{Runtime, ServiceKey};
use crate::tls::{version_name, ClientIdentity};

/// Accepts connections for one listener until `stop` is cancelled. The
/// service is looked up in the current policy for every connection, so a
/// published policy applies to the next accept without touching the socket.
pub async fn accept_loop(
    listener: TcpListener,
    id: ListenerId,
    mut key: ServiceKey,
    rt: Arc<Runtime>,
    stop: CancellationToken,
) {
    let mut acceptor = Acceptor::new(listener);
    let listen = acceptor.local_addr();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = acceptor.accept() => a,
        };
        let (socket, client, shed) = match accepted {
            Accepted::Conn(socket, client) => (Some(socket), client, None),
            Accepted::Shed { client, error } => (None, client, Some(error)),
        };
        let service = rt.service(&id);
        if let Some(s) = &service {
            key = ServiceKey::of(s);
        }
        let conn = ConnMeta {
            conn_id: rt.next_conn_id(),
            device: key.device.clone(),
            service: key.service.clone(),
            client,
            listen,
        };
        let (Some(service), Some(socket)) = (service, socket) else {
            let denial = match shed {
                Some(error) => Denial::with_detail(Reason::FdExhausted, error),
                // Published away between this accept and the listener stopping.
                None => Denial::new(Reason::ServiceRemoved),
            };
            deny(&rt, conn, denial, None, None);
            continue;
        };
        let state = rt.state(&key);
        let rt2 = rt.clone();
        let id = id.clone();
        rt.connections.spawn(async move {
            // Cheapest checks first, before the TLS handshake costs anything.
            if let Err(denial) = controls::audit_gate(&service, rt2.audit.writable()) {
                return deny(&rt2, conn, denial, None, None);
            }
            let admitted = match controls::admit_connection_queued(
                &service,
                &state,
                client.ip(),
                rt2.grants(),
            )
            .await
            {
                Ok(a) => a,
                Err(denial) => return deny(&rt2, conn, denial, None, None),
            };
            let _slot = admitted.slot;
            let matched = admitted.matched.to_string();
            handle(socket, service, &state, id, conn, matched, rt2).await;
        });
    }
}

async fn handle(
    socket: TcpStream,
    service: Arc<Service>,
    state: &Arc<ServiceState>,
    id: ListenerId,
    conn: ConnMeta,
    matched: String,
    rt: Arc<Runtime>,
) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().ok().map(|a| a.ip());
    let Some(tls) = &service.tls else {
        let facts = ConnFacts::new(conn.client.ip(), &service, None);
        let admitted = Admitted {
            id,
            facts,
            matched,
            local,
        };
        return serve_protocol(socket, service, conn, admitted, None, None, rt).await;
    };

    let acceptor = TlsAcceptor::from(tls.server_config.clone());
    // It holds a descriptor and a connection slot: visible while it lasts.
    let handshaking = rt.metrics.tls_handshake(&conn.device, &conn.service);
    // Registered so that a full service can shed it if it stalls.
    let unfinished = state.handshake_started();
    let handshake = async {
        tokio::select! {
            done = timeout(service.handshake_timeout, acceptor.accept(socket)) => Some(done),
            () = unfinished.shed() => None,
        }
    };
    let handshake = or_hard_stop(&rt, handshake).await;
    drop(handshaking);
    let Some(handshake) = handshake else {
        return deny(&rt, conn, Denial::new(Reason::GatewayShutdown), None, None);
    };
    let Some(handshake) = handshake else {
        let detail = format!(
            "handshake unfinished after {} ms, shed for a new connection (service full)",
            unfinished.age().as_millis()
        );
        return deny(
            &rt,
            conn,
            Denial::with_detail(Reason::MaxConnections, detail),
            None,
            None,
        );
    };
    drop(unfinished);
    let mut stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return deny(&rt, conn, classify_tls_error(&e), None, None),
        Err(_) => {
            let detail = format!("no handshake within {:?}", service.handshake_timeout);
            return deny(
                &rt,
                conn,
                Denial::with_detail(Reason::TlsHandshakeTimeout, detail),
                None,
                None,
            );
        }
    };
    if service.protocol != Protocol::Tcp {
        // Encrypted records waiting for a slow HTTP reader (64 KiB by
        // default); the kernel's socket buffer holds the rest.
        stream.get_mut().1.set_buffer_limit(Some(HTTP_TLS_BUFFER));
    }
    let (info, identity) = describe_tls(&stream);
    let facts = ConnFacts::new(conn.client.ip(), &service, Some(stream.get_ref().1));
    if let crate::auth::AccessMode::Grant(_) = service.access_mode {
        // Now the certificate is known: a certificate grant, or the
        // address grant that let it this far.
        let asking = Asking::Established(rt.grants(), facts.peer_key.as_ref());
        if let Err(denial) = controls::authorize(&service, facts.client, asking) {
            return deny(&rt, conn, denial, Some(info), identity);
        }
    }
    let admitted = Admitted {
        id,
        facts,
        matched,
        local,
    };
    serve_protocol(stream, service, conn, admitted, Some(info), identity, rt).await;
}

/// rustls' limit on unsent TLS records for `http` services (issue 10:
/// slow readers; docs/benchmarks.md).
const HTTP_TLS_BUFFER: usize = 32 * 1024;

/// What a relayed connection was admitted under, for re-checks on reload.
struct Admitted {
    id: ListenerId,
    facts: ConnFacts,
    matched: String,
    /// The address the client reached (what `Host` may name on 0.0.0.0).
    local: Option<std::net::IpAddr>,
}

/// Resolves when the policy or the identity store no longer admits the
/// connection.
pub(crate) async fn revoked_by_policy(
    rt: &Runtime,
    id: ListenerId,
    facts: ConnFacts,
) -> (Denial, u64) {
    refused_by_change(rt, move |current| {
        controls::recheck(current.service_for(&id).map(|s| &**s), &facts, rt.grants())
    })
    .await
}

/// The one way live things (connections, WebSocket tunnels, signed-in
/// users) follow changes: `check` runs against the policy in force now —
/// in case one was published during a handshake or an upstream connect —
/// and again whenever a new policy is published or the identity store
/// changes (a logout, a revocation), until it refuses; returns the refusal
/// and the policy version it was made under.
pub(crate) fn refused_by_change(
    rt: &Runtime,
    check: impl Fn(&Policy) -> Result<(), Denial>,
) -> impl std::future::Future<Output = (Denial, u64)> {
    let mut policy: watch::Receiver<Arc<Policy>> = rt.policy.clone();
    let mut identities = rt.store.changes();
    async move {
        loop {
            {
                let current = policy.borrow_and_update();
                if let Err(denial) = check(&current) {
                    return (denial, current.version);
                }
            }
            tokio::select! {
                changed = policy.changed() => if changed.is_err() {
                    // The gateway is going away; shutdown handles the rest.
                    return std::future::pending().await;
                },
                changed = identities.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
            }
        }
    }
}

async fn connect_upstream(service: &Service, rt: &Runtime) -> Result<TcpStream, Denial> {
    let target = (service.upstream.host.as_str(), service.upstream.port);
    let connect = or_hard_stop(
        rt,
        timeout(service.connect_timeout, TcpStream::connect(target)),
    );
    let denial = match connect.await {
        None => Denial::new(Reason::GatewayShutdown),
        Some(Ok(Ok(s))) => {
            let _ = s.set_nodelay(true);
            return Ok(s);
        }
        Some(Ok(Err(e))) => {
            let reason = if accept::is_fd_exhaustion(&e) {
                Reason::FdExhausted
            } else {
                Reason::UpstreamUnreachable
            };
            Denial::with_detail(reason, format!("{}: {e}", service.upstream))
        }
        Some(Err(_)) => Denial::with_detail(
            Reason::UpstreamTimeout,
            format!(
                "{}: no answer within {:?}",
                service.upstream, service.connect_timeout
            ),
        ),
    };
    Err(denial)
}

/// After admission and TLS: the protocol's data plane, framed by the
/// `connection_allowed` and `connection_closed` audit events.
async fn serve_protocol<C>(
    client: C,
    service: Arc<Service>,
    conn: ConnMeta,
    admitted: Admitted,
    tls: Option<TlsInfo>,
    principal: Option<Principal>,
    rt: Arc<Runtime>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut client = client;
    // A protocol guard reads what it must check before the device is
    // contacted (DICOM: the A-ASSOCIATE-RQ), so a refusal never reaches it.
    let guard = service.guard.as_ref();
    let opening = {
        let cx = GuardCx {
            rt: &rt,
            conn: &conn,
        };
        or_hard_stop(&rt, guard::open(guard, &mut client, cx)).await
    };
    let opening = match opening {
        Some(Ok(o)) => o,
        Some(Err(denial)) => return deny(&rt, conn, denial, tls, principal),
        None => return deny(&rt, conn, Reason::GatewayShutdown.into(), tls, principal),
    };
    // L4 needs the device before it admits; L7 connects per request.
    let upstream = match service.protocol {
        Protocol::Tcp => {
            match connect_upstream(&service, &rt).await {
                Ok(u) => Some(u),
                Err(denial) => {
                    // The guard tells the client in its protocol, and
                    // records the association it could not pass on.
                    let cx = GuardCx {
                        rt: &rt,
                        conn: &conn,
                    };
                    if let Some(answer) = opening.unreachable(cx, &denial) {
                        let _ = timeout(guard::LAST_WORDS, client.write_all(&answer)).await;
                    }
                    return deny(&rt, conn, denial, tls, principal);
                }
            }
        }
        Protocol::Http | Protocol::Portal => None,
    };
    let started = Instant::now();
    rt.metrics.outcome(&conn.device, &conn.service, Ok(()));
    let labels = ServiceLabels {
        device: conn.device.to_string(),
        service: conn.service.to_string(),
    };
    rt.metrics.active.get_or_create(&labels).inc();
    rt.audit.record(Event::ConnectionAllowed {
        conn: conn.clone(),
        matched: admitted.matched,
        upstream: service.upstream.to_string(),
        tls: tls.clone(),
        principal: principal.clone(),
    });

    let revoked_at = std::sync::OnceLock::new();
    let (watch_id, watch_facts) = (admitted.id.clone(), admitted.facts.clone());
    let revoked = async {
        let (denial, version) = revoked_by_policy(&rt, watch_id, watch_facts).await;
        let _ = revoked_at.set(version);
        denial
    };
    let outcome = match upstream {
        Some(upstream) => {
            let cx = GuardCx {
                rt: &rt,
                conn: &conn,
            };
            guard::relay(
                guard,
                opening,
                client,
                upstream,
                Ends {
                    idle_timeout: service.idle_timeout,
                    stop: &rt.hard_stop,
                    revoked,
                },
                cx,
            )
            .await
        }
        None => {
            let session = super::http::Session {
                rt: rt.clone(),
                id: admitted.id,
                facts: admitted.facts,
                conn: conn.clone(),
                tls: tls.is_some(),
                principal,
                local: admitted.local,
            };
            super::http::serve(client, &service, session, revoked).await
        }
    };
    if let Some(denial) = &outcome.revoked {
        tracing::info!(client = %conn.client, device = %conn.device, service = %conn.service, reason = %denial.reason, "connection revoked");
        rt.metrics
            .outcome(&conn.device, &conn.service, Err(denial.reason));
        rt.audit.record(Event::ConnectionRevoked {
            conn: conn.clone(),
            reason: denial.reason,
            detail: denial.detail.clone(),
            // A user cut (proxy::http::user_watch) happens under the policy in force.
            policy_version: revoked_at
                .get()
                .copied()
                .unwrap_or_else(|| rt.policy.borrow().version),
        });
    }

    if outcome.closed_by == ClosedBy::ProtocolAbuse {
        rt.metrics
            .outcome(&conn.device, &conn.service, Err(Reason::ProtocolAbuse));
    }
    rt.metrics.active.get_or_create(&labels).dec();
    for (direction, n) in [
        ("from_client", outcome.bytes_from_client),
        ("to_client", outcome.bytes_to_client),
    ] {
        rt.metrics
            .bytes
            .get_or_create(&ByteLabels {
                device: labels.device.clone(),
                service: labels.service.clone(),
                direction,
            })
            .inc_by(n);
    }
    rt.audit.record(Event::ConnectionClosed {
        conn,
        bytes_from_client: outcome.bytes_from_client,
        bytes_to_client: outcome.bytes_to_client,
        duration_ms: started.elapsed().as_millis() as u64,
        closed_by: outcome.closed_by,
        error: outcome.error,
    });
}

fn deny(
    rt: &Runtime,
    conn: ConnMeta,
    denial: Denial,
    tls: Option<TlsInfo>,
    principal: Option<Principal>,
) {
    rt.metrics
        .outcome(&conn.device, &conn.service, Err(denial.reason));
    tracing::debug!(client = %conn.client, device = %conn.device, service = %conn.service, reason = %denial.reason, "denied");
    let logged = (conn.clone(), denial.clone());
    let written = rt.audit.record_denial(Event::ConnectionDenied {
        conn,
        reason: denial.reason,
        detail: denial.detail,
        tls,
        principal,
    });
    if written {
        super::log_device_failure(&logged.0, &logged.1);
    }
}

fn describe_tls(stream: &TlsStream<TcpStream>) -> (TlsInfo, Option<Principal>) {
    let (_, session) = stream.get_ref();
    let info = TlsInfo {
        version: session.protocol_version().map_or("unknown", version_name),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        sni: session.server_name().map(str::to_string),
        alpn: session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
    };
    let identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| ClientIdentity::from_der(leaf))
        .map(Principal::certificate);
    (info, identity)
}

fn classify_tls_error(e: &io::Error) -> Denial {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Denial::with_detail(Reason::TlsHandshakeFailed, e.to_string());
    };
    let reason = match tls {
        rustls::Error::NoCertificatesPresented => Reason::ClientCertRequired,
        rustls::Error::InvalidCertificate(_) => Reason::ClientCertRejected,
        _ => Reason::TlsHandshakeFailed,
    };
    Denial::with_detail(reason, tls.to_string())
}

/// Runs a pre-relay step (handshake, upstream connect) unless the grace
/// period ends first, so shutdown never waits out those timeouts.
async fn or_hard_stop<F: std::future::Future>(rt: &Runtime, step: F) -> Option<F::Output> {
    tokio::select! {
        out = step => Some(out),
        _ = rt.hard_stop.cancelled() => None,
    }
}
