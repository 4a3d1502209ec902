//! One audit line as an RFC 5424 syslog message, framed for RFC 5425
//! (octet counting: `LEN SP MSG`).

use std::borrow::Cow;
use std::time::SystemTime;

use serde::Deserialize;

/// The SD-ID of moat's structured data. 32473 is the private enterprise
/// number RFC 5612 reserves for documentation; a hospital with its own PEN
/// changes it here (and in its SIEM's parser).
pub const SD_ID: &str = "moat@32473";

/// RFC 5424 limits.
const MAX_MSGID: usize = 32;

/// RFC 5424 severities used by moat.
pub const ALERT: u8 = 1;
pub const ERROR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFORMATIONAL: u8 = 6;

/// The syslog facilities by name (RFC 5424, 6.2.1), numbered by position.
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

pub fn facility_by_name(name: &str) -> Option<u8> {
    FACILITIES.iter().position(|f| *f == name).map(|i| i as u8)
}

/// The fields of an audit line that go into the structured data (and
/// decide the severity). Anything else stays in the JSON MSG only.
#[derive(Debug, Default, Deserialize)]
pub struct Keys<'a> {
    #[serde(borrow, default)]
    pub event: Option<Cow<'a, str>>,
    #[serde(default)]
    pub hash: Option<Scalar>,
    #[serde(default)]
    pub device: Option<Scalar>,
    #[serde(default)]
    pub service: Option<Scalar>,
    #[serde(default)]
    pub client: Option<Scalar>,
    #[serde(default)]
    pub reason: Option<Scalar>,
    #[serde(default)]
    pub user: Option<Scalar>,
    #[serde(default)]
    pub decision: Option<Scalar>,
}

/// A JSON value kept only when it is a string or a number (an object
/// under a key name we use elsewhere is simply left out of the SD).
#[derive(Debug)]
pub struct Scalar(pub Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Scalar(match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }))
    }
}

impl Scalar {
    fn get(v: &Option<Scalar>) -> Option<&str> {
        v.as_ref().and_then(|s| s.0.as_deref())
    }
}

impl<'a> Keys<'a> {
    pub fn parse(line: &'a [u8]) -> Keys<'a> {
        serde_json::from_slice(line).unwrap_or_default()
    }

    pub fn event(&self) -> &str {
        self.event.as_deref().unwrap_or("")
    }
}

/// The severity of an event (the table in docs/siem.md).
pub fn severity(keys: &Keys<'_>) -> u8 {
    let denied = Scalar::get(&keys.reason).is_some()
        || matches!(Scalar::get(&keys.decision), Some("denied" | "refused"));
    match keys.event() {
        "break_glass_used" => ALERT,
        "reload_rejected" | "siem_events_dropped" => ERROR,
        "connection_denied" | "connection_revoked" | "guard_violation" | "auth_failed"
        | "auth_lockout" | "denials_suppressed" => WARNING,
        "http_request" | "dicom_association" | "hl7_message" if denied => WARNING,
        "connection_allowed" | "connection_closed" | "http_request" | "dicom_association"
        | "hl7_message" => INFORMATIONAL,
        _ => NOTICE,
    }
}

/// `PRI` = facility × 8 + severity.
pub fn pri(facility: u8, severity: u8) -> u8 {
    facility * 8 + severity
}

/// Escapes an SD-PARAM value (RFC 5424, 6.3.3): `"`, `\` and `]`.
pub fn escape_param(value: &str, out: &mut Vec<u8>) {
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// What identifies the sender, fixed for the process.
pub struct Header<'a> {
    pub facility: u8,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: u32,
}

/// Formats one message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
/// [moat@32473 seq="N" ...] MSG`, MSG being the audit line byte for byte.
pub fn message(h: &Header<'_>, at: SystemTime, seq: u64, line: &[u8]) -> Vec<u8> {
    let keys = Keys::parse(line);
    let mut out = Vec::with_capacity(line.len() + 256);
    let ts = humantime::format_rfc3339_millis(at).to_string();
    let msgid = msgid(keys.event());
    out.extend_from_slice(
        format!(
            "<{}>1 {ts} {} {} {} {msgid} [{SD_ID} seq=\"{seq}\"",
            pri(h.facility, severity(&keys)),
            h.hostname,
            h.app_name,
            h.procid
        )
        .as_bytes(),
    );
    let params = [
        ("hash", &keys.hash),
        ("device", &keys.device),
        ("service", &keys.service),
        ("client", &keys.client),
        ("reason", &keys.reason),
        ("user", &keys.user),
    ];
    for (name, value) in params {
        if let Some(v) = Scalar::get(value) {
            out.extend_from_slice(format!(" {name}=\"").as_bytes());
            escape_param(v, &mut out);
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"] ");
    out.extend_from_slice(line);
    out
}

/// MSGID: the event name, within RFC 5424's 32 printable ASCII characters
/// (`-`, the NILVALUE, when there is none).
fn msgid(event: &str) -> Cow<'_, str> {
    let ok = |b: u8| (33..=126).contains(&b);
    if event.is_empty() {
        return "-".into();
    }
    if event.len() <= MAX_MSGID && event.bytes().all(ok) {
        return event.into();
    }
    event
        .bytes()
        .filter(|b| ok(*b))
        .take(MAX_MSGID)
        .map(char::from)
        .collect::<String>()
        .into()
}

/// RFC 5425 octet-counting framing: `LEN SP MSG`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    out.extend_from_slice(message.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
    out
}

/// Reads the `LEN SP` of a frame at the start of `bytes`: (header length,
/// message length). `None` while incomplete; `Err` when it is no header.
pub(super) fn parse_frame_header(bytes: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    for (i, b) in bytes.iter().enumerate().take(11) {
        match b {
            b'0'..=b'9' => {}
            b' ' if i > 0 => {
                let len = std::str::from_utf8(&bytes[..i])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or(())?;
                return Ok(Some((i + 1, len)));
            }
            _ => return Err(()),
        }
    }
    if bytes.len() > 10 {
        Err(())
    } else {
        Ok(None)
    }
}

/// RFC 5424 HOSTNAME and APP-NAME: printable US-ASCII, no space.
pub fn is_header_field(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
}
