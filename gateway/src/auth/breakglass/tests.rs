use std::os::unix::fs::PermissionsExt;

use super::*;

/// A well-formed argon2id PHC string, for the tests that only parse.
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY3OA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";

/// A fresh directory and the codes file's path in it (not created).
fn codes_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breakglass.toml");
    (dir, path)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn id_of(code: &str) -> String {
    parse(code).unwrap().0
}

fn file_error(r: Result<String, RedeemError>) -> String {
    match r {
        Err(RedeemError::File(msg)) => msg,
        other => panic!("expected a file error, got {other:?}"),
    }
}

#[test]
fn a_code_works_once_and_only_for_its_user() {
    let (_dir, path) = codes_file();
    let codes = issue(&path, "alice", 2, 1000).unwrap();
    let bobs = issue(&path, "bob", 1, 1000).unwrap();
    assert_eq!(codes.len(), 2);
    assert_ne!(codes[0], codes[1]);
    for c in codes.iter().chain(&bobs) {
        let groups: Vec<usize> = c.split('-').map(str::len).collect();
        assert_eq!(groups, [4, 5, 5, 5, 5], "{c}");
    }
    let (id, secret) = parse(&codes[0]).unwrap();

    // Someone else's code, an id that does not exist, a wrong secret,
    // something that is not a code: all the same answer.
    assert_eq!(
        redeem(&path, "bob", &codes[0], 1001),
        Err(RedeemError::NoSuchCode)
    );
    assert_eq!(
        redeem(&path, "alice", &bobs[0], 1001),
        Err(RedeemError::NoSuchCode)
    );
    assert_eq!(
        redeem(&path, "carol", &codes[0], 1001),
        Err(RedeemError::NoSuchCode)
    );
    let taken = [id_of(&codes[0]), id_of(&codes[1])];
    let unknown = ["ZZZZ", "YYYY"]
        .into_iter()
        .find(|i| !taken.contains(&i.to_string()))
        .unwrap();
    assert_eq!(
        redeem(&path, "alice", &format!("{unknown}-{secret}"), 1001),
        Err(RedeemError::NoSuchCode)
    );
    let wrong = format!("{id}-AAAAA-AAAAA-AAAAA-AAAAA");
    assert_eq!(
        redeem(&path, "alice", &wrong, 1001),
        Err(RedeemError::NoSuchCode)
    );
    for junk in ["", "not a code", &codes[0][..10]] {
        assert_eq!(
            redeem(&path, "alice", junk, 1001),
            Err(RedeemError::NoSuchCode),
            "{junk:?}"
        );
    }
    assert!(!std::fs::read_to_string(&path).unwrap().contains("used_at"));

    // Lowercase, spaces for dashes: accepted once, then used.
    let sloppy = codes[0].to_lowercase().replace('-', " ");
    assert_eq!(redeem(&path, "alice", &sloppy, 1002), Ok(id.clone()));
    assert_eq!(
        redeem(&path, "alice", &codes[0], 1003),
        Err(RedeemError::AlreadyUsed)
    );
    // A used code with a wrong secret says nothing about being used.
    assert_eq!(
        redeem(&path, "alice", &wrong, 1003),
        Err(RedeemError::NoSuchCode)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("used_at = 1002").count(), 1, "{text}");
    // The other codes are untouched.
    assert_eq!(
        redeem(&path, "alice", &codes[1], 1004),
        Ok(id_of(&codes[1]))
    );
    assert_eq!(redeem(&path, "bob", &bobs[0], 1004), Ok(id_of(&bobs[0])));
}

