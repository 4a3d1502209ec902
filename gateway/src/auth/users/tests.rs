use super::*;
use std::path::PathBuf;
use std::sync::OnceLock;

const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // "12345678901234567890"

fn phc() -> &'static str {
    static PHC: OnceLock<String> = OnceLock::new();
    PHC.get_or_init(|| password::hash("correct horse battery staple"))
}

fn path() -> PathBuf {
    PathBuf::from("/etc/moat/users.toml")
}

fn user_toml(name: &str, extra: &str) -> String {
    format!(
        "[[user]]\nname = \"{name}\"\npassword = \"{}\"\ntotp_secret = \"{SECRET}\"\n{extra}",
        phc()
    )
}

fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(&path(), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0,
    }
}

#[test]
fn a_valid_file() {
    let text = format!(
        "# the biomed team\n\n{}\n{}",
        user_toml("alice", "groups = [\"biomed\", \"icu\"]\n"),
        user_toml("bob.smith@icu", "disabled = true\n"),
    );
    let dir = parse(&path(), &text).unwrap();
    assert_eq!(dir.users.len(), 2);
    let alice = dir.get("alice").unwrap();
    assert_eq!(&*alice.name, "alice");
    assert_eq!(alice.password_hash, phc());
    assert_eq!(alice.totp_secret, b"12345678901234567890");
    let groups: Vec<&str> = alice.groups.iter().map(|g| &**g).collect();
    assert_eq!(groups, ["biomed", "icu"]);
    assert!(!alice.disabled);
    let bob = dir.get("bob.smith@icu").unwrap();
    assert!(bob.disabled);
    assert!(bob.groups.is_empty());
    assert!(dir.get("carol").is_none());
    // Debug never shows the hash or the secret.
    let debug = format!("{alice:?} {dir:?}");
    assert!(
        !debug.contains("argon2") && !debug.contains(SECRET),
        "{debug}"
    );
}

#[test]
fn lower_case_and_padded_secrets_are_accepted() {
    let text = user_toml("alice", "").replace(SECRET, &SECRET.to_ascii_lowercase());
    let dir = parse(&path(), &text).unwrap();
    assert_eq!(
        dir.get("alice").unwrap().totp_secret,
        b"12345678901234567890"
    );
}

#[test]
fn a_file_without_users_is_valid() {
    assert!(parse(&path(), "# nobody yet\n").unwrap().users.is_empty());
}

