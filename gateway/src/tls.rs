//! TLS termination: compiling a service's TLS settings into a rustls
//! `ServerConfig`, choosing a certificate by SNI, and naming the client
//! behind a client certificate.
//!
//! Only TLS 1.2 and 1.3 exist in rustls, so nothing older can ever be
//! negotiated; `min_version = "1.3"` narrows that further.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::Serialize;

use crate::config::schema::{ClientCertMode, TlsVersion};

/// The crypto provider used everywhere in moat: aws-lc-rs with rustls'
/// suites, AES-128-GCM first. All of them are strong; AES-128-GCM is the
/// first choice of Mozilla's TLS guidelines, and its SHA-256 key schedule
/// runs on the CPU's SHA extensions where SHA-384's does not (12 % of a
/// full handshake on the benchmark machine, docs/benchmarks.md).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let rank = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (suite.version() != &rustls::version::TLS13, rank)
    });
    Arc::new(provider)
}

/// A compiled TLS termination for one service.
#[derive(Debug)]
pub struct TlsTermination {
    pub server_config: Arc<ServerConfig>,
    pub min_version: TlsVersion,
    pub client_cert: Option<ClientCertMode>,
    /// Kept to re-verify live connections' client certificates when a new
    /// policy changes the trusted CA.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// SHA-256 over the certificates, keys, CA and settings: tells a reload
    /// whether anything about this termination changed.
    pub fingerprint: String,
    /// Names and files of the certificates served, for summaries.
    pub certificates: Vec<LoadedCertificate>,
}

/// A certificate chain and its key, checked to belong together.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names (from SANs) this certificate answers for under SNI.
    pub dns_names: Vec<String>,
    /// IP addresses (from SANs) this certificate answers for.
    pub ip_addresses: Vec<std::net::IpAddr>,
    pub not_after: String,
    /// The same, as Unix seconds (`moat_tls_certificate_expiry_timestamp_seconds`).
    pub not_after_unix: i64,
    /// The certificate file, as resolved from the policy.
    pub path: std::path::PathBuf,
}

/// A problem with one TLS input file; the caller adds the config location.
pub type TlsError = String;

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: contains no PEM certificate", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: not a PEM key file: {e}", path.display()))?
        .ok_or_else(|| format!("{}: contains no PEM private key", path.display()))
}

/// Loads a chain and key, refusing mismatched pairs and expired leaves.
pub fn load_certificate(cert_path: &Path, key_path: &Path) -> Result<LoadedCertificate, TlsError> {
    let chain = load_certs(cert_path)?;
    let key_der = load_key(key_path)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| {
        format!(
            "{} does not match the certificate in {}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    let leaf_der = certified
        .end_entity_cert()
        .expect("chain is not empty")
        .to_vec();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
        .map_err(|e| format!("{}: cannot parse certificate: {e}", cert_path.display()))?;
    let validity = leaf.validity();
    if !validity.is_valid() {
        return Err(format!(
            "{}: certificate is not valid now (valid {} to {})",
            cert_path.display(),
            validity.not_before,
            validity.not_after
        ));
    }
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    dns_names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match *b {
                        &[a, b, c, d] => Some(std::net::IpAddr::from([a, b, c, d])),
                        _ => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                    };
                    ip_addresses.extend(ip);
                }
                _ => {}
            }
        }
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        dns_names,
        ip_addresses,
        not_after: validity.not_after.to_string(),
        not_after_unix: validity.not_after.timestamp(),
        path: cert_path.to_path_buf(),
    })
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

pub struct TlsInputs {
    pub certificates: Vec<LoadedCertificate>,
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    pub session_resumption: bool,
    pub client_roots: Option<RootCertStore>,
    pub client_cert: Option<ClientCertMode>,
    pub fingerprint: String,
}