#[test]
fn the_file_is_0600_and_holds_no_code() {
    let (_dir, path) = codes_file();
    let codes = issue(&path, "alice", 2, 1000).unwrap();
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    for c in &codes {
        let (id, secret) = parse(c).unwrap();
        assert!(!text.contains(c.as_str()), "a code is in the file");
        assert!(!text.contains(&secret), "a code's secret is in the file");
        assert!(
            !text.contains(&secret[..GROUP_LEN]),
            "part of a secret is in the file"
        );
        // The id is public: it is how the code is found.
        assert!(text.contains(&format!("id = \"{id}\"")), "{text}");
    }
    assert_eq!(text.matches("hash = \"$argon2id$").count(), 2, "{text}");
    // Marking a code used keeps the mode.
    redeem(&path, "alice", &codes[0], 1001).unwrap();
    assert_eq!(mode(&path), 0o600);
    // The lock file beside it holds nothing, and is private too.
    assert_eq!(mode(&lock_path(&path)), 0o600);
}

#[test]
fn a_new_envelope_voids_the_old_one_and_keeps_other_users() {
    let (_dir, path) = codes_file();
    let old = issue(&path, "alice", 2, 1000).unwrap();
    let bobs = issue(&path, "bob", 1, 1000).unwrap();
    redeem(&path, "alice", &old[0], 1001).unwrap();
    let new = issue(&path, "alice", 1, 2000).unwrap();
    // Used and unused alike: gone.
    for c in &old {
        assert_eq!(
            redeem(&path, "alice", c, 2001),
            Err(RedeemError::NoSuchCode),
            "an old code still works"
        );
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("[[code]]").count(), 2, "{text}");
    assert!(!text.contains("used_at"), "{text}");
    assert!(redeem(&path, "alice", &new[0], 2002).is_ok());
    assert!(redeem(&path, "bob", &bobs[0], 2002).is_ok());
}

#[test]
fn a_file_its_group_or_others_may_open_is_refused_naming_it_and_its_mode() {
    let (_dir, path) = codes_file();
    let code = issue(&path, "alice", 1, 1000).unwrap().remove(0);
    for (bits, who) in [
        (0o640, "its group may read it"),
        (0o620, "its group may change it"),
        (0o604, "other users may read it"),
        (
            0o666,
            "its group may read and change it and other users may read and change it",
        ),
    ] {
        chmod(&path, bits);
        let msg = file_error(redeem(&path, "alice", &code, 1001));
        for part in [
            path.display().to_string(),
            format!("has mode {bits:04o}"),
            who.to_string(),
            format!("chmod 600 {}", path.display()),
        ] {
            assert!(msg.contains(&part), "{part:?} not in {msg}");
        }
        assert!(!msg.contains("$argon2"), "{msg}");
        // Nor is it edited.
        let issued = issue(&path, "alice", 1, 1001).unwrap_err();
        assert!(issued.contains(&format!("has mode {bits:04o}")), "{issued}");
    }
    chmod(&path, 0o600);
    assert!(redeem(&path, "alice", &code, 1002).is_ok());
}

#[test]
fn codes_are_read_in_any_case_with_or_without_separators() {
    let code = printed("K7QF", "ABCDEFGHJKMNPQRSTUVW");
    assert_eq!(code, "K7QF-ABCDE-FGHJK-MNPQR-STUVW");
    let want = Some(("K7QF".to_string(), "ABCDEFGHJKMNPQRSTUVW".to_string()));
    for typed in [
        code.as_str(),
        "k7qf-abcde-fghjk-mnpqr-stuvw",
        "K7QF ABCDE FGHJK MNPQR STUVW",
        "  k7qf abcdefghjk\tMNPQR-stuvw \n",
        "K7QFABCDEFGHJKMNPQRSTUVW",
        "K7QF\u{2013}ABCDE\u{2013}FGHJK\u{2014}MNPQR\u{2010}STUVW",
        "K-7-Q-F-A-B-C-D-E-F-G-H-J-K-M-N-P-Q-R-S-T-U-V-W",
    ] {
        assert_eq!(parse(typed), want, "{typed:?}");
    }
    let long = "K".repeat(24) + &" ".repeat(MAX_INPUT_BYTES);
    for wrong in [
        "",
        "K7QF-ABCDE-FGHJK-MNPQR-STUV",
        "K7QF-ABCDE-FGHJK-MNPQR-STUVWX",
        // Letters and digits left out of the alphabet, and anything else.
        "K7QF-ABCDE-FGHJK-MNPQR-STUV0",
        "K7QF-ABCDE-FGHJK-MNPQR-STUVO",
        "K7QF-ABCDE-FGHJK-MNPQR-STUV1",
        "K7QF-ABCDE-FGHJK-MNPQR-STUVI",
        "K7QF-ABCDE-FGHJK-MNPQR-STUVL",
        "K7QF-ABCDE-FGHJK-MNPQR-STUV_",
        "K7QF-ABCDE-FGHJK-MNPQR-STUVé",
        long.as_str(),
    ] {
        assert_eq!(parse(wrong), None, "{wrong:?}");
    }
    // What `issue` prints, `parse` reads back.
    let id = random_chars(ID_LEN).unwrap();
    let secret = random_chars(SECRET_LEN).unwrap();
    assert_eq!(parse(&printed(&id, &secret)), Some((id, secret)));
}

