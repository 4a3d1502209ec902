//! What changed between two policies, for the `reload_applied` audit event.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{CidrSet, Policy, Service};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    pub devices_changed: Vec<String>,
    /// `device/service`
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_changed: Vec<String>,
    /// Allow and deny entries added and removed, per service present in both.
    pub access: Vec<AccessChange>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct AccessChange {
    pub service: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_removed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_removed: Vec<String>,
}

fn key(s: &Service) -> String {
    format!("{}/{}", s.device.id, s.name)
}

/// Entries in `b` but not in `a`, as text.
fn minus(a: &CidrSet, b: &CidrSet) -> Vec<String> {
    let a: BTreeSet<_> = a.iter().collect();
    b.iter()
        .filter(|n| !a.contains(n))
        .map(|n| n.to_string())
        .collect()
}

/// Two versions of a service enforce the same thing.
fn same_service(a: &Service, b: &Service) -> bool {
    a.protocol == b.protocol
        && a.listen == b.listen
        && a.upstream == b.upstream
        && a.max_connections == b.max_connections
        && a.connect_timeout == b.connect_timeout
        && a.idle_timeout == b.idle_timeout
        && a.handshake_timeout == b.handshake_timeout
        && a.access.allow.iter().eq(b.access.allow.iter())
        && a.access.deny.iter().eq(b.access.deny.iter())
        && a.tls.as_ref().map(|t| &t.fingerprint) == b.tls.as_ref().map(|t| &t.fingerprint)
        && a.http.as_ref().map(|h| h.summary()) == b.http.as_ref().map(|h| h.summary())
        && a.limits == b.limits
        && a.access_mode == b.access_mode
        && a.guard == b.guard
}

impl PolicyDiff {
    pub fn between(old: &Policy, new: &Policy) -> PolicyDiff {
        let mut d = PolicyDiff::default();
        for n in &new.devices {
            match old.devices.iter().find(|o| o.id == n.id) {
                None => d.devices_added.push(n.id.to_string()),
                Some(o) if o != n => d.devices_changed.push(n.id.to_string()),
                Some(_) => {}
            }
        }
        for o in &old.devices {
            if !new.devices.iter().any(|n| n.id == o.id) {
                d.devices_removed.push(o.id.to_string());
            }
        }
        let find = |p: &Policy, k: &str| p.services.iter().find(|s| key(s) == k).cloned();
        for n in &new.services {
            let k = key(n);
            let Some(o) = find(old, &k) else {
                d.services_added.push(k);
                continue;
            };
            if !same_service(&o, n) {
                d.services_changed.push(k.clone());
            }
            let change = AccessChange {
                allow_added: minus(&o.access.allow, &n.access.allow),
                allow_removed: minus(&n.access.allow, &o.access.allow),
                deny_added: minus(&o.access.deny, &n.access.deny),
                deny_removed: minus(&n.access.deny, &o.access.deny),
                service: k,
            };
            if !(change.allow_added.is_empty()
                && change.allow_removed.is_empty()
                && change.deny_added.is_empty()
                && change.deny_removed.is_empty())
            {
                d.access.push(change);
            }
        }
        for o in &old.services {
            if find(new, &key(o)).is_none() {
                d.services_removed.push(key(o));
            }
        }
        d
    }
}

#[cfg(test)]
mod tests;
