use super::{parse_size, split_host_port};
use crate::policy::compile::load;

fn errors(extra: &str) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::certs::write_dev_set(&dir.path().join("certs")).unwrap();
    let body = format!(
        "[gateway]\nallow_no_devices = true\n\n[siem]\nca = {:?}\n{extra}",
        certs.ca
    );
    let path = dir.path().join("moat.toml");
    std::fs::write(&path, body).unwrap();
    let prefix = format!("{}/", dir.path().display());
    let errs = match load(&path, 1) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .iter()
            .map(|e| e.to_string().replace(&prefix, ""))
            .collect(),
    };
    (dir, errs)
}

#[test]
fn a_valid_siem_section_compiles_with_defaults() {
    let (dir, errs) = errors("address = \"127.0.0.1:6514\"\nspool_dir = \"spool\"\n");
    assert!(errs.is_empty(), "{errs:?}");
    let p = load(&dir.path().join("moat.toml"), 1).unwrap();
    let s = p.siem.unwrap();
    assert_eq!(s.address, "127.0.0.1:6514");
    assert_eq!(s.spool_max_bytes, 256 << 20);
    assert_eq!(s.app_name, "moat");
    assert_eq!(s.facility, 20);
    assert_eq!(s.spool_dir, dir.path().join("spool"));
}

#[test]
fn every_siem_error_is_reported_with_line_and_field() {
    let (_dir, errs) = errors(
        "address = \"collector\"\nspool_dir = \"spool\"\nspool_max_bytes = \"lots\"\n\
         facility = \"local9\"\napp_name = \"my app\"\nclient_cert = \"certs/client.pem\"\n",
    );
    let text = errs.join("\n");
    assert_eq!(errs.len(), 5, "{text}");
    for (line, field) in [
        (6, "siem.address"),
        (8, "siem.spool_max_bytes"),
        (9, "siem.facility"),
        (10, "siem.app_name"),
        (11, "siem.client_key"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.contains(&format!("moat.toml:{line}:")) && e.contains(field)),
            "no error at line {line} for {field}: {text}"
        );
    }
    assert!(
        text.contains("did you mean \"local0\"") || text.contains("local4"),
        "{text}"
    );
}

#[test]
fn a_client_key_others_may_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::certs::write_dev_set(&dir.path().join("certs")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs.client_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_d, errs) = {
        let body = format!(
            "[gateway]\nallow_no_devices = true\n[siem]\naddress = \"localhost:6514\"\nca = {:?}\nspool_dir = \"s\"\nclient_cert = {:?}\nclient_key = {:?}\n",
            certs.ca, certs.client_cert, certs.client_key
        );
        let path = dir.path().join("moat.toml");
        std::fs::write(&path, body).unwrap();
        let e: Vec<String> = load(&path, 1)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        ((), e)
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("siem.client_key") && errs[0].contains("chmod 600"),
        "{errs:?}"
    );
}

#[test]
fn sizes_and_addresses_parse() {
    assert_eq!(parse_size("256MiB"), Ok(256 << 20));
    assert_eq!(parse_size("64 KiB"), Ok(65536));
    assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert!(parse_size("MiB").is_err());
    assert!(parse_size("10 parsecs").is_err());
    assert_eq!(
        split_host_port("siem.example.org:6514"),
        Ok("siem.example.org")
    );
    assert_eq!(split_host_port("[::1]:6514"), Ok("::1"));
    assert!(split_host_port("::1:6514").is_err());
    assert!(split_host_port("host:0").is_err());
    assert!(split_host_port(":6514").is_err());
}
