//! Issue 14: the evidence report, end to end with the real binary. A policy
//! of three devices (one past its end of support, one plaintext and
//! network-only, one TLS + mfa with users) and a crafted audit trail with
//! known counts: `moat report` must give exactly those figures in JSON and
//! Markdown, `--since` must cut, a running moat's admin `/report` must
//! answer all three formats (400 on a bad query), and a real Chromium must
//! render the HTML page without errors, without loading anything.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::mfa::*;
use support::{require, Moat, Workspace};

/// 2026-12-03T12:00:00Z: "now" for `moat report`.
fn now() -> u64 {
    moat::policy::inventory::days_from_date("2026-12-03").unwrap() as u64 * 86_400 + 43_200
}

/// moat.toml with its users and session key: old-ct (past end of
/// support), lab (plaintext, network only), pump (TLS + mfa).
fn write_policy(ws: &Workspace) -> PathBuf {
    let jdoe = Account::new("jdoe", &[]);
    let alice = Account::new("alice", &["biomed"]);
    let bob = Account::new("bob", &["radiology"]);
    let carol = Account::new("carol", &["biomed"]).disabled();
    write_users(ws, &[&jdoe, &alice, &bob, &carol]);
    write_session_key(&ws.path("session.key"));
    let text = format!(
        r#"[gateway]
audit_log = "audit.jsonl"
shutdown_grace = "3s"

[admin]
listen = "127.0.0.1:0"

{auth}
[[device]]
id = "old-ct"
name = "Old CT scanner"
manufacturer = "Acme Imaging"
model = "CT-9"
location = "Radiology, room 3"
owner = "Clinical engineering"
end_of_support = 2020-01-01
serial_number = "SN-0042"

[[device.service]]
name = "dicom"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9"
allow = ["127.0.0.0/8"]
plaintext = true

[[device]]
id = "lab"
name = "Lab analyzer"
end_of_support = 2031-06-30

[[device.service]]
name = "hl7"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9"
allow = ["127.0.0.1", "10.40.2.11"]
plaintext = true

[[device]]
id = "pump"
name = "Infusion pump"
{ui}"#,
        auth = auth_table(""),
        ui = mfa_service(
            ws,
            "ui",
            "127.0.0.1:9".parse().unwrap(),
            "users = [\"jdoe\"]\ngroups = [\"biomed\"]",
            ""
        ),
    );
    ws.write("moat.toml", &text)
}

fn line(ts: &str, body: &str) -> String {
    format!("{{\"ts\":\"{ts}\",{body}}}\n")
}

fn denied(ts: &str, conn: u64, device: &str, reason: &str) -> String {
    line(
        ts,
        &format!("\"event\":\"connection_denied\",\"conn_id\":{conn},\"device\":\"{device}\",\"service\":\"dicom\",\"client\":\"10.9.9.9:4000\",\"listen\":\"127.0.0.1:104\",\"reason\":\"{reason}\""),
    )
}

