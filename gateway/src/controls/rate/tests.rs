use std::net::IpAddr;
use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn policy(f: impl FnOnce(&mut LimitsPolicy)) -> LimitsPolicy {
    let mut p = LimitsPolicy::default();
    f(&mut p);
    p
}

#[test]
fn rates_parse_as_ops_write_them() {
    let r = RateSpec::parse("20/s").unwrap();
    assert_eq!(
        (r.count.get(), r.per, r.burst.get()),
        (20, Duration::from_secs(1), 20)
    );
    let r = RateSpec::parse("600/min burst 10").unwrap();
    assert_eq!(
        (r.count.get(), r.per, r.burst.get()),
        (600, Duration::from_secs(60), 10)
    );
    assert_eq!(r.quota().replenish_interval(), Duration::from_millis(100));
    for bad in [
        "",
        "20",
        "0/s",
        "20/fortnight",
        "20/s burst",
        "20/s burst 0",
        "20/s bust 4",
        "x/s",
    ] {
        assert!(RateSpec::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn per_client_connection_rate_on_a_fake_clock() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| p.connections_per_client = Some(RateSpec::parse("2/s").unwrap()));
    let l = Limiters::build(&p, None, clock.clone());
    let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
    assert!(l.check_connection(a).is_ok());
    assert!(l.check_connection(a).is_ok());
    let d = l.check_connection(a).unwrap_err();
    assert_eq!(d.reason, Reason::RateLimitedClient);
    // One token back every 500 ms: Retry-After rounds up to a whole second.
    assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
    // Another client is not affected.
    assert!(l.check_connection(b).is_ok());
    clock.advance(Duration::from_millis(500));
    assert!(l.check_connection(a).is_ok());
    assert!(l.check_connection(a).is_err());
}

#[test]
fn retry_after_follows_the_rate() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| p.requests_per_client = Some(RateSpec::parse("1/min").unwrap()));
    let l = Limiters::build(&p, None, clock.clone());
    assert!(l.check_request(ip("10.0.0.1"), None).is_ok());
    let d = l.check_request(ip("10.0.0.1"), None).unwrap_err();
    assert_eq!(d.retry_after, Some(Duration::from_secs(60)));
    clock.advance(Duration::from_secs(45));
    let d = l.check_request(ip("10.0.0.1"), None).unwrap_err();
    assert_eq!(d.retry_after, Some(Duration::from_secs(15)));
}

#[test]
fn device_rate_counts_all_clients_and_identities_are_separate() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| {
        p.device_rate = Some(RateSpec::parse("3/s").unwrap());
        p.requests_per_identity = Some(RateSpec::parse("1/s").unwrap());
    });
    let l = Limiters::build(&p, None, clock.clone());
    assert!(l
        .check_request(ip("10.0.0.1"), Some(&Principal::user("alice")))
        .is_ok());
    assert_eq!(
        l.check_request(ip("10.0.0.1"), Some(&Principal::user("alice")))
            .unwrap_err()
            .reason,
        Reason::RateLimitedIdentity
    );
    assert!(l
        .check_request(ip("10.0.0.2"), Some(&Principal::user("bob")))
        .is_ok());
    assert!(l.check_request(ip("10.0.0.3"), None).is_ok());
    assert_eq!(
        l.check_request(ip("10.0.0.4"), None).unwrap_err().reason,
        Reason::RateLimitedDevice
    );
}

#[test]
fn ipv6_clients_share_their_slash_64() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| p.connections_per_client = Some(RateSpec::parse("1/s").unwrap()));
    let l = Limiters::build(&p, None, clock);
    assert!(l.check_connection(ip("2001:db8:1:2::1")).is_ok());
    assert!(l.check_connection(ip("2001:db8:1:2::ffff")).is_err());
    assert!(l.check_connection(ip("2001:db8:1:3::1")).is_ok());
}

#[test]
fn an_unchanged_limit_keeps_its_buckets_across_a_reload() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| {
        p.connections_per_client = Some(RateSpec::parse("1/s").unwrap());
        p.device_rate = Some(RateSpec::parse("1/s").unwrap());
    });
    let old = Limiters::build(&p, None, clock.clone());
    assert!(old.check_connection(ip("10.0.0.1")).is_ok());
    assert!(old.check_device().is_ok());
    // Same connection limit, new device limit.
    let p2 = policy(|p| {
        p.connections_per_client = Some(RateSpec::parse("1/s").unwrap());
        p.device_rate = Some(RateSpec::parse("5/s").unwrap());
    });
    let new = Limiters::build(&p2, Some(&old), clock);
    assert!(
        new.check_connection(ip("10.0.0.1")).is_err(),
        "bucket kept: still empty"
    );
    assert!(
        new.check_device().is_ok(),
        "changed limit: applies at once, fresh"
    );
}

#[test]
fn a_million_distinct_clients_are_forgotten_once_idle() {
    let clock = FakeRelativeClock::default();
    let p = policy(|p| p.connections_per_client = Some(RateSpec::parse("10/s").unwrap()));
    let l = Limiters::build(&p, None, clock.clone());
    for i in 0..1_000_000u32 {
        let _ = l.check_connection(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
    }
    assert_eq!(l.tracked_keys(), 1_000_000);
    // Once their buckets are full again, they carry no information.
    clock.advance(Duration::from_secs(1));
    l.collect_garbage();
    assert_eq!(l.tracked_keys(), 0);
}

#[test]
fn the_same_quota_written_two_ways_is_the_same_limit() {
    assert_eq!(
        RateSpec::parse("20/s").unwrap(),
        RateSpec::parse("20/s burst 20").unwrap()
    );
    assert_eq!(
        RateSpec::parse("60/min").unwrap(),
        RateSpec::parse("1/s burst 60").unwrap()
    );
    assert_ne!(
        RateSpec::parse("20/s").unwrap(),
        RateSpec::parse("20/s burst 40").unwrap()
    );
}

#[tokio::test]
async fn resizing_the_in_flight_cap_keeps_requests_at_the_device_counted() {
    let clock = FakeRelativeClock::default();
    let p = |n| policy(|p| p.max_in_flight = Some(n));
    let l3 = Limiters::build(&p(3), None, clock.clone());
    let held: Vec<_> = (0..3)
        .map(|_| l3.in_flight().unwrap().try_acquire_owned().unwrap())
        .collect();
    // Shrink to 1 while 3 are at the device: nothing new until 2 are back.
    let l1 = Limiters::build(&p(1), Some(&l3), clock.clone());
    let sem = l1.in_flight().unwrap();
    assert!(sem.clone().try_acquire_owned().is_err());
    drop(held);
    // The surplus is taken back as permits return; one remains usable.
    tokio::task::yield_now().await;
    let one = sem.clone().try_acquire_owned().expect("one slot");
    assert!(sem.clone().try_acquire_owned().is_err());
    drop(one);
    // Grow to 4: four at once.
    let l4 = Limiters::build(&p(4), Some(&l1), clock);
    let sem = l4.in_flight().unwrap();
    let four: Vec<_> = (0..4)
        .map(|_| sem.clone().try_acquire_owned().unwrap())
        .collect();
    assert!(sem.clone().try_acquire_owned().is_err());
    drop(four);
}
