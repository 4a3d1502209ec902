use super::*;
use proptest::prelude::*;

const K1: [u8; 32] = [1; 32];
const K2: [u8; 32] = [2; 32];

fn claims() -> SessionClaims {
    SessionClaims {
        user: "alice".to_owned(),
        issued_at: 1_700_000_000,
        last_seen: 1_700_000_600,
        generation: 3,
    }
}

fn reencode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(value: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value).unwrap()
}

#[test]
fn keys_are_shareable_across_tasks() {
    fn check<T: Send + Sync>() {}
    check::<SessionKeys>();
}

#[test]
fn debug_shows_no_key_material() {
    let keys = SessionKeys::new(K1, Some(K2));
    assert_eq!(format!("{keys:?}"), "SessionKeys { previous: true, .. }");
}

#[test]
fn seal_then_open_round_trips() {
    let keys = SessionKeys::new(K1, None);
    let value = keys.seal(&claims());
    assert_eq!(keys.open(&value), Ok(claims()));
    // Cookie-safe characters only.
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let odd = SessionClaims {
        user: "Zoë O'Brien; x=y".to_owned(),
        issued_at: 0,
        last_seen: u64::MAX,
        generation: u64::MAX,
    };
    assert_eq!(keys.open(&keys.seal(&odd)), Ok(odd));
}

#[test]
fn the_layout_is_key_id_nonce_ciphertext() {
    let keys = SessionKeys::new(K1, None);
    let claims = claims();
    let bytes = decode(&keys.seal(&claims));
    assert_eq!(bytes[0], digest::digest(&digest::SHA256, &K1).as_ref()[0]);
    assert_eq!(
        bytes.len(),
        1 + 12 + CLAIMS_FIXED_LEN + claims.user.len() + 16
    );
    // Nothing of the plaintext shows.
    assert!(!bytes.windows(5).any(|w| w == b"alice"));
}

#[test]
fn each_seal_uses_a_fresh_nonce() {
    let keys = SessionKeys::new(K1, None);
    let a = decode(&keys.seal(&claims()));
    let b = decode(&keys.seal(&claims()));
    assert_ne!(a[1..13], b[1..13]);
    assert_ne!(a, b);
}

#[test]
fn any_changed_bit_is_refused() {
    let keys = SessionKeys::new(K1, None);
    let bytes = decode(&keys.seal(&claims()));
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut t = bytes.clone();
            t[i] ^= 1 << bit;
            assert_eq!(
                keys.open(&reencode(&t)),
                Err(CookieError::Invalid),
                "byte {i} bit {bit}"
            );
        }
    }
}

#[test]
fn any_changed_character_is_refused() {
    let keys = SessionKeys::new(K1, None);
    let value = keys.seal(&claims());
    for i in 0..value.len() {
        for c in ['A', 'z', '0', '-', '_', '=', '.', '+', '/'] {
            let mut t = value.clone().into_bytes();
            if t[i] == c as u8 {
                continue;
            }
            t[i] = c as u8;
            let t = String::from_utf8(t).unwrap();
            assert_eq!(keys.open(&t), Err(CookieError::Invalid), "{i} {c}");
        }
    }
}

