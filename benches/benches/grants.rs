//! The grant check at accept (issue 12): `controls::authorize` on an
//! `mfa` TCP service, with 10,000 live grants in the identity store, for
//! an address that holds a grant and for an allowed one that holds none
//! (the common refusal). Baseline in the same run: the same service with
//! `access = "network"`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use moat::auth::grants::{Grant, GrantBinding, GrantId};
use moat::controls::{self, Asking, Grants};
use moat::runtime::{IdentityStore, MemoryStore};

const GRANTS: u32 = 10_000;

fn config(dir: &std::path::Path, access: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let users = dir.join("users.toml");
    std::fs::write(&users, moat::auth::users::to_toml(&[])).unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    moat::auth::session::create_key_file_if_missing(&dir.join("session.key")).unwrap();
    let text = format!(
        r#"
[admin]
enabled = false
[auth]
users_file = "users.toml"
session_key_file = "session.key"
[[device]]
id = "ct"
name = "CT"
[[device.service]]
name = "dicom"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:104"
allow = ["10.0.0.0/8"]
plaintext = true
{access}
"#
    );
    let path = dir.join(format!("moat-{}.toml", access.len()));
    std::fs::write(&path, text).unwrap();
    path
}

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 3))
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let grant_policy = moat::policy::load(
        &config(dir.path(), "access = \"mfa\"\ngroups = [\"biomed\"]"),
        1,
    )
    .unwrap();
    let network_policy = moat::policy::load(&config(dir.path(), ""), 1).unwrap();
    let store = MemoryStore::new();
    for i in 0..GRANTS {
        store
            .open_grant(Grant {
                id: GrantId::random(),
                user: Arc::from(format!("user{}", i % 400)),
                device: "ct".into(),
                service: "dicom".into(),
                binding: GrantBinding::Address(address(i)),
                opened_at: 1_000,
                until: 10_000,
                break_glass: false,
                target: String::new(),
            })
            .unwrap();
    }
    // (At most 32 open grants per user: 400 users hold 25 each.)
    assert_eq!(store.grants().len(), GRANTS as usize);
    let grants = Grants {
        lookup: &store,
        now: 5_000,
    };
    let service = &grant_policy.services[0];
    let network = &network_policy.services[0];
    let granted = address(4_321);
    let ungranted = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1));
    assert!(controls::authorize(service, granted, Asking::Connection(grants)).is_ok());
    assert!(controls::authorize(service, ungranted, Asking::Connection(grants)).is_err());

    c.bench_function("authorize_network_service", |b| {
        b.iter(|| {
            black_box(controls::authorize(
                network,
                black_box(granted),
                Asking::Connection(grants),
            ))
        })
    });
    c.bench_function("authorize_grant_10k_granted", |b| {
        b.iter(|| {
            black_box(controls::authorize(
                service,
                black_box(granted),
                Asking::Connection(grants),
            ))
        })
    });
    c.bench_function("authorize_grant_10k_no_grant", |b| {
        b.iter(|| {
            black_box(controls::authorize(
                service,
                black_box(ungranted),
                Asking::Connection(grants),
            ))
        })
    });
    // The whole accept-time step as the proxy runs it: the clock read too.
    let clock = moat::runtime::Clock::system();
    c.bench_function("authorize_grant_10k_with_clock", |b| {
        b.iter(|| {
            let grants = Grants {
                lookup: &store,
                now: clock.now().min(5_000),
            };
            black_box(controls::authorize(
                service,
                black_box(granted),
                Asking::Connection(grants),
            ))
        })
    });
}

criterion_group!(grants, benches);
criterion_main!(grants);
