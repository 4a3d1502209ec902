//! Development certificates (`moat certs dev DIR`): a throwaway CA, server
//! certificates (ECDSA P-256 and RSA-2048) and a client certificate, for
//! tests and the demo. Never for real devices: the CA key sits next to them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The files `write_dev_set` produces.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_rsa_cert: PathBuf,
    pub server_rsa_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// DNS name of the RSA server certificate (the ECDSA one answers `localhost`).
pub const RSA_SERVER_NAME: &str = "rsa.moat.test";
/// Common name of the dev client certificate.
pub const CLIENT_NAME: &str = "dev-client";

/// A CA that can issue certificates.
pub struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Authority {
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Authority { key, cert })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Issues a leaf. `rsa` picks RSA-2048 over ECDSA P-256; `valid_years`
    /// of `None` makes a certificate that expired long ago (for tests).
    pub fn issue(&self, spec: &LeafSpec) -> Result<(String, String)> {
        let key = if spec.rsa {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
        } else {
            KeyPair::generate()?
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&spec.common_name);
        for n in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(n.as_str().try_into()?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![if spec.client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
    pub rsa: bool,
    pub client: bool,
    pub expired: bool,
}

impl LeafSpec {
    pub fn server(names: &[&str]) -> Self {
        LeafSpec {
            common_name: names.first().copied().unwrap_or("server").to_string(),
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "moat development");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Writes a full development set into `dir`.
pub fn write_dev_set(dir: &Path) -> Result<DevCerts> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = Authority::new("moat dev CA")?;
    let mut server = LeafSpec::server(&["localhost"]);
    server.ips = vec!["127.0.0.1".parse()?, "::1".parse()?];
    let rsa = LeafSpec {
        rsa: true,
        ..LeafSpec::server(&[RSA_SERVER_NAME])
    };
    let client = LeafSpec {
        common_name: CLIENT_NAME.into(),
        dns_names: vec![format!("{CLIENT_NAME}.moat.test")],
        client: true,
        ..Default::default()
    };
    let set = DevCerts {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        server_rsa_cert: dir.join("server-rsa.pem"),
        server_rsa_key: dir.join("server-rsa.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    write(&set.ca, &ca.cert_pem(), false)?;
    write(&dir.join("ca.key"), &ca.key.serialize_pem(), true)?;
    for (spec, cert, key) in [
        (&server, &set.server_cert, &set.server_key),
        (&rsa, &set.server_rsa_cert, &set.server_rsa_key),
        (&client, &set.client_cert, &set.client_key),
    ] {
        let (c, k) = ca.issue(spec)?;
        write(cert, &c, false)?;
        write(key, &k, true)?;
    }
    Ok(set)
}

/// Writes a file; keys are created owner-only.
pub fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = secret;
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
