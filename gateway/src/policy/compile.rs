//! config → policy. Every check that `moat run` depends on happens here,
//! so `moat check` and a reload see exactly what the gateway would enforce.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use toml::Spanned;

use super::http::{Glob, HostNames, HttpPolicy, RequestRule, UpstreamTls};
use super::{AccessEntry, AccessList, AuditTarget, CidrSet, Device, Policy, Service, Upstream};
use crate::auth::{AccessMode, AuthPolicy, MfaRule};
use crate::config::schema::LimitsSection;
use crate::config::schema::RuleAction;
use crate::config::schema::{
    AccessKind, AuthSection, ClientCertMode, FileConfig, HttpSection, HumanDuration, Protocol,
    ServiceSection, TlsSection,
};
use crate::config::{self, did_you_mean, netfile, ConfigError, ConfigErrors, LoadedConfig};
use crate::controls::rate::{LimitsPolicy, RateSpec};
use crate::runtime::store::LockoutRule;
use crate::tls;

/// Longer accept queues are of no use: the kernel caps them at
/// `net.core.somaxconn` anyway (4096 by default since Linux 5.4).
const MAX_LISTEN_BACKLOG: u32 = 65535;

/// Reads `path` (and every file it names) and compiles it.
pub fn load(path: &Path, version: u64) -> Result<Policy, ConfigErrors> {
    let loaded = config::load(path)?;
    compile(&loaded, version)
}

/// A network set resolved to its entries.
struct NetworkSet {
    nets: Vec<IpNet>,
    /// The network-set file, if the set has one.
    file: Option<PathBuf>,
}

struct Compiler<'a> {
    cfg: &'a LoadedConfig,
    errors: ConfigErrors,
    /// Files read besides the main one, with their bytes for the hash.
    sources: BTreeMap<PathBuf, Vec<u8>>,
    /// Network-set files some `deny` list uses: cut short, they would
    /// refuse less.
    deny_files: std::collections::BTreeSet<PathBuf>,
}

pub fn compile(cfg: &LoadedConfig, version: u64) -> Result<Policy, ConfigErrors> {
    let mut c = Compiler {
        cfg,
        errors: ConfigErrors::default(),
        sources: BTreeMap::new(),
        deny_files: Default::default(),
    };
    let file: &FileConfig = &cfg.file;

    let networks = c.networks();
    let auth = file.auth.as_ref().and_then(|a| c.auth(a)).map(Arc::new);
    let admin_listen = file
        .admin
        .enabled
        .then(|| c.socket_addr(&file.admin.listen, "admin.listen"))
        .flatten();

    let audit_log = match file.gateway.audit_log.get_ref().as_str() {
        "-" => AuditTarget::Stdout,
        "" => {
            let e = cfg.error_at(
                file.gateway.audit_log.span(),
                "must be a file path or \"-\" for stdout",
            );
            c.errors.push(e.with_field("gateway.audit_log"));
            AuditTarget::Stdout
        }
        p => AuditTarget::File(cfg.resolve(p)),
    };

    if file.devices.is_empty() && !file.gateway.allow_no_devices {
        // Also what a truncated file usually compiles to: it would stop
        // every listener, so it is refused rather than applied.
        let e = ConfigError::file(
            &cfg.path,
            "no [[device]]: a policy must protect at least one device \
             (set gateway.allow_no_devices = true to run with none on purpose)",
        );
        c.errors.push(e);
    }
    let backlog = &file.gateway.listen_backlog;
    if !(1..=MAX_LISTEN_BACKLOG).contains(backlog.get_ref()) {
        let msg = format!("must be between 1 and {MAX_LISTEN_BACKLOG}");
        c.err(backlog.span(), "gateway.listen_backlog", msg);
    }

    let warning_months = *file.gateway.support_warning_months.get_ref();
    if warning_months > 120 {
        let span = file.gateway.support_warning_months.span();
        c.err(
            span,
            "gateway.support_warning_months",
            "must be at most 120 (ten years)".into(),
        );
    }
    let siem = file.siem.as_ref().and_then(|s| c.siem(s)).map(Arc::new);

    let mut devices = Vec::new();
    let mut services = Vec::new();
    let mut device_ids: HashMap<&str, ()> = HashMap::new();
    let mut listens: HashMap<SocketAddr, String> = HashMap::new();
    if let Some(admin) = admin_listen {
        listens.insert(admin, "admin.listen".into());
    }

    for (di, d) in file.devices.iter().enumerate() {
        let field = format!("device[{di}]");
        let id = d.id.get_ref();
        if !is_identifier(id) {
            c.err(
                d.id.span(),
                &format!("{field}.id"),
                format!("{id:?} must be letters, digits, '-', '_' or '.'"),
            );
        } else if device_ids.insert(id, ()).is_some() {
            c.err(
                d.id.span(),
                &format!("{field}.id"),
                format!("duplicate device id {id:?}"),
            );
        }
        let device = Arc::new(c.device(d, &field, warning_months));
        if d.services.is_empty() {
            c.err(
                d.id.span(),
                &field,
                "a device needs at least one [[device.service]]".into(),
            );
        }
        let mut names: HashMap<&str, ()> = HashMap::new();
        for (si, s) in d.services.iter().enumerate() {
            let field = format!("{field}.service[{si}]");
            let name = s.name.get_ref();
            if !is_identifier(name) {
                c.err(
                    s.name.span(),
                    &format!("{field}.name"),
                    format!("{name:?} must be letters, digits, '-', '_' or '.'"),
                );
            } else if names.insert(name, ()).is_some() {
                c.err(
                    s.name.span(),
                    &format!("{field}.name"),
                    format!("duplicate service name {name:?} in device {id:?}"),
                );
            }
            if let Some(listen) = c.socket_addr(&s.listen, &format!("{field}.listen")) {
                // Port 0 asks the OS for a free port, so it cannot clash.
                if listen.port() != 0 {
                    if let Some(first) = listens.get(&listen) {
                        let msg = format!("{listen} is already used by {first}");
                        c.err(s.listen.span(), &format!("{field}.listen"), msg);
                    } else {
                        listens.insert(listen, format!("{field}.listen"));
                    }
                }
                if let Some(service) =
                    c.service(s, &field, &device, listen, &networks, auth.as_deref())
                {
                    services.push(Arc::new(service));
                }
            }
        }
        devices.push(device);
    }

    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    hasher.update(cfg.source.as_bytes());
    for (path, bytes) in &c.sources {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(bytes);
    }
    let content_hash = tls::hex(hasher.finish().as_ref());
    let mut sources = vec![cfg.path.clone()];
    sources.extend(c.sources.keys().cloned());
    // A cut-short read of these could widen access: the main file (its
    // end may hold a deny list, a rule, a device) and deny-set files. An
    // allow-set file cut short only refuses more, and cutting its last
    // entries is how a client's access is revoked: never held back.
    let mut cut_guarded: BTreeMap<PathBuf, Arc<[u8]>> = c
        .deny_files
        .iter()
        .filter_map(|path| Some((path.clone(), Arc::from(c.sources.get(path)?.as_slice()))))
        .collect();
    cut_guarded.insert(cfg.path.clone(), Arc::from(cfg.source.as_bytes()));

    let identity_headers = services
        .iter()
        .filter_map(|s| match &s.access_mode {
            AccessMode::Mfa(rule) => rule.user_header.clone(),
            AccessMode::Network | AccessMode::Grant(_) => None,
        })
        .collect();
    let policy = Policy {
        version,
        content_hash,
        audit_log,
        shutdown_grace: file.gateway.shutdown_grace.0,
        listen_backlog: *backlog.get_ref(),
        admin_listen,
        devices,
        services,
        networks: networks
            .iter()
            .map(|(k, v)| (k.clone(), v.nets.len()))
            .collect(),
        sources,
        cut_guarded,
        auth,
        identity_headers,
        support_warning_months: warning_months,
        siem,
    };
    c.errors.into_result(policy)
}

