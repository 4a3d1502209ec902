//! Per-request controls of HTTP services: path normalisation, header and
//! body limits, method and path rules. They run after the connection-level
//! chain and report through the same [`Denial`].

use std::borrow::Cow;

use http::{HeaderMap, Method};

use super::{Denial, Reason};
use crate::config::schema::RuleAction;
use crate::policy::http::HttpPolicy;

/// The method on its own, before anything reads the target: `CONNECT
/// host:port` has no path, and moat is never a forward proxy. Methods are
/// case-sensitive tokens, yet a lenient device may run `post` as POST,
/// past a rule written for POST.
pub fn check_method(method: &Method) -> Result<(), Denial> {
    if method == Method::CONNECT {
        return Err(Denial::new(Reason::ConnectRefused));
    }
    if !method.as_str().bytes().all(|b| b.is_ascii_uppercase()) {
        let detail = format!("method {:?} is not an upper-case token", method.as_str());
        return Err(Denial::with_detail(Reason::BadRequest, detail));
    }
    Ok(())
}

/// Checks a request against the service's L7 policy. `method` must have
/// passed [`check_method`] and `path` been normalised with
/// [`normalize_path`].
pub fn check_request(
    policy: &HttpPolicy,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Denial> {
    if headers.len() > policy.max_headers {
        let detail = format!("{} headers, limit {}", headers.len(), policy.max_headers);
        return Err(Denial::with_detail(Reason::HeadersTooLarge, detail));
    }
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if size > policy.max_header_bytes {
        let detail = format!("{size} header bytes, limit {}", policy.max_header_bytes);
        return Err(Denial::with_detail(Reason::HeadersTooLarge, detail));
    }
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > policy.max_body_bytes {
            let detail = format!("content-length {len}, limit {}", policy.max_body_bytes);
            return Err(Denial::with_detail(Reason::BodyTooLarge, detail));
        }
    }
    check_rules(policy, method, path)
}

/// The first rule matching `method` and the normalised `path` decides;
/// none matching allows. Also re-run for open WebSocket tunnels when a new
/// policy is published.
pub fn check_rules(policy: &HttpPolicy, method: &Method, path: &str) -> Result<(), Denial> {
    let key = match_form(path);
    match policy.rules.iter().find(|r| r.matches(method, &key)) {
        Some(rule) if rule.action == RuleAction::Deny => Err(Denial::with_detail(
            Reason::RequestDenied,
            rule.text.clone(),
        )),
        _ => Ok(()),
    }
}

/// What rules are matched against: the normalised path, lower-cased, with
/// `;parameters` dropped from each segment. Device web servers are often
/// case-insensitive (IIS, embedded stacks) or strip path parameters
/// (Java's `;jsessionid=`), so `/ADMIN;x/config` must meet the rule for
/// `/admin/*`. Patterns are lower-cased when compiled.
pub fn match_form(path: &str) -> Cow<'_, str> {
    if !path.bytes().any(|b| b.is_ascii_uppercase() || b == b';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&seg.split(';').next().unwrap_or("").to_ascii_lowercase());
    }
    Cow::Owned(out)
}

/// The path the rules see and the device receives: dot segments resolved,
/// empty segments collapsed, percent-escapes of unreserved characters
/// decoded. Encoded `/`, `\` or NUL, and raw `\`, are refused outright:
/// devices disagree on what they mean, and a rule could be bypassed.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, Denial> {
    let bad = |why: &str| Denial::with_detail(Reason::BadRequest, format!("path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    // Most paths are already normal: no escapes, no empty or dot segments.
    let b = raw.as_bytes();
    let plain = !b.iter().any(|&c| c == b'%' || c == b'\\')
        && !raw.contains("//")
        && !raw.split('/').any(|seg| seg == "." || seg == "..");
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded = String::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = raw
                    .get(i + 1..i + 3)
                    .ok_or_else(|| bad("truncated percent-escape"))?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| bad("invalid percent-escape"))?;
                match b {
                    b'/' | b'\\' | 0 => return Err(bad("encoded '/', '\\' or NUL")),
                    // An encoded '%' is a second layer of encoding: a device
                    // that decodes twice would see what the rules did not.
                    b'%' => return Err(bad("encoded '%'")),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        decoded.push(b as char)
                    }
                    b => decoded.push_str(&format!("%{b:02X}")),
                }
                i += 3;
            }
            b'\\' => return Err(bad("backslash")),
            _ => {
                // Multi-byte UTF-8 is copied byte-for-byte via the str slice.
                let ch = raw[i..].chars().next().expect("in bounds");
                decoded.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests;
