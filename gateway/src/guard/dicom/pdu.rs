//! DICOM upper layer PDUs (PS3.8 9.3): pure parsers and encoders over
//! bytes. Parsers never panic and allocate only in proportion to the bytes
//! they were given; every inconsistency is a [`Violation`].

use crate::controls::{Denial, Reason};

/// Every PDU starts with type, reserved, and a big-endian u32 length.
pub const HEADER_LEN: usize = 6;
/// A PDV item header inside P-DATA: u32 length, context id, control header.
pub const PDV_HEADER_LEN: usize = 6;

pub const ASSOCIATE_RQ: u8 = 0x01;
pub const ASSOCIATE_AC: u8 = 0x02;
pub const ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const RELEASE_RQ: u8 = 0x05;
pub const RELEASE_RP: u8 = 0x06;
pub const ABORT: u8 = 0x07;

/// The only application context name DICOM defines.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

const ITEM_APPLICATION_CONTEXT: u8 = 0x10;
const ITEM_PROPOSED_CONTEXT: u8 = 0x20;
const ITEM_CONTEXT_RESULT: u8 = 0x21;
const ITEM_ABSTRACT_SYNTAX: u8 = 0x30;
const ITEM_TRANSFER_SYNTAX: u8 = 0x40;
const ITEM_USER_INFO: u8 = 0x50;
const SUB_MAX_LENGTH: u8 = 0x51;

/// Protocol version, reserved, two AE titles, 32 reserved bytes: what an
/// A-ASSOCIATE-RQ or -AC body holds before its items.
const FIXED_LEN: usize = 68;

/// A-ASSOCIATE-RJ result, source and reason values (PS3.8 table 9-21).
pub mod rj {
    pub const PERMANENT: u8 = 1;
    pub const TRANSIENT: u8 = 2;
    pub const SERVICE_USER: u8 = 1;
    pub const PROVIDER_ACSE: u8 = 2;
    pub const PROVIDER_PRESENTATION: u8 = 3;
    pub const NO_REASON: u8 = 1;
    pub const APPLICATION_CONTEXT: u8 = 2;
    pub const CALLING_AE: u8 = 3;
    pub const CALLED_AE: u8 = 7;
    /// Service-provider ACSE: protocol version not supported.
    pub const PROTOCOL_VERSION: u8 = 2;
    /// Service-provider presentation: temporary congestion.
    pub const CONGESTION: u8 = 1;
}

/// A-ABORT source and reason values (PS3.8 table 9-26).
pub mod abort {
    pub const PROVIDER: u8 = 2;
    pub const NOT_SPECIFIED: u8 = 0;
    pub const UNRECOGNIZED_PDU: u8 = 1;
    pub const UNEXPECTED_PDU: u8 = 2;
    pub const INVALID_PARAMETER: u8 = 6;
}

/// A-ASSOCIATE-AC result of a presentation context: acceptance, and
/// abstract-syntax-not-supported (what moat answers for a dropped one).
pub const RESULT_ACCEPTANCE: u8 = 0;
pub const RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED: u8 = 3;

/// A PDU that breaks the protocol, with the A-ABORT reason it is answered
/// with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: Reason,
    pub abort_reason: u8,
    pub detail: String,
}

impl Violation {
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(
            Reason::DicomMalformed,
            abort::INVALID_PARAMETER,
            detail.into(),
        )
    }
    /// A PDU type PS3.8 does not define.
    pub fn unrecognized(kind: u8) -> Self {
        Self::new(
            Reason::DicomMalformed,
            abort::UNRECOGNIZED_PDU,
            format!("unknown PDU type 0x{kind:02x}"),
        )
    }
    /// A defined PDU type where the protocol does not allow it.
    pub fn unexpected(kind: u8, when: &str) -> Self {
        Self::new(
            Reason::DicomUnexpectedPdu,
            abort::UNEXPECTED_PDU,
            format!("{} {when}", type_name(kind)),
        )
    }
    pub fn too_large(kind: u8, length: u32, cap: usize) -> Self {
        Self::new(
            Reason::DicomPduTooLarge,
            abort::INVALID_PARAMETER,
            format!("{} of {length} bytes, above {cap}", type_name(kind)),
        )
    }
    pub fn context(id: u8) -> Self {
        Self::new(
            Reason::DicomPresentationContext,
            abort::INVALID_PARAMETER,
            format!("P-DATA on presentation context {id}, which is not accepted"),
        )
    }
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(Reason::DicomTimeout, abort::NOT_SPECIFIED, detail.into())
    }
    fn new(reason: Reason, abort_reason: u8, detail: String) -> Self {
        Violation {
            reason,
            abort_reason,
            detail,
        }
    }
    pub fn denial(&self) -> Denial {
        Denial::with_detail(self.reason, self.detail.clone())
    }
    /// The A-ABORT that answers it.
    pub fn abort_pdu(&self) -> [u8; 10] {
        abort_pdu(abort::PROVIDER, self.abort_reason)
    }
}

