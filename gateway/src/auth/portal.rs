//! moat's own pages under `/.moat/` on every `mfa` service: login,
//! logout, and the current session. Plain HTML, no script, no external
//! assets; a CSRF token on every form; strict security headers.
//! These requests never reach the device.

/// The reserved prefix. Matched on the normalised path, in any case.
pub const PREFIX: &str = "/.moat/";

/// Where to go after login: only a relative, same-origin path. Refuses
/// `//host`, `/\host`, absolute URLs, and their percent-encoded or
/// control-character forms; `None` means "go to /".
pub fn safe_next(next: &str) -> Option<String> {
    let _ = next;
    todo!("helper B")
}

/// The login page: username, password and code on one form.
/// `error` is the generic message, never the exact reason.
pub fn login_page(csrf: &str, next: &str, error: bool) -> String {
    let _ = (csrf, next, error);
    todo!("helper B")
}

/// The session page: who is signed in, since when, until when, with a
/// logout form.
pub fn session_page(user: &str, issued_at: u64, expires_at: u64, csrf: &str) -> String {
    let _ = (user, issued_at, expires_at, csrf);
    todo!("helper B")
}

/// The page after logout.
pub fn logged_out_page() -> String {
    todo!("helper B")
}

/// Parses an `application/x-www-form-urlencoded` body into its fields
/// (the last of a repeated name wins).
pub fn parse_form(body: &[u8]) -> std::collections::HashMap<String, String> {
    let _ = body;
    todo!("helper B")
}

/// The headers every portal response carries: a CSP with `default-src
/// 'none'`, `form-action 'self'`, `frame-ancestors 'none'` (and a hash
/// for the pages' one inline style, if any); `Cache-Control: no-store`;
/// `X-Content-Type-Options: nosniff`; `Referrer-Policy: no-referrer`;
/// `X-Frame-Options: DENY`.
pub fn security_headers() -> Vec<(&'static str, &'static str)> {
    todo!("helper B")
}
