//! The chain of controls every listener runs before a client reaches a
//! device. Each control looks at what is known so far and either lets the
//! connection on or refuses it with a typed [`Reason`].
//!
//! The connection-level chain, in order, cheapest first and before any TLS
//! work: (on services with `on_audit_failure = "refuse"`) [`audit_gate`],
//! source allow/deny list, per-client connection rate, (TCP) the
//! device's rate, the service's connection cap (a full TLS service sheds
//! its oldest stalled handshake first), the client's share of it.
//! Controls that need the TLS session (client certificate) run after the
//! handshake, in [`crate::proxy`], and report through the same [`Denial`].
//!
//! [`authorize`] is the one authorization step. It runs at accept (L4 and
//! L7 alike), on every re-check of a live connection ([`recheck`]), and
//! for every HTTP request; identity joins it there: the source first, then
//! (on `mfa` services) the user a valid session names.

mod concurrency;
mod principal;
pub mod rate;
mod reason;
pub mod request;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use concurrency::stalled_after;
pub use concurrency::{ConnectionSlot, ServiceState};
pub use principal::Principal;
pub use reason::{Denial, Reason};

use rustls::pki_types::{CertificateDer, UnixTime};

use crate::auth::grants::{GrantBinding, GrantLookup, Spki};
use crate::auth::{AccessMode, User};
use crate::config::schema::{ClientCertMode, OnAuditFailure, OnGrantEnd};
use crate::policy::{Service, SourceRefusal};

/// A connection that passed the connection-level chain. Holding it holds
/// one of the service's connection slots.
#[derive(Debug)]
pub struct Admitted {
    /// The allow entry that matched the source.
    pub matched: IpNet,
    pub slot: ConnectionSlot,
}

/// Runs the connection-level chain; when the connection cap is reached and
/// the service allows a queue, waits up to `queue_timeout` for a slot.
pub async fn admit_connection_queued(
    service: &Service,
    state: &Arc<ServiceState>,
    client: IpAddr,
    grants: Grants<'_>,
) -> Result<Admitted, Denial> {
    let matched = check_before_cap(service, state, client, grants)?;
    let slot = match state.try_acquire(service.max_connections) {
        Some(slot) => slot,
        None => {
            // Full: a TLS service sheds its oldest stalled handshake (a
            // silent connection, half a ClientHello) and this connection
            // waits the moment its slot takes to come free.
            let shed = service.tls.is_some()
                && state.shed_stalled_handshake(stalled_after(service.handshake_timeout));
            let wait = if shed {
                service.limits.queue_timeout.max(SHED_WAIT)
            } else {
                service.limits.queue_timeout
            };
            if wait.is_zero() {
                return Err(cap_reached(service));
            }
            state
                .acquire_within(service.max_connections, wait)
                .await
                .ok_or_else(|| cap_reached(service))?
        }
    };
    Ok(Admitted {
        matched,
        slot: per_client_share(service, state, client, slot)?,
    })
}

/// How long a connection that made a full service shed a stalled
/// handshake waits for that slot.
const SHED_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs the connection-level chain for a client of `service`, refusing at
/// once at the connection cap.
pub fn admit_connection(
    service: &Service,
    state: &Arc<ServiceState>,
    client: IpAddr,
    grants: Grants<'_>,
) -> Result<Admitted, Denial> {
    let matched = check_before_cap(service, state, client, grants)?;
    let slot = state
        .try_acquire(service.max_connections)
        .ok_or_else(|| cap_reached(service))?;
    Ok(Admitted {
        matched,
        slot: per_client_share(service, state, client, slot)?,
    })
}

/// The gate in front of the chain: a service set to
/// `on_audit_failure = "refuse"` lets nobody on while the audit trail
/// cannot be written (`trail_writable` false), so no access goes
/// unrecorded. Run for every new connection and every HTTP request.
pub fn audit_gate(service: &Service, trail_writable: bool) -> Result<(), Denial> {
    if trail_writable || service.on_audit_failure == OnAuditFailure::Serve {
        return Ok(());
    }
    Err(Denial::with_detail(
        Reason::AuditUnavailable,
        "the audit trail cannot be written",
    ))
}

/// The grants in force, as the accept path reads them: the store's
/// lookup and the time to judge expiry by.
#[derive(Clone, Copy)]
pub struct Grants<'a> {
    pub lookup: &'a dyn GrantLookup,
    pub now: u64,
}