#[test]
fn a_truncated_or_extended_cookie_is_refused() {
    let keys = SessionKeys::new(K1, None);
    let value = keys.seal(&claims());
    for n in 0..value.len() {
        assert_eq!(keys.open(&value[..n]), Err(CookieError::Invalid), "{n}");
    }
    let bytes = decode(&value);
    for n in 0..bytes.len() {
        assert_eq!(
            keys.open(&reencode(&bytes[..n])),
            Err(CookieError::Invalid),
            "{n}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(keys.open(&reencode(&longer)), Err(CookieError::Invalid));
    assert_eq!(keys.open(&format!("{value}A")), Err(CookieError::Invalid));
    assert_eq!(keys.open(&format!("{value}=")), Err(CookieError::Invalid));
    assert_eq!(keys.open(&format!(" {value}")), Err(CookieError::Invalid));
}

#[test]
fn garbage_is_refused() {
    let keys = SessionKeys::new(K1, None);
    for v in [
        "",
        "=",
        "A",
        "AA",
        "!!!!",
        "é",
        "\0",
        &"A".repeat(100),
        &"A".repeat(10_000),
    ] {
        assert_eq!(keys.open(v), Err(CookieError::Invalid), "{v:?}");
    }
}

#[test]
fn another_key_is_refused() {
    let value = SessionKeys::new(K1, None).seal(&claims());
    assert_eq!(
        SessionKeys::new(K2, None).open(&value),
        Err(CookieError::Invalid)
    );
    // Even with the key id made to match.
    let mut bytes = decode(&value);
    bytes[0] = SessionKeys::new(K2, None).current.id;
    assert_eq!(
        SessionKeys::new(K2, None).open(&reencode(&bytes)),
        Err(CookieError::Invalid)
    );
}

#[test]
fn the_previous_key_still_opens_and_never_seals() {
    let old = SessionKeys::new(K1, None);
    let rotated = SessionKeys::new(K2, Some(K1));
    let old_cookie = old.seal(&claims());
    assert_eq!(rotated.open(&old_cookie), Ok(claims()));
    let new_cookie = rotated.seal(&claims());
    assert_eq!(SessionKeys::new(K2, None).open(&new_cookie), Ok(claims()));
    assert_eq!(old.open(&new_cookie), Err(CookieError::Invalid));
    // Once the old key is dropped, its cookies are not accepted.
    assert_eq!(
        SessionKeys::new(K2, None).open(&old_cookie),
        Err(CookieError::Invalid)
    );
    assert_eq!(
        SessionKeys::new(K2, Some([3; 32])).open(&old_cookie),
        Err(CookieError::Invalid)
    );
}

/// A key whose id is the same as `key`'s (1 in 256 keys).
fn same_id_as(key: &[u8; 32]) -> [u8; 32] {
    let id = Key::new(key).id;
    (0u32..)
        .map(|i| {
            let mut k = [9u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k
        })
        .find(|k| k != key && Key::new(k).id == id)
        .unwrap()
}

#[test]
fn keys_sharing_an_id_are_both_tried() {
    let other = same_id_as(&K1);
    let both = SessionKeys::new(K1, Some(other));
    let by_previous = SessionKeys::new(other, None).seal(&claims());
    let by_current = SessionKeys::new(K1, None).seal(&claims());
    assert_eq!(both.open(&by_previous), Ok(claims()));
    assert_eq!(both.open(&by_current), Ok(claims()));
    assert_eq!(
        SessionKeys::new(K1, None).open(&by_previous),
        Err(CookieError::Invalid)
    );
    let token = SessionKeys::new(other, None).csrf_token("b");
    assert!(both.check_csrf("b", &token));
}

#[test]
fn two_gateways_sharing_a_key_file_accept_each_others_cookies() {
    let a = SessionKeys::new(K1, None);
    let b = SessionKeys::new(K1, Some(K2));
    assert_eq!(b.open(&a.seal(&claims())), Ok(claims()));
    assert_eq!(a.open(&b.seal(&claims())), Ok(claims()));
    assert!(b.check_csrf("x", &a.csrf_token("x")));
    assert!(a.check_csrf("x", &b.csrf_token("x")));
}

#[test]
fn the_cookie_length_cap_fits_the_longest_user() {
    let keys = SessionKeys::new(K1, None);
    let mut c = claims();
    c.user = "u".repeat(MAX_USER_LEN);
    let value = keys.seal(&c);
    assert!(value.len() <= MAX_COOKIE_LEN);
    assert_eq!(keys.open(&value), Ok(c.clone()));
    c.user.push('u');
    let value = keys.seal(&c);
    assert!(value.len() > MAX_COOKIE_LEN);
    assert_eq!(keys.open(&value), Err(CookieError::Invalid));
}

#[test]
fn a_well_sealed_but_malformed_plaintext_is_refused() {
    let keys = SessionKeys::new(K1, None);
    let key = &keys.current;
    let seal_raw = |plain: &[u8]| {
        let nonce = [7u8; 12];
        let mut buf = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.aad()),
                &mut buf,
            )
            .unwrap();
        let mut out = vec![key.id];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        reencode(&out)
    };
    let good = claims().encode();
    assert_eq!(keys.open(&seal_raw(&good)), Ok(claims()));
    let mut wrong_version = good.clone();
    wrong_version[0] = 2;
    let mut bad_utf8 = good.clone();
    bad_utf8.push(0xff);
    for plain in [&b""[..], &good[..1], &good[..24], &wrong_version, &bad_utf8] {
        assert_eq!(keys.open(&seal_raw(plain)), Err(CookieError::Invalid));
    }
    // An empty user name is still a well-formed plaintext.
    assert_eq!(keys.open(&seal_raw(&good[..25])).unwrap().user, "");
}

#[test]
fn csrf_tokens_are_bound_to_their_binding_and_key() {
    let keys = SessionKeys::new(K1, None);
    let token = keys.csrf_token("alice:1700000000");
    assert_eq!(token.len(), CSRF_TOKEN_LEN);
    assert_eq!(token, keys.csrf_token("alice:1700000000"));
    assert!(keys.check_csrf("alice:1700000000", &token));
    assert!(!keys.check_csrf("alice:1700000001", &token));
    assert!(!keys.check_csrf("bob:1700000000", &token));
    assert!(!keys.check_csrf("", &token));
    assert!(!SessionKeys::new(K2, None).check_csrf("alice:1700000000", &token));
    assert!(SessionKeys::new(K2, Some(K1)).check_csrf("alice:1700000000", &token));
    assert_ne!(keys.csrf_token("a"), keys.csrf_token("b"));
    // The token is not the session key's own MAC of the binding.
    let direct = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &K1),
        b"moat-csrf-v1alice:1700000000",
    );
    assert_ne!(token, URL_SAFE_NO_PAD.encode(direct));
}

