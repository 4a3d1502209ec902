//! Reading the audit trail over the period into tallies: streaming, line
//! by line, tolerant of unknown events and fields, counting (not failing
//! on) lines that are not JSON.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::BufRead;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::model::{
    AuditSource, BreakGlassSeen, ConfigChange, DeviceChange, GrantSeen, RejectedReload, Suppressed,
};
use crate::policy::AuditTarget;

/// How many non-JSON line numbers the report lists.
const NOT_JSON_LISTED: usize = 10;

/// The period and how it is cut into buckets.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since: u64,
    pub until: u64,
    pub bucket_secs: u64,
}

impl Window {
    /// `since` back from `until`: hour buckets for two days or less, else days.
    pub fn new(until: u64, since: Duration) -> Window {
        let span = since.as_secs();
        let bucket_secs = if span <= 2 * 86_400 { 3_600 } else { 86_400 };
        Window {
            since: until.saturating_sub(span),
            until,
            bucket_secs,
        }
    }

    pub fn bucket_name(&self) -> &'static str {
        if self.bucket_secs == 3_600 {
            "hour"
        } else {
            "day"
        }
    }

    fn first_bucket(&self) -> u64 {
        self.since - self.since % self.bucket_secs
    }

    pub fn bucket_count(&self) -> usize {
        ((self.until - self.first_bucket()) / self.bucket_secs + 1) as usize
    }

    /// The labels of the buckets, oldest first.
    pub fn labels(&self) -> Vec<String> {
        (0..self.bucket_count() as u64)
            .map(|i| {
                let start = self.first_bucket() + i * self.bucket_secs;
                let date = crate::policy::inventory::date_from_days((start / 86_400) as i64);
                if self.bucket_secs == 3_600 {
                    format!("{date}T{:02}:00Z", (start % 86_400) / 3_600)
                } else {
                    date
                }
            })
            .collect()
    }

    /// Inside the period, by the millisecond: `since <= t <= until`.
    fn contains_ms(&self, ms: u64) -> bool {
        ms >= self.since * 1000 && ms <= self.until * 1000 + 999
    }

    fn bucket_of(&self, ms: u64) -> usize {
        let i = ((ms / 1000).saturating_sub(self.first_bucket()) / self.bucket_secs) as usize;
        i.min(self.bucket_count() - 1)
    }
}

/// What one device's lines add up to.
#[derive(Debug, Default)]
pub struct DeviceTally {
    pub denials: BTreeMap<String, Vec<u64>>,
    pub signed_in: BTreeMap<String, u64>,
    pub grants: Vec<GrantSeen>,
    pub break_glass: Vec<BreakGlassSeen>,
    pub principals: BTreeMap<String, u64>,
    pub clients: BTreeSet<String>,
    pub allowed_connections: u64,
    pub changes: Vec<DeviceChange>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub source: AuditSource,
    pub changes: Vec<ConfigChange>,
    pub rejected: Vec<RejectedReload>,
    pub suppressed: Suppressed,
    pub devices: BTreeMap<String, DeviceTally>,
}

pub const SUPPRESSED_NOTE: &str = "denials the trail summarised during a scan or flood instead of writing them one by one; the trail does not say which device they were for, so they are gateway-wide and not in any device's figures";

pub const CHAIN_NOT_CHECKED: &str =
    "not checked by the report: run `moat audit verify FILE` to check the hash chain";

/// Reads the trail of `target` (or `file`, when given) over `window`.
/// Never fails: a trail that is standard output or cannot be read is
/// said so in `source.problem`.
pub fn read_target(target: &AuditTarget, window: &Window) -> Tally {
    let path = match target {
        AuditTarget::Stdout => {
            let mut t = Tally::default();
            t.source.file = "stdout".into();
            t.source.problem = Some(
                "the audit trail goes to standard output, which the report cannot read: pass --audit FILE with a copy of it (e.g. from the journal or the SIEM)".into(),
            );
            t.source.hash_chain = CHAIN_NOT_CHECKED.into();
            t.suppressed.note = SUPPRESSED_NOTE;
            return t;
        }
        AuditTarget::File(p) => p,
    };
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut t = read(std::io::BufReader::new(f), window);
            t.source.file = path.display().to_string();
            t.source.hash_chain = chain_verdict(path);
            t
        }
        Err(e) => {
            let mut t = Tally::default();
            t.source.file = path.display().to_string();
            t.source.problem = Some(format!(
                "the audit file {} cannot be read ({e}): the figures from the trail below are empty, not zero",
                path.display()
            ));
            t.source.hash_chain = CHAIN_NOT_CHECKED.into();
            t.suppressed.note = SUPPRESSED_NOTE;
            t
        }
    }
}

