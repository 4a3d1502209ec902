use super::*;
use std::os::unix::fs::PermissionsExt;

const PASSWORD: &str = "correct horse battery";

fn entry(name: &str) -> UserEntry {
    UserEntry {
        name: name.to_string(),
        password: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA".to_string(),
        totp_secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ".to_string(),
        groups: vec![],
        disabled: false,
    }
}

fn names(entries: &[UserEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

fn message(f: Failure) -> String {
    match f {
        Failure::Message(m) => m,
        Failure::Invalid(e) => panic!("invalid file: {e}"),
    }
}

#[test]
fn in_memory_edits() {
    let path = Path::new("users.toml");
    let mut entries = vec![];
    add_user(&mut entries, entry("zoe")).unwrap();
    add_user(&mut entries, entry("alice")).unwrap();
    add_user(&mut entries, entry("mike")).unwrap();
    let dup = message(add_user(&mut entries, entry("alice")).unwrap_err());
    assert!(dup.contains("already exists"), "{dup}");
    assert_eq!(names(&entries), ["zoe", "alice", "mike"]);

    assert!(set_disabled(&mut entries, "alice", true, path).unwrap());
    assert!(!set_disabled(&mut entries, "alice", true, path).unwrap());
    assert!(entries[1].disabled);
    assert!(set_disabled(&mut entries, "alice", false, path).unwrap());
    assert!(!entries[1].disabled);

    assert_eq!(
        remove_user(&mut entries, "alice", path).unwrap().name,
        "alice"
    );
    assert_eq!(names(&entries), ["zoe", "mike"]);
    let missing = message(remove_user(&mut entries, "alice", path).unwrap_err());
    assert_eq!(missing, "no user \"alice\" in users.toml");
    assert!(set_disabled(&mut entries, "bob", true, path).is_err());
    assert!(find(&mut entries, "bob", path).is_err());
}

#[test]
fn password_rules() {
    assert!(check_new_password("").is_err());
    assert!(check_new_password("1234567").is_err());
    // Characters, not bytes.
    assert!(check_new_password("ééééééé").is_err());
    assert!(check_new_password("12345678").is_ok());
}

struct Run {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        Run {
            path: dir.path().join("users.toml"),
            _dir: dir,
        }
    }

    fn with(&self, command: UserCommand, password: &str) -> Result<String, Failure> {
        let mut out = Vec::new();
        let mut pw = |_: &str, _: bool| Ok(password.to_string());
        execute(&self.path, &command, &mut pw, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn ok(&self, command: UserCommand) -> String {
        self.with(command, PASSWORD)
            .unwrap_or_else(|f| panic!("{}", message(f)))
    }

    fn err(&self, command: UserCommand) -> String {
        message(self.with(command, PASSWORD).unwrap_err())
    }

    fn mode(&self) -> u32 {
        std::fs::metadata(&self.path).unwrap().permissions().mode() & 0o7777
    }

    fn directory(&self) -> crate::auth::UserDirectory {
        let text = std::fs::read_to_string(&self.path).unwrap();
        users::parse(&self.path, &text).unwrap()
    }
}

fn add(name: &str, groups: &[&str]) -> UserCommand {
    UserCommand::Add {
        name: name.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        password_stdin: true,
    }
}

fn secret_line(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret: "))
        .unwrap()
        .to_string()
}

#[test]
fn add_creates_the_file_0600_and_shows_the_secret_once() {
    let run = Run::new();
    let out = run.ok(add("alice", &["biomed", "icu", "biomed"]));
    assert!(
        out.starts_with("added alice (groups: biomed, icu) to "),
        "{out}"
    );
    assert!(out.contains("(created, mode 0600)"), "{out}");
    assert!(out.contains("otpauth://totp/moat:alice?secret="), "{out}");
    assert!(out.contains("shown once"), "{out}");
    assert!(!out.contains(PASSWORD) && !out.contains("argon2"), "{out}");
    assert_eq!(run.mode(), 0o600);

    let dir = run.directory();
    let alice = dir.get("alice").unwrap();
    assert!(password::verify(&alice.password_hash, PASSWORD));
    assert_eq!(totp::to_base32(&alice.totp_secret), secret_line(&out));
    assert_eq!(alice.groups.len(), 2);

    let again = run.err(add("alice", &[]));
    assert!(again.contains("already exists"), "{again}");
}

#[test]
fn short_or_empty_passwords_change_nothing() {
    let run = Run::new();
    for pw in ["", "short"] {
        assert!(run.with(add("alice", &[]), pw).is_err());
        assert!(!run.path.exists());
    }
    run.ok(add("alice", &[]));
    let before = std::fs::read_to_string(&run.path).unwrap();
    let passwd = UserCommand::Passwd {
        name: "alice".into(),
        password_stdin: true,
    };
    assert!(run.with(passwd, "1234567").is_err());
    assert_eq!(std::fs::read_to_string(&run.path).unwrap(), before);
}

#[test]
fn edits_keep_the_mode_and_the_order() {
    let run = Run::new();
    run.ok(add("zoe", &[]));
    run.ok(add("alice", &["biomed"]));
    run.ok(add("mike", &[]));
    std::fs::set_permissions(&run.path, std::fs::Permissions::from_mode(0o640)).unwrap();

    assert_eq!(
        run.ok(UserCommand::Disable {
            name: "alice".into()
        }),
        "disabled alice\n"
    );
    assert_eq!(run.mode(), 0o640);
    assert!(run.directory().get("alice").unwrap().disabled);
    assert!(run
        .ok(UserCommand::Disable {
            name: "alice".into()
        })
        .contains("already disabled"));

    let list = run.ok(UserCommand::List);
    assert_eq!(
        list,
        "NAME   GROUPS  STATUS\n\
         zoe    -       enabled\n\
         alice  biomed  disabled\n\
         mike   -       enabled\n"
    );

    run.ok(UserCommand::Enable {
        name: "alice".into(),
    });
    assert!(!run.directory().get("alice").unwrap().disabled);

    let old = run.directory().get("mike").unwrap().totp_secret.clone();
    let out = run.ok(UserCommand::ResetTotp {
        name: "mike".into(),
    });
    let new = run.directory().get("mike").unwrap().totp_secret.clone();
    assert_ne!(old, new);
    assert_eq!(totp::to_base32(&new), secret_line(&out));

    let passwd = UserCommand::Passwd {
        name: "zoe".into(),
        password_stdin: true,
    };
    run.with(passwd, "another good one").ok().unwrap();
    let zoe_hash = run.directory().get("zoe").unwrap().password_hash.clone();
    assert!(password::verify(&zoe_hash, "another good one"));
    assert!(!password::verify(&zoe_hash, PASSWORD));

    run.ok(UserCommand::Remove {
        name: "alice".into(),
    });
    let text = std::fs::read_to_string(&run.path).unwrap();
    let entries = users::parse_entries(&run.path, &text).unwrap();
    assert_eq!(names(&entries), ["zoe", "mike"]);
    assert_eq!(run.mode(), 0o640);

    // The last user removed: still a file moat reads.
    run.ok(UserCommand::Remove { name: "zoe".into() });
    run.ok(UserCommand::Remove {
        name: "mike".into(),
    });
    assert!(run.directory().users.is_empty());
    assert!(run.ok(UserCommand::List).starts_with("no users in "));
}

#[test]
fn unknown_users_and_missing_files_are_errors() {
    let run = Run::new();
    let e = run.err(UserCommand::List);
    assert!(
        e.contains("no such file (`moat user add` creates it)"),
        "{e}"
    );
    assert!(!run.path.exists());
    run.ok(add("alice", &[]));
    for command in [
        UserCommand::Disable { name: "bob".into() },
        UserCommand::Enable { name: "bob".into() },
        UserCommand::Remove { name: "bob".into() },
        UserCommand::ResetTotp { name: "bob".into() },
        UserCommand::Passwd {
            name: "bob".into(),
            password_stdin: true,
        },
    ] {
        let e = run.err(command);
        assert!(e.starts_with("no user \"bob\" in "), "{e}");
    }
}

#[test]
fn bad_names_are_refused() {
    let run = Run::new();
    assert!(run.err(add("bad name", &[])).contains("not a valid name"));
    assert!(run.err(add("ok", &["bad group"])).starts_with("--group: "));
    assert!(!run.path.exists());
}

#[test]
fn a_world_readable_or_invalid_file_is_not_edited() {
    let run = Run::new();
    run.ok(add("alice", &[]));
    std::fs::set_permissions(&run.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = run.err(UserCommand::List);
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");

    std::fs::set_permissions(&run.path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&run.path, "[[user]]\nname = \"x\"\n").unwrap();
    match run.with(UserCommand::Remove { name: "x".into() }, PASSWORD) {
        Err(Failure::Invalid(errors)) => assert_eq!(errors.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&run.path).unwrap(),
        "[[user]]\nname = \"x\"\n"
    );
}

#[test]
fn command_line_syntax() {
    use clap::Parser;
    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        User(UserArgs),
    }
    let parse = |args: &[&str]| {
        let Cmd::User(u) = Top::try_parse_from(args).unwrap().cmd;
        u
    };
    let u = parse(&[
        "moat",
        "user",
        "--users",
        "/u.toml",
        "add",
        "alice",
        "--group",
        "a",
        "--group",
        "b",
        "--password-stdin",
    ]);
    assert_eq!(u.users.as_deref(), Some(Path::new("/u.toml")));
    assert_eq!(
        u.command,
        UserCommand::Add {
            name: "alice".into(),
            groups: vec!["a".into(), "b".into()],
            password_stdin: true
        }
    );
    // --users after the subcommand too.
    let u = parse(&["moat", "user", "reset-totp", "bob", "--users", "/u.toml"]);
    assert_eq!(u.users.as_deref(), Some(Path::new("/u.toml")));
    assert_eq!(u.command, UserCommand::ResetTotp { name: "bob".into() });
    assert_eq!(parse(&["moat", "user", "list"]).command, UserCommand::List);
    assert!(Top::try_parse_from(["moat", "user", "add"]).is_err());
}
