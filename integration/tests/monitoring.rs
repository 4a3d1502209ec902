//! The shipped monitoring (issue 14, point 4), checked with real tools:
//! `promtool check rules` and `promtool test rules` on the alert rules;
//! every metric name (and every label they filter or group by) that the
//! rules and the Grafana dashboard use exists in a real moat's `/metrics`;
//! and a real Prometheus, scraping moat, fires the end-of-support alert.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use support::*;

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../monitoring")
        .join(file)
}

fn promtool(args: &[&str], file: &Path) {
    require("promtool");
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(
        &["check", "rules"],
        &monitoring("prometheus/moat-alerts.yml"),
    );
    // The test file names the rules file relative to itself.
    promtool(
        &["test", "rules"],
        &monitoring("prometheus/moat-alerts.test.yml"),
    );
    // Every alert of the rule file is exercised by the unit tests.
    let rules = std::fs::read_to_string(monitoring("prometheus/moat-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring("prometheus/moat-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 13, "{alerts:?}");
    for alert in alerts {
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .filter(|t| t.starts_with(&format!("{alert}\n")))
            .any(|t| t.contains("exp_labels"));
        assert!(firing, "no promtool test makes {alert} fire");
    }
}

/// A policy with what makes most families show samples: a TLS service
/// (certificate expiry), an HTTP service, `[siem]` towards a closed port
/// (the sink spools; its counters exist). Families without samples here
/// (break-glass, grants, guards) are checked by name only.
fn policy(ws: &Workspace, end_of_support: &str, echo: &Echo) -> String {
    format!(
        r#"[siem]
address = "{siem}"
ca = {ca:?}
spool_dir = "spool"

[[device]]
id = "old-ct"
name = "CT scanner"
end_of_support = {end_of_support}

  [[device.service]]
  name = "dicom"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "127.0.0.1:9"
  allow = ["127.0.0.0/8"]
{tls}
  [[device.service]]
  name = "web"
  protocol = "http"
  listen = "127.0.0.1:0"
  upstream = "127.0.0.1:9"
  allow = ["127.0.0.0/8"]
  plaintext = true

[[device]]
id = "new-mri"
name = "MRI"
end_of_support = 2099-01-01

  [[device.service]]
  name = "raw"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "{echo}"
  allow = ["127.0.0.0/8"]
  plaintext = true

  [[device.service]]
  name = "dead"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "127.0.0.1:9"
  allow = ["127.0.0.0/8"]
  plaintext = true
"#,
        echo = echo.addr,
        siem = closed_port(),
        ca = ws.certs.ca,
        tls = ws.tls_table(),
    )
}

/// The scrape's metric names, with the label names seen on their samples.
fn scraped(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            names.entry(name.to_string()).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = names.entry(line[..end].to_string()).or_default();
        if let Some(set) = line[end..].strip_prefix('{') {
            // Label names: what precedes each `="`.
            for part in set.split("\",") {
                if let Some((k, _)) = part.split_once("=\"") {
                    labels.insert(k.trim_start_matches(',').to_string());
                }
            }
        }
    }
    names
}

/// Every PromQL expression of the rules and the dashboard.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The rules file: `expr:` on one line, or a `|` block below it.
    let rules = std::fs::read_to_string(monitoring("prometheus/moat-alerts.yml")).unwrap();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim().strip_prefix("expr: ") else {
            continue;
        };
        if expr == "|" {
            let indent = lines.peek().map_or(0, |l| l.len() - l.trim_start().len());
            let mut block = String::new();
            while let Some(l) =
                lines.next_if(|l| l.len() - l.trim_start().len() >= indent && !l.trim().is_empty())
            {
                block.push_str(l.trim());
                block.push(' ');
            }
            out.push(("moat-alerts.yml".into(), block));
        } else {
            out.push(("moat-alerts.yml".into(), expr.to_string()));
        }
    }
    // The dashboard: every target, the variable query, the annotations.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring("grafana/moat-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    check_dashboard_shape(&dash);
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            out.push((
                format!("dashboard panel {title:?}"),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            out.push(("dashboard variable".into(), q.to_string()));
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        out.push((
            "dashboard annotation".into(),
            a["expr"].as_str().unwrap().to_string(),
        ));
    }
    out
}

/// What Grafana needs to import the dashboard: a uid and title, unique
/// panel ids, a type and a grid position for every panel, and every query
/// on the `${datasource}` variable that the templating defines.
fn check_dashboard_shape(dash: &Value) {
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"device"),
        "{vars:?}"
    );
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id at {title}"
        );
        assert!(p["type"].is_string(), "{title}");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["refId"].is_string() && t["expr"].is_string(), "{title}");
        }
    }
}

/// The `moat_*` identifiers in an expression.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("moat_") {
        let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            names.push(&tail[..len]);
        }
        rest = &tail[len..];
    }
    names
}

