//! Issue 14: the audit trail shipped to a SIEM, end to end: the real
//! `moat` binary and a real rsyslog (GnuTLS) collector on loopback.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use support::siem::{ClientAuth, CollectorTls, Received, Rsyslog};
use support::*;

/// Reconnects back off up to 30 s; an outage in these tests is short, but
/// give the reconnect its due.
fn wait_long<T>(what: &str, f: impl FnMut() -> Option<T>, seen: impl Fn() -> String) -> T {
    wait_for_within(what, Duration::from_secs(60), f, seen)
}

fn dev_collector(ws: &Workspace) -> CollectorTls {
    CollectorTls {
        ca: ws.certs.ca.clone(),
        cert: ws.certs.server_cert.clone(),
        key: ws.certs.server_key.clone(),
    }
}

fn body(ws: &Workspace, siem_extra: &str, address: &str, echo: &Echo) -> String {
    format!(
        "[siem]\naddress = \"{address}\"\nca = {:?}\nspool_dir = \"spool\"\n{siem_extra}\n\
         [[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"raw\"\nprotocol = \"tcp\"\n\
         listen = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1/32\"]\nplaintext = true\n",
        ws.certs.ca, echo.addr
    )
}

/// One allowed connection (and its close) and one denied.
fn traffic(moat: &Moat) {
    let addr = moat.addr("raw");
    let mut s = connect_from("127.0.0.1", addr);
    s.write_all(b"ping").unwrap();
    let local = s.local_addr().unwrap();
    drop(s);
    moat.wait_for_client("connection_closed", local);
    let d = connect_from("127.0.0.2", addr);
    let denied = d.local_addr().unwrap();
    moat.wait_for_client("connection_denied", denied);
}

/// The audit file's lines by seq, raw (byte for byte).
fn audit_by_seq(moat: &Moat) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(&moat.audit).unwrap_or_default();
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let seq = v["seq"]
                .as_u64()
                .expect("every line carries the chain's seq");
            (seq, l.to_string())
        })
        .collect()
}

fn metric(moat: &Moat, name: &str) -> f64 {
    let m = moat.admin_get("/metrics");
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until every audit line has arrived (at least once), then checks
/// first arrivals are in seq order and carry the line intact.
fn assert_all_arrived(moat: &Moat, rs: &Rsyslog) -> Vec<Received> {
    let got = wait_long(
        "every audit line at the collector",
        || {
            let audit = audit_by_seq(moat);
            let got = rs.received();
            let seen: std::collections::BTreeSet<u64> = got.iter().map(|r| r.seq()).collect();
            (!audit.is_empty() && audit.keys().all(|s| seen.contains(s))).then_some(got)
        },
        || {
            format!(
                "audit {:?}\nreceived {:?}\nmoat: {}",
                audit_by_seq(moat).keys(),
                rs.received().iter().map(|r| r.seq()).collect::<Vec<_>>(),
                moat.stderr()
            )
        },
    );
    let audit = audit_by_seq(moat);
    let mut first = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in &got {
        if seen.insert(r.seq()) {
            first.push(r.seq());
        }
        assert_eq!(
            audit.get(&r.seq()),
            Some(&r.msg),
            "message {} differs from its audit line",
            r.seq()
        );
    }
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(first, sorted, "first arrivals out of order");
    got
}

#[test]
fn events_arrive_with_their_fields_intact() {
    let ws = Workspace::new();
    let rs = Rsyslog::start(&dev_collector(&ws), ClientAuth::Anon);
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &body(&ws, "", &rs.address(), &echo), &["raw"]);
    traffic(&moat);
    let got = assert_all_arrived(&moat, &rs);
    for r in &got {
        let v: serde_json::Value = serde_json::from_str(&r.msg).unwrap();
        let event = v["event"].as_str().unwrap();
        assert_eq!(r.msgid, event);
        assert!(r.structured_data.starts_with("[moat@32473 seq=\""), "{r:?}");
        // The chain's anchor travels with every event: the SIEM's copy
        // is what `moat audit verify` is compared against.
        assert_eq!(
            r.param("seq").as_deref(),
            Some(v["seq"].to_string().as_str())
        );
        assert_eq!(r.param("hash").as_deref(), v["hash"].as_str(), "{r:?}");
        for key in ["device", "service", "client", "reason"] {
            assert_eq!(r.param(key).as_deref(), v[key].as_str(), "{key} of {r:?}");
        }
        let severity = match event {
            "connection_denied" => 4,
            "connection_allowed" | "connection_closed" => 6,
            _ => 5,
        };
        assert_eq!(r.pri, 20 * 8 + severity, "{r:?}");
    }
    assert!(got.iter().any(|r| r.msgid == "connection_denied"
        && r.param("reason").as_deref() == Some("not_allowlisted")));
    assert!(got.iter().any(|r| r.msgid == "connection_allowed"));
    wait_for("sent counted", || {
        (metric(&moat, "moat_siem_events_total{outcome=\"sent\"}") >= got.len() as f64)
            .then_some(())
    });
    assert_eq!(metric(&moat, "moat_siem_connected"), 1.0);
}

