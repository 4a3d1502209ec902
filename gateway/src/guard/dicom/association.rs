//! What the policy makes of an A-ASSOCIATE-RQ, and of the device's
//! A-ASSOCIATE-AC: pure decisions, no I/O.

use crate::audit::DicomContext;
use crate::config::schema::RefusedContexts;
use crate::controls::{Denial, Reason};

use super::framer::ContextSet;
use super::pdu::{self, rj, AssociateAc, AssociateRq, ContextResult, Violation};
use super::DicomPolicy;

/// A refused A-ASSOCIATE-RQ: why, and the A-ASSOCIATE-RJ that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub denial: Denial,
    pub answer: [u8; 10],
}

impl Refusal {
    fn new(reason: Reason, detail: String, result: u8, source: u8, why: u8) -> Self {
        Refusal {
            denial: Denial::with_detail(reason, detail),
            answer: pdu::associate_rj(result, source, why),
        }
    }
}

/// How many refused UIDs a detail names before it counts the rest.
const NAMED_UIDS: usize = 8;

/// Checks an A-ASSOCIATE-RQ against the policy, in the order of the
/// module doc. `Ok` holds the ids of the contexts to drop (drop mode).
pub fn check(rq: &AssociateRq, policy: &DicomPolicy) -> Result<Vec<u8>, Refusal> {
    let version = rq.protocol_version();
    if version & 1 == 0 {
        return Err(Refusal::new(
            Reason::DicomProtocolVersion,
            format!("protocol version 0x{version:04x} not supported"),
            rj::PERMANENT,
            rj::PROVIDER_ACSE,
            rj::PROTOCOL_VERSION,
        ));
    }
    if rq.application_context != pdu::APPLICATION_CONTEXT {
        return Err(Refusal::new(
            Reason::DicomMalformed,
            format!(
                "application context name {:?} is not {}",
                rq.application_context,
                pdu::APPLICATION_CONTEXT
            ),
            rj::PERMANENT,
            rj::SERVICE_USER,
            rj::APPLICATION_CONTEXT,
        ));
    }
    if rq.called_ae() != policy.ae_title.as_bytes() {
        return Err(Refusal::new(
            Reason::DicomCalledAe,
            format!(
                "called AE title {:?} is not the device's ({:?})",
                pdu::sanitize(rq.called_ae()),
                policy.ae_title
            ),
            rj::PERMANENT,
            rj::SERVICE_USER,
            rj::CALLED_AE,
        ));
    }
    let calling = rq.calling_ae();
    let admitted = std::str::from_utf8(calling).is_ok_and(|ae| policy.admits_calling(ae));
    if !admitted {
        return Err(Refusal::new(
            Reason::DicomCallingAe,
            format!(
                "calling AE title {:?} is not admitted",
                pdu::sanitize(calling)
            ),
            rj::PERMANENT,
            rj::SERVICE_USER,
            rj::CALLING_AE,
        ));
    }
    let refused: Vec<&pdu::ProposedContext> = rq
        .contexts
        .iter()
        .filter(|c| !policy.abstract_syntaxes.admits(&c.abstract_syntax))
        .collect();
    let refuse_all = || {
        let mut uids: Vec<&str> = refused.iter().map(|c| c.abstract_syntax.as_str()).collect();
        uids.dedup();
        let mut detail = format!(
            "abstract syntax not admitted: {}",
            uids[..uids.len().min(NAMED_UIDS)].join(", ")
        );
        if uids.len() > NAMED_UIDS {
            detail.push_str(&format!(" and {} more", uids.len() - NAMED_UIDS));
        }
        Refusal::new(
            Reason::DicomAbstractSyntax,
            detail,
            rj::PERMANENT,
            rj::SERVICE_USER,
            rj::NO_REASON,
        )
    };
    if refused.is_empty() {
        return Ok(Vec::new());
    }
    match policy.refused_contexts {
        RefusedContexts::Reject => Err(refuse_all()),
        RefusedContexts::Drop if refused.len() == rq.contexts.len() => Err(refuse_all()),
        RefusedContexts::Drop => Ok(refused.iter().map(|c| c.id).collect()),
    }
}

/// A proposed presentation context, as the association remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
    /// Removed from the request the device saw.
    pub dropped: bool,
}

/// What the device accepted, and the A-ASSOCIATE-AC the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub forward: Vec<u8>,
    pub contexts: Vec<DicomContext>,
    pub ids: ContextSet,
}

/// Checks the device's A-ASSOCIATE-AC against what was proposed and
/// rewrites it for the client: maximum length clamped, and in drop mode a
/// result (abstract syntax not supported) for every dropped context.
pub fn accept(
    proposed: &[Proposed],
    ac: &AssociateAc,
    max_pdu_length: u32,
) -> Result<Accepted, Violation> {
    let mut contexts = Vec::new();
    let mut ids = ContextSet::default();
    for r in ac
        .results
        .iter()
        .filter(|r| r.result == pdu::RESULT_ACCEPTANCE)
    {
        let Some(p) = proposed.iter().find(|p| p.id == r.id && !p.dropped) else {
            return Err(Violation {
                reason: Reason::DicomPresentationContext,
                abort_reason: pdu::abort::INVALID_PARAMETER,
                detail: format!(
                    "the device accepted presentation context {}, which it was not proposed",
                    r.id
                ),
            });
        };
        ids.insert(r.id);
        contexts.push(DicomContext {
            id: r.id,
            abstract_syntax: p.abstract_syntax.clone(),
            transfer_syntax: r.transfer_syntax.clone(),
        });
    }
    let extra: Vec<Vec<u8>> = proposed
        .iter()
        .filter(|p| p.dropped && !ac.results.iter().any(|r| r.id == p.id))
        .map(|p| {
            // Parsing makes sure there is one; implicit VR little endian otherwise.
            let ts = p
                .transfer_syntaxes
                .first()
                .map_or("1.2.840.10008.1.2", String::as_str);
            ContextResult::not_supported(p.id, ts)
        })
        .collect();
    let max = pdu::clamp_max_length(ac.user_info.max_length, max_pdu_length);
    Ok(Accepted {
        forward: ac.encode(&extra, max),
        contexts,
        ids,
    })
}

#[cfg(test)]
mod tests;
