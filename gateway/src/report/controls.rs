//! The compensating controls of the legacy-device guidance (IMDRF, "Principles
//! and Practices for the Cybersecurity of Legacy Medical Devices"), judged
//! for one device from the policy in force and the trail of the period.
//! One place decides each verdict; every format shows the same ones.

use crate::auth::AccessMode;
use crate::config::schema::{ClientCertMode, Protocol};
use crate::policy::{Policy, Service, SupportStatus};

use super::model::{Control, ControlStatus};

/// What the verdicts are judged from, besides the policy.
pub struct Facts<'a> {
    pub policy: &'a Policy,
    pub services: &'a [&'a Service],
    pub support: SupportStatus,
    pub end_of_support: Option<&'a str>,
    /// Reloads applied in the period that touched the device.
    pub changes_in_period: usize,
    /// Whether the audit trail could be read for the period.
    pub trail_read: bool,
}

fn control(
    id: &'static str,
    name: &'static str,
    status: ControlStatus,
    evidence: Vec<String>,
    gap: Option<String>,
) -> Control {
    Control {
        id,
        name,
        status,
        evidence,
        gap: (status != ControlStatus::InPlace).then_some(gap).flatten(),
    }
}

/// `all` of `n` pass: in place; some: partly; none: missing.
fn share(passing: usize, n: usize) -> ControlStatus {
    if n > 0 && passing == n {
        ControlStatus::InPlace
    } else if passing > 0 {
        ControlStatus::Partly
    } else {
        ControlStatus::Missing
    }
}

/// The services that carry device traffic (a portal carries none).
fn proxied<'a>(services: &[&'a Service]) -> Vec<&'a Service> {
    services
        .iter()
        .copied()
        .filter(|s| s.protocol != Protocol::Portal)
        .collect()
}

pub fn judge(f: &Facts<'_>) -> Vec<Control> {
    let proxied = proxied(f.services);
    vec![
        restricted_ports_and_hosts(&proxied),
        segmentation(&proxied),
        access_control(&proxied),
        encryption(&proxied),
        monitoring(f),
        inventory(f),
        configuration_changes(f),
        protocol_validation(&proxied),
        shielding(&proxied),
    ]
}

fn open_to_everyone(s: &Service) -> bool {
    s.access.allow.iter().any(|n| n.prefix_len() == 0)
}

fn restricted_ports_and_hosts(services: &[&Service]) -> Control {
    let narrow = services.iter().filter(|s| !open_to_everyone(s)).count();
    let evidence = services
        .iter()
        .map(|s| {
            let entries: Vec<&str> = s.allow_entries.iter().map(|e| e.entry.as_str()).collect();
            format!(
                "{}: one listener {} for device port {}; allow [{}] ({} network(s)){}",
                s.name,
                s.listen,
                s.upstream,
                entries.join(", "),
                s.access.allow.len(),
                if s.deny_entries.is_empty() {
                    String::new()
                } else {
                    format!(", {} deny entr(ies)", s.deny_entries.len())
                }
            )
        })
        .collect();
    let wide: Vec<&str> = services
        .iter()
        .filter(|s| open_to_everyone(s))
        .map(|s| &*s.name)
        .collect();
    let gap = if services.is_empty() {
        "No service of moat fronts this device.".to_string()
    } else {
        format!(
            "The allowlist of {} admits every address: narrow it to the hosts that need the device.",
            wide.join(", ")
        )
    };
    control(
        "restricted_ports_and_hosts",
        "Restricted ports and hosts",
        share(narrow, services.len()),
        evidence,
        Some(gap),
    )
}

fn segmentation(services: &[&Service]) -> Control {
    let mut evidence: Vec<String> = services
        .iter()
        .map(|s| format!("{}: moat reaches the device at {}", s.name, s.upstream))
        .collect();
    evidence.push(
        "moat cannot see the network: it is one path to the device and cannot prove it is the only one".into(),
    );
    control(
        "segmentation",
        "Network segmentation",
        ControlStatus::Partly,
        evidence,
        Some("Confirm with the network team (firewall rules, VLANs) that the device's addresses above can only be reached through moat.".into()),
    )
}

fn strong_access(s: &Service) -> Option<String> {
    match &s.access_mode {
        AccessMode::Mfa(_) => {
            return Some(format!("{}: sign-in with password and TOTP (mfa)", s.name))
        }
        AccessMode::Grant(_) => {
            return Some(format!(
                "{}: time-boxed grants opened after password and TOTP",
                s.name
            ))
        }
        AccessMode::Network => {}
    }
    match s.tls.as_ref().and_then(|t| t.client_cert) {
        Some(ClientCertMode::Required) => Some(format!("{}: client certificate required", s.name)),
        _ => None,
    }
}

fn access_control(services: &[&Service]) -> Control {
    let strong: Vec<String> = services.iter().filter_map(|s| strong_access(s)).collect();
    let weak: Vec<&str> = services
        .iter()
        .filter(|s| strong_access(s).is_none())
        .map(|s| &*s.name)
        .collect();
    let mut evidence = strong.clone();
    for w in &weak {
        evidence.push(format!("{w}: network address only"));
    }
    control(
        "access_control",
        "Strong access control and MFA",
        share(strong.len(), services.len()),
        evidence,
        Some(format!(
            "{} admit(s) anyone on an allowed address: require sign-in (access = \"mfa\") or client certificates where people or known systems use it.",
            weak.join(", ")
        )),
    )
}

