use proptest::prelude::*;

use super::*;
use crate::guard::dicom::testutil::{self as t, Rq};

fn parse(rq: &Rq) -> AssociateRq {
    AssociateRq::try_from(&rq.body()[..]).expect("parses")
}

fn malformed(body: &[u8]) -> String {
    let v = AssociateRq::try_from(body).expect_err("refused");
    assert_eq!(v.reason, Reason::DicomMalformed, "{v:?}");
    assert_eq!(v.abort_reason, abort::INVALID_PARAMETER);
    v.detail
}

#[test]
fn answers_have_the_ps38_layout() {
    assert_eq!(associate_rj(1, 1, 7), [0x03, 0, 0, 0, 0, 4, 0, 1, 1, 7]);
    assert_eq!(abort_pdu(2, 6), [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6]);
    assert_eq!(
        Violation::unrecognized(0x42).abort_pdu(),
        [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 1]
    );
    assert_eq!(
        Violation::unexpected(0x02, "x").abort_pdu(),
        [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 2]
    );
    assert_eq!(
        Violation::timeout("x").abort_pdu(),
        [0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0]
    );
    assert_eq!(
        Violation::too_large(1, 1 << 20, 65536).abort_pdu()[9],
        abort::INVALID_PARAMETER
    );
}

#[test]
fn header_is_type_and_big_endian_length() {
    let h = PduHeader::from([0x04, 0xff, 0x00, 0x01, 0x00, 0x02]);
    assert_eq!(
        h,
        PduHeader {
            kind: 4,
            length: 65538
        }
    );
}

#[test]
fn rq_fields_parse_without_padding() {
    let rq = parse(&Rq {
        called: " STORESCP",
        ..Rq::default()
    });
    assert_eq!(rq.protocol_version(), 1);
    assert_eq!(rq.called_ae(), b"STORESCP");
    assert_eq!(rq.calling_ae(), b"STORESCU");
    assert_eq!(rq.application_context, APPLICATION_CONTEXT);
    assert_eq!(rq.contexts.len(), 2);
    // Odd-length UIDs came NUL padded.
    assert_eq!(rq.contexts[0].abstract_syntax, t::VERIFICATION);
    assert_eq!(rq.contexts[0].transfer_syntaxes, [t::IMPLICIT_LE]);
    assert_eq!(rq.contexts[1].id, 3);
    assert_eq!(
        rq.contexts[1].transfer_syntaxes,
        [t::EXPLICIT_LE, t::IMPLICIT_LE]
    );
    assert_eq!(rq.user_info.max_length, Some(0));
}

#[test]
fn ae_titles_lose_spaces_and_nul_padding() {
    assert_eq!(ae_trimmed(b"  AB C  \0\0"), b"AB C");
    assert_eq!(ae_trimmed(b"                "), b"");
    assert_eq!(ae_trimmed(b""), b"");
}

#[test]
fn sanitize_keeps_printable_ascii_and_bounds_length() {
    assert_eq!(sanitize(b"A\x01\xffB"), "A??B");
    let long = sanitize(&[b'x'; 500]);
    assert_eq!(long.len(), 64 + 3);
}

#[test]
fn forwarded_rq_clamps_the_maximum_length() {
    for (announced, expected) in [
        (Some(0), 16384),
        (None, 16384),
        (Some(8192), 8192),
        (Some(1 << 20), 16384),
    ] {
        let sent = Rq {
            max_length: announced,
            ..Rq::default()
        };
        let rq = parse(&sent);
        let forwarded = rq.encode(|_| true, clamp_max_length(rq.user_info.max_length, 16384));
        let again = AssociateRq::try_from(&forwarded[HEADER_LEN..]).unwrap();
        assert_eq!(again.user_info.max_length, Some(expected), "{announced:?}");
        assert_eq!(again.contexts, rq.contexts);
        // Everything else verbatim: the same PDU the client would have
        // sent had it announced that length.
        let expect = Rq {
            max_length: Some(expected),
            ..Rq::default()
        };
        assert_eq!(forwarded, expect.pdu());
    }
}

