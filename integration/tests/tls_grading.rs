//! TLS grading (issue 16, point 2): Debian's `testssl.sh` against the real
//! `moat` binary, on an L7 (HTTP) and an L4 (TCP) TLS service with the
//! defaults, and on an L7 service with `min_version = "1.3"`. Each service
//! serves a chain made with `openssl`: root → intermediate → leaf, the leaf
//! and the intermediate in the certificate file, the root only given to
//! testssl as a trust anchor, so "chain of trust: passed" shows the chain is
//! served whole.
//!
//! What is asserted, per service: no SSLv2, SSLv3, TLS 1.0 or 1.1; TLS 1.2
//! as configured and TLS 1.3 offered; no NULL, anonymous, export, low,
//! 3DES/IDEA or "average" (CBC, non-AEAD) cipher; forward secrecy; every
//! vulnerability check OK; the chain complete and trusted. testssl's other
//! findings (a private CA has no OCSP or CRL URI, no CAA record on
//! loopback) are about the certificate a hospital issues, not about moat:
//! docs/security.md lists them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

/// A three-level chain for `localhost` / 127.0.0.1: (root, full chain, key).
fn chain(ws: &Workspace) -> (PathBuf, PathBuf, PathBuf) {
    let d = ws.path("chain");
    std::fs::create_dir_all(&d).unwrap();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let ossl = |args: &[&str]| {
        run_ok("openssl", args);
    };
    let ec_key = |name: &str| {
        ossl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &p(name),
        ]);
    };
    std::fs::write(
        d.join("ext.cnf"),
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n\
         [leaf]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    ec_key("root.key");
    ossl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("root.key"),
        "-subj",
        "/O=moat test/CN=grading root",
        "-days",
        "30",
        "-out",
        &p("root.pem"),
        "-extensions",
        "ca",
        "-config",
        &p("ext.cnf"),
    ]);
    ec_key("int.key");
    ossl(&[
        "req",
        "-new",
        "-key",
        &p("int.key"),
        "-subj",
        "/O=moat test/CN=grading intermediate",
        "-out",
        &p("int.csr"),
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        &p("int.csr"),
        "-CA",
        &p("root.pem"),
        "-CAkey",
        &p("root.key"),
        "-set_serial",
        "2",
        "-days",
        "30",
        "-extfile",
        &p("ext.cnf"),
        "-extensions",
        "ca",
        "-out",
        &p("int.pem"),
    ]);
    ec_key("leaf.key");
    ossl(&[
        "req",
        "-new",
        "-key",
        &p("leaf.key"),
        "-subj",
        "/O=moat test/CN=localhost",
        "-out",
        &p("leaf.csr"),
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("int.pem"),
        "-CAkey",
        &p("int.key"),
        "-set_serial",
        "3",
        "-days",
        "30",
        "-extfile",
        &p("ext.cnf"),
        "-extensions",
        "leaf",
        "-out",
        &p("leaf.pem"),
    ]);
    let full = d.join("fullchain.pem");
    let text = std::fs::read_to_string(d.join("leaf.pem")).unwrap()
        + &std::fs::read_to_string(d.join("int.pem")).unwrap();
    std::fs::write(&full, text).unwrap();
    let key = d.join("leaf.key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (d.join("root.pem"), full, key)
}

fn start(ws: &Workspace, min_version: &str) -> (Moat, PathBuf, Echo) {
    let (root, full, key) = chain(ws);
    let echo = echo_upstream();
    let tls = format!(
        "[device.service.tls]\ncertificates = [{{ cert = {full:?}, key = {key:?} }}]\n{min_version}\n"
    );
    let body = format!(
        r#"
[[device]]
id = "pump"
name = "Infusion pump server"

[[device.service]]
name = "web"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{up}"
allow = ["127.0.0.0/8"]
{tls}
[[device.service]]
name = "raw"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{up}"
allow = ["127.0.0.0/8"]
{tls}"#,
        up = echo.addr
    );
    (Moat::start(ws, &body, &["web", "raw"]), root, echo)
}

