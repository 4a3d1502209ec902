//! One login attempt, start to finish: the per-source login rate, the
//! lockouts, the password (argon2 off the async workers, behind a small
//! cap), the TOTP code and its replay check. Every outcome has a typed
//! [`AuthFailure`] for the audit trail; the person only ever reads
//! "wrong username, password or code".
//!
//! Order, and why:
//! 1. the login rate per source address: refused before any hash work;
//! 2. a locked source address: refused, no hash work either;
//! 3. the password, against the user's hash or, for an unknown name, a
//!    dummy hash of the same cost: both paths do the same work;
//! 4. a locked user: refused after the hash, so it answers like a wrong
//!    password in content and in time;
//! 5. the code, then its (user, step) claimed once in the store;
//! 6. disabled, then not admitted by this service.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::RateLimiter;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{AuthPolicy, MfaRule, User};
use crate::controls::rate::RateSpec;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::runtime::store::{FailureOutcome, IdentityStore, LockKey};

/// Why a login failed: written to the audit trail (`auth_failed`), never
/// shown to the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailure {
    /// No such user (the same hash work was done).
    UnknownUser,
    BadPassword,
    BadCode,
    /// A code that was already used for this user and step.
    ReplayedCode,
    /// The user or the source address is locked out after failures.
    LockedOut,
    Disabled,
    /// Right credentials, but this service does not admit the user.
    NotAuthorized,
    /// Too many attempts from this source: refused before any hash work.
    RateLimited,
    /// The form's CSRF token was missing or wrong, or it came from
    /// another origin.
    BadCsrf,
    /// Every password-hash slot stayed busy (a login flood elsewhere).
    Busy,
    /// Break-glass: no unused code of this user matches.
    BadBreakGlassCode,
    /// Break-glass: the code was used before.
    UsedBreakGlassCode,
    /// Break-glass: the codes file could not be read or rewritten (the
    /// code is not accepted; the operational log says why).
    BreakGlassUnavailable,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadPassword => "bad_password",
            AuthFailure::BadCode => "bad_code",
            AuthFailure::ReplayedCode => "replayed_code",
            AuthFailure::LockedOut => "locked_out",
            AuthFailure::Disabled => "disabled",
            AuthFailure::NotAuthorized => "not_authorized",
            AuthFailure::RateLimited => "rate_limited",
            AuthFailure::BadCsrf => "bad_csrf",
            AuthFailure::Busy => "busy",
            AuthFailure::BadBreakGlassCode => "bad_break_glass_code",
            AuthFailure::UsedBreakGlassCode => "used_break_glass_code",
            AuthFailure::BreakGlassUnavailable => "break_glass_unavailable",
        }
    }

    /// Failures that count towards a lockout: guesses, not refusals.
    fn is_guess(self) -> bool {
        matches!(
            self,
            AuthFailure::UnknownUser
                | AuthFailure::BadPassword
                | AuthFailure::BadCode
                | AuthFailure::ReplayedCode
                | AuthFailure::BadBreakGlassCode
                | AuthFailure::UsedBreakGlassCode
        )
    }
}

/// A dummy hash and the costs (`m=…,t=…,p=…`) it was made with.
type Dummy = (String, Arc<str>);

type LoginLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// What login needs that outlives a policy: the hash-worker cap, the dummy
/// hash for unknown users, the per-source login limiter.
pub struct AuthRuntime {
    hashing: Arc<Semaphore>,
    /// The threads that compute password hashes, one per slot.
    workers: HashWorkers,
    /// The dummy hash for unknown users, with the costs it was made for:
    /// made on first use, on the blocking pool, and again when the users
    /// file's hashes change costs.
    dummy: Arc<Mutex<Option<Dummy>>>,
    limiter: Mutex<Option<(RateSpec, Arc<LoginLimiter>)>>,
}

/// How long a login may wait for a password-hash slot before it is
/// refused as busy.
const HASH_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

