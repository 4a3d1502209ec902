use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::auth::grants::GrantId;
use crate::auth::users::{to_toml, UserEntry};

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

fn user(name: &str, groups: &[&str], disabled: bool) -> UserEntry {
    UserEntry {
        name: name.into(),
        disabled,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        password: HASH.into(),
        totp_secret: "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into(),
    }
}

/// A policy with one grant service `ct/dicom`.
fn policy(dir: &Path, users: &[UserEntry], upstream: &str, access: &str) -> Policy {
    let users_file = dir.join("users.toml");
    std::fs::write(&users_file, to_toml(users)).unwrap();
    std::fs::set_permissions(&users_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    crate::auth::session::create_key_file_if_missing(&dir.join("session.key")).unwrap();
    let text = format!(
        "[admin]\nenabled = false\n[auth]\nusers_file = \"users.toml\"\nsession_key_file = \"session.key\"\n\
[[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"dicom\"\nprotocol = \"tcp\"\n\
listen = \"127.0.0.1:11112\"\nupstream = \"{upstream}\"\nallow = [\"127.0.0.0/8\"]\nplaintext = true\n{access}\n"
    );
    let path = dir.join("moat.toml");
    std::fs::write(&path, text).unwrap();
    crate::policy::load(&path, 1).unwrap()
}

const MFA: &str = "access = \"mfa\"\ngroups = [\"biomed\"]";

fn grant(policy: &Policy, user: &str) -> Grant {
    Grant {
        id: GrantId(1),
        user: user.into(),
        device: "ct".into(),
        service: "dicom".into(),
        binding: GrantBinding::Address("127.0.0.2".parse().unwrap()),
        opened_at: 100,
        until: 200,
        break_glass: false,
        target: target(&policy.services[0]),
    }
}

#[test]
fn a_grant_holds_until_it_expires_or_the_policy_no_longer_admits_it() {
    let dir = tempfile::tempdir().unwrap();
    let alice = user("alice", &["biomed"], false);
    let p = policy(
        dir.path(),
        std::slice::from_ref(&alice),
        "127.0.0.1:104",
        MFA,
    );
    let g = grant(&p, "alice");
    assert_eq!(why_it_ends(&p, &g, 150), None);
    assert_eq!(why_it_ends(&p, &g, 200), Some(GrantEnd::Expired));

    let disabled = [user("alice", &["biomed"], true)];
    let removed = [user("bob", &["biomed"], false)];
    let moved = [user("alice", &["radiology"], false)];
    let one = [alice.clone()];
    let cases: [(&[UserEntry], &str, &str, GrantEnd); 5] = [
        (&disabled, "127.0.0.1:104", MFA, GrantEnd::UserDisabled),
        (&removed, "127.0.0.1:104", MFA, GrantEnd::UserRemoved),
        (&moved, "127.0.0.1:104", MFA, GrantEnd::UserNotAuthorized),
        // The service now leads elsewhere, or is no longer a grant service.
        (&one, "127.0.0.1:105", MFA, GrantEnd::PolicyChanged),
        (&one, "127.0.0.1:104", "", GrantEnd::PolicyChanged),
    ];
    for (users, upstream, access, why) in cases {
        let p = policy(dir.path(), users, upstream, access);
        assert_eq!(why_it_ends(&p, &g, 150), Some(why), "{why:?}");
    }
    // Unrelated changes (a longer max_grant) keep it.
    let longer = format!("{MFA}\nmax_grant = \"2h\"");
    let p = policy(dir.path(), &one, "127.0.0.1:104", &longer);
    assert_eq!(why_it_ends(&p, &g, 150), None);
}
