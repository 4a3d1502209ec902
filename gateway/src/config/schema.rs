//! The file schema: serde types that mirror `moat.toml` one to one.
//!
//! Nothing here is trusted yet. Values keep their spans so that the policy
//! compiler can point at the exact line and column of a problem. Unknown keys
//! are rejected everywhere (`deny_unknown_fields`): a misspelt `deny` must
//! never be silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub admin: AdminSection,
    /// Users, sessions and login settings for `access = "mfa"` services.
    pub auth: Option<AuthSection>,
    /// Named network sets, reusable by name in any allow or deny list.
    #[serde(default)]
    pub networks: BTreeMap<Spanned<String>, NetworkSetSection>,
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceSection>,
    /// `[siem]`: ship every audit event to a syslog collector over TLS
    /// (RFC 5424 messages, RFC 5425 transport), besides the audit file.
    pub siem: Option<Spanned<SiemSection>>,
}

/// `[siem]`: the syslog-over-TLS sink of the audit trail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemSection {
    /// The collector, `host:port` (6514 is the registered port).
    pub address: Spanned<String>,
    /// The name the collector's certificate must carry; defaults to the
    /// host part of `address`.
    pub server_name: Option<Spanned<String>>,
    /// PEM file of the CA(s) that sign the collector's certificate.
    pub ca: Spanned<String>,
    /// A client certificate and key, for collectors that require one.
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    /// Directory of the disk spool that holds events while the collector
    /// is unreachable.
    pub spool_dir: Spanned<String>,
    /// Size cap of the spool, e.g. "256MiB"; beyond it events are dropped
    /// (counted, logged and audited).
    pub spool_max_bytes: Option<Spanned<String>>,
    /// Syslog APP-NAME (default "moat") and HOSTNAME (default: the host's name).
    pub app_name: Option<Spanned<String>>,
    pub hostname: Option<Spanned<String>>,
    /// Syslog facility name (default "local4" ... any of RFC 5424's names).
    pub facility: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Where the audit trail goes: a file path, or "-" for standard output.
    #[serde(default = "default_audit_log")]
    pub audit_log: Spanned<String>,
    /// How long live connections may finish after SIGTERM before being cut.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// A policy without devices is refused unless this is set: an empty or
    /// cut-short file must never switch every listener off.
    #[serde(default)]
    pub allow_no_devices: bool,
    /// Length of every listener's accept queue (services and admin); the
    /// kernel caps it at `net.core.somaxconn`.
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: Spanned<u32>,
    /// How long before a device's `end_of_support` it counts as "ending
    /// soon", in months (default 24).
    #[serde(default = "default_support_warning_months")]
    pub support_warning_months: Spanned<u32>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            audit_log: default_audit_log(),
            shutdown_grace: default_shutdown_grace(),
            allow_no_devices: false,
            listen_backlog: default_listen_backlog(),
            support_warning_months: default_support_warning_months(),
        }
    }
}

fn default_support_warning_months() -> Spanned<u32> {
    Spanned::new(0..0, 24)
}

fn default_listen_backlog() -> Spanned<u32> {
    Spanned::new(0..0, 4096)
}

fn default_audit_log() -> Spanned<String> {
    Spanned::new(0..0, "-".to_string())
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Health, readiness and metrics. Loopback by default; never a device port.
    #[serde(default = "default_admin_listen")]
    pub listen: Spanned<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

fn default_admin_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9090".to_string())
}
fn default_true() -> bool {
    true
}

/// `[auth]`: who may sign in, and how sessions and logins behave.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// The users file (TOML; see `moat user`). Must not be readable by
    /// other users. Relative to this file's directory.
    pub users_file: Spanned<String>,
    /// The session key (created with mode 0600 on first start if missing).
    pub session_key_file: Spanned<String>,
    /// The key before the last rotation: its cookies are still accepted.
    pub previous_session_key_file: Option<Spanned<String>>,
    /// A session unused this long ends.
    #[serde(default = "default_session_idle")]
    pub session_idle_timeout: HumanDuration,
    /// A session ends this long after login, however it is used.
    #[serde(default = "default_session_absolute")]
    pub session_absolute_timeout: HumanDuration,
    /// TOTP steps accepted either side of now: 0, 1 or 2.
    #[serde(default = "default_totp_skew")]
    pub totp_skew: Spanned<u8>,
    /// Failed logins within `lockout_window` that lock the user (or the
    /// source address) for `lockout_duration`.
    #[serde(default = "default_lockout_failures")]
    pub lockout_failures: Spanned<u32>,
    #[serde(default = "default_lockout_window")]
    pub lockout_window: HumanDuration,
    #[serde(default = "default_lockout_duration")]
    pub lockout_duration: HumanDuration,
    /// Login attempts one source address may make, before any password
    /// work: "10/min burst 5" by default.
    #[serde(default = "default_login_rate")]
    pub login_rate: Spanned<String>,
    /// Password hashes computed at once (each takes ~20 MiB and tens of
    /// milliseconds of one core).
    #[serde(default = "default_max_concurrent_hashes")]
    pub max_concurrent_hashes: Spanned<u32>,
    /// Where `moat breakglass issue` keeps the argon2 hashes of sealed
    /// emergency codes, and where moat marks a code used (mode 0600).
    /// Needed by services with `break_glass = true`.
    pub break_glass_file: Option<Spanned<String>>,
}

