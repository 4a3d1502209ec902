//! Builders of well-formed PDUs for the tests, written from PS3.8 rather
//! than with the code under test.

use std::time::Duration;

use super::{DicomPolicy, SyntaxList};
use crate::config::schema::RefusedContexts;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const CT_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const STUDY_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub fn policy(refused: RefusedContexts) -> DicomPolicy {
    DicomPolicy {
        ae_title: "STORESCP".into(),
        calling_ae_titles: vec!["STORESCU".into(), "ECHOSCU".into()],
        abstract_syntaxes: SyntaxList::default_list(),
        refused_contexts: refused,
        max_pdu_length: 16384,
        association_timeout: Duration::from_millis(200),
    }
}

pub fn item(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut i = vec![kind, 0];
    i.extend_from_slice(&(value.len() as u16).to_be_bytes());
    i.extend_from_slice(value);
    i
}

pub fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind, 0];
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// A UID as an item value, padded to even length with a NUL as some
/// implementations do.
fn uid_value(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

pub fn ae(title: &str) -> [u8; 16] {
    let mut f = [b' '; 16];
    f[..title.len()].copy_from_slice(title.as_bytes());
    f
}

pub struct Rq {
    pub version: u16,
    pub called: &'static str,
    pub calling: &'static str,
    pub application_context: &'static str,
    pub contexts: Vec<(u8, &'static str, Vec<&'static str>)>,
    pub max_length: Option<u32>,
    /// Other user information sub-items, whole.
    pub user_extra: Vec<u8>,
}

impl Default for Rq {
    fn default() -> Self {
        Rq {
            version: 1,
            called: "STORESCP",
            calling: "STORESCU",
            application_context: "1.2.840.10008.3.1.1.1",
            contexts: vec![
                (1, VERIFICATION, vec![IMPLICIT_LE]),
                (3, CT_STORAGE, vec![EXPLICIT_LE, IMPLICIT_LE]),
            ],
            max_length: Some(0),
            // Implementation class UID.
            user_extra: item(0x52, b"1.2.276.0.7230010.3.0.3.6.7"),
        }
    }
}

/// Fixed fields of an RQ or AC: version, reserved, AE titles, reserved.
pub fn fixed(version: u16, called: &str, calling: &str) -> Vec<u8> {
    let mut b = version.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&ae(called));
    b.extend_from_slice(&ae(calling));
    b.extend_from_slice(&[0; 32]);
    b
}

pub fn user_info(max_length: Option<u32>, extra: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(m) = max_length {
        v.extend(item(0x51, &m.to_be_bytes()));
    }
    v.extend_from_slice(extra);
    item(0x50, &v)
}

pub fn proposed(id: u8, abstract_syntax: &str, ts: &[&str]) -> Vec<u8> {
    let mut v = vec![id, 0, 0, 0];
    v.extend(item(0x30, &uid_value(abstract_syntax)));
    for t in ts {
        v.extend(item(0x40, &uid_value(t)));
    }
    item(0x20, &v)
}

impl Rq {
    pub fn body(&self) -> Vec<u8> {
        let mut b = fixed(self.version, self.called, self.calling);
        b.extend(item(0x10, &uid_value(self.application_context)));
        for (id, a, ts) in &self.contexts {
            b.extend(proposed(*id, a, ts));
        }
        b.extend(user_info(self.max_length, &self.user_extra));
        b
    }
    pub fn pdu(&self) -> Vec<u8> {
        pdu(0x01, &self.body())
    }
}

pub fn result_item(id: u8, result: u8, ts: Option<&str>) -> Vec<u8> {
    let mut v = vec![id, 0, result, 0];
    if let Some(t) = ts {
        v.extend(item(0x40, t.as_bytes()));
    }
    item(0x21, &v)
}

/// An A-ASSOCIATE-AC body: results (id, result, transfer syntax).
pub fn ac_body(results: &[(u8, u8, Option<&str>)], max_length: Option<u32>) -> Vec<u8> {
    let mut b = fixed(1, "STORESCP", "STORESCU");
    b.extend(item(0x10, b"1.2.840.10008.3.1.1.1"));
    for (id, r, ts) in results {
        b.extend(result_item(*id, *r, *ts));
    }
    b.extend(user_info(max_length, &item(0x52, b"1.2.3")));
    b
}

/// A P-DATA-TF PDU of PDVs (context id, control header, data).
pub fn pdata(pdvs: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, mch, data) in pdvs {
        body.extend_from_slice(&((data.len() + 2) as u32).to_be_bytes());
        body.extend_from_slice(&[*id, *mch]);
        body.extend_from_slice(data);
    }
    pdu(0x04, &body)
}
