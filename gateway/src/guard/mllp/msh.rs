//! The MSH segment: read, checked against the policy, and answered (the
//! ACK of a refused message). Pure functions over the message bytes.

use super::policy::{MllpPolicy, NameList};
use crate::controls::Reason;

/// MSH-1 … MSH-16: all a decision or an ACK needs.
const FIELDS: usize = 16;

/// The longest audit field taken from the wire.
const AUDIT_MAX: usize = crate::guard::WIRE_VALUE_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: u8,
    pub component: u8,
    pub repetition: u8,
    pub escape: u8,
    pub subcomponent: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MshError {
    /// The message does not start with `MSH`.
    NotMsh,
    /// MSH-1 and MSH-2 are not five distinct non-alphanumeric characters.
    Delimiters,
}

impl std::fmt::Display for MshError {
    // Says what is wrong, never quotes the message (patient data).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MshError::NotMsh => "the message does not start with an MSH segment",
            MshError::Delimiters => {
                "MSH-1 and MSH-2 are not a field separator and four distinct encoding characters"
            }
        })
    }
}

/// A parsed MSH segment, borrowing the message.
#[derive(Debug)]
pub struct Msh<'a> {
    pub delims: Delimiters,
    /// `fields[i]` is MSH-(i+1) for i >= 1 (`fields[0]` is "MSH").
    fields: [&'a [u8]; FIELDS],
}

/// Reads the MSH segment at the start of a message: up to the first CR
/// (or LF, which some senders use).
pub fn parse(message: &[u8]) -> Result<Msh<'_>, MshError> {
    let end = message
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(message.len());
    let segment = &message[..end];
    if !segment.starts_with(b"MSH") {
        return Err(MshError::NotMsh);
    }
    if segment.len() < 8 {
        return Err(MshError::Delimiters);
    }
    let chars = &segment[3..8];
    let delimiter = |b: u8| b.is_ascii_graphic() && !b.is_ascii_alphanumeric();
    let distinct = (0..5).all(|i| (i + 1..5).all(|j| chars[i] != chars[j]));
    if !chars.iter().all(|&b| delimiter(b)) || !distinct {
        return Err(MshError::Delimiters);
    }
    let delims = Delimiters {
        field: chars[0],
        component: chars[1],
        repetition: chars[2],
        escape: chars[3],
        subcomponent: chars[4],
    };
    let mut fields: [&[u8]; FIELDS] = [&[]; FIELDS];
    for (slot, field) in fields.iter_mut().zip(segment.split(|&b| b == delims.field)) {
        *slot = field;
    }
    // MSH-2 is the four encoding characters (a fifth, v2.7's truncation
    // character, is tolerated if it is a delimiter too).
    let encoding = fields[1];
    let fifth_ok = encoding
        .get(4)
        .map_or(true, |&b| delimiter(b) && !chars.contains(&b));
    if encoding.len() > 5 || !fifth_ok {
        return Err(MshError::Delimiters);
    }
    Ok(Msh { delims, fields })
}

impl<'a> Msh<'a> {
    /// MSH-n (n >= 2), empty if absent.
    pub fn field(&self, n: usize) -> &'a [u8] {
        match n {
            2..=FIELDS => self.fields[n - 1],
            _ => &[],
        }
    }

    /// Component `i` (0-based) of MSH-n, empty if absent.
    pub fn component(&self, n: usize, i: usize) -> &'a [u8] {
        self.field(n)
            .split(|&b| b == self.delims.component)
            .nth(i)
            .unwrap_or(&[])
    }

    /// Enhanced acknowledgment mode: MSH-15 or MSH-16 present.
    pub fn enhanced(&self) -> bool {
        !self.field(15).is_empty() || !self.field(16).is_empty()
    }

    /// The acknowledgment code of a refusal.
    pub fn refusal_code(&self) -> &'static str {
        if self.enhanced() {
            "CR"
        } else {
            "AR"
        }
    }
}

