use std::path::Path;

use super::*;

/// A folder with dev certificates and a config file built from `body`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::write_dev_set(&dir.path().join("certs")).unwrap();
        Fixture { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn compile(&self, body: &str) -> Result<Policy, ConfigErrors> {
        let path = self.path().join("moat.toml");
        std::fs::write(&path, body).unwrap();
        load(&path, 7)
    }
    fn errors(&self, body: &str) -> Vec<String> {
        let prefix = format!("{}/", self.path().display());
        self.compile(body)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string().replace(&prefix, ""))
            .collect()
    }
}

const TLS: &str = r#"
[device.service.tls]
certificates = [{ cert = "certs/server.pem", key = "certs/server.key" }]
"#;

/// Ends with a newline, as a complete file does.
fn service(extra: &str) -> String {
    let nl = if extra.ends_with('\n') { "" } else { "\n" };
    format!(
        "[[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"dicom\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:11112\"\nupstream = \"10.0.0.5:104\"\n{extra}{nl}"
    )
}

#[test]
fn a_valid_config_compiles_to_a_policy() {
    let f = Fixture::new();
    std::fs::write(
        f.path().join("radiology.txt"),
        "10.1.0.0/16\n2001:db8::/48 # v6 ward\n",
    )
    .unwrap();
    let body = format!(
        "[networks.radiology]\nfile = \"radiology.txt\"\ncidrs = [\"10.9.9.9\"]\n{}",
        service(&format!(
            "allow = [\"radiology\", \"192.168.0.0/24\"]\ndeny = [\"10.1.2.0/24\"]\n{TLS}"
        ))
    );
    let p = f.compile(&body).unwrap();
    assert_eq!(p.version, 7);
    assert_eq!(p.content_hash.len(), 64);
    assert_eq!(p.networks, vec![("radiology".to_string(), 3)]);
    let s = &p.services[0];
    assert_eq!(s.access.allow.len(), 4);
    assert!(s.access.check("10.1.3.4".parse().unwrap()).is_ok());
    assert!(s.access.check("10.1.2.4".parse().unwrap()).is_err());
    assert!(s.tls.is_some());
    // The main file, the network-set file, the cert and the key.
    assert_eq!(p.sources.len(), 4);
}

#[test]
fn content_hash_follows_referenced_files() {
    let f = Fixture::new();
    std::fs::write(f.path().join("r.txt"), "10.1.0.0/16\n").unwrap();
    let body = format!(
        "[networks.r]\nfile = \"r.txt\"\n{}",
        service(&format!("allow = [\"r\"]\n{TLS}"))
    );
    let a = f.compile(&body).unwrap().content_hash;
    std::fs::write(f.path().join("r.txt"), "10.2.0.0/16\n").unwrap();
    let b = f.compile(&body).unwrap().content_hash;
    assert_ne!(a, b);
}

#[test]
fn semantic_errors_are_all_reported_with_locations() {
    let f = Fixture::new();
    let body = format!(
        "{}\n[[device.service]]\nname = \"dicom\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:11112\"\nupstream = \"pacs\"\nallow = [\"radiolgy\"]\nplaintext = true\n",
        service(&format!("allow = [\"10.0.0.0/33\"]\n{TLS}"))
    );
    let errors = f.errors(&body);
    assert_eq!(
        errors,
        [
            r#"moat.toml:9:10: device[0].service[0].allow: "10.0.0.0/33" is not a valid CIDR"#,
            r#"moat.toml:15:8: device[0].service[1].name: duplicate service name "dicom" in device "ct""#,
            r#"moat.toml:17:10: device[0].service[1].listen: 127.0.0.1:11112 is already used by device[0].service[0].listen"#,
            r#"moat.toml:18:12: device[0].service[1].upstream: "pacs" is not host:port (e.g. "10.20.0.5:104")"#,
            r#"moat.toml:19:10: device[0].service[1].allow: unknown network set "radiolgy" (no [networks] are defined)"#,
        ]
    );
}

#[test]
fn unknown_network_set_gets_a_suggestion() {
    let f = Fixture::new();
    let body = format!(
        "[networks.radiology]\ncidrs = [\"10.1.0.0/16\"]\n{}",
        service("allow = [\"radiolgy\"]\nplaintext = true")
    );
    let errors = f.errors(&body);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].ends_with(r#"unknown network set "radiolgy"; did you mean "radiology"?"#),
        "{errors:?}"
    );
}

