//! The compiled L7 policy of an HTTP service: request rules and limits.

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
    /// The `Host` the device sees, when rewritten.
    pub host_rewrite: Option<String>,
    pub hardening_headers: bool,
    pub audit_allowed: bool,
    pub max_concurrent_streams: u32,
    /// TLS towards the device, if it speaks TLS at all.
    pub upstream_tls: Option<UpstreamTls>,
}

impl HttpPolicy {
    /// Everything that shapes request handling, as text: two policies with
    /// the same summary behave the same.
    pub fn summary(&self) -> String {
        let rules: Vec<&str> = self.rules.iter().map(|r| r.text.as_str()).collect();
        format!(
            "{rules:?} {} {} {} {:?} {:?} {:?} {:?} {} {} {} {:?}",
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
        )
    }
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
    pub fn matches_method(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Method and path, the path case-sensitively.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.matches_method(method) && self.path.matches(path)
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
