//! Property: whatever reading of a path a common server gives, if that
//! reading falls under a deny rule (first match), moat refuses the request.
//! The servers are small models written here, independent of moat's code.

use proptest::prelude::*;
use proptest::sample::select;

use super::*;

#[derive(Clone, Copy, PartialEq)]
enum Params {
    Kept,
    DroppedBeforeDecoding,
    DroppedAfterDecoding,
}

struct Server {
    name: &'static str,
    params: Params,
    /// Otherwise `%2F` is decoded and separates segments.
    encoded_slash_refused: bool,
    backslash_separates: bool,
    overlong_utf8: bool,
    merge_slashes: bool,
    /// Trailing dots and spaces trimmed, `::$DATA` dropped, 8.3 names.
    windows_names: bool,
    ignore_case: bool,
}

const fn server(name: &'static str, params: Params) -> Server {
    Server {
        name,
        params,
        encoded_slash_refused: true,
        backslash_separates: false,
        overlong_utf8: false,
        merge_slashes: true,
        windows_names: false,
        ignore_case: false,
    }
}

const IIS: Server = Server {
    backslash_separates: true,
    encoded_slash_refused: false,
    overlong_utf8: true,
    windows_names: true,
    ignore_case: true,
    ..server("iis", Params::Kept)
};

const SERVERS: [Server; 6] = [
    // nginx: decodes every escape (%2F separates), merges '//', resolves dots; case-sensitive, ;params kept.
    Server {
        encoded_slash_refused: false,
        ..server("nginx", Params::Kept)
    },
    // Apache httpd: decodes (%2F refused: AllowEncodedSlashes Off), resolves dots before merging '//' (MergeSlashes Off, <Location> before 2.4.39); case-sensitive.
    Server {
        merge_slashes: false,
        ..server("apache", Params::Kept)
    },
    // Tomcat, Jetty: drop ;params from each raw segment, then decode (%2F refused), merge '//', resolve dots; case-sensitive.
    server("tomcat", Params::DroppedBeforeDecoding),
    // A servlet stack behind a decoding front end: decodes first, then drops ;params.
    server("decode-then-strip", Params::DroppedAfterDecoding),
    // IIS: decodes (old versions: overlong UTF-8), '%2F' and '\' separate, merges, resolves dots; Windows trims trailing dots and spaces, drops ::$DATA, resolves 8.3 names; case-insensitive.
    IIS,
    // IIS 6: as IIS, and `a.asp;.jpg` runs as `a.asp` (everything from ';' dropped).
    Server {
        name: "iis6",
        params: Params::DroppedAfterDecoding,
        ..IIS
    },
];

/// The long names the modelled file system holds, for 8.3 short names.
const FILES: [&str; 4] = ["firmware", "admin", "api", "ok"];

fn drop_params(path: &str) -> String {
    let segs: Vec<&str> = path
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    segs.join("/")
}

fn decode(s: &Server, raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            let c = u8::from_str_radix(hex, 16).ok()?;
            if c == b'/' && s.encoded_slash_refused {
                return None;
            }
            out.push(c);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    if s.overlong_utf8 {
        // %c0%ae: a two-byte overlong encoding of '.'.
        let mut folded = Vec::new();
        let mut j = 0;
        while j < out.len() {
            if matches!(out[j], 0xc0 | 0xc1) && out.get(j + 1).is_some_and(|c| c & 0xc0 == 0x80) {
                folded.push(((out[j] & 0x1f) << 6) | (out[j + 1] & 0x3f));
                j += 2;
            } else {
                folded.push(out[j]);
                j += 1;
            }
        }
        out = folded;
    }
    if s.backslash_separates {
        out.iter_mut()
            .filter(|c| **c == b'\\')
            .for_each(|c| *c = b'/');
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn windows_name(seg: &str) -> String {
    let mut name = seg.to_string();
    for stream in ["::$data", ":$data"] {
        if name.to_ascii_lowercase().ends_with(stream) {
            name.truncate(name.len() - stream.len());
        }
    }
    let name = name.trim_end_matches(['.', ' ']).to_string();
    if let Some((prefix, n)) = name.split_once('~') {
        let lower = prefix.to_ascii_lowercase();
        if !prefix.is_empty() && n.starts_with(|c: char| c.is_ascii_digit()) {
            if let Some(long) = FILES.iter().find(|f| f.starts_with(&lower)) {
                return long.to_string();
            }
        }
    }
    name
}

/// The path `s` serves for `raw`, or None if it refuses the request.
fn read(s: &Server, raw: &str) -> Option<String> {
    let raw = match s.params {
        Params::DroppedBeforeDecoding => drop_params(raw),
        _ => raw.to_string(),
    };
    let mut text = decode(s, &raw)?;
    if s.params == Params::DroppedAfterDecoding {
        text = drop_params(&text);
    }
    let mut stack: Vec<String> = Vec::new();
    for seg in text.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                stack.pop();
            }
            "" if s.merge_slashes => {}
            seg => stack.push(seg.to_string()),
        }
    }
    let trailing = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    let mut out = String::new();
    // Whatever resolved the dots, the file system merges '//'.
    for seg in stack {
        let seg = if s.windows_names {
            windows_name(&seg)
        } else {
            seg
        };
        if !seg.is_empty() {
            out.push('/');
            out.push_str(&seg);
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Some(out)
}

type RuleSet = &'static [(RuleAction, &'static [&'static str], &'static str)];

