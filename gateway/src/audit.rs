//! The audit trail: one JSON object per line for every decision.
//!
//! Security teams read this, so it is separate from operational logs
//! (`tracing`, on stderr) and its schema is documented in `docs/audit.md`.
//! Recording never blocks the data plane: events go into a bounded queue
//! and a writer task serialises and writes them. If the queue is ever full
//! the event is counted in `moat_audit_dropped_total` and logged, rather
//! than stalling clinical traffic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::auth::login::AuthFailure;
use crate::controls::{Principal, Reason};
use crate::policy::diff::PolicyDiff;
use crate::policy::lifecycle::Trigger;
use crate::policy::AuditTarget;

/// Public for the sealing benchmark (benches/benches/audit_chain.rs).
pub mod chain;
pub mod siem;
pub mod verify;
mod writer;

const QUEUE_DEPTH: usize = 65_536;

/// Identifies one connection across its audit events.
#[derive(Debug, Clone, Serialize)]
pub struct ConnMeta {
    pub conn_id: u64,
    pub device: Arc<str>,
    pub service: Arc<str>,
    pub client: SocketAddr,
    pub listen: SocketAddr,
}

/// What was negotiated on a TLS connection.
#[derive(Debug, Clone, Serialize)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
}

/// A presentation context of a DICOM association.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DicomContext {
    pub id: u8,
    pub abstract_syntax: String,
    /// The transfer syntax the device accepted (accepted contexts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_syntax: Option<String>,
}

/// What became of a DICOM association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DicomOutcome {
    /// The device accepted it (at least one presentation context).
    Accepted,
    /// moat refused it with an A-ASSOCIATE-RJ; the device never saw it.
    Rejected,
    /// The device answered with an A-ASSOCIATE-RJ.
    RejectedByDevice,
    /// Aborted during negotiation (by the device, or by moat on a
    /// malformed answer or a timeout).
    Aborted,
}

/// What moat did with an HL7 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hl7Decision {
    Forwarded,
    Refused,
}