impl AuthRuntime {
    pub fn new(policy: &Policy) -> AuthRuntime {
        let cap = policy.auth.as_ref().map_or(2, |a| a.max_concurrent_hashes) as usize;
        AuthRuntime {
            hashing: Arc::new(Semaphore::new(cap)),
            workers: HashWorkers::start(cap),
            dummy: Arc::default(),
            limiter: Mutex::new(None),
        }
    }

    /// The login limiter for `spec`, kept while the spec is unchanged.
    fn limiter(&self, spec: &RateSpec) -> Arc<LoginLimiter> {
        let mut slot = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        match &*slot {
            Some((s, l)) if s == spec => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::keyed(spec.quota()));
                *slot = Some((spec.clone(), l.clone()));
                l
            }
        }
    }

    pub fn collect_garbage(&self) {
        let slot = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, l)) = &*slot {
            l.retain_recent();
        }
    }
}

/// A login form, as submitted.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub code: &'a str,
}

/// A break-glass form: the password and a sealed one-time code, for a
/// service that takes them.
pub struct BreakGlassCredentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub code: &'a str,
    /// `[auth] break_glass_file`.
    pub file: &'a std::path::Path,
}

/// The second factor checked after the password.
enum SecondFactor<'a> {
    Totp(&'a str),
    BreakGlass {
        code: &'a str,
        file: &'a std::path::Path,
    },
}

/// What a failed login leaves for the audit trail.
#[derive(Debug)]
pub struct Failed {
    pub reason: AuthFailure,
    /// The user, when the name given is one.
    pub user: Option<Arc<str>>,
    /// Locks this failure set off: ("user" | "source", failures, until).
    pub locked: Vec<(&'static str, u32, u64)>,
}

/// Everything a login attempt needs from the running gateway.
pub struct LoginContext<'a> {
    pub auth: &'a AuthPolicy,
    pub runtime: &'a AuthRuntime,
    pub store: &'a dyn IdentityStore,
    pub metrics: &'a Metrics,
    pub now: u64,
    pub client: IpAddr,
}

/// One login attempt against `rule` (the service's `users`/`groups`).
pub async fn attempt(
    cx: &LoginContext<'_>,
    rule: &MfaRule,
    creds: &Credentials<'_>,
) -> Result<Arc<User>, Failed> {
    let second = SecondFactor::Totp(creds.code);
    attempt_with(cx, rule, creds.username, creds.password, second)
        .await
        .map(|(user, _)| user)
}

/// A break-glass attempt against `rule` (the service the grant is for):
/// the same rate limit, lockouts and password check as a login, then the
/// code, which is used up if it matches. Returns the user and the code's
/// public id.
pub async fn attempt_break_glass(
    cx: &LoginContext<'_>,
    rule: &MfaRule,
    creds: &BreakGlassCredentials<'_>,
) -> Result<(Arc<User>, String), Failed> {
    let second = SecondFactor::BreakGlass {
        code: creds.code,
        file: creds.file,
    };
    let (user, id) = attempt_with(cx, rule, creds.username, creds.password, second).await?;
    Ok((user, id.expect("a break-glass attempt names its code")))
}

