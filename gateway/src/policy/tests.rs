use super::*;

#[test]
fn upstream_accepts_host_port_forms() {
    assert_eq!(
        Upstream::parse("10.0.0.5:104").unwrap().to_string(),
        "10.0.0.5:104"
    );
    assert_eq!(
        Upstream::parse("pacs.local:11112").unwrap().host,
        "pacs.local"
    );
    assert_eq!(Upstream::parse("[::1]:80").unwrap().host, "::1");
}

#[test]
fn upstream_refuses_what_is_not_host_port() {
    for bad in [
        "10.0.0.5",
        "10.0.0.5:0",
        ":80",
        "host:http",
        "a b:80",
        "10.0.0.5:70000",
    ] {
        assert!(Upstream::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn support_status_follows_the_end_of_support_date() {
    let device = |eos: Option<&str>| Device {
        id: "ct".into(),
        name: "CT".into(),
        manufacturer: String::new(),
        model: String::new(),
        location: String::new(),
        owner: String::new(),
        end_of_support: eos.map(str::to_string),
    };
    assert_eq!(super::days_from_date("1970-01-01"), Some(0));
    assert_eq!(super::days_from_date("2000-03-01"), Some(11_017));
    let day = |d: &str| super::days_from_date(d).unwrap() as u64 * 86_400;
    let now = day("2026-12-02");
    assert_eq!(device(None).support_status(now), "unknown");
    assert_eq!(
        device(Some("2026-12-02")).support_status(now),
        "past end of support"
    );
    assert_eq!(
        device(Some("2027-06-30")).support_status(now),
        "ending soon"
    );
    assert_eq!(
        device(Some("2028-12-01")).support_status(now),
        "ending soon"
    );
    assert_eq!(device(Some("2029-01-01")).support_status(now), "supported");
}