#[test]
fn a_collector_outage_loses_nothing() {
    let ws = Workspace::new();
    let mut rs = Rsyslog::start(&dev_collector(&ws), ClientAuth::Anon);
    let echo = echo_upstream();
    let moat = Moat::start(&ws, &body(&ws, "", &rs.address(), &echo), &["raw"]);
    traffic(&moat);
    wait_for("connected", || {
        (metric(&moat, "moat_siem_connected") == 1.0).then_some(())
    });
    rs.stop();
    wait_for("disconnected", || {
        (metric(&moat, "moat_siem_connected") == 0.0).then_some(())
    });
    for _ in 0..5 {
        traffic(&moat);
    }
    wait_for("events spooled", || {
        (metric(&moat, "moat_siem_spool_bytes") > 0.0
            && metric(&moat, "moat_siem_events_total{outcome=\"spooled\"}") > 0.0)
            .then_some(())
    });
    rs.restart();
    assert_all_arrived(&moat, &rs);
    wait_long(
        "the spool to drain",
        || (metric(&moat, "moat_siem_spool_bytes") == 0.0).then_some(()),
        || moat.stderr(),
    );
}

#[test]
fn a_restart_sends_what_the_last_run_spooled() {
    let ws = Workspace::new();
    let mut rs = Rsyslog::start(&dev_collector(&ws), ClientAuth::Anon);
    rs.stop();
    let echo = echo_upstream();
    let b = body(&ws, "", &rs.address(), &echo);
    let mut moat = Moat::start(&ws, &b, &["raw"]);
    traffic(&moat);
    moat.terminate();
    let first_run = audit_by_seq(&moat);
    let spool: u64 = std::fs::read_dir(ws.path("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spool > 0, "nothing spooled");
    rs.restart();
    // The second run starts a new audit file: first_run holds the old lines.
    let moat2 = Moat::start_file(&moat.config, &["raw"]);
    let got = wait_long(
        "the first run's lines at the collector",
        || {
            let got = rs.received();
            let msgs: std::collections::BTreeSet<&str> =
                got.iter().map(|r| r.msg.as_str()).collect();
            first_run
                .values()
                .all(|l| msgs.contains(l.as_str()))
                .then_some(got.clone())
        },
        || format!("{:?}\n{}", rs.received(), moat2.stderr()),
    );
    assert!(got.iter().any(|r| r.msgid == "gateway_stopped"));
}

#[test]
fn a_collector_that_does_not_verify_is_refused() {
    let ws = Workspace::new();
    let other = moat::certs::Authority::new("another CA").unwrap();
    let mut spec = moat::certs::LeafSpec::server(&["localhost"]);
    spec.ips = vec!["127.0.0.1".parse().unwrap()];
    let (cert, key) = other.issue(&spec).unwrap();
    let tls = CollectorTls {
        ca: ws.write("other-ca.pem", &other.cert_pem()),
        cert: ws.write("other.pem", &cert),
        key: ws.write("other.key", &key),
    };
    for (collector, extra, why) in [
        (tls, "", "UnknownIssuer"),
        (
            dev_collector(&ws),
            "server_name = \"siem.wrong.test\"",
            "not valid for name \"siem.wrong.test\"",
        ),
    ] {
        let rs = Rsyslog::start(&collector, ClientAuth::Anon);
        let echo = echo_upstream();
        let mut moat = Moat::start(&ws, &body(&ws, extra, &rs.address(), &echo), &["raw"]);
        traffic(&moat);
        wait_for_or(
            "the refusal in the log",
            || {
                let log = moat.stderr();
                log.lines()
                    .find(|l| {
                        l.contains("SIEM collector unavailable")
                            && l.contains(&rs.address())
                            && l.contains(why)
                    })
                    .map(|_| ())
            },
            || moat.stderr(),
        );
        assert!(metric(&moat, "moat_siem_events_total{outcome=\"spooled\"}") > 0.0);
        assert_eq!(metric(&moat, "moat_siem_connected"), 0.0);
        assert_eq!(
            metric(&moat, "moat_siem_events_total{outcome=\"sent\"}"),
            0.0
        );
        moat.terminate();
        assert!(rs.received().is_empty(), "{:?}", rs.received());
    }
}

#[test]
fn a_collector_requiring_a_client_certificate() {
    let ws = Workspace::new();
    let rs = Rsyslog::start(&dev_collector(&ws), ClientAuth::CertValid);
    let echo = echo_upstream();
    // Without one: refused, nothing arrives.
    let mut moat = Moat::start(&ws, &body(&ws, "", &rs.address(), &echo), &["raw"]);
    traffic(&moat);
    wait_for_or(
        "the refusal in the log",
        || moat.stderr().contains("client certificate").then_some(()),
        || moat.stderr(),
    );
    assert_eq!(metric(&moat, "moat_siem_connected"), 0.0);
    moat.terminate();
    assert!(rs.received().is_empty(), "{:?}", rs.received());
    std::fs::remove_dir_all(ws.path("spool")).unwrap();
    // With one: everything arrives.
    let extra = format!(
        "client_cert = {:?}\nclient_key = {:?}",
        ws.certs.client_cert, ws.certs.client_key
    );
    let moat = Moat::start(&ws, &body(&ws, &extra, &rs.address(), &echo), &["raw"]);
    traffic(&moat);
    assert_all_arrived(&moat, &rs);
}

#[test]
fn a_full_spool_drops_loudly() {
    let ws = Workspace::new();
    let mut rs = Rsyslog::start(&dev_collector(&ws), ClientAuth::Anon);
    rs.stop();
    let echo = echo_upstream();
    let moat = Moat::start(
        &ws,
        &body(&ws, "spool_max_bytes = \"4KiB\"", &rs.address(), &echo),
        &["raw"],
    );
    for _ in 0..10 {
        traffic(&moat);
    }
    let e = moat.wait_event("siem_events_dropped", |_| true);
    assert!(e["count"].as_u64().unwrap() > 0);
    assert_eq!(e["spool_max_bytes"], 4096);
    assert!(metric(&moat, "moat_siem_events_total{outcome=\"dropped\"}") > 0.0);
    assert!(metric(&moat, "moat_siem_spool_bytes") <= 4096.0);
    wait_for("the drop logged", || {
        moat.stderr().contains("SIEM spool full").then_some(())
    });
}

#[test]
fn moat_check_lists_every_siem_error() {
    let ws = Workspace::new();
    let config = ws.write(
        "moat.toml",
        "[gateway]\nallow_no_devices = true\n[siem]\naddress = \"collector\"\nca = \"nope.pem\"\nspool_dir = \"spool\"\nspool_max_bytes = \"huge\"\nfacility = \"local9\"\nclient_key = \"certs/client.key\"\n",
    );
    let out = std::process::Command::new(moat_bin())
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        strip_ansi(&String::from_utf8_lossy(&out.stderr)) + &String::from_utf8_lossy(&out.stdout);
    for (line, field) in [
        (4, "siem.address"),
        (5, "siem.ca"),
        (7, "siem.spool_max_bytes"),
        (8, "siem.facility"),
        (9, "siem.client_cert"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("moat.toml:{line}:")) && l.contains(field)),
            "no error at line {line} for {field}:\n{text}"
        );
    }
}

/// `[siem]` is read at start: a reload that changes it applies the rest
/// and says, once, that the sink keeps its settings until a restart.
#[test]
fn a_reload_that_changes_siem_warns_that_it_needs_a_restart() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    // No collector needed: the sink spools while it retries.
    let address = closed_port().to_string();
    let moat = Moat::start(&ws, &body(&ws, "", &address, &echo), &["raw"]);
    let text = std::fs::read_to_string(&moat.config).unwrap();
    let edited = text.replace(
        "spool_dir = \"spool\"\n",
        "spool_dir = \"spool\"\nspool_max_bytes = \"1MiB\"\n",
    );
    assert_ne!(text, edited);
    std::fs::write(&moat.config, edited).unwrap();
    moat.wait_event("reload_applied", |_| true);
    wait_for_or(
        "the restart warning for [siem]",
        || {
            let log = moat.stderr();
            log.lines()
                .any(|l| {
                    l.contains("setting=\"siem\"") && l.contains("takes effect at the next restart")
                })
                .then_some(())
        },
        || moat.stderr(),
    );
}
