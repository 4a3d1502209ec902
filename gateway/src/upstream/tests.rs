//! The device pool against a real HTTP/1.1 server on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use tokio::net::TcpListener;

use super::*;

/// Long enough never to cut a request in these tests.
const LONG: Duration = Duration::from_secs(60);
/// How long the device takes to answer `/late`.
const LATE: Duration = Duration::from_millis(300);

/// A device that answers `ok` (4 MiB for `/big`, `late` after [`LATE`]
/// for `/late`, never for `/hang`), counting the connections it accepted
/// and those that have ended.
struct Device {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

async fn device() -> Device {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, e) = (accepted.clone(), ended.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = match req.uri().path() {
                        "/big" => Bytes::from(vec![b'x'; 4 << 20]),
                        "/late" => {
                            tokio::time::sleep(LATE).await;
                            Bytes::from_static(b"late")
                        }
                        "/hang" => std::future::pending().await,
                        _ => Bytes::from_static(b"ok"),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Device {
        addr,
        accepted,
        ended,
    }
}

/// A client for a plaintext HTTP service in front of `device`.
fn client(device: SocketAddr) -> UpstreamClient {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    let config = format!(
        r#"
[admin]
enabled = false
[[device]]
id = "pump"
name = "pump"
[[device.service]]
name = "ui"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{device}"
allow = ["127.0.0.1"]
plaintext = true
"#
    );
    std::fs::write(&path, config).unwrap();
    let policy = crate::policy::load(&path, 1).unwrap();
    UpstreamClient::new(&policy.services[0])
}

fn get() -> Request<ProxyBody> {
    get_path("/status")
}

fn get_path(path: &str) -> Request<ProxyBody> {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, "pump")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .unwrap()
}

async fn read_to_end(response: Response<DeviceBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Waits for `what` to hold, checking every 10 ms, for at most 5 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn one_connection_per_request_in_flight_reused_afterwards() {
    let dev = device().await;
    let client = client(dev.addr);
    for _ in 0..5 {
        let body = read_to_end(client.request(get(), LONG).await.unwrap()).await;
        assert_eq!(body, "ok");
    }
    assert_eq!(
        dev.accepted.load(Ordering::SeqCst),
        1,
        "sequential requests"
    );

    // Three responses whose bodies are not read yet: their connections are
    // busy, so the second and third request each need a new one.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client.request(get(), LONG).await.unwrap());
    }
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 3);
    for response in open {
        assert_eq!(read_to_end(response).await, "ok");
    }
    // All three are back and reused: no new connection for three more.
    let again = three_at_once(&client).await;
    assert_eq!(again, ["ok", "ok", "ok"]);
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 3);
}

async fn three_at_once(client: &UpstreamClient) -> [Bytes; 3] {
    let (a, b, c) = tokio::join!(
        client.request(get(), LONG),
        client.request(get(), LONG),
        client.request(get(), LONG)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    [
        read_to_end(a).await,
        read_to_end(b).await,
        read_to_end(c).await,
    ]
}

#[tokio::test]
async fn an_abandoned_response_closes_its_connection() {
    let dev = device().await;
    let client = client(dev.addr);
    let response = client.request(get_path("/big"), LONG).await.unwrap();
    // Dropped with most of its body still to come: hyper cannot reuse
    // the connection, so it closes, and the next request opens another.
    drop(response);
    until("the device to see the connection end", || {
        dev.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        read_to_end(client.request(get(), LONG).await.unwrap()).await,
        "ok"
    );
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let dev = device().await;
    let mut client = client(dev.addr);
    Arc::get_mut(&mut client.pool).unwrap().idle_timeout = Duration::from_millis(50);
    assert_eq!(
        read_to_end(client.request(get(), LONG).await.unwrap()).await,
        "ok"
    );
    assert_eq!(dev.ended.load(Ordering::SeqCst), 0);
    until("the idle connection to be closed", || {
        client.evict_idle();
        dev.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(client.pool.lock().is_empty());
}

#[tokio::test]
async fn a_retired_pool_closes_its_connections() {
    let dev = device().await;
    let client = client(dev.addr);
    assert_eq!(
        read_to_end(client.request(get(), LONG).await.unwrap()).await,
        "ok"
    );
    let in_use = client.request(get(), LONG).await.unwrap();
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1);
    client.retire();
    assert_eq!(read_to_end(in_use).await, "ok");
    // Idle or in use when retired, the connection is not kept.
    until("the device to see the connection end", || {
        dev.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(client.pool.lock().is_empty());
}

#[tokio::test]
async fn a_device_that_is_down_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    match client(addr).request(get(), LONG).await {
        Err(UpstreamError::Connect(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        Err(other) => panic!("expected a connect error, got {other:?}"),
        Ok(r) => panic!("a response from a device that is down: {}", r.status()),
    }
}

#[tokio::test]
async fn a_device_that_does_not_answer_in_time_loses_the_connection() {
    let dev = device().await;
    let client = client(dev.addr);
    assert_eq!(
        read_to_end(client.request(get(), LONG).await.unwrap()).await,
        "ok"
    );
    // The pooled connection (and its timer) carries the next request.
    let start = Instant::now();
    let limit = Duration::from_millis(200);
    match client.request(get_path("/hang"), limit).await {
        Err(UpstreamError::ResponseTimeout(t)) => assert_eq!(t, limit),
        Err(other) => panic!("expected a response timeout, got {other:?}"),
        Ok(r) => panic!("an answer from a device that never answers: {}", r.status()),
    }
    let waited = start.elapsed();
    assert!(waited >= limit && waited < LONG, "cut after {waited:?}");
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 1);
    // Its request is still at the device: the connection is closed, not
    // pooled, and the next request gets a new one.
    until("the device to see the connection end", || {
        dev.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        read_to_end(client.request(get(), LONG).await.unwrap()).await,
        "ok"
    );
    assert_eq!(dev.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_reused_timer_keeps_each_requests_own_deadline() {
    let dev = device().await;
    let client = client(dev.addr);
    // A short deadline, met: the connection's timer is left registered
    // at it.
    let short = Duration::from_millis(100);
    let first = Instant::now();
    assert_eq!(
        read_to_end(client.request(get(), short).await.unwrap()).await,
        "ok"
    );
    // The next request on the same connection is still waiting for its
    // answer when that old deadline passes; it must not be cut then.
    let started = Instant::now();
    let late = client.request(get_path("/late"), LONG).await.unwrap();
    assert!(started.elapsed() >= LATE && Instant::now() > first + short);
    assert_eq!(read_to_end(late).await, "late");
    assert_eq!(
        dev.accepted.load(Ordering::SeqCst),
        1,
        "one connection, one timer"
    );

    // Idle past the deadline of the last request: the timer fired with no
    // one waiting. A new, shorter deadline on it still cuts.
    let now = Instant::now();
    until("the last deadline to pass while idle", || {
        Instant::now() >= now + short
    })
    .await;
    match client.request(get_path("/late"), short).await {
        Err(UpstreamError::ResponseTimeout(_)) => {}
        other => panic!(
            "expected a response timeout, got {:?}",
            other.map(|r| r.status())
        ),
    }
    assert_eq!(
        dev.accepted.load(Ordering::SeqCst),
        1,
        "the same connection"
    );
}
