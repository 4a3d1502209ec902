//! Multi-factor access for people: users (password + TOTP), moat's own
//! login portal, and stateless sessions. Machine traffic (`access =
//! "network"`) never comes here.
//!
//! - [`users`]: the users file (argon2id hashes, TOTP secrets, groups).
//! - [`password`]: argon2id hashing and verification, with a dummy hash so
//!   an unknown user costs the same work as a known one.
//! - [`totp`]: RFC 6238 codes, secrets, `otpauth://` URIs and QR codes.
//! - [`session`]: the authenticated-encrypted session cookie and its keys.
//! - [`portal`]: the pages under `/.moat/`, CSRF tokens, the `next` check.
//! - [`login`]: one login attempt, start to finish, with lockouts.
//! - [`grants`]: time-boxed grants that open a TCP service to one person.
//! - [`breakglass`]: sealed one-time emergency codes (`moat breakglass`).
//! - [`cli`]: `moat user …`.
//!
//! Nothing here logs a password, a code, a secret or a cookie.

pub mod breakglass;
pub mod cli;
pub mod grants;
pub mod login;
pub mod password;
pub mod portal;
pub mod session;
pub mod totp;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::controls::rate::RateSpec;
use crate::runtime::store::LockoutRule;
pub use login::AuthRuntime;
pub use session::SessionKeys;
pub use users::{User, UserDirectory};

/// `[auth]`, compiled: what every `mfa` service shares.
#[derive(Debug)]
pub struct AuthPolicy {
    pub users: Arc<UserDirectory>,
    pub keys: SessionKeys,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    /// TOTP steps accepted either side of now (0 to 2).
    pub totp_skew: u8,
    pub lockout: LockoutRule,
    /// Login attempts per source address, before any hash work.
    pub login_rate: RateSpec,
    /// Password hashes computed at once, at most.
    pub max_concurrent_hashes: u32,
    /// `break_glass_file`: the sealed emergency codes' hashes, read at
    /// each use (never compiled: moat marks codes used in it).
    pub break_glass_file: Option<std::path::PathBuf>,
}

/// Creates the session key file named by `[auth] session_key_file` of the
/// config at `config`, if it does not exist yet (mode 0600). Done by `moat
/// run` before the policy is compiled; `moat check` never writes.
pub fn create_missing_session_key(config: &std::path::Path) -> Result<(), String> {
    let Ok(loaded) = crate::config::load(config) else {
        return Ok(()); // the compile reports every error
    };
    let Some(auth) = &loaded.file.auth else {
        return Ok(());
    };
    let path = loaded.resolve(auth.session_key_file.get_ref());
    match session::create_key_file_if_missing(&path) {
        Ok(true) => {
            tracing::info!(file = %path.display(), "created a new session key (mode 0600)");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(format!("cannot create session key {}: {e}", path.display())),
    }
}

/// The generation a session of `user` must carry to be valid: the
/// store's count of ended sessions (what logout moves) in the low half,
/// and a stamp of the user's credentials in the high half, so that a new
/// password or TOTP secret (`moat user passwd`, `reset-totp`) ends every
/// session of the user too, on every gateway that shares the key, and
/// survives a restart.
pub fn session_generation(store: &dyn crate::runtime::IdentityStore, user: &User) -> u64 {
    (u64::from(user.credential_stamp()) << 32) | (store.session_generation(&user.name) & ENDED)
}

/// The low half of a session generation: the store's count of ended
/// sessions.
const ENDED: u64 = 0xffff_ffff;

/// Were the sessions of `user` ended in the store (a logout) since a
/// session with `generation` was found valid? The store's half alone:
/// for a check made again on the same request, whose credentials were
/// already judged, without hashing them a second time.
pub fn ended_since(store: &dyn crate::runtime::IdentityStore, user: &str, generation: u64) -> bool {
    store.session_generation(user) & ENDED != generation & ENDED
}

/// How a service decides who may use it, after the network controls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessMode {
    /// Today's behaviour, for machine traffic: the network and
    /// client-certificate controls alone.
    #[default]
    Network,
    /// A person must sign in with password and TOTP code (`http`
    /// services per request; a `portal`, to sign in at all).
    Mfa(MfaRule),
    /// A `tcp` service: a connection needs a live grant that a signed-in
    /// person opened for its address or its certificate's key.
    Grant(GrantRule),
}

impl AccessMode {
    /// A grant service that takes break-glass codes.
    pub fn takes_break_glass(&self) -> bool {
        matches!(
            self,
            AccessMode::Grant(GrantRule {
                break_glass: Some(_),
                ..
            })
        )
    }

    /// Who may use the service, for the services people sign in to.
    pub fn rule(&self) -> Option<&MfaRule> {
        match self {
            AccessMode::Network => None,
            AccessMode::Mfa(rule) => Some(rule),
            AccessMode::Grant(g) => Some(&g.who),
        }
    }
}

/// How an `mfa` TCP service hands out grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRule {
    pub who: MfaRule,
    /// The longest grant a person may open.
    pub max_grant: Duration,
    pub on_end: crate::config::schema::OnGrantEnd,
    /// The grant a break-glass code opens, if the service takes them.
    pub break_glass: Option<Duration>,
}

/// The longest `max_grant` and `break_glass_grant` may be.
pub const GRANT_CEILING: Duration = Duration::from_secs(12 * 3600);
pub const DEFAULT_MAX_GRANT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_BREAK_GLASS_GRANT: Duration = Duration::from_secs(15 * 60);

/// Who an `mfa` service admits: the users named, and members of the groups
/// named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaRule {
    pub users: Vec<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    /// A header the device receives with the user name (always stripped
    /// from client input first).
    pub user_header: Option<HeaderName>,
    /// Every user in the users file (a `portal` without `users`/`groups`).
    pub anyone: bool,
}

impl MfaRule {
    pub fn admits(&self, user: &User) -> bool {
        self.anyone
            || self.users.iter().any(|u| **u == *user.name)
            || user.groups.iter().any(|g| self.groups.contains(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{IdentityStore, MemoryStore};

    #[test]
    fn a_session_ends_with_logout_and_with_new_credentials() {
        let store = MemoryStore::new();
        let alice = User {
            name: "alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
            totp_secret: vec![1; 20],
            groups: vec![],
            disabled: false,
            stamp: Default::default(),
        };
        let issued = session_generation(&store, &alice);
        assert_eq!(session_generation(&store, &alice), issued);
        // `moat user passwd` or `reset-totp`: the reload makes a new user,
        // with a different stamp.
        let mut alice = User {
            totp_secret: vec![2; 20],
            stamp: Default::default(),
            ..alice
        };
        let after_reset = session_generation(&store, &alice);
        assert_ne!(after_reset, issued);
        // Logout: the store's count moves.
        assert!(!ended_since(&store, "alice", after_reset));
        store.end_sessions("alice");
        assert_ne!(session_generation(&store, &alice), after_reset);
        assert!(ended_since(&store, "alice", after_reset));
        // Groups and the disabled flag are judged per request, not here.
        let before = session_generation(&store, &alice);
        alice.groups = vec!["biomed".into()];
        alice.disabled = true;
        assert_eq!(session_generation(&store, &alice), before);
    }
}
