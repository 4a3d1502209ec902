//! The report as Markdown: the same content as the HTML page, as tables.
//! Values are escaped so that a name cannot break a table or inject markup.

use std::fmt::Write;

use super::model::*;
use super::tables::{self, Table};

/// Escapes a table cell: pipes, markup characters and line breaks.
pub fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("\\|"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' | '*' | '_' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("<br>"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn table(o: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(
        o,
        "| {} |",
        headers
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(o, "|{}", "---|".repeat(headers.len()));
    for r in rows {
        let _ = writeln!(
            o,
            "| {} |",
            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    o.push('\n');
}

fn put(o: &mut String, t: &Table) {
    let headers: Vec<&str> = t.headers.iter().map(String::as_str).collect();
    table(o, &headers, &t.rows);
}

fn kv(o: &mut String, rows: &[(&str, String)]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| vec![k.to_string(), v.clone()])
        .collect();
    table(o, &["field", "value"], &rows);
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let a = &r.audit;
    o.push_str("# moat evidence report\n\n");
    kv(&mut o, &tables::header(r));
    if let Some(p) = &a.problem {
        let _ = writeln!(o, "**Audit trail: {}**\n", cell(p));
    }

    o.push_str("## Gateway-wide\n\n### Configuration changes in the period\n\n");
    if r.configuration_changes.is_empty() {
        o.push_str("No reload was applied in the period.\n\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .configuration_changes
            .iter()
            .map(|c| {
                vec![
                    c.ts.clone(),
                    c.trigger.clone(),
                    format!("{} → {}", c.old_version, c.new_version),
                    format!("{} → {}", c.old_hash, c.new_hash),
                    c.summary.join("\n"),
                ]
            })
            .collect();
        table(
            &mut o,
            &["time", "trigger", "version", "hash", "changes"],
            &rows,
        );
    }
    o.push_str("### Reloads rejected\n\n");
    if r.reloads_rejected.is_empty() {
        o.push_str("No reload was rejected in the period.\n\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .reloads_rejected
            .iter()
            .map(|c| {
                vec![
                    c.ts.clone(),
                    c.trigger.clone(),
                    c.version_in_force.to_string(),
                    c.errors.join("\n"),
                ]
            })
            .collect();
        table(
            &mut o,
            &["time", "trigger", "version kept", "errors"],
            &rows,
        );
    }
    let s = &r.denials_suppressed;
    let _ = writeln!(
        o,
        "### Denials summarised (gateway-wide)\n\n{} denial(s) summarised. {}\n",
        s.count,
        cell(s.note)
    );
    if let Some(t) = tables::suppressed(s) {
        put(&mut o, &t);
    }

    o.push_str("### Devices\n\n");
    put(&mut o, &tables::devices(r));
    for d in &r.devices {
        device(&mut o, d, r.period.bucket);
    }
    o
}

fn device(o: &mut String, d: &DeviceReport, bucket: &str) {
    let inv = &d.inventory;
    let _ = writeln!(o, "## {} ({})\n", cell(&inv.name), cell(&inv.id));
    let _ = writeln!(
        o,
        "Support: **{}**{}\n",
        cell(d.support),
        match &inv.end_of_support {
            Some(e) => cell(&format!(
                " — end of support {e}{}",
                d.support_warning_from
                    .as_ref()
                    .map(|w| format!(", ending soon from {w}"))
                    .unwrap_or_default()
            )),
            None => String::new(),
        }
    );
    if d.missing_controls.is_empty() {
        o.push_str("No compensating control is missing.\n\n");
    } else {
        let _ = writeln!(o, "**Missing: {}**\n", cell(&d.missing_controls.join(", ")));
    }
    o.push_str("### Inventory\n\n");
    kv(o, &tables::inventory(inv));
    o.push_str("### Compensating controls\n\n");
    let rows: Vec<Vec<String>> = d
        .controls
        .iter()
        .map(|c| {
            vec![
                c.name.to_string(),
                c.status.describe().to_string(),
                c.evidence.join("\n"),
                c.gap.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        o,
        &["control", "status", "evidence", "what is missing"],
        &rows,
    );

    o.push_str("### Controls in force\n\n");
    for s in &d.services {
        let _ = writeln!(
            o,
            "#### {} ({} {} → {})\n",
            cell(&s.name),
            s.protocol,
            cell(&s.listen),
            cell(&s.upstream)
        );
        kv(o, &tables::service_controls(s));
    }

    let _ = writeln!(o, "### Denials per {bucket}\n");
    if d.denials.total == 0 {
        o.push_str("No denial in the period.\n\n");
    } else {
        for t in tables::denials(&d.denials, bucket) {
            put(o, &t);
        }
    }

    o.push_str("### Configuration changes touching this device\n\n");
    if d.changes.is_empty() {
        o.push_str("None in the period.\n\n");
    } else {
        put(o, &tables::changes(d));
    }

    let a = &d.access;
    let _ = writeln!(
        o,
        "### Who had access\n\n{} allowed connection(s) from {} distinct client address(es).\n",
        a.allowed_connections, a.distinct_client_addresses
    );
    for t in tables::access(a) {
        put(o, &t);
    }
}
