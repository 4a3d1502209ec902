//! moat's own pages under `/.moat/` on every `mfa` service: login,
//! logout, and the current session. Plain HTML, no script, no external
//! assets; a CSRF token on every form; strict security headers.
//! These requests never reach the device.
//!
//! The pages share one small inline `<style>`; its SHA-256 is in the
//! Content-Security-Policy, so nothing else may style or script them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use aws_lc_rs::digest;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderName, HeaderValue};
use percent_encoding::{percent_decode, percent_decode_str};

/// The reserved prefix. Matched on the normalised path, in any case.
pub const PREFIX: &str = "/.moat/";

/// The longest `next` accepted.
pub const MAX_NEXT_LEN: usize = 2048;

/// Fields [`parse_form`] reads at most; the rest of the body is ignored.
pub const MAX_FORM_FIELDS: usize = 64;

/// The message for any failed login, whatever the reason.
pub const LOGIN_ERROR: &str = "Wrong username, password or code.";

/// Percent-decodings `safe_next` looks through; a `next` still encoded
/// after as many is refused.
const DECODE_ROUNDS: usize = 4;

/// The one inline style of every page (its hash is in the CSP).
const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:2rem auto;\
padding:0 1rem;line-height:1.5}label{display:block;margin-top:1rem;font-weight:600}\
input{display:block;width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}\
button{margin-top:1.5rem;padding:.5rem 1.5rem;font-size:1rem}.hint{margin:.25rem 0 0}\
.error{color:#a00;font-weight:600}dt{font-weight:600}dd{margin:0 0 .5rem}";

/// Where to go after login: only a relative, same-origin path. Refuses
/// `//host`, `/\host`, absolute URLs, and their percent-encoded or
/// control-character forms; `None` means "go to /".
///
/// Accepted: visible ASCII only (the value goes into `Location`, and
/// browsers drop tabs, newlines and leading spaces before they parse it),
/// at most [`MAX_NEXT_LEN`] bytes, starting with one `/` that is not
/// followed by `/` or `\`, with no `\` anywhere. Starting with `/` means
/// there is no scheme. The same holds for every percent-decoded form (up
/// to a few rounds of decoding), which may also hold no control
/// character. Paths under [`PREFIX`] are refused, except the session page
/// (`/.moat/session`), so a login never leads back into the portal's
/// actions. The string returned is `next` itself, not a decoded form.
pub fn safe_next(next: &str) -> Option<String> {
    if next.len() > MAX_NEXT_LEN || !next.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut form = Cow::Borrowed(next);
    for _ in 0..DECODE_ROUNDS {
        if !is_plain_path(&form) || is_portal_action(&form) {
            return None;
        }
        let decoded = percent_decode_str(&form).decode_utf8_lossy();
        if decoded == form {
            return Some(next.to_owned());
        }
        form = Cow::Owned(decoded.into_owned());
    }
    None
}

/// Starts with exactly one `/`, holds no `\` and no control character.
fn is_plain_path(s: &str) -> bool {
    let b = s.as_bytes();
    b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !s.contains('\\')
        && !s.chars().any(char::is_control)
}

/// A path under the portal's prefix, other than the session page: its
/// segments compared without case, `;parameters`, empty and dot segments.
fn is_portal_action(s: &str) -> bool {
    let path = s.split(['?', '#']).next().unwrap_or("");
    let mut segments: Vec<String> = Vec::new();
    for seg in path.split('/') {
        let seg = seg.split(';').next().unwrap_or("").to_ascii_lowercase();
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let prefix = PREFIX.trim_matches('/');
    segments.first().is_some_and(|s| s == prefix) && segments[1..] != ["session"]
}

/// Escapes `& < > " '` for HTML text and (double- or single-quoted)
/// attribute values.
pub fn escape_html(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A whole page around `body` (already HTML).
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n\
<html lang=\"en\">\n\
<head>\n\
<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>{title}</title>\n\
<style>{STYLE}</style>\n\
</head>\n\
<body>\n\
<main>\n\
{body}\
</main>\n\
</body>\n\
</html>\n",
        title = escape_html(title),
    )
}

/// The login page: username, password and code on one form.
/// `error` is the generic message, never the exact reason.
pub fn login_page(csrf: &str, next: &str, error: bool) -> String {
    let error = if error {
        format!("<p class=\"error\" role=\"alert\">{LOGIN_ERROR}</p>\n")
    } else {
        String::new()
    };
    let body = format!(
        "<h1>Sign in</h1>\n\
<p>Sign in to use this device.</p>\n\
{error}\
<form method=\"post\" action=\"/.moat/login\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"next\" value=\"{next}\">\n\
<label for=\"username\">Username</label>\n\
<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" \
autocapitalize=\"none\" spellcheck=\"false\" required>\n\
<label for=\"password\">Password</label>\n\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" \
required>\n\
<label for=\"code\">Code</label>\n\
<input id=\"code\" name=\"code\" type=\"text\" autocomplete=\"one-time-code\" \
inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" maxlength=\"6\" required \
aria-describedby=\"code-hint\">\n\
<p id=\"code-hint\" class=\"hint\">The six digits your authenticator app shows now.</p>\n\
<button type=\"submit\">Sign in</button>\n\
</form>\n",
        csrf = escape_html(csrf),
        next = escape_html(next),
    );
    page("moat — sign in", &body)
}

/// The session page: who is signed in, since when, until when, with a
/// logout form.
pub fn session_page(user: &str, issued_at: u64, expires_at: u64, csrf: &str) -> String {
    page(
        "moat — session",
        &session_section(user, issued_at, expires_at, csrf),
    )
}

fn session_section(user: &str, issued_at: u64, expires_at: u64, csrf: &str) -> String {
    format!(
        "<h1>Signed in</h1>\n\
<dl>\n\
<dt>User</dt>\n<dd>{user}</dd>\n\
<dt>Signed in at</dt>\n<dd><time datetime=\"{since_iso}\">{since}</time></dd>\n\
<dt>Session ends at the latest</dt>\n<dd><time datetime=\"{until_iso}\">{until}</time></dd>\n\
</dl>\n\
<form method=\"post\" action=\"/.moat/logout\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
<button type=\"submit\">Sign out</button>\n\
</form>\n\
<p><a href=\"/\">Back to the device</a></p>\n",
        user = escape_html(user),
        since = utc_time(issued_at),
        since_iso = iso_time(issued_at),
        until = utc_time(expires_at),
        until_iso = iso_time(expires_at),
        csrf = escape_html(csrf),
    )
}

/// What a signed-in person may reach, for the portal's home page.
#[derive(Debug, Default)]
pub struct AccessView {
    /// The address this request came from: what an address grant binds.
    pub address: String,
    /// This connection showed a client certificate.
    pub certificate: bool,
    pub devices: Vec<DeviceAccess>,
    /// The person's own open grants.
    pub grants: Vec<GrantLine>,
    /// Some service takes break-glass codes: link the form.
    pub break_glass: bool,
}

#[derive(Debug)]
pub struct DeviceAccess {
    pub name: String,
    pub location: String,
    /// "supported", "ending soon", "past end of support" or "unknown".
    pub support: &'static str,
    pub end_of_support: Option<String>,
    pub services: Vec<ServiceAccess>,
}

#[derive(Debug)]
pub struct ServiceAccess {
    pub name: String,
    /// `device/service`: what the grant form names.
    pub key: String,
    pub kind: ServiceKind,
}

#[derive(Debug)]
pub enum ServiceKind {
    /// A web UI behind `access = "mfa"`: reached with this session.
    Web { listen: String },
    /// A TCP service: opened with a grant.
    Tcp {
        max_minutes: u64,
        /// The service requires client certificates and this connection
        /// showed one: "my certificate" is offered.
        certificate: bool,
        /// This address is in the service's allow list.
        address_allowed: bool,
    },
}

#[derive(Debug)]
pub struct GrantLine {
    pub id: String,
    pub device: String,
    pub service: String,
    pub binding: String,
    pub until: u64,
    pub break_glass: bool,
}

/// The portal's home page: the session, the devices this person may reach
/// (location, end of support), a grant form per TCP service, their grants.
pub fn home_page(
    user: &str,
    issued_at: u64,
    expires_at: u64,
    csrf: &str,
    view: &AccessView,
) -> String {
    let mut body = session_section(user, issued_at, expires_at, csrf);
    body.push_str(&access_section(csrf, view));
    page("moat — devices", &body)
}

fn access_section(csrf: &str, view: &AccessView) -> String {
    let csrf = escape_html(csrf);
    let mut out = String::from("<h2>Devices you may reach</h2>\n");
    if view.devices.is_empty() {
        out.push_str("<p>No device admits you. Ask the biomed or security team.</p>\n");
    }
    for d in &view.devices {
        out.push_str(&format!(
            "<section class=\"device\">\n<h3>{name}</h3>\n<p>Location: {location}. Support: <strong>{support}</strong>{eos}.</p>\n<ul>\n",
            name = escape_html(&d.name),
            location = escape_html(if d.location.is_empty() { "not recorded" } else { &d.location }),
            support = d.support,
            eos = d.end_of_support.as_deref().map_or(String::new(), |e| format!(" (end of support {})", escape_html(e))),
        ));
        for svc in &d.services {
            match &svc.kind {
                ServiceKind::Web { listen } => out.push_str(&format!(
                    "<li>{name}: web interface at {listen}, with this sign-in.</li>\n",
                    name = escape_html(&svc.name),
                    listen = escape_html(listen),
                )),
                ServiceKind::Tcp {
                    max_minutes,
                    certificate,
                    address_allowed,
                } => {
                    let mut bind = String::new();
                    if *address_allowed {
                        bind.push_str(&format!(
                            "<label><input type=\"radio\" name=\"bind\" value=\"address\" checked> this address ({address})</label>\n",
                            address = escape_html(&view.address)
                        ));
                    }
                    if *certificate {
                        bind.push_str(&format!(
                            "<label><input type=\"radio\" name=\"bind\" value=\"certificate\"{checked}> my certificate</label>\n",
                            checked = if *address_allowed { "" } else { " checked" }
                        ));
                    }
                    if bind.is_empty() {
                        out.push_str(&format!(
                            "<li>{name}: your address {address} is not allowed on this service, and this connection shows no client certificate.</li>\n",
                            name = escape_html(&svc.name),
                            address = escape_html(&view.address),
                        ));
                        continue;
                    }
                    out.push_str(&format!(
                        "<li>{name}\n<form method=\"post\" action=\"/.moat/grants\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"service\" value=\"{key}\">\n\
<label>Open for <input name=\"minutes\" type=\"number\" min=\"1\" max=\"{max}\" value=\"{default}\" required> minutes (at most {max})</label>\n\
{bind}<button type=\"submit\">Open access</button>\n</form>\n</li>\n",
                        name = escape_html(&svc.name),
                        key = escape_html(&svc.key),
                        max = max_minutes,
                        default = (*max_minutes).min(30),
                    ));
                }
            }
        }
        out.push_str("</ul>\n</section>\n");
    }
    out.push_str(&format!(
        "<p class=\"hint\">Your address as moat sees it: {address}. A grant bound to this address admits everyone who shares it: everyone behind the same NAT or proxy. Bind to your certificate where you can.</p>\n",
        address = escape_html(&view.address)
    ));
    out.push_str("<h2>Your open grants</h2>\n");
    if view.grants.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<ul>\n");
        for g in &view.grants {
            out.push_str(&format!(
                "<li>{device} / {service}, {binding}, until <time datetime=\"{until_iso}\">{until}</time>{glass}\n\
<form method=\"post\" action=\"/.moat/grants/end\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"id\" value=\"{id}\">\n\
<button type=\"submit\">End now</button>\n</form>\n</li>\n",
                device = escape_html(&g.device),
                service = escape_html(&g.service),
                binding = escape_html(&g.binding),
                until = utc_time(g.until),
                until_iso = iso_time(g.until),
                glass = if g.break_glass { " (break-glass)" } else { "" },
                id = escape_html(&g.id),
            ));
        }
        out.push_str("</ul>\n");
    }
    if view.break_glass {
        out.push_str("<p><a href=\"/.moat/break-glass\">Emergency access (break-glass)</a></p>\n");
    }
    out
}

