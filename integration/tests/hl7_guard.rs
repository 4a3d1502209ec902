//! The HL7 MLLP guard end to end: python3-hl7 through moat to an MLLP peer.
//!
//! The device is python3-hl7's asyncio MLLP server (`hl7_upstream.py`),
//! which logs every block it receives and answers each with `create_ack()`.
//! Senders are python3-hl7's `mllp_send`, its asyncio client over TLS
//! (`hl7_tls_client.py`), and raw sockets for broken framing.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::hl7::*;
use support::*;

const DECISIONS: &str = "moat_guard_decisions_total";
const REFUSALS: &str = "moat_guard_refusals_total";

/// One device with one guarded plaintext HL7 service in front of `upstream`.
fn hl7_service(upstream: SocketAddr, hl7_extra: &str) -> String {
    hl7_service_with(upstream, "plaintext = true", hl7_extra)
}

fn hl7_service_with(upstream: SocketAddr, transport: &str, hl7_extra: &str) -> String {
    format!(
        r#"
[[device]]
id = "lis-1"
name = "Legacy LIS"

[[device.service]]
name = "hl7"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{upstream}"
allow = ["127.0.0.0/8"]
guard = "hl7-mllp"
{transport}

[device.service.hl7]
sending_applications = ["LAB"]
sending_facilities = ["MAIN"]
receiving_applications = ["LIS"]
receiving_facilities = ["*"]
message_types = ["ORU^R01", "ADT"]
{hl7_extra}
"#
    )
}

/// Starts the device and moat in front of it.
fn start(ws: &Workspace, hl7_extra: &str) -> (Upstream, Moat) {
    require_hl7();
    let device = Upstream::start(ws, "device");
    let moat = Moat::start(ws, &hl7_service(device.addr, hl7_extra), &["hl7"]);
    (device, moat)
}

fn raw(moat: &Moat) -> (Raw<std::net::TcpStream>, SocketAddr) {
    let s = connect_from("127.0.0.1", moat.addr("hl7"));
    let client = s.local_addr().unwrap();
    (Raw::new(s), client)
}

fn hl7_event(moat: &Moat, control_id: &str) -> Value {
    moat.wait_event("hl7_message", |e| e["control_id"] == control_id)
}

/// The audit trail and moat's log never hold a message body.
fn assert_no_patient_data(moat: &Moat) {
    let audit = std::fs::read_to_string(&moat.audit).unwrap();
    for needle in [PATIENT_FAMILY, "QUIXOTE", "4711^^^MAIN", "GLU^Glucose"] {
        assert!(
            !audit.contains(needle),
            "{needle} in the audit trail:\n{audit}"
        );
        let log = moat.stderr();
        assert!(!log.contains(needle), "{needle} in moat's log:\n{log}");
    }
}

