//! `moat check`, `moat certs dev` and `moat demo` as an operator runs them:
//! the real binary, its exit code and exactly what it prints.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::*;

fn check(config: &Path) -> Output {
    Command::new(moat_bin())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap()
}

fn stderr_lines(out: &Output, strip: &Path) -> Vec<String> {
    let prefix = format!("{}/", strip.display());
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| l.replace(&prefix, ""))
        .collect()
}

const GOOD_SERVICE: &str = r#"
[[device]]
id = "ct-1"
name = "CT scanner"
end_of_support = 2019-06-30
[[device.service]]
name = "dicom"
protocol = "tcp"
listen = "127.0.0.1:11112"
upstream = "10.20.0.5:104"
allow = ["10.0.0.0/8"]
plaintext = true
"#;

#[test]
fn broken_configs_print_file_line_column_and_exit_non_zero() {
    let ws = Workspace::new();
    let cases: &[(&str, &str)] = &[
        (r#"allow = ["10.0.0.0/8"]"#, r#"allow = ["10.0.0.0/33"]"#),
        (r#"upstream = "10.20.0.5:104""#, r#"upstream = "10.20.0.5""#),
        (
            r#"listen = "127.0.0.1:11112""#,
            r#"listn = "127.0.0.1:11112""#,
        ),
        (
            r#"plaintext = true"#,
            r#"plaintext = true
[[device.service]]
name = "hl7"
protocol = "tcp"
listen = "127.0.0.1:11112"
upstream = "10.20.0.6:2575"
allow = ["10.0.0.0/8"]
plaintext = true"#,
        ),
        ("[[device]]", "[[device]\n"),
    ];
    let expected = [
        r#"moat.toml:11:10: device[0].service[0].allow: "10.0.0.0/33" is not a valid CIDR"#,
        r#"moat.toml:10:12: device[0].service[0].upstream: "10.20.0.5" is not host:port (e.g. "10.20.0.5:104")"#,
        "moat.toml:9:1: unknown field `listn`, expected one of",
        r#"moat.toml:16:10: device[0].service[1].listen: 127.0.0.1:11112 is already used by device[0].service[0].listen"#,
        "moat.toml:2:9: invalid table header; expected `.`, `]]`",
    ];
    for ((from, to), want) in cases.iter().zip(expected) {
        let path = ws.write("moat.toml", &GOOD_SERVICE.replacen(from, to, 1));
        let out = check(&path);
        assert_eq!(out.status.code(), Some(2), "{want}");
        let lines = stderr_lines(&out, ws.dir.path());
        assert!(lines[0].starts_with(want), "want {want:?}\ngot  {lines:?}");
        assert!(
            lines.last().unwrap().ends_with("error(s); nothing applied"),
            "{lines:?}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let ws = Workspace::new();
    let path = ws.write(
        "moat.toml",
        &GOOD_SERVICE
            .replace("deny", "x")
            .replace("allow =", "alow ="),
    );
    let out = check(&path);
    let lines = stderr_lines(&out, ws.dir.path());
    assert!(
        lines[0].starts_with("moat.toml:11:1: unknown field `alow`"),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("did you mean `allow`?"), "{lines:?}");
}

#[test]
fn network_set_file_error_names_that_file_and_line() {
    let ws = Workspace::new();
    ws.write("lists.txt", "# ward 3\n10.3.0.0/16\n  10.3.300.0/24\n");
    let body = format!(
        "[networks.ward3]\nfile = \"lists.txt\"\n{}",
        GOOD_SERVICE.replace(r#"["10.0.0.0/8"]"#, r#"["ward3"]"#)
    );
    let out = check(&ws.write("moat.toml", &body));
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out, ws.dir.path());
    assert_eq!(
        lines[0],
        r#"lists.txt:3:3: "10.3.300.0/24" is not a valid CIDR"#
    );
}

#[test]
fn certificate_errors_are_caught_by_check() {
    let ws = Workspace::new();
    let tls = |cert: &Path, key: &Path| {
        GOOD_SERVICE.replace(
            "plaintext = true",
            &format!("[device.service.tls]\ncertificates = [{{ cert = {cert:?}, key = {key:?} }}]"),
        )
    };
    let c = &ws.certs;
    let out = check(&ws.write("moat.toml", &tls(&c.server_cert, &c.client_key)));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("moat.toml:13:") && err.contains("does not match the certificate"),
        "{err}"
    );

    let out = check(&ws.write("moat.toml", &tls(&ws.path("missing.pem"), &c.server_key)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.pem"),
        "{err}"
    );

    let out = check(&ws.write("moat.toml", &tls(&c.server_cert, &c.server_key)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_good_config_prints_a_summary_and_exits_zero() {
    let ws = Workspace::new();
    let out = check(&ws.write("moat.toml", GOOD_SERVICE));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("devices: 1"), "{stdout}");
    assert!(
        stdout.contains("PAST end of support 2019-06-30: compensating controls required"),
        "{stdout}"
    );
    assert!(
        stdout.contains("127.0.0.1:11112 -> 10.20.0.5:104  PLAINTEXT; allow 1 entries, deny 0"),
        "{stdout}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    // config/moat.toml refers to dev certs that `moat certs dev` creates;
    // check a copy so the repository stays free of private keys.
    let ws = Workspace::new();
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let copy = ws.path("config");
    copy_dir(&repo_config, &copy);
    let status = Command::new(moat_bin())
        .args(["certs", "dev"])
        .arg(copy.join("certs/dev"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = check(&copy.join("moat.toml"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file being rewritten in place can be read cut short. Every cut of the
/// example policy inside a line is refused (no newline at the end), and so
/// is every cut before the first device (no devices); what remains are
/// cuts exactly at a line end after a whole device, documented in
/// docs/configuration.md ("Empty and cut-short files").
#[test]
fn every_cut_of_the_example_config_inside_a_line_is_refused() {
    let ws = Workspace::new();
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let copy = ws.path("config");
    copy_dir(&repo_config, &copy);
    moat::certs::write_dev_set(&copy.join("certs/dev")).unwrap();
    let path = copy.join("moat.toml");
    let whole = std::fs::read_to_string(&path).unwrap();
    let first_device = whole.find("[[device]]").unwrap();
    let mut accepted = 0;
    for cut in (0..whole.len()).filter(|&c| whole.is_char_boundary(c)) {
        let text = &whole[..cut];
        let compiled = moat::config::parse(&path, text.to_string())
            .and_then(|cfg| moat::policy::compile(&cfg, 1));
        match compiled {
            Ok(policy) => {
                accepted += 1;
                assert!(text.ends_with('\n'), "cut at byte {cut} accepted");
                assert!(cut > first_device, "cut at byte {cut} accepted");
                assert!(!policy.services.is_empty());
            }
            Err(e) if !text.ends_with('\n') => {
                let e = e.to_string();
                assert!(
                    e.contains("the last line has no newline") || e.contains("the file is empty"),
                    "cut at byte {cut}: {e}"
                )
            }
            Err(_) => {}
        }
    }
    // Those the reloader refuses as the beginning of the file in force
    // (reload.rs); at start-up or in `moat check` nothing can tell them.
    println!(
        "{accepted} of {} line-end cuts compile",
        whole.lines().count()
    );

    // The same for a network-set file: "10.1.2.12" cut to "10.1.2.1" would
    // silently admit another host.
    let list = copy.join("allowlists/radiology.txt");
    let whole_list = std::fs::read_to_string(&list).unwrap();
    for cut in 0..whole_list.len() {
        let text = &whole_list[..cut];
        let result = moat::config::netfile::parse(&list, text);
        assert_eq!(result.is_ok(), text.ends_with('\n'), "{text:?}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn certs_dev_writes_a_usable_set_with_private_keys_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    let dir = ws.path("fresh");
    let out = Command::new(moat_bin())
        .args(["certs", "dev"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    for f in ["ca.pem", "server.pem", "server-rsa.pem", "client.pem"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    for k in ["ca.key", "server.key", "server-rsa.key", "client.key"] {
        let mode = std::fs::metadata(dir.join(k)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{k} is readable by others");
    }
    moat::tls::load_certificate(&dir.join("server-rsa.pem"), &dir.join("server-rsa.key")).unwrap();
}

#[test]
fn demo_serves_the_simulated_device_and_stops_on_sigterm() {
    require("curl");
    let mut child = Command::new(moat_bin())
        .args(["demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let seen = std::cell::RefCell::new(Vec::new());
    let next = |pred: &dyn Fn(&str) -> bool| -> String {
        loop {
            let line = rx.recv_timeout(DEADLINE).expect("demo output");
            seen.borrow_mut().push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    };
    let ui_line = next(&|l| l.contains("HTTP (L7) web UI:"));
    let ui_url = ui_line.split_whitespace().last().unwrap().to_string();
    let ca_line =
        next(&|l| l.trim_start().starts_with("curl --cacert") && !l.contains("--interface"));
    let cmd: Vec<&str> = ca_line.split_whitespace().collect();
    let (ca, url) = (cmd[2], cmd[3]);
    // Instructions are printed once every listener is bound.

    let ok = Command::new("curl")
        .args(["-sS", "--cacert", ca, url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("PumpCentral 2009"),
        "{ok:?}"
    );
    let denied = Command::new("curl")
        .args(["-sS", "--cacert", ca, "--interface", "127.0.0.3", url])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    next(&|l| l.contains(r#""reason":"denylisted""#));

    // The simulated web UI behind the L7 proxy: reads pass, firmware uploads do not.
    let status = |args: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                ca,
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status(&["--http2", &format!("{ui_url}/status")]), "200");
    assert_eq!(
        status(&[
            "-X",
            "POST",
            "-d",
            "x",
            &format!("{ui_url}/firmware/upload")
        ]),
        "403"
    );
    next(&|l| l.contains(r#""reason":"request_denied""#));

    // The MFA web UI: refused without a session, open after the printed
    // user, password and oathtool code.
    require("oathtool");
    let printed = seen.borrow().join("\n");
    let after = |marker: &str| {
        let line = printed
            .lines()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("demo prints {marker:?}:\n{printed}"));
        line.split(marker)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let mfa_url = after("HTTP (L7) with MFA:");
    let password = after("password:");
    let secret = after("oathtool --totp -b");
    assert_eq!(status(&[&format!("{mfa_url}/status")]), "401");
    let jar = tempfile::tempdir().unwrap();
    let jar = jar.path().join("jar");
    let jar = jar.to_str().unwrap();
    let login = Command::new("curl")
        .args(["-sS", "--cacert", ca, "-c", jar, "-b", jar])
        .arg(format!("{mfa_url}/.moat/login"))
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&login.stdout).to_string();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a CSRF token in the login form");
    let code = Command::new("oathtool")
        .args(["--totp", "-b", &secret])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&code.stdout).trim().to_string();
    let signed_in = status(&[
        "-c",
        jar,
        "-b",
        jar,
        "--data-urlencode",
        "username=demo",
        "--data-urlencode",
        &format!("password={password}"),
        "--data-urlencode",
        &format!("code={code}"),
        "--data-urlencode",
        &format!("csrf={csrf}"),
        &format!("{mfa_url}/.moat/login"),
    ]);
    assert_eq!(signed_in, "303");
    next(&|l| l.contains(r#""event":"auth_succeeded""#) && l.contains(r#""user":"demo""#));
    assert_eq!(status(&["-b", jar, &format!("{mfa_url}/status")]), "200");

    signal(child.id(), "TERM");
    next(&|l| l.contains("gateway_stopped"));
    let status = wait_for("demo exit", || child.try_wait().unwrap());
    assert!(status.success());
}

/// Protocol guards (issue 13): every bad setting is named by file, line,
/// column and field, all at once.
#[test]
fn guard_settings_are_checked_with_file_and_line() {
    let ws = Workspace::new();
    let body = GOOD_SERVICE.replacen(
        "plaintext = true",
        r#"plaintext = true
guard = "dicom"
[device.service.dicom]
ae_title = "A_TITLE_LONGER_THAN_16"
calling_ae_titles = []
abstract_syntaxes = ["storage", "stroage", "1.2.*"]
max_pdu_length = 100
association_timeout = "20m"
[device.service.hl7]
sending_applications = ["LAB"]
message_types = ["ORU^R01"]
[[device.service]]
name = "hl7"
protocol = "tcp"
listen = "127.0.0.1:11113"
upstream = "10.20.0.6:2575"
allow = ["10.0.0.0/8"]
plaintext = true
guard = "hl7-mllp"
[device.service.hl7]
sending_applications = ["LAB", "*"]
receiving_facilities = []
message_types = ["ORU^", "ADT"]
max_message_bytes = 10
[[device.service]]
name = "web"
protocol = "http"
listen = "127.0.0.1:11114"
upstream = "10.20.0.7:80"
allow = ["10.0.0.0/8"]
plaintext = true
guard = "dicom""#,
        1,
    );
    let path = ws.write("moat.toml", &body);
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out, ws.dir.path());
    let expected = [
        r#"moat.toml:15:12: device[0].service[0].dicom.ae_title: "A_TITLE_LONGER_THAN_16" is not an AE title"#,
        "moat.toml:16:21: device[0].service[0].dicom.calling_ae_titles: an empty list admits no one",
        r#"moat.toml:17:33: device[0].service[0].dicom.abstract_syntaxes: "stroage" is neither a SOP class UID nor one of verification, storage"#,
        "moat.toml:18:18: device[0].service[0].dicom.max_pdu_length: must be between 4096 and 4194304 bytes",
        "moat.toml:19:23: device[0].service[0].dicom.association_timeout: must be between 100ms and 10m",
        r#"moat.toml:20:1: device[0].service[0].hl7: an [hl7] table needs `guard = "hl7-mllp"` on this service"#,
        r#"moat.toml:32:32: device[0].service[1].hl7.sending_applications: "*" (any) must be the list's only entry"#,
        "moat.toml:33:24: device[0].service[1].hl7.receiving_facilities: an empty list admits nothing",
        r#"moat.toml:34:18: device[0].service[1].hl7.message_types: "ORU^" is not a message type"#,
        "moat.toml:35:21: device[0].service[1].hl7.max_message_bytes: must be between 64 and",
        r#"moat.toml:43:9: device[0].service[2].guard: protocol guards are for `protocol = "tcp"` services"#,
    ];
    for want in expected {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "want {want:?}\ngot  {lines:#?}"
        );
    }
    assert!(lines.last().unwrap().ends_with("error(s); nothing applied"));
}
