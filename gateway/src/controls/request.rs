//! Per-request controls of HTTP services: path normalisation, header and
//! body limits, method and path rules. They run after the connection-level
//! chain and report through the same [`Denial`].

use std::borrow::Cow;

use http::{HeaderMap, Method};

use super::{Denial, Reason};
use crate::config::schema::RuleAction;
use crate::policy::http::{is_pchar, HttpPolicy, RequestRule};

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

/// Rules are evaluated against every reading a common web server may give
/// the normalised `path` (see [`normalize_path`] for the forms refused
/// before): as it is, case-sensitively (nginx, Apache); without
/// `;parameters` (Tomcat, Jetty, IIS 6's `a.asp;.jpg`); and each of those
/// ignoring ASCII case (IIS, embedded stacks). The first rule matching
/// `method` decides each reading, none matching allows, and the request is
/// refused if any reading's decision is a deny. Also re-run for open
/// WebSocket tunnels when a new policy is published.
pub fn check_rules(policy: &HttpPolicy, method: &Method, path: &str) -> Result<(), Denial> {
    check_reading(policy, method, path, false)?;
    if let Cow::Owned(bare) = without_params(path) {
        check_reading(policy, method, &bare, true)?;
    }
    Ok(())
}

/// The case-sensitive and the case-insensitive reading of one path, in one
/// pass: a case-sensitive match is also a case-insensitive one, so until
/// the case-insensitive reading is decided only that needs matching.
fn check_reading(
    policy: &HttpPolicy,
    method: &Method,
    path: &str,
    bare: bool,
) -> Result<(), Denial> {
    let deny = |rule: &RequestRule, case_ignored: bool| {
        let detail = match (bare, case_ignored) {
            (false, false) => rule.text.clone(),
            (true, false) => format!("{} (path read without ;parameters)", rule.text),
            (false, true) => format!("{} (path read ignoring case)", rule.text),
            (true, true) => format!(
                "{} (path read without ;parameters, ignoring case)",
                rule.text
            ),
        };
        Err(Denial::with_detail(Reason::RequestDenied, detail))
    };
    let mut folded_decided = false;
    for rule in policy.rules.iter().filter(|r| r.matches_method(method)) {
        if !folded_decided {
            if !rule.path.matches_ignoring_case(path) {
                continue;
            }
            let exact = rule.path.matches(path);
            if rule.action == RuleAction::Deny {
                return deny(rule, !exact);
            }
            if exact {
                return Ok(());
            }
            folded_decided = true;
        } else if rule.path.matches(path) {
            return match rule.action {
                RuleAction::Deny => deny(rule, false),
                RuleAction::Allow => Ok(()),
            };
        }
    }
    Ok(())
}

/// The path as servers that drop `;parameters` from each segment read it
/// (Java's `;jsessionid=`). [`normalize_path`] has refused segments that
/// are empty or dot segments once their parameters are gone, so no
/// segment vanishes here.
fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// The path the rules see and the device receives: percent-escapes of
/// `pchar` characters decoded, other characters encoded, empty segments
/// collapsed, dot segments resolved.
///
/// Refused with `400 bad_request`, because common servers read them in
/// different ways and a rule could be bypassed (docs/security.md, "How
/// rules read a path"): an encoded `/`, `\`, `%` or `;`; a raw `\`; any
/// non-ASCII or control byte, raw or encoded; a segment that is empty or a
/// dot segment once its `;parameters` are dropped (`..;`, `.;x`, `;x`); a
/// segment ending in `.` or a space (Windows drops them); `~` and a digit
/// (a Windows 8.3 short name); `::` or `:$` (an NTFS data stream); and a
/// `..` that would remove an empty segment (`/a//../b`: `/b` where `//` is
/// merged, `/a/b` where it is not).
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, Denial> {
    let bad = |why: &str| Denial::with_detail(Reason::BadRequest, format!("path {raw:?}: {why}"));
    if !raw.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    // Most paths are already normal: pchars only, no empty or dot segments.
    if raw.bytes().all(|b| b == b'/' || is_pchar(b)) && check_segments(raw).map_err(bad)? {
        return Ok(Cow::Borrowed(raw));
    }
    let mut decoded = String::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let (b, encoded) = if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .ok_or_else(|| bad("malformed percent-escape"))?;
            i += 3;
            let hex = std::str::from_utf8(hex).expect("hex digits");
            (u8::from_str_radix(hex, 16).expect("hex digits"), true)
        } else {
            i += 1;
            (bytes[i - 1], false)
        };
        match b {
            b'/' if !encoded => decoded.push('/'),
            b'/' => return Err(bad("encoded '/'")),
            b'\\' => return Err(bad("backslash")),
            // An encoded '%' is a second layer of encoding: a device that
            // decodes twice would see what the rules did not.
            b'%' => return Err(bad("encoded '%'")),
            // Some servers decode before they drop ;parameters.
            b';' if encoded => return Err(bad("encoded ';'")),
            0..=0x1f | 0x7f => return Err(bad("control character")),
            // Servers disagree on anything beyond ASCII (best-fit mapping,
            // overlong UTF-8 such as %c0%ae).
            0x80.. => return Err(bad("non-ASCII byte")),
            b if is_pchar(b) => decoded.push(b as char),
            b => decoded.push_str(&format!("%{b:02X}")),
        }
    }
    check_segments(&decoded).map_err(bad)?;
    // Every segment, even one a later '..' removes, was checked above.
    let mut stack: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                if stack.pop() == Some("") {
                    return Err(bad("'..' after an empty segment"));
                }
            }
            s => stack.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for s in stack.iter().filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Refuses the segments servers read in different ways (see
/// [`normalize_path`]); otherwise tells whether the path is already
/// normal: no empty segment inside it, no dot segment. One pass over the
/// bytes: this runs for every request.
fn check_segments(path: &str) -> Result<bool, &'static str> {
    let b = path.as_bytes();
    let trimmed = |s: &[u8]| s.ends_with(b".") || s.ends_with(b"%20");
    let mut normal = true;
    let mut start = 1;
    for i in 1..=b.len() {
        if i < b.len() && b[i] != b'/' {
            match (b[i - 1], b[i]) {
                (b'~', c) if c.is_ascii_digit() => {
                    return Err("a Windows short name ('~' and a digit)")
                }
                (b':', b':' | b'$') => return Err("an NTFS data stream ('::' or ':$')"),
                _ => continue,
            }
        }
        let seg = &b[start..i];
        start = i + 1;
        let name = seg.split(|&c| c == b';').next().unwrap_or_default();
        match seg {
            b"" => normal &= i == b.len(),
            b"." | b".." => normal = false,
            _ if matches!(name, b"" | b"." | b"..") => {
                return Err("an empty or dot segment once ;parameters are dropped")
            }
            _ if trimmed(seg) || trimmed(name) => return Err("a segment ending in '.' or a space"),
            _ => {}
        }
    }
    Ok(normal)
}

#[cfg(test)]
mod tests;