#[test]
fn mllp_send_messages_reach_the_device_byte_identical_and_are_audited() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let oru = Msg::allowed("MSG00001");
    // "ADT" alone admits any trigger event.
    let adt = Msg {
        message_type: "ADT^A01".into(),
        receiving_facility: "WARD7".into(),
        ..Msg::allowed("MSG00002")
    };
    let (ok, out) = mllp_send(&ws, "send", moat.addr("hl7"), &[oru.clone(), adt.clone()]);
    assert!(ok, "mllp_send failed: {}", String::from_utf8_lossy(&out));
    let acks = acks_in(&out);
    assert_eq!(acks.len(), 2, "{}", String::from_utf8_lossy(&out));
    for (ack, id) in acks.iter().zip(["MSG00001", "MSG00002"]) {
        assert_eq!(ack.code, "AA", "{ack:?}");
        assert_eq!(ack.control_id, id);
        // The device's own ACK (python3-hl7's create_ack), relayed.
        assert!(ack.message_type.starts_with("ACK^"), "{ack:?}");
    }

    // Byte for byte what mllp_send sent, in MLLP blocks the device's
    // python3-hl7 reader accepted.
    let got = device.wait_messages(2);
    assert_eq!(got, vec![oru.bytes(), adt.bytes()]);
    assert!(device.garbage().is_empty(), "{:?}", device.garbage());

    let e = hl7_event(&moat, "MSG00001");
    assert_eq!(e["decision"], "forwarded");
    assert_eq!(e["device"], "lis-1");
    assert_eq!(e["service"], "hl7");
    assert!(
        e["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{e}"
    );
    assert!(e["conn_id"].as_u64().unwrap() >= 1);
    assert_eq!(e["message_type"], "ORU^R01");
    assert_eq!(e["sending_application"], "LAB");
    assert_eq!(e["sending_facility"], "MAIN");
    assert_eq!(e["receiving_application"], "LIS");
    assert_eq!(e["receiving_facility"], "MAIN");
    assert!(e.get("reason").is_none(), "{e}");
    assert!(e.get("ack").is_none(), "{e}");
    let e2 = hl7_event(&moat, "MSG00002");
    assert_eq!(e2["decision"], "forwarded");
    assert_eq!(e2["message_type"], "ADT^A01");
    assert_eq!(e2["receiving_facility"], "WARD7");
    assert_eq!(e2["conn_id"], e["conn_id"], "one mllp_send connection");

    wait_metric(&moat, DECISIONS, "forwarded", 2);
    assert_eq!(guard_metric(&moat, DECISIONS, "refused"), 0);
    assert_eq!(guard_metric(&moat, DECISIONS, "violation"), 0);
    assert_no_patient_data(&moat);
}

#[test]
fn refused_messages_get_ar_and_never_reach_the_device_and_the_connection_goes_on() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let refused = [
        (
            Msg {
                sending_application: "RIS".into(),
                ..Msg::allowed("BAD-APP")
            },
            "hl7_sender",
        ),
        (
            Msg {
                sending_facility: "ANNEX".into(),
                ..Msg::allowed("BAD-FAC")
            },
            "hl7_sender",
        ),
        (
            Msg {
                receiving_application: "PACS".into(),
                ..Msg::allowed("BAD-RCV")
            },
            "hl7_receiver",
        ),
        (
            Msg {
                message_type: "ORM^O01".into(),
                ..Msg::allowed("BAD-ORM")
            },
            "hl7_message_type",
        ),
        // ORU is listed with one trigger only.
        (
            Msg {
                message_type: "ORU^R30".into(),
                ..Msg::allowed("BAD-R30")
            },
            "hl7_message_type",
        ),
    ];
    // Every refusal is followed by an allowed message on the same
    // mllp_send connection: mllp_send waits for each ACK in turn.
    let mut messages = Vec::new();
    for (i, (m, _)) in refused.iter().enumerate() {
        messages.push(m.clone());
        messages.push(Msg::allowed(&format!("OK-{i}")));
    }
    let (ok, out) = mllp_send(&ws, "send", moat.addr("hl7"), &messages);
    assert!(ok, "mllp_send failed: {}", String::from_utf8_lossy(&out));
    let acks = acks_in(&out);
    assert_eq!(
        acks.len(),
        messages.len(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    for (i, (m, _)) in refused.iter().enumerate() {
        let (nak, ack) = (&acks[2 * i], &acks[2 * i + 1]);
        assert_eq!(nak.code, "AR", "{} got {nak:?}", m.control_id);
        assert_eq!(nak.control_id, m.control_id);
        assert!(nak.message_type.starts_with("ACK"), "{nak:?}");
        assert_eq!(ack.code, "AA", "{ack:?}");
        assert_eq!(ack.control_id, format!("OK-{i}"));
    }

    // The last allowed message has arrived, so anything forwarded before it
    // has too: the device saw the allowed ones only, in order.
    let got = device.wait_messages(refused.len());
    let want: Vec<Vec<u8>> = (0..refused.len())
        .map(|i| Msg::allowed(&format!("OK-{i}")).bytes())
        .collect();
    assert_eq!(got, want);
    assert!(device.garbage().is_empty(), "{:?}", device.garbage());
    let conns = device
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::Conn(_)))
        .count();
    assert_eq!(conns, 1, "one connection to the device throughout");

    for (m, reason) in &refused {
        let e = hl7_event(&moat, &m.control_id);
        assert_eq!(e["decision"], "refused", "{e}");
        assert_eq!(e["reason"], *reason, "{e}");
        assert_eq!(e["ack"], "AR", "{e}");
        assert_eq!(e["message_type"], m.message_type.as_str());
        assert_eq!(e["sending_application"], m.sending_application.as_str());
        assert_eq!(e["sending_facility"], m.sending_facility.as_str());
        assert_eq!(e["receiving_application"], m.receiving_application.as_str());
    }
    for i in 0..refused.len() {
        assert_eq!(
            hl7_event(&moat, &format!("OK-{i}"))["decision"],
            "forwarded"
        );
    }

    wait_metric(&moat, DECISIONS, "forwarded", 5);
    wait_metric(&moat, DECISIONS, "refused", 5);
    wait_metric(&moat, REFUSALS, "hl7_sender", 2);
    wait_metric(&moat, REFUSALS, "hl7_receiver", 1);
    wait_metric(&moat, REFUSALS, "hl7_message_type", 2);
    assert_eq!(guard_metric(&moat, DECISIONS, "violation"), 0);
    assert_no_patient_data(&moat);
}

