use super::*;

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
