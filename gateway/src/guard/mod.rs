//! Protocol guards: DICOM and HL7 MLLP checked before they reach a fragile
//! device (`guard = "dicom"`, `guard = "hl7-mllp"` on a `tcp` service).
//!
//! A guard sits between the connection controls and the byte relay of the
//! L4 data plane (`proxy::tcp`), in three steps:
//!
//! 1. [`open`]: before the device is contacted. DICOM reads and checks the
//!    A-ASSOCIATE-RQ here, so a refused association never reaches the
//!    device; HL7 has nothing to read yet.
//! 2. the device is connected (`proxy::tcp`); if it cannot be, the guard's
//!    [`Opening::unreachable`] tells the client in its protocol.
//! 3. [`relay`]: DICOM forwards the request, checks the device's answer,
//!    then frames every PDU the client sends while bytes pass through;
//!    HL7 frames and checks every message and answers refusals itself.
//!
//! Each guard records its own audit events (`dicom_association`,
//! `hl7_message`, `guard_violation`) and `moat_guard_*` metrics; the
//! connection's own events stay with `proxy::tcp`. Refusals and violations
//! carry a [`Reason`](crate::controls::Reason) like every other denial.
//! Parsers are pure functions over bytes with hard caps, so they are
//! property-tested and fuzzed apart from any I/O.

pub mod dicom;
pub mod mllp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::ConnMeta;
use crate::controls::Denial;
use crate::proxy::relay::{Ends, RelayOutcome};
use crate::runtime::Runtime;

/// A service's compiled guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    Dicom(Arc<dicom::DicomPolicy>),
    Hl7(Arc<mllp::MllpPolicy>),
}

impl Guard {
    /// The name used in the config, the audit trail and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Guard::Dicom(_) => DICOM,
            Guard::Hl7(_) => HL7_MLLP,
        }
    }
}

impl Guard {
    /// One line for `moat check` and reports: what the guard admits.
    pub fn summary(&self) -> String {
        match self {
            Guard::Dicom(p) => format!(
                "dicom guard: called AE {}, calling AE [{}], SOP classes [{}], {} refused contexts, PDUs up to {} bytes",
                p.ae_title,
                p.calling_ae_titles.join(", "),
                p.abstract_syntaxes.written.join(", "),
                match p.refused_contexts {
                    crate::config::schema::RefusedContexts::Reject => "reject on",
                    crate::config::schema::RefusedContexts::Drop => "drop",
                },
                p.max_pdu_length
            ),
            Guard::Hl7(p) => {
                let names = |l: &mllp::NameList| match l {
                    mllp::NameList::Any => "*".to_string(),
                    mllp::NameList::Only(n) => n.join(", "),
                };
                let types: Vec<String> = p
                    .message_types
                    .iter()
                    .map(|t| match &t.trigger {
                        Some(trigger) => format!("{}^{trigger}", t.code),
                        None => t.code.clone(),
                    })
                    .collect();
                format!(
                    "hl7-mllp guard: from [{}] at [{}], to [{}] at [{}], types [{}], messages up to {} bytes",
                    names(&p.sending_applications),
                    names(&p.sending_facilities),
                    names(&p.receiving_applications),
                    names(&p.receiving_facilities),
                    types.join(", "),
                    p.max_message_bytes
                )
            }
        }
    }
}

pub const DICOM: &str = "dicom";
pub const HL7_MLLP: &str = "hl7-mllp";

/// Where a guard records: the runtime (audit trail, metrics) and the
/// connection it guards.
#[derive(Clone, Copy)]
pub struct GuardCx<'a> {
    pub rt: &'a Runtime,
    pub conn: &'a ConnMeta,
}

impl GuardCx<'_> {
    /// Counts a decision in `moat_guard_decisions_total` (and its reason
    /// in `moat_guard_refusals_total`).
    pub fn count(
        &self,
        guard: &'static str,
        outcome: &'static str,
        reason: Option<crate::controls::Reason>,
    ) {
        self.rt.metrics.guard(
            &self.conn.device,
            &self.conn.service,
            guard,
            outcome,
            reason,
        );
    }

    /// The guard of this connection's service in the policy in force now
    /// (`None` if the service is gone or has none): what a reload changed.
    pub fn current_guard(&self) -> Option<Guard> {
        let policy = self.rt.policy.borrow();
        policy
            .services
            .iter()
            .find(|s| *s.device.id == *self.conn.device && *s.name == *self.conn.service)
            .and_then(|s| s.guard.clone())
    }

    /// Records a violation that closes the connection: a `guard_violation`
    /// event and the `violation` outcome.
    pub fn violation(&self, guard: &'static str, denial: &Denial) {
        self.count(guard, "violation", Some(denial.reason));
        self.rt
            .audit
            .record_denial(crate::audit::Event::GuardViolation {
                conn: self.conn.clone(),
                guard,
                reason: denial.reason,
                detail: denial.detail.clone(),
            });
    }
}

/// What step 1 read, carried to step 3.
pub enum Opening {
    /// No guard, or one with nothing to read before the device (HL7).
    Nothing,
    Dicom(Box<dicom::Association>),
}

impl Opening {
    /// The device cannot be reached (`denial` says why): records what the
    /// guard read, and returns what to tell the client in its protocol
    /// (DICOM: an A-ASSOCIATE-RJ, transient).
    pub fn unreachable(&self, cx: GuardCx<'_>, denial: &Denial) -> Option<Vec<u8>> {
        match self {
            Opening::Nothing => None,
            Opening::Dicom(a) => Some(a.unreachable(cx, denial)),
        }
    }
}

/// Step 1, before the device is contacted. `Err` means the guard refused
/// (it has answered the client and recorded its own event); the caller
/// records the connection's denial.
pub async fn open<C>(
    guard: Option<&Guard>,
    client: &mut C,
    cx: GuardCx<'_>,
) -> Result<Opening, Denial>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    match guard {
        None | Some(Guard::Hl7(_)) => Ok(Opening::Nothing),
        Some(Guard::Dicom(policy)) => dicom::open(policy, client, cx)
            .await
            .map(|a| Opening::Dicom(Box::new(a))),
    }
}

/// The most of a wire value (an AE title, an MSH field) the audit trail
/// keeps.
pub const WIRE_VALUE_MAX: usize = 64;

/// A value from the wire made fit for the audit trail: printable ASCII
/// (other bytes become `?`), at most [`WIRE_VALUE_MAX`] bytes, with `...`
/// after a value that was cut.
pub fn printable(bytes: &[u8]) -> String {
    let mut s: String = bytes
        .iter()
        .take(WIRE_VALUE_MAX)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if bytes.len() > WIRE_VALUE_MAX {
        s.push_str("...");
    }
    s
}

/// How long a guard waits, at most, to write its last words (an A-ABORT,
/// an ACK) to a side before closing.
pub const LAST_WORDS: Duration = Duration::from_secs(2);

/// Step 3: the relay, guarded. Without a guard, the plain byte relay.
pub async fn relay<C, U>(
    guard: Option<&Guard>,
    opening: Opening,
    client: C,
    upstream: U,
    ends: Ends<'_, impl Future<Output = Denial>>,
    cx: GuardCx<'_>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    match (guard, opening) {
        (Some(Guard::Dicom(policy)), Opening::Dicom(assoc)) => {
            dicom::relay(policy, *assoc, client, upstream, ends, cx).await
        }
        (Some(Guard::Hl7(policy)), _) => mllp::relay(policy, client, upstream, ends, cx).await,
        _ => crate::proxy::relay::relay(client, upstream, ends).await,
    }
}
