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

fn service(extra: &str) -> String {
    format!(
        "[[device]]\nid = \"ct\"\nname = \"CT\"\n[[device.service]]\nname = \"dicom\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:11112\"\nupstream = \"10.0.0.5:104\"\n{extra}"
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
