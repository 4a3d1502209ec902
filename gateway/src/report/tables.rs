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
