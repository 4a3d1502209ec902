//! What a `[device.service.hl7]` table compiles to.

use std::time::Duration;

pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const MAX_MESSAGE_BYTES_CEILING: usize = 64 * 1024 * 1024;
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MllpPolicy {
    /// MSH-3, MSH-4, MSH-5, MSH-6: matched on their first component.
    pub sending_applications: NameList,
    pub sending_facilities: NameList,
    pub receiving_applications: NameList,
    pub receiving_facilities: NameList,
    /// MSH-9.
    pub message_types: Vec<MessageTypeRule>,
    /// The largest message between the frame bytes.
    pub max_message_bytes: usize,
    pub frame_timeout: Duration,
}

impl MllpPolicy {
    pub fn admits_type(&self, code: &str, trigger: &str) -> bool {
        self.message_types.iter().any(|r| r.admits(code, trigger))
    }
}

/// An allowlist of HL7 names: any (written `["*"]`), or these exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameList {
    Any,
    Only(Vec<String>),
}

impl NameList {
    pub fn admits(&self, name: &str) -> bool {
        match self {
            NameList::Any => true,
            NameList::Only(names) => names.iter().any(|n| n == name),
        }
    }

    /// Parses a list as written; `"*"` alone means any. On error, the
    /// index of the bad entry and why.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<NameList, (usize, String)> {
        let entries: Vec<&str> = entries.into_iter().collect();
        if entries.is_empty() {
            return Err((
                0,
                "an empty list admits nothing; list names, or write [\"*\"] for any".into(),
            ));
        }
        if entries == ["*"] {
            return Ok(NameList::Any);
        }
        for (i, e) in entries.iter().enumerate() {
            if *e == "*" {
                return Err((i, "\"*\" (any) must be the list's only entry".into()));
            }
            if let Some(why) = bad_name(e) {
                return Err((i, why));
            }
        }
        Ok(NameList::Only(
            entries.iter().map(|e| e.to_string()).collect(),
        ))
    }
}

/// A message type rule: "ORU^R01" (type and trigger), "ADT" or "ADT^*" (any
/// trigger of the type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTypeRule {
    pub code: String,
    /// `None`: any trigger event.
    pub trigger: Option<String>,
}

impl MessageTypeRule {
    pub fn parse(s: &str) -> Result<MessageTypeRule, String> {
        let (code, trigger) = match s.split_once('^') {
            None => (s, None),
            Some((c, "*")) => (c, None),
            Some((c, t)) => (c, Some(t)),
        };
        let well_formed = |p: &str| {
            !p.is_empty()
                && p.len() <= 8
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !well_formed(code) || !trigger.map_or(true, well_formed) {
            return Err(format!(
                "{s:?} is not a message type: write \"ORU^R01\" (type and trigger event) or \"ADT\" (any trigger)"
            ));
        }
        Ok(MessageTypeRule {
            code: code.to_string(),
            trigger: trigger.map(str::to_string),
        })
    }

    pub fn admits(&self, code: &str, trigger: &str) -> bool {
        self.code == code && self.trigger.as_deref().map_or(true, |t| t == trigger)
    }
}

/// Why an HL7 name cannot be matched (HD namespace ids: printable, no
/// delimiter characters), or `None`.
fn bad_name(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 227 {
        return Some(format!("{s:?}: a name is 1 to 227 characters"));
    }
    if s.bytes()
        .any(|b| !(0x20..0x7f).contains(&b) || b"|^~\\&".contains(&b))
    {
        return Some(format!(
            "{s:?}: printable characters only, none of | ^ ~ \\ &"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(NameList::parse(["*"]).unwrap(), NameList::Any);
        let l = NameList::parse(["LAB", "RIS"]).unwrap();
        assert!(l.admits("LAB") && !l.admits("lab") && !l.admits("LABX"));
        assert_eq!(NameList::parse(["LAB", "*"]).unwrap_err().0, 1);
        assert_eq!(NameList::parse(["LAB", "A^B"]).unwrap_err().0, 1);
        assert!(NameList::parse([]).is_err());
    }

    #[test]
    fn message_types() {
        let oru = MessageTypeRule::parse("ORU^R01").unwrap();
        assert!(oru.admits("ORU", "R01") && !oru.admits("ORU", "R30") && !oru.admits("ADT", "R01"));
        for any in ["ADT", "ADT^*"] {
            let adt = MessageTypeRule::parse(any).unwrap();
            assert!(adt.admits("ADT", "A01") && adt.admits("ADT", ""));
        }
        for bad in ["", "^R01", "ORU^", "OR|U", "ORU^R01^ORU_R01"] {
            assert!(MessageTypeRule::parse(bad).is_err(), "{bad}");
        }
    }
}
