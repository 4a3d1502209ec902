//! What the gateway enforces: an immutable policy compiled from a fully
//! valid configuration. A policy is never partly built: [`compile`] either
//! returns a whole [`Policy`] or every error it found.

pub mod cidr;
mod compile;
pub mod diff;
pub mod http;
pub mod inventory;
pub mod lifecycle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use cidr::{AccessList, CidrSet, SourceRefusal};
pub use compile::{compile, load};
pub use inventory::{Device, SupportStatus};

use crate::config::schema::Protocol;
use crate::tls::TlsTermination;

#[derive(Debug)]
pub struct Policy {
    /// Grows by one with every policy published in this process.
    pub version: u64,
    /// SHA-256 over every file the policy was built from.
    pub content_hash: String,
    pub audit_log: AuditTarget,
    pub shutdown_grace: Duration,
    /// The accept queue length every listener is bound with.
    pub listen_backlog: u32,
    pub admin_listen: Option<SocketAddr>,
    pub devices: Vec<Arc<Device>>,
    pub services: Vec<Arc<Service>>,
    /// Named network sets and how many entries each holds.
    pub networks: Vec<(String, usize)>,
    /// Every file read to build this policy (watched for reloads).
    pub sources: Vec<PathBuf>,
    /// The sources whose cut-short reads could widen access (the main
    /// file, network-set files used in a `deny` list), with their bytes,
    /// so that a reload can tell a cut from an edit
    /// ([`Policy::cut_short_sources`]).
    pub cut_guarded: std::collections::BTreeMap<PathBuf, Arc<[u8]>>,
    /// `[auth]`: users, session keys and login settings, when configured.
    pub auth: Option<Arc<crate::auth::AuthPolicy>>,
    /// Every `user_header` of every `mfa` service: stripped from client
    /// requests on every service.
    pub identity_headers: Arc<[::http::HeaderName]>,
    /// `gateway.support_warning_months`: the "ending soon" window.
    pub support_warning_months: u32,
    /// `[siem]`: the syslog-over-TLS sink of the audit trail. Read at
    /// start (a reload that changes it takes effect at the next restart).
    pub siem: Option<Arc<crate::audit::siem::SiemPolicy>>,
}

impl Policy {
    /// The guarded files of `self` that are a strict beginning of what the
    /// same file held in `old`: what a reader sees while a file is
    /// rewritten in place, cut exactly at a line end (a cut inside a line
    /// is already an error). Returns (file, new length, old length).
    pub fn cut_short_sources(&self, old: &Policy) -> Vec<(PathBuf, usize, usize)> {
        self.cut_guarded
            .iter()
            .filter_map(|(path, new)| {
                let before = old.cut_guarded.get(path)?;
                (new.len() < before.len() && before.starts_with(new))
                    .then(|| (path.clone(), new.len(), before.len()))
            })
            .collect()
    }

    /// The service a listener serves under this policy, if any.
    pub fn service_for(&self, id: &ListenerId) -> Option<&Arc<Service>> {
        match id {
            ListenerId::Addr(addr) => self.services.iter().find(|s| s.listen == *addr),
            ListenerId::Ephemeral(device, name) => self
                .services
                .iter()
                .find(|s| s.listen.port() == 0 && &s.device.id == device && &s.name == name),
        }
    }
}

/// Identifies a listening socket across policy versions. A socket is kept
/// across a reload exactly when its configured address is unchanged; a
/// port-0 listener (tests, demos) is tied to its service instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenerId {
    Addr(SocketAddr),
    Ephemeral(Arc<str>, Arc<str>),
}

impl ListenerId {
    pub fn of(s: &Service) -> Self {
        if s.listen.port() == 0 {
            ListenerId::Ephemeral(s.device.id.clone(), s.name.clone())
        } else {
            ListenerId::Addr(s.listen)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// One listening port in front of one device port.
#[derive(Debug)]
pub struct Service {
    pub device: Arc<Device>,
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub access: AccessList,
    /// The allow and deny entries as written, with where each came from
    /// (for the evidence report; `access` is what is enforced).
    pub allow_entries: Vec<AccessEntry>,
    pub deny_entries: Vec<AccessEntry>,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Serve on, or refuse, while the audit trail cannot be written.
    pub on_audit_failure: crate::config::schema::OnAuditFailure,
    /// `None` means plaintext, which the config had to ask for explicitly.
    pub tls: Option<TlsTermination>,
    /// L7 policy; present exactly when `protocol` is HTTP.
    pub http: Option<http::HttpPolicy>,
    pub limits: crate::controls::rate::LimitsPolicy,
    /// Who may use the service once the network controls let them on.
    pub access_mode: crate::auth::AccessMode,
    /// A protocol guard (`tcp` services only): DICOM or HL7 MLLP checked
    /// before it reaches the device.
    pub guard: Option<crate::guard::Guard>,
}

/// One allow or deny entry of a service as the policy file wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessEntry {
    /// A CIDR or address, or the name of a network set.
    pub entry: String,
    /// How many networks it stands for (1, or the set's size).
    pub addresses: usize,
    /// `file:line` of the entry in the main policy file.
    pub written_at: String,
    /// The network-set file its networks were read from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// Where a device listens, as `host:port`; resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_none() {
            f.write_str("none (portal)")
        } else if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Upstream {
    /// A `portal`'s: it proxies nothing (never connected to).
    pub fn none() -> Upstream {
        Upstream {
            host: String::new(),
            port: 0,
        }
    }

    pub fn is_none(&self) -> bool {
        self.port == 0
    }

    pub fn parse(s: &str) -> Option<Upstream> {
        let (host, port) = s.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let valid_host = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        valid_host.then(|| Upstream {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests;
