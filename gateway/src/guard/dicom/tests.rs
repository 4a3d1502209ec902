//! The I/O around the parsers: exact reads, and the negotiation with the
//! device over in-memory streams.

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::schema::RefusedContexts;
use testutil::{self as t, Rq};

fn association(rq: &Rq, refused: RefusedContexts) -> Association {
    let policy = t::policy(refused);
    let parsed = AssociateRq::try_from(&rq.body()[..]).unwrap();
    let dropped = association::check(&parsed, &policy).unwrap();
    Association::new(&parsed, &dropped, &policy, rq.pdu().len() as u64)
}

#[tokio::test]
async fn reads_exactly_one_pdu() {
    let (mut a, mut b) = duplex(1 << 16);
    let rq = Rq::default().pdu();
    a.write_all(&rq).await.unwrap();
    a.write_all(b"NEXT").await.unwrap();
    let (h, pdu) = read_pdu(&mut b, ASSOCIATE_RQ_CAP, |k| k == 1, "x")
        .await
        .unwrap();
    assert_eq!((h.kind, pdu), (1, rq));
    let mut next = [0; 4];
    b.read_exact(&mut next).await.unwrap();
    assert_eq!(&next, b"NEXT");
}

#[tokio::test]
async fn refuses_on_the_header_before_any_body() {
    let (mut a, mut b) = duplex(1 << 16);
    // Only headers are written: a refusal must not wait for a body.
    for (header, reason) in [
        ([0x01, 0, 0, 1, 0, 0], Reason::DicomPduTooLarge),
        ([0x04, 0, 0, 0, 0, 10], Reason::DicomUnexpectedPdu),
        ([0x09, 0, 0, 0, 0, 10], Reason::DicomMalformed),
    ] {
        a.write_all(&header).await.unwrap();
        let v = read_pdu(&mut b, ASSOCIATE_RQ_CAP, |k| k == 1, "x")
            .await
            .unwrap_err();
        assert_eq!(v.reason, reason);
    }
    // Exactly the cap is fine, one more is not.
    let len = (ASSOCIATE_RQ_CAP - HEADER_LEN) as u32;
    a.write_all(&t::pdu(1, &vec![0; len as usize]))
        .await
        .unwrap();
    assert!(read_pdu(&mut b, ASSOCIATE_RQ_CAP, |_| true, "x")
        .await
        .is_ok());
}

#[tokio::test]
async fn a_cut_pdu_is_malformed() {
    let (mut a, mut b) = duplex(1 << 16);
    let rq = Rq::default().pdu();
    a.write_all(&rq[..rq.len() - 1]).await.unwrap();
    drop(a);
    let v = read_pdu(&mut b, ASSOCIATE_RQ_CAP, |_| true, "x")
        .await
        .unwrap_err();
    assert_eq!(v.reason, Reason::DicomMalformed);
    let (a, mut b) = duplex(64);
    drop(a);
    let v = read_pdu(&mut b, ASSOCIATE_RQ_CAP, |_| true, "x")
        .await
        .unwrap_err();
    assert_eq!(v.reason, Reason::DicomMalformed);
}

#[test]
fn unreachable_is_a_transient_rejection() {
    let a = association(&Rq::default(), RefusedContexts::Reject);
    assert_eq!(a.unreachable_answer(), [0x03, 0, 0, 0, 0, 4, 0, 2, 3, 1]);
}