pub fn build_termination(inputs: TlsInputs) -> Result<TlsTermination, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match inputs.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let client_verifier = match (&inputs.client_roots, inputs.client_cert) {
        (Some(roots), Some(mode)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider());
            let verifier = match mode {
                ClientCertMode::Required => verifier,
                ClientCertMode::Optional => verifier.allow_unauthenticated(),
            };
            Some(verifier.build().map_err(|e| format!("client_ca: {e}"))?)
        }
        _ => None,
    };
    let builder = match &client_verifier {
        Some(v) => builder.with_client_cert_verifier(v.clone()),
        None => builder.with_no_client_auth(),
    };
    let resolver = SniResolver::new(&inputs.certificates);
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // moat's order (see `provider`), not the client's.
    config.ignore_client_order = true;
    config.alpn_protocols = inputs.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !inputs.session_resumption {
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    Ok(TlsTermination {
        server_config: Arc::new(config),
        min_version: inputs.min_version,
        client_cert: inputs.client_cert,
        client_verifier,
        fingerprint: inputs.fingerprint,
        certificates: inputs.certificates,
    })
}

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then
/// the first certificate configured (also used when the client sends no SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certs: &[LoadedCertificate]) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.dns_names {
                let map = if name.starts_with("*.") {
                    &mut wildcard
                } else {
                    &mut exact
                };
                let key = name.trim_start_matches("*.").to_string();
                // The first certificate that names a host wins, as in the file.
                map.entry(key).or_insert_with(|| c.key.clone());
            }
        }
        SniResolver {
            exact,
            wildcard,
            default: certs[0].key.clone(),
        }
    }

    fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        self.exact.get(&sni).or_else(|| {
            sni.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| self.find(sni));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// Who a client certificate says the client is. Recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientIdentity {
    /// The common name, or the subject when there is none: what rules,
    /// rate limits and the audit trail call this client.
    pub name: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<String>,
    pub fingerprint_sha256: String,
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo (what certificate
/// grants bind, and what `openssl x509 -pubkey | openssl pkey -pubin
/// -outform der | sha256sum` prints).
pub fn spki_sha256(der: &[u8]) -> Option<crate::auth::grants::Spki> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.tbs_certificate.subject_pki.raw,
    );
    digest.as_ref().try_into().ok()
}

impl ClientIdentity {
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut sans = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            use x509_parser::extensions::GeneralName as N;
            for name in &san.value.general_names {
                match name {
                    N::DNSName(d) => sans.push(format!("DNS:{d}")),
                    N::RFC822Name(m) => sans.push(format!("email:{m}")),
                    N::URI(u) => sans.push(format!("URI:{u}")),
                    N::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let subject = cert.subject().to_string();
        Some(ClientIdentity {
            name: common_name.clone().unwrap_or_else(|| subject.clone()),
            subject,
            common_name,
            sans,
            fingerprint_sha256: hex(digest.as_ref()),
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A printable name for a negotiated protocol version ("TLSv1.3").
pub fn version_name(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// TLS towards a device: verified against a CA, or pinned to the SHA-256
/// of the device's own certificate (legacy devices rarely have one a CA
/// would sign, and often an expired self-signed one).
pub fn upstream_client_config(
    roots: Option<RootCertStore>,
    pin: Option<[u8; 32]>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let config = match (roots, pin) {
        (_, Some(pin)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                pin,
                provider: provider(),
            }))
            .with_no_client_auth(),
        (Some(roots), None) => builder.with_root_certificates(roots).with_no_client_auth(),
        (None, None) => return Err("upstream_tls needs `ca` or `pin_sha256`".into()),
    };
    // No ALPN: moat speaks HTTP/1.1 to devices, which legacy TLS stacks
    // take without it (some choke on extensions they do not know).
    Ok(config)
}

/// Accepts exactly one certificate, by its SHA-256; still checks that the
/// peer holds its key (handshake signatures are verified normally).
#[derive(Debug)]
struct PinnedCertVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        aws_lc_rs::constant_time::verify_slices_are_equal(digest.as_ref(), &self.pin)
            .map(|_| rustls::client::danger::ServerCertVerified::assertion())
            .map_err(|_| {
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                )
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parses a SHA-256 pin written as hex, with or without colons.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}
