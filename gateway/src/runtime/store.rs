//! Identity state that outlives a policy: each user's session generation,
//! login failures and lockouts, and the TOTP steps already used.
//!
//! One interface, [`IdentityStore`], so that a store shared by several
//! moat instances (issue: "several instances sharing state") can replace
//! the in-memory one without touching the data planes. The store has its
//! own change signal, apart from the policy's: a logout or a revocation
//! moves [`IdentityStore::changes`], and every live connection re-checks
//! what it was admitted with, exactly as on a policy reload.
//!
//! Times are Unix seconds from [`super::Clock`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::watch;

use crate::auth::grants::{Grant, GrantBinding, GrantEnd, GrantId, GrantIndex, GrantLookup};

/// What failed logins are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    User(Arc<str>),
    /// A client address (IPv6: its /64, as the rate limits key it).
    Source(IpAddr),
}

impl LockKey {
    pub fn source(ip: IpAddr) -> LockKey {
        LockKey::Source(crate::controls::rate::client_key(ip))
    }
}

/// When failures lock a key: `failures` within `window` lock it for
/// `duration` (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRule {
    pub failures: u32,
    pub window: u64,
    pub duration: u64,
}

impl Default for LockoutRule {
    fn default() -> Self {
        LockoutRule {
            failures: 5,
            window: 5 * 60,
            duration: 15 * 60,
        }
    }
}

/// What one more failure did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted: this many failures within the window so far.
    Counted(u32),
    /// This failure locked the key, until the given time.
    LockedNow(u64),
}

/// Why a grant could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRefused {
    /// The user holds as many open grants as one person may.
    TooManyGrants(usize),
}

/// Open grants one user may hold at once.
pub const MAX_GRANTS_PER_USER: usize = 32;

pub trait IdentityStore: GrantLookup + Send + Sync {
    /// Moves on with every change that can end someone's access (their
    /// sessions ended). Live connections re-check when it moves.
    fn changes(&self) -> watch::Receiver<u64>;

    /// The generation a session of `user` must carry to be valid.
    fn session_generation(&self, user: &str) -> u64;

    /// Ends every session of `user` (logout, revocation): moves their
    /// generation on and signals the change. Returns the new generation.
    fn end_sessions(&self, user: &str) -> u64;

    /// Claims time step `step` for `user`'s TOTP; `false` if that step was
    /// already used (a replayed code). `now` lets old claims be forgotten.
    fn claim_totp_step(&self, user: &str, step: u64, now: u64) -> bool;

    /// Records a failed login against `key`.
    fn record_failure(&self, key: &LockKey, now: u64, rule: &LockoutRule) -> FailureOutcome;

    /// Until when `key` is locked, if it is.
    fn locked_until(&self, key: &LockKey, now: u64) -> Option<u64>;

    /// A successful login clears the user's failures.
    fn clear_failures(&self, key: &LockKey);

    /// Forgets what can no longer matter at `now`.
    fn collect_garbage(&self, now: u64);

    /// Opens a grant (signals the change).
    fn open_grant(&self, grant: Grant) -> Result<(), GrantRefused>;

    /// Ends the grants `ends` picks, with the reason it gives, and
    /// signals the change if any ended; returns them. Expiry, revocation
    /// and the reconciliation after a reload all come through here.
    fn end_grants(
        &self,
        ends: &mut dyn FnMut(&Grant) -> Option<GrantEnd>,
    ) -> Vec<(Grant, GrantEnd)>;

    /// Every open grant (expired ones until they are ended).
    fn grants(&self) -> Vec<Grant>;
}

/// The in-memory store: lost on restart (docs/security.md says what that
/// means for logged-out sessions), shared by nothing but this process.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Apart from the rest: the accept path reads it, in parallel.
    grants: RwLock<GrantIndex>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    generations: HashMap<Arc<str>, u64>,
    /// Per user: the TOTP steps used recently, with when they were used.
    used_steps: HashMap<Arc<str>, Vec<(u64, u64)>>,
    failures: HashMap<LockKey, Failures>,
}

#[derive(Default)]
struct Failures {
    /// Times of the failures within the window.
    times: Vec<u64>,
    locked_until: Option<u64>,
}