/// Who or what ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    Client,
    Upstream,
    IdleTimeout,
    Shutdown,
    /// A new policy no longer admits the connection.
    Revoked,
    /// An HTTP client did not send a complete request head in time.
    HeaderTimeout,
    /// An h2 client flooded control frames or reset streams by the hundred:
    /// cut with GOAWAY `ENHANCE_YOUR_CALM`.
    ProtocolAbuse,
    /// A protocol guard (DICOM, HL7 MLLP) found a violation and closed the
    /// connection (`guard_violation` says which).
    GuardViolation,
    Error,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    GatewayStarted {
        moat_version: &'static str,
        policy_version: u64,
        policy_hash: String,
        services: usize,
    },
    ListenerStarted {
        device: Arc<str>,
        service: Arc<str>,
        listen: SocketAddr,
        tls: bool,
    },
    ConnectionAllowed {
        #[serde(flatten)]
        conn: ConnMeta,
        /// The allow entry that admitted the source.
        matched: String,
        upstream: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        tls: Option<TlsInfo>,
        /// The client certificate's identity, when one was presented.
        #[serde(skip_serializing_if = "Option::is_none")]
        principal: Option<Principal>,
    },
    ConnectionDenied {
        #[serde(flatten)]
        conn: ConnMeta,
        reason: Reason,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tls: Option<TlsInfo>,
        /// The client certificate's identity, when one was presented.
        #[serde(skip_serializing_if = "Option::is_none")]
        principal: Option<Principal>,
    },
    ConnectionClosed {
        #[serde(flatten)]
        conn: ConnMeta,
        bytes_from_client: u64,
        bytes_to_client: u64,
        duration_ms: u64,
        closed_by: ClosedBy,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// One HTTP request: allowed (when the service audits those) or denied.
    HttpRequest {
        #[serde(flatten)]
        conn: ConnMeta,
        method: String,
        /// The normalised path (what the rules saw and the device received).
        path: String,
        version: &'static str,
        status: u16,
        response_bytes: u64,
        duration_ms: u64,
        decision: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Who made the request: the session's user on an `mfa` service,
        /// else the client certificate's identity, when there is one.
        #[serde(skip_serializing_if = "Option::is_none")]
        principal: Option<Principal>,
    },
    /// A person signed in through the portal of an `mfa` service.
    AuthSucceeded {
        #[serde(flatten)]
        conn: ConnMeta,
        user: Arc<str>,
    },
    /// A login that failed, with the exact reason (the person only reads
    /// "wrong username, password or code"). `user` is set only when the
    /// name given is a user of the users file: a password typed into the
    /// username field never reaches the trail.
    AuthFailed {
        #[serde(flatten)]
        conn: ConnMeta,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<Arc<str>>,
        reason: AuthFailure,
    },
    /// Failed logins locked a user or a source address.
    AuthLockout {
        #[serde(flatten)]
        conn: ConnMeta,
        /// "user" or "source".
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<Arc<str>>,
        failures: u32,
        /// Unix seconds when the lock ends.
        until: u64,
    },
    /// A session ended: `logout`, `idle`, `absolute` (its timeouts, seen
    /// when the cookie next came) or `revoked` (a logout elsewhere).
    SessionEnded {
        #[serde(flatten)]
        conn: ConnMeta,
        user: Arc<str>,
        reason: &'static str,
    },
    /// A person opened a grant on a portal (password and TOTP code, or a
    /// break-glass code).
    GrantOpened {
        #[serde(flatten)]
        conn: ConnMeta,
        grant_id: crate::auth::grants::GrantId,
        user: Arc<str>,
        /// The grant's TCP service (`conn` is the portal's request).
        granted_device: Arc<str>,
        granted_service: Arc<str>,
        binding: crate::auth::grants::GrantBinding,
        until: u64,
        break_glass: bool,
    },
    /// A grant ended; new connections are refused from now on and live
    /// ones are cut (`connection_revoked`, `grant_ended`) or drain.
    GrantEnded {
        grant_id: crate::auth::grants::GrantId,
        user: Arc<str>,
        device: Arc<str>,
        service: Arc<str>,
        binding: crate::auth::grants::GrantBinding,
        reason: crate::auth::grants::GrantEnd,
        /// Who ended it, for `revoked_by_ops` (the admin client's address).
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// A sealed emergency code stood in for a TOTP code. Always `high`
    /// severity: every use is an incident to review.
    BreakGlassUsed {
        #[serde(flatten)]
        conn: ConnMeta,
        severity: &'static str,
        user: Arc<str>,
        granted_device: Arc<str>,
        granted_service: Arc<str>,
        /// The public id of the code used (printed on it), never the code.
        code_id: String,
        grant_id: crate::auth::grants::GrantId,
        until: u64,
    },
    /// One DICOM association (guard = "dicom"): what it asked for and what
    /// became of it. AE titles and SOP class UIDs only, never patient data.
    DicomAssociation {
        #[serde(flatten)]
        conn: ConnMeta,
        calling_ae: String,
        called_ae: String,
        contexts_asked: Vec<DicomContext>,
        contexts_accepted: Vec<DicomContext>,
        outcome: DicomOutcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// One HL7 message (guard = "hl7-mllp"): its header fields and the
    /// decision. Never the message body.
    Hl7Message {
        #[serde(flatten)]
        conn: ConnMeta,
        control_id: String,
        message_type: String,
        sending_application: String,
        sending_facility: String,
        receiving_application: String,
        receiving_facility: String,
        decision: Hl7Decision,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        /// The acknowledgment code moat answered a refusal with ("AR", "CR").
        #[serde(skip_serializing_if = "Option::is_none")]
        ack: Option<&'static str>,
    },
    /// A protocol guard closed the connection: malformed or oversize
    /// input, a framing error, a timeout, an unexpected PDU.
    GuardViolation {
        #[serde(flatten)]
        conn: ConnMeta,
        guard: &'static str,
        reason: Reason,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    ListenerStopped {
        device: Arc<str>,
        service: Arc<str>,
        listen: SocketAddr,
    },
    /// A live connection that a newly published policy no longer admits.
    /// Followed by its `connection_closed` with `closed_by: "revoked"`.
    ConnectionRevoked {
        #[serde(flatten)]
        conn: ConnMeta,
        reason: Reason,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        policy_version: u64,
    },
    ReloadApplied {
        trigger: Trigger,
        old_version: u64,
        new_version: u64,
        old_hash: String,
        new_hash: String,
        changes: PolicyDiff,
    },
    ReloadRejected {
        trigger: Trigger,
        version_in_force: u64,
        errors: Vec<String>,
    },
    /// Denials not written individually in the last `window_ms`, because
    /// they came faster than the audit trail admits (a scan or a flood).
    /// They are still counted in `moat_connections_total` and
    /// `moat_http_requests_total`.
    DenialsSuppressed {
        count: u64,
        by_reason: std::collections::BTreeMap<&'static str, u64>,
        window_ms: u64,
    },
    GatewayStopping {
        grace_ms: u64,
        active_connections: usize,
    },
    GatewayStopped {
        /// Connections still open when the grace period ran out.
        cut_connections: usize,
    },
    /// The audit file was rotated away ("renamed") or "deleted"; this is
    /// the first line of the new file, chained to the old file's last.
    AuditFileReopened { reason: &'static str },
    /// `count` events could not be written to the audit file (the disk
    /// was full, the file system failed) between `first_lost` and
    /// `last_lost`; this is the first line written after. They are not in
    /// the chain, which goes on verifiable. `error` is the last failure.
    AuditRecordsLost {
        count: u64,
        first_lost: String,
        last_lost: String,
        error: String,
    },
    /// The SIEM spool was full: `count` events since the last report did
    /// not go to the SIEM (they are in this file). At most once a second.
    SiemEventsDropped { count: u64, spool_max_bytes: u64 },
}

/// One line of the trail before the writer seals it into the hash chain
/// (`chain.rs` appends `seq`, `prev` and `hash`).
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

enum Msg {
    Record(SystemTime, Box<Event>),
    Flush(oneshot::Sender<()>),
    /// Once a second while the trail is not writable: try again.
    Retry,
}

/// Denials written individually: 200 a second, bursts of 1000. Beyond
/// that a scan or flood is summarised once a second, so an attack cannot
/// flood the trail (or the disk) while every allowed connection is kept.
const DENIALS_PER_SECOND: u32 = 200;
const DENIAL_BURST: u32 = 1000;

struct FloodGate {
    limiter: governor::DefaultDirectRateLimiter,
    suppressed: AtomicU64,
    /// Per reason, indexed like `Reason::ALL`.
    by_reason: [AtomicU64; Reason::ALL.len()],
}

/// A cheap, cloneable handle for recording events.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Whether the writer's last write and flush reached the file.
    writable: Arc<AtomicBool>,
    /// The SIEM sink's counters, when `[siem]` is configured.
    siem_stats: Option<Arc<siem::SiemStats>>,
    flood: Arc<FloodGate>,
}

impl Audit {
    /// Opens the target, resumes its hash chain, starts the SIEM sink
    /// when `[siem]` is configured, and starts the writer thread.
    pub async fn start(
        target: &AuditTarget,
        siem: Option<Arc<siem::SiemPolicy>>,
    ) -> std::io::Result<Audit> {
        let output = writer::Output::open(target)?;
        let chain = chain::Chain::resume(target)?;
        let siem = siem.map(siem::SiemSink::start).transpose()?;
        let siem_stats = siem.as_ref().map(siem::SiemSink::stats);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        if let Some(s) = &siem {
            s.report_to(tx.downgrade());
        }
        // A thread of its own: file writes block, and must never do so on
        // (or through the blocking pool of) the data-plane runtime.
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let writable = Arc::new(AtomicBool::new(true));
        let mut w = writer::Writer::new(output, chain, siem, lost, writable.clone());
        std::thread::Builder::new()
            .name("moat-audit".into())
            .spawn(move || w.run(rx))?;
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(DENIALS_PER_SECOND).expect("non-zero"),
        )
        .allow_burst(std::num::NonZeroU32::new(DENIAL_BURST).expect("non-zero"));
        let audit = Audit {
            tx,
            dropped,
            writable,
            siem_stats,
            flood: Arc::new(FloodGate {
                limiter: governor::RateLimiter::direct(quota),
                suppressed: AtomicU64::new(0),
                by_reason: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        };
        let summary = audit.clone();
        tokio::spawn(async move {
            let window = std::time::Duration::from_secs(1);
            let mut tick = tokio::time::interval(window);
            loop {
                tick.tick().await;
                if !summary.writable() {
                    let _ = summary.tx.try_send(Msg::Retry);
                }
                let count = summary.flood.suppressed.swap(0, Ordering::Relaxed);
                if count > 0 {
                    let by_reason = Reason::ALL
                        .iter()
                        .zip(&summary.flood.by_reason)
                        .filter_map(|(r, n)| {
                            let n = n.swap(0, Ordering::Relaxed);
                            (n > 0).then_some((r.as_str(), n))
                        })
                        .collect();
                    summary.record(Event::DenialsSuppressed {
                        count,
                        by_reason,
                        window_ms: window.as_millis() as u64,
                    });
                }
                if summary.tx.is_closed() {
                    break;
                }
            }
        });
        Ok(audit)
    }

    /// Records a denial. Denials an outsider or a flood can generate in
    /// bulk (scans, rate limits, a busy or dead device) are summarised when
    /// they arrive faster than the trail admits (`denials_suppressed`);
    /// those that say something about one admitted client (client
    /// certificates, request rules, malformed requests) are always written.
    /// Returns whether it was written on its own (not summarised), so that
    /// anything logged alongside is held to the same budget.
    pub fn record_denial(&self, event: Event) -> bool {
        let reason = match &event {
            Event::ConnectionDenied { reason, .. } => Some(*reason),
            Event::GuardViolation { reason, .. } => Some(*reason),
            Event::HttpRequest { reason, .. } => *reason,
            // What a login flood makes in bulk: summarised like denials.
            Event::AuthFailed { reason, .. } => match reason {
                AuthFailure::RateLimited | AuthFailure::Busy => Some(Reason::LoginRateLimited),
                AuthFailure::BadCsrf => Some(Reason::CsrfRejected),
                _ => None,
            },
            _ => None,
        };
        let Some(reason) = reason.filter(|r| r.flood_prone()) else {
            self.record(event);
            return true;
        };
        if self.flood.limiter.check().is_ok() {
            self.record(event);
            return true;
        }
        self.flood.suppressed.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.flood.by_reason[i].fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Queues an event. Never waits.
    pub fn record(&self, event: Event) {
        if self
            .tx
            .try_send(Msg::Record(SystemTime::now(), Box::new(event)))
            .is_err()
        {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "audit queue full or closed; events dropped");
            }
        }
    }

    /// Events lost: not queued (the queue was full), or not written (the
    /// file would not take them).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the trail is being written: false from a failed write or
    /// flush (a full disk) until the file takes a batch again.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    /// The SIEM sink's counters, when `[siem]` is configured.
    pub fn siem_stats(&self) -> Option<&siem::SiemStats> {
        self.siem_stats.as_deref()
    }

    /// Waits until everything recorded so far is written out.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
