//! The `moat` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use moat::audit::Audit;
use moat::gateway::Gateway;
use moat::metrics::Metrics;
use moat::policy::{self, Policy, SupportStatus};

#[derive(Parser)]
#[command(
    name = "moat",
    version,
    about = "A gateway of compensating controls for legacy medical devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a policy file.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a policy file and everything it refers to, then print a
    /// summary. Exits non-zero on any error, like `nginx -t`.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Probe a running gateway's admin /healthz (for container health
    /// checks, where there is no curl). Exits 0 when healthy.
    Health {
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// List or end the time-boxed grants of a running gateway, through its
    /// admin API (`GET /grants`, `DELETE /grants/ID`).
    Grants {
        #[arg(
            long,
            value_name = "ADDR",
            default_value = "127.0.0.1:9090",
            global = true
        )]
        admin: std::net::SocketAddr,
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Certificate tooling.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manage the people who sign in to `mfa` services (password and TOTP):
    /// `moat user --users FILE add|passwd|reset-totp|disable|enable|remove|list`.
    User(moat::auth::cli::UserArgs),
    /// Sealed one-time emergency codes for `break_glass = true` services:
    /// `moat breakglass --codes FILE issue --user U [--count N] | list | revoke --user U`.
    Breakglass(moat::auth::breakglass::BreakGlassArgs),
    /// The tamper-evident audit trail: `moat audit verify FILE...` checks
    /// the hash chain of audit files (oldest first, across rotations).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The evidence report for auditors: per device, its inventory and
    /// support status, the controls in force, configuration changes,
    /// denials and who had access, mapped to the compensating controls of
    /// the legacy-device guidance.
    Report(moat::report::ReportArgs),
    /// Run a simulated legacy device behind the gateway, on loopback.
    Demo {
        /// First port to listen on (the demo uses PORT to PORT+3, and PORT+10);
        /// 0 picks free ports.
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the hash chain of one or more audit files, given oldest
    /// first (a rotated file before the one that follows it). Reports the
    /// first line that was changed, removed or reordered; exits 1 then.
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// The open grants: id, user, service, what each is bound to, until when.
    List,
    /// Ends a grant now (its live connections are cut, or drain).
    Revoke { id: String },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA, server and client certificates into DIR.
    /// For tests and demos only: the CA key is written next to them.
    Dev { dir: PathBuf },
}