/// Who is asking, as far as the step that asks knows.
#[derive(Clone, Copy)]
pub enum Asking<'a> {
    /// A new connection, before any TLS work: only its address is known.
    /// On a grant service it needs an address grant, unless the service
    /// requires client certificates and holds certificate grants, which
    /// the handshake may still show ([`Asking::Established`] decides).
    Connection(Grants<'a>),
    /// A connection whose handshake (if any) is done, at accept and on
    /// every re-check: with its client certificate's key, if it showed one.
    Established(Grants<'a>, Option<&'a Spki>),
    /// A live connection of a `drain` grant service that a grant
    /// admitted: when its grant ends it is left to finish.
    Draining,
    /// An HTTP request, with the user of its session if it has a valid one.
    Request(Option<&'a User>),
}

impl std::fmt::Debug for Asking<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asking::Connection(_) => f.write_str("Connection"),
            Asking::Established(_, key) => write!(f, "Established(key: {})", key.is_some()),
            Asking::Draining => f.write_str("Draining"),
            Asking::Request(user) => write!(f, "Request({:?})", user.map(|u| &u.name)),
        }
    }
}

/// The one authorization step (see the module comment): the network
/// controls first, never replaced by identity, then who the user is or
/// (TCP) which grant admits the connection. Returns the allow entry that
/// matched the source.
#[inline]
pub fn authorize(service: &Service, client: IpAddr, asking: Asking<'_>) -> Result<IpNet, Denial> {
    let matched = check_source(service, client)?;
    match (&service.access_mode, asking) {
        (AccessMode::Mfa(rule), Asking::Request(user)) => {
            let user = user.ok_or_else(|| Denial::new(Reason::AuthRequired))?;
            if user.disabled {
                let detail = format!("user {}", user.name);
                return Err(Denial::with_detail(Reason::UserDisabled, detail));
            }
            if !rule.admits(user) {
                let detail = format!("user {}", user.name);
                return Err(Denial::with_detail(Reason::UserNotAuthorized, detail));
            }
        }
        (AccessMode::Grant(_), Asking::Connection(grants)) => {
            check_grant(service, client, None, grants, true)?;
        }
        (AccessMode::Grant(_), Asking::Established(grants, key)) => {
            check_grant(service, client, key, grants, false)?;
        }
        _ => {}
    }
    Ok(matched)
}

/// A live grant for this service, by address (one lookup, no
/// allocation), else by the client certificate's key. Before the
/// handshake (`before_tls`), a service that requires certificates and
/// holds certificate grants lets the connection on to show one.
#[inline]
fn check_grant(
    service: &Service,
    client: IpAddr,
    key: Option<&Spki>,
    grants: Grants<'_>,
    before_tls: bool,
) -> Result<(), Denial> {
    let (device, name) = (&*service.device.id, &*service.name);
    let by_address = GrantBinding::Address(client);
    if grants
        .lookup
        .grant_for(device, name, &by_address, grants.now)
        .is_some()
    {
        return Ok(());
    }
    let certificates_required = service.tls.as_ref().is_some_and(|t| {
        t.client_verifier.is_some() && t.client_cert == Some(ClientCertMode::Required)
    });
    if certificates_required {
        if before_tls
            && grants
                .lookup
                .has_certificate_grants(device, name, grants.now)
        {
            return Ok(());
        }
        if let Some(key) = key {
            let by_key = GrantBinding::Certificate(*key);
            if grants
                .lookup
                .grant_for(device, name, &by_key, grants.now)
                .is_some()
            {
                return Ok(());
            }
        }
    }
    Err(Denial::new(Reason::NoGrant))
}

/// Authorization, then rates: everything before the connection cap.
fn check_before_cap(
    service: &Service,
    state: &Arc<ServiceState>,
    client: IpAddr,
    grants: Grants<'_>,
) -> Result<IpNet, Denial> {
    let matched = authorize(service, client, Asking::Connection(grants))?;
    let limiters = state.limiters(&service.limits);
    limiters.check_connection(client)?;
    if service.protocol == crate::config::schema::Protocol::Tcp {
        // For TCP a connection is the unit of work the device sees; HTTP
        // counts requests instead.
        limiters.check_device()?;
    }
    Ok(matched)
}

fn cap_reached(service: &Service) -> Denial {
    Denial::with_detail(
        Reason::MaxConnections,
        format!("limit {}", service.max_connections),
    )
}

/// One client may hold at most `max_connections_per_client` of the slots.
fn per_client_share(
    service: &Service,
    state: &Arc<ServiceState>,
    client: IpAddr,
    slot: ConnectionSlot,
) -> Result<ConnectionSlot, Denial> {
    let limit = service.limits.max_connections_per_client;
    if limit >= service.max_connections {
        // A share as large as the cap never binds: no bookkeeping.
        return Ok(slot);
    }
    state
        .hold_for_client(slot, rate::client_key(client), limit)
        .ok_or_else(|| {
            Denial::with_detail(Reason::MaxConnections, format!("per-client limit {limit}"))
        })
}

