//! The floor: the least a reverse proxy built on moat's stack (tokio,
//! hyper 1.x server and client, rustls with moat's crypto provider,
//! mimalloc) does for the load harness's job, with none of moat's
//! controls. Configured as moat configures hyper (the header-read timer,
//! the h2 windows and buffers), it terminates TLS, sends each request to
//! the backend on a pooled HTTP/1.1 connection with the forwarding
//! headers every proxy of the harness adds, and returns the answer with
//! the three hardening headers.
//!
//! It is a measuring stick, not a proxy to deploy: no allowlist, no limits,
//! no header hygiene, no audit. `benches/load/instructions.sh` counts its
//! instructions per request beside moat's (SYSTEMS="... floor"), so that
//! what moat's own code costs and what the stack under it costs are two
//! separate figures (docs/benchmarks.md, "Performance (issue 15)").
//!
//!   floor_proxy TLS_ADDR PLAIN_ADDR BACKEND_ADDR CERT_PEM KEY_PEM

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;

/// Idle connections to the backend, most recently used last.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<SendRequest<Body>>>,
}

/// Gives the connection back when the response body is done with.
struct Returned {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl hyper::body::Body for Returned {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.back.take() {
            pool.idle.lock().unwrap().push(sender);
        }
    }
}

struct Proxy {
    backend: SocketAddr,
    host: HeaderValue,
    pool: Arc<Pool>,
}

impl Proxy {
    async fn sender(&self) -> SendRequest<Body> {
        loop {
            let pooled = self.pool.idle.lock().unwrap().pop();
            match pooled {
                Some(s) if s.is_ready() => return s,
                Some(_) => continue,
                None => break,
            }
        }
        let tcp = TcpStream::connect(self.backend).await.expect("backend");
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(16 * 1024)
            .handshake(TokioIo::new(tcp))
            .await
            .expect("backend handshake");
        tokio::spawn(conn);
        sender
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: &str,
        proto: &'static str,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::try_from(path).expect("origin-form");
        parts.version = http::Version::HTTP_11;
        let h = &mut parts.headers;
        h.insert(header::HOST, self.host.clone());
        h.insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
        h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        let forwarded = format!("for={client};proto={proto}");
        h.insert(
            header::FORWARDED,
            HeaderValue::from_str(&forwarded).unwrap(),
        );
        let req = Request::from_parts(parts, body.boxed());
        let mut sender = self.sender().await;
        let resp = sender.send_request(req).await.expect("backend answer");
        let pool = self.pool.clone();
        let (mut parts, inner) = resp.into_parts();
        let h = &mut parts.headers;
        h.remove(header::CONNECTION);
        h.append(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
        h.append(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.append(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        let body = Returned {
            inner,
            back: Some((sender, pool)),
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// moat's hyper settings for a service with the default HTTP policy.
fn builder() -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(40 * 1024)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(32 * 1024)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(64))
        .max_send_buf_size(64 * 1024)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(512 * 1024);
    b
}

async fn serve<I>(io: I, proxy: Arc<Proxy>, peer: SocketAddr, proto: &'static str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client: Arc<str> = peer.ip().to_string().into();
    let svc = hyper::service::service_fn(move |req| {
        let (proxy, client) = (proxy.clone(), client.clone());
        async move { Ok::<_, Infallible>(proxy.forward(req, &client, proto).await) }
    });
    let _ = builder()
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

fn tls_config(cert: &str, key: &str) -> Arc<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).expect("cert"),
    ))
    .collect::<Result<Vec<_>, _>>()
    .expect("cert pem");
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).expect("key"),
    ))
    .expect("key pem")
    .expect("a key");
    let mut config = rustls::ServerConfig::builder_with_provider(moat::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("cert and key");
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tls_addr, plain_addr, backend, cert, key] = &args[..] else {
        eprintln!("usage: floor_proxy TLS_ADDR PLAIN_ADDR BACKEND_ADDR CERT_PEM KEY_PEM");
        std::process::exit(2);
    };
    let backend: SocketAddr = backend.parse().expect("backend address");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(cert, key));
    let proxy = Arc::new(Proxy {
        backend,
        host: HeaderValue::from_str(&backend.to_string()).unwrap(),
        pool: Arc::default(),
    });
    // One CPU, as moat runs in the harness: the current-thread scheduler.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tls = TcpListener::bind(tls_addr).await.expect("bind TLS");
        let plain = TcpListener::bind(plain_addr).await.expect("bind plain");
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = plain.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, p.clone(), peer, "http"));
            }
        });
        loop {
            let (tcp, peer) = tls.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (acceptor, proxy) = (acceptor.clone(), proxy.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    serve(stream, proxy, peer, "https").await;
                }
            });
        }
    });
}