/// The label names an expression filters by (`{label="..."}` right after
/// a moat metric) and groups by (`by (...)`).
fn used_labels(expr: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut filters = Vec::new();
    for name in metric_names(expr) {
        let at = expr.find(&format!("{name}{{"));
        if let Some(at) = at {
            let set = &expr[at + name.len() + 1..];
            let set = &set[..set.find('}').unwrap()];
            for m in set.split(',') {
                let label = m.split(['=', '!']).next().unwrap().trim();
                if !label.is_empty() {
                    filters.push((name.to_string(), label.to_string()));
                }
            }
        }
    }
    let mut grouped = Vec::new();
    for part in expr.split("by (").skip(1) {
        let list = &part[..part.find(')').unwrap()];
        grouped.extend(list.split(',').map(|l| l.trim().to_string()));
    }
    (filters, grouped)
}

#[test]
fn every_metric_and_label_the_rules_and_dashboard_use_is_in_moats_metrics() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let services = ["dicom", "web", "raw", "dead"];
    let moat = Moat::start(&ws, &policy(&ws, "2019-06-30", &echo), &services);
    // Bytes relayed, and a device that cannot be reached, so the
    // connection and byte counters have samples with their labels.
    let mut s = connect_from("127.0.0.1", moat.addr("raw"));
    std::io::Write::write_all(&mut s, b"ping").unwrap();
    let mut pong = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut pong).unwrap();
    drop(s);
    moat.wait_event("connection_closed", |_| true);
    drop(connect_from("127.0.0.1", moat.addr("dead")));
    moat.wait_event("connection_denied", |e| {
        e["reason"] == "upstream_unreachable"
    });
    let metrics = moat.admin_get("/metrics");
    let have = scraped(&metrics);
    // A Prometheus target's own labels.
    let target_labels = ["instance", "job"];

    let mut missing = Vec::new();
    let exprs = expressions();
    assert!(exprs.len() > 30, "{exprs:?}");
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        for name in &names {
            let found = have.contains_key(*name)
                || name
                    .strip_suffix("_total")
                    .is_some_and(|family| have.contains_key(family));
            if !found {
                missing.push(format!("{place}: {name} (in `{expr}`)"));
            }
        }
        let (filters, grouped) = used_labels(expr);
        let labels_of =
            |name: &str| -> Option<&BTreeSet<String>> { have.get(name).filter(|l| !l.is_empty()) };
        for (name, label) in filters {
            if let Some(labels) = labels_of(&name) {
                if !labels.contains(&label) && !target_labels.contains(&label.as_str()) {
                    missing.push(format!("{place}: label {label} of {name} (has {labels:?})"));
                }
            }
        }
        for label in grouped {
            let on_some = names
                .iter()
                .any(|n| labels_of(n).map_or(true, |l| l.contains(&label)));
            if !on_some && !target_labels.contains(&label.as_str()) {
                missing.push(format!(
                    "{place}: grouped by {label}, which none of {names:?} has"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\n--- scrape:\n{metrics}",
        missing.join("\n")
    );

    // The checker itself: a misspelt name is caught.
    assert!(!have.contains_key("moat_device_support_state"));
}

/// A real Prometheus 2 process scraping moat every second with the shipped
/// rules; killed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        require("prometheus");
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            monitoring("prometheus/moat-alerts.yml"),
            dir.path().join("moat-alerts.yml"),
        )
        .unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [moat-alerts.yml]\n\
                 scrape_configs:\n  - job_name: moat\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = closed_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://{}{path}", self.addr)])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_fires_the_end_of_support_alert_for_the_old_device_only() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let services = ["dicom", "web", "raw", "dead"];
    let moat = Moat::start(&ws, &policy(&ws, "2019-06-30", &echo), &services);
    let prom = Prometheus::start(moat.admin.unwrap());
    let firing = wait_for_or(
        "MoatDevicePastEndOfSupport firing in Prometheus",
        || {
            let alerts = prom.get("/api/v1/alerts")?;
            let list = alerts["data"]["alerts"].as_array()?.clone();
            let past: Vec<Value> = list
                .into_iter()
                .filter(|a| {
                    a["labels"]["alertname"] == "MoatDevicePastEndOfSupport"
                        && a["state"] == "firing"
                })
                .collect();
            (!past.is_empty()).then_some(past)
        },
        || format!("{:?}", prom.get("/api/v1/alerts")),
    );
    let devices: BTreeSet<&str> = firing
        .iter()
        .filter_map(|a| a["labels"]["device"].as_str())
        .collect();
    assert_eq!(devices, BTreeSet::from(["old-ct"]), "{firing:?}");
    assert_eq!(
        firing[0]["annotations"]["summary"],
        "Device old-ct is past its end of support"
    );
    // The SIEM is unreachable too (a closed port): its alert waits 10
    // minutes by design, so here it is at most pending, never firing.
    let alerts = prom.get("/api/v1/alerts").unwrap();
    assert!(!alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["labels"]["alertname"] == "MoatSiemDisconnected" && a["state"] == "firing"));
}
