//! What a `[device.service.dicom]` table compiles to.

use std::time::Duration;

use crate::config::schema::RefusedContexts;

/// The largest A-ASSOCIATE-RQ read (its whole PDU): 128 presentation
/// contexts with three transfer syntaxes each fit in a quarter of it.
pub const ASSOCIATE_RQ_CAP: usize = 64 * 1024;
pub const DEFAULT_MAX_PDU_LENGTH: u32 = 128 * 1024;
/// 4 KiB is the smallest maximum length dcmtk accepts; 4 MiB is far above
/// what any implementation uses and bounds what a PDU header can ask.
pub const MAX_PDU_LENGTH_RANGE: std::ops::RangeInclusive<u32> = 4096..=4 * 1024 * 1024;
pub const DEFAULT_ASSOCIATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomPolicy {
    /// The device's AE title, without padding.
    pub ae_title: String,
    /// Calling AE titles admitted, without padding.
    pub calling_ae_titles: Vec<String>,
    pub abstract_syntaxes: SyntaxList,
    pub refused_contexts: RefusedContexts,
    /// The largest PDU a client may send; the maximum lengths announced in
    /// the association are clamped to it.
    pub max_pdu_length: u32,
    pub association_timeout: Duration,
}

impl DicomPolicy {
    pub fn admits_calling(&self, ae: &str) -> bool {
        self.calling_ae_titles.iter().any(|a| a == ae)
    }
}

/// Named groups of SOP classes: exact UIDs, and prefixes (ending in '.').
const GROUPS: &[(&str, &[&str])] = &[
    ("verification", &["1.2.840.10008.1.1"]),
    (
        "storage",
        &[
            // Every "... Storage" SOP class of PS3.4 Annex B lives here,
            "1.2.840.10008.5.1.4.1.1.",
            // but for these few (RT delivery instructions, hanging
            // protocols, color palettes, implant templates).
            "1.2.840.10008.5.1.4.34.",
            "1.2.840.10008.5.1.4.38.1",
            "1.2.840.10008.5.1.4.39.1",
            "1.2.840.10008.5.1.4.43.1",
            "1.2.840.10008.5.1.4.44.1",
            "1.2.840.10008.5.1.4.45.1",
        ],
    ),
    (
        "find",
        &[
            "1.2.840.10008.5.1.4.1.2.1.1",
            "1.2.840.10008.5.1.4.1.2.2.1",
            "1.2.840.10008.5.1.4.1.2.3.1",
        ],
    ),
    (
        "move",
        &[
            "1.2.840.10008.5.1.4.1.2.1.2",
            "1.2.840.10008.5.1.4.1.2.2.2",
            "1.2.840.10008.5.1.4.1.2.3.2",
        ],
    ),
    (
        "get",
        &[
            "1.2.840.10008.5.1.4.1.2.1.3",
            "1.2.840.10008.5.1.4.1.2.2.3",
            "1.2.840.10008.5.1.4.1.2.3.3",
        ],
    ),
    ("worklist", &["1.2.840.10008.5.1.4.31"]),
    ("storage-commitment", &["1.2.840.10008.1.20.1"]),
    ("mpps", &["1.2.840.10008.3.1.2.3.3"]),
];

/// The default `abstract_syntaxes`: echo and store, nothing that queries
/// or makes the device open an association outward (C-MOVE).
pub const DEFAULT_SYNTAXES: &[&str] = &["verification", "storage"];

/// The SOP classes a presentation context may propose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyntaxList {
    exact: Vec<String>,
    prefixes: Vec<String>,
    /// The entries as written (names, UIDs, prefixes), for reports.
    pub written: Vec<String>,
}

