use super::*;
use ipnet::Ipv4Net;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn set(entries: &[&str]) -> CidrSet {
    entries.iter().map(|e| net(e)).collect()
}

#[test]
fn lookup_returns_most_specific_entry() {
    let s = set(&["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"]);
    assert_eq!(s.lookup(ip("10.1.2.3")), Some(net("10.1.0.0/16")));
    assert_eq!(s.lookup(ip("10.9.2.3")), Some(net("10.0.0.0/8")));
    assert_eq!(s.lookup(ip("11.0.0.1")), None);
    assert_eq!(s.lookup(ip("2001:db8::1")), Some(net("2001:db8::/32")));
    assert_eq!(s.lookup(ip("2001:db9::1")), None);
}

#[test]
fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
    let s = set(&["127.0.0.2/32"]);
    assert!(s.contains(ip("::ffff:127.0.0.2")));
    assert!(!s.contains(ip("::ffff:127.0.0.3")));
}

#[test]
fn deny_wins_over_a_more_specific_allow() {
    let acl = AccessList {
        allow: set(&["10.1.2.3/32", "10.0.0.0/8"]),
        deny: set(&["10.1.0.0/16"]),
    };
    assert_eq!(
        acl.check(ip("10.1.2.3")),
        Err(SourceRefusal::Denylisted(net("10.1.0.0/16")))
    );
    assert_eq!(acl.check(ip("10.2.0.1")), Ok(net("10.0.0.0/8")));
    assert_eq!(
        acl.check(ip("192.168.0.1")),
        Err(SourceRefusal::NotAllowlisted)
    );
}

#[test]
fn empty_list_refuses_everyone() {
    let acl = AccessList::default();
    assert_eq!(
        acl.check(ip("127.0.0.1")),
        Err(SourceRefusal::NotAllowlisted)
    );
    assert_eq!(acl.check(ip("::1")), Err(SourceRefusal::NotAllowlisted));
}

#[test]
fn default_route_must_be_written_per_family() {
    let acl = AccessList {
        allow: set(&["0.0.0.0/0"]),
        deny: CidrSet::new(),
    };
    assert!(acl.check(ip("8.8.8.8")).is_ok());
    assert!(acl.check(ip("2001:db8::1")).is_err());
}

#[test]
fn nested_and_adjacent_prefixes_label_the_right_ranges() {
    let s = set(&[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.2.0.0/16",
        "0.0.0.0/32",
        "255.255.255.255/32",
    ]);
    assert_eq!(s.lookup(ip("10.1.2.3")), Some(net("10.1.2.0/24")));
    assert_eq!(s.lookup(ip("10.1.3.0")), Some(net("10.1.0.0/16")));
    assert_eq!(s.lookup(ip("10.1.255.255")), Some(net("10.1.0.0/16")));
    assert_eq!(s.lookup(ip("10.2.0.0")), Some(net("10.2.0.0/16")));
    assert_eq!(s.lookup(ip("10.3.0.0")), Some(net("10.0.0.0/8")));
    assert_eq!(s.lookup(ip("10.255.255.255")), Some(net("10.0.0.0/8")));
    assert_eq!(s.lookup(ip("11.0.0.0")), None);
    assert_eq!(s.lookup(ip("9.255.255.255")), None);
    assert_eq!(s.lookup(ip("0.0.0.0")), Some(net("0.0.0.0/32")));
    assert_eq!(s.lookup(ip("0.0.0.1")), None);
    assert_eq!(
        s.lookup(ip("255.255.255.255")),
        Some(net("255.255.255.255/32"))
    );
    assert_eq!(s.len(), 6);
}

#[test]
fn duplicates_and_full_range() {
    let s = set(&["0.0.0.0/0", "0.0.0.0/0", "::/0"]);
    assert_eq!(s.len(), 2);
    assert_eq!(s.lookup(ip("255.255.255.255")), Some(net("0.0.0.0/0")));
    assert_eq!(s.lookup(ip("ffff::1")), Some(net("::/0")));
}

/// The table agrees with a brute-force longest-prefix match on random data.
#[test]
fn agrees_with_brute_force() {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let nets: Vec<IpNet> = (0..2000)
        .map(|_| {
            let addr = std::net::Ipv4Addr::from(((next() as u32) & 0x0fff_ffff) | 0x0a00_0000);
            IpNet::V4(Ipv4Net::new(addr, 8 + (next() % 25) as u8).unwrap().trunc())
        })
        .collect();
    let s: CidrSet = nets.iter().copied().collect();
    for _ in 0..20_000 {
        let probe = IpAddr::V4(std::net::Ipv4Addr::from(
            ((next() as u32) & 0x0fff_ffff) | 0x0a00_0000,
        ));
        let expected = nets
            .iter()
            .filter(|n| n.contains(&probe))
            .max_by_key(|n| n.prefix_len())
            .copied();
        assert_eq!(s.lookup(probe), expected, "{probe}");
    }
}

#[test]
fn ipv4_mapped_entries_match_ipv4_clients() {
    let acl = AccessList {
        allow: set(&["10.20.0.0/16"]),
        deny: set(&["::ffff:10.20.40.17/128", "::ffff:10.20.50.0/120"]),
    };
    assert_eq!(
        acl.check(ip("10.20.40.17")),
        Err(SourceRefusal::Denylisted(net("10.20.40.17/32")))
    );
    assert_eq!(
        acl.check(ip("::ffff:10.20.50.9")),
        Err(SourceRefusal::Denylisted(net("10.20.50.0/24")))
    );
    assert!(acl.check(ip("10.20.40.18")).is_ok());
}
