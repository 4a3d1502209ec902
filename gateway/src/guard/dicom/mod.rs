//! The DICOM guard (`guard = "dicom"`): only associations that the policy
//! expects reach the device, and only well-framed PDUs after them.
//!
//! Upper layer protocol of DICOM PS3.8: the first PDU (A-ASSOCIATE-RQ) is
//! read under a hard cap and the association timer, and checked (protocol
//! version, called AE = the device's, calling AE allowlisted, every
//! presentation context's abstract syntax allowlisted). A refusal is an
//! A-ASSOCIATE-RJ with the exact result, source and reason; the device
//! never sees it. Then the request goes to the device, its answer is
//! checked, and every client PDU is framed (length cap, P-DATA only on
//! accepted contexts) while its bytes pass through unchanged; a violation
//! is answered with an A-ABORT.

mod association;
mod framer;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod pdu;
mod policy;

pub use policy::{
    is_ae_title, is_uid, DicomPolicy, SyntaxList, ASSOCIATE_RQ_CAP, DEFAULT_ASSOCIATION_TIMEOUT,
    DEFAULT_MAX_PDU_LENGTH, MAX_PDU_LENGTH_RANGE,
};

use std::future::Future;
use std::pin::pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::{GuardCx, DICOM, LAST_WORDS};
use crate::audit::{ClosedBy, DicomContext, DicomOutcome, Event};
use crate::controls::{Denial, Reason};
use crate::proxy::relay::{Ends, RelayOutcome};
use association::Proposed;
use framer::{FramedClient, Framer, PduBoundaries};
use pdu::{abort, rj, AssociateAc, AssociateRq, PduHeader, Violation, HEADER_LEN};

/// An A-ASSOCIATE-RQ that passed the checks, ready for the device.
pub struct Association {
    /// The request as the device gets it (clamped, contexts dropped).
    forward: Vec<u8>,
    /// What the client sent for it.
    read_from_client: u64,
    calling_ae: String,
    called_ae: String,
    proposed: Vec<Proposed>,
}

impl Association {
    fn new(rq: &AssociateRq, dropped: &[u8], policy: &DicomPolicy, read: u64) -> Self {
        let max = pdu::clamp_max_length(rq.user_info.max_length, policy.max_pdu_length);
        Association {
            forward: rq.encode(|c| !dropped.contains(&c.id), max),
            read_from_client: read,
            calling_ae: pdu::sanitize(rq.calling_ae()),
            called_ae: pdu::sanitize(rq.called_ae()),
            proposed: rq
                .contexts
                .iter()
                .map(|c| Proposed {
                    id: c.id,
                    abstract_syntax: c.abstract_syntax.clone(),
                    transfer_syntaxes: c.transfer_syntaxes.clone(),
                    dropped: dropped.contains(&c.id),
                })
                .collect(),
        }
    }

    /// The device cannot be reached: the association is recorded as
    /// rejected with the connect failure's reason, and the client gets an
    /// A-ASSOCIATE-RJ, rejected-transient (temporary congestion).
    pub fn unreachable(&self, cx: GuardCx<'_>, denial: &Denial) -> Vec<u8> {
        let event = self.event(
            cx,
            DicomOutcome::Rejected,
            Vec::new(),
            Some(denial.reason),
            denial.detail.clone(),
        );
        cx.rt.audit.record(event);
        cx.count(super::DICOM, "rejected", Some(denial.reason));
        self.unreachable_answer()
    }

    /// An A-ASSOCIATE-RJ, rejected-transient, temporary congestion.
    fn unreachable_answer(&self) -> Vec<u8> {
        pdu::associate_rj(rj::TRANSIENT, rj::PROVIDER_PRESENTATION, rj::CONGESTION).to_vec()
    }

    fn asked(&self) -> Vec<DicomContext> {
        asked(self.proposed.iter().map(|p| (p.id, &p.abstract_syntax)))
    }

    fn event(
        &self,
        cx: GuardCx<'_>,
        outcome: DicomOutcome,
        accepted: Vec<DicomContext>,
        reason: Option<Reason>,
        detail: Option<String>,
    ) -> Event {
        Event::DicomAssociation {
            conn: cx.conn.clone(),
            calling_ae: self.calling_ae.clone(),
            called_ae: self.called_ae.clone(),
            contexts_asked: self.asked(),
            contexts_accepted: accepted,
            outcome,
            reason,
            detail,
        }
    }
}

fn asked<'a>(contexts: impl Iterator<Item = (u8, &'a String)>) -> Vec<DicomContext> {
    contexts
        .map(|(id, abstract_syntax)| DicomContext {
            id,
            abstract_syntax: abstract_syntax.clone(),
            transfer_syntax: None,
        })
        .collect()
}

