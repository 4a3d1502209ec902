//! The report's tables as plain text, built once for both renderings:
//! `html.rs` and `markdown.rs` differ in how they escape and lay out a
//! table, never in what it holds.

use super::model::*;

/// Headers and rows of one table; cells are unescaped text.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Table {
    Table {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

/// Gateway-wide denials the trail summarised, by reason (none when empty).
pub fn suppressed(s: &Suppressed) -> Option<Table> {
    if s.by_reason.is_empty() {
        return None;
    }
    let rows = s
        .by_reason
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    Some(table(&["reason", "count"], rows))
}

/// One line per device: support, denials, missing controls.
pub fn devices(r: &Report) -> Table {
    let rows = r
        .devices
        .iter()
        .map(|d| {
            vec![
                d.inventory.id.to_string(),
                d.inventory.name.clone(),
                d.support.to_string(),
                d.denials.total.to_string(),
                if d.missing_controls.is_empty() {
                    "none".into()
                } else {
                    d.missing_controls.join(", ")
                },
            ]
        })
        .collect();
    table(
        &["device", "name", "support", "denials", "missing controls"],
        rows,
    )
}

/// A device's denials: totals by reason, then per bucket (day or hour),
/// leaving out buckets without any.
pub fn denials(d: &Denials, bucket: &str) -> [Table; 2] {
    let totals = d
        .totals
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    let mut headers = vec![bucket];
    headers.extend(d.by_reason.keys().map(String::as_str));
    let per_bucket = d
        .buckets
        .iter()
        .enumerate()
        .filter(|(i, _)| d.by_reason.values().any(|c| c[*i] > 0))
        .map(|(i, label)| {
            let mut row = vec![label.clone()];
            row.extend(d.by_reason.values().map(|c| c[i].to_string()));
            row
        })
        .collect();
    [
        table(&["reason", "total"], totals),
        table(&headers, per_bucket),
    ]
}

/// The reloads that touched a device.
pub fn changes(d: &DeviceReport) -> Table {
    let rows = d
        .changes
        .iter()
        .map(|c| vec![c.ts.clone(), c.new_version.to_string(), c.change.clone()])
        .collect();
    table(&["time", "new version", "change"], rows)
}

/// Who had access: the tables that have rows, in order.
pub fn access(a: &WhoHadAccess) -> Vec<Table> {
    let permitted = a
        .permitted
        .iter()
        .map(|p| vec![p.service.clone(), p.users.join(", ")])
        .collect();
    let signed_in = a
        .signed_in
        .iter()
        .map(|(u, n)| vec![u.clone(), n.to_string()])
        .collect();
    let grants = a
        .grants
        .iter()
        .map(|g| {
            vec![
                g.ts.clone(),
                g.user.clone(),
                g.service.clone(),
                g.binding.clone(),
                g.until.clone(),
                if g.break_glass { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let break_glass = a
        .break_glass
        .iter()
        .map(|b| {
            vec![
                b.ts.clone(),
                b.user.clone(),
                b.service.clone(),
                b.code_id.clone(),
                b.until.clone(),
            ]
        })
        .collect();
    let principals = a
        .principals
        .iter()
        .map(|(p, n)| vec![p.clone(), n.to_string()])
        .collect();
    [
        table(&["service", "users the policy lets in"], permitted),
        table(&["signed in", "times"], signed_in),
        table(
            &[
                "grant opened",
                "user",
                "service",
                "binding",
                "until",
                "break-glass",
            ],
            grants,
        ),
        table(
            &["break-glass used", "user", "service", "code id", "until"],
            break_glass,
        ),
        table(&["identity seen", "times"], principals),
    ]
    .into_iter()
    .filter(|t| !t.rows.is_empty())
    .collect()
}

/// A device's inventory fields that are recorded, for a key-value table.
pub fn inventory(inv: &crate::policy::Device) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("id", inv.id.to_string()),
        ("name", inv.name.clone()),
        ("manufacturer", inv.manufacturer.clone()),
        ("model", inv.model.clone()),
        ("location", inv.location.clone()),
        ("owner", inv.owner.clone()),
        (
            "end of support",
            inv.end_of_support
                .clone()
                .unwrap_or_else(|| "not recorded".into()),
        ),
        ("serial number", inv.serial_number.clone()),
        ("UDI", inv.udi.clone()),
        ("software version", inv.software_version.clone()),
        (
            "lifecycle",
            inv.lifecycle
                .map(|l| l.as_str().to_string())
                .unwrap_or_default(),
        ),
        (
            "SBOM",
            inv.sbom
                .as_ref()
                .map(|s| format!("{} (sha256 {}, verified)", s.path.display(), s.sha256))
                .unwrap_or_default(),
        ),
        ("MDS2", inv.mds2.clone()),
        (
            "known vulnerabilities",
            inv.known_vulnerabilities.join(", "),
        ),
    ];
    rows.retain(|(_, v)| !v.is_empty());
    rows
}

/// The controls in force on one service, for a key-value table (cells
/// may hold line breaks).
pub fn service_controls(s: &ServiceReport) -> Vec<(&'static str, String)> {
    let tls = match &s.tls {
        None => "PLAINTEXT".to_string(),
        Some(t) => format!(
            "TLS, minimum {}, client certificates {}",
            t.min_version, t.client_certificates
        ),
    };
    let certs = s
        .tls
        .iter()
        .flat_map(|t| &t.certificates)
        .map(|c| {
            format!(
                "{} (until {}{})",
                c.names.join(", "),
                c.not_after,
                if c.expired { ", EXPIRED" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let m = &s.access_mode;
    let mut mode = m.mode.to_string();
    if m.mode != "network" {
        if m.anyone {
            mode += ": every user";
        } else {
            mode += &format!(
                ": users [{}] groups [{}]",
                m.users.join(", "),
                m.groups.join(", ")
            );
        }
    }
    if let Some(g) = &m.max_grant {
        mode += &format!("; grants up to {g}");
    }
    if let Some(b) = &m.break_glass {
        mode += &format!("; break-glass grants of {b}");
    }
    let t = &s.timeouts;
    let mut timeouts = format!(
        "connect {}, idle {}, handshake {}",
        t.connect, t.idle, t.handshake
    );
    if let Some(h) = &t.http {
        timeouts += &format!(
            "; http: header read {}, body read {}, response {}, keep-alive {}",
            h.header_read, h.body_read, h.response, h.keepalive
        );
    }
    let entries = |list: &[crate::policy::AccessEntry]| {
        list.iter()
            .map(|e| {
                format!(
                    "{} ({} network(s), {}{})",
                    e.entry,
                    e.addresses,
                    e.written_at,
                    e.file
                        .as_ref()
                        .map(|f| format!(", from {}", f.display()))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut rows = vec![
        ("encryption", tls),
        ("certificates", certs),
        ("allow", entries(&s.allow)),
        ("deny", entries(&s.deny)),
        ("access", mode),
        ("limits", s.limits.join("\n")),
        ("guard", s.guard.clone().unwrap_or_else(|| "none".into())),
        ("timeouts", timeouts),
        ("max connections", s.max_connections.to_string()),
        (
            "audit trail unwritable",
            match s.on_audit_failure {
                "refuse" => "refuse: no unrecorded access (fail closed)".to_string(),
                _ => "serve: stays reachable, unrecorded (fail open)".to_string(),
            },
        ),
    ];
    rows.retain(|(k, v)| !v.is_empty() || *k == "allow");
    rows
}

/// The report's header: version, period, policy, the trail read and its
/// hash chain, whether the trail leaves the host.
pub fn header(r: &Report) -> Vec<(&'static str, String)> {
    let a = &r.audit;
    vec![
        ("moat version", r.moat_version.to_string()),
        ("generated at", r.generated_at.clone()),
        (
            "period",
            format!(
                "{} to {} (per {})",
                r.period.since, r.period.until, r.period.bucket
            ),
        ),
        (
            "policy",
            format!(
                "version {}, hash {}",
                r.policy.version, r.policy.content_hash
            ),
        ),
        ("policy files", r.policy.sources.join(", ")),
        ("audit file read", a.file.clone()),
        (
            "audit lines",
            format!(
                "{} read, {} in the period, {} not JSON{}, {} without a time",
                a.lines_total,
                a.lines_in_period,
                a.lines_not_json,
                if a.lines_not_json_at.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (line {})",
                        a.lines_not_json_at
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                a.lines_without_ts
            ),
        ),
        ("hash chain", a.hash_chain.clone()),
        (
            "audit trail off the host",
            match &r.policy.siem {
                Some(s) => format!("yes: [siem] sends it to {s}"),
                None => "no [siem] configured".into(),
            },
        ),
    ]
}