impl Compiler<'_> {
    /// An error about a field that has no span of its own (a default, or a
    /// combination of fields): named by file and field, without a line.
    fn err_in_file(&mut self, field: &str, message: String) {
        let e = ConfigError::file(&self.cfg.path, message).with_field(field);
        self.errors.push(e);
    }

    fn err(&mut self, span: std::ops::Range<usize>, field: &str, message: String) {
        let e = self.cfg.error_at(span, message).with_field(field);
        self.errors.push(e);
    }

    /// Reads a file the config refers to, remembering it for the hash and
    /// the reload watcher.
    fn read_file(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(bytes) = self.sources.get(path) {
            return Ok(bytes.clone());
        }
        let bytes = std::fs::read(path)?;
        self.sources.insert(path.to_path_buf(), bytes.clone());
        Ok(bytes)
    }

    fn socket_addr(&mut self, s: &Spanned<String>, field: &str) -> Option<SocketAddr> {
        match s.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                let msg = format!(
                    "{:?} is not an address:port such as \"0.0.0.0:11112\" or \"[::]:443\"",
                    s.get_ref()
                );
                self.err(s.span(), field, msg);
                None
            }
        }
    }

    fn networks(&mut self) -> BTreeMap<String, NetworkSet> {
        let mut out = BTreeMap::new();
        for (name, set) in &self.cfg.file.networks {
            let field = format!("networks.{}", name.get_ref());
            if !is_identifier(name.get_ref()) || looks_like_address(name.get_ref()) {
                let msg = format!("{:?} must be a name of letters, digits, '-', '_' or '.' that does not look like an address", name.get_ref());
                self.err(name.span(), &field, msg);
                continue;
            }
            let mut nets = Vec::new();
            for entry in &set.cidrs {
                match netfile::parse_net(entry.get_ref()) {
                    Ok(n) => nets.push(n),
                    Err(msg) => self.err(entry.span(), &format!("{field}.cidrs"), msg),
                }
            }
            if let Some(file) = &set.file {
                let path = self.cfg.resolve(file.get_ref());
                match self.read_file(&path) {
                    Ok(bytes) => {
                        let text = String::from_utf8_lossy(&bytes);
                        match netfile::parse(&path, &text) {
                            Ok(entries) => nets.extend(entries.into_iter().map(|e| e.net)),
                            Err(errs) => self.errors.0.extend(errs.0),
                        }
                    }
                    Err(e) => {
                        let msg = format!("cannot read network set file {}: {e}", path.display());
                        self.err(file.span(), &format!("{field}.file"), msg);
                    }
                }
            }
            if set.cidrs.is_empty() && set.file.is_none() {
                self.err(
                    name.span(),
                    &field,
                    "a network set needs `cidrs`, `file` or both".into(),
                );
            }
            let file = set.file.as_ref().map(|f| self.cfg.resolve(f.get_ref()));
            out.insert(name.get_ref().clone(), NetworkSet { nets, file });
        }
        out
    }

    /// Resolves allow/deny entries (CIDRs, addresses or set names).
    fn cidr_set(
        &mut self,
        entries: &[Spanned<String>],
        field: &str,
        networks: &BTreeMap<String, NetworkSet>,
        is_deny: bool,
        origins: &mut Vec<AccessEntry>,
    ) -> CidrSet {
        let mut nets: Vec<IpNet> = Vec::new();
        for entry in entries {
            let text = entry.get_ref().trim();
            let (line, _) = config::line_column(&self.cfg.source, entry.span().start);
            let written_at = format!("{}:{line}", self.cfg.path.display());
            if looks_like_address(text) {
                match netfile::parse_net(text) {
                    Ok(n) => {
                        nets.push(n);
                        origins.push(AccessEntry {
                            entry: text.to_string(),
                            addresses: 1,
                            written_at,
                            file: None,
                        });
                    }
                    Err(msg) => self.err(entry.span(), field, msg),
                }
            } else if let Some(named) = networks.get(text) {
                nets.extend_from_slice(&named.nets);
                origins.push(AccessEntry {
                    entry: text.to_string(),
                    addresses: named.nets.len(),
                    written_at,
                    file: named.file.clone(),
                });
                if let (true, Some(file)) = (is_deny, &named.file) {
                    self.deny_files.insert(file.clone());
                }
            } else {
                let mut msg = format!("unknown network set {text:?}");
                match did_you_mean(text, networks.keys().map(String::as_str)) {
                    Some(s) => msg.push_str(&format!("; did you mean {s:?}?")),
                    None if networks.is_empty() => msg.push_str(" (no [networks] are defined)"),
                    None => {}
                }
                self.err(entry.span(), field, msg);
            }
        }
        nets.into_iter().collect()
    }

    fn service(
        &mut self,
        s: &ServiceSection,
        field: &str,
        device: &Arc<Device>,
        listen: SocketAddr,
        networks: &BTreeMap<String, NetworkSet>,
        auth: Option<&AuthPolicy>,
    ) -> Option<Service> {
        let before = self.errors.len();
        let upstream = match (s.protocol, &s.upstream) {
            (Protocol::Portal, None) => Some(Upstream::none()),
            (Protocol::Portal, Some(u)) => {
                let msg = "a portal serves moat's own pages and proxies nothing: remove `upstream`";
                self.err(u.span(), &format!("{field}.upstream"), msg.into());
                None
            }
            (_, None) => {
                let msg = "`upstream` is required: the device's host:port (e.g. \"10.20.0.5:104\")";
                self.err(s.name.span(), &format!("{field}.upstream"), msg.into());
                None
            }
            (_, Some(u)) => {
                let parsed = Upstream::parse(u.get_ref());
                if parsed.is_none() {
                    let msg = format!(
                        "{:?} is not host:port (e.g. \"10.20.0.5:104\")",
                        u.get_ref()
                    );
                    self.err(u.span(), &format!("{field}.upstream"), msg);
                }
                parsed
            }
        };
        if s.allow.get_ref().is_empty() {
            let msg = "an empty allow list admits no one; list source networks (write \"0.0.0.0/0\" and \"::/0\" to admit everyone)";
            self.err(s.allow.span(), &format!("{field}.allow"), msg.into());
        }
        let mut allow_entries = Vec::new();
        let mut deny_entries = Vec::new();
        let access = AccessList {
            allow: self.cidr_set(
                s.allow.get_ref(),
                &format!("{field}.allow"),
                networks,
                false,
                &mut allow_entries,
            ),
            deny: self.cidr_set(
                &s.deny,
                &format!("{field}.deny"),
                networks,
                true,
                &mut deny_entries,
            ),
        };
        if *s.max_connections.get_ref() == 0 {
            self.err(
                s.max_connections.span(),
                &format!("{field}.max_connections"),
                "must be at least 1".into(),
            );
        }
        let default_alpn: &[&str] = match s.protocol {
            Protocol::Http | Protocol::Portal => &["h2", "http/1.1"],
            Protocol::Tcp => &[],
        };
        let tls = match (&s.tls, s.plaintext) {
            (Some(t), false) => self.tls(t, &format!("{field}.tls"), default_alpn),
            (None, true) => None,
            (Some(_), true) => {
                self.err(
                    s.name.span(),
                    field,
                    "set either a [tls] table or `plaintext = true`, not both".into(),
                );
                None
            }
            (None, false) => {
                let msg = "no [tls] table: add one, or write `plaintext = true` to accept cleartext on purpose";
                self.err(s.name.span(), field, msg.into());
                None
            }
        };
        let http = match (s.protocol, &s.http) {
            (Protocol::Http | Protocol::Portal, Some(h)) => {
                self.http(h, &format!("{field}.http"), upstream.as_ref())
            }
            (Protocol::Http | Protocol::Portal, None) => {
                self.http(&default_http(), &format!("{field}.http"), upstream.as_ref())
            }
            (Protocol::Tcp, Some(_)) => {
                self.err(
                    s.name.span(),
                    &format!("{field}.http"),
                    "an [http] table needs `protocol = \"http\"`".into(),
                );
                None
            }
            (Protocol::Tcp, None) => None,
        };
        let explicit_hosts = s.http.as_ref().is_some_and(|h| h.hosts.is_some());
        let http = http.map(|mut h| {
            if !explicit_hosts {
                let certs = tls.as_ref().map_or(&[][..], |t| &t.certificates[..]);
                h.hosts = HostNames::default_for(certs, listen);
            }
            h
        });
        let limits = self.limits(
            &s.limits,
            &format!("{field}.limits"),
            s.protocol,
            *s.max_connections.get_ref(),
        );
        let access_mode = self.access_mode(s, field, auth, tls.is_some());
        let guard = self.guard(s, field);
        if self.errors.len() != before {
            return None;
        }
        Some(Service {
            device: device.clone(),
            name: Arc::from(s.name.get_ref().as_str()),
            protocol: s.protocol,
            listen,
            upstream: upstream?,
            access,
            allow_entries,
            deny_entries,
            max_connections: *s.max_connections.get_ref(),
            connect_timeout: s.connect_timeout.0,
            idle_timeout: s.idle_timeout.0,
            handshake_timeout: s.handshake_timeout.0,
            on_audit_failure: s.on_audit_failure,
            tls,
            http,
            limits,
            access_mode,
            guard,
        })
    }

    /// `[auth]`: the users file and session keys, read through the
    /// compiler (hashed, watched, so an edit by `moat user` reloads).
    fn auth(&mut self, a: &AuthSection) -> Option<AuthPolicy> {
        let before = self.errors.len();
        let users_path = self.cfg.resolve(a.users_file.get_ref());
        let users = self.secret_file(&users_path, a.users_file.span(), "auth.users_file");
        let users = users.and_then(|bytes| {
            let text = String::from_utf8_lossy(&bytes);
            match crate::auth::users::parse(&users_path, &text) {
                Ok(u) => Some(u),
                Err(errors) => {
                    self.errors.0.extend(errors.0);
                    None
                }
            }
        });
        let key = |c: &mut Self, spec: &Spanned<String>, field: &str| {
            let path = c.cfg.resolve(spec.get_ref());
            let bytes = c.secret_file(&path, spec.span(), field)?;
            match crate::auth::session::parse_key_file(&path, &bytes) {
                Ok(k) => Some(k),
                Err(msg) => {
                    c.err(spec.span(), field, msg);
                    None
                }
            }
        };
        let current = key(self, &a.session_key_file, "auth.session_key_file");
        let previous = a
            .previous_session_key_file
            .as_ref()
            .map(|p| key(self, p, "auth.previous_session_key_file"));
        let skew = *a.totp_skew.get_ref();
        if skew > 2 {
            self.err(
                a.totp_skew.span(),
                "auth.totp_skew",
                "must be 0, 1 or 2".into(),
            );
        }
        let failures = *a.lockout_failures.get_ref();
        if failures == 0 {
            let msg = "must be at least 1".to_string();
            self.err(a.lockout_failures.span(), "auth.lockout_failures", msg);
        }
        let (idle, absolute) = (a.session_idle_timeout.0, a.session_absolute_timeout.0);
        if idle.is_zero() || absolute.is_zero() || idle > absolute {
            self.err_in_file(
                "auth.session_idle_timeout",
                format!(
                    "must be above zero and at most session_absolute_timeout ({})",
                    humantime::format_duration(absolute)
                ),
            );
        }
        if a.lockout_window.0.is_zero() || a.lockout_duration.0.is_zero() {
            let msg = "lockout_window and lockout_duration must be above zero".to_string();
            self.err_in_file("auth.lockout_window", msg);
        }
        let login_rate = match RateSpec::parse(a.login_rate.get_ref()) {
            Ok(r) => Some(r),
            Err(msg) => {
                self.err(a.login_rate.span(), "auth.login_rate", msg);
                None
            }
        };
        let hashes = *a.max_concurrent_hashes.get_ref();
        if !(1..=64).contains(&hashes) {
            let msg = "must be between 1 and 64".to_string();
            self.err(
                a.max_concurrent_hashes.span(),
                "auth.max_concurrent_hashes",
                msg,
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(AuthPolicy {
            users: Arc::new(users?),
            keys: crate::auth::SessionKeys::new(current?, previous.flatten()),
            idle_timeout: idle,
            absolute_timeout: absolute,
            totp_skew: skew,
            lockout: LockoutRule {
                failures,
                window: a.lockout_window.0.as_secs().max(1),
                duration: a.lockout_duration.0.as_secs().max(1),
            },
            login_rate: login_rate?,
            max_concurrent_hashes: hashes,
            break_glass_file: a
                .break_glass_file
                .as_ref()
                .map(|f| self.cfg.resolve(f.get_ref())),
        })
    }

    /// Reads a file holding secrets: refused if other users may read it.
    fn secret_file(
        &mut self,
        path: &Path,
        span: std::ops::Range<usize>,
        field: &str,
    ) -> Option<Vec<u8>> {
        let bytes = match self.read_file(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && field.ends_with("key_file") => {
                let msg = format!(
                    "{} does not exist: `moat run` creates it (mode 0600) on first start",
                    path.display()
                );
                self.err(span, field, msg);
                return None;
            }
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                self.err(span, field, msg);
                return None;
            }
        };
        if let Err(msg) = crate::auth::users::check_secret_file_mode(path) {
            self.err(span, field, msg);
            return None;
        }
        Some(bytes)
    }

    /// `access`, `users`, `groups`, `http.user_header` and the grant
    /// settings of `mfa` TCP services.
    fn access_mode(
        &mut self,
        s: &ServiceSection,
        field: &str,
        auth: Option<&AuthPolicy>,
        tls: bool,
    ) -> AccessMode {
        let user_header = s.http.as_ref().and_then(|h| h.user_header.as_ref());
        let grant_settings = self.grant_settings(s, field, auth);
        let portal = s.protocol == Protocol::Portal;
        if *s.access.get_ref() == AccessKind::Network && !portal {
            for (list, name) in [(&s.users, "users"), (&s.groups, "groups")] {
                if let Some(first) = list.first() {
                    let msg = format!("`{name}` needs `access = \"mfa\"`");
                    self.err(first.span(), &format!("{field}.{name}"), msg);
                }
            }
            if let Some(h) = user_header {
                let msg = "`user_header` needs `access = \"mfa\"`".to_string();
                self.err(h.span(), &format!("{field}.http.user_header"), msg);
            }
            return AccessMode::Network;
        }
        // A portal's `access` is implied: people sign in to it.
        let (span, what) = if portal {
            (s.name.span(), "a portal")
        } else {
            (s.access.span(), "access = \"mfa\"")
        };
        let at = if portal {
            field.to_string()
        } else {
            format!("{field}.access")
        };
        // A grant is opened on a portal, over HTTPS; the TCP service itself
        // may be a legacy cleartext protocol (DICOM without TLS).
        if !tls && s.protocol != Protocol::Tcp {
            // The session cookie is `Secure` and `__Host-`: browsers never
            // send it over cleartext, and a password must not cross it.
            let msg = format!("{what} needs a [tls] table: passwords and session cookies never travel in cleartext");
            self.err(span.clone(), &at, msg);
        }
        // (An [auth] section with errors of its own has reported them.)
        if auth.is_none() && self.cfg.file.auth.is_none() {
            let msg = format!("{what} needs an [auth] section (users_file, session_key_file)");
            self.err(span.clone(), &at, msg);
        }
        if s.users.is_empty() && s.groups.is_empty() && !portal {
            let msg = "access = \"mfa\" admits no one: list `users` or `groups`";
            self.err(span, &at, msg.into());
        }
        let names = |list: &[Spanned<String>]| -> Vec<Arc<str>> {
            list.iter()
                .map(|n| Arc::from(n.get_ref().as_str()))
                .collect()
        };
        let user_header = user_header.and_then(|h| {
            let name = h.get_ref();
            let parsed = http::HeaderName::from_bytes(name.as_bytes()).ok();
            let reserved = parsed
                .as_ref()
                .is_some_and(crate::proxy::headers::is_reserved);
            match parsed {
                Some(_) if portal => {
                    let msg = "a portal proxies nothing: `user_header` has no device to reach";
                    self.err(h.span(), &format!("{field}.http.user_header"), msg.into());
                    None
                }
                Some(n) if !reserved => Some(n),
                _ => {
                    let msg = format!("{name:?} is not a header name moat may set (a valid name, not a hop-by-hop, Host, Cookie or forwarding header)");
                    self.err(h.span(), &format!("{field}.http.user_header"), msg);
                    None
                }
            }
        });
        let who = MfaRule {
            users: names(&s.users),
            groups: names(&s.groups),
            user_header,
            anyone: portal && s.users.is_empty() && s.groups.is_empty(),
        };
        match (s.protocol, grant_settings) {
            (Protocol::Tcp, Some((max_grant, on_end, break_glass))) => {
                AccessMode::Grant(crate::auth::GrantRule {
                    who,
                    max_grant,
                    on_end,
                    break_glass,
                })
            }
            _ => AccessMode::Mfa(who),
        }
    }

    /// `max_grant`, `on_grant_end`, `break_glass`, `break_glass_grant`:
    /// for `mfa` TCP services only. `None` when they do not apply.
    fn grant_settings(
        &mut self,
        s: &ServiceSection,
        field: &str,
        auth: Option<&AuthPolicy>,
    ) -> Option<(
        std::time::Duration,
        crate::config::schema::OnGrantEnd,
        Option<std::time::Duration>,
    )> {
        use crate::auth::{DEFAULT_BREAK_GLASS_GRANT, DEFAULT_MAX_GRANT, GRANT_CEILING};
        let grants = s.protocol == Protocol::Tcp && *s.access.get_ref() == AccessKind::Mfa;
        let break_glass = s.break_glass.as_ref().is_some_and(|b| *b.get_ref());
        if !grants {
            let set = [
                ("max_grant", s.max_grant.as_ref().map(|v| v.span())),
                ("on_grant_end", s.on_grant_end.as_ref().map(|v| v.span())),
                ("break_glass", s.break_glass.as_ref().map(|v| v.span())),
                (
                    "break_glass_grant",
                    s.break_glass_grant.as_ref().map(|v| v.span()),
                ),
            ];
            for (name, span) in set {
                if let Some(span) = span {
                    let msg =
                        format!("`{name}` is for grants: a `tcp` service with `access = \"mfa\"`");
                    self.err(span, &format!("{field}.{name}"), msg);
                }
            }
            return None;
        }
        let within = |this: &mut Self, v: &Option<Spanned<HumanDuration>>, name: &str, default| {
            let Some(v) = v else { return default };
            let d = v.get_ref().0;
            if d < std::time::Duration::from_secs(60) || d > GRANT_CEILING {
                let msg = "must be between 1m and 12h".to_string();
                this.err(v.span(), &format!("{field}.{name}"), msg);
            }
            d
        };
        let max_grant = within(self, &s.max_grant, "max_grant", DEFAULT_MAX_GRANT);
        let glass_grant = within(
            self,
            &s.break_glass_grant,
            "break_glass_grant",
            DEFAULT_BREAK_GLASS_GRANT,
        );
        if let (false, Some(g)) = (break_glass, &s.break_glass_grant) {
            let msg = "`break_glass_grant` needs `break_glass = true`".to_string();
            self.err(g.span(), &format!("{field}.break_glass_grant"), msg);
        }
        if break_glass {
            let has_file = auth.map_or(
                self.cfg
                    .file
                    .auth
                    .as_ref()
                    .is_some_and(|a| a.break_glass_file.is_some()),
                |a| a.break_glass_file.is_some(),
            );
            if !has_file {
                let span = s.break_glass.as_ref().map(|b| b.span()).unwrap_or_default();
                let msg = "`break_glass = true` needs `[auth] break_glass_file` (where `moat breakglass issue` keeps the codes' hashes)".to_string();
                self.err(span, &format!("{field}.break_glass"), msg);
            }
        }
        let on_end = s
            .on_grant_end
            .as_ref()
            .map(|o| *o.get_ref())
            .unwrap_or_default();
        Some((max_grant, on_end, break_glass.then_some(glass_grant)))
    }

    fn tls(
        &mut self,
        t: &TlsSection,
        field: &str,
        default_alpn: &[&str],
    ) -> Option<tls::TlsTermination> {
        let before = self.errors.len();
        let mut certificates = Vec::new();
        if t.certificates.get_ref().is_empty() {
            self.err(
                t.certificates.span(),
                &format!("{field}.certificates"),
                "at least one certificate is needed".into(),
            );
        }
        for (i, pair) in t.certificates.get_ref().iter().enumerate() {
            let cert = self.cfg.resolve(pair.cert.get_ref());
            let key = self.cfg.resolve(pair.key.get_ref());
            // Read through the compiler so the files are hashed and watched.
            let _ = self.read_file(&cert);
            let _ = self.read_file(&key);
            match tls::load_certificate(&cert, &key) {
                Ok(c) => certificates.push(c),
                Err(msg) => {
                    let span = if msg.starts_with(&key.display().to_string()) {
                        pair.key.span()
                    } else {
                        pair.cert.span()
                    };
                    self.err(span, &format!("{field}.certificates[{i}]"), msg);
                }
            }
        }
        let client_roots = match &t.client_ca {
            Some(ca) => {
                let path = self.cfg.resolve(ca.get_ref());
                let _ = self.read_file(&path);
                match tls::load_roots(&path) {
                    Ok(r) => Some(r),
                    Err(msg) => {
                        self.err(ca.span(), &format!("{field}.client_ca"), msg);
                        None
                    }
                }
            }
            None => None,
        };
        let client_cert = match (&t.client_ca, &t.client_cert) {
            (Some(_), None) => Some(ClientCertMode::Required),
            (Some(_), Some(m)) => Some(*m.get_ref()),
            (None, Some(m)) => {
                self.err(
                    m.span(),
                    &format!("{field}.client_cert"),
                    "needs `client_ca` to verify client certificates against".into(),
                );
                None
            }
            (None, None) => None,
        };
        if self.errors.len() != before {
            return None;
        }
        // Everything that shapes the termination, for change detection.
        let mut fp = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut files: Vec<&str> = t
            .certificates
            .get_ref()
            .iter()
            .flat_map(|p| [p.cert.get_ref().as_str(), p.key.get_ref().as_str()])
            .collect();
        files.extend(t.client_ca.as_ref().map(|c| c.get_ref().as_str()));
        for f in files {
            fp.update(f.as_bytes());
            fp.update(
                self.sources
                    .get(&self.cfg.resolve(f))
                    .map_or(&[][..], |b| b.as_slice()),
            );
        }
        fp.update(
            format!(
                "{:?}{:?}{:?}{}",
                t.alpn, t.min_version, client_cert, t.session_resumption
            )
            .as_bytes(),
        );
        let inputs = tls::TlsInputs {
            fingerprint: tls::hex(fp.finish().as_ref()),
            certificates,
            alpn: if t.alpn.is_empty() {
                default_alpn.iter().map(|s| s.to_string()).collect()
            } else {
                t.alpn.clone()
            },
            min_version: t.min_version,
            session_resumption: t.session_resumption,
            client_roots,
            client_cert,
        };
        match tls::build_termination(inputs) {
            Ok(t) => Some(t),
            Err(msg) => {
                let e = ConfigError::file(&self.cfg.path, msg).with_field(field);
                self.errors.push(e);
                None
            }
        }
    }
}

