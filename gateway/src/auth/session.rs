//! The session cookie: stateless, authenticated and encrypted
//! (AES-256-GCM from aws-lc-rs, already in the tree for TLS), carrying the
//! user, when the session began, when it was last used, and the user's
//! session generation. Two gateways that share the key file accept each
//! other's cookies.
//!
//! Cookie: `__Host-moat-session=<base64url(key id ‖ nonce ‖ ciphertext)>;
//! Secure; HttpOnly; SameSite=Strict; Path=/`.
//!
//! - key id: the first byte of SHA-256 of the key, so [`SessionKeys::open`]
//!   knows which of the current and the previous key to try;
//! - nonce: 12 random bytes;
//! - ciphertext: [`SessionClaims`] in a small binary form (version 1, then
//!   `issued_at`, `last_seen`, `generation` as big-endian `u64`s, then the
//!   user name in UTF-8), with the 16-byte GCM tag. The additional data is
//!   `moat-session-v1` and the key id, so every byte of the cookie is
//!   authenticated.
//!
//! CSRF tokens are HMAC-SHA256 under a key derived from the session key
//! with HKDF, so a token cannot be turned into a cookie or back.
//!
//! Nothing here logs or prints a key, a cookie or a token.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::{digest, hkdf, hmac, rand};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

pub const SESSION_COOKIE: &str = "__Host-moat-session";

/// The longest cookie value [`SessionKeys::open`] decodes: anything longer
/// is refused before any work.
pub const MAX_COOKIE_LEN: usize = 512;

/// The longest user name a sealed cookie can carry and still be opened
/// (one more byte and the value is longer than [`MAX_COOKIE_LEN`]).
pub const MAX_USER_LEN: usize = MAX_COOKIE_LEN / 4 * 3 - HEADER_LEN - TAG_LEN - CLAIMS_FIXED_LEN;

/// Key id and nonce.
const HEADER_LEN: usize = 1 + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Version byte and three `u64`s.
const CLAIMS_FIXED_LEN: usize = 1 + 3 * 8;
const CLAIMS_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"moat-session-v1";

const CSRF_SALT: &[u8] = b"moat-v1";
const CSRF_KEY_INFO: &[u8] = b"moat-csrf-key-v1";
const CSRF_PREFIX: &[u8] = b"moat-csrf-v1";
/// base64url (no padding) of an HMAC-SHA256 tag.
const CSRF_TOKEN_LEN: usize = 43;

/// What a session cookie says. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    pub user: String,
    pub issued_at: u64,
    pub last_seen: u64,
    pub generation: u64,
}

impl SessionClaims {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CLAIMS_FIXED_LEN + self.user.len() + TAG_LEN);
        out.push(CLAIMS_VERSION);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.last_seen.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(self.user.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<SessionClaims> {
        let (&version, rest) = bytes.split_first()?;
        if version != CLAIMS_VERSION || rest.len() < 24 {
            return None;
        }
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(rest.get(i..i + 8)?.try_into().ok()?))
        };
        Some(SessionClaims {
            issued_at: u64_at(0)?,
            last_seen: u64_at(8)?,
            generation: u64_at(16)?,
            user: std::str::from_utf8(&rest[24..]).ok()?.to_owned(),
        })
    }
}

/// One key, ready for use: its id, the AEAD key, and the CSRF key derived
/// from it.
struct Key {
    id: u8,
    aead: LessSafeKey,
    csrf: hmac::Key,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let id = digest::digest(&digest::SHA256, bytes).as_ref()[0];
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is an AES-256 key"),
        );
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, CSRF_SALT).extract(bytes);
        let csrf = prk
            .expand(&[CSRF_KEY_INFO], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA256 length")
            .into();
        Key { id, aead, csrf }
    }

    fn aad(&self) -> [u8; AAD_PREFIX.len() + 1] {
        let mut aad = [0u8; AAD_PREFIX.len() + 1];
        aad[..AAD_PREFIX.len()].copy_from_slice(AAD_PREFIX);
        aad[AAD_PREFIX.len()] = self.id;
        aad
    }

    fn csrf_tag(&self, binding: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.csrf);
        ctx.update(CSRF_PREFIX);
        ctx.update(binding.as_bytes());
        ctx.sign()
    }

    fn check_csrf(&self, binding: &str, tag: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(CSRF_PREFIX.len() + binding.len());
        msg.extend_from_slice(CSRF_PREFIX);
        msg.extend_from_slice(binding.as_bytes());
        hmac::verify(&self.csrf, &msg, tag).is_ok()
    }
}

