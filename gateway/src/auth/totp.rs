//! TOTP (RFC 6238): SHA-1, 6 digits, 30 s steps by default. Codes are
//! compared in constant time; which step matched is returned so that the
//! caller can refuse a replay of the same (user, step).

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use totp_rs::{Algorithm, Secret, TOTP};

/// Seconds per step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;
/// Bytes in a secret [`generate_secret`] makes (160 bits, RFC 4226's
/// recommendation), and the least the users file accepts.
pub const SECRET_BYTES: usize = 20;
/// The issuer an authenticator app shows next to the account.
pub const ISSUER: &str = "moat";

/// moat's TOTP parameters over `secret`. `new_unchecked`: the secret's
/// length is the users file's business (it refuses fewer than 160 bits),
/// and the names are URL-encoded by `get_url`.
fn totp(secret: &[u8], account: &str) -> TOTP {
    TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP,
        secret.to_vec(),
        Some(ISSUER.to_string()),
        account.to_string(),
    )
}

/// The time step a code matches, trying now first, then up to `skew`
/// steps either side. `None` if none does. `now` is Unix seconds.
pub fn matching_step(secret: &[u8], code: &str, now: u64, skew: u8) -> Option<u64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "");
    let now_step = now / STEP;
    let candidates = std::iter::once(Some(now_step)).chain(
        (1..=u64::from(skew)).flat_map(|k| [now_step.checked_sub(k), now_step.checked_add(k)]),
    );
    for step in candidates.flatten() {
        let Some(time) = step.checked_mul(STEP) else {
            continue;
        };
        let expected = totp.generate(time);
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), code.as_bytes())
            .is_ok()
        {
            return Some(step);
        }
    }
    None
}

/// A new random secret of 160 bits (20 bytes).
pub fn generate_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    aws_lc_rs::rand::fill(&mut secret).expect("the system random number generator");
    secret
}

/// RFC 4648 base32, upper case, without padding (what authenticator apps
/// expect in a URI).
pub fn to_base32(secret: &[u8]) -> String {
    match Secret::Raw(secret.to_vec()).to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => unreachable!("to_encoded always encodes"),
    }
}

/// Decodes a base32 secret (case-insensitive, padding optional).
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let unpadded = text.trim_end_matches('=');
    let padding = text.len() - unpadded.len();
    if unpadded.is_empty()
        || padding > 6
        || (padding > 0 && text.len() % 8 != 0)
        // Lengths no whole number of bytes encodes to.
        || matches!(unpadded.len() % 8, 1 | 3 | 6)
        || !unpadded
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
    {
        return None;
    }
    Secret::Encoded(unpadded.to_ascii_uppercase())
        .to_bytes()
        .ok()
}

/// `otpauth://totp/moat:NAME?secret=…&issuer=moat` for an authenticator app.
pub fn otpauth_uri(user: &str, secret: &[u8]) -> String {
    totp(secret, user).get_url()
}

/// The URI as a QR code drawn with Unicode blocks, for a terminal.
pub fn qr_terminal(uri: &str) -> String {
    match QrCode::new(uri.as_bytes()) {
        // Light modules drawn, dark ones left blank: right on the usual
        // dark terminal background (scanners read the inverse too).
        Ok(code) => code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(e) => format!("(no QR code: {e}; type the secret into the app instead)"),
    }
}

#[cfg(test)]
mod tests;