impl Compiler<'_> {
    fn limits(
        &mut self,
        l: &LimitsSection,
        field: &str,
        protocol: Protocol,
        max_connections: u32,
    ) -> LimitsPolicy {
        let rate = |spec: &Option<Spanned<String>>, name: &str, this: &mut Self| {
            let spec = spec.as_ref()?;
            match RateSpec::parse(spec.get_ref()) {
                Ok(r) => Some(r),
                Err(msg) => {
                    this.err(spec.span(), &format!("{field}.{name}"), msg);
                    None
                }
            }
        };
        let policy = LimitsPolicy {
            connections_per_client: rate(&l.connections_per_client, "connections_per_client", self),
            requests_per_client: rate(&l.requests_per_client, "requests_per_client", self),
            requests_per_identity: rate(&l.requests_per_identity, "requests_per_identity", self),
            device_rate: rate(&l.device_rate, "device_rate", self),
            max_in_flight: l.max_in_flight.as_ref().map(|m| *m.get_ref()),
            max_connections_per_client: l
                .max_connections_per_client
                .as_ref()
                .map_or_else(|| default_per_client(max_connections), |m| *m.get_ref()),
            queue_timeout: match (l.queue_timeout, protocol) {
                (Some(t), _) => t.0,
                (None, Protocol::Http | Protocol::Portal) => std::time::Duration::from_millis(100),
                (None, Protocol::Tcp) => std::time::Duration::ZERO,
            },
        };
        if let Some(m) = &l.max_connections_per_client {
            if *m.get_ref() == 0 {
                self.err(
                    m.span(),
                    &format!("{field}.max_connections_per_client"),
                    "must be at least 1".into(),
                );
            }
        }
        if let Some(m) = &l.max_in_flight {
            if *m.get_ref() == 0 {
                self.err(
                    m.span(),
                    &format!("{field}.max_in_flight"),
                    "must be at least 1".into(),
                );
            }
        }
        if protocol == Protocol::Tcp {
            for (set, name) in [
                (&l.requests_per_client, "requests_per_client"),
                (&l.requests_per_identity, "requests_per_identity"),
            ] {
                if let Some(v) = set {
                    self.err(
                        v.span(),
                        &format!("{field}.{name}"),
                        "applies to `protocol = \"http\"` only".into(),
                    );
                }
            }
            if let Some(m) = &l.max_in_flight {
                let msg = "applies to `protocol = \"http\"` only; TCP services cap connections with `max_connections`";
                self.err(m.span(), &format!("{field}.max_in_flight"), msg.into());
            }
        }
        policy
    }
}

