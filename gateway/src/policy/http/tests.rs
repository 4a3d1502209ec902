use super::*;

fn g(p: &str) -> Glob {
    Glob::new(p).unwrap()
}

#[test]
fn star_matches_any_run_including_slashes() {
    assert!(g("/firmware/*").matches("/firmware/upload"));
    assert!(g("/firmware/*").matches("/firmware/a/b/c"));
    assert!(g("/firmware/*").matches("/firmware/"));
    assert!(!g("/firmware/*").matches("/firmware"));
    assert!(!g("/firmware/*").matches("/admin/firmware/x"));
    assert!(g("*.cgi").matches("/cgi-bin/status.cgi"));
    assert!(g("/a/*/c").matches("/a/b/x/c"));
    assert!(!g("/a/*/c").matches("/a/b/x/d"));
}

#[test]
fn without_star_the_match_is_exact() {
    assert!(g("/login").matches("/login"));
    assert!(!g("/login").matches("/login/"));
    assert!(!g("/login").matches("/logi"));
}

#[test]
fn patterns_are_kept_as_written_and_match_with_or_without_case() {
    assert!(g("/Admin/*").matches("/Admin/x"));
    assert!(!g("/Admin/*").matches("/admin/x"));
    assert!(g("/Admin/*").matches_ignoring_case("/admin/X"));
    assert!(g("*.CGI").matches_ignoring_case("/cgi-bin/a.cgi"));
    assert!(!g("/admin").matches_ignoring_case("/admin/"));
}

#[test]
fn patterns_must_be_absolute() {
    assert!(Glob::new("firmware/*").is_err());
    assert!(Glob::new("*.cgi").is_ok());
}

#[test]
fn patterns_spell_characters_as_normalised_paths_do() {
    for ok in [
        "/a%20b/*",
        "/api/$batch",
        "/a;v=1/*",
        "/pump:start",
        "/~user/*",
        "/x%7C",
    ] {
        assert!(Glob::new(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("/%66irmware/*", "write 'f' rather than %66"),
        ("/a%2fb", "write a percent-escape as %XX"),
        ("/a%2", "write a percent-escape as %XX"),
        ("/a%2F", "paths with %2F are refused"),
        ("/a%3B", "paths with %3B are refused"),
        ("/a b", "write ' ' as %20"),
        ("/a|b", "write '|' as %7C"),
        ("/a\\b", "paths with '\\\\' are refused"),
        ("/caf\u{e9}", "beyond ASCII"),
        ("/a%C3%A9", "paths with %C3 are refused"),
    ] {
        let e = Glob::new(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn rules_match_method_and_path() {
    let rule = RequestRule {
        action: RuleAction::Deny,
        methods: vec![Method::POST],
        path: g("/firmware/*"),
        text: String::new(),
    };
    assert!(rule.matches_method(&Method::POST) && rule.path.matches("/firmware/x"));
    assert!(!rule.matches_method(&Method::GET));
    let any = RequestRule {
        methods: vec![],
        ..rule
    };
    assert!(any.matches_method(&Method::GET));
}

fn hosts(entries: &[&str]) -> HostNames {
    HostNames::parse(entries).unwrap()
}

#[test]
fn host_entries_are_names_wildcards_or_addresses() {
    let h = hosts(&["Pump.Ward3.Example.", "*.ward4.example", "10.20.0.5", "::1"]);
    assert_eq!(h.names, ["pump.ward3.example"]);
    assert_eq!(h.wildcards, [".ward4.example"]);
    assert_eq!(
        h.ips,
        [
            "10.20.0.5".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert!(!h.local_addr);
    for bad in [
        "",
        "pump:80",
        "[::1]",
        "*",
        "*.",
        "a.*.example",
        "*x.example",
        "pump/x",
        "a..b",
        "127.1",
        "pump example",
        "évil.example",
        &"a".repeat(64),
    ] {
        assert!(HostNames::parse(&[bad]).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn wildcards_match_exactly_one_label() {
    let h = hosts(&["*.ward3.example"]);
    assert!(h.admits_name("pump.ward3.example"));
    assert!(!h.admits_name("ward3.example"));
    assert!(!h.admits_name("a.pump.ward3.example"));
    assert!(!h.admits_name("evilward3.example"));
    let h = hosts(&["pump.ward3.example"]);
    assert!(h.admits_name("pump.ward3.example"));
    assert!(!h.admits_name("x.pump.ward3.example"));
}

#[test]
fn the_local_address_counts_only_for_a_wildcard_listener() {
    let local: IpAddr = "10.0.0.7".parse().unwrap();
    let any = HostNames::default_for(&[], "0.0.0.0:443".parse().unwrap());
    assert!(any.admits_ip(local, Some(local)));
    // A dual-stack socket reports v4 clients' local address v4-mapped.
    assert!(any.admits_ip(local, Some("::ffff:10.0.0.7".parse().unwrap())));
    assert!(!any.admits_ip("10.0.0.8".parse().unwrap(), Some(local)));
    let specific = HostNames::default_for(&[], "10.0.0.7:443".parse().unwrap());
    assert!(specific.admits_ip(local, None));
    assert!(!specific.admits_ip(
        "10.0.0.8".parse().unwrap(),
        Some("10.0.0.8".parse().unwrap())
    ));
    let explicit = hosts(&["pump.example"]);
    assert!(!explicit.admits_ip(local, Some(local)));
}
