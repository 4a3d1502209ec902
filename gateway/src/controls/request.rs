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

/// A `HeaderName`, not a `&str`: a string key is parsed on every use.
const DESTINATION: http::HeaderName = http::HeaderName::from_static("destination");

/// Checks a request against the service's L7 policy: header and body
/// limits, the rules, and the other readings of it ([`check_overrides`]).
/// `method` must have passed [`check_method`] and `path` (from `uri`) been
/// normalised with [`normalize_path`].
pub fn check_request(
    policy: &HttpPolicy,
    method: &Method,
    path: &str,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<(), Denial> {
    // One pass over the fields for their size, the cookie crumbs, the
    // first Content-Length and the first Destination (comparing a name
    // costs less than looking one up).
    let (mut size, mut crumbs) = (0usize, 0usize);
    let (mut content_length, mut destination) = (None, None);
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
        if name == http::header::COOKIE {
            crumbs += 1;
        } else if name == http::header::CONTENT_LENGTH {
            content_length = content_length.or(Some(value));
        } else if name == DESTINATION {
            destination = destination.or(Some(value));
        }
    }
    // h2 clients send each cookie as its own field (RFC 9113 §8.2.3) and
    // they reach the device as one line: count them as one, as HTTP/1.1
    // clients send them.
    let count = headers.len() - crumbs.saturating_sub(1);
    if count > policy.max_headers {
        let detail = format!("{count} headers, limit {}", policy.max_headers);
        return Err(Denial::with_detail(Reason::HeadersTooLarge, detail));
    }
    if size > policy.max_header_bytes {
        let detail = format!("{size} header bytes, limit {}", policy.max_header_bytes);
        return Err(Denial::with_detail(Reason::HeadersTooLarge, detail));
    }
    if let Some(len) = content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > policy.max_body_bytes {
            let detail = format!("content-length {len}, limit {}", policy.max_body_bytes);
            return Err(Denial::with_detail(Reason::BodyTooLarge, detail));
        }
    }
    check_rules(policy, method, path)?;
    check_overrides(policy, method, path, uri, destination)
}

/// Rules are evaluated against every reading a common web server may give
/// the normalised `path` (see [`normalize_path`] for the forms refused
/// before): as it is, case-sensitively (nginx, Apache); without
/// `;parameters` (Tomcat, Jetty, IIS 6's `a.asp;.jpg`); and each of those
/// ignoring ASCII case (IIS, embedded stacks). The first rule matching
/// `method` decides each reading, none matching allows, and the request is
/// refused if any reading's decision is a deny. `HEAD` is also read as
/// `GET`: most servers and frameworks (Flask, Express, Go's `net/http`,
/// PHP, embedded stacks) answer it by running the GET handler, so a GET
/// that a rule denies (`GET /api/reboot`) must not run as HEAD. Also
/// re-run for open WebSocket tunnels when a new policy is published.
pub fn check_rules(policy: &HttpPolicy, method: &Method, path: &str) -> Result<(), Denial> {
    check_readings(policy, method, path)?;
    if method == Method::HEAD {
        check_readings(policy, &Method::GET, path)
            .map_err(|d| noting(d, format_args!("HEAD read as GET")))?;
    }
    Ok(())
}

