//! `moat demo`: a simulated legacy device behind the gateway, on loopback,
//! with throwaway certificates, so anyone can see moat work in a minute.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::audit::Audit;
use crate::certs;
use crate::gateway::Gateway;
use crate::metrics::Metrics;

const POLICY_TEMPLATE: &str = include_str!("../../config/demo.toml");

/// Ports used by the demo; 0 picks free ones.
pub struct DemoOptions {
    pub port: u16,
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("moat-demo-").tempdir()?;
    let certs = certs::write_dev_set(&dir.path().join("certs"))?;
    let device = start_legacy_device().await?;

    let port = |offset: u16| {
        if opts.port == 0 {
            0
        } else {
            opts.port + offset
        }
    };
    let policy_text = POLICY_TEMPLATE
        .replace("@CERTS@", &certs.dir.display().to_string())
        .replace("@DEVICE@", &device.to_string())
        .replace("@PORT_WEB@", &port(0).to_string())
        .replace("@PORT_MTLS@", &port(1).to_string())
        .replace("@PORT_UI@", &port(2).to_string())
        .replace("@PORT_MFA@", &port(3).to_string())
        .replace("@PORT_ADMIN@", &port(10).to_string());
    let policy_path = dir.path().join("demo.toml");
    std::fs::write(&policy_path, &policy_text)?;
    let user = write_demo_user(dir.path())?;
    crate::auth::create_missing_session_key(&policy_path).map_err(|e| anyhow::anyhow!(e))?;
    let policy =
        crate::policy::load(&policy_path, 1).map_err(|e| anyhow::anyhow!("demo policy: {e}"))?;

    let audit = Audit::start(&policy.audit_log, policy.siem.clone()).await?;
    let gateway = Gateway::start(policy_path.clone(), policy, audit, Arc::new(Metrics::new()))
        .await
        .context("starting the demo gateway (is the port free? try --port)")?;
    let addr_of = |name: &str| {
        gateway
            .bound()
            .into_iter()
            .find(|(k, _)| &*k.service == name)
            .map(|(_, a)| a)
            .expect("demo service is bound")
    };
    print_instructions(
        dir.path(),
        &certs,
        device,
        addr_of("web"),
        addr_of("web-mtls"),
        addr_of("web-ui"),
        gateway.admin_addr,
    );
    print_mfa_instructions(&certs, addr_of("web-mfa"), &user);

    gateway.serve_until_shutdown().await;
    Ok(())
}

fn print_instructions(
    dir: &Path,
    c: &certs::DevCerts,
    device: SocketAddr,
    web: SocketAddr,
    mtls: SocketAddr,
    ui: SocketAddr,
    admin: Option<SocketAddr>,
) {
    let ca = c.ca.display();
    let p = web.port();
    let m = mtls.port();
    let u = ui.port();
    println!(
        r#"
moat demo: a simulated legacy device is running behind the gateway.

  legacy device (plaintext, would sit on an isolated segment): {device}
  gateway, TLS:                   https://localhost:{p}
  gateway, TLS + client cert:     https://localhost:{m}
  gateway, HTTP (L7) web UI:      https://localhost:{u}
  policy and dev certificates:    {dir}

Allowed: 127.0.0.1 and 127.0.0.2 (network set "demo-clients" = 127.0.0.0/29)
  curl --cacert {ca} https://localhost:{p}/
  curl --cacert {ca} --interface 127.0.0.2 https://localhost:{p}/
  openssl s_client -connect 127.0.0.1:{p} -CAfile {ca} -servername localhost

Denied before any TLS work:
  curl --cacert {ca} --interface 127.0.0.3 https://localhost:{p}/   # denylisted
  curl --cacert {ca} --interface 127.0.0.9 https://localhost:{p}/   # not_allowlisted
Denied by TLS policy:
  openssl s_client -connect 127.0.0.1:{p} -tls1_1                       # TLS < 1.2
  curl --cacert {ca} https://localhost:{m}/                            # client_cert_required
Allowed with the dev client certificate (its identity is audited):
  curl --cacert {ca} --cert {cert} --key {key} https://localhost:{m}/
The web UI through the HTTP (L7) proxy, HTTP/1.1 or h2, with request rules:
  curl --cacert {ca} --http2 https://localhost:{u}/status             # allowed
  curl --cacert {ca} -X POST https://localhost:{u}/firmware/upload    # 403 request_denied
  curl --cacert {ca} -H 'Host: evil.example' https://localhost:{u}/   # 421 misdirected_request
SNI picks the RSA certificate:
  openssl s_client -connect 127.0.0.1:{p} -servername {rsa} </dev/null | grep 'Server public key'

Admin: curl http://{admin}/metrics   (also /healthz, /devices, /policy)
"#,
        dir = dir.display(),
        cert = c.client_cert.display(),
        key = c.client_key.display(),
        rsa = certs::RSA_SERVER_NAME,
        admin = admin
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(disabled)".into()),
    );
}

