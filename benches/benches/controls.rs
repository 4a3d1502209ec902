//! The control chain for one connection and for one HTTP request, the
//! rate-limit checks, and a policy compile with 100k allowlist entries.

use std::hint::black_box;
use std::io::Write;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use moat::controls::{self, request, ServiceState};

/// A config with one HTTP service whose allowlist file holds `n` entries.
fn write_config(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    let mut list = std::fs::File::create(dir.join("big.txt")).unwrap();
    for i in 0..n {
        // Distinct /32s spread over 10.0.0.0/8 and 172.16.0.0/12.
        let base: u32 = if i % 2 == 0 { 0x0a00_0000 } else { 0xac10_0000 };
        writeln!(list, "{}", std::net::Ipv4Addr::from(base + i * 7)).unwrap();
    }
    let config = r#"
[admin]
enabled = false
[networks.big]
file = "big.txt"
[[device]]
id = "pump"
name = "pump"
[[device.service]]
name = "ui"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:8080"
allow = ["big", "127.0.0.0/8"]
deny = ["10.9.0.0/16"]
plaintext = true
[device.service.limits]
connections_per_client = "1000000000/s"
requests_per_client = "1000000000/s"
device_rate = "1000000000/s"
[device.service.http]
[[device.service.http.rule]]
action = "deny"
methods = ["POST", "PUT"]
path = "/firmware/*"
[[device.service.http.rule]]
action = "deny"
path = "/cgi-bin/*"
"#;
    let path = dir.join("moat.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 100_000);

    c.bench_function("policy_compile_100k_allow_entries", |b| {
        b.iter(|| black_box(moat::policy::load(&path, 1).unwrap()))
    });

    let policy = moat::policy::load(&path, 1).unwrap();
    let service = policy.services[0].clone();
    let state = ServiceState::new();
    let client: IpAddr = "172.16.0.7".parse().unwrap();
    // A network service: the grant lookup is never consulted.
    let no_grants = moat::auth::grants::GrantIndex::default();
    let grants = controls::Grants {
        lookup: &no_grants,
        now: 0,
    };
    c.bench_function("connection_chain_admit", |b| {
        b.iter(|| {
            let admitted =
                controls::admit_connection(&service, &state, black_box(client), grants).unwrap();
            black_box(admitted.matched);
        })
    });

    let http = service.http.as_ref().unwrap();
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "pump.icu.example"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=0123456789abcdef0123456789abcdef"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let uri = http::Uri::from_static("/pumps/12/status");
    c.bench_function("request_chain_normalise_and_check", |b| {
        b.iter(|| {
            let path = request::normalize_path(black_box(uri.path())).unwrap();
            request::check_request(http, &Method::GET, &path, &uri, black_box(&headers)).unwrap();
            black_box(path);
        })
    });

    // The rules alone, on a plain path (the common case).
    c.bench_function("request_rules_plain_path", |b| {
        b.iter(|| request::check_rules(http, &Method::GET, black_box("/pumps/12/status")).unwrap())
    });

    // Limits that never trigger, so every check is a full GCRA update:
    // one client over and over, and 10k clients in turn (the keyed map's
    // lookup with a realistic spread of keys).
    let limiters = state.limiters(&service.limits);
    c.bench_function("rate_check_request_one_client", |b| {
        b.iter(|| limiters.check_request(black_box(client), None).unwrap())
    });
    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let mut next = clients.iter().cycle();
    c.bench_function("rate_check_request_10k_clients", |b| {
        b.iter(|| {
            let ip = *next.next().unwrap();
            limiters.check_request(black_box(ip), None).unwrap()
        })
    });
    c.bench_function("rate_check_connection_10k_clients", |b| {
        b.iter(|| {
            let ip = *next.next().unwrap();
            limiters.check_connection(black_box(ip)).unwrap()
        })
    });
}

criterion_group!(controls_benches, benches);
criterion_main!(controls_benches);
