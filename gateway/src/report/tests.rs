use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use super::model::ControlStatus;
use super::trail::{read, Window};
use super::*;
use crate::policy::inventory::days_from_date;

fn day(date: &str) -> u64 {
    days_from_date(date).unwrap() as u64 * 86_400
}

fn policy(body: &str) -> Policy {
    let cfg = crate::config::parse(Path::new("moat.toml"), body.to_string()).unwrap();
    crate::policy::compile(&cfg, 1).unwrap()
}

const DENIED: &str = r#""event":"connection_denied","device":"ct","service":"dicom","client":"10.0.0.9:5000","listen":"127.0.0.1:1","reason":"not_allowlisted""#;

fn denied(ts: &str, conn: u64) -> String {
    format!("{{\"ts\":\"{ts}\",\"conn_id\":{conn},{DENIED}}}\n")
}

#[test]
fn denials_fall_in_day_buckets_and_the_period_cuts_to_the_millisecond() {
    // Noon on 2026-12-03, three days back: from noon on 2026-11-30.
    let now = day("2026-12-03") + 43_200;
    let w = Window::new(now, Duration::from_secs(3 * 86_400));
    assert_eq!(
        w.labels(),
        ["2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03"]
    );
    let trail = [
        denied("2026-11-30T11:59:59.999Z", 1), // before the period
        denied("2026-11-30T12:00:00.000Z", 2),
        denied("2026-11-30T23:59:59.999Z", 3),
        denied("2026-12-01T00:00:00.000Z", 4),
        denied("2026-12-03T12:00:00.999Z", 5), // the last millisecond of "now"
        denied("2026-12-03T12:00:01.000Z", 6), // after now
    ]
    .concat();
    let t = read(Cursor::new(trail), &w);
    assert_eq!(t.source.lines_total, 6);
    assert_eq!(t.source.lines_in_period, 4);
    assert_eq!(t.devices["ct"].denials["not_allowlisted"], [2, 1, 0, 1]);
}

#[test]
fn two_days_or_less_count_per_hour() {
    let now = day("2026-12-03") + 3 * 3_600 + 1_800; // 03:30
    let w = Window::new(now, Duration::from_secs(2 * 3_600));
    assert_eq!(w.bucket_name(), "hour");
    assert_eq!(
        w.labels(),
        [
            "2026-12-03T01:00Z",
            "2026-12-03T02:00Z",
            "2026-12-03T03:00Z"
        ]
    );
    let trail = [
        denied("2026-12-03T01:29:59.000Z", 1), // before 01:30
        denied("2026-12-03T01:30:00.000Z", 2),
        denied("2026-12-03T02:59:59.999Z", 3),
        denied("2026-12-03T03:00:00.000Z", 4),
    ]
    .concat();
    let t = read(Cursor::new(trail), &w);
    assert_eq!(t.devices["ct"].denials["not_allowlisted"], [1, 1, 1]);
}