impl SyntaxList {
    /// Parses entries: a group name, a UID, or a UID prefix ending ".*".
    /// On error, the index of the bad entry and why.
    pub fn parse<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<SyntaxList, (usize, String)> {
        let mut list = SyntaxList::default();
        for (i, entry) in entries.into_iter().enumerate() {
            list.written.push(entry.to_string());
            if let Some((_, uids)) = GROUPS.iter().find(|(name, _)| *name == entry) {
                for uid in *uids {
                    if uid.ends_with('.') {
                        list.prefixes.push(uid.to_string());
                    } else {
                        list.exact.push(uid.to_string());
                    }
                }
            } else if let Some(prefix) = entry.strip_suffix(".*") {
                if !is_uid(prefix) {
                    return Err((
                        i,
                        format!("{entry:?} is not a UID prefix (digits and dots, then \".*\")"),
                    ));
                }
                list.prefixes.push(format!("{prefix}."));
            } else if is_uid(entry) {
                list.exact.push(entry.to_string());
            } else {
                let names: Vec<&str> = GROUPS.iter().map(|(n, _)| *n).collect();
                return Err((
                    i,
                    format!(
                        "{entry:?} is neither a SOP class UID nor one of {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(list)
    }

    pub fn default_list() -> SyntaxList {
        SyntaxList::parse(DEFAULT_SYNTAXES.iter().copied()).expect("the defaults parse")
    }

    /// Whether a proposed abstract syntax (a UID, padding removed) is
    /// admitted.
    pub fn admits(&self, uid: &str) -> bool {
        self.exact.iter().any(|u| u == uid)
            || self.prefixes.iter().any(|p| uid.starts_with(p.as_str()))
    }
}

/// A DICOM UID (PS3.5 9.1): at most 64 characters, components of digits
/// separated by dots, no leading zero in a component of more than one digit.
pub fn is_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

/// Whether `s` may be an AE title (PS3.5 VR AE): 1 to 16 characters of
/// printable ASCII other than backslash, not only spaces. Leading and
/// trailing spaces are not significant (the caller trims them).
pub fn is_ae_title(s: &str) -> bool {
    !s.trim().is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admits_echo_and_storage_not_query_or_retrieve() {
        let l = SyntaxList::default_list();
        assert!(l.admits("1.2.840.10008.1.1"));
        assert!(l.admits("1.2.840.10008.5.1.4.1.1.2")); // CT Image Storage
        assert!(l.admits("1.2.840.10008.5.1.4.1.1.7")); // Secondary Capture
        for refused in [
            "1.2.840.10008.5.1.4.1.2.2.1", // Study Root FIND
            "1.2.840.10008.5.1.4.1.2.2.2", // Study Root MOVE
            "1.2.840.10008.5.1.4.1.2.2.3", // Study Root GET
            "1.2.840.10008.5.1.4.31",      // worklist
            "1.2.840.10008.1.1.1",         // not Verification
        ] {
            assert!(!l.admits(refused), "{refused}");
        }
    }

    #[test]
    fn entries_parse_or_name_the_bad_one() {
        let l = SyntaxList::parse(["find", "1.2.3.*", "1.2.840.10008.5.1.4.1.2.2.2"]).unwrap();
        assert!(l.admits("1.2.840.10008.5.1.4.1.2.1.1"));
        assert!(l.admits("1.2.3.4"));
        assert!(!l.admits("1.2.30"));
        assert!(l.admits("1.2.840.10008.5.1.4.1.2.2.2"));
        assert_eq!(SyntaxList::parse(["storage", "stroage"]).unwrap_err().0, 1);
        assert!(SyntaxList::parse(["1.02.3"]).is_err());
        assert!(SyntaxList::parse(["1.2.*.*"]).is_err());
    }

    #[test]
    fn ae_titles() {
        assert!(is_ae_title("CT_SCANNER"));
        assert!(is_ae_title("STORESCU"));
        assert!(!is_ae_title(""));
        assert!(!is_ae_title("    "));
        assert!(!is_ae_title("A\\B"));
        assert!(!is_ae_title("SEVENTEEN_CHARSXX"));
        assert!(!is_ae_title("TAB\tX"));
    }
}
