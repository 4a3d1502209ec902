//! One login attempt against the in-memory store, on explicit times.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use totp_rs::{Algorithm, TOTP};

use super::*;
use crate::auth::{SessionKeys, UserDirectory};
use crate::runtime::store::{LockoutRule, MemoryStore};

const T0: u64 = 2_000_000_010;
const SECRET: &[u8] = b"12345678901234567890";

fn code_at(now: u64) -> String {
    TOTP::new_unchecked(
        Algorithm::SHA1,
        6,
        1,
        30,
        SECRET.to_vec(),
        None,
        String::new(),
    )
    .generate(now)
}

struct Fixture {
    auth: AuthPolicy,
    runtime: AuthRuntime,
    store: MemoryStore,
    metrics: Metrics,
}

fn user(name: &str, groups: &[&str], disabled: bool) -> (Arc<str>, Arc<User>) {
    let u = User {
        name: name.into(),
        password_hash: crate::auth::password::hash("correct horse"),
        totp_secret: SECRET.to_vec(),
        groups: groups.iter().map(|g| Arc::from(*g)).collect(),
        disabled,
        stamp: Default::default(),
    };
    (u.name.clone(), Arc::new(u))
}

fn fixture(login_rate: &str, hashes: u32) -> Fixture {
    let users: BTreeMap<_, _> = [
        user("alice", &["biomed"], false),
        user("carol", &["biomed"], true),
        user("eve", &["radiology"], false),
    ]
    .into_iter()
    .collect();
    let auth = AuthPolicy {
        users: Arc::new(UserDirectory { users }),
        keys: SessionKeys::new([7; 32], None),
        idle_timeout: Duration::from_secs(900),
        absolute_timeout: Duration::from_secs(12 * 3600),
        totp_skew: 1,
        lockout: LockoutRule::default(),
        login_rate: RateSpec::parse(login_rate).unwrap(),
        max_concurrent_hashes: hashes,
        break_glass_file: None,
    };
    Fixture {
        runtime: AuthRuntime {
            hashing: Arc::new(Semaphore::new(hashes as usize)),
            workers: HashWorkers::start(hashes as usize),
            dummy: Arc::default(),
            limiter: Mutex::new(None),
        },
        auth,
        store: MemoryStore::new(),
        metrics: Metrics::new(),
    }
}

impl Fixture {
    async fn try_login(
        &self,
        now: u64,
        from: &str,
        user: &str,
        password: &str,
        code: &str,
    ) -> Result<Arc<User>, Failed> {
        let cx = LoginContext {
            auth: &self.auth,
            runtime: &self.runtime,
            store: &self.store,
            metrics: &self.metrics,
            now,
            client: from.parse().unwrap(),
        };
        let rule = MfaRule {
            users: vec![],
            groups: vec!["biomed".into()],
            user_header: None,
            anyone: false,
        };
        let creds = Credentials {
            username: user,
            password,
            code,
        };
        attempt(&cx, &rule, &creds).await
    }
}

fn reason<T: std::fmt::Debug>(r: Result<T, Failed>) -> AuthFailure {
    r.unwrap_err().reason
}

#[tokio::test]
async fn password_and_code_sign_in_and_a_code_is_used_once() {
    let f = fixture("100/s", 2);
    let code = code_at(T0);
    let user = f
        .try_login(T0, "10.0.0.1", "alice", "correct horse", &code)
        .await
        .unwrap();
    assert_eq!(&*user.name, "alice");
    // The same code again, even from elsewhere, within its step: refused.
    assert_eq!(
        reason(
            f.try_login(T0 + 5, "10.0.0.2", "alice", "correct horse", &code)
                .await
        ),
        AuthFailure::ReplayedCode
    );
    // The previous step's code is inside the skew window and unused: fine.
    let previous = code_at(T0 - 30);
    assert!(f
        .try_login(T0, "10.0.0.1", "alice", "correct horse", &previous)
        .await
        .is_ok());
    // Two steps back is outside a skew of one.
    assert_eq!(
        reason(
            f.try_login(T0, "10.0.0.1", "alice", "correct horse", &code_at(T0 - 60))
                .await
        ),
        AuthFailure::BadCode
    );
}