/// Writes a guard's last PDU to a side, bounded by [`LAST_WORDS`];
/// whether it went out.
async fn last_words<S: AsyncWrite + Unpin>(side: &mut S, pdu: &[u8]) -> bool {
    let write = async {
        side.write_all(pdu).await?;
        side.flush().await
    };
    matches!(timeout(LAST_WORDS, write).await, Ok(Ok(())))
}

/// Reads one whole PDU of at most `cap` bytes, and no byte after it.
/// `expected` is the only type taken; the header is checked before any
/// of the body is read, and the body buffer grows only as bytes arrive.
async fn read_pdu<S: AsyncRead + Unpin>(
    side: &mut S,
    cap: usize,
    accept: impl Fn(u8) -> bool,
    when: &str,
) -> Result<(PduHeader, Vec<u8>), Violation> {
    let mut header = [0; HEADER_LEN];
    side.read_exact(&mut header)
        .await
        .map_err(|e| closed(e, when))?;
    let h = PduHeader::from(header);
    if !accept(h.kind) {
        return Err(if pdu::is_known_type(h.kind) {
            Violation::unexpected(h.kind, when)
        } else {
            Violation::unrecognized(h.kind)
        });
    }
    if h.length as usize > cap - HEADER_LEN {
        return Err(Violation::too_large(h.kind, h.length, cap));
    }
    let mut pdu = Vec::with_capacity(HEADER_LEN + 1024.min(h.length as usize));
    pdu.extend_from_slice(&header);
    let n = side
        .take(h.length as u64)
        .read_to_end(&mut pdu)
        .await
        .map_err(|e| closed(e, when))?;
    if n != h.length as usize {
        return Err(Violation::malformed(format!(
            "{} cut short: {n} of {} bytes",
            pdu::type_name(h.kind),
            h.length
        )));
    }
    Ok((h, pdu))
}

fn closed(e: std::io::Error, when: &str) -> Violation {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Violation::malformed(format!("connection closed {when}, inside a PDU header"))
    } else {
        Violation::malformed(format!("reading a PDU {when}: {e}"))
    }
}

/// Reads and checks the A-ASSOCIATE-RQ (see the module doc).
pub async fn open<C>(
    policy: &DicomPolicy,
    client: &mut C,
    cx: GuardCx<'_>,
) -> Result<Association, Denial>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let when = "before the association";
    let read = read_pdu(client, ASSOCIATE_RQ_CAP, |k| k == pdu::ASSOCIATE_RQ, when);
    let read = match timeout(policy.association_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(Violation::timeout(format!(
            "no A-ASSOCIATE-RQ within {:?}",
            policy.association_timeout
        ))),
    };
    let parsed = read.and_then(|(_, pdu)| {
        let rq = AssociateRq::try_from(&pdu[HEADER_LEN..])?;
        Ok((rq, pdu.len() as u64))
    });
    let (rq, read) = match parsed {
        Ok(p) => p,
        Err(v) => {
            last_words(client, &v.abort_pdu()).await;
            let denial = v.denial();
            cx.violation(DICOM, &denial);
            return Err(denial);
        }
    };
    match association::check(&rq, policy) {
        Ok(dropped) => Ok(Association::new(&rq, &dropped, policy, read)),
        Err(refusal) => {
            last_words(client, &refusal.answer).await;
            let denial = refusal.denial;
            cx.rt.audit.record_denial(Event::DicomAssociation {
                conn: cx.conn.clone(),
                calling_ae: pdu::sanitize(rq.calling_ae()),
                called_ae: pdu::sanitize(rq.called_ae()),
                contexts_asked: asked(rq.contexts.iter().map(|c| (c.id, &c.abstract_syntax))),
                contexts_accepted: Vec::new(),
                outcome: DicomOutcome::Rejected,
                reason: Some(denial.reason),
                detail: denial.detail.clone(),
            });
            cx.count(DICOM, "rejected", Some(denial.reason));
            Err(denial)
        }
    }
}

/// How the negotiation with the device ended, when it did not accept.
#[derive(Debug)]
struct Ended {
    outcome: DicomOutcome,
    closed_by: ClosedBy,
    /// Set when moat ended it (a fault of the device, a timeout).
    reason: Option<Reason>,
    detail: Option<String>,
    to_client: u64,
}

/// What the device accepted.
struct Negotiated {
    accepted: association::Accepted,
    to_client: u64,
}