async fn attempt_with(
    cx: &LoginContext<'_>,
    rule: &MfaRule,
    username: &str,
    password: &str,
    second: SecondFactor<'_>,
) -> Result<(Arc<User>, Option<String>), Failed> {
    let fail = |reason, user: Option<&Arc<User>>| Failed {
        reason,
        user: user.map(|u| u.name.clone()),
        locked: Vec::new(),
    };
    if cx
        .runtime
        .limiter(&cx.auth.login_rate)
        .check_key(&crate::controls::rate::client_key(cx.client))
        .is_err()
    {
        return Err(fail(AuthFailure::RateLimited, None));
    }
    let source = LockKey::source(cx.client);
    let user = cx.auth.users.get(username).cloned();
    if cx.store.locked_until(&source, cx.now).is_some() {
        return Err(fail(AuthFailure::LockedOut, user.as_ref()));
    }

    let hash = match &user {
        Some(u) => Hashed::User(Arc::from(u.password_hash.as_str())),
        // The same cost as a real hash, for unknown users: a dummy made
        // with the costs of the users file's (first) hash.
        None => Hashed::Dummy {
            like: cx
                .auth
                .users
                .users
                .values()
                .next()
                .map(|u| Arc::from(u.password_hash.as_str())),
        },
    };
    let password_ok = match verify_off_workers(cx, hash, password).await {
        Some(ok) => ok,
        None => return Err(fail(AuthFailure::Busy, user.as_ref())),
    };

    let outcome = match second {
        SecondFactor::Totp(code) => {
            check_after_hash(cx, rule, user.as_ref(), password_ok, code).map(|()| None)
        }
        SecondFactor::BreakGlass { code, file } => {
            match check_before_code(cx, rule, user.as_ref(), password_ok) {
                Err(reason) => Err(reason),
                Ok(u) => redeem_off_workers(cx, file, &u.name, code).await.map(Some),
            }
        }
    };
    match outcome {
        Ok(code_id) => {
            let user = user.expect("a login succeeds only for a known user");
            cx.store.clear_failures(&LockKey::User(user.name.clone()));
            Ok((user, code_id))
        }
        Err(reason) => {
            let mut failed = fail(reason, user.as_ref());
            if reason.is_guess() {
                let mut keys = vec![("source", source)];
                if let Some(u) = &user {
                    keys.push(("user", LockKey::User(u.name.clone())));
                }
                for (kind, key) in keys {
                    if let FailureOutcome::LockedNow(until) =
                        cx.store.record_failure(&key, cx.now, &cx.auth.lockout)
                    {
                        failed.locked.push((kind, cx.auth.lockout.failures, until));
                    }
                }
            }
            Err(failed)
        }
    }
}

/// The user exists, is not locked out, and gave the right password.
fn known_unlocked_with_password<'u>(
    cx: &LoginContext<'_>,
    user: Option<&'u Arc<User>>,
    password_ok: bool,
) -> Result<&'u Arc<User>, AuthFailure> {
    let user = user.ok_or(AuthFailure::UnknownUser)?;
    if cx
        .store
        .locked_until(&LockKey::User(user.name.clone()), cx.now)
        .is_some()
    {
        return Err(AuthFailure::LockedOut);
    }
    if !password_ok {
        return Err(AuthFailure::BadPassword);
    }
    Ok(user)
}

/// Steps 4 to 6 of the module comment, once the password was checked.
fn check_after_hash(
    cx: &LoginContext<'_>,
    rule: &MfaRule,
    user: Option<&Arc<User>>,
    password_ok: bool,
    code: &str,
) -> Result<(), AuthFailure> {
    let user = known_unlocked_with_password(cx, user, password_ok)?;
    let step = super::totp::matching_step(&user.totp_secret, code, cx.now, cx.auth.totp_skew)
        .ok_or(AuthFailure::BadCode)?;
    if !cx.store.claim_totp_step(&user.name, step, cx.now) {
        return Err(AuthFailure::ReplayedCode);
    }
    if user.disabled {
        return Err(AuthFailure::Disabled);
    }
    if !rule.admits(user) {
        return Err(AuthFailure::NotAuthorized);
    }
    Ok(())
}

/// Break-glass, once the password was checked: everything but the code,
/// so that a code is never used up by an attempt that fails anyway.
fn check_before_code<'u>(
    cx: &LoginContext<'_>,
    rule: &MfaRule,
    user: Option<&'u Arc<User>>,
    password_ok: bool,
) -> Result<&'u Arc<User>, AuthFailure> {
    let user = known_unlocked_with_password(cx, user, password_ok)?;
    if user.disabled {
        return Err(AuthFailure::Disabled);
    }
    if !rule.admits(user) {
        return Err(AuthFailure::NotAuthorized);
    }
    Ok(user)
}