/// The names under which frameworks take the request's method from the
/// client: as headers (Express `method-override`, Laravel/Symfony, Google
/// APIs, OData), which `proxy::headers` strips, and as query parameters,
/// which [`check_overrides`] judges, together with Rails, Laravel and
/// Symfony's `_method`.
pub const METHOD_OVERRIDE_NAMES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The other readings of a request a device may act on, checked against
/// the same rules as its method and path: a method named in the query
/// (`POST /pumps/3?_method=DELETE` runs as DELETE), and the resource a
/// WebDAV `COPY`/`MOVE` writes to (`Destination`). A value moat cannot
/// read is refused rather than guessed at. (Method-override headers are
/// stripped instead, by `proxy::headers`; a `_method` inside a form body
/// is not seen: docs/security.md, residual risks.)
fn check_overrides(
    policy: &HttpPolicy,
    method: &Method,
    path: &str,
    uri: &http::Uri,
    destination: Option<&http::HeaderValue>,
) -> Result<(), Denial> {
    let bad = |detail: String| Err(Denial::with_detail(Reason::BadRequest, detail));
    for pair in uri.query().into_iter().flat_map(|q| q.split('&')) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !name.contains(['%', '_', '-']) {
            continue;
        }
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        let name = name.trim();
        let overrides = name.eq_ignore_ascii_case("_method")
            || METHOD_OVERRIDE_NAMES
                .iter()
                .any(|p| p.eq_ignore_ascii_case(name));
        if !overrides {
            continue;
        }
        let value = percent_encoding::percent_decode_str(&value.replace('+', " "))
            .decode_utf8_lossy()
            .trim()
            .to_ascii_uppercase();
        let Ok(overridden) = Method::from_bytes(value.as_bytes()) else {
            return bad(format!("query parameter {name:?} names no method"));
        };
        check_rules(policy, &overridden, path)
            .map_err(|d| noting(d, format_args!("method read from the query: {overridden}")))?;
    }
    let Some(destination) = destination else {
        return Ok(());
    };
    let Some(text) = destination.to_str().ok() else {
        return bad("Destination header is not text".into());
    };
    // An absolute URI or an absolute path (RFC 4918 §10.3).
    let target = match text.parse::<http::Uri>() {
        Ok(u) if u.path().starts_with('/') => u.path().to_string(),
        _ => {
            return bad(format!(
                "Destination {} is not a URI",
                shown(text.as_bytes())
            ))
        }
    };
    let dest = normalize_path(&target)?;
    check_rules(policy, method, &dest).map_err(|d| noting(d, format_args!("the Destination path")))
}

/// A rule's refusal, with which reading of the request met the rule
/// appended to its detail: `deny GET /api/reboot (HEAD read as GET)`.
fn noting(mut denial: Denial, reading: std::fmt::Arguments<'_>) -> Denial {
    if let Some(detail) = denial.detail.as_mut() {
        use std::fmt::Write;
        let _ = write!(detail, " ({reading})");
    }
    denial
}

