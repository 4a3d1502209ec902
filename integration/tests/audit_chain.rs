//! The tamper-evident audit trail end to end: the real `moat` binary writes
//! a hash-chained trail through restarts and rotations, and `moat audit
//! verify` passes it whole and names the first line of every altered copy.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn body(upstream: SocketAddr) -> String {
    format!(
        r#"
[[device]]
id = "pacs-1"
name = "Legacy PACS"

[[device.service]]
name = "raw"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = ["127.0.0.1"]
plaintext = true
"#
    )
}

/// One allowed connection (echoed, closed) and one denied one, each
/// waited for in the trail.
fn make_events(moat: &Moat) {
    let listen = moat.addr("raw");
    let mut s = connect_from("127.0.0.1", listen);
    let client = s.local_addr().unwrap();
    s.write_all(b"ping").unwrap();
    let mut reply = [0u8; 4];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ping");
    drop(s);
    moat.wait_for_client("connection_closed", client);
    let denied = connect_from("127.0.0.3", listen);
    let client = denied.local_addr().unwrap();
    moat.wait_for_client("connection_denied", client);
}

struct Verified {
    ok: Option<i32>,
    stdout: String,
    stderr: String,
}

fn verify(files: &[&Path]) -> Verified {
    let out = Command::new(moat_bin())
        .args(["audit", "verify"])
        .args(files)
        .output()
        .unwrap();
    Verified {
        ok: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seqs(path: &Path) -> Vec<u64> {
    lines_of(path)
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect()
}

fn start(ws: &Workspace, echo: &Echo) -> Moat {
    Moat::start(ws, &body(echo.addr), &["raw"])
}

#[test]
fn a_run_writes_a_chain_that_verifies() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    assert!(moat.terminate().success());

    let audit = moat.audit.clone();
    let lines = lines_of(&audit);
    assert_eq!(seqs(&audit), (1..=lines.len() as u64).collect::<Vec<_>>());
    assert_eq!(lines[0]["prev"], "0".repeat(64));
    for pair in lines.windows(2) {
        assert_eq!(pair[1]["prev"], pair[0]["hash"]);
    }
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "gateway_stopped");
    let head = std::fs::read_to_string(ws.path("audit.jsonl.head")).unwrap();
    assert_eq!(
        head,
        format!("{:020} {}\n", lines.len(), last["hash"].as_str().unwrap())
    );

    let v = verify(&[&audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains(&format!(
            "{}: {n} lines, seq 1 to {n}, last hash {}; starts a chain",
            audit.display(),
            last["hash"].as_str().unwrap(),
            n = lines.len()
        )),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains("audit.jsonl.head: agrees"),
        "{}",
        v.stdout
    );
}

#[test]
fn a_restart_continues_the_chain_in_the_same_file() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    assert!(moat.terminate().success());
    let first_run = seqs(&moat.audit).len() as u64;

    let mut moat = Moat::restart_file(&moat.config.clone(), &["raw"]);
    make_events(&moat);
    assert!(moat.terminate().success());

    let lines = lines_of(&moat.audit);
    assert_eq!(
        seqs(&moat.audit),
        (1..=lines.len() as u64).collect::<Vec<_>>()
    );
    let restarted = &lines[first_run as usize];
    assert_eq!(restarted["event"], "gateway_started");
    assert_eq!(restarted["seq"], first_run + 1);
    assert_eq!(restarted["prev"], lines[first_run as usize - 1]["hash"]);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "gateway_started")
            .count(),
        2
    );
    let v = verify(&[&moat.audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("starts a chain"), "{}", v.stdout);
}

/// Makes denied connections until the audit file at `moat.audit` exists
/// again and holds one (the writer looks for a rotation at most once a
/// second, and only when it has something to write).
fn events_until_reopened(moat: &Moat) -> Vec<Value> {
    let listen = moat.addr("raw");
    wait_for_or(
        "the reopened audit file",
        || {
            let s = connect_from("127.0.0.3", listen);
            drop(s);
            let lines = moat.audit_lines();
            lines
                .iter()
                .any(|l| l["event"] == "connection_denied")
                .then_some(lines)
        },
        || moat.stderr(),
    )
}