#[test]
fn every_error_at_once_with_its_line() {
    let p = phc();
    let argon2i = p.replacen("$argon2id$", "$argon2i$", 1);
    let text = format!(
        r#"[[user]]
name = "alice"
password = "{p}"
totp_secret = "{SECRET}"

[[user]]
name = "alice"
password = "not-a-hash"
totp_secret = "JBSWY3DPEHPK3PXP"
groups = ["ok", "bad group", 7]
disabled = "no"
passwrd = "x"

[[user]]
name = "bad name!"
password = "{argon2i}"
totp_secret = "NOT BASE32 1!"

[[user]]
name = ""
password = 12
totp_secret = "{SECRET}"
groups = "biomed"

[[user]]
name = "carol"
"#
    );
    let errors = errors_of(&text);
    let got: Vec<(usize, usize, &str, &str)> = errors
        .iter()
        .map(|e| {
            (
                e.line.unwrap(),
                e.column.unwrap(),
                e.field.as_deref().unwrap(),
                e.message.as_str(),
            )
        })
        .collect();
    let expect: &[(usize, usize, &str, &str)] = &[
        (
            7,
            8,
            "user[1].name",
            "user \"alice\" is already defined (user[0], line 1)",
        ),
        (
            8,
            12,
            "user[1].password",
            "not a usable argon2id password hash (not a PHC string)",
        ),
        (
            9,
            15,
            "user[1].totp_secret",
            "the secret has 80 bits, at least 160 are needed",
        ),
        (
            10,
            17,
            "user[1].groups[1]",
            "\"bad group\" is not a valid name",
        ),
        (
            10,
            30,
            "user[1].groups[2]",
            "expected a string, found an integer",
        ),
        (
            11,
            12,
            "user[1].disabled",
            "expected true or false, found a string",
        ),
        (12, 1, "user[1]", "unknown field `passwrd`"),
        (15, 8, "user[2].name", "\"bad name!\" is not a valid name"),
        (
            16,
            12,
            "user[2].password",
            "not a usable argon2id password hash (not an argon2id hash",
        ),
        (17, 15, "user[2].totp_secret", "not base32"),
        (20, 8, "user[3].name", "\"\" is not a valid name"),
        (
            21,
            12,
            "user[3].password",
            "expected a string, found an integer",
        ),
        (
            23,
            10,
            "user[3].groups",
            "expected an array of group names, found a string",
        ),
        (25, 1, "user[4]", "missing field `password`"),
        (25, 1, "user[4]", "missing field `totp_secret`"),
    ];
    for want in expect {
        assert!(
            got.iter()
                .any(|g| (g.0, g.1, g.2) == (want.0, want.1, want.2) && g.3.starts_with(want.3)),
            "missing {want:?} in\n{got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    // In file order.
    let positions: Vec<(usize, usize)> = got.iter().map(|g| (g.0, g.1)).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
    assert!(got
        .iter()
        .any(|g| g.3.ends_with("did you mean `password`?")));
    // No error repeats a hash or a secret.
    let all = ConfigErrors(errors).to_string();
    for secret in [
        p,
        argon2i.as_str(),
        "not-a-hash",
        "JBSWY3DPEHPK3PXP",
        "NOT BASE32",
        SECRET,
    ] {
        assert!(!all.contains(secret), "{secret} in\n{all}");
    }
    assert!(
        all.starts_with("/etc/moat/users.toml:7:8: user[1].name: "),
        "{all}"
    );
}

#[test]
fn names_longer_than_64_are_refused() {
    let long = "a".repeat(65);
    let errors = errors_of(&user_toml(&long, ""));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("user[0].name"));
    assert!(parse(&path(), &user_toml(&"a".repeat(64), "")).is_ok());
    assert!(check_name("A-Z_a.z@0").is_ok());
    for bad in ["", "a b", "a:b", "é", "a/b", "a\"b"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn unknown_top_level_keys_are_errors() {
    let text = format!(
        "users_version = 2\n{}\n[server]\nx = 1\n",
        user_toml("alice", "")
    );
    let errors = errors_of(&text);
    let lines: Vec<usize> = errors.iter().map(|e| e.line.unwrap()).collect();
    assert_eq!(lines, [1, 7], "{errors:?}"); // in file order
    assert!(errors[0].message.starts_with("unknown key `users_version`"));
    assert!(errors[1].message.starts_with("unknown key `server`"));
}

#[test]
fn user_must_be_an_array_of_tables() {
    let errors = errors_of("user = 3\n");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(1));
}

#[test]
fn syntax_errors_have_a_location() {
    let errors = errors_of("[[user]\nname = \"a\"\n");
    assert_eq!(errors[0].line, Some(1));
}

#[test]
fn a_cut_short_file_is_refused() {
    let text = user_toml("alice", "");
    let errors = errors_of(text.trim_end());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(4));
    assert!(errors[0].message.contains("no newline"), "{errors:?}");
    assert!(errors_of("")[0].message.contains("empty"));
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn file_mode_check() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(&file, "# x\n").unwrap();
    for ok in [0o600, 0o400, 0o640, 0o440] {
        set_mode(&file, ok);
        assert_eq!(check_secret_file_mode(&file), Ok(()), "{ok:o}");
    }
    set_mode(&file, 0o644);
    let err = check_secret_file_mode(&file).unwrap_err();
    let shown = file.display().to_string();
    assert!(
        err.starts_with(&format!("{shown} has mode 0644: other users")),
        "{err}"
    );
    assert!(err.contains(&format!("chmod 600 {shown}")), "{err}");
    set_mode(&file, 0o660);
    let err = check_secret_file_mode(&file).unwrap_err();
    assert!(err.contains("mode 0660: its group may change it"), "{err}");
    for bad in [0o604, 0o602, 0o601, 0o620, 0o666, 0o777] {
        set_mode(&file, bad);
        assert!(check_secret_file_mode(&file).is_err(), "{bad:o}");
    }
    let missing = dir.path().join("nope.toml");
    assert!(check_secret_file_mode(&missing)
        .unwrap_err()
        .contains("nope.toml"));
}

fn entry(name: &str, groups: &[&str], disabled: bool) -> UserEntry {
    UserEntry {
        name: name.to_string(),
        password: phc().to_string(),
        totp_secret: SECRET.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        disabled,
    }
}

#[test]
fn write_then_parse_keeps_everything_in_order() {
    let entries = vec![
        entry("zoe", &["radiology"], false),
        entry("alice", &["biomed", "icu"], true),
        entry("mike", &[], false),
    ];
    let text = to_toml(&entries);
    assert!(text.starts_with("# moat users file"), "{text}");
    assert_eq!(parse_entries(&path(), &text).unwrap(), entries);
    assert_eq!(parse(&path(), &text).unwrap().users.len(), 3);
    // No users: still a complete file.
    let empty = to_toml(&[]);
    assert!(parse_entries(&path(), &empty).unwrap().is_empty());
}

#[test]
fn strings_are_escaped_when_written() {
    // Names cannot hold quotes, but a writer must not trust that.
    let mut e = entry("alice", &[], false);
    e.name = "a\"b\\c\nd".to_string();
    let text = to_toml(std::slice::from_ref(&e));
    #[derive(Deserialize)]
    struct F {
        user: Vec<UserEntry>,
    }
    let back: F = toml::from_str(&text).unwrap();
    assert_eq!(back.user, vec![e]);
}

#[cfg(unix)]
#[test]
fn write_atomic_creates_0600_and_keeps_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    write_atomic(&file, "# one\n").unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# one\n");
    assert_eq!(mode_of(&file), 0o600);

    set_mode(&file, 0o640);
    write_atomic(&file, "# two\n").unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# two\n");
    assert_eq!(mode_of(&file), 0o640);

    // Nothing left behind in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["users.toml"]);
}

#[cfg(unix)]
#[test]
fn write_atomic_follows_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.toml");
    let link = dir.path().join("users.toml");
    std::fs::write(&real, "# old\n").unwrap();
    set_mode(&real, 0o600);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    write_atomic(&link, "# new\n").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "# new\n");
}

#[test]
fn write_atomic_in_the_current_directory_form() {
    // A bare file name has an empty parent: the temp file goes to ".".
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    write_atomic(&file, "# x\n").unwrap();
    assert!(file.exists());
}
