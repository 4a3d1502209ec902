use super::*;

const SEED_SHA1: &[u8] = b"12345678901234567890";
const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

fn rfc(algorithm: Algorithm, seed: &[u8], digits: usize, step: u64) -> TOTP {
    TOTP::new_unchecked(
        algorithm,
        digits,
        0,
        step,
        seed.to_vec(),
        None,
        String::new(),
    )
}

/// RFC 6238 Appendix B: (time, SHA-1, SHA-256, SHA-512), 8 digits.
const RFC6238: [(u64, &str, &str, &str); 6] = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
];

#[test]
fn rfc6238_appendix_b() {
    for (time, sha1, sha256, sha512) in RFC6238 {
        assert_eq!(
            rfc(Algorithm::SHA1, SEED_SHA1, 8, 30).generate(time),
            sha1,
            "{time}"
        );
        assert_eq!(
            rfc(Algorithm::SHA256, SEED_SHA256, 8, 30).generate(time),
            sha256,
            "{time}"
        );
        assert_eq!(
            rfc(Algorithm::SHA512, SEED_SHA512, 8, 30).generate(time),
            sha512,
            "{time}"
        );
    }
}

#[test]
fn rfc6238_sha1_vectors_through_matching_step() {
    // moat's codes are the same HOTP values truncated to 6 digits.
    for (time, sha1, _, _) in RFC6238 {
        let code = &sha1[2..];
        assert_eq!(
            matching_step(SEED_SHA1, code, time, 0),
            Some(time / 30),
            "{time}"
        );
    }
}

#[test]
fn rfc4226_appendix_d() {
    let expected = [
        "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
        "520489",
    ];
    // HOTP is TOTP with a one-second step: time = counter.
    let hotp = rfc(Algorithm::SHA1, SEED_SHA1, 6, 1);
    for (counter, code) in expected.iter().enumerate() {
        assert_eq!(hotp.generate(counter as u64), *code, "counter {counter}");
        // And moat's own 30 s steps: step n is counter n.
        assert_eq!(
            matching_step(SEED_SHA1, code, counter as u64 * 30 + 7, 0),
            Some(counter as u64),
            "counter {counter}"
        );
    }
}

fn code_at_step(secret: &[u8], step: u64) -> String {
    rfc(Algorithm::SHA1, secret, 6, 30).generate(step * 30)
}

#[test]
fn skew_windows() {
    let secret = generate_secret();
    let now = 1000 * 30 + 15;
    for skew in 0..=2u8 {
        for offset in -3i64..=3 {
            let step = (1000 + offset) as u64;
            let code = code_at_step(&secret, step);
            let got = matching_step(&secret, &code, now, skew);
            if offset.unsigned_abs() <= u64::from(skew) {
                assert_eq!(got, Some(step), "skew {skew}, offset {offset}");
            } else {
                assert_eq!(got, None, "skew {skew}, offset {offset}");
            }
        }
    }
}

#[test]
fn window_edges_within_a_step() {
    let secret = generate_secret();
    let code = code_at_step(&secret, 1000);
    // The first and last second of step 1000.
    assert_eq!(matching_step(&secret, &code, 30_000, 0), Some(1000));
    assert_eq!(matching_step(&secret, &code, 30_029, 0), Some(1000));
    // One second either side is another step.
    assert_eq!(matching_step(&secret, &code, 29_999, 0), None);
    assert_eq!(matching_step(&secret, &code, 30_030, 0), None);
    assert_eq!(matching_step(&secret, &code, 29_999, 1), Some(1000));
    assert_eq!(matching_step(&secret, &code, 30_030, 1), Some(1000));
}

#[test]
fn skew_at_the_ends_of_time_does_not_overflow() {
    let secret = generate_secret();
    let code = code_at_step(&secret, 0);
    assert_eq!(matching_step(&secret, &code, 0, 2), Some(0));
    assert_eq!(matching_step(&secret, &code, 59, 2), Some(0));
    // At the end of time: no overflow panic, whatever the answer.
    let _ = matching_step(&secret, "000000", u64::MAX, 2);
}