pub fn type_name(kind: u8) -> &'static str {
    match kind {
        ASSOCIATE_RQ => "A-ASSOCIATE-RQ",
        ASSOCIATE_AC => "A-ASSOCIATE-AC",
        ASSOCIATE_RJ => "A-ASSOCIATE-RJ",
        P_DATA_TF => "P-DATA-TF",
        RELEASE_RQ => "A-RELEASE-RQ",
        RELEASE_RP => "A-RELEASE-RP",
        ABORT => "A-ABORT",
        _ => "unknown PDU",
    }
}

pub fn is_known_type(kind: u8) -> bool {
    (ASSOCIATE_RQ..=ABORT).contains(&kind)
}

/// A PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduHeader {
    pub kind: u8,
    pub length: u32,
}

impl From<[u8; HEADER_LEN]> for PduHeader {
    fn from(h: [u8; HEADER_LEN]) -> Self {
        PduHeader {
            kind: h[0],
            length: u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
        }
    }
}

/// An A-ASSOCIATE-RJ PDU.
pub fn associate_rj(result: u8, source: u8, reason: u8) -> [u8; 10] {
    [ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, result, source, reason]
}

/// An A-ABORT PDU.
pub fn abort_pdu(source: u8, reason: u8) -> [u8; 10] {
    [ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason]
}

pub use crate::guard::printable as sanitize;

/// An AE title field without its padding (leading and trailing spaces;
/// trailing NULs, which some implementations pad with).
pub fn ae_trimmed(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    let field = &field[..end];
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    &field[start..]
}

/// One item (or sub-item) of the variable part: type, reserved, u16 length.
#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    kind: u8,
    value: &'a [u8],
    /// The whole item, header included, for forwarding it verbatim.
    whole: &'a [u8],
}

struct Items<'a> {
    rest: &'a [u8],
    within: &'static str,
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<Item<'a>, Violation>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let Some(&[kind, _, hi, lo]) = rest.get(..4) else {
            return Some(Err(Violation::malformed(format!(
                "{} ends inside an item header",
                self.within
            ))));
        };
        let len = u16::from_be_bytes([hi, lo]) as usize;
        let Some(whole) = rest.get(..4 + len) else {
            return Some(Err(Violation::malformed(format!(
                "item 0x{kind:02x} of {len} bytes overruns its {}",
                self.within
            ))));
        };
        self.rest = &rest[4 + len..];
        Some(Ok(Item {
            kind,
            value: &whole[4..],
            whole,
        }))
    }
}

fn items<'a>(bytes: &'a [u8], within: &'static str) -> Items<'a> {
    Items {
        rest: bytes,
        within,
    }
}

/// A UID item value: trailing NUL or space padding removed, and a UID.
fn uid(value: &[u8], what: &str) -> Result<String, Violation> {
    let end = value
        .iter()
        .rposition(|&b| b != 0 && b != b' ')
        .map_or(0, |i| i + 1);
    let trimmed = &value[..end];
    match std::str::from_utf8(trimmed) {
        Ok(s) if super::is_uid(s) => Ok(s.to_string()),
        _ => Err(Violation::malformed(format!(
            "{what} {:?} is not a UID",
            sanitize(trimmed)
        ))),
    }
}

/// The user information item: the maximum length, and every other
/// sub-item verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub max_length: Option<u32>,
    others: Vec<u8>,
}