/// The break-glass form: password and a sealed one-time code instead of
/// the TOTP code, for one service. Every use is audited at high severity.
pub fn break_glass_page(csrf: &str, services: &[(String, String)], error: bool) -> String {
    let error = if error {
        "<p class=\"error\" role=\"alert\">Wrong username, password or emergency code, or the code was used before.</p>\n"
    } else {
        ""
    };
    let options: String = services
        .iter()
        .map(|(key, label)| {
            format!(
                "<option value=\"{}\">{}</option>\n",
                escape_html(key),
                escape_html(label)
            )
        })
        .collect();
    let body = format!(
        "<h1>Emergency access</h1>\n\
<p>For a clinical emergency when your authenticator is not at hand. Each code from the sealed envelope works once, opens one device for a short time, and alerts the security team.</p>\n\
{error}\
<form method=\"post\" action=\"/.moat/break-glass\">\n\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\n\
<input type=\"hidden\" name=\"bind\" value=\"address\">\n\
<label for=\"username\">Username</label>\n\
<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required>\n\
<label for=\"password\">Password</label>\n\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\n\
<label for=\"code\">Emergency code</label>\n\
<input id=\"code\" name=\"code\" type=\"text\" autocomplete=\"off\" autocapitalize=\"characters\" spellcheck=\"false\" required>\n\
<label for=\"service\">Device</label>\n\
<select id=\"service\" name=\"service\" required>\n{options}</select>\n\
<button type=\"submit\">Open emergency access</button>\n\
</form>\n",
        csrf = escape_html(csrf),
    );
    page("moat — emergency access", &body)
}