#[test]
fn forwarded_rq_leaves_out_dropped_contexts() {
    let rq = parse(&Rq::default());
    let forwarded = rq.encode(|c| c.id != 1, 0);
    let expect = Rq {
        contexts: vec![(3, t::CT_STORAGE, vec![t::EXPLICIT_LE, t::IMPLICIT_LE])],
        ..Rq::default()
    };
    assert_eq!(forwarded, expect.pdu());
}

#[test]
fn rq_inconsistencies_are_malformed() {
    let good = Rq::default().body();
    // Every cut inside the fixed fields or inside an item.
    for cut in [0, 10, 67, 69, 70, 75, good.len() - 1] {
        malformed(&good[..cut]);
    }
    let with_items = |items: &[Vec<u8>]| {
        let mut b = t::fixed(1, "STORESCP", "STORESCU");
        for i in items {
            b.extend_from_slice(i);
        }
        b
    };
    let app = t::item(0x10, b"1.2.840.10008.3.1.1.1");
    let pc = t::proposed(1, t::VERIFICATION, &[t::IMPLICIT_LE]);
    let ui = t::user_info(Some(0), &[]);
    assert!(AssociateRq::try_from(&with_items(&[app.clone(), pc.clone(), ui.clone()])[..]).is_ok());
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (vec![pc.clone(), ui.clone()], "no application context"),
        (vec![app.clone(), ui.clone()], "no presentation context"),
        (
            vec![app.clone(), app.clone(), pc.clone()],
            "two application context",
        ),
        (vec![app.clone(), pc.clone(), pc.clone()], "proposed twice"),
        (
            vec![
                app.clone(),
                t::proposed(2, t::VERIFICATION, &[t::IMPLICIT_LE]),
            ],
            "not odd",
        ),
        (
            vec![app.clone(), t::proposed(1, t::VERIFICATION, &[])],
            "no transfer syntax",
        ),
        (
            vec![app.clone(), t::item(0x20, &[1, 0, 0, 0])],
            "no abstract syntax",
        ),
        (vec![app.clone(), t::item(0x20, &[1, 0])], "under 4 bytes"),
        (
            vec![app.clone(), t::proposed(1, "1.2.abc", &[t::IMPLICIT_LE])],
            "not a UID",
        ),
        (
            vec![app.clone(), t::proposed(1, t::VERIFICATION, &["1..2"])],
            "not a UID",
        ),
        (
            vec![app.clone(), pc.clone(), t::item(0x60, b"")],
            "item 0x60",
        ),
        (
            vec![app.clone(), pc.clone(), ui.clone(), ui.clone()],
            "two user information",
        ),
        (
            vec![
                app.clone(),
                pc.clone(),
                t::item(0x50, &t::item(0x51, &[0, 0, 1])),
            ],
            "not 4 bytes",
        ),
        (
            vec![
                app.clone(),
                pc.clone(),
                t::item(
                    0x50,
                    &[t::item(0x51, &[0; 4]), t::item(0x51, &[0; 4])].concat(),
                ),
            ],
            "two maximum length",
        ),
        (
            vec![app.clone(), pc.clone(), t::item(0x50, &[0x52, 0, 0, 9, 1])],
            "overruns",
        ),
        (
            vec![app.clone(), {
                let mut p = pc.clone();
                p.extend_from_slice(&[0x30, 0]);
                p
            }],
            "ends inside an item header",
        ),
    ];
    for (items, expect) in cases {
        let detail = malformed(&with_items(&items));
        assert!(detail.contains(expect), "{detail:?} lacks {expect:?}");
    }
    // An item whose length claims more than there is.
    let mut b = with_items(&[app, pc]);
    b.extend_from_slice(&[0x50, 0, 0xff, 0xff, 0x51]);
    malformed(&b);
}

#[test]
fn user_information_sub_items_pass_verbatim() {
    let extra = [
        t::item(0x52, b"1.2.3.4"),
        t::item(0x55, b"MOAT_TEST"),
        t::item(0x58, &[0, 1, 2, 3]),
    ]
    .concat();
    let rq = parse(&Rq {
        user_extra: extra.clone(),
        ..Rq::default()
    });
    let out = rq.encode(|_| true, 4096);
    assert!(out.ends_with(&extra));
    assert!(out.ends_with(&[t::item(0x51, &4096u32.to_be_bytes()), extra].concat()));
}