/// The demo's one user: a random password and TOTP secret, printed once.
struct DemoUser {
    password: String,
    secret: String,
}

fn write_demo_user(dir: &Path) -> Result<DemoUser> {
    use std::os::unix::fs::PermissionsExt;
    let mut raw = [0u8; 9];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow::anyhow!("no system RNG"))?;
    let password = crate::auth::totp::to_base32(&raw).to_lowercase();
    let secret = crate::auth::totp::to_base32(&crate::auth::totp::generate_secret());
    let text = format!(
        "# Written by `moat demo`. Real users files are made with `moat user add`.\n\
         [[user]]\nname = \"demo\"\ndisabled = false\ngroups = [\"biomed\"]\n\
         password = \"{}\"\ntotp_secret = \"{secret}\"\n",
        crate::auth::password::hash(&password)
    );
    let path = dir.join("users.toml");
    std::fs::write(&path, text)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(DemoUser { password, secret })
}

fn print_mfa_instructions(c: &certs::DevCerts, mfa: SocketAddr, user: &DemoUser) {
    let (ca, port) = (c.ca.display(), mfa.port());
    let (password, secret) = (&user.password, &user.secret);
    println!(
        r#"The same web UI for people, behind password + TOTP (access = "mfa"):
  gateway, HTTP (L7) with MFA:    https://localhost:{port}
  user: demo   password: {password}
  code: oathtool --totp -b {secret}
  (or add the secret to an authenticator app)
In a browser: open https://localhost:{port}/ and sign in. With curl:
  curl --cacert {ca} https://localhost:{port}/                        # 401 auth_required
  curl --cacert {ca} -c jar -b jar https://localhost:{port}/.moat/login -o login.html
  curl --cacert {ca} -c jar -b jar https://localhost:{port}/.moat/login \
       --data-urlencode username=demo --data-urlencode password={password} \
       --data-urlencode code=$(oathtool --totp -b {secret}) \
       --data-urlencode csrf=$(sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' login.html)
  curl --cacert {ca} -b jar https://localhost:{port}/status           # the device, as user demo

Every decision appears below as one JSON line (the audit trail). Ctrl-C stops.
"#
    );
}

/// A stand-in for a 2009 infusion-pump server: plaintext HTTP/1.0 only,
/// one request per connection, no TLS.
async fn start_legacy_device() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        // Backs off on accept errors like moat's own listeners.
        let mut acceptor = crate::proxy::accept::Acceptor::new(listener);
        loop {
            let crate::proxy::accept::Accepted::Conn(mut socket, _) = acceptor.accept().await
            else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                // Read the request head (or give up after a while, as old
                // embedded servers do).
                let read = tokio::time::timeout(Duration::from_secs(30), async {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                if read.is_err() || seen.is_empty() {
                    return;
                }
                let first_line = String::from_utf8_lossy(&seen);
                let request = first_line.lines().next().unwrap_or("").to_string();
                let body = format!(
                    "<html><head><title>PumpCentral 2009</title></head><body>\n\
                     <h1>PumpCentral 2009 - Infusion Pump Server</h1>\n\
                     <p>Firmware 3.1.4 (build 2009-03-17). 24 pumps online.</p>\n\
                     <p>You asked: {}</p>\n</body></html>\n",
                    html_escape(&request)
                );
                let response = format!(
                    "HTTP/1.0 200 OK\r\nServer: PumpCentral/3.1.4\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    body
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