#[test]
fn one_code_used_from_four_threads_wins_once() {
    let (_dir, path) = codes_file();
    let code = issue(&path, "alice", 1, 1000).unwrap().remove(0);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| redeem(&path, "alice", &code, 1001)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == Err(RedeemError::AlreadyUsed))
            .count(),
        3,
        "{results:?}"
    );
}

#[test]
fn a_code_is_not_accepted_when_the_file_cannot_be_written() {
    let (_dir, path) = codes_file();
    let code = issue(&path, "alice", 1, 1000).unwrap().remove(0);
    let full = |p: &Path, _: &CodesFile| Err(format!("cannot write {}: disk full", p.display()));
    let msg = file_error(redeem_with(&path, "alice", &code, 1001, &full));
    assert!(
        msg.contains("breakglass.toml") && msg.contains("disk full"),
        "{msg}"
    );
    // Not used up: the file never said so.
    assert!(!std::fs::read_to_string(&path).unwrap().contains("used_at"));
    assert_eq!(redeem(&path, "alice", &code, 1002), Ok(id_of(&code)));
}

#[test]
fn a_redeem_waits_for_another_process_editing_the_file() {
    let (_dir, path) = codes_file();
    let old = issue(&path, "alice", 1, 1000).unwrap().remove(0);
    // `moat breakglass issue` in another process: the file lock alone.
    let other = std::fs::File::open(lock_path(&path)).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) }, 0);
    std::thread::scope(|s| {
        let waiting = s.spawn(|| redeem(&path, "alice", &old, 1001));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the redeem did not wait");
        // The other process voids the envelope while the redeem waits.
        let new = issue_locked(&path, "alice", 1, 1001).unwrap();
        drop(other);
        // The redeem reads the new file: the old code is gone, and is not
        // written back over the new one.
        assert_eq!(waiting.join().unwrap(), Err(RedeemError::NoSuchCode));
        assert!(redeem(&path, "alice", &new.codes[0], 1002).is_ok());
    });
}

#[test]
fn a_missing_file_is_unavailable_not_a_wrong_code() {
    let (_dir, path) = codes_file();
    let msg = file_error(redeem(&path, "alice", "K7QF-ABCDE-FGHJK-MNPQR-STUVW", 1000));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("no such file"), "{msg}");
    assert!(msg.contains("moat breakglass"), "{msg}");
    assert!(!msg.contains("ABCDE"), "{msg}");
}