#[test]
fn garbage_unknown_events_and_a_guard_refusal_recorded_twice() {
    let now = day("2026-12-03");
    let w = Window::new(now, Duration::from_secs(86_400));
    let trail = concat!(
        "not json at all\n",
        "\n",
        "[1,2]\n",
        "{\"event\":\"connection_denied\",\"device\":\"ct\"}\n",
        "{\"ts\":\"2026-12-02T10:00:00.000Z\",\"event\":\"from_the_future\",\"device\":\"ct\",\"whatever\":[1]}\n",
        "{\"ts\":\"2026-12-02T10:00:01.000Z\",\"event\":\"dicom_association\",\"conn_id\":7,\"device\":\"ct\",\"outcome\":\"rejected\",\"reason\":\"dicom_calling_ae_refused\",\"extra\":true}\n",
        "{\"ts\":\"2026-12-02T10:00:01.001Z\",\"event\":\"connection_denied\",\"conn_id\":7,\"device\":\"ct\",\"reason\":\"dicom_calling_ae_refused\"}\n",
        "{\"ts\":\"2026-12-02T10:00:02.000Z\",\"event\":\"dicom_association\",\"conn_id\":8,\"device\":\"ct\",\"outcome\":\"accepted\"}\n",
        "{\"ts\":\"2026-12-02T10:00:03.000Z\",\"event\":\"http_request\",\"conn_id\":9,\"device\":\"web\",\"decision\":\"denied\",\"reason\":\"request_denied\"}\n",
        "{\"ts\":\"2026-12-02T10:00:04.000Z\",\"event\":\"http_request\",\"conn_id\":9,\"device\":\"web\",\"decision\":\"denied\",\"reason\":\"request_denied\"}\n",
        "{\"ts\":\"2026-12-02T10:00:05.000Z\",\"event\":\"http_request\",\"conn_id\":9,\"device\":\"web\",\"client\":\"[::ffff:10.1.1.1]:4\",\"decision\":\"allowed\",\"principal\":{\"kind\":\"user\",\"name\":\"jdoe\"}}\n",
        "{\"ts\":\"2026-12-02T10:00:06.000Z\",\"event\":\"connection_allowed\",\"conn_id\":10,\"device\":\"web\",\"client\":\"10.1.1.1:5\"}\n",
        "{\"ts\":\"2026-12-02T10:00:07.000Z\",\"event\":\"hl7_message\",\"conn_id\":11,\"device\":\"lab\",\"decision\":\"refused\",\"reason\":\"hl7_message_type_refused\"}\n",
    );
    let t = read(Cursor::new(trail), &w);
    assert_eq!(t.source.lines_not_json, 2);
    assert_eq!(t.source.lines_not_json_at, [1, 3]);
    assert_eq!(t.source.lines_without_ts, 1);
    assert_eq!(sum(&t.devices["ct"].denials["dicom_calling_ae_refused"]), 1);
    assert_eq!(sum(&t.devices["web"].denials["request_denied"]), 2);
    assert_eq!(
        sum(&t.devices["lab"].denials["hl7_message_type_refused"]),
        1
    );
    let web = &t.devices["web"];
    assert_eq!(web.allowed_connections, 1);
    assert_eq!(web.clients.len(), 1, "{:?}", web.clients);
    assert_eq!(web.principals["user: jdoe"], 1);
}

#[test]
fn reloads_grants_and_summarised_denials() {
    let now = day("2026-12-03");
    let w = Window::new(now, Duration::from_secs(86_400));
    let trail = concat!(
        "{\"ts\":\"2026-12-02T09:00:00.000Z\",\"event\":\"reload_applied\",\"trigger\":\"signal\",\"old_version\":1,\"new_version\":2,\"old_hash\":\"aa\",\"new_hash\":\"bb\",\"changes\":{\"devices_added\":[\"new\"],\"devices_removed\":[],\"devices_changed\":[],\"services_added\":[],\"services_removed\":[],\"services_changed\":[\"ct/dicom\"],\"access\":[{\"service\":\"ct/dicom\",\"allow_added\":[\"10.0.0.0/24\"],\"deny_removed\":[\"10.9.9.9/32\"]}]}}\n",
        "{\"ts\":\"2026-12-02T09:01:00.000Z\",\"event\":\"reload_rejected\",\"trigger\":\"admin\",\"version_in_force\":2,\"errors\":[\"moat.toml:3:1: bad\"]}\n",
        "{\"ts\":\"2026-12-02T09:02:00.000Z\",\"event\":\"grant_opened\",\"device\":\"portal\",\"user\":\"jdoe\",\"granted_device\":\"ct\",\"granted_service\":\"dicom\",\"binding\":{\"address\":\"10.0.0.7\"},\"until\":1796200000,\"break_glass\":true}\n",
        "{\"ts\":\"2026-12-02T09:02:00.001Z\",\"event\":\"break_glass_used\",\"device\":\"portal\",\"user\":\"jdoe\",\"granted_device\":\"ct\",\"granted_service\":\"dicom\",\"code_id\":\"K3\",\"until\":1796200000}\n",
        "{\"ts\":\"2026-12-02T09:03:00.000Z\",\"event\":\"denials_suppressed\",\"count\":12,\"by_reason\":{\"not_allowlisted\":10,\"rate_limited\":2},\"window_ms\":1000}\n",
        "{\"ts\":\"2026-12-02T09:03:01.000Z\",\"event\":\"denials_suppressed\",\"count\":1,\"by_reason\":{\"not_allowlisted\":1},\"window_ms\":1000}\n",
    );
    let t = read(Cursor::new(trail), &w);
    assert_eq!(t.changes.len(), 1);
    assert_eq!(
        t.changes[0].summary,
        [
            "new: device added",
            "ct/dicom: service changed",
            "ct/dicom: allow +10.0.0.0/24; deny −10.9.9.9/32"
        ]
    );
    assert_eq!(t.devices["ct"].changes.len(), 2);
    assert_eq!(t.devices["new"].changes[0].change, "device added");
    assert_eq!(t.rejected[0].errors, ["moat.toml:3:1: bad"]);
    let ct = &t.devices["ct"];
    assert_eq!(ct.grants.len(), 1);
    assert!(ct.grants[0].break_glass);
    assert_eq!(ct.grants[0].binding, "address 10.0.0.7");
    assert_eq!(ct.break_glass[0].code_id, "K3");
    assert!(!t.devices.contains_key("portal"));
    assert_eq!(t.suppressed.count, 13);
    assert_eq!(t.suppressed.by_reason["not_allowlisted"], 11);
}

