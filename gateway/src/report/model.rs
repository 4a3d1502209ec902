//! The report itself: what every format shows. The JSON format is this
//! model serialised as it is; HTML and Markdown render the same fields.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::{AccessEntry, Device, SupportStatus};

#[derive(Debug, Serialize)]
pub struct Report {
    pub moat_version: &'static str,
    /// RFC 3339, UTC.
    pub generated_at: String,
    pub period: Period,
    pub policy: PolicyInfo,
    pub audit: AuditSource,
    /// Reloads applied in the period, oldest first.
    pub configuration_changes: Vec<ConfigChange>,
    /// Reloads rejected in the period (the policy in force stayed).
    pub reloads_rejected: Vec<RejectedReload>,
    /// Denials the trail summarised instead of writing one by one. The
    /// trail does not say which device they were for: a gateway-wide figure.
    pub denials_suppressed: Suppressed,
    pub devices: Vec<DeviceReport>,
}

#[derive(Debug, Serialize)]
pub struct Period {
    pub since: String,
    pub until: String,
    pub since_unix: u64,
    pub until_unix: u64,
    /// `day`, or `hour` when the period is two days or shorter.
    pub bucket: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PolicyInfo {
    pub version: u64,
    pub content_hash: String,
    /// Every file the policy was built from.
    pub sources: Vec<String>,
    /// Where the audit trail goes: a file, or standard output.
    pub audit_log: String,
    /// `[siem]`: the trail is also sent off the machine (syslog over TLS).
    pub siem: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct AuditSource {
    /// The file read, or `stdout`.
    pub file: String,
    /// Whether the file could be read at all.
    pub read: bool,
    /// Why nothing (or not everything) could be read, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub lines_total: u64,
    /// Lines whose `ts` lies inside the period (the ones tallied).
    pub lines_in_period: u64,
    /// Lines that are not JSON objects: counted, never fatal.
    pub lines_not_json: u64,
    /// The first few of them (1-based line numbers).
    pub lines_not_json_at: Vec<u64>,
    /// JSON lines without a readable `ts`.
    pub lines_without_ts: u64,
    /// What `moat audit verify` says of the file read (or why it was not checked).
    pub hash_chain: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigChange {
    pub ts: String,
    pub trigger: String,
    pub old_version: u64,
    pub new_version: u64,
    pub old_hash: String,
    pub new_hash: String,
    /// One line per device, service or access change of the diff.
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedReload {
    pub ts: String,
    pub trigger: String,
    pub version_in_force: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Suppressed {
    pub count: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub note: &'static str,
}

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// The inventory, every field as the policy records it.
    pub inventory: Device,
    pub support_status: SupportStatus,
    pub support: &'static str,
    /// From when the device counts as ending soon.
    pub support_warning_from: Option<String>,
    pub services: Vec<ServiceReport>,
    /// The configuration changes of the period that touched this device.
    pub changes: Vec<DeviceChange>,
    pub denials: Denials,
    pub access: WhoHadAccess,
    /// The guidance's compensating controls, each judged from the policy
    /// and the trail.
    pub controls: Vec<Control>,
    /// The names of the controls judged missing.
    pub missing_controls: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub name: String,
    pub protocol: &'static str,
    pub listen: String,
    pub upstream: String,
    /// `None`: plaintext.
    pub tls: Option<TlsReport>,
    pub plaintext: bool,
    pub allow: Vec<AccessEntry>,
    pub deny: Vec<AccessEntry>,
    pub access_mode: AccessModeReport,
    /// Each limit as text (`connections_per_client 10/s`, ...).
    pub limits: Vec<String>,
    pub guard: Option<String>,
    pub timeouts: Timeouts,
    pub max_connections: u32,
    /// What the service does while the audit trail cannot be written:
    /// `serve` (fail open) or `refuse` (fail closed).
    pub on_audit_failure: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TlsReport {
    pub min_version: &'static str,
    /// `required`, `optional` or `none`.
    pub client_certificates: &'static str,
    pub certificates: Vec<CertificateReport>,
}

#[derive(Debug, Serialize)]
pub struct CertificateReport {
    pub names: Vec<String>,
    pub not_after: String,
    pub expired: bool,
}

#[derive(Debug, Serialize)]
pub struct AccessModeReport {
    /// `network`, `mfa`, `grant` or `portal`.
    pub mode: &'static str,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Every user of the users file (a portal without users or groups).
    pub anyone: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grant: Option<String>,
    /// The grant a break-glass code opens, when the service takes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Timeouts {
    pub connect: String,
    pub idle: String,
    pub handshake: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
}

#[derive(Debug, Serialize)]
pub struct HttpTimeouts {
    pub header_read: String,
    pub body_read: String,
    pub response: String,
    pub keepalive: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceChange {
    pub ts: String,
    pub new_version: u64,
    pub change: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Denials {
    /// The buckets' labels: `YYYY-MM-DD`, or `YYYY-MM-DDTHH:00Z`.
    pub buckets: Vec<String>,
    /// Per reason, the count in each bucket (same order as `buckets`).
    pub by_reason: BTreeMap<String, Vec<u64>>,
    pub totals: BTreeMap<String, u64>,
    pub total: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct WhoHadAccess {
    /// Per `mfa` or grant service, the enabled users its rule admits.
    pub permitted: Vec<PermittedUsers>,
    /// Users who signed in (`auth_succeeded`), with how many times.
    pub signed_in: BTreeMap<String, u64>,
    pub grants: Vec<GrantSeen>,
    pub break_glass: Vec<BreakGlassSeen>,
    /// Client-certificate and session identities seen on allowed traffic.
    pub principals: BTreeMap<String, u64>,
    pub allowed_connections: u64,
    pub distinct_client_addresses: usize,
}

#[derive(Debug, Serialize)]
pub struct PermittedUsers {
    pub service: String,
    pub users: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrantSeen {
    pub ts: String,
    pub user: String,
    pub service: String,
    /// `address 10.0.0.1` or `certificate <spki>`.
    pub binding: String,
    pub until: String,
    pub break_glass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakGlassSeen {
    pub ts: String,
    pub user: String,
    pub service: String,
    pub code_id: String,
    pub until: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    InPlace,
    Partly,
    Missing,
}

impl ControlStatus {
    pub fn describe(self) -> &'static str {
        match self {
            ControlStatus::InPlace => "in place",
            ControlStatus::Partly => "partly",
            ControlStatus::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    /// Stable key, e.g. `encryption_in_transit`.
    pub id: &'static str,
    pub name: &'static str,
    pub status: ControlStatus,
    pub evidence: Vec<String>,
    /// What is missing, in one plain sentence (not `in place`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
}