#[test]
fn ac_parses_results_and_rewrites() {
    let body = t::ac_body(
        &[
            (1, 0, Some(t::IMPLICIT_LE)),
            (3, 4, None),
            (5, 3, Some(t::IMPLICIT_LE)),
        ],
        Some(0),
    );
    let ac = AssociateAc::try_from(&body[..]).unwrap();
    assert_eq!(ac.results.len(), 3);
    assert_eq!(
        ac.results[0].transfer_syntax.as_deref(),
        Some(t::IMPLICIT_LE)
    );
    assert_eq!(ac.results[1].result, 4);
    assert_eq!(ac.user_info.max_length, Some(0));

    // Nothing added, length clamped: the device's AC with another 0x51.
    let out = ac.encode(&[], 16384);
    let expect = t::pdu(
        0x02,
        &t::ac_body(
            &[
                (1, 0, Some(t::IMPLICIT_LE)),
                (3, 4, None),
                (5, 3, Some(t::IMPLICIT_LE)),
            ],
            Some(16384),
        ),
    );
    assert_eq!(out, expect);

    // Results added go after the device's, before the user information.
    let extra = ContextResult::not_supported(7, t::EXPLICIT_LE);
    assert_eq!(
        extra,
        [
            &[0x21, 0, 0, 27, 7, 0, 3, 0, 0x40, 0, 0, 19][..],
            t::EXPLICIT_LE.as_bytes()
        ]
        .concat()
    );
    let out = ac.encode(std::slice::from_ref(&extra), 16384);
    let expect = t::pdu(
        0x02,
        &t::ac_body(
            &[
                (1, 0, Some(t::IMPLICIT_LE)),
                (3, 4, None),
                (5, 3, Some(t::IMPLICIT_LE)),
                (7, 3, Some(t::EXPLICIT_LE)),
            ],
            Some(16384),
        ),
    );
    assert_eq!(out, expect);
}

#[test]
fn ac_inconsistencies_are_malformed() {
    for body in [
        t::ac_body(&[(1, 0, None)], Some(0)),
        t::ac_body(&[(1, 9, Some(t::IMPLICIT_LE))], Some(0)),
        t::ac_body(
            &[(1, 0, Some(t::IMPLICIT_LE)), (1, 0, Some(t::IMPLICIT_LE))],
            Some(0),
        ),
        t::fixed(1, "A", "B"),
        t::ac_body(&[], Some(0))[..70].to_vec(),
    ] {
        let v = AssociateAc::try_from(&body[..]).expect_err("refused");
        assert_eq!(v.reason, Reason::DicomMalformed);
    }
}

proptest! {
    #[test]
    fn rq_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = AssociateRq::try_from(&bytes[..]);
        let _ = AssociateAc::try_from(&bytes[..]);
    }

    /// Bytes changed or cut anywhere in a valid request: an answer, never
    /// a panic; and whatever parses encodes back to something that parses.
    #[test]
    fn damaged_rq_never_panics(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = Rq::default().body();
        let i = at.index(body.len());
        body[i] = byte;
        body.truncate(cut.index(body.len() + 1));
        if let Ok(rq) = AssociateRq::try_from(&body[..]) {
            let out = rq.encode(|_| true, 4096);
            prop_assert!(AssociateRq::try_from(&out[HEADER_LEN..]).is_ok());
        }
        let mut ac = t::ac_body(&[(1, 0, Some(t::IMPLICIT_LE))], Some(0));
        let i = at.index(ac.len());
        ac[i] = byte;
        ac.truncate(cut.index(ac.len() + 1));
        if let Ok(ac) = AssociateAc::try_from(&ac[..]) {
            let out = ac.encode(&[], 4096);
            prop_assert!(AssociateAc::try_from(&out[HEADER_LEN..]).is_ok());
        }
    }
}
