use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn a_code_works_once_for_its_user_and_only_hashes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breakglass.toml");
    let codes = issue(&path, "alice", 2, 1000).unwrap();
    assert_eq!(codes.len(), 2);
    assert_ne!(codes[0], codes[1]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    for c in &codes {
        let (_, secret) = parse(c).unwrap();
        assert!(!text.contains(&secret), "a code's secret is in the file");
    }
    // Someone else's name, a typo, a wrong secret: no such code.
    assert_eq!(
        redeem(&path, "bob", &codes[0], 1001),
        Err(RedeemError::NoSuchCode)
    );
    let (id, _) = parse(&codes[0]).unwrap();
    let wrong = format!("{id}-AAAAA-AAAAA-AAAAA-AAAAA");
    assert_eq!(
        redeem(&path, "alice", &wrong, 1001),
        Err(RedeemError::NoSuchCode)
    );
    assert_eq!(
        redeem(&path, "alice", "not a code", 1001),
        Err(RedeemError::NoSuchCode)
    );
    // Lowercase and spaces are forgiven; once, then used.
    let sloppy = codes[0].to_lowercase().replace('-', " ");
    assert_eq!(redeem(&path, "alice", &sloppy, 1002), Ok(id.clone()));
    assert_eq!(
        redeem(&path, "alice", &codes[0], 1003),
        Err(RedeemError::AlreadyUsed)
    );
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("used_at = 1002"));
    // A new envelope voids the old one.
    let again = issue(&path, "alice", 1, 2000).unwrap();
    assert_eq!(
        redeem(&path, "alice", &codes[1], 2001),
        Err(RedeemError::NoSuchCode)
    );
    assert!(redeem(&path, "alice", &again[0], 2002).is_ok());
}

#[test]
fn a_file_others_may_read_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breakglass.toml");
    let codes = issue(&path, "alice", 1, 1000).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    match redeem(&path, "alice", &codes[0], 1001) {
        Err(RedeemError::File(msg)) => {
            assert!(msg.contains("breakglass.toml"), "{msg}");
            assert!(msg.contains("chmod"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_code_used_from_four_threads_wins_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("breakglass.toml");
    let code = issue(&path, "alice", 1, 1000).unwrap().remove(0);
    let wins: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| redeem(&path, "alice", &code, 1001).is_ok()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap() as usize)
            .sum()
    });
    assert_eq!(wins, 1);
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