/// Checks and uses up a break-glass code on a hash worker (argon2 and
/// file I/O), under the same cap as password hashes.
async fn redeem_off_workers(
    cx: &LoginContext<'_>,
    file: &std::path::Path,
    user: &str,
    code: &str,
) -> Result<String, AuthFailure> {
    let (file, user, code, now) = (
        file.to_path_buf(),
        user.to_string(),
        code.to_string(),
        cx.now,
    );
    let redeemed = off_workers(cx, move |_| {
        super::breakglass::redeem(&file, &user, &code, now)
    })
    .await
    .ok_or(AuthFailure::Busy)?;
    redeemed.map_err(|e| match e {
        super::breakglass::RedeemError::NoSuchCode => AuthFailure::BadBreakGlassCode,
        super::breakglass::RedeemError::AlreadyUsed => AuthFailure::UsedBreakGlassCode,
        super::breakglass::RedeemError::File(msg) => {
            tracing::error!(error = %msg, "break-glass codes file");
            AuthFailure::BreakGlassUnavailable
        }
    })
}

/// The dummy hash for the costs of `like`, made (on this blocking thread,
/// under the hash cap) when there is none for those costs yet.
fn dummy_for(cache: &Mutex<Option<Dummy>>, like: Option<&str>) -> Arc<str> {
    let costs = like.map(super::password::costs).unwrap_or("").to_string();
    if let Some((c, h)) = &*cache.lock().unwrap_or_else(PoisonError::into_inner) {
        if *c == costs {
            return h.clone();
        }
    }
    let made: Arc<str> = Arc::from(super::password::dummy_like(like));
    *cache.lock().unwrap_or_else(PoisonError::into_inner) = Some((costs, made.clone()));
    made
}

/// What a password is checked against.
enum Hashed {
    User(Arc<str>),
    /// No such user: a dummy hash with the costs of `like`.
    Dummy {
        like: Option<Arc<str>>,
    },
}

/// Verifies a password on a hash worker, at most
/// `max_concurrent_hashes` at once; `None` if no slot came free in time.
async fn verify_off_workers(cx: &LoginContext<'_>, hash: Hashed, password: &str) -> Option<bool> {
    let password = password.to_string();
    off_workers(cx, move |dummies| {
        let phc = match hash {
            Hashed::User(phc) => phc,
            Hashed::Dummy { like } => dummy_for(dummies, like.as_deref()),
        };
        super::password::verify(&phc, &password)
    })
    .await
}

/// Runs `job` (argon2 work) on a hash worker under the hash cap; `None`
/// if no slot came free in time or the job was lost.
async fn off_workers<T: Send + 'static>(
    cx: &LoginContext<'_>,
    job: impl FnOnce(&Mutex<Option<Dummy>>) -> T + Send + 'static,
) -> Option<T> {
    let waiting = &cx.metrics.password_hash_waiting;
    waiting.inc();
    let permit = tokio::time::timeout(
        HASH_QUEUE_TIMEOUT,
        cx.runtime.hashing.clone().acquire_owned(),
    )
    .await;
    waiting.dec();
    let permit = permit.ok()?.ok()?;
    let running = cx.metrics.password_hashes.clone();
    let dummies = cx.runtime.dummy.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    cx.runtime.workers.run(Box::new(move || {
        running.inc();
        let out = job(&dummies);
        running.dec();
        drop(permit);
        let _ = tx.send(out);
    }));
    rx.await.ok()
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Password hashes run on threads of their own, one per hash slot, at the
/// lowest CPU priority (nice 19): a login flood then takes the CPU only
/// when proxied traffic leaves it idle, instead of a share equal to the
/// proxy's (docs/benchmarks.md, "MFA"). Not tokio's blocking pool, whose
/// threads serve other work too and could not be given their priority
/// back.
struct HashWorkers {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl HashWorkers {
    fn start(threads: usize) -> HashWorkers {
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("moat-hash-{i}"))
                .spawn(move || {
                    lowest_priority();
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the runtime is gone
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hash thread");
            }
        }
        HashWorkers { jobs }
    }

    fn run(&self, job: HashJob) {
        // A send fails only when no worker thread could start: the job is
        // dropped, and its login fails (its answer channel closes).
        let _ = self.jobs.send(job);
    }
}

/// Nice 19 for the calling thread (Linux: `setpriority` on a thread id
/// applies to that thread only).
fn lowest_priority() {
    // SAFETY: plain system calls on the current thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

#[cfg(test)]
mod tests;