/// Why the policy refuses the message, or `None` to forward it. Sender,
/// then receiver, then type; names on their first component.
pub fn verdict(policy: &MllpPolicy, msh: &Msh<'_>) -> Option<Reason> {
    let admits = |list: &NameList, n: usize| match list {
        NameList::Any => true,
        // Policy names are printable ASCII: anything else never matches.
        NameList::Only(_) => std::str::from_utf8(msh.component(n, 0)).is_ok_and(|s| list.admits(s)),
    };
    if !admits(&policy.sending_applications, 3) || !admits(&policy.sending_facilities, 4) {
        return Some(Reason::Hl7Sender);
    }
    if !admits(&policy.receiving_applications, 5) || !admits(&policy.receiving_facilities, 6) {
        return Some(Reason::Hl7Receiver);
    }
    let code = std::str::from_utf8(msh.component(9, 0));
    let trigger = std::str::from_utf8(msh.component(9, 1));
    match (code, trigger) {
        (Ok(c), Ok(t)) if policy.admits_type(c, t) => None,
        _ => Some(Reason::Hl7MessageType),
    }
}

/// The ACK of a refused message (unframed), in the message's own
/// delimiters: sender and receiver swapped, MSA-2 = its MSH-10.
pub fn ack(msh: &Msh<'_>, reason: Reason, control_id: &str, timestamp: &str) -> Vec<u8> {
    let d = msh.delims;
    let f = [d.field];
    let mut out = Vec::with_capacity(256);
    let mut put = |parts: &[&[u8]]| {
        for p in parts {
            out.extend_from_slice(p);
        }
    };
    let version: &[u8] = match msh.field(12) {
        [] => b"2.5",
        v => v,
    };
    let processing: &[u8] = match msh.field(11) {
        [] => b"P",
        p => p,
    };
    put(&[b"MSH", &f, msh.field(2), &f]);
    put(&[
        msh.field(5),
        &f,
        msh.field(6),
        &f,
        msh.field(3),
        &f,
        msh.field(4),
        &f,
    ]);
    put(&[timestamp.as_bytes(), &f, &f]);
    put(&[
        b"ACK",
        &[d.component],
        msh.component(9, 1),
        &[d.component],
        b"ACK",
        &f,
    ]);
    put(&[control_id.as_bytes(), &f, processing, &f, version, b"\r"]);
    put(&[
        b"MSA",
        &f,
        msh.refusal_code().as_bytes(),
        &f,
        msh.field(10),
        &f,
    ]);
    escaped(&mut out, &format!("Message refused by moat ({reason})"), d);
    out.push(b'\r');
    out
}

/// Text in a field: delimiters become escape sequences.
fn escaped(out: &mut Vec<u8>, text: &str, d: Delimiters) {
    for &b in text.as_bytes() {
        let seq = match b {
            _ if b == d.field => b'F',
            _ if b == d.component => b'S',
            _ if b == d.repetition => b'R',
            _ if b == d.escape => b'E',
            _ if b == d.subcomponent => b'T',
            _ => {
                out.push(b);
                continue;
            }
        };
        out.extend_from_slice(&[d.escape, seq, d.escape]);
    }
}

pub use crate::guard::printable as sanitize;

/// What the audit trail says of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub control_id: String,
    /// `type^trigger` (`^` whatever the message's component separator).
    pub message_type: String,
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
}

