//! Passwords: argon2id (the `argon2` crate's defaults, OWASP's minimum),
//! verified off the async workers by the caller ([`super::login`]).

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, ARGON2ID_IDENT};

/// The largest costs a stored hash may ask for: every login attempt (and
/// every unknown user, through the dummy hash) pays them, so a typo'd
/// `m=` must not make each attempt allocate gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// Hashes `password` with a fresh random salt: a PHC string.
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        // Only fails for parameters or a salt out of range; ours are the
        // defaults and a generated salt.
        .expect("argon2id with default parameters")
        .to_string()
}

/// Does `password` match `phc`? Constant time in the password (argon2's
/// own comparison). A malformed hash never matches.
pub fn verify(phc: &str, password: &str) -> bool {
    if check_phc(phc).is_err() {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A hash of a random password with the same parameters as [`hash`]:
/// verified against for unknown users, so they cost the same work.
pub fn dummy_hash() -> String {
    let mut random = [0u8; 32];
    OsRng.fill_bytes(&mut random);
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
    hash(&password)
}

/// A hash of a random password with the costs of `reference` (a user's
/// hash; the defaults if it has none usable): what an unknown user is
/// verified against, so that the name's existence shows in neither the
/// answer nor its time, whatever costs the users file's hashes use.
pub fn dummy_like(reference: Option<&str>) -> String {
    let params = reference
        .filter(|phc| check_phc(phc).is_ok())
        .and_then(|phc| PasswordHash::new(phc).ok())
        .and_then(|parsed| Params::try_from(&parsed).ok());
    let Some(params) = params else {
        return dummy_hash();
    };
    let mut random = [0u8; 32];
    OsRng.fill_bytes(&mut random);
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(&random, &salt)
        .map(|h| h.to_string())
        .unwrap_or_else(|_| dummy_hash())
}

/// The costs part of a PHC string (`m=19456,t=2,p=1`), naming the dummy
/// hash that matches it.
pub fn costs(phc: &str) -> &str {
    phc.split('$').nth(3).unwrap_or("")
}

/// Why `phc` is not a hash [`verify`] accepts: not a PHC string, not
/// argon2id version 19, or costs beyond what a login may pay. The reason
/// never repeats the hash.
pub fn check_phc(phc: &str) -> Result<(), &'static str> {
    let parsed = PasswordHash::new(phc).map_err(|_| "not a PHC string")?;
    if parsed.algorithm != ARGON2ID_IDENT {
        return Err("not an argon2id hash (argon2i, argon2d and other algorithms are refused)");
    }
    if parsed.version != Some(0x13) {
        return Err("not argon2 version 19 (`v=19`)");
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("the salt or the hash is missing");
    }
    let params = Params::try_from(&parsed).map_err(|_| "its parameters (m, t, p) are invalid")?;
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err("its costs are too high for a login (at most m=262144, t=16, p=8)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
