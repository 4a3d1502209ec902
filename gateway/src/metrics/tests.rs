use super::{prefers_openmetrics, to_prometheus_text, Metrics, OPENMETRICS, PROMETHEUS_TEXT};
use crate::controls::Reason;

/// What Prometheus 2.x sends when scraping.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[test]
fn negotiation_prefers_openmetrics_only_when_asked() {
    assert!(prefers_openmetrics(PROMETHEUS_ACCEPT));
    assert!(prefers_openmetrics("application/openmetrics-text"));
    assert!(prefers_openmetrics(
        "text/plain;q=0.2, Application/OpenMetrics-Text; version=1.0.0; q=0.9"
    ));
    // curl, browsers, and clients that only know the old format.
    assert!(!prefers_openmetrics(""));
    assert!(!prefers_openmetrics("*/*"));
    assert!(!prefers_openmetrics("text/plain;version=0.0.4"));
    assert!(!prefers_openmetrics(
        "text/html,application/xhtml+xml,*/*;q=0.8"
    ));
    // A tie goes to plain text; q=0 means "not this one".
    assert!(!prefers_openmetrics(
        "application/openmetrics-text;q=0.5,text/plain;q=0.5"
    ));
    assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
    // The exact media range beats a wildcard, whatever their order.
    assert!(prefers_openmetrics(
        "*/*;q=0.9,text/plain;q=0.1,application/*;q=0.5"
    ));
    assert!(!prefers_openmetrics(
        "application/*;q=0.9,application/openmetrics-text;q=0"
    ));
}

#[test]
fn render_serves_the_content_type_that_matches_the_body() {
    let m = Metrics::new();
    m.outcome("ct", "dicom", Err(Reason::FdExhausted));
    let (ty, body) = m.render(PROMETHEUS_ACCEPT);
    assert_eq!(ty, OPENMETRICS);
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert!(body.contains("# TYPE moat_connections counter\n"), "{body}");
    let (ty, body) = m.render("");
    assert_eq!(ty, PROMETHEUS_TEXT);
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.contains("# TYPE moat_connections_total counter\n"),
        "{body}"
    );
    assert!(body.contains(
        "moat_connections_total{device=\"ct\",service=\"dicom\",outcome=\"fd_exhausted\"} 1\n"
    ));
}

#[test]
fn counters_are_named_with_total_and_openmetrics_only_lines_go() {
    let om = "# HELP moat_bytes Bytes \\\"proxied\\\" \\\\ here.\n\
              # TYPE moat_bytes counter\n\
              # UNIT moat_bytes bytes\n\
              moat_bytes_total{direction=\"to_client\"} 233\n\
              moat_bytes_created{direction=\"to_client\"} 1700000000.5\n\
              # HELP moat_up Up.\n\
              # TYPE moat_up gauge\n\
              moat_up 1 1700000000.25\n\
              # HELP moat_odd Odd.\n\
              # TYPE moat_odd unknown\n\
              moat_odd{path=\"a} # b\"} 2 # {trace_id=\"x\"} 1.0\n\
              # HELP moat_build Build.\n\
              # TYPE moat_build info\n\
              moat_build_info{version=\"1\"} 1\n\
              # EOF\n";
    let text = to_prometheus_text(om);
    assert_eq!(
        text,
        "# HELP moat_bytes_total Bytes \"proxied\" \\\\ here.\n\
         # TYPE moat_bytes_total counter\n\
         moat_bytes_total{direction=\"to_client\"} 233\n\
         # HELP moat_up Up.\n\
         # TYPE moat_up gauge\n\
         moat_up 1 1700000000250\n\
         # HELP moat_odd Odd.\n\
         # TYPE moat_odd untyped\n\
         moat_odd{path=\"a} # b\"} 2\n\
         # HELP moat_build_info Build.\n\
         # TYPE moat_build_info gauge\n\
         moat_build_info{version=\"1\"} 1\n"
    );
}

#[test]
fn every_family_has_help_and_a_matching_type_in_the_old_format() {
    let m = Metrics::new();
    m.outcome("d", "s", Ok(()));
    m.reload("applied");
    drop(m.tls_handshake("d", "s"));
    let text = to_prometheus_text(&m.encode());
    let mut helped = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.trim().is_empty(), "{name} has no help");
            helped.push(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            assert_eq!(helped.last().map(String::as_str), Some(name));
            if ty == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(helped.last().map(String::as_str), Some(name), "{line}");
        }
    }
    assert!(helped.contains(&"moat_tls_handshakes_in_progress".to_string()));
}

#[test]
fn the_handshake_gauge_falls_back_when_its_guard_drops() {
    let m = Metrics::new();
    let a = m.tls_handshake("d", "s");
    let b = m.tls_handshake("d", "s");
    let gauge = |m: &Metrics| {
        m.tls_handshakes
            .get_or_create(&super::ServiceLabels {
                device: "d".into(),
                service: "s".into(),
            })
            .get()
    };
    assert_eq!(gauge(&m), 2);
    drop(a);
    assert_eq!(gauge(&m), 1);
    drop(b);
    assert_eq!(gauge(&m), 0);
}
