//! Time-boxed access grants: after signing in with password and code (or a
//! break-glass code), a person opens one `mfa` TCP service for their own
//! address or their own client certificate, until a set time.
//!
//! A grant is runtime state, not policy: it lives in the identity store
//! ([`crate::runtime::IdentityStore`]) and outlives reloads. This module
//! holds the vocabulary (what a grant is, how it ends) and [`GrantIndex`],
//! the structure the accept path reads: one hash lookup by what the grant
//! is bound to, no allocation.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

/// A grant's identity: random, so that it says nothing about how many
/// grants exist and cannot be guessed from another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(pub u64);

impl GrantId {
    pub fn random() -> GrantId {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random source");
        GrantId(u64::from_be_bytes(bytes))
    }

    /// Parses the 16 hex digits [`fmt::Display`] writes.
    pub fn parse(s: &str) -> Option<GrantId> {
        (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok().map(GrantId))
            .flatten()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for GrantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: the key, whichever
/// certificate carries it (a renewed certificate with the same key keeps
/// its grants).
pub type Spki = [u8; 32];

/// What a grant admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantBinding {
    /// Connections from this address (IPv6: exactly this address; what
    /// the person's workstation showed the portal). Everyone behind the
    /// same NAT shares it.
    Address(IpAddr),
    /// Connections whose client certificate has this key, from any
    /// allowed address. Only on services that require client certificates.
    Certificate(Spki),
}

impl Serialize for GrantBinding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            GrantBinding::Address(ip) => m.serialize_entry("address", &ip.to_string())?,
            GrantBinding::Certificate(spki) => {
                m.serialize_entry("certificate_spki_sha256", &hex(spki))?
            }
        }
        m.end()
    }
}

impl fmt::Display for GrantBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantBinding::Address(ip) => write!(f, "address {ip}"),
            GrantBinding::Certificate(spki) => write!(f, "certificate {}", hex(spki)),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One open grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub id: GrantId,
    pub user: Arc<str>,
    pub device: Arc<str>,
    pub service: Arc<str>,
    pub binding: GrantBinding,
    /// Unix seconds.
    pub opened_at: u64,
    pub until: u64,
    /// Opened with a break-glass code instead of a TOTP code.
    pub break_glass: bool,
    /// Where the service led when the grant was opened (`listen` and
    /// `upstream`): a grant opens that port to that device, not whatever
    /// the service is changed to later.
    pub target: String,
}

/// Why a grant ended (`grant_ended` audit event, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantEnd {
    Expired,
    RevokedByUser,
    RevokedByOps,
    UserDisabled,
    /// No longer in the users file.
    UserRemoved,
    /// No longer among the service's `users`/`groups`.
    UserNotAuthorized,
    /// The service was removed, or changed where it leads, or is no
    /// longer an `mfa` service.
    PolicyChanged,
}

impl GrantEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantEnd::Expired => "expired",
            GrantEnd::RevokedByUser => "revoked_by_user",
            GrantEnd::RevokedByOps => "revoked_by_ops",
            GrantEnd::UserDisabled => "user_disabled",
            GrantEnd::UserRemoved => "user_removed",
            GrantEnd::UserNotAuthorized => "user_not_authorized",
            GrantEnd::PolicyChanged => "policy_changed",
        }
    }
}

/// What the accept path asks: is there a live grant for this service and
/// this binding at `now`? Implemented by the identity store.
pub trait GrantLookup: Send + Sync {
    fn grant_for(
        &self,
        device: &str,
        service: &str,
        binding: &GrantBinding,
        now: u64,
    ) -> Option<GrantId>;

    /// Has this service any live certificate-bound grant? If not, a
    /// connection without an address grant is refused before TLS.
    fn has_certificate_grants(&self, device: &str, service: &str, now: u64) -> bool;
}

/// The lookup side of the grants: by binding, then a short scan of the
/// (usually one) grants of that address or key. Lookups hash a
/// `GrantBinding` (an address or 32 bytes) and compare strings: no
/// allocation.
#[derive(Default)]
pub struct GrantIndex {
    by_binding: HashMap<GrantBinding, Vec<IndexEntry>, foldhash::fast::RandomState>,
    /// Per service with certificate grants, how many: so that an unlisted
    /// address is refused before TLS unless a certificate could still
    /// admit it.
    certificate_grants: Vec<(Arc<str>, Arc<str>, usize)>,
    grants: HashMap<GrantId, Grant>,
}

struct IndexEntry {
    device: Arc<str>,
    service: Arc<str>,
    until: u64,
    id: GrantId,
}