/// What `moat audit verify FILE` says of the whole file (not only the
/// period: the chain runs through it). A streaming pass at SHA-256 speed.
fn chain_verdict(path: &std::path::Path) -> String {
    use crate::audit::verify::{check, Outcome};
    let report = check(&[path.to_path_buf()]);
    match report.outcome {
        Outcome::Intact => format!("intact (moat audit verify): {}", report.summary.join("; ")),
        Outcome::Broken(what) => format!("ALTERED OR INCOMPLETE (moat audit verify): {what}"),
        Outcome::Unreadable(what) => format!("could not be checked: {what}"),
    }
}

/// Tallies the lines of `reader` whose `ts` lies in `window`.
pub fn read(mut reader: impl BufRead, window: &Window) -> Tally {
    let mut t = Tally::default();
    t.source.read = true;
    t.source.hash_chain = CHAIN_NOT_CHECKED.into();
    t.suppressed.note = SUPPRESSED_NOTE;
    // A connection refused by a guard is recorded by the guard and as a
    // `connection_denied`: counted once.
    let mut denied_conns: HashSet<(String, u64, String)> = HashSet::new();
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                t.source.problem = Some(format!("reading stopped at line {}: {e}", n + 1));
                break;
            }
        }
        n += 1;
        let line = trim(&buf);
        if line.is_empty() {
            continue;
        }
        t.source.lines_total += 1;
        let v = match serde_json::from_slice::<Value>(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                t.source.lines_not_json += 1;
                if t.source.lines_not_json_at.len() < NOT_JSON_LISTED {
                    t.source.lines_not_json_at.push(n);
                }
                continue;
            }
        };
        let Some(ms) = v["ts"].as_str().and_then(ts_millis) else {
            t.source.lines_without_ts += 1;
            continue;
        };
        if !window.contains_ms(ms) {
            continue;
        }
        t.source.lines_in_period += 1;
        t.line(&v, ms, window, &mut denied_conns);
    }
    t
}

impl Tally {
    fn device(&mut self, id: &str) -> &mut DeviceTally {
        self.devices.entry(id.to_string()).or_default()
    }

    fn deny(&mut self, device: &str, reason: &str, bucket: usize, buckets: usize) {
        let counts = self
            .device(device)
            .denials
            .entry(reason.to_string())
            .or_insert_with(|| vec![0; buckets]);
        counts[bucket] += 1;
    }

