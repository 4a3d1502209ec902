//! Prometheus metrics, served on the admin listener at `/metrics`.
//! Denials are labelled with the same [`Reason`] names as the audit trail.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::controls::Reason;

pub mod inventory;
pub mod process;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub device: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub device: String,
    pub service: String,
    /// "allowed" or a denial reason.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub device: String,
    pub service: String,
    /// "from_client" or "to_client".
    pub direction: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<OutcomeLabels, Counter>,
    pub active: Family<ServiceLabels, Gauge>,
    pub bytes: Family<ByteLabels, Counter>,
    pub audit_dropped: Counter<u64, AtomicU64>,
    /// 1 while the audit trail is being written, 0 while it cannot be.
    pub audit_writable: Gauge,
    pub policy_version: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub tls_handshakes: Family<ServiceLabels, Gauge>,
    /// Logins by outcome: "succeeded" or an `auth_failed` reason.
    pub logins: Family<OutcomeLabels, Counter>,
    pub sessions_ended: Family<OutcomeLabels, Counter>,
    pub lockouts: Family<LockoutLabels, Counter>,
    /// Password hashes being computed, and logins waiting for a hash slot.
    pub password_hashes: Gauge,
    pub password_hash_waiting: Gauge,
    /// Grants opened (`break_glass` "true"/"false") and ended (by reason).
    pub grants_opened: Family<GrantLabels, Counter>,
    pub grants_ended: Family<OutcomeLabels, Counter>,
    /// Grants open now, per service.
    pub grants_open: Family<ServiceLabels, Gauge>,
    /// Break-glass codes used: meant for an alert (any increase).
    pub break_glass_used: Family<ServiceLabels, Counter>,
    /// Protocol guards: associations (DICOM) or messages (HL7) by outcome,
    /// and refusals and violations by reason.
    pub guard_decisions: Family<GuardLabels, Counter>,
    pub guard_refusals: Family<GuardLabels, Counter>,
    /// Inventory, support status, certificate expiry and the SIEM sink:
    /// set at each scrape.
    pub inventory: inventory::InventoryMetrics,
    /// Memory, descriptors and tasks of the process: set at each scrape.
    pub process: process::ProcessMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub device: String,
    pub service: String,
    /// "dicom" or "hl7-mllp".
    pub guard: &'static str,
    /// decisions: "accepted", "rejected", "rejected_by_device", "aborted"
    /// (DICOM), "forwarded", "refused" (HL7); refusals: a reason.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabels {
    pub device: String,
    pub service: String,
    /// "true" when a break-glass code opened it.
    pub break_glass: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockoutLabels {
    /// "user" or "source".
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// "applied" or "rejected".
    pub result: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moat");
        let connections = Family::<OutcomeLabels, Counter>::default();
        let active = Family::<ServiceLabels, Gauge>::default();
        let bytes = Family::<ByteLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let audit_writable = Gauge::default();
        let policy_version = Gauge::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        let tls_handshakes = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "connections",
            "Connections by outcome (allowed or denial reason)",
            connections.clone(),
        );
        registry.register(
            "connections_active",
            "Connections currently proxied",
            active.clone(),
        );
        registry.register("bytes", "Bytes proxied", bytes.clone());
        registry.register(
            "audit_dropped",
            "Audit events lost: the queue was full, or the file would not take them (a full disk)",
            audit_dropped.clone(),
        );
        registry.register(
            "audit_writable",
            "1 while the audit trail is being written; 0 while writes fail (services with on_audit_failure = \"refuse\" refuse all)",
            audit_writable.clone(),
        );
        registry.register(
            "policy_version",
            "Version of the policy in force",
            policy_version.clone(),
        );
        registry.register("reloads", "Policy reloads by result", reloads.clone());
        registry.register(
            "http_requests",
            "HTTP requests by outcome (allowed or denial reason)",
            requests.clone(),
        );
        registry.register(
            "tls_handshakes_in_progress",
            "TLS handshakes under way; each holds a descriptor and a connection slot",
            tls_handshakes.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        let sessions_ended = Family::<OutcomeLabels, Counter>::default();
        let lockouts = Family::<LockoutLabels, Counter>::default();
        let password_hashes = Gauge::default();
        let password_hash_waiting = Gauge::default();
        registry.register(
            "logins",
            "Portal logins by outcome (succeeded or the auth_failed reason)",
            logins.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions ended, by reason (logout, idle, absolute, revoked)",
            sessions_ended.clone(),
        );
        registry.register(
            "auth_lockouts",
            "Users or source addresses locked out after failed logins",
            lockouts.clone(),
        );
        registry.register(
            "password_hashes_in_progress",
            "Password hashes being computed (capped by auth.max_concurrent_hashes)",
            password_hashes.clone(),
        );
        registry.register(
            "password_hashes_waiting",
            "Logins waiting for a password-hash slot",
            password_hash_waiting.clone(),
        );
        let grants_opened = Family::<GrantLabels, Counter>::default();
        let grants_ended = Family::<OutcomeLabels, Counter>::default();
        let grants_open = Family::<ServiceLabels, Gauge>::default();
        let break_glass_used = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "grants_opened",
            "Grants opened to mfa TCP services (break_glass: opened with an emergency code)",
            grants_opened.clone(),
        );
        registry.register(
            "grants_ended",
            "Grants ended, by reason (outcome: expired, revoked_by_user, revoked_by_ops, user_disabled, ...)",
            grants_ended.clone(),
        );
        registry.register(
            "grants_open",
            "Grants open now, per service",
            grants_open.clone(),
        );
        registry.register(
            "break_glass_used",
            "Break-glass codes used (alert on any increase)",
            break_glass_used.clone(),
        );
        let guard_decisions = Family::<GuardLabels, Counter>::default();
        let guard_refusals = Family::<GuardLabels, Counter>::default();
        registry.register(
            "guard_decisions",
            "Protocol guards: DICOM associations or HL7 messages by outcome",
            guard_decisions.clone(),
        );
        registry.register(
            "guard_refusals",
            "Protocol guards: refusals and violations by reason",
            guard_refusals.clone(),
        );
        let inventory = inventory::InventoryMetrics::register(&mut registry);
        let process = process::ProcessMetrics::register(&mut registry);
        Metrics {
            inventory,
            process,
            guard_decisions,
            guard_refusals,
            grants_opened,
            grants_ended,
            grants_open,
            break_glass_used,
            logins,
            sessions_ended,
            lockouts,
            password_hashes,
            password_hash_waiting,
            registry,
            connections,
            active,
            bytes,
            audit_dropped,
            audit_writable,
            policy_version,
            reloads,
            requests,
            tls_handshakes,
        }
    }

    /// Counts a TLS handshake in progress until the guard is dropped, on
    /// whichever path the handshake ends.
    pub fn tls_handshake(&self, device: &str, service: &str) -> InProgress {
        let gauge = self
            .tls_handshakes
            .get_or_create(&ServiceLabels {
                device: device.to_string(),
                service: service.to_string(),
            })
            .clone();
        gauge.inc();
        InProgress(gauge)
    }

    pub fn login(&self, device: &str, service: &str, outcome: &'static str) {
        self.logins
            .get_or_create(&OutcomeLabels {
                device: device.to_string(),
                service: service.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn session_ended(&self, device: &str, service: &str, reason: &'static str) {
        self.sessions_ended
            .get_or_create(&OutcomeLabels {
                device: device.to_string(),
                service: service.to_string(),
                outcome: reason,
            })
            .inc();
    }

    /// Counts one guard decision (an association, a message) and, when it
    /// was a refusal or a violation, its reason.
    pub fn guard(
        &self,
        device: &str,
        service: &str,
        guard: &'static str,
        outcome: &'static str,
        reason: Option<Reason>,
    ) {
        let mut labels = GuardLabels {
            device: device.to_string(),
            service: service.to_string(),
            guard,
            outcome,
        };
        self.guard_decisions.get_or_create(&labels).inc();
        if let Some(reason) = reason {
            labels.outcome = reason.as_str();
            self.guard_refusals.get_or_create(&labels).inc();
        }
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts a connection: allowed, or refused for a reason.
    pub fn outcome(&self, device: &str, service: &str, outcome: Result<(), Reason>) {
        self.outcome_counter(&self.connections, device, service, outcome)
            .inc();
    }

    /// The HTTP request counter for one outcome of a service.
    pub fn request_counter(
        &self,
        device: &str,
        service: &str,
        outcome: Result<(), Reason>,
    ) -> Counter {
        self.outcome_counter(&self.requests, device, service, outcome)
    }

    fn outcome_counter(
        &self,
        family: &Family<OutcomeLabels, Counter>,
        device: &str,
        service: &str,
        outcome: Result<(), Reason>,
    ) -> Counter {
        let outcome = match outcome {
            Ok(()) => "allowed",
            Err(r) => r.as_str(),
        };
        family
            .get_or_create(&OutcomeLabels {
                device: device.to_string(),
                service: service.to_string(),
                outcome,
            })
            .clone()
    }

    /// The registry in OpenMetrics text (what prometheus-client writes).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// A scrape's answer for its `Accept` header: (content type, body).
    /// OpenMetrics when the client prefers it (Prometheus does), otherwise
    /// the Prometheus text format 0.0.4 that every scraper and `curl` reads.
    pub fn render(&self, accept: &str) -> (&'static str, String) {
        let body = self.encode();
        if prefers_openmetrics(accept) {
            (OPENMETRICS, body)
        } else {
            (PROMETHEUS_TEXT, to_prometheus_text(&body))
        }
    }
}

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A decrement on drop; see [`Metrics::tls_handshake`].
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Whether `accept` ranks OpenMetrics above plain text. A media range
/// named exactly beats `type/*`, which beats `*/*` (RFC 9110 12.5.1); a tie
/// or no preference gets plain text.
pub fn prefers_openmetrics(accept: &str) -> bool {
    // Best q for: exact, type/*, */*. Index 0: OpenMetrics, 1: text.
    let mut q = [[None::<f32>; 3]; 2];
    for range in accept.split(',') {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        let slots: &[(usize, usize)] = match media.as_str() {
            "application/openmetrics-text" => &[(0, 0)],
            "text/plain" => &[(1, 0)],
            "application/*" => &[(0, 1)],
            "text/*" => &[(1, 1)],
            "*/*" => &[(0, 2), (1, 2)],
            _ => &[],
        };
        for &(format, level) in slots {
            let best = q[format][level].get_or_insert(weight);
            *best = best.max(weight);
        }
    }
    let rank = |levels: [Option<f32>; 3]| levels.into_iter().flatten().next().unwrap_or(0.0);
    let (openmetrics, text) = (rank(q[0]), rank(q[1]));
    openmetrics > 0.0 && openmetrics > text
}

/// OpenMetrics text → Prometheus text format 0.0.4: a counter family is
/// named with its `_total` suffix in HELP and TYPE, `_created` samples,
/// exemplars, `# UNIT` and `# EOF` are left out, `unknown` is `untyped`,
/// and timestamps are milliseconds.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut types = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some((name, ty)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            types.insert(name, ty);
        }
    }
    // The 0.0.4 name of a family and its type there.
    let family = |name: &str| -> (String, &'static str) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), "counter"),
            Some("gauge") => (name.to_string(), "gauge"),
            Some("histogram") => (name.to_string(), "histogram"),
            Some("summary") => (name.to_string(), "summary"),
            Some("info") => (format!("{name}_info"), "gauge"),
            Some("stateset") => (name.to_string(), "gauge"),
            _ => (name.to_string(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            let (name, ty) = family(name);
            out.push_str(&format!("# TYPE {name} {ty}\n"));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {}\n", family(name).0, help_004(help)));
        } else if line.starts_with('#') || line.is_empty() {
            // # UNIT, # EOF, comments.
        } else if let Some(sample) = sample_line(line, &types) {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

/// 0.0.4 help text escapes only `\\` and `\n`; OpenMetrics also `\"`.
fn help_004(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            // A lone trailing backslash, escaped for 0.0.4.
            None => out.push_str("\\\\"),
        }
    }
    out
}

/// One OpenMetrics sample in 0.0.4 form, or `None` for one to leave out.
fn sample_line(line: &str, types: &std::collections::HashMap<&str, &str>) -> Option<String> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if let Some(base) = name.strip_suffix("_created") {
        if matches!(
            types.get(base),
            Some(&("counter" | "histogram" | "summary"))
        ) {
            return None;
        }
    }
    // The label set, skipping quoted values (which may hold `}` or ` # `).
    let mut end = name_end;
    if line[name_end..].starts_with('{') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[name_end..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    end = name_end + i + 1;
                    break;
                }
                _ => {}
            }
        }
    }
    let rest = &line[end..];
    let rest = rest
        .split_once(" # ")
        .map_or(rest, |(value, _exemplar)| value);
    let mut fields = rest.split_whitespace();
    let value = fields.next()?;
    let mut sample = format!("{} {value}", &line[..end]);
    if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
        sample.push_str(&format!(" {}", (ts * 1000.0).round() as i64));
    }
    Some(sample)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