impl GrantIndex {
    pub fn insert(&mut self, grant: Grant) {
        self.by_binding
            .entry(grant.binding)
            .or_default()
            .push(IndexEntry {
                device: grant.device.clone(),
                service: grant.service.clone(),
                until: grant.until,
                id: grant.id,
            });
        if let GrantBinding::Certificate(_) = grant.binding {
            match self
                .certificate_grants
                .iter_mut()
                .find(|(d, s, _)| *d == grant.device && *s == grant.service)
            {
                Some((_, _, n)) => *n += 1,
                None => {
                    self.certificate_grants
                        .push((grant.device.clone(), grant.service.clone(), 1))
                }
            }
        }
        self.grants.insert(grant.id, grant);
    }

    pub fn remove(&mut self, id: GrantId) -> Option<Grant> {
        let grant = self.grants.remove(&id)?;
        if let Some(entries) = self.by_binding.get_mut(&grant.binding) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                self.by_binding.remove(&grant.binding);
            }
        }
        if let GrantBinding::Certificate(_) = grant.binding {
            if let Some(i) = self
                .certificate_grants
                .iter()
                .position(|(d, s, _)| *d == grant.device && *s == grant.service)
            {
                self.certificate_grants[i].2 -= 1;
                if self.certificate_grants[i].2 == 0 {
                    self.certificate_grants.swap_remove(i);
                }
            }
        }
        Some(grant)
    }

    pub fn get(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// A live grant for `device/service` bound to `binding` at `now`.
    #[inline]
    pub fn grant_for(
        &self,
        device: &str,
        service: &str,
        binding: &GrantBinding,
        now: u64,
    ) -> Option<GrantId> {
        self.by_binding.get(binding)?.iter().find_map(|e| {
            (e.until > now && *e.service == *service && *e.device == *device).then_some(e.id)
        })
    }

    pub fn has_certificate_grants(&self, device: &str, service: &str) -> bool {
        self.certificate_grants
            .iter()
            .any(|(d, s, _)| **d == *device && **s == *service)
    }
}

/// The index alone answers lookups too (tests, benchmarks).
impl GrantLookup for GrantIndex {
    fn grant_for(
        &self,
        device: &str,
        service: &str,
        binding: &GrantBinding,
        now: u64,
    ) -> Option<GrantId> {
        GrantIndex::grant_for(self, device, service, binding, now)
    }

    fn has_certificate_grants(&self, device: &str, service: &str, _now: u64) -> bool {
        GrantIndex::has_certificate_grants(self, device, service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: u64, binding: GrantBinding, until: u64) -> Grant {
        Grant {
            id: GrantId(id),
            user: "alice".into(),
            device: "ct".into(),
            service: "dicom".into(),
            binding,
            opened_at: 100,
            until,
            break_glass: false,
            target: "127.0.0.1:11112 -> 10.0.0.5:104".into(),
        }
    }

    #[test]
    fn a_grant_admits_its_binding_on_its_service_until_it_expires() {
        let mut index = GrantIndex::default();
        let here = GrantBinding::Address("127.0.0.2".parse().unwrap());
        let there = GrantBinding::Address("127.0.0.3".parse().unwrap());
        let key = GrantBinding::Certificate([7; 32]);
        index.insert(grant(1, here, 200));
        assert_eq!(index.grant_for("ct", "dicom", &here, 150), Some(GrantId(1)));
        assert_eq!(index.grant_for("ct", "dicom", &here, 200), None, "expired");
        assert_eq!(index.grant_for("ct", "dicom", &there, 150), None);
        assert_eq!(index.grant_for("ct", "web", &here, 150), None);
        assert_eq!(index.grant_for("mri", "dicom", &here, 150), None);
        assert!(!index.has_certificate_grants("ct", "dicom"));
        index.insert(grant(2, key, 300));
        assert!(index.has_certificate_grants("ct", "dicom"));
        assert_eq!(index.grant_for("ct", "dicom", &key, 250), Some(GrantId(2)));
        assert_eq!(index.remove(GrantId(2)).unwrap().id, GrantId(2));
        assert!(!index.has_certificate_grants("ct", "dicom"));
        assert_eq!(index.grant_for("ct", "dicom", &key, 250), None);
        assert!(index.remove(GrantId(2)).is_none());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn ids_print_and_parse_as_sixteen_hex_digits() {
        let id = GrantId(0xab);
        assert_eq!(id.to_string(), "00000000000000ab");
        assert_eq!(GrantId::parse("00000000000000ab"), Some(id));
        for bad in ["ab", "00000000000000az", "+000000000000000", ""] {
            assert_eq!(GrantId::parse(bad), None, "{bad}");
        }
        assert_ne!(GrantId::random(), GrantId::random());
    }
}