const PLAIN_OPEN: &str = "[gateway]\naudit_log = \"-\"\n[admin]\nenabled = false\n\
[[device]]\nid = \"old\"\nname = \"Old\"\nend_of_support = 2020-01-01\n\
[[device.service]]\nname = \"raw\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:1\"\nupstream = \"10.0.0.1:104\"\nallow = [\"0.0.0.0/0\"]\nplaintext = true\n\
[[device]]\nid = \"web\"\nname = \"Web\"\n\
[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:2\"\nupstream = \"10.0.0.2:80\"\nallow = [\"10.0.0.0/24\"]\nplaintext = true\n\
[device.service.limits]\nrequests_per_client = \"10/s\"\n";

fn status(r: &Report, device: &str, control: &str) -> ControlStatus {
    let d = r
        .devices
        .iter()
        .find(|d| &*d.inventory.id == device)
        .unwrap();
    d.controls.iter().find(|c| c.id == control).unwrap().status
}

#[test]
fn compensating_controls_are_judged_per_device() {
    let p = policy(PLAIN_OPEN);
    let r = build(&p, day("2026-12-03"), Duration::from_secs(86_400), None);
    use ControlStatus::*;
    // Everyone allowed, plaintext, network only, raw tcp, past support.
    assert_eq!(status(&r, "old", "restricted_ports_and_hosts"), Missing);
    assert_eq!(status(&r, "old", "encryption_in_transit"), Missing);
    assert_eq!(status(&r, "old", "access_control"), Missing);
    assert_eq!(status(&r, "old", "protocol_validation"), Missing);
    assert_eq!(status(&r, "old", "inventory_end_of_support"), Partly);
    assert_eq!(status(&r, "old", "segmentation"), Partly);
    assert_eq!(status(&r, "old", "shielding"), Partly);
    // No [siem]: the trail stays on the host.
    assert_eq!(status(&r, "old", "monitoring_audit_trail"), Partly);
    // Standard output cannot be read: said so, not failed.
    assert!(!r.audit.read);
    assert!(r
        .audit
        .problem
        .as_deref()
        .unwrap()
        .contains("standard output"));
    assert_eq!(status(&r, "old", "configuration_changes"), Partly);
    let old = &r.devices[0];
    assert!(old
        .missing_controls
        .contains(&"Encryption in transit".to_string()));
    let gap = old
        .controls
        .iter()
        .find(|c| c.id == "encryption_in_transit")
        .and_then(|c| c.gap.clone())
        .unwrap();
    assert!(gap.contains("raw"), "{gap}");
    // A narrow allowlist, HTTP checked, rate limited; no date recorded.
    assert_eq!(status(&r, "web", "restricted_ports_and_hosts"), InPlace);
    assert_eq!(status(&r, "web", "protocol_validation"), InPlace);
    assert_eq!(status(&r, "web", "shielding"), InPlace);
    assert_eq!(status(&r, "web", "inventory_end_of_support"), Missing);
    let web = &r.devices[1];
    assert!(web
        .controls
        .iter()
        .filter(|c| c.status == InPlace)
        .all(|c| c.gap.is_none()));
}