/// Sends the request to the device and answers the client with what the
/// device answers (checked, rewritten).
async fn negotiate<C, U>(
    policy: &DicomPolicy,
    association: &Association,
    client: &mut C,
    upstream: &mut U,
) -> Result<Negotiated, Ended>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let when = "in answer to an A-ASSOCIATE-RQ";
    let answer = timeout(policy.association_timeout, async {
        if let Err(e) = async {
            upstream.write_all(&association.forward).await?;
            upstream.flush().await
        }
        .await
        {
            return Err(Violation::malformed(format!(
                "writing the A-ASSOCIATE-RQ: {e}"
            )));
        }
        read_pdu(upstream, ASSOCIATE_RQ_CAP, |_| true, when).await
    })
    .await
    .unwrap_or_else(|_| {
        Err(Violation::timeout(format!(
            "the device did not answer the A-ASSOCIATE-RQ within {:?}",
            policy.association_timeout
        )))
    });
    let (header, answer) = match answer {
        Ok(a) => a,
        Err(v) => return Err(device_fault(v, client, upstream).await),
    };
    let accepted = match header.kind {
        pdu::ASSOCIATE_AC => AssociateAc::try_from(&answer[HEADER_LEN..])
            .and_then(|ac| association::accept(&association.proposed, &ac, policy.max_pdu_length)),
        pdu::ASSOCIATE_RJ | pdu::ABORT if header.length == 4 => {
            let forwarded = last_words(client, &answer).await;
            let (outcome, what) = if header.kind == pdu::ABORT {
                (DicomOutcome::Aborted, "the device aborted the association")
            } else {
                (
                    DicomOutcome::RejectedByDevice,
                    "the device rejected the association",
                )
            };
            let detail = format!(
                "{what}: result {}, source {}, reason {}",
                answer[7], answer[8], answer[9]
            );
            return Err(Ended {
                outcome,
                closed_by: ClosedBy::Upstream,
                reason: None,
                detail: Some(detail),
                to_client: if forwarded { answer.len() as u64 } else { 0 },
            });
        }
        pdu::ASSOCIATE_RJ | pdu::ABORT => Err(Violation::malformed(format!(
            "{} of {} bytes, not 4",
            pdu::type_name(header.kind),
            header.length
        ))),
        k => Err(Violation::unexpected(k, when)),
    };
    match accepted {
        Ok(accepted) => {
            let write = async {
                client.write_all(&accepted.forward).await?;
                client.flush().await
            };
            match timeout(policy.association_timeout, write).await {
                Ok(Ok(())) => Ok(Negotiated {
                    to_client: accepted.forward.len() as u64,
                    accepted,
                }),
                _ => Err(Ended {
                    outcome: DicomOutcome::Aborted,
                    closed_by: ClosedBy::Client,
                    reason: None,
                    detail: Some("the client did not take the A-ASSOCIATE-AC".into()),
                    to_client: 0,
                }),
            }
        }
        Err(v) => Err(device_fault(v, client, upstream).await),
    }
}

/// The device broke the protocol while negotiating: both sides get an
/// A-ABORT (the client's says nothing of the reason: it did nothing wrong).
async fn device_fault<C, U>(v: Violation, client: &mut C, upstream: &mut U) -> Ended
where
    C: AsyncWrite + Unpin,
    U: AsyncWrite + Unpin,
{
    let to_client = pdu::abort_pdu(abort::PROVIDER, abort::NOT_SPECIFIED);
    let to_device = v.abort_pdu();
    let (told, _) = tokio::join!(
        last_words(client, &to_client),
        last_words(upstream, &to_device)
    );
    Ended {
        outcome: DicomOutcome::Aborted,
        closed_by: ClosedBy::GuardViolation,
        reason: Some(v.reason),
        detail: Some(v.detail),
        to_client: if told { to_client.len() as u64 } else { 0 },
    }
}

