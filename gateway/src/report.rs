//! The evidence report (`moat report`, admin `/report`): per device, the
//! inventory and support status, the controls in force, the configuration
//! changes and denials over a period (from the audit trail), who had
//! access, and which of the guidance's compensating controls are in place
//! or missing. See docs/report.md.
//!
//! - [`model`]: the report (the JSON format is the model serialised).
//! - [`trail`]: the audit trail over the period, as tallies.
//! - [`controls`]: the compensating-control verdicts.
//! - [`html`], [`markdown`], [`svg`]: the renderings.

pub mod controls;
pub mod html;
pub mod markdown;
pub mod model;
pub mod svg;
pub mod tables;
pub mod trail;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use hyper::StatusCode;

use crate::auth::AccessMode;
use crate::config::schema::{ClientCertMode, Protocol, TlsVersion};
use crate::policy::{AuditTarget, Policy, Service};
use crate::runtime::Runtime;
use model::*;

/// `moat report -c moat.toml [--audit FILE] [--since 30d] --format html|md|json`
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The audit trail to read (default: the policy's `gateway.audit_log`).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// The period covered, back from now (e.g. 30d, 12h).
    #[arg(long, default_value = "30d")]
    pub since: humantime::Duration,
    /// html, md (Markdown) or json.
    #[arg(long, default_value = "html", value_parser = Format::parse)]
    pub format: Format,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "html" => Ok(Format::Html),
            "md" | "markdown" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown report format {other:?}: use html, md or json"
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Markdown => "text/markdown; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

/// The longest period a report covers (ten years): bounds the buckets.
const MAX_PERIOD: Duration = Duration::from_secs(10 * 366 * 86_400);

/// A `since` value: a duration such as `30d` or `12h`, at least a second.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("since={s:?} is not a duration like 30d or 12h: {e}"))?;
    check_since(d)
}

fn check_since(d: Duration) -> Result<Duration, String> {
    if d < Duration::from_secs(1) {
        return Err("since must be at least 1s".into());
    }
    if d > MAX_PERIOD {
        return Err("since must be at most 10 years".into());
    }
    Ok(d)
}

pub fn run(args: ReportArgs) -> ExitCode {
    let since = match check_since(args.since.into()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("moat report: --since: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match crate::policy::load(&args.config, 1) {
        Ok(p) => p,
        Err(errors) => {
            // As `moat check` prints them.
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); nothing applied",
                args.config.display(),
                errors.len()
            );
            return ExitCode::from(2);
        }
    };
    let now = crate::runtime::clock::Clock::from_env().now();
    let report = build(&policy, now, since, args.audit.as_deref());
    let body = render(&report, args.format);
    let written = match &args.output {
        Some(path) => {
            std::fs::write(path, &body).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&body)
                .map_err(|e| format!("cannot write the report: {e}"))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat report: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn render(report: &Report, format: Format) -> Vec<u8> {
    match format {
        Format::Html => html::render(report).into_bytes(),
        Format::Markdown => markdown::render(report).into_bytes(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
            s.push('\n');
            s.into_bytes()
        }
    }
}

/// The admin query: `format` (default html) and `since` (default 30d).
pub fn parse_query(query: Option<&str>) -> Result<(Format, Duration), String> {
    let mut format = Format::Html;
    let mut since = Duration::from_secs(30 * 86_400);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("{key}: not UTF-8"))?;
        match key {
            "format" => format = Format::parse(&value)?,
            "since" => since = parse_since(&value)?,
            other => {
                return Err(format!(
                    "unknown query parameter {other:?}: use format=html|md|json and since=30d"
                ))
            }
        }
    }
    Ok((format, since))
}