#[test]
fn deny_by_default_is_enforced_by_the_schema() {
    let f = Fixture::new();
    let missing = f.errors(&service("plaintext = true"));
    assert!(missing[0].contains("missing field `allow`"), "{missing:?}");
    let empty = f.errors(&service("allow = []\nplaintext = true"));
    assert!(
        empty[0].contains("an empty allow list admits no one"),
        "{empty:?}"
    );
}

#[test]
fn plaintext_must_be_asked_for() {
    let f = Fixture::new();
    let e = f.errors(&service("allow = [\"10.0.0.0/8\"]"));
    assert!(e[0].contains("no [tls] table"), "{e:?}");
}

#[test]
fn certificate_problems_point_at_the_file() {
    let f = Fixture::new();
    let missing = f.errors(&service(
        "allow = [\"10.0.0.0/8\"]\n[device.service.tls]\ncertificates = [{ cert = \"certs/nope.pem\", key = \"certs/server.key\" }]",
    ));
    assert!(
        missing[0]
            .starts_with("moat.toml:11:26: device[0].service[0].tls.certificates[0]: cannot read"),
        "{missing:?}"
    );

    let mismatch = f.errors(&service(
        "allow = [\"10.0.0.0/8\"]\n[device.service.tls]\ncertificates = [{ cert = \"certs/server.pem\", key = \"certs/client.key\" }]",
    ));
    assert!(
        mismatch[0].contains("client.key does not match the certificate in"),
        "{mismatch:?}"
    );
    assert!(
        mismatch[0].starts_with("moat.toml:11:52:"),
        "points at the key: {mismatch:?}"
    );
}

#[test]
fn expired_certificate_is_refused() {
    let f = Fixture::new();
    let ca = crate::certs::Authority::new("test CA").unwrap();
    let spec = crate::certs::LeafSpec {
        expired: true,
        ..crate::certs::LeafSpec::server(&["localhost"])
    };
    let (cert, key) = ca.issue(&spec).unwrap();
    std::fs::write(f.path().join("old.pem"), cert).unwrap();
    std::fs::write(f.path().join("old.key"), key).unwrap();
    let e = f.errors(&service(
        "allow = [\"10.0.0.0/8\"]\n[device.service.tls]\ncertificates = [{ cert = \"old.pem\", key = \"old.key\" }]",
    ));
    assert!(e[0].contains("certificate is not valid now"), "{e:?}");
}

#[test]
fn network_set_file_errors_name_that_file() {
    let f = Fixture::new();
    std::fs::write(f.path().join("r.txt"), "10.1.0.0/16\n10.0.0.300\n").unwrap();
    let body = format!(
        "[networks.r]\nfile = \"r.txt\"\n{}",
        service("allow = [\"r\"]\nplaintext = true")
    );
    assert_eq!(
        f.errors(&body),
        [r#"r.txt:2:1: "10.0.0.300" is not a valid IP address or CIDR"#]
    );
}

#[test]
fn client_cert_mode_needs_a_ca() {
    let f = Fixture::new();
    let e = f.errors(&service(&format!(
        "allow = [\"10.0.0.0/8\"]\n{TLS}client_cert = \"required\"\n"
    )));
    assert!(e[0].contains("needs `client_ca`"), "{e:?}");
}

#[test]
fn a_policy_without_devices_is_refused_unless_asked_for() {
    let f = Fixture::new();
    // What a file truncated before its first [[device]] compiles to.
    for body in ["[gateway]\naudit_log = \"-\"\n", "\n", "# moat\n"] {
        let errors = f.errors(body);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("moat.toml: no [[device]]: a policy must protect at least one device"),
            "{errors:?}"
        );
    }
    let p = f
        .compile("[gateway]\nallow_no_devices = true\n")
        .expect("an empty policy on purpose");
    assert!(p.services.is_empty());
}

fn http_service(listen: &str, tls: &str, http: &str) -> String {
    format!(
        "[[device]]\nid = \"pump\"\nname = \"Pump\"\n[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"{listen}\"\nupstream = \"10.0.0.5:80\"\nallow = [\"10.0.0.0/8\"]\n{tls}\n[device.service.http]\n{http}\n"
    )
}

