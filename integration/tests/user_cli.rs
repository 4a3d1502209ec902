//! `moat user …` end to end: the real binary on a users file in a temp
//! directory. Self-contained (no `support` module).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use moat::auth::{password, totp, users};

const PASSWORD: &str = "correct horse battery staple";

fn moat(users_file: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat"))
        .arg("user")
        .arg("--users")
        .arg(users_file)
        .args(args)
        .env("MOAT_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running moat");
    // moat may refuse before it reads its input (an existing name, say):
    // then the write meets a closed pipe, which is not this test's failure.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn ok(users_file: &Path, args: &[&str], stdin: &str) -> String {
    let out = moat(users_file, args, stdin);
    assert!(
        out.status.success(),
        "moat user {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The base32 secret `add` or `reset-totp` printed.
fn printed_secret(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .expect("a `secret:` line")
        .to_string()
}

fn add_alice(dir: &Path) -> (PathBuf, String) {
    let file = dir.join("users.toml");
    let out = ok(
        &file,
        &["add", "alice", "--group", "biomed", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert!(out.contains("otpauth://totp/moat:alice?secret="), "{out}");
    assert!(out.contains("issuer=moat"), "{out}");
    assert!(!out.contains(PASSWORD), "the password was printed");
    (file, printed_secret(&out))
}

#[test]
fn add_list_disable_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (file, secret) = add_alice(dir.path());
    assert_eq!(mode(&file), 0o600);

    // What was written is what was shown, and the password verifies.
    let text = std::fs::read_to_string(&file).unwrap();
    let directory = users::parse(&file, &text).unwrap();
    let alice = directory.get("alice").unwrap();
    assert_eq!(totp::to_base32(&alice.totp_secret), secret);
    assert!(password::verify(&alice.password_hash, PASSWORD));
    assert_eq!(&*alice.groups[0], "biomed");

    let list = ok(&file, &["list"], "");
    assert!(list.contains("alice") && list.contains("biomed"), "{list}");
    assert!(list.contains("enabled"), "{list}");
    assert!(!list.contains(&secret), "list printed the secret:\n{list}");
    assert!(!list.contains("argon2"), "list printed the hash:\n{list}");

    // An existing name is refused, the file unchanged.
    let again = moat(
        &file,
        &["add", "alice", "--password-stdin"],
        "another password\n",
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);

    ok(&file, &["disable", "alice"], "");
    assert_eq!(mode(&file), 0o600);
    let list = ok(&file, &["list"], "");
    assert!(list.contains("disabled"), "{list}");
    assert!(!list.contains(&secret), "{list}");

    // Unknown user: a clear error, non-zero exit.
    let unknown = moat(&file, &["remove", "bob"], "");
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no user \"bob\""), "{stderr}");

    ok(&file, &["remove", "alice"], "");
    assert_eq!(mode(&file), 0o600);
    let list = ok(&file, &["list"], "");
    assert!(!list.contains("alice"), "{list}");
    assert!(list.starts_with("no users"), "{list}");
}

#[test]
fn short_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    let out = moat(&file, &["add", "alice", "--password-stdin"], "short\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 8 characters"));
    assert!(!file.exists());
}

fn oathtool() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("oathtool"));
    candidates.into_iter().find(|p| p.is_file())
}

#[test]
fn oathtool_codes_are_accepted() {
    let Some(oathtool) = oathtool() else {
        eprintln!(
            "SKIPPED oathtool_codes_are_accepted: oathtool not found (Debian: apt-get install oathtool)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, secret) = add_alice(dir.path());
    let bytes = totp::from_base32(&secret).unwrap();
    let code_at = |now: Option<u64>| {
        let mut cmd = Command::new(&oathtool);
        cmd.args(["--totp", "-b", &secret]);
        if let Some(t) = now {
            cmd.arg("-N").arg(format!("@{t}"));
        }
        let out = cmd.output().expect("running oathtool");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // At fixed times: exactly the same step, no skew needed.
    for t in [
        59,
        1_111_111_109,
        1_234_567_890,
        2_000_000_000,
        20_000_000_000,
    ] {
        let code = code_at(Some(t));
        assert_eq!(
            totp::matching_step(&bytes, &code, t, 0),
            Some(t / 30),
            "oathtool's code at {t} was refused"
        );
    }
    // Now: one step of skew, as oathtool may run in the next step.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = code_at(None);
    assert!(
        totp::matching_step(&bytes, &code, now, 1).is_some(),
        "oathtool's current code was refused"
    );
}