#[tokio::test]
async fn every_failure_has_its_own_reason_for_the_audit_trail() {
    let f = fixture("100/s", 2);
    let code = code_at(T0);
    let at = |dt| T0 + dt;
    assert_eq!(
        reason(
            f.try_login(at(0), "10.0.0.1", "alice", "wrong", &code)
                .await
        ),
        AuthFailure::BadPassword
    );
    assert_eq!(
        reason(
            f.try_login(at(0), "10.0.0.1", "alice", "correct horse", "000000")
                .await
        ),
        AuthFailure::BadCode
    );
    let unknown = f
        .try_login(at(0), "10.0.0.1", "mallory", "correct horse", &code)
        .await;
    let unknown = unknown.unwrap_err();
    assert_eq!(unknown.reason, AuthFailure::UnknownUser);
    // A name that is not a user never reaches the audit trail.
    assert_eq!(unknown.user, None);
    assert_eq!(
        reason(
            f.try_login(
                at(31),
                "10.0.0.1",
                "carol",
                "correct horse",
                &code_at(at(31))
            )
            .await
        ),
        AuthFailure::Disabled
    );
    assert_eq!(
        reason(
            f.try_login(at(31), "10.0.0.1", "eve", "correct horse", &code_at(at(31)))
                .await
        ),
        AuthFailure::NotAuthorized
    );
}

#[tokio::test]
async fn five_failures_lock_the_user_and_the_source_and_the_lock_ends() {
    let f = fixture("100/s", 2);
    for i in 0..4 {
        let failed = f
            .try_login(T0 + i, "10.0.0.1", "alice", "wrong", "123456")
            .await
            .unwrap_err();
        assert!(failed.locked.is_empty());
    }
    let fifth = f
        .try_login(T0 + 4, "10.0.0.1", "alice", "wrong", "123456")
        .await
        .unwrap_err();
    let kinds: Vec<&str> = fifth.locked.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(kinds, ["source", "user"]);
    assert_eq!(fifth.locked[1].2, T0 + 4 + 15 * 60);
    // Locked: the right password and code, from another address, answer
    // like a wrong password (the audit trail says locked_out).
    let now = T0 + 60;
    assert_eq!(
        reason(
            f.try_login(now, "10.0.0.9", "alice", "correct horse", &code_at(now))
                .await
        ),
        AuthFailure::LockedOut
    );
    // The locked source cannot try anyone.
    assert_eq!(
        reason(
            f.try_login(now, "10.0.0.1", "eve", "correct horse", &code_at(now))
                .await
        ),
        AuthFailure::LockedOut
    );
    // Fifteen minutes later both locks are over.
    let later = T0 + 4 + 15 * 60;
    assert!(f
        .try_login(later, "10.0.0.1", "alice", "correct horse", &code_at(later))
        .await
        .is_ok());
}

#[tokio::test]
async fn the_login_rate_refuses_before_any_hash_work() {
    let f = fixture("2/min", 2);
    for _ in 0..2 {
        assert_eq!(
            reason(
                f.try_login(T0, "10.0.0.1", "alice", "wrong", "123456")
                    .await
            ),
            AuthFailure::BadPassword
        );
    }
    // Hold every hash slot: a refusal that needed one would wait (Busy).
    let _all = f
        .runtime
        .hashing
        .clone()
        .acquire_many_owned(2)
        .await
        .unwrap();
    assert_eq!(
        reason(
            f.try_login(T0, "10.0.0.1", "alice", "wrong", "123456")
                .await
        ),
        AuthFailure::RateLimited
    );
    // Another source still has its own allowance.
    drop(_all);
    assert_eq!(
        reason(
            f.try_login(T0, "10.0.0.2", "alice", "wrong", "123456")
                .await
        ),
        AuthFailure::BadPassword
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_user_waits_for_a_hash_slot_like_a_known_one() {
    let f = fixture("100/s", 1);
    let _only = f.runtime.hashing.clone().acquire_owned().await.unwrap();
    // Both paths need the hash slot: with none free, both give up as busy
    // after the queue timeout, having done (or waited for) the same work.
    for user in ["alice", "mallory"] {
        assert_eq!(
            reason(f.try_login(T0, "10.0.0.1", user, "wrong", "123456").await),
            AuthFailure::Busy,
            "{user}"
        );
    }
}
