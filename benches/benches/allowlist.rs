//! Allowlist lookups at 10, 1k and 100k CIDRs (IPv4 and IPv6), and the
//! connection-level control chain. Target: ≤ 100 ns per lookup at 100k.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use moat::policy::{AccessList, CidrSet};

/// A deterministic pseudo-random sequence (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn v4_set(n: usize, rng: &mut Rng) -> CidrSet {
    (0..n)
        .map(|_| {
            let len = 16 + (rng.next() % 17) as u8;
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(rng.next() as u32), len)
                    .unwrap()
                    .trunc(),
            )
        })
        .collect()
}

fn v6_set(n: usize, rng: &mut Rng) -> CidrSet {
    (0..n)
        .map(|_| {
            let len = 32 + (rng.next() % 97) as u8;
            let addr = ((rng.next() as u128) << 64) | rng.next() as u128;
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc())
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowlist_lookup");
    for n in [10usize, 1_000, 100_000] {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let v4 = v4_set(n, &mut rng);
        let v6 = v6_set(n, &mut rng);
        let probes4: Vec<IpAddr> = (0..1024)
            .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
            .collect();
        let probes6: Vec<IpAddr> = (0..1024)
            .map(|_| {
                IpAddr::V6(Ipv6Addr::from(
                    ((rng.next() as u128) << 64) | rng.next() as u128,
                ))
            })
            .collect();
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("v4", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(v4.lookup(black_box(probes4[i])))
            })
        });
        group.bench_with_input(BenchmarkId::new("v6", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(v6.lookup(black_box(probes6[i])))
            })
        });
    }
    group.finish();

    let mut rng = Rng(42);
    let acl = AccessList {
        allow: v4_set(100_000, &mut rng),
        deny: v4_set(1_000, &mut rng),
    };
    let probe: IpAddr = "10.1.2.3".parse().unwrap();
    c.bench_function("access_list_check_100k_allow_1k_deny", |b| {
        b.iter(|| black_box(acl.check(black_box(probe))))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