/// Forwards the association to the device, checks its answer, then relays
/// with every client PDU framed.
pub async fn relay<C, U>(
    policy: &DicomPolicy,
    association: Association,
    mut client: C,
    mut upstream: U,
    ends: Ends<'_, impl Future<Output = Denial>>,
    cx: GuardCx<'_>,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Ends {
        idle_timeout,
        stop,
        revoked,
    } = ends;
    let mut revoked = pin!(revoked);
    let from_client = association.read_from_client;
    let ended = |closed_by, error, revoked, to_client| RelayOutcome {
        bytes_from_client: from_client,
        bytes_to_client: to_client,
        closed_by,
        error,
        revoked,
    };
    let negotiated = tokio::select! {
        n = negotiate(policy, &association, &mut client, &mut upstream) => n,
        _ = stop.cancelled() => return ended(ClosedBy::Shutdown, None, None, 0),
        denial = revoked.as_mut() => return ended(ClosedBy::Revoked, None, Some(denial), 0),
    };
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(end) => {
            let counted = match end.outcome {
                DicomOutcome::RejectedByDevice => "rejected_by_device",
                _ => "aborted",
            };
            cx.count(DICOM, counted, end.reason);
            // A device's own refusal is not an error of the connection.
            let error = end.reason.and(end.detail.clone());
            cx.rt.audit.record(association.event(
                cx,
                end.outcome,
                Vec::new(),
                end.reason,
                end.detail,
            ));
            return ended(end.closed_by, error, None, end.to_client);
        }
    };
    let association::Accepted { ids, contexts, .. } = negotiated.accepted;
    let still_admitted = policy_watch(cx, &association, &contexts);
    cx.rt
        .audit
        .record(association.event(cx, DicomOutcome::Accepted, contexts, None, None));
    cx.count(DICOM, "accepted", None);
    drop(association);

    let revoked = async {
        tokio::select! {
            d = revoked.as_mut() => d,
            d = still_admitted => d,
        }
    };
    let mut framed = FramedClient::new(&mut client, Framer::new(ids, policy.max_pdu_length));
    let mut device = PduBoundaries::new(&mut upstream);
    let mut outcome = crate::proxy::relay::relay(
        &mut framed,
        &mut device,
        Ends {
            idle_timeout,
            stop,
            revoked,
        },
    )
    .await;
    let violation = framed.violation().cloned();
    let device_ok = framed.device_at_pdu_boundary();
    let client_ok = device.is_boundary(outcome.bytes_to_client);
    outcome.bytes_from_client += from_client;
    outcome.bytes_to_client += negotiated.to_client;
    let client_abort = match &violation {
        Some(v) => v.abort_pdu(),
        None if outcome.closed_by == ClosedBy::Revoked => {
            pdu::abort_pdu(abort::PROVIDER, abort::NOT_SPECIFIED)
        }
        None => return outcome,
    };
    // Only between PDUs: inside one, an A-ABORT would read as its data.
    let device_abort = pdu::abort_pdu(abort::PROVIDER, abort::NOT_SPECIFIED);
    let (told_client, _) = tokio::join!(
        async { client_ok && last_words(&mut client, &client_abort).await },
        async { device_ok && last_words(&mut upstream, &device_abort).await },
    );
    if told_client {
        outcome.bytes_to_client += client_abort.len() as u64;
    }
    if let Some(v) = violation {
        let denial = v.denial();
        cx.violation(DICOM, &denial);
        outcome.closed_by = ClosedBy::GuardViolation;
        outcome.error = denial.detail;
    }
    outcome
}

/// Resolves when a published policy no longer admits this association:
/// the device's AE title changed, the calling AE title or an accepted
/// abstract syntax is no longer listed.
fn policy_watch<'a>(
    cx: GuardCx<'a>,
    association: &Association,
    accepted: &[DicomContext],
) -> impl Future<Output = Denial> + 'a {
    let (device, service) = (cx.conn.device.clone(), cx.conn.service.clone());
    let (calling, called) = (
        association.calling_ae.clone(),
        association.called_ae.clone(),
    );
    let syntaxes: Vec<String> = accepted.iter().map(|c| c.abstract_syntax.clone()).collect();
    let refused = crate::proxy::tcp::refused_by_change(cx.rt, move |policy| {
        let service = policy
            .services
            .iter()
            .find(|s| *s.device.id == *device && *s.name == *service);
        // A service removed or no longer guarded is the connection's
        // recheck to judge, not the association's.
        let Some(super::Guard::Dicom(p)) = service.and_then(|s| s.guard.as_ref()) else {
            return Ok(());
        };
        if p.ae_title != called {
            return Err(Denial::with_detail(
                Reason::DicomCalledAe,
                format!("the device's AE title is now {:?}", p.ae_title),
            ));
        }
        if !p.admits_calling(&calling) {
            return Err(Denial::with_detail(
                Reason::DicomCallingAe,
                format!("calling AE title {calling:?} is no longer admitted"),
            ));
        }
        if let Some(s) = syntaxes.iter().find(|s| !p.abstract_syntaxes.admits(s)) {
            return Err(Denial::with_detail(
                Reason::DicomAbstractSyntax,
                format!("abstract syntax {s} is no longer admitted"),
            ));
        }
        Ok(())
    });
    async move { refused.await.0 }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
