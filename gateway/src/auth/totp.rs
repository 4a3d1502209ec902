//! TOTP (RFC 6238): SHA-1, 6 digits, 30 s steps by default. Codes are
//! compared in constant time; which step matched is returned so that the
//! caller can refuse a replay of the same (user, step).

/// The time step a code matches, trying now first, then up to `skew`
/// steps either side. `None` if none does. `now` is Unix seconds.
pub fn matching_step(secret: &[u8], code: &str, now: u64, skew: u8) -> Option<u64> {
    let _ = (secret, code, now, skew);
    todo!("helper A")
}

/// A new random secret of 160 bits (20 bytes).
pub fn generate_secret() -> Vec<u8> {
    todo!("helper A")
}

pub fn to_base32(secret: &[u8]) -> String {
    let _ = secret;
    todo!("helper A")
}

/// Decodes a base32 secret (case-insensitive, padding optional).
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let _ = text;
    todo!("helper A")
}

/// `otpauth://totp/moat:NAME?secret=…&issuer=moat` for an authenticator app.
pub fn otpauth_uri(user: &str, secret: &[u8]) -> String {
    let _ = (user, secret);
    todo!("helper A")
}

/// The URI as a QR code drawn with Unicode blocks, for a terminal.
pub fn qr_terminal(uri: &str) -> String {
    let _ = uri;
    todo!("helper A")
}