#[test]
fn a_rotation_while_running_chains_the_new_file_to_the_old() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    let rotated = ws.path("audit.jsonl.1");
    std::fs::rename(&moat.audit, &rotated).unwrap();

    let new_lines = events_until_reopened(&moat);
    assert_eq!(new_lines[0]["event"], "audit_file_reopened");
    assert_eq!(new_lines[0]["reason"], "renamed");
    make_events(&moat);
    assert!(moat.terminate().success());

    let old = lines_of(&rotated);
    let new = lines_of(&moat.audit);
    let old_last = old.last().unwrap();
    assert_eq!(new[0]["prev"], old_last["hash"]);
    assert_eq!(new[0]["seq"], old_last["seq"].as_u64().unwrap() + 1);

    let v = verify(&[&rotated, &moat.audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    let old_seq = old_last["seq"].as_u64().unwrap();
    assert!(
        v.stdout
            .contains(&format!("continues seq {old_seq} of the previous file")),
        "{}",
        v.stdout
    );
    let alone = verify(&[&moat.audit]);
    assert_eq!(alone.ok, Some(0), "{}{}", alone.stdout, alone.stderr);
    assert!(
        alone.stdout.contains(&format!(
            "starts after seq {old_seq} (the earlier file was not given)"
        )),
        "{}",
        alone.stdout
    );
    // The rotated file alone is a whole chain from seq 1.
    let first = verify(&[&rotated]);
    assert_eq!(first.ok, Some(0), "{}{}", first.stdout, first.stderr);
}

#[test]
fn a_deleted_audit_file_is_recreated() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    std::fs::remove_file(&moat.audit).unwrap();
    let new_lines = events_until_reopened(&moat);
    assert_eq!(new_lines[0]["event"], "audit_file_reopened");
    assert_eq!(new_lines[0]["reason"], "deleted");
    assert!(moat.terminate().success());
    let v = verify(&[&moat.audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("starts after seq"), "{}", v.stdout);
}

#[test]
fn a_rotation_while_stopped_continues_from_the_head_file() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    assert!(moat.terminate().success());
    let rotated = ws.path("audit.jsonl.1");
    std::fs::rename(&moat.audit, &rotated).unwrap();

    let mut moat = Moat::restart_file(&moat.config.clone(), &["raw"]);
    make_events(&moat);
    assert!(moat.terminate().success());

    let old = lines_of(&rotated);
    let new = lines_of(&moat.audit);
    assert_eq!(new[0]["event"], "gateway_started");
    assert_eq!(new[0]["prev"], old.last().unwrap()["hash"]);
    let v = verify(&[&rotated, &moat.audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("continues seq"), "{}", v.stdout);
}

#[test]
fn a_torn_last_line_is_reported_until_moat_goes_on_over_it() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    assert!(moat.terminate().success());
    let before = seqs(&moat.audit);
    // moat killed mid-write: half a line, no newline.
    let text = std::fs::read_to_string(&moat.audit).unwrap();
    let last = text.lines().last().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&moat.audit)
        .unwrap();
    f.write_all(&last.as_bytes()[..last.len() / 2]).unwrap();
    drop(f);
    let torn_at = before.len() + 1;
    let v = verify(&[&moat.audit]);
    assert_eq!(v.ok, Some(1), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stderr.starts_with(&format!(
            "{}:{torn_at}: torn last line",
            moat.audit.display()
        )),
        "{}",
        v.stderr
    );

    let mut moat = Moat::restart_file(&moat.config.clone(), &["raw"]);
    make_events(&moat);
    assert!(moat.terminate().success());
    let text = std::fs::read_to_string(&moat.audit).unwrap();
    let after: Vec<&str> = text.lines().collect();
    assert_eq!(after[torn_at - 1], &last[..last.len() / 2]);
    let next: Value = serde_json::from_str(after[torn_at]).unwrap();
    assert_eq!(next["event"], "gateway_started");
    assert_eq!(next["seq"], *before.last().unwrap() + 1);
    let v = verify(&[&moat.audit]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);
    assert!(
        v.stdout
            .contains(&format!("1 torn line(s) (first at line {torn_at}")),
        "{}",
        v.stdout
    );
}

/// A copy of `lines` (with a newline each) in `dir/name`.
fn copy(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&path, text).unwrap();
    path
}

fn fails_with(path: &Path, line: usize, word: &str) {
    let v = verify(&[path]);
    assert_eq!(v.ok, Some(1), "{}{}", v.stdout, v.stderr);
    let want = format!("{}:{line}: {word}", path.display());
    assert!(v.stderr.starts_with(&want), "want {want}, got {}", v.stderr);
}

#[test]
fn altered_copies_fail_at_the_right_line() {
    let ws = Workspace::new();
    let echo = echo_upstream();
    let mut moat = start(&ws, &echo);
    make_events(&moat);
    make_events(&moat);
    assert!(moat.terminate().success());
    let text = std::fs::read_to_string(&moat.audit).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines.len() >= 8, "{text}");
    let dir = tempfile::tempdir().unwrap();

    // An edited field value.
    let closed = lines
        .iter()
        .position(|l| l.contains("\"event\":\"connection_closed\""))
        .unwrap();
    let mut edited = lines.clone();
    edited[closed] =
        edited[closed].replace("\"closed_by\":\"client\"", "\"closed_by\":\"upstream\"");
    assert_ne!(edited[closed], lines[closed]);
    fails_with(&copy(dir.path(), "edited", &edited), closed + 1, "changed");

    // A deleted line.
    let mut deleted = lines.clone();
    deleted.remove(3);
    fails_with(&copy(dir.path(), "deleted", &deleted), 4, "removed");

    // Two lines swapped.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    fails_with(&copy(dir.path(), "swapped", &swapped), 4, "reordered");

    // The last lines removed: the head file beside the copy tells.
    let cut = copy(dir.path(), "cut", &lines[..lines.len() - 2]);
    std::fs::copy(ws.path("audit.jsonl.head"), dir.path().join("cut.head")).unwrap();
    fails_with(&cut, lines.len() - 2, "removed at the end");

    // The intact copy with its head passes.
    let whole = copy(dir.path(), "whole", &lines);
    std::fs::copy(ws.path("audit.jsonl.head"), dir.path().join("whole.head")).unwrap();
    let v = verify(&[&whole]);
    assert_eq!(v.ok, Some(0), "{}{}", v.stdout, v.stderr);

    // Unreadable: exit 2.
    let v = verify(&[&dir.path().join("absent")]);
    assert_eq!(v.ok, Some(2), "{}{}", v.stdout, v.stderr);
}
