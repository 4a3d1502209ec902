//! The report as one self-contained, printable HTML page: no script, no
//! external asset, inline SVG charts, one page per device when printed.
//! Every value is escaped: device names, users and reasons come from
//! files and clients.

use std::fmt::Write;

use super::model::*;
use super::svg;
use super::tables::{self, Table};
use crate::policy::SupportStatus;

/// Escapes text for HTML element content and quoted attribute values:
/// the portal's one escaper, owned (the renderer keeps what it builds).
pub fn escape(s: &str) -> String {
    crate::auth::portal::escape_html(s).into_owned()
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; font-size: 14px; color: #111; margin: 2em; max-width: 1100px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 2px solid #333; padding-top: .5em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .4em 0 1em; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .hash { font-family: ui-monospace, monospace; font-size: .92em; word-break: break-all; }
.in_place { background: #d5f5e3; } .partly { background: #fcf3cf; } .missing { background: #f5b7b1; font-weight: bold; }
.past { background: #f5b7b1; font-weight: bold; padding: 2px 4px; } .ending_soon { background: #fcf3cf; padding: 2px 4px; }
.problem { border: 2px solid #c0392b; padding: .5em; }
.note { color: #444; font-style: italic; }
.legend span { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; vertical-align: middle; }
svg.chart { display: block; margin: .5em 0; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  section.device { page-break-before: always; break-before: page; }
  table, svg { page-break-inside: avoid; break-inside: avoid; }
}
";

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let numeric = !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit());
            let _ = write!(
                out,
                "<td{}>{}</td>",
                if numeric { " class=\"num\"" } else { "" },
                escape(cell).replace('\n', "<br>")
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn put(out: &mut String, t: &Table) {
    let headers: Vec<&str> = t.headers.iter().map(String::as_str).collect();
    table(out, &headers, &t.rows);
}

fn kv(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    out.push_str("</table>");
}

fn none_if_empty(out: &mut String, empty: bool, what: &str) -> bool {
    if empty {
        let _ = write!(out, "<p class=\"note\">{}</p>", escape(what));
    }
    empty
}

pub fn render(r: &Report) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>moat evidence report {}</title><style>{STYLE}</style></head><body>\n<h1>moat evidence report</h1>\n",
        escape(&r.generated_at)
    );
    header(&mut o, r);
    gateway_wide(&mut o, r);
    summary(&mut o, r);
    for d in &r.devices {
        device(&mut o, d, r.period.bucket);
    }
    o.push_str("</body></html>\n");
    o
}

fn header(o: &mut String, r: &Report) {
    let a = &r.audit;
    kv(o, &tables::header(r));
    if let Some(p) = &a.problem {
        let _ = write!(o, "<p class=\"problem\">{}</p>", escape(p));
    }
}

fn gateway_wide(o: &mut String, r: &Report) {
    o.push_str("<h2>Gateway-wide</h2><h3>Configuration changes in the period</h3>");
    if !none_if_empty(
        o,
        r.configuration_changes.is_empty(),
        "No reload was applied in the period.",
    ) {
        let rows: Vec<Vec<String>> = r
            .configuration_changes
            .iter()
            .map(|c| {
                vec![
                    c.ts.clone(),
                    c.trigger.clone(),
                    format!("{} → {}", c.old_version, c.new_version),
                    format!("{} → {}", short(&c.old_hash), short(&c.new_hash)),
                    if c.summary.is_empty() {
                        "no tracked change (comments, unused sets, gateway settings)".into()
                    } else {
                        c.summary.join("\n")
                    },
                ]
            })
            .collect();
        table(o, &["time", "trigger", "version", "hash", "changes"], &rows);
    }
    o.push_str("<h3>Reloads rejected</h3>");
    if !none_if_empty(
        o,
        r.reloads_rejected.is_empty(),
        "No reload was rejected in the period.",
    ) {
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
        table(o, &["time", "trigger", "version kept", "errors"], &rows);
    }
    let s = &r.denials_suppressed;
    o.push_str("<h3>Denials summarised (gateway-wide)</h3>");
    let _ = write!(
        o,
        "<p>{} denial(s) summarised. <span class=\"note\">{}</span></p>",
        s.count,
        escape(s.note)
    );
    if let Some(t) = tables::suppressed(s) {
        put(o, &t);
    }
}

fn summary(o: &mut String, r: &Report) {
    o.push_str("<h3>Devices</h3>");
    put(o, &tables::devices(r));
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn device(o: &mut String, d: &DeviceReport, bucket: &str) {
    let inv = &d.inventory;
    let _ = write!(
        o,
        "<section class=\"device\"><h2>{} <small>({})</small></h2>",
        escape(&inv.name),
        escape(&inv.id)
    );
    let class = match d.support_status {
        SupportStatus::Past => "past",
        SupportStatus::EndingSoon => "ending_soon",
        _ => "supported",
    };
    let _ = write!(
        o,
        "<p>Support: <span class=\"{class}\">{}</span>{}</p>",
        escape(d.support),
        match (&inv.end_of_support, &d.support_warning_from) {
            (Some(e), Some(w)) => escape(&format!(" — end of support {e}, ending soon from {w}")),
            (Some(e), None) => escape(&format!(" — end of support {e}")),
            _ => String::new(),
        }
    );
    if d.missing_controls.is_empty() {
        o.push_str("<p>No compensating control is missing.</p>");
    } else {
        let _ = write!(
            o,
            "<p class=\"missing\">Missing: {}</p>",
            escape(&d.missing_controls.join(", "))
        );
    }

    o.push_str("<h3>Inventory</h3>");
    kv(o, &tables::inventory(inv));

    o.push_str("<h3>Compensating controls</h3>");
    o.push_str(
        "<table><tr><th>control</th><th>status</th><th>evidence</th><th>what is missing</th></tr>",
    );
    for c in &d.controls {
        let status = match c.status {
            ControlStatus::InPlace => "in_place",
            ControlStatus::Partly => "partly",
            ControlStatus::Missing => "missing",
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"{status}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(c.name),
            escape(c.status.describe()),
            c.evidence
                .iter()
                .map(|e| escape(e))
                .collect::<Vec<_>>()
                .join("<br>"),
            escape(c.gap.as_deref().unwrap_or(""))
        );
    }
    o.push_str("</table>");

    o.push_str("<h3>Controls in force</h3>");
    if !none_if_empty(
        o,
        d.services.is_empty(),
        "No service of moat fronts this device.",
    ) {
        for s in &d.services {
            service(o, s);
        }
    }

    let _ = write!(o, "<h3>Denials per {}</h3>", escape(bucket));
    if !none_if_empty(o, d.denials.total == 0, "No denial in the period.") {
        o.push_str(&svg::denials_chart(&d.denials, bucket));
        o.push_str("<p class=\"legend\">");
        for (k, reason) in d.denials.by_reason.keys().enumerate() {
            let _ = write!(
                o,
                "<span style=\"background:{}\"></span>{}",
                svg::colour(k),
                escape(reason)
            );
        }
        o.push_str("</p>");
        for t in tables::denials(&d.denials, bucket) {
            put(o, &t);
        }
    }

    o.push_str("<h3>Configuration changes touching this device</h3>");
    if !none_if_empty(o, d.changes.is_empty(), "None in the period.") {
        put(o, &tables::changes(d));
    }

    access(o, &d.access);
    o.push_str("</section>\n");
}

fn service(o: &mut String, s: &ServiceReport) {
    let _ = write!(
        o,
        "<h4>{} <small>({} {} → {})</small></h4>",
        escape(&s.name),
        escape(s.protocol),
        escape(&s.listen),
        escape(&s.upstream)
    );
    let rows = tables::service_controls(s);
    // Newlines in cells: line breaks, after escaping.
    o.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(
            o,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&v).replace('\n', "<br>")
        );
    }
    o.push_str("</table>");
}

fn access(o: &mut String, a: &WhoHadAccess) {
    o.push_str("<h3>Who had access</h3>");
    let _ = write!(
        o,
        "<p>{} allowed connection(s) from {} distinct client address(es).</p>",
        a.allowed_connections, a.distinct_client_addresses
    );
    for t in tables::access(a) {
        put(o, &t);
    }
}