fn default_session_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_session_absolute() -> HumanDuration {
    HumanDuration(Duration::from_secs(12 * 3600))
}
fn default_totp_skew() -> Spanned<u8> {
    Spanned::new(0..0, 1)
}
fn default_lockout_failures() -> Spanned<u32> {
    Spanned::new(0..0, 5)
}
fn default_lockout_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
fn default_lockout_duration() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_login_rate() -> Spanned<String> {
    Spanned::new(0..0, "10/min burst 5".to_string())
}
fn default_max_concurrent_hashes() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

/// `access` of a service: who may use it once the network controls pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// Machine traffic: network and client-certificate controls only.
    #[default]
    Network,
    /// People: password and TOTP through moat's portal, then a session.
    Mfa,
}

fn default_access() -> Spanned<AccessKind> {
    Spanned::new(0..0, AccessKind::Network)
}

/// A network set: inline entries, a plain-text file of entries, or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSetSection {
    #[serde(default)]
    pub cidrs: Vec<Spanned<String>>,
    /// One CIDR or address per line, `#` starts a comment. Relative paths are
    /// resolved against the directory of the main config file.
    pub file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub id: Spanned<String>,
    pub name: String,
    #[serde(default)]
    pub manufacturer: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub owner: String,
    /// The maker's end-of-support date, `YYYY-MM-DD`.
    pub end_of_support: Option<Spanned<toml::value::Datetime>>,
    /// Inventory fields, all optional: shown by `moat check`, `/devices`,
    /// the `moat_device_info` metric and the evidence report.
    #[serde(default)]
    pub serial_number: String,
    /// Unique Device Identifier (the UDI-DI and UDI-PI as printed).
    #[serde(default)]
    pub udi: String,
    /// Firmware or software version running on the device.
    #[serde(default)]
    pub software_version: String,
    pub lifecycle: Option<Spanned<Lifecycle>>,
    /// Software bill of materials: a file, and its SHA-256 that `moat
    /// check` verifies.
    pub sbom: Option<Spanned<String>>,
    pub sbom_sha256: Option<Spanned<String>>,
    /// The maker's MDS2 form (Manufacturer Disclosure Statement for
    /// Medical Device Security): a path or a document reference.
    #[serde(default)]
    pub mds2: String,
    /// Free-text notes on known vulnerabilities (CVE ids, advisories).
    #[serde(default)]
    pub known_vulnerabilities: Vec<String>,
    #[serde(rename = "service")]
    pub services: Vec<ServiceSection>,
}

/// Where a device stands in its life at the hospital.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// In clinical use.
    InService,
    /// In use, but the maker no longer supports it (the legacy case).
    Legacy,
    /// Being replaced; a successor is ordered or installed.
    BeingReplaced,
    /// Out of clinical use, awaiting disposal.
    Retired,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::InService => "in-service",
            Lifecycle::Legacy => "legacy",
            Lifecycle::BeingReplaced => "being-replaced",
            Lifecycle::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw TCP (L4): DICOM, HL7 MLLP, anything.
    Tcp,
    /// HTTP/1.1 and h2 (L7), for device web UIs.
    Http,
    /// moat's own portal on a listener of its own (HTTPS): sign in, see
    /// the devices one may reach, open grants to `mfa` TCP services.
    /// Never proxies anything.
    Portal,
}

/// What happens to live connections when the grant that admitted them ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnGrantEnd {
    /// Closed within a second (default).
    #[default]
    Close,
    /// Left to finish; new connections are refused.
    Drain,
}

/// What a service does while the audit trail cannot be written (a full
/// disk): keep serving, with the loss counted and reported, or refuse
/// every new connection and request until recording resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// Fail open (default): a clinical device stays reachable.
    #[default]
    Serve,
    /// Fail closed: no unrecorded access (`audit_unavailable`).
    Refuse,
}