#[test]
fn problems_in_the_file_name_line_column_and_field_never_the_value() {
    let path = Path::new("breakglass.toml");
    let text = format!(
        "[[code]]\n\
         user = \"alice\"\n\
         id = \"K7QF\"\n\
         issued_at = \"{HASH}\"\n\
         hash = \"K7QF-ABCDE-FGHJK-MNPQR-STUVW\"\n\
         \n\
         [[code]]\n\
         user = \"bob\"\n\
         id = \"ABCDE-FGHJK\"\n\
         issued_at = -5\n\
         hsah = \"{HASH}\"\n\
         \n\
         [[code]]\n\
         user = \"not a name\"\n\
         id = \"MNPQ\"\n\
         issued_at = 1\n\
         used_at = 2.5\n\
         hash = 17\n"
    );
    let errors = parse_file(path, &text).unwrap_err().to_string();
    for want in [
        "breakglass.toml:4:13: code[0].issued_at: expected a Unix time in seconds",
        "found a string",
        "breakglass.toml:5:8: code[0].hash: not a usable argon2id hash (not a PHC string)",
        "breakglass.toml:9:6: code[1].id: not a code id",
        "breakglass.toml:10:13: code[1].issued_at: expected a Unix time",
        "breakglass.toml:11:1: code[1]: unknown field `hsah`",
        "did you mean `hash`?",
        "code[1]: missing field `hash`",
        "breakglass.toml:14:8: code[2].user: ",
        "breakglass.toml:17:11: code[2].used_at: expected a Unix time",
        "found a float",
        "breakglass.toml:18:8: code[2].hash: expected a string, found an integer",
    ] {
        assert!(errors.contains(want), "{want:?} not in:\n{errors}");
    }
    for secret in ["$argon2", "c29tZXNhbHQ", "ABCDE", "STUVW", "FGHJK"] {
        assert!(!errors.contains(secret), "{secret:?} in:\n{errors}");
    }
}

#[test]
fn a_file_cut_short_or_with_an_id_twice_is_refused() {
    let path = Path::new("breakglass.toml");
    let table = |user: &str, id: &str, used: bool| {
        let used = if used { "used_at = 1001\n" } else { "" };
        format!("[[code]]\nuser = \"{user}\"\nid = \"{id}\"\nissued_at = 1000\n{used}hash = \"{HASH}\"\n")
    };
    let good = format!(
        "{}\n{}",
        table("alice", "K7QF", true),
        table("bob", "K7QF", false)
    );
    let file = parse_file(path, &good).unwrap();
    assert_eq!(file.codes.len(), 2);
    assert_eq!(file.codes[0].used_at, Some(1001));
    assert_eq!(file.codes[1].used_at, None);

    // moat writes `used_at` before `hash`, so a cut that loses the one
    // loses the other, and the file is refused.
    let written = to_toml(&file);
    assert!(written.find("\nused_at =").unwrap() < written.find("\nhash =").unwrap());
    assert_eq!(parse_file(path, &written).unwrap().codes.len(), 2);
    let cut = &written[..written.find("\nused_at =").unwrap() + 1];
    let refused = parse_file(path, cut).unwrap_err().to_string();
    assert!(refused.contains("missing field `hash`"), "{refused}");
    // Cut inside a line, or with no last newline.
    let refused = parse_file(path, good.trim_end()).unwrap_err().to_string();
    assert!(refused.contains("no newline at its end"), "{refused}");
    assert!(parse_file(path, "").is_err());

    let twice = format!(
        "{}\n{}",
        table("alice", "K7QF", false),
        table("alice", "K7QF", true)
    );
    let refused = parse_file(path, &twice).unwrap_err().to_string();
    assert!(
        refused.contains("breakglass.toml:9:6: code[1].id: \"alice\" already has a code with this id (code[0], line 1)"),
        "{refused}"
    );

    for (text, want) in [
        (
            "code = \"K7QF-ABCDE\"\n",
            "expected `[[code]]` tables, found a string",
        ),
        ("code = [1]\n", "expected `[[code]]` tables, found an array"),
        ("[[codes]]\nuser = \"a\"\n", "unknown key `codes`"),
        ("[[code]]\nuser = \"a\"\nuser = \"b\"\n", "duplicate key"),
    ] {
        let refused = parse_file(path, text).unwrap_err().to_string();
        assert!(refused.contains(want), "{want:?} not in {refused}");
        assert!(!refused.contains("ABCDE"), "{refused}");
    }
    // What moat writes when nobody has codes: a file with none.
    let empty = to_toml(&CodesFile::default());
    assert!(parse_file(path, &empty).unwrap().codes.is_empty());
}