// hyper, h2 and rustls allocate small, short-lived buffers per request;
// mimalloc serves those faster than glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let _ = rustls::crypto::CryptoProvider::install_default(
        rustls::crypto::aws_lc_rs::default_provider(),
    );
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Health { admin } => health(admin),
        Command::Grants { admin, command } => grants(admin, command),
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => match moat::certs::write_dev_set(&dir) {
            Ok(set) => {
                println!("wrote development certificates to {}", set.dir.display());
                println!("  CA:     {}", set.ca.display());
                println!(
                    "  server: {} (localhost, 127.0.0.1, ::1)",
                    set.server_cert.display()
                );
                println!(
                    "  server: {} ({})",
                    set.server_rsa_cert.display(),
                    moat::certs::RSA_SERVER_NAME
                );
                println!(
                    "  client: {} (CN={})",
                    set.client_cert.display(),
                    moat::certs::CLIENT_NAME
                );
                println!("never use these for a real device: the CA key is in the same folder");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("moat certs dev: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::User(args) => moat::auth::cli::run(args),
        Command::Breakglass(args) => moat::auth::breakglass::run(args),
        Command::Audit {
            command: AuditCommand::Verify { files },
        } => moat::audit::verify::run(&files),
        Command::Report(args) => moat::report::run(args),
        Command::Run { config } => runtime().block_on(run(&config)),
        Command::Demo { port } => {
            match runtime().block_on(moat::demo::run(moat::demo::DemoOptions { port })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("moat demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One worker per CPU moat may run on (`MOAT_WORKER_THREADS` overrides).
/// With a single CPU the current-thread scheduler is used: no work
/// stealing, no cross-thread wake-ups, nothing to gain from them.
fn runtime() -> tokio::runtime::Runtime {
    let workers = std::env::var("MOAT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
        // rustls warns once per connection about clients that send an IP
        // address as SNI (wrk, h2load, scripts): noise an attacker can
        // multiply, so only its errors by default.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_or_report(config: &Path) -> Option<Policy> {
    match policy::load(config, 1) {
        Ok(p) => Some(p),
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error(s); nothing applied",
                config.display(),
                errors.len()
            );
            None
        }
    }
}

async fn run(config: &Path) -> ExitCode {
    // A first start makes the session key ([auth] session_key_file).
    if let Err(e) = moat::auth::create_missing_session_key(config) {
        eprintln!("{}: {e}", config.display());
        return ExitCode::from(2);
    }
    let Some(policy) = load_or_report(config) else {
        return ExitCode::from(2);
    };
    let audit = match Audit::start(&policy.audit_log, policy.siem.clone()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::from(2);
        }
    };
    let gateway = match Gateway::start(
        config.to_path_buf(),
        policy,
        audit,
        Arc::new(Metrics::new()),
    )
    .await
    {
        Ok(g) => g,
        Err(e) => {
            eprintln!("moat: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    gateway.serve_until_shutdown().await;
    ExitCode::SUCCESS
}

/// One request to the admin API: the status code and the body.
fn admin_request(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&admin, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 answer"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn health(admin: std::net::SocketAddr) -> ExitCode {
    match admin_request(admin, "GET", "/healthz") {
        Ok((200, _)) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok((status, _)) => {
            eprintln!("unhealthy: status {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn grants(admin: std::net::SocketAddr, command: GrantsCommand) -> ExitCode {
    let (method, path) = match &command {
        GrantsCommand::List => ("GET", "/grants".to_string()),
        GrantsCommand::Revoke { id } => ("DELETE", format!("/grants/{id}")),
    };
    let (status, body) = match admin_request(admin, method, &path) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: admin API at {admin}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if status != 200 {
        eprintln!("error: {method} {path}: {status} {}", body.trim());
        return ExitCode::FAILURE;
    }
    let Ok(answer) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("error: {method} {path}: not JSON");
        return ExitCode::FAILURE;
    };
    let line = |g: &serde_json::Value| {
        let s = |k: &str| g[k].as_str().unwrap_or("").to_string();
        let binding = match &g["binding"] {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let until = g["until"].as_u64().unwrap_or(0);
        let left = until.saturating_sub(answer["now"].as_u64().unwrap_or(until));
        format!(
            "{}  {:<12} {}/{}  {}  until {} ({}m{}s left){}",
            s("id"),
            s("user"),
            s("device"),
            s("service"),
            binding,
            until,
            left / 60,
            left % 60,
            if g["break_glass"].as_bool() == Some(true) {
                "  BREAK-GLASS"
            } else {
                ""
            }
        )
    };
    match command {
        GrantsCommand::List => {
            let grants = answer["grants"].as_array().cloned().unwrap_or_default();
            if grants.is_empty() {
                println!("no open grants");
            }
            for g in &grants {
                println!("{}", line(g));
            }
        }
        GrantsCommand::Revoke { .. } => {
            let g = &answer["ended"];
            println!(
                "ended grant {} of {} on {}/{}",
                g["id"].as_str().unwrap_or(""),
                g["user"].as_str().unwrap_or(""),
                g["device"].as_str().unwrap_or(""),
                g["service"].as_str().unwrap_or("")
            );
        }
    }
    ExitCode::SUCCESS
}

fn check(config: &Path) -> ExitCode {
    let Some(policy) = load_or_report(config) else {
        return ExitCode::from(2);
    };
    let now = moat::runtime::clock::Clock::from_env().now();
    println!("{}: OK", config.display());
    println!("policy hash: {}", policy.content_hash);
    println!("devices: {}", policy.devices.len());
    for d in &policy.devices {
        let eos = match (&d.end_of_support, d.support_status(now)) {
            (Some(date), SupportStatus::Past) => {
                format!("PAST end of support {date}: compensating controls required")
            }
            (Some(date), SupportStatus::EndingSoon) => format!(
                "ENDING SOON: end of support {date} (warning since {})",
                d.support_warning_from.as_deref().unwrap_or("?")
            ),
            (Some(date), _) => format!("supported until {date}"),
            (None, _) => "end of support not recorded".to_string(),
        };
        println!(
            "  {} \"{}\" ({} {}, {}): {eos}",
            d.id, d.name, d.manufacturer, d.model, d.location
        );
        let mut inventory = Vec::new();
        for (label, value) in [
            ("serial", &d.serial_number),
            ("udi", &d.udi),
            ("software", &d.software_version),
            ("mds2", &d.mds2),
        ] {
            if !value.is_empty() {
                inventory.push(format!("{label} {value}"));
            }
        }
        if let Some(l) = d.lifecycle {
            inventory.push(format!("lifecycle {}", l.as_str()));
        }
        if let Some(sbom) = &d.sbom {
            inventory.push(format!(
                "sbom {} (sha256 {}, verified)",
                sbom.path.display(),
                &sbom.sha256[..16]
            ));
        }
        if !d.known_vulnerabilities.is_empty() {
            inventory.push(format!(
                "{} known vulnerabilit{}",
                d.known_vulnerabilities.len(),
                if d.known_vulnerabilities.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            ));
        }
        if !inventory.is_empty() {
            println!("    inventory: {}", inventory.join("; "));
        }
        for s in policy.services.iter().filter(|s| s.device.id == d.id) {
            let tls = match &s.tls {
                None => "PLAINTEXT".to_string(),
                Some(t) => {
                    let names: Vec<&str> = t
                        .certificates
                        .iter()
                        .flat_map(|c| c.dns_names.iter().map(String::as_str))
                        .collect();
                    let client = match t.client_cert {
                        Some(moat::config::schema::ClientCertMode::Required) => {
                            ", client cert required"
                        }
                        Some(moat::config::schema::ClientCertMode::Optional) => {
                            ", client cert optional"
                        }
                        None => "",
                    };
                    format!(
                        "tls ({} cert(s): {}{client})",
                        t.certificates.len(),
                        names.join(", ")
                    )
                }
            };
            let access = match &s.access_mode {
                moat::auth::AccessMode::Network => String::new(),
                moat::auth::AccessMode::Mfa(rule) if rule.anyone => {
                    "; portal for every user".to_string()
                }
                moat::auth::AccessMode::Mfa(rule) => format!(
                    "; MFA for users [{}] groups [{}]",
                    rule.users.join(", "),
                    rule.groups.join(", ")
                ),
                moat::auth::AccessMode::Grant(g) => format!(
                    "; grants after MFA for users [{}] groups [{}], up to {}, {:?} on end{}",
                    g.who.users.join(", "),
                    g.who.groups.join(", "),
                    humantime::format_duration(g.max_grant),
                    g.on_end,
                    g.break_glass.map_or(String::new(), |d| format!(
                        ", break-glass up to {}",
                        humantime::format_duration(d)
                    ))
                ),
            };
            let guard = s
                .guard
                .as_ref()
                .map_or(String::new(), |g| format!("; {}", g.summary()));
            println!(
                "    {:<12} {} -> {}  {tls}; allow {} entries, deny {}; max {} connections{access}{guard}",
                s.name,
                s.listen,
                s.upstream,
                s.access.allow.len(),
                s.access.deny.len(),
                s.max_connections
            );
        }
    }
    if !policy.networks.is_empty() {
        let sets: Vec<String> = policy
            .networks
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect();
        println!("network sets: {}", sets.join(", "));
    }
    if let Some(auth) = &policy.auth {
        let disabled = auth.users.users.values().filter(|u| u.disabled).count();
        println!(
            "users: {} ({} disabled); sessions idle {}, absolute {}",
            auth.users.users.len(),
            disabled,
            humantime::format_duration(auth.idle_timeout),
            humantime::format_duration(auth.absolute_timeout)
        );
    }
    if let Some(siem) = &policy.siem {
        println!(
            "siem: syslog over TLS to {} (spool {}, up to {} bytes)",
            siem.address,
            siem.spool_dir.display(),
            siem.spool_max_bytes
        );
    }
    println!("files: {}", policy.sources.len());
    ExitCode::SUCCESS
}
