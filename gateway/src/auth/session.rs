//! The session cookie: stateless, authenticated and encrypted
//! (AES-256-GCM from aws-lc-rs, already in the tree for TLS), carrying the
//! user, when the session began, when it was last used, and the user's
//! session generation. Two gateways that share the key file accept each
//! other's cookies.
//!
//! Cookie: `__Host-moat-session=<base64url(key id ‖ nonce ‖ ciphertext)>;
//! Secure; HttpOnly; SameSite=Strict; Path=/`.

use std::path::Path;

pub const SESSION_COOKIE: &str = "__Host-moat-session";

/// What a session cookie says. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub user: String,
    pub issued_at: u64,
    pub last_seen: u64,
    pub generation: u64,
}

/// The key sessions are sealed with, and the previous one (still
/// accepted for opening, for rotation).
pub struct SessionKeys {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a cookie was not accepted (audit detail; the client only ever sees
/// "sign in").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// Not base64, too short, unknown key id, or the tag did not verify
    /// (forged, tampered, or sealed with a key moat does not have).
    Invalid,
}

impl SessionKeys {
    pub fn new(current: [u8; 32], previous: Option<[u8; 32]>) -> SessionKeys {
        SessionKeys { current, previous }
    }

    /// Seals `claims` into a cookie value with the current key.
    pub fn seal(&self, claims: &SessionClaims) -> String {
        let _ = (claims, &self.current);
        todo!("helper B")
    }

    /// Opens a cookie value sealed with the current or the previous key.
    pub fn open(&self, value: &str) -> Result<SessionClaims, CookieError> {
        let _ = (value, &self.previous);
        todo!("helper B")
    }

    /// A CSRF token bound to `binding` (the login form: a random value from
    /// the pre-login cookie; signed-in pages: the session's user and
    /// issued-at), keyed with the current key.
    pub fn csrf_token(&self, binding: &str) -> String {
        let _ = binding;
        todo!("helper B")
    }

    /// Constant-time check of a token made by [`Self::csrf_token`] (with
    /// the current or the previous key).
    pub fn check_csrf(&self, binding: &str, token: &str) -> bool {
        let _ = (binding, token);
        todo!("helper B")
    }
}

/// Reads a key file (base64 of 32 random bytes, one line), refusing one
/// that other users may read (see `users::check_secret_file_mode`).
pub fn parse_key_file(path: &Path, text: &[u8]) -> Result<[u8; 32], String> {
    let _ = (path, text);
    todo!("helper B")
}

/// Creates `path` with a new random key, mode 0600, if it does not exist.
/// Returns whether it created it.
pub fn create_key_file_if_missing(path: &Path) -> std::io::Result<bool> {
    let _ = path;
    todo!("helper B")
}

// Placeholders until the session helper's work lands.
pub fn set_cookie(value: &str, max_age: Option<u64>) -> String {
    let _ = (value, max_age);
    todo!("helper B")
}
pub fn clear_cookie() -> String {
    todo!("helper B")
}
pub fn cookie_values<'a>(
    headers: &'a http::HeaderMap,
    name: &str,
) -> impl Iterator<Item = &'a str> {
    let _ = (headers, name);
    std::iter::empty()
}
pub fn strip_cookies(headers: &mut http::HeaderMap, names: &[&str]) {
    let _ = (headers, names);
}