/// The source allow/deny control, the first part of [`authorize`].
#[inline]
fn check_source(service: &Service, client: IpAddr) -> Result<IpNet, Denial> {
    service
        .access
        .check(client)
        .map_err(|refusal| match refusal {
            SourceRefusal::Denylisted(entry) => {
                Denial::with_detail(Reason::Denylisted, format!("matched deny {entry}"))
            }
            SourceRefusal::NotAllowlisted => Denial::new(Reason::NotAllowlisted),
        })
}

/// What a live connection was admitted with, kept so it can be re-checked
/// when a new policy is published.
#[derive(Debug, Clone)]
pub struct ConnFacts {
    pub client: IpAddr,
    /// The service it was admitted to: another service on the same listen
    /// address (moved device, renamed service, new protocol, or for TCP a
    /// new upstream) is not the one that admitted it.
    pub device: Arc<str>,
    pub service: Arc<str>,
    pub protocol: crate::config::schema::Protocol,
    pub upstream: crate::policy::Upstream,
    pub tls: bool,
    /// The TLS version negotiated, when TLS is terminated.
    pub tls_version: Option<rustls::ProtocolVersion>,
    /// The client's certificate chain, leaf first, if it presented one.
    pub peer_chain: Option<Vec<CertificateDer<'static>>>,
    /// The SHA-256 of the leaf's public key: what certificate grants bind.
    pub peer_key: Option<Spki>,
    /// A grant admitted it (an `mfa` TCP service): `drain` leaves it be
    /// when the grant ends.
    pub by_grant: bool,
}

impl ConnFacts {
    /// The facts of a connection from `client` admitted to `service`, with
    /// what its TLS handshake settled if moat terminated TLS.
    pub fn new(
        client: IpAddr,
        service: &Service,
        tls: Option<&rustls::ServerConnection>,
    ) -> ConnFacts {
        ConnFacts {
            client,
            device: service.device.id.clone(),
            service: service.name.clone(),
            protocol: service.protocol,
            upstream: service.upstream.clone(),
            tls: tls.is_some(),
            tls_version: tls.and_then(|t| t.protocol_version()),
            peer_chain: tls.and_then(|t| {
                t.peer_certificates()
                    .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            }),
            peer_key: tls
                .and_then(|t| t.peer_certificates())
                .and_then(|c| c.first())
                .and_then(|leaf| crate::tls::spki_sha256(leaf)),
            by_grant: matches!(service.access_mode, AccessMode::Grant(_)),
        }
    }
}

