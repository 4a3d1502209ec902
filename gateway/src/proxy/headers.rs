//! Header hygiene between client and device: what moat removes from a
//! request before the device sees it, and what it adds to a response.
//!
//! Removed from every client request, whatever its case or spelling of
//! value (names are matched lower-case, in one pass over the headers), and
//! with `_` read as `-`: CGI, PHP, WSGI (gunicorn, wsgiref) and many
//! embedded servers put `X_Original_URL` and `X-Original-URL` in the same
//! `HTTP_X_ORIGINAL_URL` variable:
//!
//! | group | names | why |
//! |---|---|---|
//! | hop-by-hop | `connection`, `keep-alive`, `te`, `trailer`, `transfer-encoding`, `upgrade`, `proxy-authorization`, `proxy-authenticate`, `proxy-connection`, and whatever `Connection` names | about one hop, not the message (RFC 9110 §7.6.1); `Upgrade` passes for a WebSocket |
//! | forwarding and client identity | `x-forwarded-*` (every one: `-for`, `-host`, `-proto`, `-port`, `-server`, `-prefix`, `-ssl`, `-client-cert` …), `x-forwarded`, `forwarded`, `forwarded-for`, `x-real-ip`, `true-client-ip`, `x-client-ip`, `client-ip`, `x-cluster-client-ip`, `cf-connecting-ip`, `cf-connecting-ipv6`, `fastly-client-ip`, `akamai-client-ip`, `x-originating-ip`, `x-remote-ip`, `x-remote-addr`, `x-proxyuser-ip`, `proxy-client-ip`, `wl-proxy-client-ip`, `x-azure-clientip`, `x-azure-socketip`, `x-appengine-user-ip`, `x-original-forwarded-for`, `x-host`, `x-original-host`, `x-http-host-override`, `front-end-https`, `x-url-scheme`, `x-envoy-*` | a device behind a proxy believes these about who the client is, which host and scheme it asked for and which path prefix it is under (Spring's `ForwardedHeaderFilter`, Rails/Rack, Express `trust proxy`, Envoy's `x-envoy-*`, IIS/ARR); only moat may say: it sets `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` itself |
//! | client certificate | `x-ssl-*`, `ssl-client-*`, `x-client-cert*`, `x-client-verify`, `x-client-dn`, `x-arr-clientcert`, `x-arr-ssl` | how TLS-terminating proxies pass the client's certificate (nginx/Apache conventions, Azure ARR): a device trusting them would take a typed-in certificate for a verified one |
//! | URL override | `x-original-url`, `x-rewrite-url`, `x-override-url`, `x-original-uri`, `x-original-path`, `x-rewrite-path`, `x-request-uri`, `x-http-destinationurl`, `x-proxy-url`, `x-envoy-original-path`, `x-envoy-original-url`, `script-name`, `x-script-name` | IIS URL Rewrite / ISAPI_Rewrite, and Symfony, Zend and Laravel before CVE-2018-14773, serve the path in these instead of the request line: `POST /ok` with `X-Original-URL: /firmware/x` would run past moat's path rules; gunicorn takes a `SCRIPT_NAME` header (and Flask's reverse-proxy recipe `X-Script-Name`) as a prefix cut off the path: `POST /ok/firmware/x` with `SCRIPT_NAME: /ok` runs `/firmware/x` |
//! | user identity | `remote-user`, `x-remote-user`, `x-auth-user`, `x-auth-request-user`, `x-authenticated-user`, `x-webauth-user`, and an `mfa` service's own `user_header` | how authenticating proxies tell a device who signed in (Apache `REMOTE_USER`, oauth2-proxy, Grafana's auth proxy): only moat may say, and only after a login |
//! | moat's cookies | `__Host-moat-session`, `__Host-moat-csrf` inside `Cookie` | the device never sees moat's secrets (browsers send cookies to every port of a host) |
//! | method override | `x-http-method-override`, `x-http-method`, `x-method-override` | Express `method-override`, Laravel/Symfony, Google APIs, OData: a `GET` carrying `DELETE` past the method rules (a `_method` form field is in the body, beyond moat's reach) |
//!
//! Responses lose hop-by-hop headers and any `Set-Cookie` of moat's own
//! cookie names (a device may not log people out or plant a CSRF nonce),
//! and gain the hardening headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers about one hop, not the message: never passed on.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Headers in which a client would speak for moat: who the client is,
/// which host, scheme or certificate it came with (see the table above).
pub fn is_forwarding(name: &HeaderName) -> bool {
    with_dashes(name, forwarding)
}

// The lists, lower-case and with `-` for `_`. They are data rather than
// `match` arms so that the first-letter gate below is derived from them
// and cannot fall out of step.