impl OnAuditFailure {
    /// As written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            OnAuditFailure::Serve => "serve",
            OnAuditFailure::Refuse => "refuse",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: Spanned<String>,
    pub protocol: Protocol,
    pub listen: Spanned<String>,
    /// `host:port` of the device on its isolated segment. Required, except
    /// on a `portal`, which has none.
    pub upstream: Option<Spanned<String>>,
    /// Source networks admitted: CIDRs, addresses or network-set names.
    /// Required: admitting everyone must be written out as `0.0.0.0/0`.
    pub allow: Spanned<Vec<Spanned<String>>>,
    /// Source networks refused even when an allow entry matches.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// TLS termination settings. Without them `plaintext = true` is required.
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub plaintext: bool,
    #[serde(default = "default_max_connections")]
    pub max_connections: Spanned<u32>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// "serve" (default) or "refuse" while the audit trail cannot be
    /// written.
    #[serde(default)]
    pub on_audit_failure: OnAuditFailure,
    /// HTTP settings; only for `protocol = "http"`.
    pub http: Option<HttpSection>,
    /// Rate limits and the in-flight cap that shield the device.
    #[serde(default)]
    pub limits: LimitsSection,
    /// "network" (default) or "mfa". MFA is added to the network controls,
    /// never instead of them.
    #[serde(default = "default_access")]
    pub access: Spanned<AccessKind>,
    /// `access = "mfa"`: the users admitted, by name.
    #[serde(default)]
    pub users: Vec<Spanned<String>>,
    /// `access = "mfa"`: the groups whose members are admitted.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// `mfa` TCP services: the longest grant a person may open (default
    /// 30 min, at most 12 h).
    pub max_grant: Option<Spanned<HumanDuration>>,
    /// `mfa` TCP services: close live connections when their grant ends
    /// (default), or let them drain.
    pub on_grant_end: Option<Spanned<OnGrantEnd>>,
    /// `mfa` TCP services: a one-time break-glass code may stand in for
    /// the TOTP code (needs `[auth] break_glass_file`).
    pub break_glass: Option<Spanned<bool>>,
    /// The grant a break-glass code opens, at most (default 15 min).
    pub break_glass_grant: Option<Spanned<HumanDuration>>,
    /// `tcp` services: check the protocol before it reaches the device
    /// ("dicom" or "hl7-mllp"), with its settings in the table of the same
    /// name (`[device.service.dicom]`, `[device.service.hl7]`).
    pub guard: Option<Spanned<GuardKind>>,
    pub dicom: Option<Spanned<DicomSection>>,
    pub hl7: Option<Spanned<Hl7Section>>,
}

/// A protocol guard on a `tcp` service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GuardKind {
    #[serde(rename = "dicom")]
    Dicom,
    #[serde(rename = "hl7-mllp")]
    Hl7Mllp,
}

/// `guard = "dicom"`: what an association must ask for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSection {
    /// The device's own AE title: the called AE title must be this.
    pub ae_title: Spanned<String>,
    /// The calling AE titles admitted (the modalities, workstations, PACS).
    pub calling_ae_titles: Spanned<Vec<Spanned<String>>>,
    /// SOP classes a presentation context may propose: names
    /// ("verification", "storage", "find", "move", "get", "worklist",
    /// "storage-commitment", "mpps"), UIDs, or UID prefixes ending ".*".
    /// Default: verification and storage.
    pub abstract_syntaxes: Option<Spanned<Vec<Spanned<String>>>>,
    /// "reject" (default): one refused context rejects the association;
    /// "drop": only the refused contexts are refused.
    pub refused_contexts: Option<Spanned<RefusedContexts>>,
    /// The largest PDU either side may send (bytes; default 131072).
    pub max_pdu_length: Option<Spanned<u32>>,
    /// How long the A-ASSOCIATE-RQ, and then the device's answer, may take
    /// (default 30s).
    pub association_timeout: Option<Spanned<HumanDuration>>,
}

/// What happens to an association that proposes a refused SOP class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedContexts {
    #[default]
    Reject,
    Drop,
}

/// `guard = "hl7-mllp"`: which messages may reach the device. Every list
/// matches the first component of its field exactly; "*" admits any.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Section {
    /// MSH-3. Required.
    pub sending_applications: Spanned<Vec<Spanned<String>>>,
    /// MSH-4 (default: any).
    pub sending_facilities: Option<Spanned<Vec<Spanned<String>>>>,
    /// MSH-5 (default: any).
    pub receiving_applications: Option<Spanned<Vec<Spanned<String>>>>,
    /// MSH-6 (default: any).
    pub receiving_facilities: Option<Spanned<Vec<Spanned<String>>>>,
    /// MSH-9: "ORU^R01" (type and trigger event) or "ADT" (any trigger).
    /// Required.
    pub message_types: Spanned<Vec<Spanned<String>>>,
    /// The largest message, framing excluded (bytes; default 1 MiB).
    pub max_message_bytes: Option<Spanned<u32>>,
    /// A message's frame must be complete this long after its start byte
    /// (default 30s).
    pub frame_timeout: Option<Spanned<HumanDuration>>,
}