/// The key sessions are sealed with, and the previous one (still
/// accepted for opening, for rotation).
pub struct SessionKeys {
    current: Key,
    previous: Option<Key>,
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
        SessionKeys {
            current: Key::new(&current),
            previous: previous.as_ref().map(Key::new),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    /// Seals `claims` into a cookie value with the current key. A user
    /// name longer than [`MAX_USER_LEN`] makes a value `open` refuses.
    pub fn seal(&self, claims: &SessionClaims) -> String {
        let key = &self.current;
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing is not something a gateway can go on from.
        rand::fill(&mut nonce).expect("the system random number generator failed");
        let mut out =
            Vec::with_capacity(HEADER_LEN + CLAIMS_FIXED_LEN + claims.user.len() + TAG_LEN);
        out.push(key.id);
        out.extend_from_slice(&nonce);
        let mut sealed = claims.encode();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.aad()),
                &mut sealed,
            )
            .expect("AES-GCM seals any cookie-sized input");
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens a cookie value sealed with the current or the previous key.
    /// Never panics, whatever `value` is.
    pub fn open(&self, value: &str) -> Result<SessionClaims, CookieError> {
        if value.len() > MAX_COOKIE_LEN {
            return Err(CookieError::Invalid);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| CookieError::Invalid)?;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CookieError::Invalid);
        }
        let id = bytes[0];
        let nonce: [u8; NONCE_LEN] = bytes[1..HEADER_LEN]
            .try_into()
            .map_err(|_| CookieError::Invalid)?;
        let sealed = &bytes[HEADER_LEN..];
        // Both keys may share an id (1 in 256): then both are tried.
        for key in self.keys().filter(|k| k.id == id) {
            let mut buf = sealed.to_vec();
            let nonce = Nonce::assume_unique_for_key(nonce);
            if let Ok(plain) = key
                .aead
                .open_in_place(nonce, Aad::from(key.aad()), &mut buf)
            {
                return SessionClaims::decode(plain).ok_or(CookieError::Invalid);
            }
        }
        Err(CookieError::Invalid)
    }

    /// A CSRF token bound to `binding` (the login form: a random value from
    /// the pre-login cookie; signed-in pages: the session's user and
    /// issued-at), keyed with the current key.
    pub fn csrf_token(&self, binding: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.current.csrf_tag(binding))
    }

    /// Constant-time check of a token made by [`Self::csrf_token`] (with
    /// the current or the previous key).
    pub fn check_csrf(&self, binding: &str, token: &str) -> bool {
        if token.len() != CSRF_TOKEN_LEN {
            return false;
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.keys().any(|k| k.check_csrf(binding, &tag))
    }
}

