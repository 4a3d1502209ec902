//! The device inventory: what the legacy-device guidance asks a hospital
//! to keep for every asset (identity, software, documents, known
//! vulnerabilities) and its support status, computed from the maker's
//! end-of-support date against a controllable "today".
//!
//! One place decides the status; `moat check`, `/devices`, the metrics,
//! the portal and the evidence report all ask [`Device::support_status`].

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use crate::config::schema::Lifecycle;

/// A device in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: Arc<str>,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub location: String,
    pub owner: String,
    /// `YYYY-MM-DD`
    pub end_of_support: Option<String>,
    /// From when the device counts as "ending soon": `end_of_support`
    /// minus `gateway.support_warning_months`, `YYYY-MM-DD`.
    pub support_warning_from: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial_number: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub udi: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub software_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// The software bill of materials, checked against its SHA-256 when
    /// the policy was compiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<Sbom>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mds2: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub known_vulnerabilities: Vec<String>,
}

/// A software bill of materials file whose content matched its recorded
/// SHA-256 when the policy was compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sbom {
    pub path: PathBuf,
    /// Lower-case hex.
    pub sha256: String,
}

/// Where a device stands against its maker's end of support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SupportStatus {
    Supported,
    /// Within the warning window before the end of support.
    EndingSoon,
    /// The end-of-support date is today or behind us.
    Past,
    /// No end-of-support date is recorded.
    Unknown,
}

impl SupportStatus {
    pub const ALL: [SupportStatus; 4] = [
        SupportStatus::Supported,
        SupportStatus::EndingSoon,
        SupportStatus::Past,
        SupportStatus::Unknown,
    ];

    /// As the metrics label and the JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SupportStatus::Supported => "supported",
            SupportStatus::EndingSoon => "ending_soon",
            SupportStatus::Past => "past",
            SupportStatus::Unknown => "unknown",
        }
    }

    /// For people: pages, `moat check`, the report.
    pub fn describe(self) -> &'static str {
        match self {
            SupportStatus::Supported => "supported",
            SupportStatus::EndingSoon => "ending soon",
            SupportStatus::Past => "past end of support",
            SupportStatus::Unknown => "unknown (no end_of_support date)",
        }
    }
}

impl Device {
    /// The support status on the day that contains `now` (Unix seconds,
    /// UTC): past from the end-of-support date itself, ending soon from
    /// `support_warning_from`.
    pub fn support_status(&self, now: u64) -> SupportStatus {
        let Some(end) = self.end_of_support.as_deref().and_then(days_from_date) else {
            return SupportStatus::Unknown;
        };
        let today = (now / 86_400) as i64;
        let warn = self
            .support_warning_from
            .as_deref()
            .and_then(days_from_date)
            .unwrap_or(end);
        if today >= end {
            SupportStatus::Past
        } else if today >= warn {
            SupportStatus::EndingSoon
        } else {
            SupportStatus::Supported
        }
    }

    /// The end of support as Unix seconds (midnight UTC of that day).
    pub fn end_of_support_unix(&self) -> Option<i64> {
        Some(days_from_date(self.end_of_support.as_deref()?)? * 86_400)
    }
}

/// `YYYY-MM-DD` as days since 1970-01-01 (proleptic Gregorian).
pub fn days_from_date(date: &str) -> Option<i64> {
    let (y, m, d) = parse_date(date)?;
    Some(days_from_civil(y, m, d))
}

/// `date` moved back by `months` calendar months, the day clamped to the
/// end of the month (2027-03-31 minus one month is 2027-02-28).
pub fn months_before(date: &str, months: u32) -> Option<String> {
    let (y, m, d) = parse_date(date)?;
    let total = y * 12 + (m - 1) - i64::from(months);
    let (y, m) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let d = d.min(days_in_month(y, m));
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
pub fn date_from_days(days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn parse_date(date: &str) -> Option<(i64, i64, i64)> {
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.get(..2)?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return None;
    }
    Some((y, m, d))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