fn run(path: &Path, command: BreakGlassCommand, now: u64) -> Result<String, Failure> {
    let mut out = Vec::new();
    execute(path, &command, now, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn message(r: Result<String, Failure>) -> String {
    match r {
        Err(Failure::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn the_commands_print_codes_once_and_list_no_hash() {
    let (_dir, path) = codes_file();
    let issue_for = |user: &str, count| BreakGlassCommand::Issue {
        user: user.to_string(),
        count,
    };
    let printed = run(&path, issue_for("alice", 2), 1000).unwrap();
    for part in [
        "Break-glass codes for alice, issued 1970-01-01T00:16:40Z",
        "seal it in an envelope",
        "moat stores only their hashes",
        "Created",
        "mode 0600",
    ] {
        assert!(printed.contains(part), "{part:?} not in:\n{printed}");
    }
    let codes: Vec<&str> = printed
        .split_whitespace()
        .filter(|w| w.len() > ID_LEN && parse(w).is_some())
        .collect();
    assert_eq!(codes.len(), 2, "{printed}");
    redeem(&path, "alice", codes[0], 5000).unwrap();
    let bob = run(&path, issue_for("bob", 1), 1000).unwrap();
    assert!(!bob.contains("Created"), "{bob}");

    let listed = run(&path, BreakGlassCommand::List, 6000).unwrap();
    let id = id_of(codes[0]);
    assert_eq!(
        listed,
        format!(
            "alice: 2 codes issued 1970-01-01T00:16:40Z, 1 unused\n\
             \x20 {id} used 1970-01-01T01:23:20Z\n\
             bob: 1 code issued 1970-01-01T00:16:40Z, 1 unused\n"
        )
    );
    let again = run(&path, issue_for("alice", 1), 7000).unwrap();
    assert!(again.contains("Voided 2 codes alice had before"), "{again}");

    let revoked = run(
        &path,
        BreakGlassCommand::Revoke {
            user: "alice".into(),
        },
        8000,
    )
    .unwrap();
    assert!(
        revoked.starts_with("removed 1 code of alice (0 used)"),
        "{revoked}"
    );
    let listed = run(&path, BreakGlassCommand::List, 8000).unwrap();
    assert!(
        listed.starts_with("bob: ") && !listed.contains("alice"),
        "{listed}"
    );
    assert!(!std::fs::read_to_string(&path).unwrap().contains("alice"));

    // Refusals, nothing changed.
    let before = std::fs::read_to_string(&path).unwrap();
    let m = message(run(
        &path,
        BreakGlassCommand::Revoke {
            user: "alice".into(),
        },
        9000,
    ));
    assert!(
        m.contains("no codes of \"alice\"") && m.contains("nothing changed"),
        "{m}"
    );
    for count in [0, MAX_CODES + 1] {
        let m = message(run(&path, issue_for("alice", count), 9000));
        assert!(m.contains("1 to 100 codes"), "{m}");
    }
    let m = message(run(&path, issue_for("not a name", 1), 9000));
    assert!(m.contains("not a valid name"), "{m}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    chmod(&path, 0o640);
    match run(&path, BreakGlassCommand::List, 9000) {
        Err(Failure::Invalid(e)) => assert!(e.to_string().contains("has mode 0640"), "{e}"),
        other => panic!("{other:?}"),
    }

    let (_empty, missing) = codes_file();
    let m = message(run(&missing, BreakGlassCommand::List, 9000));
    assert!(m.contains("no such file"), "{m}");
}

#[test]
fn a_missing_file_is_a_setup_error_not_a_wrong_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breakglass.toml");
    match redeem(&path, "alice", "AAAA-AAAAA-AAAAA-AAAAA-AAAAA", 1) {
        Err(RedeemError::File(msg)) => assert!(msg.contains("breakglass.toml"), "{msg}"),
        other => panic!("{other:?}"),
    }
}