/// Rates are written "20/s", "600/min" or "20/s burst 40".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// New connections per second from one client address (IPv6: per /64).
    pub connections_per_client: Option<Spanned<String>>,
    /// HTTP requests from one client address.
    pub requests_per_client: Option<Spanned<String>>,
    /// HTTP requests from one authenticated identity (client certificate).
    pub requests_per_identity: Option<Spanned<String>>,
    /// All clients together: new connections (TCP) or requests (HTTP).
    pub device_rate: Option<Spanned<String>>,
    /// HTTP requests at the device at once.
    pub max_in_flight: Option<Spanned<u32>>,
    /// Connections one client address (IPv6: /64) may hold at once.
    /// Default: a quarter of `max_connections`, at least min(8, it).
    pub max_connections_per_client: Option<Spanned<u32>>,
    /// How long a request (HTTP: for an in-flight slot) or a connection
    /// (TCP: for one of `max_connections`) may wait before being shed.
    /// Defaults: 100ms for HTTP, 0 (refuse at once) for TCP.
    pub queue_timeout: Option<HumanDuration>,
}

fn default_max_connections() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificate chains with their keys. The first is the default; the
    /// others are chosen by SNI against their DNS names.
    pub certificates: Spanned<Vec<CertificateSection>>,
    /// ALPN protocols offered, in order of preference.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// "1.2" (default) or "1.3". Nothing older is ever offered.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Offer session resumption (TLS 1.3 tickets, a TLS 1.2 session cache),
    /// so returning clients skip the full handshake. On by default.
    #[serde(default = "default_true")]
    pub session_resumption: bool,
    /// CA bundle that client certificates must chain to. Setting it turns
    /// client-certificate verification on.
    pub client_ca: Option<Spanned<String>>,
    /// "required" (default when `client_ca` is set) or "optional".
    pub client_cert: Option<Spanned<ClientCertMode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    Required,
    Optional,
}

/// A duration written for humans: "500ms", "30s", "10m", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a duration such as "500ms", "30s" or "10m""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                const MAX: Duration = Duration::from_secs(7 * 24 * 3600);
                humantime::parse_duration(s)
                    .map_err(|e| e.to_string())
                    .and_then(|d| {
                        if d > MAX {
                            Err("longer than 7 days".to_string())
                        } else {
                            Ok(HumanDuration(d))
                        }
                    })
                    .map_err(|e| {
                        E::custom(format!(
                            "{s:?} is not a duration ({e}); write e.g. \"30s\" or \"10m\""
                        ))
                    })
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// L7 settings of an HTTP service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Request rules, first match wins; requests matching none are allowed
    /// (the source allowlist has already admitted the client).
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSection>,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Whole request head must arrive within this (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Longest wait for the next piece of a request body (like nginx's
    /// `client_body_timeout`).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// Slowest average a request body may arrive at once one
    /// `body_read_timeout` has passed: "1KiB/s", "500B/s"; "0": no minimum.
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: Spanned<String>,
    /// The device must start answering within this.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: HumanDuration,
    /// An idle keep-alive connection is closed after this.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// Rewrite `Host` for the device: "upstream" (its host:port) or a name.
    pub host_rewrite: Option<String>,
    /// Add HSTS (over TLS), X-Content-Type-Options and X-Frame-Options.
    #[serde(default = "default_true")]
    pub hardening_headers: bool,
    /// Record allowed requests in the audit trail (denials always are).
    #[serde(default = "default_true")]
    pub audit_allowed: bool,
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// TLS to the device. Absent: plaintext on the isolated segment.
    pub upstream_tls: Option<UpstreamTlsSection>,
    /// The names clients may put in `Host` / `:authority` (DNS names,
    /// `*.` wildcards, IP addresses). Absent: the certificates' names and
    /// the listen address.
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// `access = "mfa"`: a header that tells the device who signed in
    /// (e.g. "X-Remote-User"). Whatever a client sends in it is removed.
    pub user_header: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub action: RuleAction,
    /// Methods this rule applies to; empty means any.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// A path glob: `*` matches any run of characters (slashes included).
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// CA bundle the device certificate must chain to.
    pub ca: Option<Spanned<String>>,
    /// Or: the SHA-256 of the device certificate (hex, colons allowed).
    /// Legacy devices rarely have certificates a CA would sign.
    pub pin_sha256: Option<Spanned<String>>,
    /// Name to send as SNI and verify; defaults to the upstream host.
    pub server_name: Option<String>,
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_body_read_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_min_body_rate() -> Spanned<String> {
    Spanned::new(0..0, "1KiB/s".to_string())
}
fn default_response_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_concurrent_streams() -> u32 {
    100
}