/// Would this connection still be admitted under `service` (the new
/// policy's version of its service, `None` if it is gone)? The same
/// controls as at accept time, minus the connection cap: a shrunken cap
/// refuses new connections but does not cut established ones.
pub fn recheck(
    service: Option<&Service>,
    facts: &ConnFacts,
    grants: Grants<'_>,
) -> Result<(), Denial> {
    let Some(service) = service else {
        return Err(Denial::new(Reason::ServiceRemoved));
    };
    let relayed_elsewhere = service.protocol == crate::config::schema::Protocol::Tcp
        && service.upstream != facts.upstream;
    if service.device.id != facts.device
        || service.name != facts.service
        || service.protocol != facts.protocol
        || relayed_elsewhere
    {
        let detail = format!(
            "now {}/{} ({:?}, {})",
            service.device.id, service.name, service.protocol, service.upstream
        );
        return Err(Denial::with_detail(Reason::ServiceChanged, detail));
    }
    let asking = match &service.access_mode {
        AccessMode::Grant(rule) if facts.by_grant && rule.on_end == OnGrantEnd::Drain => {
            Asking::Draining
        }
        _ => Asking::Established(grants, facts.peer_key.as_ref()),
    };
    authorize(service, facts.client, asking).map_err(|d| match d.reason {
        // It was in on a grant, which has ended.
        Reason::NoGrant if facts.by_grant => Denial::new(Reason::GrantEnded),
        _ => d,
    })?;
    if service.tls.is_some() != facts.tls {
        return Err(Denial::new(Reason::TlsPolicyChanged));
    }
    let Some(tls) = &service.tls else {
        return Ok(());
    };
    if tls.min_version == crate::config::schema::TlsVersion::Tls13
        && facts.tls_version != Some(rustls::ProtocolVersion::TLSv1_3)
    {
        return Err(Denial::with_detail(
            Reason::TlsPolicyChanged,
            "min_version is now 1.3",
        ));
    }
    match (&tls.client_verifier, &facts.peer_chain) {
        (Some(verifier), Some(chain)) => {
            let (leaf, intermediates) =
                chain.split_first().expect("a presented chain is not empty");
            verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
                .map(|_| ())
                .map_err(|e| Denial::with_detail(Reason::ClientCertRejected, e.to_string()))
        }
        (Some(_), None) if tls.client_cert == Some(ClientCertMode::Required) => {
            Err(Denial::new(Reason::ClientCertRequired))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::Policy;

    fn policy(device: &str, upstream: &str, allow: &str) -> Policy {
        let text = format!(
            "[[device]]\nid = \"{device}\"\nname = \"d\"\n[[device.service]]\nname = \"s\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:11112\"\nupstream = \"{upstream}\"\nallow = [\"{allow}\"]\nplaintext = true\n"
        );
        let cfg = crate::config::parse(Path::new("moat.toml"), text).unwrap();
        crate::policy::compile(&cfg, 1).unwrap()
    }

    const NO_GRANTS: Grants<'static> = Grants {
        lookup: &NoGrants,
        now: 0,
    };

    struct NoGrants;
    impl GrantLookup for NoGrants {
        fn grant_for(
            &self,
            _: &str,
            _: &str,
            _: &GrantBinding,
            _: u64,
        ) -> Option<crate::auth::grants::GrantId> {
            None
        }
        fn has_certificate_grants(&self, _: &str, _: &str, _: u64) -> bool {
            false
        }
    }

    fn facts(p: &Policy) -> ConnFacts {
        ConnFacts::new("10.0.0.7".parse().unwrap(), &p.services[0], None)
    }

    #[test]
    fn recheck_follows_the_service_not_just_the_listener() {
        let before = policy("ct", "10.1.0.5:104", "10.0.0.0/8");
        let f = facts(&before);
        // Still admitted: a wider allow list.
        assert!(recheck(
            Some(&policy("ct", "10.1.0.5:104", "0.0.0.0/0").services[0]),
            &f,
            NO_GRANTS
        )
        .is_ok());
        // Source no longer allowed.
        let d = recheck(
            Some(&policy("ct", "10.1.0.5:104", "192.168.0.0/16").services[0]),
            &f,
            NO_GRANTS,
        )
        .unwrap_err();
        assert_eq!(d.reason, Reason::NotAllowlisted);
        // Same port, another device, or the device moved: not the service it was admitted to.
        for p in [
            policy("mri", "10.1.0.5:104", "10.0.0.0/8"),
            policy("ct", "10.1.0.6:104", "10.0.0.0/8"),
        ] {
            assert_eq!(
                recheck(Some(&p.services[0]), &f, NO_GRANTS)
                    .unwrap_err()
                    .reason,
                Reason::ServiceChanged
            );
        }
        assert_eq!(
            recheck(None, &f, NO_GRANTS).unwrap_err().reason,
            Reason::ServiceRemoved
        );
    }

    fn user(name: &str, groups: &[&str], disabled: bool) -> User {
        User {
            name: name.into(),
            password_hash: String::new(),
            totp_secret: Vec::new(),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            disabled,
            stamp: Default::default(),
        }
    }

    #[test]
    fn authorize_adds_the_user_to_the_network_controls_never_replaces_them() {
        let mut p = policy("pump", "10.1.0.5:80", "10.0.0.0/8");
        let mut service = Arc::try_unwrap(p.services.remove(0)).unwrap();
        service.access_mode = AccessMode::Mfa(crate::auth::MfaRule {
            users: vec!["alice".into()],
            groups: vec!["biomed".into()],
            user_header: None,
            anyone: false,
        });
        let inside: IpAddr = "10.0.0.7".parse().unwrap();
        let outside: IpAddr = "192.168.1.1".parse().unwrap();
        let alice = user("alice", &[], false);
        let bob = user("bob", &["biomed"], false);
        let eve = user("eve", &["radiology"], false);
        let carol = user("carol", &["biomed"], true);
        // A connection needs no user yet; a request does.
        let none = crate::auth::grants::GrantIndex::default();
        let grants = Grants {
            lookup: &none,
            now: 0,
        };
        assert!(authorize(&service, inside, Asking::Connection(grants)).is_ok());
        let reason = |r: Result<IpNet, Denial>| r.unwrap_err().reason;
        assert_eq!(
            reason(authorize(&service, inside, Asking::Request(None))),
            Reason::AuthRequired
        );
        assert!(authorize(&service, inside, Asking::Request(Some(&alice))).is_ok());
        assert!(authorize(&service, inside, Asking::Request(Some(&bob))).is_ok());
        assert_eq!(
            reason(authorize(&service, inside, Asking::Request(Some(&eve)))),
            Reason::UserNotAuthorized
        );
        assert_eq!(
            reason(authorize(&service, inside, Asking::Request(Some(&carol)))),
            Reason::UserDisabled
        );
        // The right user from the wrong network is still refused, first.
        for asking in [Asking::Connection(grants), Asking::Request(Some(&alice))] {
            assert_eq!(
                reason(authorize(&service, outside, asking)),
                Reason::NotAllowlisted
            );
        }
        // A network service ignores users altogether.
        service.access_mode = AccessMode::Network;
        assert!(authorize(&service, inside, Asking::Request(None)).is_ok());
    }
}
