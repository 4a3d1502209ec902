//! Memory of per-client rate-limit state under a flood of distinct source
//! addresses: 1M clients, then after the idle sweep. Prints RSS (from
//! /proc/self/statm) so the figure can go into docs/benchmarks.md.
//!
//! cargo bench -p moat-benches --bench limiter_memory

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use moat::controls::rate::{Limiters, LimitsPolicy, RateSpec};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn main() {
    const CLIENTS: u32 = 1_000_000;
    let clock = FakeRelativeClock::default();
    let policy = LimitsPolicy {
        connections_per_client: Some(RateSpec::parse("10/s").unwrap()),
        ..Default::default()
    };
    let limiters = Limiters::build(&policy, None, clock.clone());
    let before = rss_kib();
    let start = Instant::now();
    for i in 0..CLIENTS {
        let _ = limiters.check_connection(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
    }
    let took = start.elapsed();
    let full = rss_kib();
    println!(
        "{CLIENTS} distinct clients: {} tracked, RSS +{} MiB ({} bytes/client), {:.0} ns/check",
        limiters.tracked_keys(),
        (full - before) / 1024,
        (full - before) * 1024 / u64::from(CLIENTS),
        took.as_nanos() as f64 / f64::from(CLIENTS)
    );
    clock.advance(Duration::from_secs(1));
    limiters.collect_garbage();
    let after = rss_kib();
    println!(
        "after one replenish period and a sweep: {} tracked, RSS +{} MiB over the start",
        limiters.tracked_keys(),
        after.saturating_sub(before) / 1024
    );
    assert_eq!(limiters.tracked_keys(), 0);
}
