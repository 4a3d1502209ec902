use super::*;
use crate::guard::dicom::testutil::{self as t, Rq};

fn checked(rq: Rq, refused: RefusedContexts) -> Result<Vec<u8>, Refusal> {
    let rq = AssociateRq::try_from(&rq.body()[..]).unwrap();
    check(&rq, &t::policy(refused))
}

fn refused(rq: Rq) -> Refusal {
    checked(rq, RefusedContexts::Reject).expect_err("refused")
}

#[test]
fn an_expected_association_passes() {
    assert_eq!(checked(Rq::default(), RefusedContexts::Reject), Ok(vec![]));
    let echo = Rq {
        calling: "ECHOSCU",
        contexts: vec![(1, t::VERIFICATION, vec![t::IMPLICIT_LE])],
        ..Rq::default()
    };
    assert_eq!(checked(echo, RefusedContexts::Drop), Ok(vec![]));
}

#[test]
fn protocol_version_is_checked_first() {
    let r = refused(Rq {
        version: 2,
        called: "OTHER",
        ..Rq::default()
    });
    assert_eq!(r.denial.reason, Reason::DicomProtocolVersion);
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 2, 2]);
    // Bit 0 is what counts.
    assert!(checked(
        Rq {
            version: 3,
            ..Rq::default()
        },
        RefusedContexts::Reject
    )
    .is_ok());
}

#[test]
fn application_context_then_called_then_calling() {
    let r = refused(Rq {
        application_context: "1.2.3",
        called: "OTHER",
        ..Rq::default()
    });
    assert_eq!(r.denial.reason, Reason::DicomMalformed);
    assert!(r
        .denial
        .detail
        .unwrap()
        .contains("application context name"));
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 2]);

    let r = refused(Rq {
        called: "OTHER",
        calling: "NOBODY",
        ..Rq::default()
    });
    assert_eq!(r.denial.reason, Reason::DicomCalledAe);
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
    assert!(r.denial.detail.unwrap().contains("\"OTHER\""));

    let r = refused(Rq {
        calling: "NOBODY",
        contexts: vec![(1, t::STUDY_FIND, vec![t::IMPLICIT_LE])],
        ..Rq::default()
    });
    assert_eq!(r.denial.reason, Reason::DicomCallingAe);
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 3]);
}

#[test]
fn ae_titles_compare_exactly() {
    for called in ["storescp", "STORESCP2", "STORE"] {
        let r = refused(Rq {
            called,
            ..Rq::default()
        });
        assert_eq!(r.denial.reason, Reason::DicomCalledAe, "{called}");
    }
}

#[test]
fn refused_abstract_syntax_rejects_by_default() {
    let r = refused(Rq {
        contexts: vec![
            (1, t::VERIFICATION, vec![t::IMPLICIT_LE]),
            (3, t::STUDY_FIND, vec![t::IMPLICIT_LE]),
        ],
        ..Rq::default()
    });
    assert_eq!(r.denial.reason, Reason::DicomAbstractSyntax);
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1]);
    assert_eq!(
        r.denial.detail.as_deref(),
        Some("abstract syntax not admitted: 1.2.840.10008.5.1.4.1.2.2.1")
    );
}

#[test]
fn drop_mode_drops_refused_contexts_unless_none_is_left() {
    let mixed = Rq {
        contexts: vec![
            (1, t::VERIFICATION, vec![t::IMPLICIT_LE]),
            (3, t::STUDY_FIND, vec![t::IMPLICIT_LE]),
            (5, t::STUDY_FIND, vec![t::EXPLICIT_LE]),
        ],
        ..Rq::default()
    };
    assert_eq!(checked(mixed, RefusedContexts::Drop), Ok(vec![3, 5]));
    let only_refused = Rq {
        contexts: vec![(3, t::STUDY_FIND, vec![t::IMPLICIT_LE])],
        ..Rq::default()
    };
    let r = checked(only_refused, RefusedContexts::Drop).unwrap_err();
    assert_eq!(r.denial.reason, Reason::DicomAbstractSyntax);
    assert_eq!(r.answer, [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1]);
}

