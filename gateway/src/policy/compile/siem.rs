//! `[siem]`: the syslog-over-TLS sink of the audit trail. Every problem
//! is reported at once, with its line and field.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use toml::Spanned;

use super::Compiler;
use crate::audit::siem::rfc5424::{facility_by_name, is_header_field, FACILITIES};
use crate::audit::siem::SiemPolicy;
use crate::config::did_you_mean;
use crate::config::schema::SiemSection;

const DEFAULT_SPOOL_MAX: u64 = 256 << 20;
/// Smaller would not hold a handful of events.
const MIN_SPOOL_MAX: u64 = 4096;

impl Compiler<'_> {
    pub(super) fn siem(&mut self, s: &Spanned<SiemSection>) -> Option<SiemPolicy> {
        let before = self.errors.len();
        let table = s.span();
        let s = s.get_ref();
        let address = s.address.get_ref().trim().to_string();
        let host = match split_host_port(&address) {
            Ok(host) => Some(host.to_string()),
            Err(msg) => {
                self.err(s.address.span(), "siem.address", msg);
                None
            }
        };
        let server_name = match (&s.server_name, host) {
            (Some(n), _) => self.server_name(n.get_ref(), n.span(), "siem.server_name"),
            (None, Some(h)) => self.server_name(&h, s.address.span(), "siem.address"),
            (None, None) => None,
        };

        let ca_path = self.cfg.resolve(s.ca.get_ref());
        let roots = crate::tls::load_roots(&ca_path)
            .map_err(|msg| self.err(s.ca.span(), "siem.ca", msg))
            .ok();
        if let Ok(bytes) = std::fs::read(&ca_path) {
            // Hashed with the policy, like every file it names.
            self.sources.insert(ca_path.clone(), bytes);
        }
        let client = match (&s.client_cert, &s.client_key) {
            (None, None) => Some(None),
            (Some(c), Some(k)) => self.client_identity(c, k).map(Some),
            (Some(c), None) => {
                let msg = "`client_cert` needs `client_key` (both or neither)".to_string();
                self.err(c.span(), "siem.client_key", msg);
                None
            }
            (None, Some(k)) => {
                let msg = "`client_key` needs `client_cert` (both or neither)".to_string();
                self.err(k.span(), "siem.client_cert", msg);
                None
            }
        };

        let spool_dir = self.cfg.resolve(s.spool_dir.get_ref());
        if let Err(msg) = check_spool_dir(&spool_dir) {
            self.err(s.spool_dir.span(), "siem.spool_dir", msg);
        }
        let spool_max_bytes = match &s.spool_max_bytes {
            None => DEFAULT_SPOOL_MAX,
            Some(v) => match parse_size(v.get_ref()) {
                Ok(n) if n >= MIN_SPOOL_MAX => n,
                Ok(_) => {
                    let msg = format!("must be at least {MIN_SPOOL_MAX} bytes (\"4KiB\")");
                    self.err(v.span(), "siem.spool_max_bytes", msg);
                    0
                }
                Err(msg) => {
                    self.err(v.span(), "siem.spool_max_bytes", msg);
                    0
                }
            },
        };
        let app_name = match &s.app_name {
            None => "moat".to_string(),
            Some(v) => self.header_field(v, "siem.app_name", 48),
        };
        let hostname = match &s.hostname {
            None => system_hostname(),
            Some(v) => self.header_field(v, "siem.hostname", 255),
        };
        let facility = match &s.facility {
            None => facility_by_name("local4").expect("local4"),
            Some(v) => match facility_by_name(v.get_ref()) {
                Some(f) => f,
                None => {
                    let hint = did_you_mean(v.get_ref(), FACILITIES)
                        .map(|d| format!(" (did you mean {d:?}?)"))
                        .unwrap_or_default();
                    let msg = format!(
                        "{:?} is not a syslog facility{hint}; one of {}",
                        v.get_ref(),
                        FACILITIES.join(", ")
                    );
                    self.err(v.span(), "siem.facility", msg);
                    0
                }
            },
        };
        if self.errors.len() != before {
            return None;
        }
        let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .ok()?
            .with_root_certificates(roots?);
        let tls = match client? {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => match builder.with_client_auth_cert(chain, key) {
                Ok(c) => c,
                Err(e) => {
                    let span = s.client_cert.as_ref().map(|c| c.span()).unwrap_or_default();
                    self.err(span, "siem.client_cert", format!("unusable: {e}"));
                    return None;
                }
            },
        };
        let mut inputs = self
            .cfg
            .source
            .get(table)
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        let files = [Some(&s.ca), s.client_cert.as_ref(), s.client_key.as_ref()];
        for f in files.into_iter().flatten() {
            let path = self.cfg.resolve(f.get_ref());
            inputs.extend_from_slice(self.sources.get(&path).map_or(&[][..], |b| b));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &inputs);
        let fingerprint = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(SiemPolicy {
            fingerprint,
            address,
            server_name: server_name?,
            tls: Arc::new(tls),
            spool_dir,
            spool_max_bytes,
            app_name,
            hostname,
            facility,
        })
    }

    fn server_name(
        &mut self,
        name: &str,
        span: std::ops::Range<usize>,
        field: &str,
    ) -> Option<ServerName<'static>> {
        match ServerName::try_from(name.to_string()) {
            Ok(n) => Some(n),
            Err(_) => {
                let msg =
                    format!("{name:?} is not a DNS name or IP address a certificate can carry");
                self.err(span, field, msg);
                None
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn client_identity(
        &mut self,
        cert: &Spanned<String>,
        key: &Spanned<String>,
    ) -> Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )> {
        let cert_path = self.cfg.resolve(cert.get_ref());
        let key_path = self.cfg.resolve(key.get_ref());
        let mut ok = true;
        if let Err(msg) = crate::auth::users::check_secret_file_mode(&key_path) {
            self.err(key.span(), "siem.client_key", msg);
            ok = false;
        }
        if ok {
            if let Err(msg) = crate::tls::load_certificate(&cert_path, &key_path) {
                let (span, field) = if msg.starts_with(&key_path.display().to_string()) {
                    (key.span(), "siem.client_key")
                } else {
                    (cert.span(), "siem.client_cert")
                };
                self.err(span, field, msg);
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        for p in [&cert_path, &key_path] {
            if let Ok(bytes) = std::fs::read(p) {
                self.sources.insert(p.clone(), bytes);
            }
        }
        let chain = crate::tls::load_certs(&cert_path).ok()?;
        let key = crate::tls::load_key(&key_path).ok()?;
        Some((chain, key))
    }

    fn header_field(&mut self, v: &Spanned<String>, field: &str, max: usize) -> String {
        let raw = v.get_ref();
        if !is_header_field(raw, max) {
            let msg = format!(
                "{raw:?} must be 1 to {max} printable ASCII characters without spaces (RFC 5424)"
            );
            self.err(v.span(), field, msg);
        }
        raw.clone()
    }
}

/// `host:port`, `[v6]:port`: the host.
pub(crate) fn split_host_port(address: &str) -> Result<&str, String> {
    let bad = || {
        format!(
            "{address:?} is not host:port, such as \"siem.example.org:6514\" or \"[2001:db8::5]:6514\""
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(host),
        _ => Err(format!(
            "{address:?}: {port:?} is not a port from 1 to 65535 (6514 is syslog over TLS)"
        )),
    }
}

/// "256MiB", "64 KiB", "1GB", "4096".
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a size such as \"256MiB\", \"1GiB\" or \"65536\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// The spool directory exists, or can be created (its parent exists).
fn check_spool_dir(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists and is not a directory", dir.display())),
        Err(_) => {
            let mut parent = dir.parent();
            while let Some(p) = parent {
                if let Ok(m) = std::fs::metadata(p) {
                    return if m.is_dir() {
                        Ok(())
                    } else {
                        Err(format!("{} is not a directory", p.display()))
                    };
                }
                parent = p.parent();
            }
            Err(format!("{} cannot be created", dir.display()))
        }
    }
}

/// The system's host name, or "-" (RFC 5424's NILVALUE) if it has none fit
/// for a syslog header.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if is_header_field(&name, 255) {
        name
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests;