#[test]
fn enhanced_mode_refusal_is_acked_cr() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let (mut c, client) = raw(&moat);
    let bad = Msg {
        message_type: "ORM^O01".into(),
        enhanced: true,
        ..Msg::allowed("ENH-1")
    };
    c.send(&bad.frame());
    let nak = c.ack();
    assert_eq!(nak.code, "CR", "{nak:?}");
    assert_eq!(nak.control_id, "ENH-1");
    let good = Msg {
        enhanced: true,
        ..Msg::allowed("ENH-2")
    };
    c.send(&good.frame());
    let ack = c.ack();
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "ENH-2")
    );
    assert_eq!(device.wait_messages(1), vec![good.bytes()]);

    let e = moat.wait_event("hl7_message", |e| {
        e["control_id"] == "ENH-1" && e["client"] == client.to_string()
    });
    assert_eq!(e["decision"], "refused");
    assert_eq!(e["reason"], "hl7_message_type");
    assert_eq!(e["ack"], "CR");
    assert_no_patient_data(&moat);
}

#[test]
fn pipelined_messages_are_acked_in_order() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let (mut c, _) = raw(&moat);
    let first = Msg::allowed("PIPE-1");
    let second = Msg {
        sending_application: "RIS".into(),
        ..Msg::allowed("PIPE-2")
    };
    let third = Msg {
        message_type: "ADT^A08".into(),
        ..Msg::allowed("PIPE-3")
    };
    // All three in one write: the refusal must wait its turn behind the
    // device's answer to the first.
    let mut burst = first.frame();
    burst.extend(second.frame());
    burst.extend(third.frame());
    c.send(&burst);
    let acks: Vec<(String, String)> = (0..3)
        .map(|_| {
            let a = c.ack();
            (a.code, a.control_id)
        })
        .collect();
    let want: Vec<(String, String)> = [("AA", "PIPE-1"), ("AR", "PIPE-2"), ("AA", "PIPE-3")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(acks, want);
    assert_eq!(device.wait_messages(2), vec![first.bytes(), third.bytes()]);
    assert_eq!(hl7_event(&moat, "PIPE-2")["reason"], "hl7_sender");
}

