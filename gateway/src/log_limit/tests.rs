use std::time::{Duration, Instant};

use super::LogLimit;

#[test]
fn one_line_per_interval_reporting_the_suppressed_count() {
    let limit = LogLimit::new(Duration::from_secs(10));
    let t0 = Instant::now();
    assert_eq!(limit.check_at(t0), Some(0), "the first line is written");
    for i in 1..=1000 {
        assert_eq!(limit.check_at(t0 + Duration::from_millis(i)), None);
    }
    assert_eq!(limit.check_at(t0 + Duration::from_secs(9)), None);
    // 1001 left out since the first line; the count starts over.
    assert_eq!(limit.check_at(t0 + Duration::from_secs(10)), Some(1001));
    assert_eq!(limit.check_at(t0 + Duration::from_secs(11)), None);
    assert_eq!(limit.check_at(t0 + Duration::from_secs(21)), Some(1));
}

#[test]
fn sites_are_limited_independently() {
    let (a, b) = (
        LogLimit::new(Duration::from_secs(10)),
        LogLimit::new(Duration::from_secs(10)),
    );
    let t0 = Instant::now();
    assert_eq!(a.check_at(t0), Some(0));
    assert_eq!(b.check_at(t0), Some(0));
    assert_eq!(a.check_at(t0), None);
}

#[test]
fn the_macro_writes_once_per_site() {
    // Compiles with fields and a message, like tracing's own macros.
    for i in 0..3 {
        crate::warn_limited!(attempt = i, "repeated");
        crate::error_limited!(error = %"boom", "repeated");
    }
}