#[test]
fn hosts_default_to_the_certificate_names_and_listen_address() {
    let f = Fixture::new();
    let p = f.compile(&http_service("10.9.0.1:443", TLS, "")).unwrap();
    let hosts = &p.services[0].http.as_ref().unwrap().hosts;
    assert_eq!(hosts.names, ["localhost"]);
    let ips: Vec<String> = hosts.ips.iter().map(|i| i.to_string()).collect();
    assert_eq!(ips, ["127.0.0.1", "::1", "10.9.0.1"]);
    assert!(!hosts.local_addr);

    let p = f
        .compile(&http_service("0.0.0.0:8080", "plaintext = true", ""))
        .unwrap();
    let hosts = &p.services[0].http.as_ref().unwrap().hosts;
    assert!(hosts.names.is_empty() && hosts.ips.is_empty() && hosts.local_addr);

    // An explicit list is the whole list.
    let p = f
        .compile(&http_service(
            "0.0.0.0:443",
            TLS,
            "hosts = [\"pump.ward3.example\", \"*.ward3.example\"]",
        ))
        .unwrap();
    let hosts = &p.services[0].http.as_ref().unwrap().hosts;
    assert_eq!(hosts.names, ["pump.ward3.example"]);
    assert_eq!(hosts.wildcards, [".ward3.example"]);
    assert!(hosts.ips.is_empty() && !hosts.local_addr);
}

#[test]
fn bad_hosts_are_reported_with_locations() {
    let f = Fixture::new();
    let errors = f.errors(&http_service(
        "0.0.0.0:443",
        TLS,
        "hosts = [\"pump.example\", \"evil.example:80\", \"*.*.x\"]",
    ));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("moat.toml:15:26:"), "{errors:?}");
    assert!(
        errors[0].contains("device[0].service[0].http.hosts"),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("\"evil.example:80\" is not a DNS name"),
        "{errors:?}"
    );
    assert!(errors[1].contains("\"*.*.x\""), "{errors:?}");
    let errors = f.errors(&http_service("0.0.0.0:443", TLS, "hosts = []"));
    assert!(
        errors[0].contains("an empty list admits no request"),
        "{errors:?}"
    );
}

#[test]
fn one_client_gets_a_share_of_the_connections_by_default() {
    assert_eq!(default_per_client(256), 64);
    assert_eq!(default_per_client(20), 8);
    assert_eq!(default_per_client(4), 4);
    assert_eq!(default_per_client(1), 1);
    let f = Fixture::new();
    let p = f
        .compile(&service("allow = [\"10.0.0.0/8\"]\nplaintext = true\n"))
        .unwrap();
    assert_eq!(p.services[0].limits.max_connections_per_client, 64);
    let p = f
        .compile(&service(
            "allow = [\"10.0.0.0/8\"]\nplaintext = true\nmax_connections = 100\n[device.service.limits]\nmax_connections_per_client = 100\n",
        ))
        .unwrap();
    assert_eq!(p.services[0].limits.max_connections_per_client, 100);
}

#[test]
fn body_rate_and_gap_defaults_and_errors() {
    let f = Fixture::new();
    let http = "[[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"10.0.0.5:80\"\nallow = [\"10.0.0.0/8\"]\nplaintext = true\n";
    let p = f.compile(http).unwrap();
    let h = p.services[0].http.as_ref().unwrap();
    assert_eq!(h.body_read_timeout, std::time::Duration::from_secs(10));
    assert_eq!(h.min_body_rate, 1024);
    let e = f.errors(&format!(
        "{http}[device.service.http]\nmin_body_rate = \"1 kilobyte\"\n"
    ));
    assert_eq!(
        e,
        [
            r#"moat.toml:12:17: device[0].service[0].http.min_body_rate: "1 kilobyte" is not a rate such as "1KiB/s", "500B/s" or "0" (no minimum)"#
        ]
    );
    let e = f.errors(&format!(
        "{http}[device.service.http]\nbody_read_timeout = \"0s\"\n"
    ));
    assert!(
        e[0].contains("http.body_read_timeout: must be more than 0"),
        "{e:?}"
    );
}

#[test]
fn listen_backlog_defaults_to_4096_and_must_be_sane() {
    let f = Fixture::new();
    let body = service("allow = [\"10.0.0.0/8\"]\nplaintext = true\n");
    assert_eq!(f.compile(&body).unwrap().listen_backlog, 4096);
    let set = |n: &str| format!("[gateway]\nlisten_backlog = {n}\n{body}");
    assert_eq!(f.compile(&set("100")).unwrap().listen_backlog, 100);
    for bad in ["0", "70000"] {
        let errors = f.errors(&set(bad));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("moat.toml:2") && errors[0].contains("gateway.listen_backlog"),
            "{errors:?}"
        );
        assert!(errors[0].contains("between 1 and 65535"), "{errors:?}");
    }
}
