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
    // Usually already in normal form: share the client's bytes.
    if parsed.normal && host.is_some() {
        return Ok(host.cloned());
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
mod host_tests;