#[test]
fn framing_errors_close_the_connection_and_nothing_reaches_the_device() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "max_message_bytes = 1024\nframe_timeout = \"500ms\"");
    let small = Msg::allowed("BODY");
    let mut unterminated = vec![SB];
    unterminated.extend(small.bytes());
    let mut bad_end = small.frame();
    *bad_end.last_mut().unwrap() = b'X';
    // A second start byte before the end: one frame that could be read as two.
    let mut nested = vec![SB];
    nested.extend(small.bytes());
    nested.extend(small.frame());
    let not_msh = frame(b"PID|1||4711^^^MAIN^MR||ZZFAKEPATIENT^QUIXOTE");
    let big = Msg {
        filler: 2000,
        ..Msg::allowed("BIG")
    }
    .frame();
    // (case, bytes, reason)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no start byte", small.bytes(), "hl7_framing"),
        ("end byte without CR", bad_end, "hl7_framing"),
        ("start byte inside a frame", nested, "hl7_framing"),
        ("not MSH", not_msh, "hl7_malformed"),
        ("over max_message_bytes", big, "hl7_too_large"),
        ("unfinished past frame_timeout", unterminated, "hl7_timeout"),
    ];
    let mut forwarded = 0;
    for (i, (case, bytes, reason)) in cases.iter().enumerate() {
        let (mut c, client) = raw(&moat);
        let started = Instant::now();
        c.send(bytes);
        let answer = c.expect_closed();
        let acks = acks_in(&answer);
        assert!(
            acks.iter().all(|a| a.code != "AA" && a.code != "CA"),
            "{case}: moat acknowledged it: {acks:?}"
        );
        if *reason == "hl7_timeout" {
            assert!(
                started.elapsed() >= Duration::from_millis(450),
                "{case}: closed after {:?}, before frame_timeout",
                started.elapsed()
            );
        }
        let v = moat.wait_for_client("guard_violation", client);
        assert_eq!(v["guard"], "hl7-mllp", "{case}: {v}");
        assert_eq!(v["reason"], *reason, "{case}: {v}");
        assert_eq!(v["device"], "lis-1");
        let closed = moat.wait_for_client("connection_closed", client);
        assert_eq!(closed["closed_by"], "guard_violation", "{case}: {closed}");

        // moat stays up: an allowed message on a new connection is
        // forwarded and acknowledged.
        let (mut next, _) = raw(&moat);
        let id = format!("AFTER-{i}");
        next.send(&Msg::allowed(&id).frame());
        let ack = next.ack();
        assert_eq!(
            (ack.code.as_str(), ack.control_id.as_str()),
            ("AA", id.as_str()),
            "{case}"
        );
        forwarded += 1;
        drop(next);

        // Every device connection is over, so the device has all it will
        // ever get of this case: nothing.
        device.wait_all_closed();
        let got = device.messages();
        assert_eq!(got.len(), forwarded, "{case}: device got {got:?}");
        assert_eq!(got.last().unwrap(), &Msg::allowed(&id).bytes(), "{case}");
        assert!(
            device.garbage().is_empty(),
            "{case}: {:?}",
            device.garbage()
        );
    }

    wait_metric(&moat, DECISIONS, "violation", cases.len() as u64);
    wait_metric(&moat, REFUSALS, "hl7_framing", 3);
    wait_metric(&moat, REFUSALS, "hl7_malformed", 1);
    wait_metric(&moat, REFUSALS, "hl7_too_large", 1);
    wait_metric(&moat, REFUSALS, "hl7_timeout", 1);
    wait_metric(&moat, DECISIONS, "forwarded", forwarded as u64);
    assert_no_patient_data(&moat);
}

#[test]
fn stray_bytes_between_frames_close_after_the_first_message() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let (mut c, client) = raw(&moat);
    let first = Msg::allowed("STRAY-1");
    let mut bytes = first.frame();
    bytes.extend_from_slice(b"junk");
    bytes.extend(Msg::allowed("STRAY-2").frame());
    c.send(&bytes);
    let answer = c.expect_closed();
    let acks = acks_in(&answer);
    assert!(
        acks.iter().all(|a| a.control_id == "STRAY-1"),
        "only the first message may be acknowledged: {acks:?}"
    );
    let v = moat.wait_for_client("guard_violation", client);
    assert_eq!(v["reason"], "hl7_framing", "{v}");
    device.wait_all_closed();
    let got = device.messages();
    assert!(
        got.is_empty() || got == vec![first.bytes()],
        "the device got more than the first message: {got:?}"
    );
    assert!(device.garbage().is_empty(), "{:?}", device.garbage());
    assert!(
        moat.events("hl7_message")
            .iter()
            .all(|e| e["control_id"] != "STRAY-2"),
        "the message after the stray bytes was read as one"
    );
    // And moat is still up.
    let (ok, out) = mllp_send(&ws, "after", moat.addr("hl7"), &[Msg::allowed("STRAY-3")]);
    assert!(ok);
    assert_eq!(acks_in(&out)[0].code, "AA");
    wait_metric(&moat, REFUSALS, "hl7_framing", 1);
}