/// Whole families: `x-forwarded-anything-new` too.
const FORWARDING_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-envoy-",
    "x-ssl-",
    "ssl-client-",
    "x-client-cert",
];

const FORWARDING_NAMES: &[&str] = &[
    "x-forwarded",
    "forwarded",
    "forwarded-for",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "akamai-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "proxy-client-ip",
    "wl-proxy-client-ip",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-appengine-user-ip",
    "x-original-forwarded-for",
    "x-host",
    "x-original-host",
    "x-http-host-override",
    "front-end-https",
    "x-url-scheme",
    "x-client-verify",
    "x-client-dn",
    "x-arr-clientcert",
    "x-arr-ssl",
];

const URL_OVERRIDE_NAMES: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-original-path",
    "x-rewrite-path",
    "x-request-uri",
    "x-http-destinationurl",
    "x-proxy-url",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "script-name",
    "x-script-name",
];

const USER_IDENTITY_NAMES: &[&str] = &[
    "remote-user",
    "x-remote-user",
    "x-auth-user",
    "x-auth-request-user",
    "x-authenticated-user",
    "x-webauth-user",
];

use crate::controls::request::METHOD_OVERRIDE_NAMES;

/// Every list a client-asserted name is looked up in.
const CLIENT_ASSERTED: [&[&str]; 5] = [
    FORWARDING_PREFIXES,
    FORWARDING_NAMES,
    URL_OVERRIDE_NAMES,
    &METHOD_OVERRIDE_NAMES,
    USER_IDENTITY_NAMES,
];

/// The letters the names and prefixes of [`CLIENT_ASSERTED`] start with
/// (`a c f p r s t w x`): most fields a client sends (`host`,
/// `user-agent`, `accept`, `origin`, `if-none-match`) start otherwise and
/// pass with one lookup, not a comparison with each list.
static CLIENT_ASSERTED_FIRST: [bool; 256] = first_letters(&CLIENT_ASSERTED);

const fn first_letters(lists: &[&[&str]]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < lists.len() {
        let mut j = 0;
        while j < lists[i].len() {
            table[lists[i][j].as_bytes()[0] as usize] = true;
            j += 1;
        }
        i += 1;
    }
    table
}

fn forwarding(n: &str) -> bool {
    FORWARDING_PREFIXES.iter().any(|p| n.starts_with(p)) || FORWARDING_NAMES.contains(&n)
}

/// Headers that make a device serve another path than the request line's.
pub fn is_url_override(name: &HeaderName) -> bool {
    with_dashes(name, url_override)
}

fn url_override(n: &str) -> bool {
    URL_OVERRIDE_NAMES.contains(&n)
}

/// Headers that make a device run another method than the request line's.
pub fn is_method_override(name: &HeaderName) -> bool {
    with_dashes(name, method_override)
}

fn method_override(n: &str) -> bool {
    METHOD_OVERRIDE_NAMES.contains(&n)
}

fn user_identity(n: &str) -> bool {
    USER_IDENTITY_NAMES.contains(&n)
}

/// Everything a client may not send the device (besides hop-by-hop).
pub fn is_client_asserted(name: &HeaderName) -> bool {
    // (A name is never empty; a leading `_` is read as `-`, which no
    // list's name starts with.)
    let first = match name.as_str().as_bytes()[0] {
        b'_' => b'-',
        b => b,
    };
    CLIENT_ASSERTED_FIRST[usize::from(first)]
        && with_dashes(name, |n| {
            forwarding(n) || url_override(n) || method_override(n) || user_identity(n)
        })
}

/// Headers an `mfa` service's `user_header` may not be: those that frame
/// the message or that moat itself sets or judges.
pub fn is_reserved(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "host" | "cookie" | "set-cookie" | "content-length" | "content-type" | "authorization"
        )
        || with_dashes(name, |n| {
            forwarding(n) || url_override(n) || method_override(n)
        })
}

/// Removes every header that servers read as one of `names`: CGI, PHP
/// and WSGI read `-` and `_` alike (`X_Remote_User` is `X-Remote-User`),
/// whichever of the two the name itself was written with.
pub fn remove_any_spelling(headers: &mut HeaderMap, names: &[HeaderName]) {
    if names.is_empty() {
        return;
    }
    let alike = |a: &str, b: &str| {
        a.len() == b.len()
            && a.bytes().zip(b.bytes()).all(|(x, y)| {
                let dash = |c: u8| if c == b'_' { b'-' } else { c };
                dash(x) == dash(y)
            })
    };
    remove_matching(headers, |n| {
        names.iter().any(|w| alike(n.as_str(), w.as_str()))
    });
}