impl UserInfo {
    fn parse(value: &[u8]) -> Result<UserInfo, Violation> {
        let mut info = UserInfo::default();
        for sub in items(value, "user information item") {
            let sub = sub?;
            if sub.kind != SUB_MAX_LENGTH {
                info.others.extend_from_slice(sub.whole);
                continue;
            }
            let Ok(v) = <[u8; 4]>::try_from(sub.value) else {
                return Err(Violation::malformed(
                    "maximum length sub-item is not 4 bytes",
                ));
            };
            if info.max_length.replace(u32::from_be_bytes(v)).is_some() {
                return Err(Violation::malformed("two maximum length sub-items"));
            }
        }
        // Room for the maximum length sub-item, which encode always writes.
        if info.others.len() + 8 > u16::MAX as usize {
            return Err(Violation::malformed("user information item too long"));
        }
        Ok(info)
    }

    /// The item, with the maximum length sub-item first and set to `max_length`.
    fn encode(&self, max_length: u32, out: &mut Vec<u8>) {
        let len = (8 + self.others.len()) as u16;
        out.extend_from_slice(&[ITEM_USER_INFO, 0]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[SUB_MAX_LENGTH, 0, 0, 4]);
        out.extend_from_slice(&max_length.to_be_bytes());
        out.extend_from_slice(&self.others);
    }
}

/// A maximum length as forwarded: what was announced (0 or absent =
/// unlimited), at most `cap`.
pub fn clamp_max_length(announced: Option<u32>, cap: u32) -> u32 {
    match announced {
        None | Some(0) => cap,
        Some(n) => n.min(cap),
    }
}

/// The fixed part of an A-ASSOCIATE-RQ or -AC body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fixed {
    bytes: [u8; FIXED_LEN],
}

impl Fixed {
    fn parse<'a>(body: &'a [u8], pdu: &str) -> Result<(Fixed, &'a [u8]), Violation> {
        let Some(fixed) = body.get(..FIXED_LEN) else {
            return Err(Violation::malformed(format!(
                "{pdu} of {} bytes, shorter than its fixed fields",
                body.len()
            )));
        };
        let mut bytes = [0; FIXED_LEN];
        bytes.copy_from_slice(fixed);
        Ok((Fixed { bytes }, &body[FIXED_LEN..]))
    }
    fn protocol_version(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }
    fn called_ae(&self) -> &[u8] {
        &self.bytes[4..20]
    }
    fn calling_ae(&self) -> &[u8] {
        &self.bytes[20..36]
    }
}

/// A presentation context the client proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
    whole: Vec<u8>,
}

impl ProposedContext {
    fn parse(item: Item<'_>) -> Result<ProposedContext, Violation> {
        let Some(&[id, _, _, _]) = item.value.get(..4) else {
            return Err(Violation::malformed(
                "presentation context item under 4 bytes",
            ));
        };
        if id % 2 == 0 {
            return Err(Violation::malformed(format!(
                "presentation context id {id} is not odd"
            )));
        }
        let mut abstract_syntax = None;
        let mut transfer_syntaxes = Vec::new();
        for sub in items(&item.value[4..], "presentation context item") {
            let sub = sub?;
            match sub.kind {
                ITEM_ABSTRACT_SYNTAX => {
                    let a = uid(sub.value, "abstract syntax")?;
                    if abstract_syntax.replace(a).is_some() {
                        return Err(Violation::malformed(format!(
                            "presentation context {id} has two abstract syntaxes"
                        )));
                    }
                }
                ITEM_TRANSFER_SYNTAX => transfer_syntaxes.push(uid(sub.value, "transfer syntax")?),
                other => {
                    return Err(Violation::malformed(format!(
                        "sub-item 0x{other:02x} in presentation context {id}"
                    )))
                }
            }
        }
        let Some(abstract_syntax) = abstract_syntax else {
            return Err(Violation::malformed(format!(
                "presentation context {id} has no abstract syntax"
            )));
        };
        if transfer_syntaxes.is_empty() {
            return Err(Violation::malformed(format!(
                "presentation context {id} has no transfer syntax"
            )));
        }
        Ok(ProposedContext {
            id,
            abstract_syntax,
            transfer_syntaxes,
            whole: item.whole.to_vec(),
        })
    }
}

/// A parsed A-ASSOCIATE-RQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateRq {
    fixed: Fixed,
    pub application_context: String,
    application_context_item: Vec<u8>,
    pub contexts: Vec<ProposedContext>,
    pub user_info: UserInfo,
}