#[test]
fn tls_client_is_guarded_like_plaintext() {
    require_hl7();
    let ws = Workspace::new();
    let device = Upstream::start(&ws, "device");
    let moat = Moat::start(
        &ws,
        &hl7_service_with(device.addr, &ws.tls_table(), ""),
        &["hl7"],
    );
    let good = Msg::allowed("TLS-1");
    let bad = Msg {
        receiving_application: "PACS".into(),
        ..Msg::allowed("TLS-2")
    };
    let after = Msg {
        message_type: "ADT^A04".into(),
        ..Msg::allowed("TLS-3")
    };
    let (version, acks) = tls_send(
        &ws,
        "tls",
        moat.addr("hl7"),
        &[good.clone(), bad, after.clone()],
    );
    assert_eq!(version, "TLSv1.3");
    let got: Vec<(&str, &str)> = acks
        .iter()
        .map(|a| (a.code.as_str(), a.control_id.as_str()))
        .collect();
    assert_eq!(got, [("AA", "TLS-1"), ("AR", "TLS-2"), ("AA", "TLS-3")]);
    assert_eq!(device.wait_messages(2), vec![good.bytes(), after.bytes()]);
    let e = hl7_event(&moat, "TLS-2");
    assert_eq!(e["reason"], "hl7_receiver");
    assert_eq!(e["ack"], "AR");
    let allowed = moat.wait_event("connection_allowed", |_| true);
    assert_eq!(allowed["tls"]["version"], "TLSv1.3");
    assert_no_patient_data(&moat);
}

#[test]
fn size_limit_is_exact_and_cuts_before_the_end_byte() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "max_message_bytes = 1024");
    let sized = |id: &str, len: usize| {
        let base = Msg::allowed(id).bytes().len();
        // A filler of f adds "\rNTE|1||" (8 bytes) and f characters.
        let m = Msg {
            filler: len - base - 8,
            ..Msg::allowed(id)
        };
        assert_eq!(m.bytes().len(), len);
        m
    };

    // Exactly max_message_bytes, dribbled in 7-byte pieces: forwarded whole.
    let exact = sized("EXACT", 1024);
    let (mut c, _) = raw(&moat);
    for piece in exact.frame().chunks(7) {
        c.send(piece);
    }
    let ack = c.ack();
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AA", "EXACT")
    );
    assert_eq!(device.wait_messages(1), vec![exact.bytes()]);
    drop(c);

    // One byte more, complete: a violation.
    let (mut c, client) = raw(&moat);
    c.send(&sized("OVER", 1025).frame());
    c.expect_closed();
    let v = moat.wait_for_client("guard_violation", client);
    assert_eq!(v["reason"], "hl7_too_large", "{v}");

    // Far more and no end byte in sight: moat does not wait for one (the
    // frame_timeout is the default 30 s, past the deadline).
    let (mut c, client) = raw(&moat);
    let mut endless = vec![SB];
    endless.extend(sized("ENDLESS", 1024).bytes());
    endless.extend(std::iter::repeat_n(b'x', 4096));
    c.send(&endless);
    c.expect_closed();
    let v = moat.wait_for_client("guard_violation", client);
    assert_eq!(v["reason"], "hl7_too_large", "{v}");

    device.wait_all_closed();
    assert_eq!(device.messages(), vec![exact.bytes()]);
    assert!(device.garbage().is_empty(), "{:?}", device.garbage());
    wait_metric(&moat, REFUSALS, "hl7_too_large", 2);
}