#[test]
fn malformed_csrf_tokens_are_refused() {
    let keys = SessionKeys::new(K1, None);
    let token = keys.csrf_token("b");
    let mut bytes = decode(&token);
    bytes[31] ^= 1;
    for t in [
        String::new(),
        token[..42].to_owned(),
        format!("{token}A"),
        format!("{token}="),
        reencode(&bytes),
        token.replace(|c: char| c.is_ascii_alphabetic(), "!"),
        "A".repeat(43),
        "é".repeat(22),
    ] {
        assert!(!keys.check_csrf("b", &t), "{t:?}");
    }
    // A cookie is not a token, and a token is not a cookie.
    let cookie = keys.seal(&claims());
    assert!(!keys.check_csrf("b", &cookie));
    assert_eq!(keys.open(&token), Err(CookieError::Invalid));
}

fn key_text(engine: &impl Engine, key: &[u8]) -> String {
    engine.encode(key)
}

#[test]
fn key_files_in_either_alphabet_are_read() {
    let key: [u8; 32] = std::array::from_fn(|i| (i * 37 + 250) as u8);
    let p = Path::new("/etc/moat/session.key");
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    let std = key_text(&STANDARD, &key);
    let url = key_text(&URL_SAFE, &key);
    assert_ne!(std, url, "the test key uses both alphabets' own characters");
    for text in [
        std.clone(),
        format!("{std}\n"),
        format!("{std}\r\n"),
        key_text(&STANDARD_NO_PAD, &key),
        url.clone(),
        format!("{url}\n"),
        key_text(&URL_SAFE_NO_PAD, &key),
    ] {
        assert_eq!(parse_key_file(p, text.as_bytes()), Ok(key), "{text:?}");
    }
}

#[test]
fn bad_key_files_are_explained_without_their_contents() {
    use base64::engine::general_purpose::STANDARD;
    let p = Path::new("/etc/moat/session.key");
    let good = STANDARD.encode([0xab; 32]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "empty"),
        (b"\n".to_vec(), "empty"),
        (
            format!("{good}\n{good}\n").into_bytes(),
            "more than one line",
        ),
        (format!("{good}\n\n").into_bytes(), "more than one line"),
        (format!(" {good}").into_bytes(), "white space at column 1"),
        (
            format!("{good} \n").into_bytes(),
            "white space at column 45",
        ),
        (
            format!("{}\n", STANDARD.encode([0xab; 31])).into_bytes(),
            "decodes to 31 bytes, not 32",
        ),
        (
            format!("{}\n", STANDARD.encode([0xab; 33])).into_bytes(),
            "decodes to 33 bytes, not 32",
        ),
        (
            format!("{}*\n", &good[..43]).into_bytes(),
            "not base64 at column 44",
        ),
        (b"\xff\xfe".to_vec(), "not base64 at column 1"),
        (
            format!("{}-+\n", &good[..42]).into_bytes(),
            "not valid base64",
        ),
        (
            format!("{}==\n", &good[..43]).into_bytes(),
            "not valid base64",
        ),
    ];
    for (text, why) in cases {
        let e = parse_key_file(p, &text).unwrap_err();
        assert!(e.contains("/etc/moat/session.key"), "{e}");
        assert!(e.contains(why), "{e:?} should say {why:?}");
        assert!(e.contains("32 random bytes"), "{e}");
        let shown: String = String::from_utf8_lossy(&text)
            .trim()
            .chars()
            .take(8)
            .collect();
        if shown.len() >= 8 {
            assert!(!e.contains(&shown), "{e} shows the key");
        }
    }
}

