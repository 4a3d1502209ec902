//! Break-glass codes: sealed one-time emergency codes that stand in for a
//! TOTP code on services with `break_glass = true`. (Being written.)

use std::path::Path;

/// Why a code was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemError {
    /// No unused code of this user matches (also: a malformed code).
    NoSuchCode,
    /// The code matched one already used.
    AlreadyUsed,
    /// The file could not be read, parsed or rewritten (names the file).
    File(String),
}

/// Checks `code` against `user`'s unused codes in `path` and, if one
/// matches, marks it used there (atomically) before returning its id.
/// Blocking: argon2 and file I/O.
pub fn redeem(path: &Path, user: &str, code: &str, now: u64) -> Result<String, RedeemError> {
    let _ = (path, user, code, now);
    Err(RedeemError::NoSuchCode)
}