const RULE_SETS: [RuleSet; 4] = {
    use RuleAction::{Allow, Deny};
    [
        // deny only
        &[
            (Deny, &[], "/firmware/*"),
            (Deny, &[], "/admin"),
            (Deny, &[], "/admin/*"),
        ],
        // allow some, deny the rest
        &[
            (Allow, &["GET"], "/ok"),
            (Allow, &["GET"], "/ok/*"),
            (Deny, &[], "*"),
        ],
        // deny with methods, an allowed exception first
        &[
            (Allow, &["GET"], "/firmware/ok"),
            (Deny, &["POST"], "/firmware/*"),
            (Deny, &["GET", "POST"], "/admin*"),
        ],
        // patterns with upper case and a sub-delimiter
        &[(Deny, &[], "/Admin/*"), (Deny, &["POST"], "/api/$batch")],
    ]
};

fn glob(p: &[u8], t: &[u8], fold: bool) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|k| glob(rest, &t[k..], fold)),
        Some((c, rest)) => match t.split_first() {
            Some((d, t)) if c == d || (fold && c.eq_ignore_ascii_case(d)) => glob(rest, t, fold),
            _ => false,
        },
    }
}

/// First match, by the model's own matcher.
fn model_denies(rules: RuleSet, method: &str, path: &str, fold: bool) -> bool {
    rules
        .iter()
        .find(|(_, m, pat)| {
            (m.is_empty() || m.contains(&method)) && glob(pat.as_bytes(), path.as_bytes(), fold)
        })
        .is_some_and(|(a, _, _)| *a == RuleAction::Deny)
}

fn moat_allows(rules: RuleSet, method: &str, raw: &str) -> bool {
    let p = policy(
        rules
            .iter()
            .map(|(action, methods, path)| RequestRule {
                action: *action,
                methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
                path: Glob::new(path).unwrap(),
                text: path.to_string(),
            })
            .collect(),
    );
    normalize_path(raw).is_ok_and(|path| check_rules(&p, &method.parse().unwrap(), &path).is_ok())
}

/// The servers whose reading of `raw` a rule denies.
fn deniers(rules: RuleSet, method: &str, raw: &str) -> Vec<String> {
    SERVERS
        .iter()
        .filter_map(|s| {
            let reading = read(s, raw)?;
            model_denies(rules, method, &reading, s.ignore_case)
                .then(|| format!("{} reads {reading:?}", s.name))
        })
        .collect()
}

const TRICKY: &[&str] = &[
    "/", "/", "/", ".", "..", ";", ";x=1", "%2e", "%2E", "%20", "%3b", "%3B", "%2f", "%5c", "\\",
    "%c0%ae", "~1", "%7e", "::$DATA", ":$DATA", "firmware", "FIRMWARE", "Firmware", "admin",
    "Admin", "ok", "OK", "api", "$batch", "%24batch", "%66", "a", "Z", "1", "_",
];

const WORDS: &[&str] = &[
    "firmware",
    "FIRMWARE",
    "%66irmware",
    "admin",
    "Admin",
    "ok",
    "OK",
    "api",
    "$batch",
    "%24batch",
    "x",
];

const DOTS: &[&str] = &[
    "",
    ".",
    "..",
    "%2e%2e",
    ".%2E",
    "%c0%ae%c0%ae",
    "..;",
    "..;x=1",
    ".;",
    ";x",
    "%2e%2e;",
];

const SUFFIXES: &[&str] = &[
    ".", "%2e", "%20", ";", ";x=1", "%3bx", "%3B", "::$DATA", ":$DATA", "~1", "%7e1", "%2f",
    "%2fx", "%5c", "\\", "%00", "%c0%af",
];

/// A segment: a word, a dot or empty segment, or a word with a suffix.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(WORDS).prop_map(str::to_string),
        3 => select(DOTS).prop_map(str::to_string),
        3 => (select(WORDS), select(SUFFIXES)).prop_map(|(w, s)| format!("{w}{s}")),
        1 => (select(&["FIRMWA", "Firm", "ADMIN", "adm"][..]), select(&["~1", "%7E2"][..]))
            .prop_map(|(w, s)| format!("{w}{s}")),
    ]
}

const PLAIN: &[&str] = &[
    "/", "/", "a", "z", "0", "9", "_", "-", "ok", "admin", "firmware", "api",
];