/// The trail: 7 not_allowlisted on 2026-12-01 and 3 on 2026-12-02 (after
/// noon) for old-ct, 2 request_denied for pump, one reload with a diff,
/// one grant opened with break-glass and its break_glass_used, a sign-in,
/// an allowed connection with a certificate, one denials_suppressed, lines
/// before and after the period, and one garbage line.
fn write_trail(ws: &Workspace) -> PathBuf {
    let mut t = String::new();
    t += &denied("2026-10-01T08:00:00.000Z", 1, "old-ct", "not_allowlisted"); // before
    for i in 0..7 {
        t += &denied(
            &format!("2026-12-01T0{i}:15:00.000Z"),
            10 + i,
            "old-ct",
            "not_allowlisted",
        );
    }
    for i in 0..3 {
        t += &denied(
            &format!("2026-12-02T1{}:30:00.000Z", i + 3),
            20 + i,
            "old-ct",
            "not_allowlisted",
        );
    }
    t += "this is not JSON {\n";
    for i in 0..2 {
        t += &line(
            &format!("2026-12-02T14:0{i}:00.000Z"),
            "\"event\":\"http_request\",\"conn_id\":30,\"device\":\"pump\",\"service\":\"ui\",\"client\":\"127.0.0.1:5000\",\"listen\":\"127.0.0.1:8443\",\"method\":\"POST\",\"path\":\"/admin\",\"version\":\"HTTP/1.1\",\"status\":403,\"response_bytes\":0,\"duration_ms\":1,\"decision\":\"denied\",\"reason\":\"request_denied\"",
        );
    }
    t += &line(
        "2026-12-01T09:00:00.000Z",
        "\"event\":\"reload_applied\",\"trigger\":\"signal\",\"old_version\":1,\"new_version\":2,\"old_hash\":\"1111aaaa\",\"new_hash\":\"2222bbbb\",\"changes\":{\"devices_added\":[],\"devices_removed\":[],\"devices_changed\":[],\"services_added\":[],\"services_removed\":[],\"services_changed\":[\"lab/hl7\"],\"access\":[{\"service\":\"lab/hl7\",\"allow_added\":[\"10.40.2.11/32\"]}]}",
    );
    t += &line(
        "2026-12-02T15:00:00.000Z",
        "\"event\":\"auth_succeeded\",\"conn_id\":31,\"device\":\"pump\",\"service\":\"ui\",\"client\":\"127.0.0.1:5001\",\"listen\":\"127.0.0.1:8443\",\"user\":\"jdoe\"",
    );
    t += &line(
        "2026-12-02T15:01:00.000Z",
        "\"event\":\"grant_opened\",\"conn_id\":32,\"device\":\"pump\",\"service\":\"ui\",\"client\":\"127.0.0.1:5002\",\"listen\":\"127.0.0.1:8443\",\"grant_id\":\"5f1c0a9e3b7d2e44\",\"user\":\"alice\",\"granted_device\":\"old-ct\",\"granted_service\":\"dicom\",\"binding\":{\"address\":\"10.20.40.17\"},\"until\":1796230000,\"break_glass\":true",
    );
    t += &line(
        "2026-12-02T15:01:00.001Z",
        "\"event\":\"break_glass_used\",\"conn_id\":32,\"device\":\"pump\",\"service\":\"ui\",\"client\":\"127.0.0.1:5002\",\"listen\":\"127.0.0.1:8443\",\"severity\":\"high\",\"user\":\"alice\",\"granted_device\":\"old-ct\",\"granted_service\":\"dicom\",\"code_id\":\"BG-07\",\"grant_id\":\"5f1c0a9e3b7d2e44\",\"until\":1796230000",
    );
    t += &line(
        "2026-12-02T15:02:00.000Z",
        "\"event\":\"connection_allowed\",\"conn_id\":33,\"device\":\"pump\",\"service\":\"ui\",\"client\":\"127.0.0.1:5003\",\"listen\":\"127.0.0.1:8443\",\"matched\":\"127.0.0.0/8\",\"upstream\":\"127.0.0.1:9\",\"principal\":{\"kind\":\"certificate\",\"name\":\"dev-client\",\"subject\":\"CN=dev-client\",\"fingerprint_sha256\":\"00\"}",
    );
    t += &line(
        "2026-12-02T16:00:00.000Z",
        "\"event\":\"denials_suppressed\",\"count\":5,\"by_reason\":{\"not_allowlisted\":4,\"rate_limited\":1},\"window_ms\":1000",
    );
    t += &line(
        "2026-12-02T16:00:01.000Z",
        "\"event\":\"some_future_event\",\"novel\":[1,2]",
    );
    t += &denied("2026-12-04T08:00:00.000Z", 99, "old-ct", "not_allowlisted"); // after now
    ws.write("crafted.jsonl", &t)
}

fn moat_report(config: &Path, clock: &Path, args: &[&str]) -> Output {
    Command::new(support::moat_bin())
        .args(["report", "-c"])
        .arg(config)
        .args(args)
        .env(CLOCK_ENV, clock)
        .stdin(Stdio::null())
        .output()
        .expect("running moat report")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "moat report failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn device<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["inventory"]["id"] == id)
        .unwrap_or_else(|| panic!("no device {id}"))
}

fn bucket(d: &Value, reason: &str, label: &str) -> u64 {
    let labels = d["denials"]["buckets"].as_array().unwrap();
    let i = labels
        .iter()
        .position(|l| l == label)
        .unwrap_or_else(|| panic!("no bucket {label} in {labels:?}"));
    d["denials"]["by_reason"][reason][i].as_u64().unwrap()
}

fn control<'a>(d: &'a Value, id: &str) -> &'a str {
    d["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no control {id}"))["status"]
        .as_str()
        .unwrap()
}