#[test]
fn frame_timeout_counts_from_the_start_byte_not_from_the_last_message() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "frame_timeout = \"500ms\"");
    let (mut c, _) = raw(&moat);
    c.send(&Msg::allowed("T-1").frame());
    assert_eq!(c.ack().code, "AA");
    // Idle between frames, longer than frame_timeout: the scenario itself,
    // not a synchronisation.
    std::thread::sleep(Duration::from_millis(800));
    // MSH-9 with its message structure (a third component) matches
    // "ORU^R01" too.
    let with_structure = Msg {
        message_type: "ORU^R01^ORU_R01".into(),
        ..Msg::allowed("T-2")
    };
    c.send(&with_structure.frame());
    let ack = c.ack();
    assert_eq!((ack.code.as_str(), ack.control_id.as_str()), ("AA", "T-2"));
    assert_eq!(device.wait_messages(2)[1], with_structure.bytes());
    assert_eq!(hl7_event(&moat, "T-2")["decision"], "forwarded");
    assert!(moat.events("guard_violation").is_empty());
}

#[test]
fn moat_check_rejects_broken_hl7_tables() {
    let ws = Workspace::new();
    let upstream = closed_port();
    let cases = [
        (
            "sending_applications = [\"LAB\"]\n",
            "",
            "sending_applications",
        ),
        (
            "message_types = [\"ORU^R01\", \"ADT\"]\n",
            "",
            "message_types",
        ),
        (
            "sending_applications = [\"LAB\"]",
            "sending_applications = [\"LAB\", \"*\"]",
            "sending_applications",
        ),
        (
            "message_types = [\"ORU^R01\", \"ADT\"]",
            "message_types = [\"ORU^\"]",
            "message_types",
        ),
    ];
    let good = hl7_service(upstream, "");
    let path = ws.write("good.toml", &good);
    let out = std::process::Command::new(moat_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the suite's own table is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert!(good.contains(from), "{from}");
        let path = ws.write(&format!("bad{i}.toml"), &good.replacen(from, to, 1));
        let out = std::process::Command::new(moat_bin())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{from:?} -> {to:?} was accepted");
        assert!(stderr.contains(field), "{from:?} -> {to:?}: {stderr}");
    }
}

/// A reload that takes a sender off the list refuses its next message on
/// a connection opened before the reload: every message is judged by the
/// policy in force when it arrives.
#[test]
fn a_reload_refuses_the_next_message_on_a_live_connection() {
    let ws = Workspace::new();
    let (device, moat) = start(&ws, "");
    let (mut c, _) = raw(&moat);
    let before = Msg::allowed("LIVE-1");
    c.send(&before.frame());
    assert_eq!(c.ack().code, "AA");

    let text = std::fs::read_to_string(&moat.config).unwrap();
    let edited = text.replacen(
        r#"sending_applications = ["LAB"]"#,
        r#"sending_applications = ["RIS"]"#,
        1,
    );
    assert_ne!(edited, text);
    let tmp = moat.config.with_extension("tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, &moat.config).unwrap();
    let (status, body) = moat.admin_post("/reload");
    assert_eq!(status, 200, "{body}");
    moat.wait_event("reload_applied", |e| e["new_version"] == 2);

    let after = Msg::allowed("LIVE-2");
    c.send(&after.frame());
    let ack = c.ack();
    assert_eq!(
        (ack.code.as_str(), ack.control_id.as_str()),
        ("AR", "LIVE-2")
    );
    assert_eq!(hl7_event(&moat, "LIVE-2")["reason"], "hl7_sender");
    // The connection goes on, and the device only ever saw the first.
    let third = Msg {
        sending_application: "RIS".into(),
        ..Msg::allowed("LIVE-3")
    };
    c.send(&third.frame());
    assert_eq!(c.ack().code, "AA");
    assert_eq!(device.wait_messages(2), vec![before.bytes(), third.bytes()]);
}