#[test]
fn a_missing_key_file_is_created_private_and_an_existing_one_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.key");
    assert!(create_key_file_if_missing(&path).unwrap());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read(&path).unwrap();
    assert!(text.ends_with(b"\n"));
    let key = parse_key_file(&path, &text).unwrap();
    assert_ne!(key, [0; 32]);

    assert!(!create_key_file_if_missing(&path).unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), text);

    // Whatever is there already, even if it is not a key, stays.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "mine\n").unwrap();
    assert!(!create_key_file_if_missing(&other).unwrap());
    assert_eq!(std::fs::read(&other).unwrap(), b"mine\n");

    // No temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["other.key", "session.key"]);
}

#[test]
fn two_keys_created_are_different() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(create_key_file_if_missing(&a).unwrap());
    assert!(create_key_file_if_missing(&b).unwrap());
    assert_ne!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
}

#[test]
fn processes_starting_together_end_with_one_key() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        let barrier = std::sync::Barrier::new(4);
        let created: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let created = create_key_file_if_missing(&path).unwrap();
                        let key = parse_key_file(&path, &std::fs::read(&path).unwrap()).unwrap();
                        (created, key)
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            assert!(
                results.windows(2).all(|w| w[0].1 == w[1].1),
                "all read one key"
            );
            results.into_iter().map(|r| r.0).collect()
        });
        assert_eq!(created.iter().filter(|c| **c).count(), 1, "{created:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[test]
fn a_key_file_in_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/session.key");
    assert!(create_key_file_if_missing(&path).is_err());
}

#[test]
fn set_cookie_values() {
    assert_eq!(
        set_cookie("abc", None),
        "__Host-moat-session=abc; Path=/; Secure; HttpOnly; SameSite=Strict"
    );
    assert_eq!(
        set_cookie("abc", Some(3600)),
        "__Host-moat-session=abc; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=3600"
    );
    assert_eq!(
        clear_cookie(),
        "__Host-moat-session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    );
    // They are valid header values.
    let keys = SessionKeys::new(K1, None);
    HeaderValue::from_str(&set_cookie(&keys.seal(&claims()), Some(1))).unwrap();
    HeaderValue::from_str(&clear_cookie()).unwrap();
}

fn cookie_headers(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-other", HeaderValue::from_static("1"));
    for v in values {
        h.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
    }
    h
}

fn cookies_of(h: &HeaderMap) -> Vec<&[u8]> {
    h.get_all(COOKIE).iter().map(|v| v.as_bytes()).collect()
}

#[test]
fn cookie_values_are_found_in_every_cookie_header() {
    let h = cookie_headers(&[
        b"a=1; __Host-moat-session=first",
        b"__Host-moat-session2=no; __Host-moat-session = second ;b=2",
        b";;  __Host-moat-session=th=ird;",
        b"x-__Host-moat-session=no; __host-moat-session=no; __Host-moat-session",
        b"obs=\xe9t\xe9; __Host-moat-session=fourth",
    ]);
    let found: Vec<&str> = cookie_values(&h, SESSION_COOKIE).collect();
    assert_eq!(found, ["first", "second", "th=ird", "fourth"]);
    assert_eq!(cookie_values(&h, "b").collect::<Vec<_>>(), ["2"]);
    assert_eq!(cookie_values(&h, "missing").count(), 0);
    assert_eq!(cookie_values(&HeaderMap::new(), SESSION_COOKIE).count(), 0);
}

#[test]
fn strip_cookies_removes_only_the_named_cookies() {
    let names = [SESSION_COOKIE, "__Host-moat-login"];
    let mut h = cookie_headers(&[
        b"a=1; __Host-moat-session=s1; b=2",
        b"__Host-moat-session=s2",
        b"__Host-moat-session2=keep;  c = 3 ;;__Host-moat-login=l; d=x=y=z",
        b" __Host-moat-session=s3 ; ; __Host-moat-login=l2;",
        b"e=5;f=6",
        b"__Host-moat-session",
        b"obs=\xe9t\xe9; __Host-moat-session=s4",
        b"__host-moat-session=other-case; x__Host-moat-session=y",
    ]);
    strip_cookies(&mut h, &names);
    assert_eq!(
        cookies_of(&h),
        [
            &b"a=1; b=2"[..],
            b"__Host-moat-session2=keep; c = 3; d=x=y=z",
            b"e=5;f=6",
            b"obs=\xe9t\xe9",
            b"__host-moat-session=other-case; x__Host-moat-session=y",
        ]
    );
    assert_eq!(h.get("x-other").unwrap(), "1");
    assert_eq!(cookie_values(&h, SESSION_COOKIE).count(), 0);
    assert_eq!(cookie_values(&h, "__Host-moat-login").count(), 0);
}

#[test]
fn strip_cookies_drops_emptied_headers_and_leaves_others_alone() {
    let mut h = cookie_headers(&[b"__Host-moat-session=s", b"; ;"]);
    strip_cookies(&mut h, &[SESSION_COOKIE]);
    // The header with none of ours is left exactly as it was.
    assert_eq!(cookies_of(&h), [&b"; ;"[..]]);

    let mut h = cookie_headers(&[b"__Host-moat-session=s; ; __Host-moat-session=t"]);
    strip_cookies(&mut h, &[SESSION_COOKIE]);
    assert!(h.get(COOKIE).is_none());
    assert_eq!(h.len(), 1);

    let untouched: &[&[u8]] = &[b"a=1;  b=2 ;", b"c=3"];
    let mut h = cookie_headers(untouched);
    strip_cookies(&mut h, &[SESSION_COOKIE]);
    assert_eq!(cookies_of(&h), untouched);

    let mut h = HeaderMap::new();
    strip_cookies(&mut h, &[SESSION_COOKIE]);
    assert!(h.is_empty());
}

/// One valid cookie, sealed with `K1`.
fn valid_cookie() -> &'static str {
    static COOKIE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COOKIE.get_or_init(|| SessionKeys::new(K1, None).seal(&claims()))
}

