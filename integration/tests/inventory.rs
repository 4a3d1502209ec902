//! The device inventory and end-of-support tracking (issue 14, point 1),
//! end to end: `moat check`, the admin `/devices` and `/metrics` of a
//! running moat on a test clock, the SBOM check, and certificate expiry
//! read back with `openssl x509`.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::*;

/// Unix seconds of `date` (YYYY-MM-DD) at `secs` into the day, UTC.
fn at(date: &str, secs: u64) -> u64 {
    moat::policy::inventory::days_from_date(date).unwrap() as u64 * 86_400 + secs
}

/// Two devices: "ct" with a full inventory (end of support 2028-12-01,
/// 24 months' warning by default), "pump" with no end-of-support date.
fn devices(ws: &Workspace, sbom_sha256: &str) -> String {
    format!(
        r#"[[device]]
id = "ct"
name = "CT scanner"
manufacturer = "Example Imaging"
model = "SomaScan 64"
location = "Radiology 3"
owner = "biomed"
end_of_support = 2028-12-01
serial_number = "SS64-0042117"
udi = "(01)00812345678903"
software_version = "VB10A"
lifecycle = "legacy"
sbom = "sbom.json"
sbom_sha256 = "{sbom_sha256}"
mds2 = "MDS2 rev 2014-03"
known_vulnerabilities = ["SMBv1 (MS17-010)", "OpenSSL 0.9.8h"]

  [[device.service]]
  name = "dicom"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "127.0.0.1:9"
  allow = ["127.0.0.0/8"]
{tls}
[[device]]
id = "pump"
name = "Infusion pump server"
location = "ICU \"east\" wing\\rack 2\nsecond line"

  [[device.service]]
  name = "ui"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "127.0.0.1:9"
  allow = ["127.0.0.0/8"]
  plaintext = true
"#,
        tls = ws.tls_table()
    )
}