/// The readings of `path` for one method.
fn check_readings(policy: &HttpPolicy, method: &Method, path: &str) -> Result<(), Denial> {
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

/// The host a request names, checked against the names its service
/// answers to: what the device may be told it was asked for.
///
/// Where the name comes from: `Host` (exactly one; required from
/// HTTP/1.1 on), the absolute-form request target or the h2
/// `:authority`, which must name the same host and port as `Host` when
/// both are present. A missing, repeated, disagreeing or malformed name
/// is a bad request (400); a well-formed name that is not the service's
/// is misdirected (421). A port must be a number from 1 to 65535 but is
/// not compared with the listen port: behind a port mapping (a container,
/// a NAT) clients use the outer port, and the port never chooses the
/// device. HTTP/1.0 without `Host` has no name to check: `Ok(None)`.
///
/// The answer is the name as the device should see it: lower-case,
/// without a trailing dot, the port as given.
pub fn check_host(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
    hosts: &crate::policy::http::HostNames,
    local: Option<std::net::IpAddr>,
) -> Result<Option<http::HeaderValue>, Denial> {
    let bad = |detail: String| Err(Denial::with_detail(Reason::BadRequest, detail));
    let mut values = headers.get_all(http::header::HOST).iter();
    let host = values.next();
    if values.next().is_some() {
        return bad("more than one Host header".into());
    }
    let target = uri.authority().map(|a| a.as_str().as_bytes());
    let raw = match (host, target) {
        (Some(h), None) => h.as_bytes(),
        (None, Some(t)) => t,
        (Some(h), Some(t)) => {
            let same = match (RequestHost::parse(h.as_bytes()), RequestHost::parse(t)) {
                (Some(a), Some(b)) => a.host == b.host && a.port == b.port,
                _ => false,
            };
            if !same {
                let detail = format!(
                    "request target names {}, Host {}",
                    shown(t),
                    shown(h.as_bytes())
                );
                return bad(detail);
            }
            h.as_bytes()
        }
        (None, None) if version <= http::Version::HTTP_10 => return Ok(None),
        (None, None) => return bad("no Host header".into()),
    };
    let Some(parsed) = RequestHost::parse(raw) else {
        return bad(format!("Host {} is not a host name or address", shown(raw)));
    };
    let ours = match &parsed.host {
        HostPart::Name(n) => hosts.admits_name(n),
        HostPart::Ip(ip) => hosts.admits_ip(*ip, local),
    };
    if !ours {
        let detail = format!("Host {} is not a name of this service", shown(raw));
        return Err(Denial::with_detail(Reason::MisdirectedRequest, detail));
    }
    // Usually already in normal form: share the client's `Host`, or copy
    // the h2 `:authority` as it is (no formatting on the hot path).
    if parsed.normal {
        return Ok(match host {
            Some(h) => Some(h.clone()),
            None => http::HeaderValue::from_bytes(raw).ok(),
        });
    }
    let text = match (&parsed.host, parsed.port) {
        (HostPart::Name(n), None) => n.to_string(),
        (HostPart::Name(n), Some(p)) => format!("{n}:{p}"),
        (HostPart::Ip(ip @ std::net::IpAddr::V6(_)), None) => format!("[{ip}]"),
        (HostPart::Ip(ip @ std::net::IpAddr::V6(_)), Some(p)) => format!("[{ip}]:{p}"),
        (HostPart::Ip(ip), None) => ip.to_string(),
        (HostPart::Ip(ip), Some(p)) => format!("{ip}:{p}"),
    };
    Ok(http::HeaderValue::from_str(&text).ok())
}

/// A `Host` value taken apart: `name`, `a.b.c.d` or `[v6]`, then an
/// optional `:port`.
#[derive(Debug)]
struct RequestHost<'a> {
    host: HostPart<'a>,
    port: Option<u16>,
    /// Written as it would be forwarded (lower-case, no trailing dot,
    /// canonical address text).
    normal: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum HostPart<'a> {
    /// Lower-case, without the trailing dot (borrowed when it already is).
    Name(Cow<'a, str>),
    Ip(std::net::IpAddr),
}

impl RequestHost<'_> {
    fn parse(raw: &[u8]) -> Option<RequestHost<'_>> {
        let text = std::str::from_utf8(raw).ok()?;
        let (host, port_text, mut normal) = match text.strip_prefix('[') {
            Some(rest) => {
                let (v6, after) = rest.split_once(']')?;
                let ip: std::net::Ipv6Addr = v6.parse().ok()?;
                let port = match after {
                    "" => None,
                    p => Some(p.strip_prefix(':')?),
                };
                // `[::0001]`, `[::ABCD]`: forwarded as `[::1]`, `[::abcd]`.
                let normal = v6 == ip.to_string();
                (HostPart::Ip(ip.into()), port, normal)
            }
            None => {
                let (h, p) = match text.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (text, None),
                };
                let name = h.strip_suffix('.').unwrap_or(h);
                let normal = name.len() == h.len() && !h.bytes().any(|b| b.is_ascii_uppercase());
                // Rust's parser takes only dotted-quad decimal: no `127.1`,
                // no `0x7f.0.0.1`, no leading zeros.
                let part = match name.parse::<std::net::Ipv4Addr>() {
                    Ok(ip) => HostPart::Ip(ip.into()),
                    Err(_) if crate::policy::http::is_dns_name(name) => {
                        HostPart::Name(if name.bytes().any(|b| b.is_ascii_uppercase()) {
                            Cow::Owned(name.to_ascii_lowercase())
                        } else {
                            Cow::Borrowed(name)
                        })
                    }
                    Err(_) => return None,
                };
                (part, p, normal)
            }
        };
        let port = match port_text {
            None => None,
            // Digits only: `u16::from_str` would take `+80`.
            Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                normal &= !p.starts_with('0');
                Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
            }
            Some(_) => return None,
        };
        Some(RequestHost { host, port, normal })
    }
}

/// Attacker-chosen text for an audit detail: escaped, and cut short.
fn shown(raw: &[u8]) -> String {
    const MAX: usize = 64;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(MAX)]);
    let more = if raw.len() > MAX { "…" } else { "" };
    format!("{text:?}{more}")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod host_tests;