#[test]
fn long_refusals_name_a_few_uids() {
    let contexts = (0..20u8)
        .map(|i| (2 * i + 1, t::STUDY_FIND, vec![t::IMPLICIT_LE]))
        .collect();
    let r = refused(Rq {
        contexts,
        ..Rq::default()
    });
    // Duplicates are named once.
    assert_eq!(
        r.denial.detail.as_deref(),
        Some("abstract syntax not admitted: 1.2.840.10008.5.1.4.1.2.2.1")
    );
}

fn proposals() -> Vec<Proposed> {
    vec![
        Proposed {
            id: 1,
            abstract_syntax: t::VERIFICATION.into(),
            transfer_syntaxes: vec![t::IMPLICIT_LE.into()],
            dropped: false,
        },
        Proposed {
            id: 3,
            abstract_syntax: t::STUDY_FIND.into(),
            transfer_syntaxes: vec![t::EXPLICIT_LE.into(), t::IMPLICIT_LE.into()],
            dropped: true,
        },
        Proposed {
            id: 5,
            abstract_syntax: t::CT_STORAGE.into(),
            transfer_syntaxes: vec![t::IMPLICIT_LE.into()],
            dropped: false,
        },
    ]
}

fn ac(results: &[(u8, u8, Option<&str>)], max: Option<u32>) -> AssociateAc {
    AssociateAc::try_from(&t::ac_body(results, max)[..]).unwrap()
}

#[test]
fn accepted_contexts_are_reported_and_dropped_ones_answered() {
    let device = ac(
        &[(1, 0, Some(t::IMPLICIT_LE)), (5, 3, Some(t::IMPLICIT_LE))],
        Some(1 << 20),
    );
    let a = accept(&proposals(), &device, 16384).unwrap();
    assert_eq!(
        a.contexts,
        [DicomContext {
            id: 1,
            abstract_syntax: t::VERIFICATION.into(),
            transfer_syntax: Some(t::IMPLICIT_LE.into()),
        }]
    );
    assert!(a.ids.contains(1) && !a.ids.contains(3) && !a.ids.contains(5));
    // The dropped context comes back refused with its first transfer
    // syntax, and the maximum length is clamped.
    let expect = t::pdu(
        0x02,
        &t::ac_body(
            &[
                (1, 0, Some(t::IMPLICIT_LE)),
                (5, 3, Some(t::IMPLICIT_LE)),
                (3, 3, Some(t::EXPLICIT_LE)),
            ],
            Some(16384),
        ),
    );
    assert_eq!(a.forward, expect);
}

#[test]
fn an_unlimited_device_gets_the_cap() {
    let device = ac(&[(1, 0, Some(t::IMPLICIT_LE))], Some(0));
    let a = accept(&proposals()[..1], &device, 16384).unwrap();
    let expect = t::pdu(
        0x02,
        &t::ac_body(&[(1, 0, Some(t::IMPLICIT_LE))], Some(16384)),
    );
    assert_eq!(a.forward, expect);
    let device = ac(&[(1, 0, Some(t::IMPLICIT_LE))], Some(8192));
    let a = accept(&proposals()[..1], &device, 16384).unwrap();
    let expect = t::pdu(
        0x02,
        &t::ac_body(&[(1, 0, Some(t::IMPLICIT_LE))], Some(8192)),
    );
    assert_eq!(a.forward, expect);
}

#[test]
fn accepting_what_was_not_proposed_is_a_violation() {
    for id in [3, 7] {
        let device = ac(&[(id, 0, Some(t::IMPLICIT_LE))], Some(0));
        let v = accept(&proposals(), &device, 16384).unwrap_err();
        assert_eq!(v.reason, Reason::DicomPresentationContext, "{id}");
    }
}