/// `GET /report?format=html|md|json&since=30d` on the admin listener:
/// (status, content type, body). Reads the audit file: call it off the
/// async workers (`spawn_blocking`).
pub fn serve(rt: &Runtime, query: Option<&str>) -> (StatusCode, &'static str, Vec<u8>) {
    let (format, since) = match parse_query(query) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n").into_bytes(),
            )
        }
    };
    let policy = rt.policy.borrow().clone();
    let report = build(&policy, rt.clock.now(), since, None);
    (
        StatusCode::OK,
        format.content_type(),
        render(&report, format),
    )
}

/// The report of `policy` over `since` back from `now`, from the trail in
/// `audit` (default: the policy's audit log).
pub fn build(policy: &Policy, now: u64, since: Duration, audit: Option<&Path>) -> Report {
    let window = trail::Window::new(now, since);
    let target = match audit {
        Some(p) => AuditTarget::File(p.to_path_buf()),
        None => policy.audit_log.clone(),
    };
    let mut tally = trail::read_target(&target, &window);
    let labels = window.labels();
    let devices = policy
        .devices
        .iter()
        .map(|d| {
            let services: Vec<&Service> = policy
                .services
                .iter()
                .filter(|s| s.device.id == d.id)
                .map(|s| &**s)
                .collect();
            let t = tally.devices.remove(&*d.id).unwrap_or_default();
            let support = d.support_status(now);
            let reloads: std::collections::BTreeSet<u64> =
                t.changes.iter().map(|c| c.new_version).collect();
            let controls = controls::judge(&controls::Facts {
                policy,
                services: &services,
                support,
                end_of_support: d.end_of_support.as_deref(),
                changes_in_period: reloads.len(),
                trail_read: tally.source.read,
            });
            let missing_controls = controls
                .iter()
                .filter(|c| c.status == ControlStatus::Missing)
                .map(|c| c.name.to_string())
                .collect();
            let totals: std::collections::BTreeMap<String, u64> = t
                .denials
                .iter()
                .map(|(r, counts)| (r.clone(), counts.iter().sum()))
                .collect();
            DeviceReport {
                inventory: (**d).clone(),
                support_status: support,
                support: support.describe(),
                support_warning_from: d.support_warning_from.clone(),
                services: services.iter().map(|s| service_report(s, now)).collect(),
                changes: t.changes,
                denials: Denials {
                    buckets: labels.clone(),
                    total: totals.values().sum(),
                    totals,
                    by_reason: t.denials,
                },
                access: WhoHadAccess {
                    permitted: permitted(policy, &services),
                    signed_in: t.signed_in,
                    grants: t.grants,
                    break_glass: t.break_glass,
                    principals: t.principals,
                    allowed_connections: t.allowed_connections,
                    distinct_client_addresses: t.clients.len(),
                },
                controls,
                missing_controls,
            }
        })
        .collect();
    Report {
        moat_version: env!("CARGO_PKG_VERSION"),
        generated_at: trail::unix_text(Some(now)),
        period: Period {
            since: trail::unix_text(Some(window.since)),
            until: trail::unix_text(Some(window.until)),
            since_unix: window.since,
            until_unix: window.until,
            bucket: window.bucket_name(),
        },
        policy: PolicyInfo {
            version: policy.version,
            content_hash: policy.content_hash.clone(),
            sources: policy
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            audit_log: match &policy.audit_log {
                AuditTarget::Stdout => "stdout".into(),
                AuditTarget::File(p) => p.display().to_string(),
            },
            siem: policy.siem.as_ref().map(|s| s.address.clone()),
        },
        audit: tally.source,
        configuration_changes: tally.changes,
        reloads_rejected: tally.rejected,
        denials_suppressed: tally.suppressed,
        devices,
    }
}

