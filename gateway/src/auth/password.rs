//! Passwords: argon2id (the `argon2` crate's defaults, OWASP's minimum),
//! verified off the async workers by the caller ([`super::login`]).

/// Hashes `password` with a fresh random salt: a PHC string.
pub fn hash(password: &str) -> String {
    let _ = password;
    todo!("helper A")
}

/// Does `password` match `phc`? Constant time in the password (argon2's
/// own comparison). A malformed hash never matches.
pub fn verify(phc: &str, password: &str) -> bool {
    let _ = (phc, password);
    todo!("helper A")
}

/// A hash of a random password with the same parameters as [`hash`]:
/// verified against for unknown users, so they cost the same work.
pub fn dummy_hash() -> String {
    todo!("helper A")
}