    fn line(
        &mut self,
        v: &Value,
        ms: u64,
        window: &Window,
        denied_conns: &mut HashSet<(String, u64, String)>,
    ) {
        let s = |k: &str| v[k].as_str().unwrap_or("");
        let ts = s("ts").to_string();
        let device = s("device");
        let bucket = window.bucket_of(ms);
        let buckets = window.bucket_count();
        let reason = || v["reason"].as_str().unwrap_or("unspecified").to_string();
        // Once per connection for connection-level refusals.
        let mut conn_denial = |t: &mut Tally, reason: String| {
            if let Some(id) = v["conn_id"].as_u64() {
                if !denied_conns.insert((device.to_string(), id, reason.clone())) {
                    return;
                }
            }
            t.deny(device, &reason, bucket, buckets);
        };
        match s("event") {
            "connection_denied" | "guard_violation" | "connection_revoked" => {
                conn_denial(self, reason())
            }
            "dicom_association" if s("outcome") == "rejected" => conn_denial(self, reason()),
            "http_request" if s("decision") == "denied" => {
                self.deny(device, &reason(), bucket, buckets)
            }
            "http_request" => self.allowed(v, device, false),
            "hl7_message" if s("decision") == "refused" => {
                self.deny(device, &reason(), bucket, buckets)
            }
            "connection_allowed" => self.allowed(v, device, true),
            "auth_succeeded" => {
                let user = s("user").to_string();
                *self.device(device).signed_in.entry(user).or_default() += 1;
            }
            "grant_opened" => {
                let granted = s("granted_device").to_string();
                let seen = GrantSeen {
                    ts,
                    user: s("user").into(),
                    service: s("granted_service").into(),
                    binding: binding(&v["binding"]),
                    until: unix_text(v["until"].as_u64()),
                    break_glass: v["break_glass"].as_bool().unwrap_or(false),
                };
                self.device(&granted).grants.push(seen);
            }
            "break_glass_used" => {
                let granted = s("granted_device").to_string();
                let seen = BreakGlassSeen {
                    ts,
                    user: s("user").into(),
                    service: s("granted_service").into(),
                    code_id: s("code_id").into(),
                    until: unix_text(v["until"].as_u64()),
                };
                self.device(&granted).break_glass.push(seen);
            }
            "reload_applied" => self.reload(v, ts),
            "reload_rejected" => self.rejected.push(RejectedReload {
                ts,
                trigger: s("trigger").into(),
                version_in_force: v["version_in_force"].as_u64().unwrap_or(0),
                errors: strings(&v["errors"]),
            }),
            "denials_suppressed" => {
                self.suppressed.count += v["count"].as_u64().unwrap_or(0);
                if let Some(by) = v["by_reason"].as_object() {
                    for (reason, n) in by {
                        *self.suppressed.by_reason.entry(reason.clone()).or_default() +=
                            n.as_u64().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }

    fn allowed(&mut self, v: &Value, device: &str, connection: bool) {
        let d = self.device(device);
        if connection {
            d.allowed_connections += 1;
        }
        if let Some(client) = v["client"].as_str() {
            d.clients.insert(client_address(client));
        }
        if let Some(p) = v["principal"].as_object() {
            let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
            let kind = p.get("kind").and_then(Value::as_str).unwrap_or("?");
            *d.principals.entry(format!("{kind}: {name}")).or_default() += 1;
        }
    }

    fn reload(&mut self, v: &Value, ts: String) {
        let changes = &v["changes"];
        let new_version = v["new_version"].as_u64().unwrap_or(0);
        let mut summary = Vec::new();
        let mut per_device: Vec<(String, String)> = Vec::new();
        for (field, what) in [
            ("devices_added", "device added"),
            ("devices_removed", "device removed"),
            ("devices_changed", "inventory changed"),
        ] {
            for d in strings(&changes[field]) {
                summary.push(format!("{d}: {what}"));
                per_device.push((d.clone(), what.to_string()));
            }
        }
        for (field, what) in [
            ("services_added", "service added"),
            ("services_removed", "service removed"),
            ("services_changed", "service changed"),
        ] {
            for s in strings(&changes[field]) {
                summary.push(format!("{s}: {what}"));
                let device = s.split('/').next().unwrap_or("").to_string();
                per_device.push((device, format!("{s}: {what}")));
            }
        }
        for a in changes["access"].as_array().into_iter().flatten() {
            let service = a["service"].as_str().unwrap_or("?");
            let mut parts = Vec::new();
            for (field, what) in [
                ("allow_added", "allow +"),
                ("allow_removed", "allow −"),
                ("deny_added", "deny +"),
                ("deny_removed", "deny −"),
            ] {
                let entries = strings(&a[field]);
                if !entries.is_empty() {
                    parts.push(format!("{what}{}", entries.join(", ")));
                }
            }
            let line = format!("{service}: {}", parts.join("; "));
            let device = service.split('/').next().unwrap_or("").to_string();
            summary.push(line.clone());
            per_device.push((device, line));
        }
        for (device, change) in per_device {
            self.device(&device).changes.push(DeviceChange {
                ts: ts.clone(),
                new_version,
                change,
            });
        }
        self.changes.push(ConfigChange {
            ts,
            trigger: v["trigger"].as_str().unwrap_or("").into(),
            old_version: v["old_version"].as_u64().unwrap_or(0),
            new_version,
            old_hash: v["old_hash"].as_str().unwrap_or("").into(),
            new_hash: v["new_hash"].as_str().unwrap_or("").into(),
            summary,
        });
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !b" \t\r\n".contains(b))
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// `ts` (RFC 3339, UTC) as Unix milliseconds.
pub fn ts_millis(ts: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(ts).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// Unix seconds as RFC 3339, UTC.
pub fn unix_text(secs: Option<u64>) -> String {
    match secs {
        Some(s) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        None => "?".into(),
    }
}

fn binding(v: &Value) -> String {
    if let Some(a) = v["address"].as_str() {
        format!("address {a}")
    } else if let Some(k) = v["certificate_spki_sha256"].as_str() {
        format!("certificate key {k}")
    } else {
        "?".into()
    }
}

/// The address of `address:port`, IPv4-mapped IPv6 shown as IPv4.
fn client_address(client: &str) -> String {
    let addr = match client.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip(),
        Err(_) => return client.to_string(),
    };
    match addr {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        v4 => v4.to_string(),
    }
}