/// testssl's findings for `target`, by id.
fn grade(ws: &Workspace, root: &Path, target: std::net::SocketAddr, name: &str) -> Vec<Value> {
    let json = ws.path(&format!("testssl-{name}.json"));
    let out = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--sneaky"])
        .arg("--add-ca")
        .arg(root)
        .arg("--jsonfile")
        .arg(&json)
        // Protocols, cipher categories, forward secrecy, the certificate
        // and its chain, every vulnerability check.
        .args([
            "--protocols",
            "--std",
            "--fs",
            "--server-defaults",
            "--vulnerable",
        ])
        .arg(target.to_string())
        .output()
        .expect("running testssl");
    let findings: Vec<Value> = serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|e| {
        panic!(
            "testssl wrote no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }))
    .expect("testssl's JSON");
    assert!(!findings.is_empty(), "testssl found nothing on {target}");
    findings
}

fn finding<'a>(findings: &'a [Value], id: &str) -> &'a Value {
    findings.iter().find(|f| f["id"] == id).unwrap_or_else(|| {
        let seen: Vec<String> = findings
            .iter()
            .map(|f| format!("{} = {}", f["id"].as_str().unwrap_or("?"), text(f)))
            .collect();
        panic!(
            "testssl reported no {id}; it reported:\n{}",
            seen.join("\n")
        )
    })
}

fn text(f: &Value) -> String {
    format!(
        "{} ({})",
        f["finding"].as_str().unwrap_or(""),
        f["severity"].as_str().unwrap_or("")
    )
}

const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "fallback_SCSV",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

fn assert_graded(findings: &[Value], tls12: bool, what: &str) {
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let f = finding(findings, id);
        assert!(
            f["finding"].as_str().unwrap().starts_with("not offered"),
            "{what}: {id} {}",
            text(f)
        );
    }
    let f = finding(findings, "TLS1_2");
    assert_eq!(
        f["finding"].as_str().unwrap().starts_with("offered"),
        tls12,
        "{what}: TLS 1.2 {}",
        text(f)
    );
    let f = finding(findings, "TLS1_3");
    assert!(
        f["finding"].as_str().unwrap().starts_with("offered"),
        "{what}: TLS 1.3 {}",
        text(f)
    );
    // No cipher without forward secrecy or authenticated encryption.
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        let f = finding(findings, id);
        assert_eq!(f["finding"], "not offered", "{what}: {id} {}", text(f));
    }
    assert_eq!(
        finding(findings, "cipherlist_STRONG")["finding"],
        "offered",
        "{what}"
    );
    let fs = finding(findings, "PFS");
    assert_eq!(fs["severity"], "OK", "{what}: forward secrecy {}", text(fs));
    for id in VULNERABILITIES {
        finding(findings, id);
    }
    // Each check found nothing, including those testssl runs only where
    // they apply (SWEET32 with TLS 1.2).
    for f in findings.iter().filter(|f| {
        VULNERABILITIES.contains(&f["id"].as_str().unwrap_or("")) || f["id"] == "SWEET32"
    }) {
        let sev = f["severity"].as_str().unwrap();
        assert!(
            sev == "OK" || sev == "INFO",
            "{what}: {} {}",
            f["id"],
            text(f)
        );
    }
    // The whole chain is served: trusted from the root alone.
    let chain = finding(findings, "cert_chain_of_trust");
    assert_eq!(chain["severity"], "OK", "{what}: chain {}", text(chain));
    assert_eq!(
        finding(findings, "certs_countServer")["finding"],
        "2",
        "{what}: leaf and intermediate"
    );
}

#[test]
fn l7_and_l4_tls_services_grade_clean_with_the_defaults() {
    require("testssl");
    require("openssl");
    let ws = Workspace::new();
    let (moat, root, _echo) = start(&ws, "");
    let (web, raw) = (moat.addr("web"), moat.addr("raw"));
    let (l7, l4) = std::thread::scope(|s| {
        let l7 = s.spawn(|| grade(&ws, &root, web, "l7"));
        let l4 = s.spawn(|| grade(&ws, &root, raw, "l4"));
        (l7.join().unwrap(), l4.join().unwrap())
    });
    assert_graded(&l7, true, "L7 (http)");
    assert_graded(&l4, true, "L4 (tcp)");
    // The web service is seen as HTTP, so BREACH is checked too.
    let breach = finding(&l7, "BREACH");
    assert_eq!(breach["severity"], "OK", "BREACH {}", text(breach));
}

#[test]
fn a_tls13_only_service_offers_nothing_older() {
    require("testssl");
    require("openssl");
    let ws = Workspace::new();
    let (moat, root, _echo) = start(&ws, "min_version = \"1.3\"");
    let findings = grade(&ws, &root, moat.addr("web"), "l7-13");
    assert_graded(&findings, false, "L7 min_version 1.3");
}
