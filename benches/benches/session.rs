//! The per-request session check of an `access = "mfa"` service (issue 11):
//! opening a sealed session cookie, and the whole check as the proxy does
//! it (`proxy/http/portal.rs`, `authenticate` and `check_claims`): find the
//! cookie in a browser's `Cookie` header, open it, check the absolute and
//! idle timeouts, look the user up among 1,000, compare the session
//! generation in the identity store, and see whether the service admits
//! the user. Target: ≤ 2 µs.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use moat::auth::session::{self, SessionClaims, SESSION_COOKIE};
use moat::auth::{MfaRule, SessionKeys, User, UserDirectory};
use moat::runtime::{Clock, IdentityStore, MemoryStore};

const USERS: usize = 1_000;
/// What `[auth]` defaults to: 15 min idle, 12 h absolute.
const IDLE: u64 = 15 * 60;
const ABSOLUTE: u64 = 12 * 3600;
/// `portal::REFRESH_AFTER`: a cookie older than this is re-sealed.
const REFRESH_AFTER: u64 = 60;

fn user(i: usize) -> Arc<User> {
    Arc::new(User {
        name: Arc::from(format!("user{i:04}@icu.example").as_str()),
        // Never verified here: the check does not touch the hash.
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA$".to_string(),
        totp_secret: vec![7; 20],
        groups: vec![Arc::from(["biomed", "nursing"][i & 1])],
        disabled: false,
        stamp: Default::default(),
    })
}

/// What the proxy does per request on an `mfa` service (phase 5), minus
/// the audit and metrics bookkeeping it does only on failure.
fn check(
    headers: &HeaderMap,
    keys: &SessionKeys,
    users: &UserDirectory,
    store: &dyn IdentityStore,
    rule: &MfaRule,
    clock: &Clock,
) -> Option<(Arc<User>, SessionClaims, bool)> {
    let now = clock.now();
    for value in session::cookie_values(headers, SESSION_COOKIE) {
        let Ok(claims) = keys.open(value) else {
            continue;
        };
        if now.saturating_sub(claims.issued_at) >= ABSOLUTE
            || now.saturating_sub(claims.last_seen) >= IDLE
        {
            continue;
        }
        let Some(user) = users.get(&claims.user) else {
            continue;
        };
        if store.session_generation(&claims.user) != claims.generation {
            continue;
        }
        // Phase 6 (`controls::authorize`): the service's users/groups.
        if !rule.admits(user) {
            return None;
        }
        let refresh_due = now.saturating_sub(claims.last_seen) >= REFRESH_AFTER;
        return Some((user.clone(), claims, refresh_due));
    }
    None
}

fn benches(c: &mut Criterion) {
    let keys = SessionKeys::new([0x42; 32], Some([0x24; 32]));
    let users = UserDirectory {
        users: (0..USERS)
            .map(user)
            .map(|u| (u.name.clone(), u))
            .collect::<BTreeMap<_, _>>(),
    };
    let me = users.get("user0500@icu.example").unwrap().clone();
    // Every tenth user logged out once: the store has entries to search.
    let store = MemoryStore::new();
    for i in (0..USERS).step_by(10) {
        store.end_sessions(&users.users.values().nth(i).unwrap().name);
    }
    store.end_sessions(&me.name);
    let clock = Clock::system();
    let now = clock.now();
    let claims = SessionClaims {
        user: me.name.to_string(),
        issued_at: now - 3600,
        last_seen: now, // fresh: no re-seal due for a minute
        generation: store.session_generation(&me.name),
    };
    let cookie = keys.seal(&claims);
    assert_eq!(keys.open(&cookie).unwrap(), claims);
    let rule = MfaRule {
        users: vec![Arc::from("someone-else")],
        groups: vec![Arc::from("biomed")],
        user_header: None,
        anyone: false,
    };

    // A browser's Cookie header for the device's host: five cookies of the
    // device's own web UI and analytics, moat's last (the worst case for
    // the scan; the values are all split out anyway).
    let header = format!(
        "_ga=GA1.2.1234567890.1700000000; JSESSIONID=0A1B2C3D4E5F60718293A4B5C6D7E8F9; \
         lang=en-GB; theme=dark; _gid=GA1.2.987654321.1700000000; {SESSION_COOKIE}={cookie}"
    );
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "pump.icu.example"),
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-GB,en;q=0.9"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    headers.insert(COOKIE, HeaderValue::from_str(&header).unwrap());
    println!(
        "cookie value {} bytes, Cookie header {} bytes",
        cookie.len(),
        header.len()
    );

    c.bench_function("session_open", |b| {
        b.iter(|| black_box(keys.open(black_box(&cookie)).unwrap()))
    });

    c.bench_function("session_check_full_1000_users", |b| {
        b.iter(|| {
            let got = check(black_box(&headers), &keys, &users, &store, &rule, &clock);
            let (user, _, refresh) = got.unwrap();
            assert!(!refresh);
            black_box(user);
        })
    });

    // Parts of it, to see where the time goes.
    c.bench_function("session_cookie_find", |b| {
        b.iter(|| {
            black_box(
                session::cookie_values(black_box(&headers), SESSION_COOKIE)
                    .next()
                    .unwrap(),
            )
        })
    });
    c.bench_function("session_user_lookup_1000_users", |b| {
        b.iter(|| black_box(users.get(black_box(&claims.user)).unwrap()))
    });
    c.bench_function("session_generation_lookup", |b| {
        let store: &dyn IdentityStore = &store;
        b.iter(|| black_box(store.session_generation(black_box(&claims.user))))
    });
    c.bench_function("clock_now", |b| b.iter(|| black_box(clock.now())));

    // Once a minute per session: the refreshed cookie (seal + Set-Cookie).
    c.bench_function("session_seal_refresh", |b| {
        b.iter(|| black_box(session::set_cookie(&keys.seal(black_box(&claims)), None)))
    });

    // On every proxied request of every L7 service (network ones too):
    // moat's cookies are taken out of the header before the device.
    c.bench_function("strip_moat_cookies", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| session::strip_cookies(h, &[SESSION_COOKIE, "__Host-moat-csrf"]),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(session_benches, benches);
criterion_main!(session_benches);