/// After a break-glass code opened a grant.
pub fn break_glass_opened_page(device: &str, service: &str, address: &str, until: u64) -> String {
    let body = format!(
        "<h1>Emergency access open</h1>\n\
<p>{device} / {service} is open to {address} until <time datetime=\"{until_iso}\">{until}</time>. The code you used is spent; the security team has been alerted.</p>\n",
        device = escape_html(device),
        service = escape_html(service),
        address = escape_html(address),
        until = utc_time(until),
        until_iso = iso_time(until),
    );
    page("moat — emergency access open", &body)
}

/// The page after logout.
pub fn logged_out_page() -> String {
    page(
        "moat — signed out",
        "<h1>Signed out</h1>\n\
<p>You are signed out.</p>\n\
<p><a href=\"/\">Sign in again</a></p>\n",
    )
}

/// Unix seconds as the UTC date (`YYYY-MM-DD`, the inventory's one date
/// conversion) and time of day (hour, minute, second).
fn civil(secs: u64) -> (String, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let date = crate::policy::inventory::date_from_days(days as i64);
    (date, rem / 3600, rem / 60 % 60, rem % 60)
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_time(secs: u64) -> String {
    let (date, h, mi, s) = civil(secs);
    format!("{date} {h:02}:{mi:02}:{s:02} UTC")
}

/// `YYYY-MM-DDTHH:MM:SSZ`, for `<time datetime>`.
fn iso_time(secs: u64) -> String {
    let (date, h, mi, s) = civil(secs);
    format!("{date}T{h:02}:{mi:02}:{s:02}Z")
}

/// Parses an `application/x-www-form-urlencoded` body into its fields
/// (the last of a repeated name wins). `+` is a space; invalid UTF-8 is
/// replaced; only the first [`MAX_FORM_FIELDS`] fields are read.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    for pair in body
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .take(MAX_FORM_FIELDS)
    {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        fields.insert(form_decode(name), form_decode(value));
    }
    fields
}