/// Writes the SBOM and returns its SHA-256 as `sha256sum` prints it.
fn sbom_sha256(ws: &Workspace) -> String {
    ws.write("sbom.json", "{\"bomFormat\": \"CycloneDX\"}\n");
    let out = Command::new("sha256sum")
        .arg(ws.path("sbom.json"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn write_config(ws: &Workspace, extra_gateway: &str, sha: &str) -> std::path::PathBuf {
    let body = devices(ws, sha);
    ws.write(
        "moat.toml",
        &format!(
            "[gateway]\naudit_log = \"audit.jsonl\"\nshutdown_grace = \"3s\"\n{extra_gateway}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{body}"
        ),
    )
}

fn check_at(config: &Path, clock: &Path, now: u64) -> Output {
    std::fs::write(clock, now.to_string()).unwrap();
    Command::new(moat_bin())
        .args(["check", "-c"])
        .arg(config)
        .env(moat::runtime::clock::TEST_CLOCK_ENV, clock)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ct_line(o: &Output) -> String {
    stdout(o)
        .lines()
        .find(|l| l.trim_start().starts_with("ct \""))
        .unwrap_or_else(|| panic!("no ct line in {}", stdout(o)))
        .to_string()
}

#[test]
fn check_shows_the_support_status_at_each_boundary_and_the_inventory() {
    let ws = Workspace::new();
    let sha = sbom_sha256(&ws);
    let config = write_config(&ws, "", &sha);
    let clock = ws.path("clock");

    let o = check_at(&config, &clock, at("2026-11-30", 86_399));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        ct_line(&o).ends_with("supported until 2028-12-01"),
        "{}",
        ct_line(&o)
    );
    let o = check_at(&config, &clock, at("2026-12-01", 0));
    assert!(
        ct_line(&o).ends_with("ENDING SOON: end of support 2028-12-01 (warning since 2026-12-01)"),
        "{}",
        ct_line(&o)
    );
    let o = check_at(&config, &clock, at("2028-11-30", 86_399));
    assert!(ct_line(&o).contains("ENDING SOON"), "{}", ct_line(&o));
    let o = check_at(&config, &clock, at("2028-12-01", 0));
    assert!(
        ct_line(&o).ends_with("PAST end of support 2028-12-01: compensating controls required"),
        "{}",
        ct_line(&o)
    );
    let out = stdout(&o);
    assert!(
        out.contains("pump \"Infusion pump server\"")
            && out.contains("end of support not recorded"),
        "{out}"
    );
    let inventory = out
        .lines()
        .find(|l| l.trim_start().starts_with("inventory:"))
        .unwrap_or_else(|| panic!("no inventory line: {out}"));
    for part in [
        "serial SS64-0042117",
        "udi (01)00812345678903",
        "software VB10A",
        "mds2 MDS2 rev 2014-03",
        "lifecycle legacy",
        &format!("(sha256 {}, verified)", &sha[..16]),
        "2 known vulnerabilities",
    ] {
        assert!(inventory.contains(part), "{part:?} not in {inventory}");
    }

    // A shorter warning window moves the boundary.
    let config = write_config(&ws, "support_warning_months = 6", &sha);
    let o = check_at(&config, &clock, at("2028-05-31", 86_399));
    assert!(ct_line(&o).contains("supported until"), "{}", ct_line(&o));
    let o = check_at(&config, &clock, at("2028-06-01", 0));
    assert!(
        ct_line(&o).contains("(warning since 2028-06-01)"),
        "{}",
        ct_line(&o)
    );
}

#[test]
fn a_changed_or_missing_sbom_is_a_located_error() {
    let ws = Workspace::new();
    sbom_sha256(&ws);
    let wrong = "0".repeat(64);
    let config = write_config(&ws, "", &wrong);
    let o = check_at(&config, &ws.path("clock"), at("2026-12-01", 0));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("sbom_sha256"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("moat.toml:{line}:15: device[0].sbom_sha256: "))
            && err.contains(&format!("not the recorded {wrong}")),
        "{err}"
    );

    let text = text.replace("sbom = \"sbom.json\"", "sbom = \"missing.json\"");
    std::fs::write(&config, &text).unwrap();
    let o = check_at(&config, &ws.path("clock"), at("2026-12-01", 0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("device[0].sbom: cannot read SBOM") && err.contains("missing.json"),
        "{err}"
    );

    let text = text.replace(&format!("sbom_sha256 = \"{wrong}\"\n"), "");
    std::fs::write(&config, &text).unwrap();
    let o = check_at(&config, &ws.path("clock"), at("2026-12-01", 0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("device[0].sbom: an SBOM needs `sbom_sha256`"),
        "{err}"
    );
}

/// The JSON body of an admin answer (`admin_get` returns the whole response).
fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// One sample's value from the Prometheus text format: the first line
/// that starts with `name{` and contains every `label="value"`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn devices_and_metrics_follow_the_clock_without_a_reload() {
    let ws = Workspace::new();
    let sha = sbom_sha256(&ws);
    let config = write_config(&ws, "", &sha);
    let clock = ws.path("clock");
    std::fs::write(&clock, at("2026-11-30", 86_399).to_string()).unwrap();
    let moat = Moat::start_file_with(&config, &["dicom", "ui"], |c| {
        c.env(moat::runtime::clock::TEST_CLOCK_ENV, &clock);
    });

    let devices = json_body(&moat.admin_get("/devices"));
    let ct = &devices[0];
    assert_eq!(ct["device"]["id"], "ct");
    assert_eq!(ct["support_status"], "supported");
    assert_eq!(ct["device"]["serial_number"], "SS64-0042117");
    assert_eq!(ct["device"]["lifecycle"], "legacy");
    assert_eq!(ct["device"]["support_warning_from"], "2026-12-01");
    assert_eq!(ct["device"]["sbom"]["sha256"], sha.as_str());
    assert_eq!(ct["device"]["known_vulnerabilities"][1], "OpenSSL 0.9.8h");
    assert_eq!(devices[1]["support_status"], "unknown");

    let m = moat.admin_get("/metrics");
    let status = |m: &str, device: &str, s: &str| {
        sample(
            m,
            "moat_device_support_status",
            &[("device", device), ("status", s)],
        )
    };
    assert_eq!(status(&m, "ct", "supported"), Some(1.0), "{m}");
    assert_eq!(status(&m, "ct", "ending_soon"), Some(0.0));
    assert_eq!(status(&m, "pump", "unknown"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            "moat_device_end_of_support_timestamp_seconds",
            &[("device", "ct")]
        ),
        Some(at("2028-12-01", 0) as f64)
    );
    assert_eq!(
        sample(
            &m,
            "moat_device_end_of_support_timestamp_seconds",
            &[("device", "pump")]
        ),
        None,
        "a device without a date has no end-of-support sample"
    );
    assert_eq!(
        sample(
            &m,
            "moat_device_info",
            &[
                ("device", "ct"),
                ("serial_number", "SS64-0042117"),
                ("lifecycle", "legacy"),
                ("end_of_support", "2028-12-01"),
            ]
        ),
        Some(1.0),
        "{m}"
    );

    // Free text from the policy cannot break the exposition format.
    assert!(
        m.contains(r#"location="ICU \"east\" wing\\rack 2\nsecond line""#),
        "{m}"
    );
    promtool_accepts(&m);

    // Midnight passes: the status moves on at the next scrape, no reload.
    std::fs::write(&clock, at("2026-12-01", 0).to_string()).unwrap();
    let m = moat.admin_get("/metrics");
    assert_eq!(status(&m, "ct", "ending_soon"), Some(1.0));
    assert_eq!(status(&m, "ct", "supported"), Some(0.0));
    std::fs::write(&clock, at("2028-12-01", 0).to_string()).unwrap();
    let m = moat.admin_get("/metrics");
    assert_eq!(status(&m, "ct", "past"), Some(1.0));
    let devices = json_body(&moat.admin_get("/devices"));
    assert_eq!(devices[0]["support_status"], "past");
    assert_eq!(devices[0]["support"], "past end of support");

    // The certificate expiry that moat exports is the one openssl reads.
    let cert = ws.certs.server_cert.clone();
    let enddate = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let enddate = String::from_utf8_lossy(&enddate.stdout);
    let enddate = enddate.trim().trim_start_matches("notAfter=");
    let (date, time) = enddate.split_once(' ').unwrap();
    let (h, rest) = time.split_once(':').unwrap();
    let (mi, s) = rest.split_once(':').unwrap();
    let s = s.trim_end_matches('Z');
    let expected = at(date, 0)
        + h.parse::<u64>().unwrap() * 3600
        + mi.parse::<u64>().unwrap() * 60
        + s.parse::<u64>().unwrap();
    assert_eq!(
        sample(
            &m,
            "moat_tls_certificate_expiry_timestamp_seconds",
            &[
                ("device", "ct"),
                ("service", "dicom"),
                ("certificate", &cert.display().to_string())
            ]
        ),
        Some(expected as f64),
        "{m}"
    );
}

/// `promtool check metrics` parses the scrape (lint findings are
/// printed, parse errors fail).
fn promtool_accepts(response: &str) {
    require("promtool");
    let body = response.split_once("\r\n\r\n").map_or(response, |(_, b)| b);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("error while linting"), "{said}");
    assert!(out.status.success(), "promtool: {said}");
}

#[test]
fn a_reload_with_a_changed_sbom_is_rejected_and_the_old_policy_serves() {
    let ws = Workspace::new();
    let sha = sbom_sha256(&ws);
    let config = write_config(&ws, "", &sha);
    let moat = Moat::start_file(&config, &["dicom", "ui"]);
    // Someone replaces the SBOM without recording its hash.
    std::fs::write(ws.path("sbom.json"), "{\"bomFormat\": \"tampered\"}\n").unwrap();
    let rejected = moat.wait_event("reload_rejected", |_| true);
    let errors = rejected["errors"].to_string();
    assert!(
        errors.contains("device[0].sbom_sha256") && errors.contains("not the recorded"),
        "{errors}"
    );
    let policy = json_body(&moat.admin_get("/policy"));
    assert_eq!(policy["version"], 1, "the old policy still serves");
    let devices = json_body(&moat.admin_get("/devices"));
    assert_eq!(devices[0]["device"]["sbom"]["sha256"], sha.as_str());
}