fn encryption(services: &[&Service]) -> Control {
    let tls = services.iter().filter(|s| s.tls.is_some()).count();
    let evidence = services
        .iter()
        .map(|s| match &s.tls {
            Some(t) => format!(
                "{}: TLS, minimum version {}",
                s.name,
                super::tls_version(t.min_version)
            ),
            None => format!("{}: PLAINTEXT", s.name),
        })
        .collect();
    let plain: Vec<&str> = services
        .iter()
        .filter(|s| s.tls.is_none())
        .map(|s| &*s.name)
        .collect();
    control(
        "encryption_in_transit",
        "Encryption in transit",
        share(tls, services.len()),
        evidence,
        Some(format!(
            "{} carr(ies) traffic in plaintext between clients and moat: turn on TLS where the clients can speak it.",
            plain.join(", ")
        )),
    )
}

fn monitoring(f: &Facts<'_>) -> Control {
    let mut evidence = vec![match &f.policy.audit_log {
        crate::policy::AuditTarget::File(p) => format!("audit trail in {}", p.display()),
        crate::policy::AuditTarget::Stdout => "audit trail on standard output".into(),
    }];
    if !f.trail_read {
        evidence.push("the trail could not be read for this report".into());
    }
    let status = match &f.policy.siem {
        Some(siem) => {
            evidence.push(format!(
                "sent off the device to the SIEM at {}",
                siem.address
            ));
            ControlStatus::InPlace
        }
        None => ControlStatus::Partly,
    };
    control(
        "monitoring_audit_trail",
        "Monitoring and an audit trail off the device",
        status,
        evidence,
        Some("The trail stays on the moat host: configure [siem] so that a copy leaves it as it is written.".into()),
    )
}

fn inventory(f: &Facts<'_>) -> Control {
    let (status, gap) = match f.support {
        SupportStatus::Unknown => (
            ControlStatus::Missing,
            "No end-of-support date is recorded: ask the maker and record end_of_support.".to_string(),
        ),
        SupportStatus::Past => (
            ControlStatus::Partly,
            format!(
                "The maker's support ended on {}: no more fixes will come, so the other controls must carry the device.",
                f.end_of_support.unwrap_or("?")
            ),
        ),
        _ => (ControlStatus::InPlace, String::new()),
    };
    let evidence = vec![format!(
        "end of support {}: {}",
        f.end_of_support.unwrap_or("not recorded"),
        f.support.describe()
    )];
    control(
        "inventory_end_of_support",
        "Inventory and end of support",
        status,
        evidence,
        Some(gap),
    )
}

fn configuration_changes(f: &Facts<'_>) -> Control {
    let mut evidence = vec![format!(
        "policy version {}, hash {}",
        f.policy.version, f.policy.content_hash
    )];
    let status = if f.trail_read {
        evidence.push(format!(
            "{} reload(s) touching this device recorded in the period",
            f.changes_in_period
        ));
        ControlStatus::InPlace
    } else {
        ControlStatus::Partly
    };
    control(
        "configuration_changes",
        "Tracked configuration changes",
        status,
        evidence,
        Some("The trail could not be read, so the changes of the period cannot be shown.".into()),
    )
}

fn validation(s: &Service) -> Option<String> {
    if let Some(g) = &s.guard {
        return Some(format!("{}: {}", s.name, g.summary()));
    }
    match (&s.protocol, &s.http) {
        (Protocol::Http, Some(h)) => Some(format!(
            "{}: HTTP parsed and checked ({} request rule(s), body up to {} bytes)",
            s.name,
            h.rules.len(),
            h.max_body_bytes
        )),
        _ => None,
    }
}

fn protocol_validation(services: &[&Service]) -> Control {
    let ok: Vec<String> = services.iter().filter_map(|s| validation(s)).collect();
    let unchecked: Vec<&str> = services
        .iter()
        .filter(|s| validation(s).is_none())
        .map(|s| &*s.name)
        .collect();
    let mut evidence = ok.clone();
    for u in &unchecked {
        evidence.push(format!("{u}: bytes relayed unchecked (tcp, no guard)"));
    }
    control(
        "protocol_validation",
        "Protocol validation",
        share(ok.len(), services.len()),
        evidence,
        Some(format!(
            "{} relay(s) bytes unchecked: if it speaks DICOM or HL7 MLLP, turn on its guard.",
            unchecked.join(", ")
        )),
    )
}

fn has_rate_limit(s: &Service) -> bool {
    let l = &s.limits;
    l.connections_per_client.is_some()
        || l.requests_per_client.is_some()
        || l.requests_per_identity.is_some()
        || l.device_rate.is_some()
        || l.max_in_flight.is_some()
}

fn shielding(services: &[&Service]) -> Control {
    let limited = services.iter().filter(|s| has_rate_limit(s)).count();
    let evidence = services
        .iter()
        .map(|s| {
            let limits = super::limits(s);
            format!(
                "{}: at most {} connection(s){}",
                s.name,
                s.max_connections,
                if limits.is_empty() {
                    String::new()
                } else {
                    format!("; {}", limits.join("; "))
                }
            )
        })
        .collect();
    let status = match share(limited, services.len()) {
        // max_connections always binds: never nothing at all.
        ControlStatus::Missing if !services.is_empty() => ControlStatus::Partly,
        s => s,
    };
    let bare: Vec<&str> = services
        .iter()
        .filter(|s| !has_rate_limit(s))
        .map(|s| &*s.name)
        .collect();
    control(
        "shielding",
        "Shielding of a fragile device",
        status,
        evidence,
        Some(format!(
            "{} ha(s) only a connection cap: add rate limits ([device.service.limits]) so a burst cannot overwhelm the device.",
            bare.join(", ")
        )),
    )
}
