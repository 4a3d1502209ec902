//! The HL7 v2 MLLP guard (`guard = "hl7-mllp"`): every message the client
//! sends is framed, read and checked before any of it reaches the device.
//!
//! - Framing (`frame`): `0x0B` payload `0x1C 0x0D`, at most
//!   `max_message_bytes` of payload, complete within `frame_timeout` of its
//!   start byte. Strict: between frames nothing but `0x0B` is allowed (no
//!   CR/LF padding), inside one neither `0x0B` nor a `0x1C` that `0x0D`
//!   does not follow. A framing error (`hl7_framing`, `hl7_too_large`,
//!   `hl7_timeout`) closes the connection, and so does a client that
//!   closes inside a frame (`hl7_framing`).
//! - The message (`msh`) must start with an MSH segment with a field
//!   separator and four distinct, non-alphanumeric encoding characters,
//!   else `hl7_malformed` closes the connection (no ACK can be written).
//! - Sender (MSH-3, MSH-4), receiver (MSH-5, MSH-6) and type (MSH-9) are
//!   checked in that order, names on their first component, as written
//!   (escape sequences are not decoded, so an escaped name never matches).
//!   An allowed message goes to the device byte-identical. A refused one
//!   never does: the sender gets an ACK in the message's own delimiters,
//!   `AR` (original mode) or `CR` (enhanced mode: MSH-15 or MSH-16 set),
//!   whose MSA-2 echoes its MSH-10, and the connection stays open.
//! - The device's answers pass through raw; moat only counts their frame
//!   ends, so that its own ACKs reach the client in message order between
//!   the device's, even when the client pipelines. At most
//!   [`MAX_PENDING_ACKS`] of them wait; the client is not read meanwhile.
//! - When the device closes, what it and moat still had to say goes to
//!   the client, and the connection ends. When the client closes between
//!   frames, the device is half-closed and its last answers still pass.
//!
//! Each message is an `hl7_message` event with its header fields
//! (printable ASCII, at most 64 bytes each; `message_type` is
//! `type^trigger`), never its body.

mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod msh;
mod policy;
mod pump;

pub use policy::{
    MessageTypeRule, MllpPolicy, NameList, DEFAULT_FRAME_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES_CEILING,
};
pub use pump::MAX_PENDING_ACKS;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{GuardCx, HL7_MLLP, LAST_WORDS};
use crate::audit::{ClosedBy, Event, Hl7Decision};
use crate::controls::{Denial, Reason};
use crate::proxy::relay::{Activity, Ends, Metered, RelayOutcome};
use pump::{End, Pump, Record};

impl Record for GuardCx<'_> {
    fn message(
        &self,
        seen: msh::Seen,
        decision: Hl7Decision,
        reason: Option<Reason>,
        ack: Option<&'static str>,
    ) {
        let outcome = match decision {
            Hl7Decision::Forwarded => "forwarded",
            Hl7Decision::Refused => "refused",
        };
        self.count(HL7_MLLP, outcome, reason);
        self.rt.audit.record(Event::Hl7Message {
            conn: self.conn.clone(),
            control_id: seen.control_id,
            message_type: seen.message_type,
            sending_application: seen.sending_application,
            sending_facility: seen.sending_facility,
            receiving_application: seen.receiving_application,
            receiving_facility: seen.receiving_facility,
            decision,
            reason,
            ack,
        });
    }

    fn violation(&self, denial: &Denial) {
        GuardCx::violation(self, HL7_MLLP, denial);
    }

    fn policy_now(&self) -> Option<std::sync::Arc<MllpPolicy>> {
        match self.current_guard() {
            Some(super::Guard::Hl7(p)) => Some(p),
            _ => None,
        }
    }
}

/// Relays MLLP, checking every message the client sends.
pub async fn relay<C, U>(
    policy: &MllpPolicy,
    client: C,
    upstream: U,
    ends: Ends<'_, impl Future<Output = Denial>>,
    cx: GuardCx<'_>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    guarded(policy, client, upstream, ends, cx).await
}

/// [`relay`] with any recorder (tests record into a list).
async fn guarded<C, U, R>(
    policy: &MllpPolicy,
    client: C,
    upstream: U,
    ends: Ends<'_, impl Future<Output = Denial>>,
    rec: R,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    R: Record,
{
    let Ends {
        idle_timeout,
        stop,
        revoked,
    } = ends;
    let activity = Activity::new();
    let mut client = Metered::client(client, activity.clone());
    let mut upstream = Metered::upstream(upstream, activity.clone());
    let mut pump = Pump::new(policy, rec);
    let ended = tokio::select! {
        end = std::future::poll_fn(|cx| pump.poll(cx, Pin::new(&mut client), Pin::new(&mut upstream))) => Ok(end),
        _ = activity.idle_expired(idle_timeout) => Err((ClosedBy::IdleTimeout, None)),
        _ = stop.cancelled() => Err((ClosedBy::Shutdown, None)),
        denial = revoked => Err((ClosedBy::Revoked, Some(denial))),
    };
    let (closed_by, error, revocation) = match ended {
        Ok(End::Closed { client_first }) => {
            let by = if client_first {
                ClosedBy::Client
            } else {
                ClosedBy::Upstream
            };
            (by, None, None)
        }
        Ok(End::Violation(denial)) => {
            pump.recorder().violation(&denial);
            // Both sides go; a FIN (a TLS close_notify) rather than a reset.
            let _ = tokio::time::timeout(LAST_WORDS, async {
                let _ = client.shutdown().await;
                let _ = upstream.shutdown().await;
            })
            .await;
            let detail = denial
                .detail
                .clone()
                .unwrap_or_else(|| denial.reason.to_string());
            (ClosedBy::GuardViolation, Some(detail), None)
        }
        Ok(End::Io(e)) => (ClosedBy::Error, Some(e.to_string()), None),
        Err((by, revocation)) => (by, None, revocation),
    };
    RelayOutcome::new(&activity, closed_by, error, revocation)
}

#[cfg(test)]
mod tests;