/// `picks` on the name with every `_` read as `-`, as servers that turn
/// headers into `HTTP_*` variables read it (allocates only for a name
/// with a `_`, which ordinary clients never send).
fn with_dashes(name: &HeaderName, picks: impl Fn(&str) -> bool) -> bool {
    let n = name.as_str();
    if n.contains('_') {
        picks(&n.replace('_', "-"))
    } else {
        picks(n)
    }
}

/// Removes the headers `doomed` picks. Most messages have none, or one
/// (a response's `Connection`): each is found by a pass over the names and
/// removed, and the search goes on, so nothing is collected or allocated
/// (cloning a standard name copies a tag).
pub fn remove_matching(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
}

/// What one pass over a message's fields found, after the hop-by-hop
/// headers are gone: which of the fields moat looks at next are there, so
/// that each later step that has nothing to do costs no lookup.
#[derive(Debug, Default)]
pub struct Fields {
    /// A `Cookie` field (request).
    pub cookie: bool,
    /// A `Set-Cookie` field (response).
    pub set_cookie: bool,
    hardening: Hardening,
}

/// Which of the hardening headers a response already carries.
#[derive(Debug, Default, Clone, Copy)]
struct Hardening {
    hsts: bool,
    nosniff: bool,
    frame_options: bool,
}

impl Hardening {
    fn note(&mut self, name: &HeaderName) {
        self.hsts |= name == header::STRICT_TRANSPORT_SECURITY;
        self.nosniff |= name == header::X_CONTENT_TYPE_OPTIONS;
        self.frame_options |= name == header::X_FRAME_OPTIONS;
    }
}

/// The pass itself: what must go, and what stays.
#[derive(Default)]
struct Survey {
    /// The names `Connection` lists besides `keep-alive` and `upgrade`
    /// (hop-by-hop anyway), as text: no `HeaderName` is built, and most
    /// messages list none, so nothing is allocated.
    named: Vec<String>,
    /// A `Connection` field.
    connection: bool,
    /// Any other field to remove.
    others: bool,
    fields: Fields,
}

impl Survey {
    fn of(headers: &HeaderMap, client_asserted: bool) -> Survey {
        let mut s = Survey::default();
        for (name, value) in headers {
            if name == header::CONNECTION {
                s.connection = true;
                connection_names(value, &mut s.named);
            } else if is_hop_by_hop(name) || (client_asserted && is_client_asserted(name)) {
                s.others = true;
            } else if name == header::COOKIE {
                s.fields.cookie = true;
            } else if name == header::SET_COOKIE {
                s.fields.set_cookie = true;
            } else {
                s.fields.hardening.note(name);
            }
        }
        // What `Connection` lists is removed: it is not there for the
        // steps after (a device's `Connection: X-Frame-Options` must not
        // keep moat's own `X-Frame-Options` out).
        for t in &s.named {
            let named = |h: HeaderName| t.eq_ignore_ascii_case(h.as_str());
            let f = &mut s.fields;
            f.cookie &= !named(header::COOKIE);
            f.set_cookie &= !named(header::SET_COOKIE);
            f.hardening.hsts &= !named(header::STRICT_TRANSPORT_SECURITY);
            f.hardening.nosniff &= !named(header::X_CONTENT_TYPE_OPTIONS);
            f.hardening.frame_options &= !named(header::X_FRAME_OPTIONS);
        }
        s
    }
}

/// Removes hop-by-hop headers, including any the `Connection` header names,
/// and (for requests) the client-asserted ones. For an upgrade,
/// `Connection: upgrade` and `Upgrade` must pass. Returns what the message
/// still holds.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, client_asserted: bool) -> Fields {
    let survey = Survey::of(headers, client_asserted);
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if survey.others || !survey.named.is_empty() {
        let named = &survey.named;
        remove_matching(headers, |name| {
            is_hop_by_hop(name)
                || named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
                || (client_asserted && is_client_asserted(name))
        });
    } else if survey.connection {
        // The common case of a device's answer (`Connection: keep-alive`
        // from nginx and most HTTP/1.1 servers): one removal, no search.
        headers.remove(header::CONNECTION);
    }
    if let Some(v) = upgrade_value {
        headers.insert(header::UPGRADE, v);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    survey.fields
}

/// Adds to `named` the headers one `Connection` value names.
fn connection_names(value: &HeaderValue, named: &mut Vec<String>) {
    let Ok(value) = value.to_str() else { return };
    for token in value.split(',').map(str::trim) {
        // (An empty token, from `a,,b`, names nothing.)
        if !token.is_empty()
            && !token.eq_ignore_ascii_case("keep-alive")
            && !token.eq_ignore_ascii_case("upgrade")
        {
            named.push(token.to_owned());
        }
    }
}

