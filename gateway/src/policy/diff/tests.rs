use std::path::Path;

use super::*;

fn policy(body: &str) -> Policy {
    let cfg = crate::config::parse(Path::new("moat.toml"), body.to_string()).unwrap();
    crate::policy::compile(&cfg, 1).unwrap()
}

fn svc(device: &str, name: &str, port: u16, allow: &str, deny: &str) -> String {
    format!(
        "[[device]]\nid = \"{device}\"\nname = \"{device}\"\n[[device.service]]\nname = \"{name}\"\nprotocol = \"tcp\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"10.0.0.1:104\"\nallow = [{allow}]\ndeny = [{deny}]\nplaintext = true\n"
    )
}

#[test]
fn identical_policies_have_an_empty_diff() {
    let a = policy(&svc("ct", "dicom", 1, "\"10.0.0.0/8\"", ""));
    assert_eq!(PolicyDiff::between(&a, &a), PolicyDiff::default());
}

#[test]
fn access_entries_added_and_removed_are_listed() {
    let a = policy(&svc("ct", "dicom", 1, "\"10.0.0.0/8\", \"127.0.0.3\"", ""));
    let b = policy(&svc(
        "ct",
        "dicom",
        1,
        "\"10.0.0.0/8\", \"127.0.0.2\"",
        "\"10.9.0.0/16\"",
    ));
    let d = PolicyDiff::between(&a, &b);
    assert_eq!(d.services_changed, ["ct/dicom"]);
    assert_eq!(
        d.access,
        [AccessChange {
            service: "ct/dicom".into(),
            allow_added: vec!["127.0.0.2/32".into()],
            allow_removed: vec!["127.0.0.3/32".into()],
            deny_added: vec!["10.9.0.0/16".into()],
            deny_removed: vec![],
        }]
    );
}

#[test]
fn devices_and_services_added_and_removed() {
    let a = policy(&svc("ct", "dicom", 1, "\"10.0.0.0/8\"", ""));
    let b = policy(&svc("mri", "dicom", 2, "\"10.0.0.0/8\"", ""));
    let d = PolicyDiff::between(&a, &b);
    assert_eq!(d.devices_added, ["mri"]);
    assert_eq!(d.devices_removed, ["ct"]);
    assert_eq!(d.services_added, ["mri/dicom"]);
    assert_eq!(d.services_removed, ["ct/dicom"]);
    assert!(d.access.is_empty());
}