#[test]
fn malformed_codes_are_refused() {
    let code = code_at_step(SEED_SHA1, 1); // "287082"
    assert_eq!(matching_step(SEED_SHA1, &code, 59, 0), Some(1));
    for bad in [
        "",
        "28708",
        "2870820",
        "28708 ",
        " 287082",
        "287O82",
        "287082\n",
        "+28708",
        "２８７０８２",
        "28708a",
        "-287082",
    ] {
        assert_eq!(matching_step(SEED_SHA1, bad, 59, 2), None, "{bad:?}");
    }
}

#[test]
fn secrets_are_160_bits_and_random() {
    let a = generate_secret();
    let b = generate_secret();
    assert_eq!(a.len(), 20);
    assert!(a.len() * 8 >= 160);
    assert_ne!(a, b);
}

#[test]
fn base32_round_trip() {
    for _ in 0..20 {
        let secret = generate_secret();
        let text = to_base32(&secret);
        assert_eq!(text.len(), 32);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(from_base32(&text), Some(secret.clone()));
        assert_eq!(from_base32(&text.to_ascii_lowercase()), Some(secret));
    }
    assert_eq!(to_base32(b"hello"), "NBSWY3DP");
    assert_eq!(from_base32("NBSWY3DP"), Some(b"hello".to_vec()));
    // Padding optional, either way.
    assert_eq!(to_base32(b"hi"), "NBUQ");
    assert_eq!(from_base32("NBUQ"), Some(b"hi".to_vec()));
    assert_eq!(from_base32("NBUQ===="), Some(b"hi".to_vec()));
    assert_eq!(from_base32("nbuq===="), Some(b"hi".to_vec()));
    assert_eq!(
        from_base32("JBSWY3DPEHPK3PXP"),
        Some(b"Hello!\xde\xad\xbe\xef".to_vec())
    );
}

#[test]
fn base32_refuses_what_is_not_base32() {
    for bad in [
        "",
        "====",
        "NBUQ=",
        "NBUQ==",
        "NBU",
        "N",
        "NBUQ1",
        "NB UQ",
        "NBUQ0",
        "NBUQ8",
        "NBUQ\n",
        "NB=UQ===",
        "ÄBUQ",
        "NBUQ=====",
    ] {
        assert_eq!(from_base32(bad), None, "{bad:?}");
    }
}

#[test]
fn otpauth_uri_names_moat_and_the_user() {
    let secret = generate_secret();
    let uri = otpauth_uri("alice", &secret);
    let b32 = to_base32(&secret);
    assert!(uri.starts_with("otpauth://totp/moat:alice?"), "{uri}");
    assert!(uri.contains(&format!("secret={b32}")), "{uri}");
    assert!(uri.contains("issuer=moat"), "{uri}");
    // SHA-1, 6 digits and 30 s are the defaults: nothing else is needed.
    assert!(!uri.contains("algorithm="), "{uri}");
    assert!(!uri.contains("digits="), "{uri}");
    assert!(!uri.contains("period="), "{uri}");

    let uri = otpauth_uri("dr.o'neil@icu west", &secret);
    assert!(
        uri.starts_with("otpauth://totp/moat:dr.o%27neil%40icu%20west?"),
        "{uri}"
    );
    // An authenticator app reads back the same secret and account.
    let parsed = TOTP::from_url(&uri).unwrap();
    assert_eq!(parsed.secret, secret);
    assert_eq!(parsed.account_name, "dr.o'neil@icu west");
    assert_eq!(parsed.issuer.as_deref(), Some("moat"));
}

#[test]
fn qr_code_for_a_terminal() {
    let uri = otpauth_uri("alice", &generate_secret());
    let qr = qr_terminal(&uri);
    let lines: Vec<&str> = qr.lines().collect();
    assert!(lines.len() > 10, "{qr}");
    // Square, in characters: each line as wide as the next.
    let width = lines[0].chars().count();
    assert!(width > 20);
    assert!(lines.iter().all(|l| l.chars().count() == width));
    assert!(qr.chars().any(|c| "█▀▄".contains(c)));
}