/// A used step is remembered this long: longer than any skew window
/// (at most 2 steps of at most 5 minutes either side).
const USED_STEP_MEMORY: u64 = 30 * 60;

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            grants: RwLock::new(GrantIndex::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl GrantLookup for MemoryStore {
    #[inline]
    fn grant_for(
        &self,
        device: &str,
        service: &str,
        binding: &GrantBinding,
        now: u64,
    ) -> Option<GrantId> {
        self.grants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .grant_for(device, service, binding, now)
    }

    fn has_certificate_grants(&self, device: &str, service: &str, now: u64) -> bool {
        let _ = now; // expired ones are ended within a second
        self.grants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .has_certificate_grants(device, service)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl IdentityStore for MemoryStore {
    fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn session_generation(&self, user: &str) -> u64 {
        self.lock().generations.get(user).copied().unwrap_or(0)
    }

    fn end_sessions(&self, user: &str) -> u64 {
        let generation = {
            let mut inner = self.lock();
            let g = inner.generations.entry(Arc::from(user)).or_insert(0);
            *g += 1;
            *g
        };
        self.changed.send_modify(|v| *v += 1);
        generation
    }

    fn claim_totp_step(&self, user: &str, step: u64, now: u64) -> bool {
        let mut inner = self.lock();
        let used = inner.used_steps.entry(Arc::from(user)).or_default();
        used.retain(|&(_, at)| now.saturating_sub(at) < USED_STEP_MEMORY);
        if used.iter().any(|&(s, _)| s == step) {
            return false;
        }
        used.push((step, now));
        true
    }

    fn record_failure(&self, key: &LockKey, now: u64, rule: &LockoutRule) -> FailureOutcome {
        let mut inner = self.lock();
        let entry = inner.failures.entry(key.clone()).or_default();
        entry.times.retain(|&t| now.saturating_sub(t) < rule.window);
        entry.times.push(now);
        let count = entry.times.len() as u32;
        if count >= rule.failures && entry.locked_until.map_or(true, |until| until <= now) {
            let until = now + rule.duration;
            entry.locked_until = Some(until);
            entry.times.clear();
            return FailureOutcome::LockedNow(until);
        }
        FailureOutcome::Counted(count)
    }

    fn locked_until(&self, key: &LockKey, now: u64) -> Option<u64> {
        self.lock()
            .failures
            .get(key)
            .and_then(|f| f.locked_until)
            .filter(|&until| until > now)
    }

    fn clear_failures(&self, key: &LockKey) {
        self.lock().failures.remove(key);
    }

    fn collect_garbage(&self, now: u64) {
        let mut inner = self.lock();
        inner.used_steps.retain(|_, used| {
            used.iter()
                .any(|&(_, at)| now.saturating_sub(at) < USED_STEP_MEMORY)
        });
        // Failures older than the longest window that can be configured
        // (7 days, the longest duration) no longer count towards anything.
        inner.failures.retain(|_, f| {
            f.locked_until.is_some_and(|u| u > now)
                || f.times
                    .iter()
                    .any(|&t| now.saturating_sub(t) < 7 * 24 * 3600)
        });
    }

    fn open_grant(&self, grant: Grant) -> Result<(), GrantRefused> {
        {
            let mut grants = self.grants.write().unwrap_or_else(PoisonError::into_inner);
            let held = grants.iter().filter(|g| g.user == grant.user).count();
            if held >= MAX_GRANTS_PER_USER {
                return Err(GrantRefused::TooManyGrants(MAX_GRANTS_PER_USER));
            }
            grants.insert(grant);
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    fn end_grants(
        &self,
        ends: &mut dyn FnMut(&Grant) -> Option<GrantEnd>,
    ) -> Vec<(Grant, GrantEnd)> {
        let ended: Vec<(Grant, GrantEnd)> = {
            let mut grants = self.grants.write().unwrap_or_else(PoisonError::into_inner);
            let picked: Vec<(GrantId, GrantEnd)> = grants
                .iter()
                .filter_map(|g| ends(g).map(|why| (g.id, why)))
                .collect();
            picked
                .into_iter()
                .filter_map(|(id, why)| grants.remove(id).map(|g| (g, why)))
                .collect()
        };
        if !ended.is_empty() {
            self.changed.send_modify(|v| *v += 1);
        }
        ended
    }

    fn grants(&self) -> Vec<Grant> {
        let grants = self.grants.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<Grant> = grants.iter().cloned().collect();
        all.sort_by_key(|g| (g.opened_at, g.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_sessions_moves_the_generation_and_signals() {
        let store = MemoryStore::new();
        let mut changes = store.changes();
        assert_eq!(store.session_generation("alice"), 0);
        assert_eq!(store.end_sessions("alice"), 1);
        assert_eq!(store.session_generation("alice"), 1);
        assert_eq!(store.session_generation("bob"), 0);
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        assert!(!changes.has_changed().unwrap());
    }

    #[test]
    fn a_totp_step_is_claimed_once_per_user() {
        let store = MemoryStore::new();
        assert!(store.claim_totp_step("alice", 100, 3000));
        assert!(!store.claim_totp_step("alice", 100, 3010));
        assert!(store.claim_totp_step("bob", 100, 3010));
        assert!(store.claim_totp_step("alice", 101, 3030));
    }

    #[test]
    fn failures_within_the_window_lock_until_the_duration_ends() {
        let store = MemoryStore::new();
        let rule = LockoutRule::default();
        let key = LockKey::User("alice".into());
        for i in 1..5 {
            assert_eq!(
                store.record_failure(&key, 1000 + i, &rule),
                FailureOutcome::Counted(i as u32)
            );
        }
        assert_eq!(
            store.record_failure(&key, 1005, &rule),
            FailureOutcome::LockedNow(1005 + 900)
        );
        assert_eq!(store.locked_until(&key, 1006), Some(1905));
        assert_eq!(store.locked_until(&key, 1905), None);
        // Failures spread wider than the window never lock.
        let other = LockKey::source("10.0.0.1".parse().unwrap());
        for i in 0..10 {
            assert!(matches!(
                store.record_failure(&other, 10_000 + i * 301, &rule),
                FailureOutcome::Counted(1)
            ));
        }
        store.clear_failures(&key);
        assert_eq!(store.locked_until(&key, 1006), None);
    }
}
