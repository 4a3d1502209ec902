//! The DICOM guard end to end: dcmtk tools through moat to dcmtk peers.
//!
//! Associations the policy expects reach the device and carry their data
//! unchanged; the others are answered by moat with an A-ASSOCIATE-RJ before
//! the device sees a byte; malformed PDUs from raw sockets are aborted and
//! recorded, and moat keeps serving.

mod support;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::dicom::*;
use support::{closed_port, echo_upstream, require, wait_for, wait_for_or, Moat, Workspace};

const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";

// ---------------------------------------------------------------------------
// Helpers

/// One device `pacs` with a DICOM-guarded service `dicom` in front of
/// `upstream`: the device's AE title STORESCP, calling AE titles STORESCU
/// and ECHOSCU, and `extra` lines in the `[device.service.dicom]` table.
/// `tls`: a `[device.service.tls]` table, or plaintext.
fn guarded(upstream: SocketAddr, extra: &str, tls: Option<&str>) -> String {
    let transport = match tls {
        Some(table) => table.to_string(),
        None => "  plaintext = true\n".to_string(),
    };
    format!(
        r#"[[device]]
id = "pacs"
name = "DICOM device behind the guard"

  [[device.service]]
  name = "dicom"
  protocol = "tcp"
  listen = "127.0.0.1:0"
  upstream = "{upstream}"
  allow = ["127.0.0.1"]
  guard = "dicom"
{transport}
    [device.service.dicom]
    ae_title = "STORESCP"
    calling_ae_titles = ["STORESCU", "ECHOSCU"]
{extra}
"#
    )
}

fn port(moat: &Moat) -> String {
    moat.addr("dicom").port().to_string()
}

/// `echoscu -aet <calling> -aec <called>` to the guarded service.
fn echoscu(
    ws: &Workspace,
    moat: &Moat,
    log: &str,
    calling: &str,
    called: &str,
) -> (ExitStatus, String) {
    let port = port(moat);
    run_tool(
        ws,
        log,
        "echoscu",
        &["-aet", calling, "-aec", called, "127.0.0.1", &port],
    )
}

/// An allowed C-ECHO succeeds: moat is up and serving.
fn assert_echo_works(ws: &Workspace, moat: &Moat, log: &str) {
    let (status, out) = echoscu(ws, moat, log, "ECHOSCU", "STORESCP");
    assert!(
        status.success(),
        "echoscu ({log}) failed: {out}\nmoat: {}",
        moat.stderr()
    );
}

/// The guard's own events so far (associations, violations) and denials.
fn guard_events(moat: &Moat) -> String {
    let lines: Vec<Value> = moat
        .audit_lines()
        .into_iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("dicom_association" | "guard_violation" | "connection_denied")
            )
        })
        .collect();
    format!("{lines:#?}\nmoat: {}", moat.stderr())
}

/// Waits for the `dicom_association` event that satisfies `pred`.
fn association(moat: &Moat, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for_or(
        &format!("dicom_association ({what})"),
        || {
            moat.events("dicom_association")
                .into_iter()
                .find(|e| pred(e))
        },
        || guard_events(moat),
    )
}

/// The `connection_denied` event of the same connection as `event`.
fn denial_of(moat: &Moat, event: &Value) -> Value {
    wait_for_or(
        &format!("connection_denied of conn {}", event["conn_id"]),
        || {
            moat.events("connection_denied")
                .into_iter()
                .find(|e| e["conn_id"] == event["conn_id"])
        },
        || guard_events(moat),
    )
}

/// The abstract syntaxes of a context list (`contexts_asked`,
/// `contexts_accepted`), checking each entry has an id.
fn syntaxes(contexts: &Value) -> Vec<String> {
    contexts
        .as_array()
        .unwrap_or_else(|| panic!("not a list of contexts: {contexts}"))
        .iter()
        .map(|c| {
            assert!(c["id"].as_u64().is_some_and(|id| id % 2 == 1), "{c}");
            c["abstract_syntax"]
                .as_str()
                .unwrap_or_else(|| panic!("no abstract_syntax in {c}"))
                .to_string()
        })
        .collect()
}