/// Cheap cases (a few microseconds each), so many: some forms take three
/// given segments in a row to show.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 100_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_any_server_reads_as_denied_is_refused(
        pieces in prop::collection::vec(select(TRICKY), 0..10),
        method in select(&["GET", "POST"][..]),
        set in 0..RULE_SETS.len(),
    ) {
        let raw = format!("/{}", pieces.concat());
        let rules = RULE_SETS[set];
        if moat_allows(rules, method, &raw) {
            let who = deniers(rules, method, &raw);
            prop_assert!(who.is_empty(), "moat allows {method} {raw:?} (rule set {set}); denied where {who:?}");
        }
    }

    #[test]
    fn what_any_server_reads_as_denied_is_refused_by_segments(
        segments in prop::collection::vec(segment(), 1..5),
        trailing in any::<bool>(),
        method in select(&["GET", "POST"][..]),
        set in 0..RULE_SETS.len(),
    ) {
        let raw = format!("/{}{}", segments.join("/"), if trailing { "/" } else { "" });
        let rules = RULE_SETS[set];
        // The normalised path is a fixed point: rules re-run on it (an open
        // WebSocket tunnel on a reload) see what the first check saw.
        if let Ok(path) = normalize_path(&raw) {
            let again = normalize_path(&path).map(|p| p.into_owned()).ok();
            prop_assert_eq!(again.as_deref(), Some(&*path));
        }
        if moat_allows(rules, method, &raw) {
            let who = deniers(rules, method, &raw);
            prop_assert!(who.is_empty(), "moat allows {method} {raw:?} (rule set {set}); denied where {who:?}");
        }
    }

    #[test]
    fn plain_paths_no_server_denies_are_allowed(
        pieces in prop::collection::vec(select(PLAIN), 0..10),
        method in select(&["GET", "POST"][..]),
        set in 0..RULE_SETS.len(),
    ) {
        let raw = format!("/{}", pieces.concat());
        let rules = RULE_SETS[set];
        if deniers(rules, method, &raw).is_empty() {
            prop_assert!(moat_allows(rules, method, &raw), "moat refuses {method} {raw:?} (rule set {set})");
        }
    }
}

/// The models themselves, on the forms the issue names, so a property that
/// passes does so with servers that really read these paths differently.
#[test]
fn the_models_read_the_issue_s_examples() {
    let r = |name: &str, raw: &str| read(SERVERS.iter().find(|s| s.name == name).unwrap(), raw);
    assert_eq!(
        r("tomcat", "/a/..;/firmware/x").as_deref(),
        Some("/firmware/x")
    );
    assert_eq!(
        r("nginx", "/a/..;/firmware/x").as_deref(),
        Some("/a/..;/firmware/x")
    );
    assert_eq!(r("iis", "/firmware./x").as_deref(), Some("/firmware/x"));
    assert_eq!(r("iis", "/firmware%20/x").as_deref(), Some("/firmware/x"));
    assert_eq!(r("iis", "/FIRMWA~1/x").as_deref(), Some("/firmware/x"));
    assert_eq!(
        r("iis", "/firmware/x::$DATA").as_deref(),
        Some("/firmware/x")
    );
    assert_eq!(
        r("iis", "/a/%c0%ae%c0%ae/firmware/x").as_deref(),
        Some("/firmware/x")
    );
    assert_eq!(
        r("decode-then-strip", "/firmware%3bx/y").as_deref(),
        Some("/firmware/y")
    );
    assert_eq!(
        r("tomcat", "/firmware%3bx/y").as_deref(),
        Some("/firmware;x/y")
    );
    assert_eq!(r("apache", "/admin//../x").as_deref(), Some("/admin/x"));
    assert_eq!(r("nginx", "/admin//../x").as_deref(), Some("/x"));
    assert_eq!(r("nginx", "/firmware%2fx").as_deref(), Some("/firmware/x"));
    assert_eq!(r("apache", "/firmware%2fx"), None);
    // And moat refuses each, or denies it under the deny-only rule set.
    for raw in [
        "/a/..;/firmware/x",
        "/firmware./x",
        "/firmware%20/x",
        "/firmware%2e/x",
        "/FIRMWA~1/x",
        "/firmware/x::$DATA",
        "/a/%c0%ae%c0%ae/firmware/x",
        "/firmware%3bx/y",
        "/admin//../x",
        "/firmware%2fx",
        "/FIRMWARE/x",
        "/firmware;v=2/x",
        "/a/;x/../firmware/x",
        "/a/.;/../firmware/x",
        // nginx: /firmware/y; Apache (no merging): /ok/firmware/y
        "/ok/x//../../firmware/y",
    ] {
        assert!(!deniers(RULE_SETS[0], "POST", raw).is_empty(), "{raw}");
        assert!(!moat_allows(RULE_SETS[0], "POST", raw), "{raw}");
    }
    assert!(!deniers(RULE_SETS[3], "POST", "/api/%24batch").is_empty());
    assert!(!moat_allows(RULE_SETS[3], "POST", "/api/%24batch"));
}
