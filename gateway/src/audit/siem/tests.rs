use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rfc5424::{self, Header, Keys};
use super::spool::Spool;

fn header() -> Header<'static> {
    Header {
        facility: 20,
        hostname: "gw1",
        app_name: "moat",
        procid: 42,
    }
}

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_764_709_938_123)
}

#[test]
fn a_message_is_rfc5424_with_the_line_as_msg() {
    let line = br#"{"ts":"2025-12-02T21:12:18.123Z","event":"connection_denied","conn_id":3,"device":"ct","service":"dicom","client":"10.0.0.9:5000","reason":"not_allowlisted","seq":7,"hash":"ab12"}"#;
    let m = rfc5424::message(&header(), at(), 7, line);
    let text = String::from_utf8(m).unwrap();
    let expected = format!(
        "<164>1 2025-12-02T21:12:18.123Z gw1 moat 42 connection_denied [moat@32473 seq=\"7\" hash=\"ab12\" device=\"ct\" service=\"dicom\" client=\"10.0.0.9:5000\" reason=\"not_allowlisted\"] {}",
        std::str::from_utf8(line).unwrap()
    );
    assert_eq!(text, expected);
}

#[test]
fn sd_values_are_escaped() {
    let mut out = Vec::new();
    rfc5424::escape_param(r#"a"b\c]d[e"#, &mut out);
    assert_eq!(out, br#"a\"b\\c\]d[e"#);
    let line = br#"{"event":"auth_failed","user":"x\"]y"}"#;
    let m = String::from_utf8(rfc5424::message(&header(), at(), 1, line)).unwrap();
    assert!(m.contains(r#"user="x\"\]y"]"#), "{m}");
}

#[test]
fn severity_follows_the_table() {
    let sev = |line: &str| rfc5424::severity(&Keys::parse(line.as_bytes()));
    assert_eq!(
        sev(r#"{"event":"connection_allowed"}"#),
        rfc5424::INFORMATIONAL
    );
    assert_eq!(
        sev(r#"{"event":"connection_closed"}"#),
        rfc5424::INFORMATIONAL
    );
    assert_eq!(
        sev(r#"{"event":"connection_denied","reason":"x"}"#),
        rfc5424::WARNING
    );
    assert_eq!(
        sev(r#"{"event":"http_request","decision":"allowed"}"#),
        rfc5424::INFORMATIONAL
    );
    assert_eq!(
        sev(r#"{"event":"http_request","decision":"denied","reason":"r"}"#),
        rfc5424::WARNING
    );
    assert_eq!(sev(r#"{"event":"guard_violation"}"#), rfc5424::WARNING);
    assert_eq!(sev(r#"{"event":"break_glass_used"}"#), rfc5424::ALERT);
    assert_eq!(sev(r#"{"event":"reload_rejected"}"#), rfc5424::ERROR);
    assert_eq!(sev(r#"{"event":"siem_events_dropped"}"#), rfc5424::ERROR);
    assert_eq!(sev(r#"{"event":"gateway_started"}"#), rfc5424::NOTICE);
    assert_eq!(sev("not json"), rfc5424::NOTICE);
    assert_eq!(rfc5424::pri(20, rfc5424::WARNING), 164);
    assert_eq!(rfc5424::pri(16, rfc5424::ALERT), 129);
    assert_eq!(rfc5424::facility_by_name("local4"), Some(20));
    assert_eq!(rfc5424::facility_by_name("auth"), Some(4));
    assert_eq!(rfc5424::facility_by_name("local8"), None);
}

#[test]
fn frames_are_octet_counted() {
    let f = rfc5424::frame("héllo".as_bytes());
    assert_eq!(f, "6 héllo".as_bytes());
    assert_eq!(rfc5424::parse_frame_header(b"6 h"), Ok(Some((2, 6))));
    assert_eq!(rfc5424::parse_frame_header(b"12"), Ok(None));
    assert_eq!(rfc5424::parse_frame_header(b"x2 "), Err(()));
    assert_eq!(rfc5424::parse_frame_header(b" 2"), Err(()));
}

fn frames(s: &mut Spool, budget: usize) -> Vec<String> {
    s.read(budget)
        .unwrap()
        .into_iter()
        .map(|f| String::from_utf8(f.frame.to_vec()).unwrap())
        .collect()
}

#[test]
fn the_spool_replays_in_order_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let mut s = Spool::open(&spool_dir, 32 << 10).unwrap();
    for i in 0..2000 {
        assert!(s
            .append(&rfc5424::frame(format!("m{i}").as_bytes()))
            .unwrap());
    }
    // Several segments (the cap / 8 each, at least 4 KiB).
    assert!(std::fs::read_dir(&spool_dir).unwrap().count() > 1);
    let bytes = s.bytes();
    drop(s);
    let mut s = Spool::open(&spool_dir, 32 << 10).unwrap();
    assert_eq!(s.bytes(), bytes);
    s.prepend([&b"3 old"[..]].into_iter()).unwrap();
    let mut got = Vec::new();
    loop {
        let batch = frames(&mut s, 1000);
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    assert_eq!(got.len(), 2001);
    assert_eq!(got[0], "3 old");
    for (i, g) in got[1..].iter().enumerate() {
        let m = format!("m{i}");
        assert_eq!(*g, format!("{} {m}", m.len()));
    }
    assert!(s.all_read());
    s.release(None).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.bytes(), 0);
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
}

#[test]
fn the_spool_rewinds_and_keeps_unacknowledged_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    for i in 0..10 {
        s.append(&rfc5424::frame(format!("m{i}").as_bytes()))
            .unwrap();
    }
    let first = s.read(1 << 20).unwrap();
    assert_eq!(first.len(), 10);
    // Frame 4 onwards were in flight when the connection failed.
    s.rewind(first[4].segment, first[4].offset);
    s.release(Some(first[4].segment)).unwrap();
    assert!(!s.is_empty());
    let again = frames(&mut s, 1 << 20);
    assert_eq!(again.first().map(String::as_str), Some("2 m4"));
    assert_eq!(again.len(), 6);
}

#[test]
fn the_spool_refuses_beyond_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 4096).unwrap();
    let frame = rfc5424::frame(&[b'x'; 1000]);
    let taken = (0..10).filter(|_| s.append(&frame).unwrap()).count();
    assert_eq!(taken, 4);
    assert!(s.bytes() <= 4096);
}

#[test]
fn a_torn_tail_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.append(b"2 ok").unwrap();
    drop(s);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"40 cut sho");
    std::fs::write(&seg, bytes).unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(frames(&mut s, 1 << 20), vec!["2 ok".to_string()]);
    assert!(s.all_read());
}