impl TryFrom<&[u8]> for AssociateRq {
    type Error = Violation;

    /// Parses the body of an A-ASSOCIATE-RQ (what follows its header).
    fn try_from(body: &[u8]) -> Result<Self, Violation> {
        let (fixed, variable) = Fixed::parse(body, "A-ASSOCIATE-RQ")?;
        let mut application_context = None;
        let mut contexts: Vec<ProposedContext> = Vec::new();
        let mut user_info = None;
        for item in items(variable, "A-ASSOCIATE-RQ") {
            let item = item?;
            match item.kind {
                ITEM_APPLICATION_CONTEXT => {
                    let name = uid(item.value, "application context name")?;
                    if application_context
                        .replace((name, item.whole.to_vec()))
                        .is_some()
                    {
                        return Err(Violation::malformed("two application context items"));
                    }
                }
                ITEM_PROPOSED_CONTEXT => {
                    let pc = ProposedContext::parse(item)?;
                    if contexts.iter().any(|c| c.id == pc.id) {
                        return Err(Violation::malformed(format!(
                            "presentation context id {} proposed twice",
                            pc.id
                        )));
                    }
                    contexts.push(pc);
                }
                ITEM_USER_INFO => {
                    if user_info.replace(UserInfo::parse(item.value)?).is_some() {
                        return Err(Violation::malformed("two user information items"));
                    }
                }
                other => {
                    return Err(Violation::malformed(format!(
                        "item 0x{other:02x} in an A-ASSOCIATE-RQ"
                    )))
                }
            }
        }
        let Some((application_context, application_context_item)) = application_context else {
            return Err(Violation::malformed("no application context item"));
        };
        if contexts.is_empty() {
            return Err(Violation::malformed("no presentation context proposed"));
        }
        Ok(AssociateRq {
            fixed,
            application_context,
            application_context_item,
            contexts,
            // Absent: no maximum announced, which is "unlimited".
            user_info: user_info.unwrap_or_default(),
        })
    }
}

impl AssociateRq {
    pub fn protocol_version(&self) -> u16 {
        self.fixed.protocol_version()
    }
    /// The called AE title, padding removed, as it came.
    pub fn called_ae(&self) -> &[u8] {
        ae_trimmed(self.fixed.called_ae())
    }
    pub fn calling_ae(&self) -> &[u8] {
        ae_trimmed(self.fixed.calling_ae())
    }

    /// The whole PDU to forward: the presentation contexts `keep` admits,
    /// verbatim, and the maximum length set to `max_length`.
    pub fn encode(&self, keep: impl Fn(&ProposedContext) -> bool, max_length: u32) -> Vec<u8> {
        let mut body = Vec::with_capacity(FIXED_LEN + 256);
        body.extend_from_slice(&self.fixed.bytes);
        body.extend_from_slice(&self.application_context_item);
        for pc in self.contexts.iter().filter(|c| keep(c)) {
            body.extend_from_slice(&pc.whole);
        }
        self.user_info.encode(max_length, &mut body);
        with_header(ASSOCIATE_RQ, body)
    }
}

fn with_header(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut pdu = Vec::with_capacity(HEADER_LEN + body.len());
    pdu.extend_from_slice(&[kind, 0]);
    pdu.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pdu.extend_from_slice(&body);
    pdu
}

/// A presentation context in an A-ASSOCIATE-AC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextResult {
    pub id: u8,
    pub result: u8,
    pub transfer_syntax: Option<String>,
    whole: Vec<u8>,
}

impl ContextResult {
    fn parse(item: Item<'_>) -> Result<ContextResult, Violation> {
        let Some(&[id, _, result, _]) = item.value.get(..4) else {
            return Err(Violation::malformed(
                "presentation context result item under 4 bytes",
            ));
        };
        if result > 4 {
            return Err(Violation::malformed(format!(
                "presentation context {id}: result {result}"
            )));
        }
        let mut transfer_syntax = None;
        for sub in items(&item.value[4..], "presentation context result item") {
            let sub = sub?;
            if sub.kind != ITEM_TRANSFER_SYNTAX {
                return Err(Violation::malformed(format!(
                    "sub-item 0x{:02x} in presentation context result {id}",
                    sub.kind
                )));
            }
            let ts = uid(sub.value, "transfer syntax")?;
            if transfer_syntax.replace(ts).is_some() {
                return Err(Violation::malformed(format!(
                    "presentation context result {id} has two transfer syntaxes"
                )));
            }
        }
        if result == RESULT_ACCEPTANCE && transfer_syntax.is_none() {
            return Err(Violation::malformed(format!(
                "presentation context {id} accepted without a transfer syntax"
            )));
        }
        Ok(ContextResult {
            id,
            result,
            transfer_syntax,
            whole: item.whole.to_vec(),
        })
    }