/// Runs the negotiation against a device that answers `answer` (or
/// nothing); what the device received and what the client received.
async fn negotiated(
    a: &Association,
    answer: Option<Vec<u8>>,
) -> (Result<u64, Ended>, Vec<u8>, Vec<u8>) {
    let policy = t::policy(RefusedContexts::Drop);
    let (mut client, mut client_far) = duplex(1 << 16);
    let (mut device, mut device_far) = duplex(1 << 16);
    let device_task = tokio::spawn(async move {
        let mut got = vec![0; 6];
        device_far.read_exact(&mut got).await.unwrap();
        let len = u32::from_be_bytes([got[2], got[3], got[4], got[5]]) as usize;
        got.resize(6 + len, 0);
        device_far.read_exact(&mut got[6..]).await.unwrap();
        if let Some(answer) = answer {
            device_far.write_all(&answer).await.unwrap();
        }
        // Whatever else comes (an A-ABORT), until moat lets go.
        let mut rest = Vec::new();
        let _ = device_far.read_to_end(&mut rest).await;
        got.extend(rest);
        got
    });
    let r = negotiate(&policy, a, &mut client, &mut device)
        .await
        .map(|n| n.to_client);
    drop(device);
    drop(client);
    let mut to_client = Vec::new();
    client_far.read_to_end(&mut to_client).await.unwrap();
    (r, device_task.await.unwrap(), to_client)
}

#[tokio::test]
async fn the_device_sees_the_clamped_request_and_the_client_the_rewritten_answer() {
    let rq = Rq {
        contexts: vec![
            (1, t::VERIFICATION, vec![t::IMPLICIT_LE]),
            (3, t::STUDY_FIND, vec![t::EXPLICIT_LE]),
        ],
        ..Rq::default()
    };
    let a = association(&rq, RefusedContexts::Drop);
    let ac = t::pdu(2, &t::ac_body(&[(1, 0, Some(t::IMPLICIT_LE))], Some(0)));
    let (r, device, client) = negotiated(&a, Some(ac)).await;
    let sent = Rq {
        contexts: vec![(1, t::VERIFICATION, vec![t::IMPLICIT_LE])],
        max_length: Some(16384),
        ..Rq::default()
    };
    assert_eq!(device, sent.pdu());
    let expect = t::pdu(
        2,
        &t::ac_body(
            &[(1, 0, Some(t::IMPLICIT_LE)), (3, 3, Some(t::EXPLICIT_LE))],
            Some(16384),
        ),
    );
    assert_eq!(r.unwrap(), expect.len() as u64);
    assert_eq!(client, expect);
}

#[tokio::test]
async fn a_device_rejection_or_abort_is_forwarded_as_is() {
    let a = association(&Rq::default(), RefusedContexts::Reject);
    for (answer, outcome) in [
        (
            vec![3, 0, 0, 0, 0, 4, 0, 1, 1, 7],
            DicomOutcome::RejectedByDevice,
        ),
        (vec![7, 0, 0, 0, 0, 4, 0, 0, 0, 0], DicomOutcome::Aborted),
    ] {
        let (r, device, client) = negotiated(&a, Some(answer.clone())).await;
        let end = r.expect_err("ended");
        assert_eq!((end.outcome, end.closed_by), (outcome, ClosedBy::Upstream));
        assert_eq!(end.reason, None);
        assert_eq!(client, answer);
        assert_eq!(device, a.forward);
    }
}

#[tokio::test]
async fn a_device_fault_aborts_both_sides() {
    let a = association(&Rq::default(), RefusedContexts::Reject);
    let accepted_unproposed = t::pdu(2, &t::ac_body(&[(9, 0, Some(t::IMPLICIT_LE))], Some(0)));
    for (answer, reason, to_device) in [
        (
            Some(accepted_unproposed),
            Reason::DicomPresentationContext,
            6,
        ),
        (Some(t::pdu(4, &[0; 8])), Reason::DicomUnexpectedPdu, 2),
        (Some(t::pdu(3, &[0; 5])), Reason::DicomMalformed, 6),
        (None, Reason::DicomTimeout, 0),
    ] {
        let (r, device, client) = negotiated(&a, answer).await;
        let end = r.expect_err("ended");
        assert_eq!(end.outcome, DicomOutcome::Aborted);
        assert_eq!(end.closed_by, ClosedBy::GuardViolation);
        assert_eq!(end.reason, Some(reason));
        assert_eq!(client, [7, 0, 0, 0, 0, 4, 0, 0, 2, 0]);
        assert_eq!(
            device[a.forward.len()..],
            [7, 0, 0, 0, 0, 4, 0, 0, 2, to_device]
        );
    }
}