#[test]
fn the_json_report_gives_the_exact_figures_of_the_trail() {
    let ws = Workspace::new();
    let config = write_policy(&ws);
    let trail = write_trail(&ws);
    let clock = TestClock::new(&ws, now());
    let out = moat_report(
        &config,
        clock.path(),
        &["--audit", trail.to_str().unwrap(), "--format", "json"],
    );
    let r: Value = serde_json::from_str(&ok_stdout(&out)).unwrap();

    assert_eq!(r["generated_at"], "2026-12-03T12:00:00Z");
    assert_eq!(r["period"]["since"], "2026-11-03T12:00:00Z");
    assert_eq!(r["period"]["bucket"], "day");
    assert_eq!(r["policy"]["version"], 1);
    assert_eq!(r["policy"]["content_hash"].as_str().unwrap().len(), 64);
    let audit = &r["audit"];
    assert_eq!(audit["file"], trail.to_str().unwrap());
    assert_eq!(audit["lines_total"], 22);
    assert_eq!(audit["lines_not_json"], 1);
    assert_eq!(audit["lines_not_json_at"], serde_json::json!([12]));
    assert_eq!(audit["lines_in_period"], 19);
    // A crafted trail has no hash chain: the report says it cannot vouch
    // for it, at its first line.
    let chain = audit["hash_chain"].as_str().unwrap();
    assert!(
        chain.starts_with("ALTERED OR INCOMPLETE") && chain.contains(":1: "),
        "{chain}"
    );

    let old = device(&r, "old-ct");
    assert_eq!(old["support_status"], "past");
    assert_eq!(old["inventory"]["serial_number"], "SN-0042");
    assert_eq!(old["denials"]["totals"]["not_allowlisted"], 10);
    assert_eq!(old["denials"]["total"], 10);
    assert_eq!(bucket(old, "not_allowlisted", "2026-12-01"), 7);
    assert_eq!(bucket(old, "not_allowlisted", "2026-12-02"), 3);
    assert_eq!(bucket(old, "not_allowlisted", "2026-12-03"), 0);
    let grants = old["access"]["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["user"], "alice");
    assert_eq!(grants[0]["binding"], "address 10.20.40.17");
    assert_eq!(grants[0]["break_glass"], true);
    assert_eq!(old["access"]["break_glass"][0]["code_id"], "BG-07");
    assert_eq!(control(old, "inventory_end_of_support"), "partly");
    assert_eq!(control(old, "encryption_in_transit"), "missing");
    assert_eq!(control(old, "access_control"), "missing");
    assert_eq!(control(old, "segmentation"), "partly");
    assert_eq!(
        old["missing_controls"],
        serde_json::json!([
            "Strong access control and MFA",
            "Encryption in transit",
            "Protocol validation"
        ])
    );

    let lab = device(&r, "lab");
    assert_eq!(lab["support_status"], "supported");
    assert_eq!(lab["services"][0]["plaintext"], true);
    assert_eq!(lab["services"][0]["access_mode"]["mode"], "network");
    let allow = lab["services"][0]["allow"].as_array().unwrap();
    assert_eq!(allow.len(), 2);
    assert!(allow[1]["written_at"]
        .as_str()
        .unwrap()
        .starts_with(config.to_str().unwrap()));
    assert_eq!(lab["denials"]["total"], 0);
    assert_eq!(lab["changes"].as_array().unwrap().len(), 2);
    assert_eq!(control(lab, "restricted_ports_and_hosts"), "in_place");

    let pump = device(&r, "pump");
    assert_eq!(pump["denials"]["totals"]["request_denied"], 2);
    let svc = &pump["services"][0];
    assert_eq!(svc["tls"]["min_version"], "TLS 1.2");
    assert!(!svc["tls"]["certificates"].as_array().unwrap().is_empty());
    assert_eq!(svc["access_mode"]["mode"], "mfa");
    assert_eq!(svc["access_mode"]["users"], serde_json::json!(["jdoe"]));
    // Disabled carol and bob (another group) are not let in.
    assert_eq!(
        pump["access"]["permitted"][0]["users"],
        serde_json::json!(["alice", "jdoe"])
    );
    assert_eq!(pump["access"]["signed_in"]["jdoe"], 1);
    assert_eq!(pump["access"]["principals"]["certificate: dev-client"], 1);
    assert_eq!(pump["access"]["allowed_connections"], 1);
    assert_eq!(pump["access"]["distinct_client_addresses"], 1);
    assert_eq!(control(pump, "encryption_in_transit"), "in_place");
    assert_eq!(control(pump, "access_control"), "in_place");
    assert!(svc["timeouts"]["http"]["response"].is_string());

    let changes = r["configuration_changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["old_hash"], "1111aaaa");
    assert_eq!(
        changes[0]["summary"],
        serde_json::json!(["lab/hl7: service changed", "lab/hl7: allow +10.40.2.11/32"])
    );
    assert_eq!(r["denials_suppressed"]["count"], 5);
    assert_eq!(r["denials_suppressed"]["by_reason"]["not_allowlisted"], 4);
}

#[test]
fn markdown_carries_the_same_figures_and_since_cuts_the_period() {
    let ws = Workspace::new();
    let config = write_policy(&ws);
    let trail = write_trail(&ws);
    let clock = TestClock::new(&ws, now());
    let audit = trail.to_str().unwrap();
    let md = ok_stdout(&moat_report(
        &config,
        clock.path(),
        &["--audit", audit, "--format", "md"],
    ));
    for needle in [
        "# moat evidence report",
        "## Old CT scanner (old-ct)",
        "| not\\_allowlisted | 10 |",
        "| 2026-12-01 | 7 |",
        "| 2026-12-02 | 3 |",
        "| request\\_denied | 2 |",
        "5 denial(s) summarised",
        "lab/hl7: allow +10.40.2.11/32",
        "BG-07",
        "| Encryption in transit | missing |",
        "past end of support",
    ] {
        assert!(md.contains(needle), "no {needle:?} in:\n{md}");
    }

    // One day back from noon: only the three denials after noon on 12-02.
    let r: Value = serde_json::from_str(&ok_stdout(&moat_report(
        &config,
        clock.path(),
        &["--audit", audit, "--format", "json", "--since", "1d"],
    )))
    .unwrap();
    assert_eq!(r["period"]["bucket"], "hour");
    let old = device(&r, "old-ct");
    assert_eq!(old["denials"]["totals"]["not_allowlisted"], 3);
    assert_eq!(bucket(old, "not_allowlisted", "2026-12-02T13:00Z"), 1);
    assert!(old["access"]["grants"].as_array().unwrap().len() == 1);
    assert_eq!(r["configuration_changes"].as_array().unwrap().len(), 0);

    // -o writes the file; stdout stays empty.
    let out_file = ws.path("report.json");
    let out = moat_report(
        &config,
        clock.path(),
        &[
            "--audit",
            audit,
            "--format",
            "json",
            "-o",
            out_file.to_str().unwrap(),
        ],
    );
    assert!(ok_stdout(&out).is_empty());
    let written: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(written["devices"].as_array().unwrap().len(), 3);
}

#[test]
fn a_bad_policy_exits_2_and_an_unreadable_trail_is_said_plainly() {
    let ws = Workspace::new();
    let config = write_policy(&ws);
    let clock = TestClock::new(&ws, now());
    // The policy's own trail does not exist yet: said, not fatal.
    let r: Value = serde_json::from_str(&ok_stdout(&moat_report(
        &config,
        clock.path(),
        &["--format", "json"],
    )))
    .unwrap();
    assert_eq!(r["audit"]["read"], false);
    assert!(r["audit"]["problem"]
        .as_str()
        .unwrap()
        .contains("cannot be read"));

    let bad = ws.write("bad.toml", "[gateway]\naudit_log = 7\n");
    let out = moat_report(&bad, clock.path(), &["--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = moat_report(&config, clock.path(), &["--format", "pdf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("html, md or json"));
}

/// (status, content type, body) of an admin GET.
fn admin(moat: &Moat, path: &str) -> (u16, String, String) {
    let raw = moat.admin_get(path);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

#[test]
fn the_admin_report_answers_three_formats_and_400_on_a_bad_query() {
    let ws = Workspace::new();
    let config = write_policy(&ws);
    // The live trail is stamped with the system time: "now" is that.
    let system_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = TestClock::new(&ws, system_now + 60);
    let moat = start_config(&config, &clock, &["dicom", "hl7", "ui"]);

    let (status, ct, body) = admin(&moat, "/report?format=json&since=2d");
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "application/json");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["devices"].as_array().unwrap().len(), 3);
    assert_eq!(r["period"]["bucket"], "hour");
    assert_eq!(r["audit"]["read"], true);
    // gateway_started and three listener_started, at least.
    assert!(
        r["audit"]["lines_in_period"].as_u64().unwrap() >= 4,
        "{}",
        r["audit"]
    );
    assert_eq!(device(&r, "old-ct")["support_status"], "past");
    // moat's own trail is chained: the live report vouches for it.
    let chain = r["audit"]["hash_chain"].as_str().unwrap();
    assert!(chain.starts_with("intact (moat audit verify)"), "{chain}");

    let (status, ct, body) = admin(&moat, "/report?format=md");
    assert_eq!(status, 200);
    assert_eq!(ct, "text/markdown; charset=utf-8");
    assert!(body.contains("## Infusion pump (pump)"), "{body}");

    let (status, ct, body) = admin(&moat, "/report");
    assert_eq!(status, 200);
    assert_eq!(ct, "text/html; charset=utf-8");
    assert!(body.starts_with("<!DOCTYPE html>"));

    let (status, _, body) = admin(&moat, "/report?format=pdf");
    assert_eq!(status, 400);
    assert!(body.contains("html, md or json"), "{body}");
    let (status, _, body) = admin(&moat, "/report?since=forever");
    assert_eq!(status, 400);
    assert!(body.contains("since"), "{body}");
}

const PYTHON: &str = "/usr/bin/python3";

#[test]
fn chromium_renders_the_html_report_without_errors_requests_or_injected_markup() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver", PYTHON] {
        require(tool);
    }
    let ws = Workspace::new();
    let config = write_policy(&ws);
    let trail = write_trail(&ws);
    // Names from clients and files that would run as markup if not escaped.
    let mut hostile = std::fs::read_to_string(&trail).unwrap();
    hostile += &line(
        "2026-12-02T17:00:00.000Z",
        "\"event\":\"grant_opened\",\"user\":\"o'brien \\\"<img src=x onerror=document.title='pwned'>\",\"granted_device\":\"lab\",\"granted_service\":\"hl7\",\"binding\":{\"address\":\"10.1.1.1\"},\"until\":1796230000,\"break_glass\":false",
    );
    hostile += &denied(
        "2026-12-02T17:00:01.000Z",
        40,
        "lab",
        "<script>document.title='pwned'</script>",
    );
    std::fs::write(&trail, hostile).unwrap();
    let clock = TestClock::new(&ws, now());
    let html = ws.path("report.html");
    ok_stdout(&moat_report(
        &config,
        clock.path(),
        &[
            "--audit",
            trail.to_str().unwrap(),
            "--format",
            "html",
            "-o",
            html.to_str().unwrap(),
        ],
    ));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration/browser/report.py"
    );
    // Chromium's start on a busy machine is slow: report.py's own page
    // timeout (60 s) bounds it.
    let out = Command::new(PYTHON)
        .arg(script)
        .arg(&html)
        .stdin(Stdio::null())
        .output()
        .expect("running report.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "report.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["title"], "moat evidence report 2026-12-03T12:00:00Z");
    assert_eq!(seen["severe"], serde_json::json!([]), "console errors");
    assert_eq!(
        seen["resources"],
        serde_json::json!([]),
        "the page loaded something"
    );
    assert_eq!(seen["scripts"], 0, "markup from the trail became a script");
    assert_eq!(seen["images"], 0, "markup from the trail became an image");
    let text = seen["text"].as_str().unwrap();
    assert!(text.contains("o'brien \"<img src=x onerror=document.title='pwned'>"));
    assert!(text.contains("<script>document.title='pwned'</script>"));
    let headings: Vec<&str> = seen["headings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    for h in [
        "Old CT scanner (old-ct)",
        "Lab analyzer (lab)",
        "Infusion pump (pump)",
    ] {
        assert!(headings.contains(&h), "no heading {h:?} in {headings:?}");
    }
    // One chart per device with denials (old-ct, lab, pump), each drawn.
    let charts = seen["charts"].as_array().unwrap();
    assert_eq!(charts.len(), 3, "{charts:?}");
    for c in charts {
        assert!(c["width"].as_f64().unwrap() > 0.0 && c["height"].as_f64().unwrap() > 0.0);
    }
}
