mod support;

// DICOM through the gateway with the real dcmtk tools: a TLS-capable
// workstation (`echoscu`, `storescu`) talks to a plaintext storage SCP
// (`storescp`) standing in for a legacy modality or PACS behind moat.

use serde_json::Value;
use support::dicom::{make_dataset, run_tool, start_storescp};
use support::{require, wait_for, Moat, Workspace};

fn closed_events(moat: &Moat, n: usize) -> Vec<Value> {
    wait_for(&format!("{n} connection_closed events"), || {
        let closed = moat.events("connection_closed");
        (closed.len() >= n).then_some(closed)
    })
}

#[test]
fn dicom_echo_and_store_over_tls() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);

    let body = format!(
        r#"[[device]]
id = "pacs"
name = "Storage SCP (dcmtk storescp)"

  [[device.service]]
  name = "dicom"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "{}"
  allow = ["127.0.0.1"]
{}"#,
        scp.addr,
        ws.tls_table()
    );
    let moat = Moat::start(&ws, &body, &["dicom"]);
    let port = moat.addr("dicom").port().to_string();
    // +tla: TLS without a client certificate (the service asks for none);
    // dcmtk still verifies the gateway's certificate, against the dev CA.
    let tls = ["+tla", "+cf", ws.certs.ca.to_str().unwrap()];

    // C-ECHO over TLS.
    let mut args = tls.to_vec();
    args.extend(["127.0.0.1", &port]);
    let (status, log) = run_tool(&ws, "echoscu-tls", "echoscu", &args);
    assert!(
        status.success(),
        "echoscu over TLS failed: {log}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    closed_events(&moat, 1);

    // C-STORE over TLS. `-f` because the input is a bare data set; `-xe`
    // proposes explicit VR little endian first, the data set's own syntax,
    // so storescu sends it without conversion.
    let dataset = make_dataset(&ws);
    let mut args = tls.to_vec();
    args.extend(["-f", "-xe", "127.0.0.1", &port, dataset.to_str().unwrap()]);
    let (status, log) = run_tool(&ws, "storescu-tls", "storescu", &args);
    assert!(
        status.success(),
        "storescu over TLS failed: {log}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    scp.assert_stored_only(&dataset);

    // One allowed and one closed event per association, both over TLS and
    // both carrying traffic in each direction.
    let closed = closed_events(&moat, 2);
    assert_eq!(
        closed.len(),
        2,
        "one connection per association: {closed:#?}"
    );
    let allowed = moat.events("connection_allowed");
    assert_eq!(allowed.len(), 2, "{allowed:#?}");
    for c in &closed {
        let a = allowed
            .iter()
            .find(|a| a["conn_id"] == c["conn_id"])
            .unwrap_or_else(|| panic!("no connection_allowed for {c}"));
        let version = a["tls"]["version"].as_str().unwrap_or_default();
        assert!(version.starts_with("TLSv1."), "not TLS: {a}");
        assert_eq!(a["upstream"], scp.addr.to_string().as_str(), "{a}");
        assert!(c["bytes_from_client"].as_u64().unwrap() > 0, "{c}");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 0, "{c}");
    }

    // A plaintext association to the TLS port: the A-ASSOCIATE-RQ is not a
    // TLS ClientHello, so moat refuses it during the handshake.
    let (status, log) = run_tool(&ws, "echoscu-plain", "echoscu", &["127.0.0.1", &port]);
    assert!(!status.success(), "plaintext echoscu succeeded: {log}");
    let denied = moat.wait_event("connection_denied", |e| {
        e["reason"] == "tls_handshake_failed"
    });
    assert!(denied.get("tls").is_none(), "{denied}");
    assert_eq!(
        moat.events("connection_allowed").len(),
        2,
        "plaintext was let through"
    );
}
