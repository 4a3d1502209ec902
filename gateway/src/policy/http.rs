//! The compiled L7 policy of an HTTP service: request rules and limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::config::schema::RuleAction;

#[derive(Debug)]
pub struct HttpPolicy {
    pub rules: Vec<RequestRule>,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub response_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Longest gap between pieces of a request body.
    pub body_read_timeout: Duration,
    /// Slowest average request body, bytes per second; 0: no minimum.
    pub min_body_rate: u64,
    /// The `Host` the device sees, when rewritten.
    pub host_rewrite: Option<String>,
    pub hardening_headers: bool,
    pub audit_allowed: bool,
    pub max_concurrent_streams: u32,
    /// TLS towards the device, if it speaks TLS at all.
    pub upstream_tls: Option<UpstreamTls>,
    /// The names a request's `Host` / `:authority` may carry.
    pub hosts: HostNames,
}

impl HttpPolicy {
    /// Everything that shapes request handling, as text: two policies with
    /// the same summary behave the same.
    pub fn summary(&self) -> String {
        let rules: Vec<&str> = self.rules.iter().map(|r| r.text.as_str()).collect();
        format!(
            "{rules:?} {} {} {} {:?} {:?} {:?} {:?} {} {} {} {:?} {:?}",
            self.max_body_bytes,
            self.max_header_bytes,
            self.max_headers,
            self.header_read_timeout,
            self.response_timeout,
            self.keepalive_timeout,
            self.host_rewrite,
            self.hardening_headers,
            self.audit_allowed,
            self.max_concurrent_streams,
            self.upstream_tls.as_ref().map(|t| &t.fingerprint),
            self.hosts,
        ) + &format!(" body {:?} {}", self.body_read_timeout, self.min_body_rate)
    }

    pub fn body_limits(&self) -> crate::proxy::client_body::BodyLimits {
        crate::proxy::client_body::BodyLimits {
            max_bytes: self.max_body_bytes,
            read_timeout: self.body_read_timeout,
            min_rate: self.min_body_rate,
        }
    }
}

/// The names a service answers to: a request naming anything else in its
/// `Host` or `:authority` is misdirected (421), and only a name from here
/// is ever forwarded to the device. Names are kept lower-case without a
/// trailing dot; ports are not part of a name (see
/// `controls::request::check_host`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNames {
    pub names: Vec<String>,
    /// `*.ward3.example` kept as `.ward3.example`: exactly one more label.
    pub wildcards: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Also the address the client connected to (a default list for a
    /// service listening on 0.0.0.0 or `::`).
    pub local_addr: bool,
}

impl HostNames {
    /// An explicit `hosts` list; each entry a DNS name, a `*.` wildcard or
    /// an IP address (unbracketed). The error names the bad entry.
    pub fn parse(entries: &[&str]) -> Result<HostNames, String> {
        let mut out = HostNames::default();
        for entry in entries {
            out.add(entry).ok_or_else(|| {
                format!("{entry:?} is not a DNS name, `*.` wildcard or IP address")
            })?;
        }
        Ok(out)
    }

    /// The default: the DNS names and IP addresses of the service's
    /// certificates, and the listen address (or, for 0.0.0.0 / `::`,
    /// whatever local address a client reached).
    pub fn default_for(
        certificates: &[crate::tls::LoadedCertificate],
        listen: SocketAddr,
    ) -> HostNames {
        let mut out = HostNames::default();
        for c in certificates {
            for name in &c.dns_names {
                // A SAN moat cannot read as a name never matches anyway.
                let _ = out.add(name);
            }
            for ip in &c.ip_addresses {
                out.push_ip(*ip);
            }
        }
        if listen.ip().is_unspecified() {
            out.local_addr = true;
        } else {
            out.push_ip(listen.ip());
        }
        out
    }

    pub fn extend(&mut self, other: HostNames) {
        self.names.extend(other.names);
        self.wildcards.extend(other.wildcards);
        other.ips.into_iter().for_each(|ip| self.push_ip(ip));
        self.local_addr |= other.local_addr;
    }

    fn push_ip(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }

    fn add(&mut self, entry: &str) -> Option<()> {
        let entry = entry.strip_suffix('.').unwrap_or(entry);
        if let Ok(ip) = entry.parse::<IpAddr>() {
            self.push_ip(ip);
            return Some(());
        }
        let lower = entry.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(parent) if parent.starts_with('.') && is_dns_name(&parent[1..]) => {
                self.wildcards.push(parent.to_string())
            }
            Some(_) => return None,
            None if is_dns_name(&lower) => self.names.push(lower),
            None => return None,
        }
        Some(())
    }

    /// Whether `name` (lower-case, no trailing dot, no port) is one of ours.
    pub fn admits_name(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.wildcards.iter().any(|w| {
                name.strip_suffix(w.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
    }

    /// Whether `ip` is one of ours; `local` is the address the client
    /// connected to.
    pub fn admits_ip(&self, ip: IpAddr, local: Option<IpAddr>) -> bool {
        let ip = ip.to_canonical();
        self.ips.contains(&ip) || (self.local_addr && local.map(|l| l.to_canonical()) == Some(ip))
    }
}

/// A DNS host name as moat accepts one in `Host`: dot-separated labels of
/// 1 to 63 letters, digits, `-` or `_`, 253 characters at most, and not all
/// digits and dots (that is an address, or a trick: `127.1`).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[derive(Debug)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Sent as SNI and verified; checked when the policy is compiled.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Changes whenever anything that shapes the connection changes, so
    /// the gateway knows when a pooled client must be replaced.
    pub fingerprint: String,
}

#[derive(Debug, Clone)]
pub struct RequestRule {
    pub action: RuleAction,
    /// Empty: any method.
    pub methods: Vec<Method>,
    pub path: Glob,
    /// As written, for the audit trail.
    pub text: String,
}

impl RequestRule {
    /// Whether the rule applies to `method`; its path is matched per
    /// reading (`controls::request::check_rules`).
    pub fn matches_method(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// A path pattern: `*` matches any run of characters, `/` included;
/// everything else matches itself. Kept as written, and matched either
/// case-sensitively or ignoring ASCII case, against the normalised path
/// (see `controls::request::normalize_path`), never the raw request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if !pattern.starts_with('/') && !pattern.starts_with('*') {
            return Err(format!("{pattern:?} must start with '/' or '*'"));
        }
        // Normalised paths spell each character one way: a pattern that
        // spells one otherwise would be a rule that never matches.
        let b = pattern.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'%' {
                let hex = pattern
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|d| matches!(d, b'0'..=b'9' | b'A'..=b'F')))
                    .ok_or_else(|| {
                        format!("{pattern:?}: write a percent-escape as %XX, upper-case hex")
                    })?;
                let e = u8::from_str_radix(hex, 16).expect("hex digits");
                if matches!(e, b'/' | b';') || refused_in_path(e) {
                    return Err(format!(
                        "{pattern:?} can never match: paths with %{hex} are refused (400)"
                    ));
                }
                if is_pchar(e) {
                    return Err(format!(
                        "{pattern:?}: write {:?} rather than %{hex}: rules see the normalised path",
                        e as char
                    ));
                }
                i += 3;
                continue;
            }
            if c >= 0x80 {
                return Err(format!(
                    "{pattern:?} can never match: paths beyond ASCII are refused (400)"
                ));
            }
            if refused_in_path(c) {
                return Err(format!(
                    "{pattern:?} can never match: paths with {:?} are refused (400)",
                    c as char
                ));
            }
            if !(c == b'/' || is_pchar(c)) {
                return Err(format!(
                    "{pattern:?}: write {:?} as %{c:02X}, as the normalised path spells it",
                    c as char
                ));
            }
            i += 1;
        }
        Ok(Glob(pattern.to_owned()))
    }

    pub fn matches(&self, path: &str) -> bool {
        glob_match::<false>(self.0.as_bytes(), path.as_bytes())
    }

    pub fn matches_ignoring_case(&self, path: &str) -> bool {
        glob_match::<true>(self.0.as_bytes(), path.as_bytes())
    }
}

/// Characters a normalised path carries as they are (RFC 3986 `pchar`
/// less `%`). Every other byte appears percent-encoded in upper-case hex,
/// so each character has exactly one spelling for the rules to match.
pub fn is_pchar(b: u8) -> bool {
    PCHAR[b as usize]
}

const PCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let others = b"-._~!$&'()*+,;=:@";
    let mut j = 0;
    while j < others.len() {
        t[others[j] as usize] = true;
        j += 1;
    }
    t
};

/// Bytes no normalised path holds, raw or encoded: requests with them are
/// refused before the rules (`controls::request::normalize_path`).
fn refused_in_path(b: u8) -> bool {
    matches!(b, b'\\' | b'%' | 0..=0x1f | 0x7f..)
}

/// Iterative wildcard match with single-star backtracking: linear in
/// practice, no recursion, no allocation.
fn glob_match<const FOLD: bool>(pattern: &[u8], text: &[u8]) -> bool {
    let same = |a: u8, b: u8| {
        if FOLD {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && same(pattern[p], text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests;
