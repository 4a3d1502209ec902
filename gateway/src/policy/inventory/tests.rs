use super::*;

fn device(eos: Option<&str>, months: u32) -> Device {
    Device {
        id: "ct".into(),
        name: "CT".into(),
        manufacturer: String::new(),
        model: String::new(),
        location: String::new(),
        owner: String::new(),
        end_of_support: eos.map(str::to_string),
        support_warning_from: eos.and_then(|e| months_before(e, months)),
        serial_number: String::new(),
        udi: String::new(),
        software_version: String::new(),
        lifecycle: None,
        sbom: None,
        mds2: String::new(),
        known_vulnerabilities: Vec::new(),
    }
}

/// Unix seconds at `hh:mm:ss` UTC of `date`: the controllable "today".
fn at(date: &str, secs_into_day: u64) -> u64 {
    days_from_date(date).unwrap() as u64 * 86_400 + secs_into_day
}

#[test]
fn dates_convert_both_ways() {
    assert_eq!(days_from_date("1970-01-01"), Some(0));
    assert_eq!(days_from_date("2000-03-01"), Some(11_017));
    assert_eq!(days_from_date("2027-02-29"), None);
    assert_eq!(days_from_date("2028-02-29"), Some(21_243));
    assert_eq!(days_from_date("2026-13-01"), None);
    for days in [-1, 0, 11_016, 11_017, 20_789, 21_243, 40_000] {
        assert_eq!(days_from_date(&date_from_days(days)), Some(days), "{days}");
    }
}

#[test]
fn months_before_clamps_to_the_end_of_the_month() {
    assert_eq!(
        months_before("2028-12-01", 24).as_deref(),
        Some("2026-12-01")
    );
    assert_eq!(
        months_before("2027-03-31", 1).as_deref(),
        Some("2027-02-28")
    );
    assert_eq!(
        months_before("2028-03-31", 1).as_deref(),
        Some("2028-02-29")
    );
    assert_eq!(
        months_before("2027-01-15", 1).as_deref(),
        Some("2026-12-15")
    );
    assert_eq!(
        months_before("2027-01-15", 0).as_deref(),
        Some("2027-01-15")
    );
}

#[test]
fn status_changes_exactly_at_midnight_of_each_boundary() {
    use SupportStatus::*;
    let d = device(Some("2028-12-01"), 24);
    assert_eq!(d.support_warning_from.as_deref(), Some("2026-12-01"));
    // The last second before the warning window, then its first.
    assert_eq!(d.support_status(at("2026-11-30", 86_399)), Supported);
    assert_eq!(d.support_status(at("2026-12-01", 0)), EndingSoon);
    // The last second of support, then the end-of-support day itself.
    assert_eq!(d.support_status(at("2028-11-30", 86_399)), EndingSoon);
    assert_eq!(d.support_status(at("2028-12-01", 0)), Past);
    assert_eq!(d.support_status(at("2040-01-01", 0)), Past);
    assert_eq!(
        device(None, 24).support_status(at("2026-12-01", 0)),
        Unknown
    );
}

#[test]
fn the_warning_window_is_configurable() {
    use SupportStatus::*;
    let now = at("2027-06-15", 0);
    assert_eq!(
        device(Some("2027-12-15"), 6).support_status(now),
        EndingSoon
    );
    assert_eq!(device(Some("2027-12-16"), 6).support_status(now), Supported);
    // No window: ending soon never shows, past still does.
    assert_eq!(device(Some("2027-06-16"), 0).support_status(now), Supported);
    assert_eq!(device(Some("2027-06-15"), 0).support_status(now), Past);
}

#[test]
fn end_of_support_is_midnight_utc() {
    let d = device(Some("2028-12-01"), 24);
    assert_eq!(d.end_of_support_unix(), Some(at("2028-12-01", 0) as i64));
    assert_eq!(device(None, 24).end_of_support_unix(), None);
}