pub(crate) fn tls_version(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls12 => "TLS 1.2",
        TlsVersion::Tls13 => "TLS 1.3",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Portal => "portal",
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The service's limits, as text.
pub(crate) fn limits(s: &Service) -> Vec<String> {
    let l = &s.limits;
    let mut out = Vec::new();
    for (name, spec) in [
        ("connections_per_client", &l.connections_per_client),
        ("requests_per_client", &l.requests_per_client),
        ("requests_per_identity", &l.requests_per_identity),
        ("device_rate", &l.device_rate),
    ] {
        if let Some(spec) = spec {
            out.push(format!("{name} {}", spec.text));
        }
    }
    if let Some(n) = l.max_in_flight {
        out.push(format!(
            "max_in_flight {n} (queue up to {})",
            human(l.queue_timeout)
        ));
    }
    if l.max_connections_per_client != u32::MAX {
        out.push(format!(
            "max_connections_per_client {}",
            l.max_connections_per_client
        ));
    }
    out
}

fn service_report(s: &Service, now: u64) -> ServiceReport {
    let tls = s.tls.as_ref().map(|t| TlsReport {
        min_version: tls_version(t.min_version),
        client_certificates: match t.client_cert {
            Some(ClientCertMode::Required) => "required",
            Some(ClientCertMode::Optional) => "optional",
            None => "none",
        },
        certificates: t
            .certificates
            .iter()
            .map(|c| CertificateReport {
                names: c
                    .dns_names
                    .iter()
                    .cloned()
                    .chain(c.ip_addresses.iter().map(|ip| ip.to_string()))
                    .collect(),
                not_after: c.not_after.clone(),
                expired: c.not_after_unix <= now as i64,
            })
            .collect(),
    });
    let access_mode = match &s.access_mode {
        AccessMode::Network => AccessModeReport {
            mode: "network",
            users: vec![],
            groups: vec![],
            anyone: false,
            max_grant: None,
            break_glass: None,
        },
        AccessMode::Mfa(rule) => AccessModeReport {
            mode: if s.protocol == Protocol::Portal {
                "portal"
            } else {
                "mfa"
            },
            users: rule.users.iter().map(|u| u.to_string()).collect(),
            groups: rule.groups.iter().map(|g| g.to_string()).collect(),
            anyone: rule.anyone,
            max_grant: None,
            break_glass: None,
        },
        AccessMode::Grant(g) => AccessModeReport {
            mode: "grant",
            users: g.who.users.iter().map(|u| u.to_string()).collect(),
            groups: g.who.groups.iter().map(|g| g.to_string()).collect(),
            anyone: g.who.anyone,
            max_grant: Some(human(g.max_grant)),
            break_glass: g.break_glass.map(human),
        },
    };
    ServiceReport {
        name: s.name.to_string(),
        protocol: protocol(s.protocol),
        listen: s.listen.to_string(),
        upstream: s.upstream.to_string(),
        plaintext: tls.is_none(),
        tls,
        allow: s.allow_entries.clone(),
        deny: s.deny_entries.clone(),
        access_mode,
        limits: limits(s),
        guard: s.guard.as_ref().map(|g| g.summary()),
        timeouts: Timeouts {
            connect: human(s.connect_timeout),
            idle: human(s.idle_timeout),
            handshake: human(s.handshake_timeout),
            http: s.http.as_ref().map(|h| HttpTimeouts {
                header_read: human(h.header_read_timeout),
                body_read: human(h.body_read_timeout),
                response: human(h.response_timeout),
                keepalive: human(h.keepalive_timeout),
            }),
        },
        max_connections: s.max_connections,
        on_audit_failure: s.on_audit_failure.as_str(),
    }
}

/// Per `mfa` or grant service, the enabled users of the users file its
/// rule admits.
fn permitted(policy: &Policy, services: &[&Service]) -> Vec<PermittedUsers> {
    services
        .iter()
        .filter_map(|s| {
            let rule = s.access_mode.rule()?;
            let users = policy
                .auth
                .as_ref()
                .map(|a| {
                    a.users
                        .users
                        .values()
                        .filter(|u| !u.disabled && rule.admits(u))
                        .map(|u| u.name.to_string())
                        .collect()
                })
                .unwrap_or_default();
            Some(PermittedUsers {
                service: s.name.to_string(),
                users,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
