//! The one list of reasons a connection or request can be refused or ended.
//! The audit trail, the metric labels and (for HTTP) the error page all use
//! these names, so they can never disagree.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The source address matched no allow entry.
    NotAllowlisted,
    /// The source address matched a deny entry.
    Denylisted,
    /// The service already holds `max_connections` connections.
    MaxConnections,
    /// The TLS handshake failed (protocol version, cipher, garbage …).
    TlsHandshakeFailed,
    /// The client did not finish the TLS handshake in time.
    TlsHandshakeTimeout,
    /// A client certificate is required and none was presented.
    ClientCertRequired,
    /// The client certificate did not verify against the configured CA.
    ClientCertRejected,
    /// The device refused the connection or could not be resolved.
    UpstreamUnreachable,
    /// The device did not accept the connection within `connect_timeout`.
    UpstreamTimeout,
    /// A new policy no longer has the service this connection came through.
    ServiceRemoved,
    /// A new policy turned TLS on or off for the service.
    TlsPolicyChanged,
    /// A new policy serves another device, service, protocol or (TCP)
    /// upstream on this connection's listener.
    ServiceChanged,
    /// An HTTP request rule denies this method and path.
    RequestDenied,
    /// The request is malformed or ambiguous: a path form common servers
    /// read differently (encoded `/`, `;` or `%`, `..;`, trailing dots,
    /// non-ASCII, …), or a missing, repeated or disagreeing `Host`.
    BadRequest,
    /// CONNECT: moat is never a forward proxy.
    ConnectRefused,
    /// Request headers exceed the configured count or size.
    HeadersTooLarge,
    /// The request body exceeds `max_body_bytes`.
    BodyTooLarge,
    /// The grace period ended while the connection was still being set up.
    GatewayShutdown,
    /// This client exceeded its connection or request rate.
    RateLimitedClient,
    /// This authenticated identity exceeded its request rate.
    RateLimitedIdentity,
    /// All clients together exceeded the rate the device is allowed.
    RateLimitedDevice,
    /// The device already has `max_in_flight` requests and none finished in
    /// `queue_timeout`.
    DeviceBusy,
    /// The request's `Host` (or h2 `:authority`) names a host this service
    /// does not answer to.
    MisdirectedRequest,
    /// The client's request body is malformed (bad chunked framing, more
    /// data than declared).
    MalformedBody,
    /// The client went away before its request was complete.
    ClientAborted,
    /// The client's request body arrived too slowly (a gap between reads
    /// over `body_read_timeout`, or under `min_body_rate`).
    BodyTimeout,
    /// The client abused the protocol itself (an h2 control-frame flood,
    /// streams reset by the hundred).
    ProtocolAbuse,
    /// moat ran out of file descriptors: the connection was shed.
    FdExhausted,
    /// The audit trail cannot be written (a full disk) and the gateway is
    /// set to refuse unrecorded access (`on_audit_failure = "refuse"`).
    AuditUnavailable,
    /// An `mfa` service: the request carries no valid session (none, or
    /// one that is forged, expired, logged out or of another key).
    AuthRequired,
    /// A valid session of a user this service does not admit (not in its
    /// `users`, in none of its `groups`).
    UserNotAuthorized,
    /// The session's user is disabled in the users file.
    UserDisabled,
    /// The user's sessions were ended (logout elsewhere, revocation), or
    /// the user left the users file: live connections are cut.
    SessionRevoked,
    /// Logins from this source come faster than `[auth] login_rate`.
    LoginRateLimited,
    /// A portal form came without its CSRF token, or from another origin.
    CsrfRejected,
    /// An `mfa` TCP service: no live grant for this address or this
    /// client certificate's key.
    NoGrant,
    /// The grant that admitted a live connection ended (expired, revoked,
    /// the user disabled, the policy changed).
    GrantEnded,
    /// A DICOM PDU that is not well formed: an unknown type, a truncated or
    /// inconsistent item, garbage.
    DicomMalformed,
    /// An A-ASSOCIATE-RQ of a protocol version moat does not speak.
    DicomProtocolVersion,
    /// The called AE title is not the device's own.
    DicomCalledAe,
    /// The calling AE title is not in `calling_ae_titles`.
    DicomCallingAe,
    /// A presentation context proposes a SOP class that `abstract_syntaxes`
    /// does not list (or, with `refused_contexts = "drop"`, none is left).
    DicomAbstractSyntax,
    /// A PDU longer than `max_pdu_length` (or the association-request cap).
    DicomPduTooLarge,
    /// A PDU of a type that does not belong at this point of the
    /// association (a second A-ASSOCIATE-RQ, P-DATA before the association).
    DicomUnexpectedPdu,
    /// P-DATA on a presentation context the association did not accept.
    DicomPresentationContext,
    /// No complete A-ASSOCIATE-RQ (or device answer) within
    /// `association_timeout`.
    DicomTimeout,
    /// MLLP framing broken: no start byte, stray bytes between frames, an
    /// end byte not followed by a carriage return.
    Hl7Framing,
    /// An HL7 message longer than `max_message_bytes`.
    Hl7TooLarge,
    /// An MLLP frame left unfinished past `frame_timeout`.
    Hl7Timeout,
    /// A framed message that does not start with a readable MSH segment.
    Hl7Malformed,
    /// The sending application or facility (MSH-3, MSH-4) is not allowed.
    Hl7Sender,
    /// The receiving application or facility (MSH-5, MSH-6) is not allowed.
    Hl7Receiver,
    /// The message type (MSH-9) is not allowed.
    Hl7MessageType,
}