fn form_decode(bytes: &[u8]) -> String {
    let spaced: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced).decode_utf8_lossy().into_owned()
}

/// The Content-Security-Policy of every portal page: nothing but the
/// pages' own inline style, forms posting to the same origin, no framing.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = STANDARD.encode(digest::digest(&digest::SHA256, STYLE.as_bytes()));
        format!(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'; style-src 'sha256-{hash}'"
        )
    })
}

/// The headers every portal response carries: a CSP with `default-src
/// 'none'`, `form-action 'self'`, `frame-ancestors 'none'`, `base-uri
/// 'none'` and the hash of the pages' one inline style;
/// `Cache-Control: no-store`; `X-Content-Type-Options: nosniff`;
/// `Referrer-Policy: same-origin` (no referrer leaves the site; with
/// `no-referrer` browsers post the login form with `Origin: null`, which
/// the origin check must refuse); `X-Frame-Options: DENY`;
/// `Content-Type: text/html; charset=utf-8`.
pub fn security_headers() -> &'static [(HeaderName, HeaderValue)] {
    static HEADERS: OnceLock<[(HeaderName, HeaderValue); 6]> = OnceLock::new();
    HEADERS.get_or_init(|| {
        [
            (
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(content_security_policy()),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (REFERRER_POLICY, HeaderValue::from_static("same-origin")),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
        ]
    })
}

#[cfg(test)]
mod tests;