#[test]
fn html_and_markdown_escape_what_files_and_clients_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let body = PLAIN_OPEN.replace("name = \"Old\"", "name = \"<script>alert(1)</script>\"");
    let p = policy(&body);
    let audit = dir.path().join("audit.jsonl");
    std::fs::write(
        &audit,
        "{\"ts\":\"2026-12-02T09:02:00.000Z\",\"event\":\"grant_opened\",\"user\":\"o'brien \\\"x\\\" <b>\",\"granted_device\":\"old\",\"granted_service\":\"raw|x\",\"binding\":{\"address\":\"10.0.0.7\"},\"until\":1796200000,\"break_glass\":false}\n\
{\"ts\":\"2026-12-02T09:03:00.000Z\",\"event\":\"connection_denied\",\"device\":\"old\",\"reason\":\"<img src=x onerror=alert(2)>\"}\n",
    )
    .unwrap();
    let r = build(
        &p,
        day("2026-12-03"),
        Duration::from_secs(86_400),
        Some(&audit),
    );
    let html = html::render(&r);
    assert!(!html.contains("<script"), "a script tag got through");
    assert!(!html.contains("<img"));
    assert!(!html.contains("<b>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("o&#39;brien &quot;x&quot; &lt;b&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    let md = markdown::render(&r);
    assert!(!md.contains("<script"));
    assert!(md.contains("raw\\|x"));
    assert!(md.contains("&lt;script&gt;"));
    assert_eq!(
        escape_count(&html, "<svg"),
        1,
        "one chart: the device with denials"
    );
}

fn sum(v: &[u64]) -> u64 {
    v.iter().sum()
}

fn escape_count(s: &str, what: &str) -> usize {
    s.matches(what).count()
}

#[test]
fn query_values_are_checked() {
    assert_eq!(
        parse_query(Some("format=json&since=2d")).unwrap(),
        (Format::Json, Duration::from_secs(2 * 86_400))
    );
    assert_eq!(parse_query(None).unwrap().0, Format::Html);
    assert_eq!(parse_query(Some("format=md")).unwrap().0, Format::Markdown);
    assert!(parse_query(Some("format=pdf"))
        .unwrap_err()
        .contains("html, md or json"));
    assert!(parse_query(Some("since=soon"))
        .unwrap_err()
        .contains("since"));
    assert!(parse_query(Some("since=0s")).is_err());
    assert!(parse_query(Some("colour=red"))
        .unwrap_err()
        .contains("colour"));
}

#[test]
fn each_service_says_whether_it_fails_open_or_closed_without_an_audit_trail() {
    let body = PLAIN_OPEN.replace(
        "allow = [\"10.0.0.0/24\"]\n",
        "allow = [\"10.0.0.0/24\"]\non_audit_failure = \"refuse\"\n",
    );
    let r = build(
        &policy(&body),
        day("2026-12-03"),
        Duration::from_secs(86_400),
        None,
    );
    let row = |device: &str| {
        let d = r
            .devices
            .iter()
            .find(|d| &*d.inventory.id == device)
            .unwrap();
        let s = &d.services[0];
        let rows = super::tables::service_controls(s);
        let (_, text) = rows
            .into_iter()
            .find(|(k, _)| *k == "audit trail unwritable")
            .unwrap();
        (s.on_audit_failure, text)
    };
    let (raw, raw_text) = row("old");
    assert_eq!(raw, "serve");
    assert!(raw_text.contains("fail open"), "{raw_text}");
    let (ui, ui_text) = row("web");
    assert_eq!(ui, "refuse");
    assert!(ui_text.contains("fail closed"), "{ui_text}");
}