impl Reason {
    pub const ALL: [Reason; 53] = [
        Reason::NotAllowlisted,
        Reason::Denylisted,
        Reason::MaxConnections,
        Reason::TlsHandshakeFailed,
        Reason::TlsHandshakeTimeout,
        Reason::ClientCertRequired,
        Reason::ClientCertRejected,
        Reason::UpstreamUnreachable,
        Reason::UpstreamTimeout,
        Reason::ServiceRemoved,
        Reason::TlsPolicyChanged,
        Reason::ServiceChanged,
        Reason::RequestDenied,
        Reason::BadRequest,
        Reason::ConnectRefused,
        Reason::HeadersTooLarge,
        Reason::BodyTooLarge,
        Reason::GatewayShutdown,
        Reason::RateLimitedClient,
        Reason::RateLimitedIdentity,
        Reason::RateLimitedDevice,
        Reason::DeviceBusy,
        Reason::MisdirectedRequest,
        Reason::MalformedBody,
        Reason::ClientAborted,
        Reason::BodyTimeout,
        Reason::ProtocolAbuse,
        Reason::FdExhausted,
        Reason::AuditUnavailable,
        Reason::AuthRequired,
        Reason::UserNotAuthorized,
        Reason::UserDisabled,
        Reason::SessionRevoked,
        Reason::LoginRateLimited,
        Reason::CsrfRejected,
        Reason::NoGrant,
        Reason::GrantEnded,
        Reason::DicomMalformed,
        Reason::DicomProtocolVersion,
        Reason::DicomCalledAe,
        Reason::DicomCallingAe,
        Reason::DicomAbstractSyntax,
        Reason::DicomPduTooLarge,
        Reason::DicomUnexpectedPdu,
        Reason::DicomPresentationContext,
        Reason::DicomTimeout,
        Reason::Hl7Framing,
        Reason::Hl7TooLarge,
        Reason::Hl7Timeout,
        Reason::Hl7Malformed,
        Reason::Hl7Sender,
        Reason::Hl7Receiver,
        Reason::Hl7MessageType,
    ];