/// base64 in either alphabet, padded or not: what `parse_key_file` reads.
const KEY_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const KEY_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Parses a key file's contents: one line, base64 (standard or URL-safe,
/// padded or not) of exactly 32 bytes, with a trailing newline or not.
/// Errors name the file and the problem, never the file's contents. The
/// caller checks the file's mode with `users::check_secret_file_mode`.
pub fn parse_key_file(path: &Path, text: &[u8]) -> Result<[u8; 32], String> {
    const MAKE_ONE: &str = "a session key file holds one line: the base64 of 32 random bytes \
                            (for example `openssl rand -base64 32`)";
    let err = |what: &str| format!("session key file {}: {what}; {MAKE_ONE}", path.display());
    let line = text
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(text);
    if line.is_empty() {
        return Err(err("it is empty"));
    }
    if line.contains(&b'\n') {
        return Err(err("it has more than one line"));
    }
    if let Some(i) = line.iter().position(|b| b.is_ascii_whitespace()) {
        return Err(err(&format!("it has white space at column {}", i + 1)));
    }
    if let Some(i) = line
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || b"+/-_=".contains(&b)))
    {
        return Err(err(&format!(
            "it has a character that is not base64 at column {}",
            i + 1
        )));
    }
    let decoded = KEY_STANDARD
        .decode(line)
        .or_else(|_| KEY_URL_SAFE.decode(line))
        .map_err(|_| err("it is not valid base64 (standard or URL-safe)"))?;
    <[u8; 32]>::try_from(decoded.as_slice())
        .map_err(|_| err(&format!("it decodes to {} bytes, not 32", decoded.len())))
}

/// Creates `path` with a new random key, mode 0600, if it does not exist.
/// Returns whether it created it.
///
/// The key is written to a temporary file (mode 0600) in the same
/// directory, flushed to disk, then given its name only if the name is
/// still free (`renameat2(RENAME_NOREPLACE)`, or a hard link): of two
/// processes starting together, one creates the key and both then read
/// the same one. An existing file is never replaced.
pub fn create_key_file_if_missing(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;

    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut key = [0u8; 32];
    rand::fill(&mut key)
        .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
    let mut line = base64::engine::general_purpose::STANDARD.encode(key);
    line.push('\n');

    let mut temp = tempfile::Builder::new()
        .prefix(".moat-session-key.")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    temp.write_all(line.as_bytes())?;
    temp.as_file().sync_all()?;
    match temp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e.error),
    }
    // The new name itself, durable.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// The `Set-Cookie` value for a session cookie; without `max_age` it lasts
/// until the browser closes.
pub fn set_cookie(value: &str, max_age: Option<u64>) -> String {
    let mut out = format!("{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        out.push_str(&format!("; Max-Age={age}"));
    }
    out
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    set_cookie("", Some(0))
}

/// Trims the optional white space around a cookie's name or value.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A crumb's name: before the first `=`, or all of it when there is none.
fn crumb_name(crumb: &[u8]) -> &[u8] {
    let end = crumb.iter().position(|&b| b == b'=').unwrap_or(crumb.len());
    trim_ows(&crumb[..end])
}

/// Every value of the cookie `name`, across all `Cookie` headers (HTTP/2
/// clients may send one per cookie), in order. Names match exactly.
pub fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(move |crumb| {
            let eq = crumb.iter().position(|&b| b == b'=')?;
            if trim_ows(&crumb[..eq]) != name.as_bytes() {
                return None;
            }
            std::str::from_utf8(trim_ows(&crumb[eq + 1..])).ok()
        })
}

/// Removes the cookies `names` from every `Cookie` header, keeping the
/// others in their order, and drops a header left with none: the device
/// never sees moat's cookies. A header with none of them is left as it was.
pub fn strip_cookies(headers: &mut HeaderMap, names: &[&str]) {
    let is_ours = |crumb: &[u8]| names.iter().any(|n| crumb_name(crumb) == n.as_bytes());
    let touched = headers
        .get_all(COOKIE)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b';').any(is_ours));
    if !touched {
        return;
    }
    let old: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    headers.remove(COOKIE);
    for value in old {
        if !value.as_bytes().split(|&b| b == b';').any(is_ours) {
            headers.append(COOKIE, value);
            continue;
        }
        let mut kept = Vec::with_capacity(value.len());
        for crumb in value.as_bytes().split(|&b| b == b';') {
            let crumb = trim_ows(crumb);
            if crumb.is_empty() || is_ours(crumb) {
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(crumb);
        }
        // The bytes all come from a valid value, so this cannot fail; if
        // it did, dropping the header is the safe side.
        if let (false, Ok(v)) = (kept.is_empty(), HeaderValue::from_bytes(&kept)) {
            headers.append(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests;