    /// The result item moat answers for a context it dropped: abstract
    /// syntax not supported, with one transfer syntax as PS3.8 requires
    /// the sub-item be present.
    pub fn not_supported(id: u8, transfer_syntax: &str) -> Vec<u8> {
        let ts = transfer_syntax.as_bytes();
        let value_len = 4 + 4 + ts.len();
        let mut item = Vec::with_capacity(4 + value_len);
        item.extend_from_slice(&[ITEM_CONTEXT_RESULT, 0]);
        item.extend_from_slice(&(value_len as u16).to_be_bytes());
        item.extend_from_slice(&[id, 0, RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, 0]);
        item.extend_from_slice(&[ITEM_TRANSFER_SYNTAX, 0]);
        item.extend_from_slice(&(ts.len() as u16).to_be_bytes());
        item.extend_from_slice(ts);
        item
    }
}

/// A parsed A-ASSOCIATE-AC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssociateAc {
    fixed: Fixed,
    application_context_item: Vec<u8>,
    pub results: Vec<ContextResult>,
    pub user_info: UserInfo,
}

impl TryFrom<&[u8]> for AssociateAc {
    type Error = Violation;

    /// Parses the body of an A-ASSOCIATE-AC (what follows its header).
    fn try_from(body: &[u8]) -> Result<Self, Violation> {
        let (fixed, variable) = Fixed::parse(body, "A-ASSOCIATE-AC")?;
        let mut application_context_item = None;
        let mut results: Vec<ContextResult> = Vec::new();
        let mut user_info = None;
        for item in items(variable, "A-ASSOCIATE-AC") {
            let item = item?;
            match item.kind {
                ITEM_APPLICATION_CONTEXT => {
                    uid(item.value, "application context name")?;
                    if application_context_item
                        .replace(item.whole.to_vec())
                        .is_some()
                    {
                        return Err(Violation::malformed("two application context items"));
                    }
                }
                ITEM_CONTEXT_RESULT => {
                    let r = ContextResult::parse(item)?;
                    if results.iter().any(|c| c.id == r.id) {
                        return Err(Violation::malformed(format!(
                            "presentation context {} answered twice",
                            r.id
                        )));
                    }
                    results.push(r);
                }
                ITEM_USER_INFO => {
                    if user_info.replace(UserInfo::parse(item.value)?).is_some() {
                        return Err(Violation::malformed("two user information items"));
                    }
                }
                other => {
                    return Err(Violation::malformed(format!(
                        "item 0x{other:02x} in an A-ASSOCIATE-AC"
                    )))
                }
            }
        }
        let Some(application_context_item) = application_context_item else {
            return Err(Violation::malformed(
                "A-ASSOCIATE-AC without an application context item",
            ));
        };
        Ok(AssociateAc {
            fixed,
            application_context_item,
            results,
            user_info: user_info.unwrap_or_default(),
        })
    }
}

impl AssociateAc {
    /// The whole PDU to forward: the device's results verbatim, then
    /// `extra_results` (whole items), then the user information with the
    /// maximum length set to `max_length`.
    pub fn encode(&self, extra_results: &[Vec<u8>], max_length: u32) -> Vec<u8> {
        let mut body = Vec::with_capacity(FIXED_LEN + 256);
        body.extend_from_slice(&self.fixed.bytes);
        body.extend_from_slice(&self.application_context_item);
        for r in &self.results {
            body.extend_from_slice(&r.whole);
        }
        for r in extra_results {
            body.extend_from_slice(r);
        }
        self.user_info.encode(max_length, &mut body);
        with_header(ASSOCIATE_AC, body)
    }
}

#[cfg(test)]
mod tests;