    /// The protocol guard a reason belongs to, if any.
    pub fn guard(self) -> Option<&'static str> {
        let name = self.as_str();
        if name.starts_with("dicom_") {
            Some("dicom")
        } else if name.starts_with("hl7_") {
            Some("hl7-mllp")
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowlisted => "not_allowlisted",
            Reason::Denylisted => "denylisted",
            Reason::MaxConnections => "max_connections",
            Reason::TlsHandshakeFailed => "tls_handshake_failed",
            Reason::TlsHandshakeTimeout => "tls_handshake_timeout",
            Reason::ClientCertRequired => "client_cert_required",
            Reason::ClientCertRejected => "client_cert_rejected",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::ServiceRemoved => "service_removed",
            Reason::TlsPolicyChanged => "tls_policy_changed",
            Reason::ServiceChanged => "service_changed",
            Reason::RequestDenied => "request_denied",
            Reason::BadRequest => "bad_request",
            Reason::ConnectRefused => "connect_refused",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::BodyTooLarge => "body_too_large",
            Reason::GatewayShutdown => "gateway_shutdown",
            Reason::RateLimitedClient => "rate_limited_client",
            Reason::RateLimitedIdentity => "rate_limited_identity",
            Reason::RateLimitedDevice => "rate_limited_device",
            Reason::DeviceBusy => "device_busy",
            Reason::MisdirectedRequest => "misdirected_request",
            Reason::MalformedBody => "malformed_body",
            Reason::ClientAborted => "client_aborted",
            Reason::BodyTimeout => "body_timeout",
            Reason::ProtocolAbuse => "protocol_abuse",
            Reason::FdExhausted => "fd_exhausted",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::AuthRequired => "auth_required",
            Reason::UserNotAuthorized => "user_not_authorized",
            Reason::UserDisabled => "user_disabled",
            Reason::SessionRevoked => "session_revoked",
            Reason::LoginRateLimited => "login_rate_limited",
            Reason::CsrfRejected => "csrf_rejected",
            Reason::NoGrant => "no_grant",
            Reason::GrantEnded => "grant_ended",
            Reason::DicomMalformed => "dicom_malformed",
            Reason::DicomProtocolVersion => "dicom_protocol_version",
            Reason::DicomCalledAe => "dicom_called_ae",
            Reason::DicomCallingAe => "dicom_calling_ae",
            Reason::DicomAbstractSyntax => "dicom_abstract_syntax",
            Reason::DicomPduTooLarge => "dicom_pdu_too_large",
            Reason::DicomUnexpectedPdu => "dicom_unexpected_pdu",
            Reason::DicomPresentationContext => "dicom_presentation_context",
            Reason::DicomTimeout => "dicom_timeout",
            Reason::Hl7Framing => "hl7_framing",
            Reason::Hl7TooLarge => "hl7_too_large",
            Reason::Hl7Timeout => "hl7_timeout",
            Reason::Hl7Malformed => "hl7_malformed",
            Reason::Hl7Sender => "hl7_sender",
            Reason::Hl7Receiver => "hl7_receiver",
            Reason::Hl7MessageType => "hl7_message_type",
        }
    }

    /// Denials anyone (an unlisted scanner, a flood, a dead device) can make
    /// moat produce in bulk; the audit trail summarises these under load.
    pub fn flood_prone(self) -> bool {
        matches!(
            self,
            Reason::NotAllowlisted
                | Reason::Denylisted
                | Reason::MaxConnections
                | Reason::TlsHandshakeFailed
                | Reason::TlsHandshakeTimeout
                | Reason::UpstreamUnreachable
                | Reason::UpstreamTimeout
                | Reason::RateLimitedClient
                | Reason::RateLimitedIdentity
                | Reason::RateLimitedDevice
                | Reason::DeviceBusy
                | Reason::GatewayShutdown
                | Reason::ClientAborted
                | Reason::BodyTimeout
                | Reason::ProtocolAbuse
                | Reason::FdExhausted
                | Reason::AuditUnavailable
                | Reason::AuthRequired
                | Reason::LoginRateLimited
                | Reason::CsrfRejected
                | Reason::NoGrant
                | Reason::DicomMalformed
                | Reason::DicomPduTooLarge
                | Reason::DicomTimeout
                | Reason::Hl7Framing
                | Reason::Hl7TooLarge
                | Reason::Hl7Timeout
                | Reason::Hl7Malformed
        )
    }

    /// The HTTP status an L7 service answers with for this reason.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::BadRequest | Reason::MalformedBody | Reason::ProtocolAbuse => 400,
            Reason::BodyTimeout => 408,
            Reason::MisdirectedRequest => 421,
            // nginx's "client closed request": logged, never delivered.
            Reason::ClientAborted => 499,
            Reason::ConnectRefused => 405,
            Reason::BodyTooLarge => 413,
            Reason::HeadersTooLarge => 431,
            Reason::UpstreamUnreachable => 502,
            Reason::UpstreamTimeout => 504,
            Reason::RateLimitedClient | Reason::RateLimitedIdentity | Reason::LoginRateLimited => {
                429
            }
            Reason::AuthRequired | Reason::SessionRevoked => 401,
            Reason::MaxConnections
            | Reason::GatewayShutdown
            | Reason::RateLimitedDevice
            | Reason::DeviceBusy
            | Reason::FdExhausted
            | Reason::AuditUnavailable => 503,
            _ => 403,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: the typed reason plus a human detail for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub detail: Option<String>,
    /// When the client may try again (rate limits, busy device).
    pub retry_after: Option<std::time::Duration>,
}

impl Denial {
    pub fn new(reason: Reason) -> Self {
        Denial {
            reason,
            detail: None,
            retry_after: None,
        }
    }
    pub fn with_detail(reason: Reason, detail: impl Into<String>) -> Self {
        Denial {
            reason,
            detail: Some(detail.into()),
            retry_after: None,
        }
    }
}

impl From<Reason> for Denial {
    fn from(reason: Reason) -> Self {
        Denial::new(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate name {r}");
            // The audit trail (serde) and metrics/error pages (as_str) agree.
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert!((400..600).contains(&r.http_status()));
        }
    }
}