/// `max_connections_per_client` when not set: a quarter of the service's
/// connections, so one host (a scanner, a stuck script, a slow-client
/// attack) cannot lock the others out, but never under 8 (a browser opens
/// 6 per host, a workstation's DICOM or PACS client a handful of parallel
/// associations), unless the cap itself is smaller.
pub fn default_per_client(max_connections: u32) -> u32 {
    (max_connections / 4).max(max_connections.min(8))
}

/// The [http] table as if written empty: every default.
fn default_http() -> HttpSection {
    toml::from_str("").expect("all HTTP settings have defaults")
}

impl Compiler<'_> {
    fn http(
        &mut self,
        h: &HttpSection,
        field: &str,
        upstream: Option<&Upstream>,
    ) -> Option<HttpPolicy> {
        let before = self.errors.len();
        let mut rules = Vec::new();
        for (i, r) in h.rules.iter().enumerate() {
            let rfield = format!("{field}.rule[{i}]");
            let mut methods = Vec::new();
            for m in &r.methods {
                match http::Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) if m.get_ref().chars().all(|c| c.is_ascii_uppercase()) => {
                        methods.push(method)
                    }
                    _ => self.err(
                        m.span(),
                        &format!("{rfield}.methods"),
                        format!("{:?} is not an HTTP method such as \"POST\"", m.get_ref()),
                    ),
                }
            }
            match Glob::new(r.path.get_ref()) {
                Ok(path) => rules.push(RequestRule {
                    action: r.action,
                    methods,
                    path,
                    text: {
                        let action = match r.action {
                            RuleAction::Allow => "allow",
                            RuleAction::Deny => "deny",
                        };
                        let methods: Vec<&str> =
                            r.methods.iter().map(|m| m.get_ref().as_str()).collect();
                        let methods = if methods.is_empty() {
                            "*".to_string()
                        } else {
                            methods.join(",")
                        };
                        format!("{action} {methods} {}", r.path.get_ref())
                    },
                }),
                Err(msg) => self.err(r.path.span(), &format!("{rfield}.path"), msg),
            }
        }
        if h.max_header_bytes < 1024 {
            self.err_in_file(
                &format!("{field}.max_header_bytes"),
                "must be at least 1024".into(),
            );
        }
        let upstream_tls = match &h.upstream_tls {
            None => None,
            Some(u) => {
                let mut fp = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let roots = match &u.ca {
                    Some(ca) => {
                        let path = self.cfg.resolve(ca.get_ref());
                        let _ = self.read_file(&path).map(|b| fp.update(&b));
                        match tls::load_roots(&path) {
                            Ok(r) => Some(r),
                            Err(msg) => {
                                self.err(ca.span(), &format!("{field}.upstream_tls.ca"), msg);
                                None
                            }
                        }
                    }
                    None => None,
                };
                let pin = match &u.pin_sha256 {
                    Some(p) => match tls::parse_pin(p.get_ref()) {
                        Ok(pin) => {
                            fp.update(&pin);
                            Some(pin)
                        }
                        Err(msg) => {
                            self.err(p.span(), &format!("{field}.upstream_tls.pin_sha256"), msg);
                            None
                        }
                    },
                    None => None,
                };
                if u.ca.is_some() == u.pin_sha256.is_some() {
                    self.err_in_file(
                        &format!("{field}.upstream_tls"),
                        "set exactly one of `ca` and `pin_sha256`".into(),
                    );
                }
                let server_name = u
                    .server_name
                    .clone()
                    .or_else(|| upstream.map(|u| u.host.clone()))
                    .unwrap_or_default();
                fp.update(server_name.as_bytes());
                let parsed_name = rustls::pki_types::ServerName::try_from(server_name.clone());
                if parsed_name.is_err() {
                    self.err_in_file(
                        &format!("{field}.upstream_tls.server_name"),
                        format!("{server_name:?} is not a DNS name or IP address"),
                    );
                }
                match parsed_name {
                    Err(_) => None,
                    Ok(_) if self.errors.len() != before => None,
                    Ok(server_name) => match tls::upstream_client_config(roots, pin) {
                        Ok(config) => Some(UpstreamTls {
                            config: std::sync::Arc::new(config),
                            server_name,
                            fingerprint: tls::hex(fp.finish().as_ref()),
                        }),
                        Err(msg) => {
                            self.err_in_file(&format!("{field}.upstream_tls"), msg);
                            None
                        }
                    },
                }
            }
        };
        // Explicit names; the default needs the service's certificates and
        // listen address, and is filled in by `service`.
        let hosts = match &h.hosts {
            None => HostNames::default(),
            Some(list) if list.get_ref().is_empty() => {
                let msg = "an empty list admits no request; list the names clients use, or remove `hosts` for the default (the certificates' names and the listen address)";
                self.err(list.span(), &format!("{field}.hosts"), msg.into());
                HostNames::default()
            }
            Some(list) => {
                let mut hosts = HostNames::default();
                for entry in list.get_ref() {
                    match HostNames::parse(&[entry.get_ref().as_str()]) {
                        Ok(one) => hosts.extend(one),
                        Err(msg) => self.err(entry.span(), &format!("{field}.hosts"), msg),
                    }
                }
                hosts
            }
        };
        let min_body_rate = self.body_rate(h, field);
        if h.body_read_timeout.0.is_zero() {
            self.err_in_file(
                &format!("{field}.body_read_timeout"),
                "must be more than 0".into(),
            );
        }
        if self.errors.len() != before {
            return None;
        }
        let host_rewrite = match h.host_rewrite.as_deref() {
            Some("upstream") => upstream.map(|u| u.to_string()),
            other => other.map(str::to_string),
        };
        Some(HttpPolicy {
            rules,
            max_body_bytes: h.max_body_bytes,
            max_header_bytes: h.max_header_bytes,
            max_headers: h.max_headers,
            header_read_timeout: h.header_read_timeout.0,
            response_timeout: h.response_timeout.0,
            keepalive_timeout: h.keepalive_timeout.0,
            body_read_timeout: h.body_read_timeout.0,
            min_body_rate,
            host_rewrite,
            hardening_headers: h.hardening_headers,
            audit_allowed: h.audit_allowed,
            max_concurrent_streams: h.max_concurrent_streams,
            upstream_tls,
            hosts,
        })
    }
}

impl Compiler<'_> {
    fn body_rate(&mut self, h: &HttpSection, field: &str) -> u64 {
        let spec = &h.min_body_rate;
        crate::proxy::client_body::parse_byte_rate(spec.get_ref()).unwrap_or_else(|msg| {
            self.err(spec.span(), &format!("{field}.min_body_rate"), msg);
            0
        })
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Entries with a ':' or a leading digit are addresses; anything else is a
/// network-set name.
fn looks_like_address(s: &str) -> bool {
    s.contains(':') || s.starts_with(|c: char| c.is_ascii_digit())
}

mod guard;
mod inventory;
mod siem;

#[cfg(test)]
mod tests;