/// A device's answer made fit for the client: hop-by-hop headers out
/// (`upgrade` for a `101`), the hardening headers in when `hardening` is
/// `Some(tls)`, and no `Set-Cookie` of `own_cookies`. One pass over the
/// fields serves all three.
pub fn clean_response(
    headers: &mut HeaderMap,
    upgrade: bool,
    hardening: Option<bool>,
    own_cookies: &[&str],
) {
    let fields = strip_hop_by_hop(headers, upgrade, false);
    if let Some(tls) = hardening {
        add_hardening(headers, tls, fields.hardening);
    }
    if fields.set_cookie {
        strip_set_cookies(headers, own_cookies);
    }
}

/// Makes room in `headers` for `more` fields. `HeaderMap::reserve`
/// reallocates, and a reallocation copies the whole old allocation, its
/// unused slots too, into the new one: memory that has gone cold by the
/// time a request is proxied (docs/benchmarks.md, "Fourth pass"). Moving
/// the fields into a new map copies only the fields there are, in order.
pub fn make_room(headers: &mut HeaderMap, more: usize) {
    if headers.capacity() >= headers.len() + more {
        return;
    }
    let mut roomy = HeaderMap::with_capacity(headers.len() + more);
    // `Extend` takes the `(Option<HeaderName>, value)` shape `IntoIter`
    // yields: a repeated name's later values come with `None`.
    roomy.extend(std::mem::take(headers));
    *headers = roomy;
}

/// h2 clients send cookies as separate `cookie` fields (browsers split
/// them into crumbs for HPACK); before an HTTP/1.1 hop they must be one
/// line joined with `"; "` (RFC 9113 §8.2.3). Devices that read only the
/// first `Cookie` line, or join repeated lines with `,` (CGI, PHP, WSGI),
/// would lose the session otherwise.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes the device's `Set-Cookie` headers that would set or clear one
/// of `names` (moat's cookies): a device may not log a user out, plant a
/// CSRF nonce, or shadow moat's session. Cookie names are case-sensitive.
pub fn strip_set_cookies(headers: &mut HeaderMap, names: &[&str]) {
    let sets_ours = |v: &HeaderValue| {
        let mut parts = v.as_bytes().splitn(2, |&b| b == b'=');
        let name = parts.next().unwrap_or_default().trim_ascii();
        if name.is_empty() {
            // A nameless cookie (`=__Host-moat-session=x`): browsers
            // without the 2024 fix send it back as `__Host-moat-session=x`.
            // No device needs one that looks like a prefixed cookie.
            let rest = parts.next().unwrap_or_default().trim_ascii();
            let lower = rest.to_ascii_lowercase();
            return lower.starts_with(b"__host-")
                || lower.starts_with(b"__secure-")
                || names.iter().any(|n| rest.starts_with(n.as_bytes()));
        }
        names.iter().any(|n| n.as_bytes() == name)
    };
    if !headers.get_all(header::SET_COOKIE).iter().any(sets_ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !sets_ours(v))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// HSTS (over TLS), `nosniff` and `SAMEORIGIN`, unless the device set its own.
pub fn harden(headers: &mut HeaderMap, tls: bool) {
    let mut present = Hardening::default();
    for name in headers.keys() {
        present.note(name);
    }
    add_hardening(headers, tls, present);
}

/// The hardening headers that `present` says are missing, room for them
/// made at once.
fn add_hardening(headers: &mut HeaderMap, tls: bool, present: Hardening) {
    let hsts = tls && !present.hsts;
    let (nosniff, frame) = (!present.nosniff, !present.frame_options);
    headers.reserve(usize::from(hsts) + usize::from(nosniff) + usize::from(frame));
    if hsts {
        headers.append(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if nosniff {
        headers.append(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    if frame {
        headers.append(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
    }
}

/// The `Forwarded` element moat sends: `base` (`for=…;proto=…`) and the
/// validated host, quoted when it holds a `:` or `[` (RFC 7239 §4: those
/// are not token characters).
pub fn forwarded(base: &str, host: Option<&HeaderValue>) -> HeaderValue {
    let Some(h) = host.map(HeaderValue::as_bytes) else {
        return HeaderValue::from_str(base).unwrap_or(HeaderValue::from_static("invalid"));
    };
    // Built as bytes, once per request: no formatting machinery.
    let quoted = h.iter().any(|&b| b == b':' || b == b'[');
    let mut out = Vec::with_capacity(base.len() + h.len() + 8);
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(b";host=");
    if quoted {
        out.push(b'"');
    }
    out.extend_from_slice(h);
    if quoted {
        out.push(b'"');
    }
    HeaderValue::from_maybe_shared(hyper::body::Bytes::from(out))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests;