impl Seen {
    pub fn of(msh: &Msh<'_>) -> Seen {
        let (code, trigger) = (msh.component(9, 0), msh.component(9, 1));
        let message_type = if trigger.is_empty() {
            sanitize(code)
        } else {
            let mut t = sanitize(code);
            t.push('^');
            t.push_str(&sanitize(trigger));
            t.truncate(AUDIT_MAX);
            t
        };
        Seen {
            control_id: sanitize(msh.field(10)),
            message_type,
            sending_application: sanitize(msh.component(3, 0)),
            sending_facility: sanitize(msh.component(4, 0)),
            receiving_application: sanitize(msh.component(5, 0)),
            receiving_facility: sanitize(msh.component(6, 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::mllp::{MessageTypeRule, DEFAULT_FRAME_TIMEOUT};
    use proptest::prelude::*;

    const ORU: &[u8] = b"MSH|^~\\&|LAB^1.2.3^ISO|HOSP|MON|ICU|20240102030405||ORU^R01^ORU_R01|MSG00001|P|2.5\rPID|1||12345\r";

    fn policy() -> MllpPolicy {
        let names = |l: &[&str]| NameList::parse(l.iter().copied()).unwrap();
        MllpPolicy {
            sending_applications: names(&["LAB"]),
            sending_facilities: names(&["HOSP"]),
            receiving_applications: names(&["MON"]),
            receiving_facilities: names(&["*"]),
            message_types: ["ORU^R01", "ADT"]
                .iter()
                .map(|t| MessageTypeRule::parse(t).unwrap())
                .collect(),
            max_message_bytes: 1024,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
        }
    }

    fn with(field: usize, value: &str) -> Vec<u8> {
        let s = std::str::from_utf8(ORU).unwrap();
        let (msh, rest) = s.split_once('\r').unwrap();
        let mut fields: Vec<&str> = msh.split('|').collect();
        while fields.len() < field {
            fields.push("");
        }
        fields[field - 1] = value;
        format!("{}\r{rest}", fields.join("|")).into_bytes()
    }

    #[test]
    fn fields_by_number() {
        let m = parse(ORU).unwrap();
        assert_eq!(m.delims.field, b'|');
        assert_eq!(m.delims.component, b'^');
        assert_eq!(m.field(2), b"^~\\&");
        assert_eq!(m.field(3), b"LAB^1.2.3^ISO");
        assert_eq!(m.component(3, 0), b"LAB");
        assert_eq!(m.component(9, 1), b"R01");
        assert_eq!(m.field(10), b"MSG00001");
        assert_eq!(m.field(12), b"2.5");
        assert_eq!(m.field(13), b"");
        assert_eq!(m.field(99), b"");
        assert!(!m.enhanced());
        // A LF ends the segment too.
        let lf = parse(b"MSH|^~\\&|A|B\nPID|x|y|z|w|v|u|t|s|r").unwrap();
        assert_eq!(lf.field(9), b"");
        assert_eq!(lf.field(4), b"B");
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            &b""[..],
            b"PID|1",
            b"\rMSH|^~\\&|A",
            b"MSH",
            b"MSH|^~\\",
            b"MSH|^~\\\r&|A",
            b"MSH|^~\\^|A",
            b"MSH|^~\\||A",
            b"MSHA^~\\&|A",
            b"MSH|^~\\a|A",
            b"MSH| ~\\&|A",
            b"MSH|^~\\&#$|A",
            b"MSH|^~\\&^|A",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(b"PID").unwrap_err(), MshError::NotMsh);
        assert!(parse(b"MSH|^~\\&").is_ok());
        // v2.7's truncation character.
        assert_eq!(parse(b"MSH|^~\\&#|A").unwrap().field(3), b"A");
    }

    #[test]
    fn decisions_in_order() {
        let p = policy();
        let v = |m: &[u8]| verdict(&p, &parse(m).unwrap());
        assert_eq!(v(ORU), None);
        assert_eq!(v(&with(3, "RIS")), Some(Reason::Hl7Sender));
        assert_eq!(v(&with(3, "lab")), Some(Reason::Hl7Sender));
        assert_eq!(v(&with(3, "")), Some(Reason::Hl7Sender));
        assert_eq!(v(&with(4, "OTHER")), Some(Reason::Hl7Sender));
        assert_eq!(v(&with(5, "PACS")), Some(Reason::Hl7Receiver));
        assert_eq!(v(&with(6, "ANY^thing")), None);
        assert_eq!(v(&with(9, "ORU^R30")), Some(Reason::Hl7MessageType));
        assert_eq!(v(&with(9, "ORU")), Some(Reason::Hl7MessageType));
        assert_eq!(v(&with(9, "ADT^A01")), None);
        assert_eq!(v(&with(9, "ADT")), None);
        assert_eq!(v(&with(9, "")), Some(Reason::Hl7MessageType));
        // Sender first, whatever else is wrong.
        let mut both = with(3, "RIS");
        both = {
            let m = std::str::from_utf8(&both)
                .unwrap()
                .replace("ORU^R01", "XYZ^Z01");
            m.into_bytes()
        };
        assert_eq!(v(&both), Some(Reason::Hl7Sender));
        // Names are not decoded: an escaped name does not match.
        assert_eq!(v(&with(3, "L\\E\\AB")), Some(Reason::Hl7Sender));
        // Non-ASCII never matches a listed name.
        let mut raw = ORU.to_vec();
        raw[9] = 0xC4;
        assert_eq!(v(&raw), Some(Reason::Hl7Sender));
    }

    #[test]
    fn refusal_ack_exact_bytes() {
        let m = parse(ORU).unwrap();
        let ack = ack(&m, Reason::Hl7Sender, "MOAT0001", "20250101120000");
        assert_eq!(
            std::str::from_utf8(&ack).unwrap(),
            "MSH|^~\\&|MON|ICU|LAB^1.2.3^ISO|HOSP|20250101120000||ACK^R01^ACK|MOAT0001|P|2.5\r\
             MSA|AR|MSG00001|Message refused by moat (hl7_sender)\r"
        );
    }

    #[test]
    fn refusal_ack_defaults_and_enhanced_mode() {
        let m = parse(b"MSH|^~\\&|A|B|C|D|||ADT^A01|X1").unwrap();
        assert_eq!(m.refusal_code(), "AR");
        let a = ack(&m, Reason::Hl7MessageType, "ID", "T");
        assert_eq!(
            a,
            b"MSH|^~\\&|C|D|A|B|T||ACK^A01^ACK|ID|P|2.5\rMSA|AR|X1|Message refused by moat (hl7_message_type)\r"
        );
        for enhanced in [
            &b"MSH|^~\\&|A|B|C|D|||ADT^A01|X1|T|2.4|||AL"[..],
            b"MSH|^~\\&|A|B|C|D|||ADT^A01|X1|T|2.4||||NE",
        ] {
            let m = parse(enhanced).unwrap();
            assert!(m.enhanced());
            let a = ack(&m, Reason::Hl7Receiver, "ID", "T");
            assert_eq!(
                a,
                b"MSH|^~\\&|C|D|A|B|T||ACK^A01^ACK|ID|T|2.4\rMSA|CR|X1|Message refused by moat (hl7_receiver)\r"
            );
        }
    }

    #[test]
    fn refusal_ack_in_the_message_delimiters() {
        // '_' as the subcomponent separator: the reason text escapes it.
        let m = parse(b"MSH#$*@_#LAB#H#MON#ICU#x##ORU$R01#C9#D#2.3").unwrap();
        let a = ack(&m, Reason::Hl7Sender, "ID", "T");
        assert_eq!(
            std::str::from_utf8(&a).unwrap(),
            "MSH#$*@_#MON#ICU#LAB#H#T##ACK$R01$ACK#ID#D#2.3\r\
             MSA#AR#C9#Message refused by moat (hl7@T@sender)\r"
        );
        assert_eq!(verdict(&policy(), &m), Some(Reason::Hl7Sender));
        assert_eq!(Seen::of(&m).message_type, "ORU^R01");
    }

    #[test]
    fn audit_fields_are_sanitised() {
        assert_eq!(sanitize(b"ok \x01\xff\x7f"), "ok ???");
        assert_eq!(sanitize(&[b'a'; 100]).len(), 64 + 3);
        let m = parse(ORU).unwrap();
        let s = Seen::of(&m);
        assert_eq!(s.control_id, "MSG00001");
        assert_eq!(s.message_type, "ORU^R01");
        assert_eq!(s.sending_application, "LAB");
        assert_eq!(s.receiving_facility, "ICU");
        let m = parse(b"MSH#$*@_#A#B#C#D#x##ADT#1").unwrap();
        assert_eq!(Seen::of(&m).message_type, "ADT");
    }

    proptest! {
        #[test]
        fn arbitrary_messages_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let p = policy();
            if let Ok(m) = parse(&data) {
                let _ = verdict(&p, &m);
                let a = ack(&m, Reason::Hl7Sender, "ID", "T");
                // The ACK is bounded by the message it answers.
                prop_assert!(a.len() <= data.len() + 128);
                let _ = Seen::of(&m);
            }
        }

        #[test]
        fn arbitrary_tails_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut data = b"MSH|^~\\&|".to_vec();
            data.extend_from_slice(&tail);
            let m = parse(&data).unwrap();
            let s = Seen::of(&m);
            for f in [&s.control_id, &s.message_type, &s.sending_application, &s.receiving_facility] {
                prop_assert!(f.len() <= 64 + 3 && f.bytes().all(|b| (0x20..0x7f).contains(&b)));
            }
            let _ = verdict(&policy(), &m);
        }
    }
}
