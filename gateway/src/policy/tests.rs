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
