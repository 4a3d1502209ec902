//! Who is asking: a client certificate's identity, or a user who signed in
//! through moat's portal. One type for the audit trail (`principal`), the
//! per-identity rate limit (`requests_per_identity`) and the access rules
//! (`users`, `groups`).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Serialize;

use crate::tls::ClientIdentity;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// Named by the certificate (its common name, else its subject).
    Certificate(Arc<ClientIdentity>),
    /// A user of the users file, through a valid session.
    User { name: Arc<str> },
}

impl Principal {
    /// A user; pass the users file's `Arc<str>` to share it (no copy per
    /// request).
    pub fn user(name: impl Into<Arc<str>>) -> Principal {
        Principal::User { name: name.into() }
    }

    pub fn certificate(identity: ClientIdentity) -> Principal {
        Principal::Certificate(Arc::new(identity))
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::Certificate(c) => &c.name,
            Principal::User { name } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Certificate(_) => "certificate",
            Principal::User { .. } => "user",
        }
    }
}

/// Two principals are the same identity when they have the same kind and
/// name: a renewed certificate with the same name shares its rate bucket.
impl PartialEq for Principal {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.name() == other.name()
    }
}

impl Eq for Principal {}

impl Hash for Principal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind().hash(state);
        self.name().hash(state);
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_and_a_certificate_of_the_same_name_are_different_principals() {
        let cert = Principal::certificate(ClientIdentity {
            name: "alice".into(),
            subject: "CN=alice".into(),
            common_name: Some("alice".into()),
            sans: vec![],
            fingerprint_sha256: "00".into(),
        });
        assert_ne!(cert, Principal::user("alice"));
        assert_eq!(Principal::user("alice"), Principal::user("alice"));
        let json = serde_json::to_value(Principal::user("alice")).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "user", "name": "alice"}));
        let json = serde_json::to_value(&cert).unwrap();
        assert_eq!(json["kind"], "certificate");
        assert_eq!(json["name"], "alice");
        assert_eq!(json["subject"], "CN=alice");
    }
}