/// A rejected association: moat's own refusal with `reason`, nothing
/// accepted, and a `connection_denied` with the same reason.
fn assert_rejected(moat: &Moat, event: &Value, reason: &str) {
    assert_eq!(event["outcome"], "rejected", "{event:#}");
    assert_eq!(event["reason"], reason, "{event:#}");
    assert_eq!(event["device"], "pacs", "{event:#}");
    assert_eq!(event["service"], "dicom", "{event:#}");
    assert!(!syntaxes(&event["contexts_asked"]).is_empty(), "{event:#}");
    assert!(
        syntaxes(&event["contexts_accepted"]).is_empty(),
        "{event:#}"
    );
    let denied = denial_of(moat, event);
    assert_eq!(denied["reason"], reason, "{denied:#}");
}

/// A permanent rejection by the service user, reason 1 (PS3.8 Table 9-21,
/// "no-reason-given"), which dcmtk 3.6.7 prints as "Reason: No Reason".
fn assert_no_reason_given(out: &str, tool: &str) {
    assert!(
        out.contains("Result: Rejected Permanent, Source: Service User"),
        "{tool}: not rejected permanent by the service user: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_end().ends_with("Reason: No Reason")),
        "{tool}: not rejected with no reason given: {out}"
    );
}

/// The value of one counter of the admin listener's `/metrics`: the sum of
/// the samples of `family` carrying every label in `labels` (0 if none).
fn metric(moat: &Moat, family: &str, labels: &[(&str, &str)]) -> u64 {
    let text = moat.admin_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sends an A-ASSOCIATE-RQ by hand (one context) and reads moat's answer.
fn raw_answer(moat: &Moat, calling: &str, called: &str, syntax: &str) -> Answer {
    let mut s = TcpStream::connect(moat.addr("dicom")).unwrap();
    s.write_all(&associate_rq(calling, called, &[(1, syntax)], 16384))
        .unwrap();
    read_pdu(&mut s)
}

/// Waits until the guard's counter `family{outcome}` of pacs/dicom reads
/// `want`.
fn assert_counter(moat: &Moat, family: &str, outcome: &str, want: u64) {
    let labels = [
        ("device", "pacs"),
        ("service", "dicom"),
        ("guard", "dicom"),
        ("outcome", outcome),
    ];
    wait_for_or(
        &format!("{family}{{outcome=\"{outcome}\"}} = {want}"),
        || (metric(moat, family, &labels) == want).then_some(()),
        || {
            moat.admin_get("/metrics")
                .lines()
                .filter(|l| l.starts_with("moat_guard_"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

/// A storescu of the test image (`-f`: a bare data set; `-xe`: explicit VR
/// little endian first, its own syntax, so it is sent unconverted).
fn storescu(
    ws: &Workspace,
    log: &str,
    to: &str,
    extra: &[&str],
    dataset: &std::path::Path,
) -> (ExitStatus, String) {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([
        "-aet",
        "STORESCU",
        "-aec",
        "STORESCP",
        "-f",
        "-xe",
        "127.0.0.1",
        to,
        dataset.to_str().unwrap(),
    ]);
    run_tool(ws, log, "storescu", &args)
}

// ---------------------------------------------------------------------------
// Allowed associations

#[test]
fn allowed_echo_and_store_reach_the_device_unchanged() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);
    let moat = Moat::start(&ws, &guarded(scp.addr, "", None), &["dicom"]);

    let (status, out) = echoscu(&ws, &moat, "echoscu", "ECHOSCU", "STORESCP");
    assert!(
        status.success(),
        "echoscu failed: {out}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    let echo = association(&moat, "the echo", |e| e["calling_ae"] == "ECHOSCU");
    assert_eq!(echo["outcome"], "accepted", "{echo:#}");
    assert_eq!(echo["called_ae"], "STORESCP", "{echo:#}");
    assert!(echo.get("reason").is_none(), "{echo:#}");
    assert_eq!(
        syntaxes(&echo["contexts_asked"]),
        [VERIFICATION],
        "{echo:#}"
    );
    assert_eq!(
        syntaxes(&echo["contexts_accepted"]),
        [VERIFICATION],
        "{echo:#}"
    );

    let dataset = make_dataset(&ws);
    let (status, out) = storescu(&ws, "storescu", &port(&moat), &[], &dataset);
    assert!(
        status.success(),
        "storescu failed: {out}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    scp.assert_stored_only(&dataset);

    let store = association(&moat, "the store", |e| e["calling_ae"] == "STORESCU");
    assert_eq!(store["outcome"], "accepted", "{store:#}");
    assert_eq!(store["called_ae"], "STORESCP", "{store:#}");
    let asked = syntaxes(&store["contexts_asked"]);
    assert!(
        asked.iter().any(|s| s == SECONDARY_CAPTURE),
        "SC not asked: {store:#}"
    );
    let accepted = store["contexts_accepted"].as_array().unwrap();
    let sc = accepted
        .iter()
        .find(|c| c["abstract_syntax"] == SECONDARY_CAPTURE)
        .unwrap_or_else(|| panic!("SC not accepted: {store:#}"));
    assert_eq!(sc["transfer_syntax"], EXPLICIT_LE, "{store:#}");

    // One event per association, and the counters agree.
    assert_eq!(moat.events("dicom_association").len(), 2);
    assert_counter(&moat, "moat_guard_decisions_total", "accepted", 2);
    assert_counter(&moat, "moat_guard_decisions_total", "rejected", 0);
    assert!(moat.events("guard_violation").is_empty());
}

#[test]
fn store_over_tls_reaches_the_device_unchanged() {
    for tool in ["storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);
    let tls = ws.tls_table();
    let moat = Moat::start(&ws, &guarded(scp.addr, "", Some(&tls)), &["dicom"]);
    let dataset = make_dataset(&ws);
    let ca = ws.certs.ca.to_str().unwrap().to_string();
    let (status, out) = storescu(
        &ws,
        "storescu-tls",
        &port(&moat),
        &["+tla", "+cf", &ca],
        &dataset,
    );
    assert!(
        status.success(),
        "storescu over TLS failed: {out}\nmoat: {}\nstorescp: {}",
        moat.stderr(),
        scp.log()
    );
    scp.assert_stored_only(&dataset);
    let store = association(&moat, "the store", |e| e["calling_ae"] == "STORESCU");
    assert_eq!(store["outcome"], "accepted", "{store:#}");
    let allowed = moat.wait_event("connection_allowed", |e| e["conn_id"] == store["conn_id"]);
    assert!(
        allowed["tls"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "not TLS: {allowed}"
    );
}

// ---------------------------------------------------------------------------
// Refusals: A-ASSOCIATE-RJ from moat, the device never contacted

#[test]
fn refused_associations_are_rejected_before_the_device() {
    for tool in ["echoscu", "findscu", "movescu"] {
        require(tool);
    }
    let ws = Workspace::new();
    // A device that would echo an A-ASSOCIATE-RQ back (never a valid
    // answer) and counts the connections it gets: it must get none.
    let device = echo_upstream();
    let moat = Moat::start(&ws, &guarded(device.addr, "", None), &["dicom"]);
    let port = port(&moat);

    // Wrong called AE title.
    let (status, out) = echoscu(&ws, &moat, "echoscu-called", "ECHOSCU", "OTHER");
    assert!(!status.success(), "echoscu to OTHER succeeded: {out}");
    for text in [
        "Rejected Permanent",
        "Service User",
        "Called AE Title Not Recognized",
    ] {
        assert!(out.contains(text), "echoscu -aec OTHER: no {text:?}: {out}");
    }
    let e = association(&moat, "called OTHER", |e| e["called_ae"] == "OTHER");
    assert_eq!(e["calling_ae"], "ECHOSCU", "{e:#}");
    assert_rejected(&moat, &e, "dicom_called_ae");

    // Calling AE title not listed.
    let (status, out) = echoscu(&ws, &moat, "echoscu-calling", "EVIL", "STORESCP");
    assert!(!status.success(), "echoscu as EVIL succeeded: {out}");
    for text in [
        "Rejected Permanent",
        "Service User",
        "Calling AE Title Not Recognized",
    ] {
        assert!(out.contains(text), "echoscu -aet EVIL: no {text:?}: {out}");
    }
    let e = association(&moat, "calling EVIL", |e| e["calling_ae"] == "EVIL");
    assert_eq!(e["called_ae"], "STORESCP", "{e:#}");
    assert_rejected(&moat, &e, "dicom_calling_ae");

    // Study Root C-FIND and C-MOVE: not in the default abstract syntaxes.
    let (status, out) = run_tool(
        &ws,
        "findscu",
        "findscu",
        &[
            "-S",
            "-aet",
            "STORESCU",
            "-aec",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "127.0.0.1",
            &port,
        ],
    );
    assert!(!status.success(), "findscu -S succeeded: {out}");
    assert_no_reason_given(&out, "findscu -S");
    let e = association(&moat, "the find", |e| {
        e.to_string().contains(STUDY_ROOT_FIND)
    });
    assert_rejected(&moat, &e, "dicom_abstract_syntax");

    let (status, out) = run_tool(
        &ws,
        "movescu",
        "movescu",
        &[
            "-S",
            "-aet",
            "STORESCU",
            "-aec",
            "STORESCP",
            "-aem",
            "STORESCU",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={SC_STUDY_UID}"),
            "127.0.0.1",
            &port,
        ],
    );
    assert!(!status.success(), "movescu -S succeeded: {out}");
    assert_no_reason_given(&out, "movescu -S");
    let e = association(&moat, "the move", |e| {
        e.to_string().contains(STUDY_ROOT_MOVE)
    });
    assert_rejected(&moat, &e, "dicom_abstract_syntax");

    // The same refusals by hand, to see the exact A-ASSOCIATE-RJ: result 1
    // (permanent), source 1 (service user), reason 7 (called AE title not
    // recognised), 3 (calling AE title not recognised), 1 (no reason given).
    for (calling, called, syntax, reason) in [
        ("ECHOSCU", "OTHER", VERIFICATION, 7),
        ("EVIL", "STORESCP", VERIFICATION, 3),
        ("STORESCU", "STORESCP", STUDY_ROOT_FIND, 1),
    ] {
        assert_eq!(
            raw_answer(&moat, calling, called, syntax),
            Answer::Pdu(A_ASSOCIATE_RJ, vec![0, 1, 1, reason]),
            "{calling} -> {called} ({syntax})"
        );
    }
    wait_for_or(
        "7 dicom_association events",
        || (moat.events("dicom_association").len() == 7).then_some(()),
        || guard_events(&moat),
    );

    assert_eq!(
        device.accepted.load(Ordering::SeqCst),
        0,
        "a refused association reached the device"
    );
    // Refused before the device is contacted, so never admitted either.
    assert!(
        moat.events("connection_allowed").is_empty(),
        "{:#?}",
        moat.events("connection_allowed")
    );
    assert_counter(&moat, "moat_guard_decisions_total", "rejected", 7);
    assert_counter(&moat, "moat_guard_decisions_total", "accepted", 0);
    assert_counter(&moat, "moat_guard_refusals_total", "dicom_called_ae", 2);
    assert_counter(&moat, "moat_guard_refusals_total", "dicom_calling_ae", 2);
    assert_counter(
        &moat,
        "moat_guard_refusals_total",
        "dicom_abstract_syntax",
        3,
    );
}

#[test]
fn drop_mode_refuses_only_the_refused_contexts() {
    for tool in ["echoscu", "storescu", "storescp", "dump2dcm"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);
    let extra = format!(
        "    abstract_syntaxes = [\"verification\", \"{CT_IMAGE}\"]\n    refused_contexts = \"drop\"\n"
    );
    let moat = Moat::start(&ws, &guarded(scp.addr, &extra, None), &["dicom"]);

    // Echo still works in this mode.
    assert_echo_works(&ws, &moat, "echoscu-drop");
    let echo = association(&moat, "the echo", |e| e["calling_ae"] == "ECHOSCU");
    assert_eq!(echo["outcome"], "accepted", "{echo:#}");

    // storescu proposes its usual list of storage SOP classes: only CT is
    // left, so the Secondary Capture image has no presentation context.
    let dataset = make_dataset(&ws);
    let (status, out) = storescu(&ws, "storescu-drop", &port(&moat), &[], &dataset);
    assert!(
        !status.success(),
        "storescu of SC succeeded with only CT allowed: {out}"
    );
    let lower = out.to_lowercase();
    assert!(
        lower.contains("no presentation context") || lower.contains("not accepted"),
        "storescu does not say the context was refused: {out}"
    );
    let store = association(&moat, "the store", |e| e["calling_ae"] == "STORESCU");
    assert_eq!(store["outcome"], "accepted", "{store:#}");
    let asked = syntaxes(&store["contexts_asked"]);
    assert!(asked.iter().any(|s| s == SECONDARY_CAPTURE), "{store:#}");
    assert!(asked.iter().any(|s| s == CT_IMAGE), "{store:#}");
    let accepted = syntaxes(&store["contexts_accepted"]);
    assert!(!accepted.is_empty(), "{store:#}");
    assert!(
        accepted.iter().all(|s| s == CT_IMAGE),
        "a context other than CT was accepted: {store:#}"
    );
    assert!(
        scp.received().is_empty(),
        "the device stored {:?}",
        scp.received()
    );

    // Only SC proposed (-R): nothing left, so the association is refused.
    let (status, out) = storescu(&ws, "storescu-drop-r", &port(&moat), &["-R"], &dataset);
    assert!(!status.success(), "storescu -R of SC succeeded: {out}");
    let e = association(&moat, "the SC-only store", |e| {
        e["calling_ae"] == "STORESCU" && e["outcome"] != "accepted"
    });
    assert_rejected(&moat, &e, "dicom_abstract_syntax");
    assert!(scp.received().is_empty());
}

#[test]
fn unreachable_device_is_rejected_transient() {
    require("echoscu");
    let ws = Workspace::new();
    let moat = Moat::start(&ws, &guarded(closed_port(), "", None), &["dicom"]);
    let (status, out) = echoscu(&ws, &moat, "echoscu-unreachable", "ECHOSCU", "STORESCP");
    assert!(
        !status.success(),
        "echoscu succeeded without a device: {out}"
    );
    for text in ["Rejected Transient", "Temporary Congestion"] {
        assert!(
            out.contains(text),
            "echoscu to an unreachable device: no {text:?}: {out}"
        );
    }
    // By hand: result 2 (transient), source 3 (service provider,
    // presentation), reason 1 (temporary congestion).
    assert_eq!(
        raw_answer(&moat, "ECHOSCU", "STORESCP", VERIFICATION),
        Answer::Pdu(A_ASSOCIATE_RJ, vec![0, 2, 3, 1])
    );
    let denied = moat.wait_event("connection_denied", |e| {
        e["reason"] == "upstream_unreachable"
    });
    assert_eq!(denied["service"], "dicom", "{denied}");
    // One dicom_association per association, this one included: refused
    // (by moat, on the device's behalf) with the connection's reason.
    let e = association(&moat, "the association to no device", |e| {
        e["conn_id"] == denied["conn_id"]
    });
    assert_eq!(e["outcome"], "rejected", "{e:#}");
    assert_eq!(e["reason"], denied["reason"], "{e:#}");
    assert_eq!(e["calling_ae"], "ECHOSCU", "{e:#}");
    assert_eq!(syntaxes(&e["contexts_asked"]), [VERIFICATION], "{e:#}");
}

// ---------------------------------------------------------------------------
// Query/retrieve in front of dcmqrscp

/// dcmqrscp as the device (AE STORESCP, storing in `qr-db/`), with
/// MOVEDEST, a storescp, as its only move destination.
fn start_dcmqrscp(ws: &Workspace, move_dest: SocketAddr) -> Scp {
    let db = ws.path("qr-db");
    std::fs::create_dir_all(&db).unwrap();
    let cfg = ws.path("dcmqrscp.cfg");
    start_scp(ws, "dcmqrscp", "dcmqrscp", |port| {
        std::fs::write(
            &cfg,
            format!(
                "NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n\n\
                 HostTable BEGIN\nmovedest = (MOVEDEST, localhost, {})\nHostTable END\n\n\
                 VendorTable BEGIN\nVendorTable END\n\n\
                 AETable BEGIN\nSTORESCP {} RW (9, 1024mb) ANY\nAETable END\n",
                move_dest.port(),
                db.display()
            ),
        )
        .unwrap();
        // Forking (the default): dcmqrscp 3.6.7 crashes after its first
        // association in single-process mode (-s). A forked child lives
        // only as long as its association.
        vec!["-c".into(), cfg.to_str().unwrap().into()]
    })
}

#[test]
fn find_and_move_reach_dcmqrscp_when_allowed() {
    for tool in [
        "dcmqrscp", "storescu", "findscu", "movescu", "storescp", "dump2dcm",
    ] {
        require(tool);
    }
    let ws = Workspace::new();
    let dest = start_storescp_named(&ws, "moved", &["-aet", "MOVEDEST"]);
    let qr = start_dcmqrscp(&ws, dest.addr);
    let extra = "    abstract_syntaxes = [\"verification\", \"storage\", \"find\", \"move\"]\n";
    let moat = Moat::start(&ws, &guarded(qr.addr, extra, None), &["dicom"]);
    let port = port(&moat);

    let dataset = make_dataset(&ws);
    let (status, out) = storescu(&ws, "storescu-qr", &port, &[], &dataset);
    assert!(
        status.success(),
        "storescu into dcmqrscp failed: {out}\nmoat: {}\ndcmqrscp: {}",
        moat.stderr(),
        qr.log()
    );

    let (status, out) = run_tool(
        &ws,
        "findscu-qr",
        "findscu",
        &[
            "-v",
            "-S",
            "-aet",
            "STORESCU",
            "-aec",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "StudyInstanceUID",
            "-k",
            "PatientID",
            "127.0.0.1",
            &port,
        ],
    );
    assert!(
        status.success(),
        "findscu failed: {out}\nmoat: {}\ndcmqrscp: {}",
        moat.stderr(),
        qr.log()
    );
    assert!(
        out.contains(SC_STUDY_UID) && out.contains("MOAT-IT-1"),
        "findscu did not find the stored study: {out}"
    );
    let find = association(&moat, "the find", |e| {
        e["outcome"] == "accepted" && e.to_string().contains(STUDY_ROOT_FIND)
    });
    assert!(
        syntaxes(&find["contexts_accepted"]).contains(&STUDY_ROOT_FIND.to_string()),
        "{find:#}"
    );

    let (status, out) = run_tool(
        &ws,
        "movescu-qr",
        "movescu",
        &[
            "-v",
            "-S",
            "-aet",
            "STORESCU",
            "-aec",
            "STORESCP",
            "-aem",
            "MOVEDEST",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            &format!("StudyInstanceUID={SC_STUDY_UID}"),
            "127.0.0.1",
            &port,
        ],
    );
    assert!(
        status.success(),
        "movescu failed: {out}\nmoat: {}\ndcmqrscp: {}\nmove destination: {}",
        moat.stderr(),
        qr.log(),
        dest.log()
    );
    let moved = wait_for("the moved image at MOVEDEST", || {
        let files = dest.received();
        (!files.is_empty()).then_some(files)
    });
    assert_eq!(moved.len(), 1, "{moved:?}");
    let bytes = std::fs::read(&moved[0]).unwrap();
    assert!(
        bytes
            .windows(SC_SOP_INSTANCE_UID.len())
            .any(|w| w == SC_SOP_INSTANCE_UID.as_bytes()),
        "the moved file is not the stored image"
    );
    let mv = association(&moat, "the move", |e| {
        e["outcome"] == "accepted" && e.to_string().contains(STUDY_ROOT_MOVE)
    });
    assert_eq!(mv["calling_ae"], "STORESCU", "{mv:#}");
    assert_counter(&moat, "moat_guard_decisions_total", "accepted", 3);
}

// ---------------------------------------------------------------------------
// Malformed input from raw sockets

/// Opens a raw connection to the guarded service, lets `send` write to it,
/// then expects an A-ABORT or a close within the deadline and a
/// `guard_violation` of `reason` for this connection.
fn assert_violation(moat: &Moat, case: &str, reason: &str, send: impl FnOnce(&mut TcpStream)) {
    let mut s = TcpStream::connect(moat.addr("dicom")).unwrap();
    let me = s.local_addr().unwrap().to_string();
    send(&mut s);
    match read_pdu(&mut s) {
        Answer::Pdu(A_ABORT, body) => assert_eq!(body.len(), 4, "{case}: A-ABORT {body:02x?}"),
        Answer::Closed => {}
        other => panic!("{case}: moat answered {other:02x?}, not an A-ABORT or a close"),
    }
    let v = wait_for_or(
        &format!("guard_violation for {case}"),
        || {
            moat.events("guard_violation")
                .into_iter()
                .find(|e| e["client"] == me.as_str())
        },
        || guard_events(moat),
    );
    assert_eq!(v["reason"], reason, "{case}: {v:#}");
    assert_eq!(v["guard"], "dicom", "{case}: {v:#}");
}

/// An allowed association by hand up to its A-ASSOCIATE-AC; returns the
/// accepted context ids.
fn associate(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(&associate_rq(
        "ECHOSCU",
        "STORESCP",
        &[(1, VERIFICATION)],
        16384,
    ))
    .unwrap();
    match read_pdu(s) {
        Answer::Pdu(A_ASSOCIATE_AC, body) => accepted_contexts(&body),
        other => panic!("no A-ASSOCIATE-AC: {other:02x?}"),
    }
}

#[test]
fn malformed_pdus_are_aborted_and_moat_stays_up() {
    for tool in ["echoscu", "storescp"] {
        require(tool);
    }
    let ws = Workspace::new();
    let scp = start_storescp(&ws);
    let moat = Moat::start(
        &ws,
        &guarded(scp.addr, "    max_pdu_length = 16384\n", None),
        &["dicom"],
    );
    let rq = associate_rq("ECHOSCU", "STORESCP", &[(1, VERIFICATION)], 16384);

    assert_violation(&moat, "truncated A-ASSOCIATE-RQ", "dicom_malformed", |s| {
        s.write_all(&rq[..rq.len() / 2]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    assert_echo_works(&ws, &moat, "echo-after-truncated");

    assert_violation(&moat, "an RQ over 64 KiB", "dicom_pdu_too_large", |s| {
        let mut head = vec![A_ASSOCIATE_RQ, 0];
        head.extend_from_slice(&(70_000u32).to_be_bytes());
        head.extend_from_slice(&rq[6..]);
        s.write_all(&head).unwrap();
    });
    assert_echo_works(&ws, &moat, "echo-after-oversize-rq");

    assert_violation(&moat, "an unknown PDU type", "dicom_malformed", |s| {
        s.write_all(&pdu(0x08, &[0; 4])).unwrap();
    });
    assert_echo_works(&ws, &moat, "echo-after-unknown-type");

    assert_violation(&moat, "P-DATA first", "dicom_unexpected_pdu", |s| {
        s.write_all(&p_data(1, &[0; 16])).unwrap();
    });
    assert_echo_works(&ws, &moat, "echo-after-pdata-first");

    assert_violation(&moat, "an HTTP request", "dicom_malformed", |s| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
            .unwrap();
    });
    // Binary garbage from a fixed LCG, its first byte no PDU type.
    let mut x: u32 = 0x2545_f491;
    let mut garbage: Vec<u8> = (0..512)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect();
    garbage[0] = 0xde;
    assert_violation(&moat, "random garbage", "dicom_malformed", |s| {
        s.write_all(&garbage).unwrap();
    });
    assert_echo_works(&ws, &moat, "echo-after-garbage");

    assert_violation(
        &moat,
        "P-DATA on a context not accepted",
        "dicom_presentation_context",
        |s| {
            let accepted = associate(s);
            assert_eq!(accepted, [1], "verification not accepted");
            s.write_all(&p_data(3, &[0; 16])).unwrap();
        },
    );
    assert_echo_works(&ws, &moat, "echo-after-bad-context");

    assert_violation(
        &moat,
        "P-DATA over max_pdu_length",
        "dicom_pdu_too_large",
        |s| {
            assert_eq!(associate(s), [1]);
            let mut head = vec![P_DATA_TF, 0];
            head.extend_from_slice(&(20_000u32).to_be_bytes());
            s.write_all(&head).unwrap();
            // Part of the body: moat must not wait for the rest. It may
            // already have closed, so a failed write is fine.
            let _ = s.write_all(&[0; 1024]);
        },
    );
    assert_echo_works(&ws, &moat, "echo-after-oversize-pdata");

    // Every violation counted, by reason.
    assert_counter(&moat, "moat_guard_decisions_total", "violation", 8);
    assert_counter(&moat, "moat_guard_refusals_total", "dicom_malformed", 4);
    assert_counter(&moat, "moat_guard_refusals_total", "dicom_pdu_too_large", 2);
    assert_counter(
        &moat,
        "moat_guard_refusals_total",
        "dicom_unexpected_pdu",
        1,
    );
    assert_counter(
        &moat,
        "moat_guard_refusals_total",
        "dicom_presentation_context",
        1,
    );

    // A well-formed association by hand is accepted and released cleanly:
    // the PDU builders are right, so the refusals above are the guard's.
    let mut s = TcpStream::connect(moat.addr("dicom")).unwrap();
    assert_eq!(associate(&mut s), [1]);
    s.write_all(&release_rq()).unwrap();
    match read_pdu(&mut s) {
        Answer::Pdu(A_RELEASE_RP, _) => {}
        other => panic!("no A-RELEASE-RP: {other:02x?}"),
    }
}

#[test]
fn half_an_association_request_times_out() {
    require("echoscu");
    let ws = Workspace::new();
    let scp = start_storescp(&ws);
    let moat = Moat::start(
        &ws,
        &guarded(scp.addr, "    association_timeout = \"500ms\"\n", None),
        &["dicom"],
    );
    let rq = associate_rq("ECHOSCU", "STORESCP", &[(1, VERIFICATION)], 16384);
    let mut s = TcpStream::connect(moat.addr("dicom")).unwrap();
    let me = s.local_addr().unwrap().to_string();
    let start = Instant::now();
    s.write_all(&rq[..rq.len() / 2]).unwrap();
    // Waits for moat, bounded: an A-ABORT or a close, well before 5 s.
    match read_pdu_within(&mut s, Duration::from_secs(5)) {
        Answer::Pdu(A_ABORT, _) => assert!(closes_within(&mut s, Duration::from_secs(5))),
        Answer::Closed => {}
        other => panic!("moat answered {other:02x?} to half an RQ"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed after {took:?}, before the 500ms timeout"
    );
    let v = wait_for_or(
        "guard_violation dicom_timeout",
        || {
            moat.events("guard_violation")
                .into_iter()
                .find(|e| e["client"] == me.as_str())
        },
        || guard_events(&moat),
    );
    assert_eq!(v["reason"], "dicom_timeout", "{v:#}");
    assert_counter(&moat, "moat_guard_refusals_total", "dicom_timeout", 1);
    assert_echo_works(&ws, &moat, "echo-after-timeout");
}