/// Random mutations of a valid cookie: changed bytes, cuts, insertions.
fn mutated_cookie() -> impl Strategy<Value = String> {
    let value = valid_cookie();
    let len = value.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 0..4),
        0..=len,
        prop::collection::vec(any::<char>(), 0..3),
        0..=len,
    )
        .prop_map(move |(flips, cut, insert, at)| {
            let mut b = value.as_bytes().to_vec();
            for (i, x) in flips {
                b[i] = if x.is_ascii() { x } else { b'A' + x % 26 };
            }
            b.truncate(cut.max(1));
            let mut s = String::from_utf8(b).unwrap();
            let at = at.min(s.len());
            s.insert_str(at, &insert.into_iter().collect::<String>());
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn open_never_panics_on_any_string(s in any::<String>()) {
        let keys = SessionKeys::new(K1, Some(K2));
        prop_assert_eq!(keys.open(&s), Err(CookieError::Invalid));
        prop_assert!(!keys.check_csrf("b", &s));
    }

    #[test]
    fn open_never_panics_on_cookie_like_strings(s in "[A-Za-z0-9_=-]{0,600}") {
        let keys = SessionKeys::new(K1, Some(K2));
        prop_assert_eq!(keys.open(&s), Err(CookieError::Invalid));
    }

    #[test]
    fn a_mutated_cookie_is_refused_unless_unchanged(s in mutated_cookie()) {
        let keys = SessionKeys::new(K1, Some(K2));
        // Base64 is decoded strictly (no padding, no stray bits), so only
        // the cookie itself opens.
        match keys.open(&s) {
            Ok(c) => {
                prop_assert_eq!(s.as_str(), valid_cookie());
                prop_assert_eq!(c, claims());
            }
            Err(e) => prop_assert_eq!(e, CookieError::Invalid),
        }
    }

    #[test]
    fn any_claims_round_trip(
        user in "\\PC{0,40}",
        issued_at in any::<u64>(),
        last_seen in any::<u64>(),
        generation in any::<u64>(),
    ) {
        let keys = SessionKeys::new(K1, None);
        let c = SessionClaims { user, issued_at, last_seen, generation };
        prop_assert_eq!(keys.open(&keys.seal(&c)), Ok(c));
    }
}
