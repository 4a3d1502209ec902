use std::future::poll_fn;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;

/// A body fed by the test, piece by piece.
struct Fed {
    rx: mpsc::UnboundedReceiver<Result<Bytes, BoxError>>,
    declared: Option<u64>,
}

impl Body for Fed {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
    fn size_hint(&self) -> SizeHint {
        self.declared.map(SizeHint::with_exact).unwrap_or_default()
    }
}

fn fed(
    limits: BodyLimits,
    declared: Option<u64>,
) -> (
    mpsc::UnboundedSender<Result<Bytes, BoxError>>,
    ClientBody<Fed>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ClientBody::new(Fed { rx, declared }, limits))
}

const LIMITS: BodyLimits = BodyLimits {
    max_bytes: 1000,
    read_timeout: Duration::from_secs(1),
    min_rate: 100,
};

/// The next frame's data, or the denial the body ended with.
async fn next(body: &mut ClientBody<Fed>) -> Option<Result<Bytes, Denial>> {
    let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
    Some(match frame {
        Ok(f) => Ok(f.into_data().unwrap()),
        Err(e) => Err(e.downcast::<ClientBodyError>().unwrap().0),
    })
}

/// A body that never keeps moat waiting (every GET's, most uploads')
/// costs no timer: ClientBody is made for every request.
#[tokio::test(start_paused = true)]
async fn no_timer_until_the_client_keeps_the_body_waiting() {
    let (tx, mut body) = fed(LIMITS, None);
    assert!(body.timer.is_none());
    tx.send(Ok(Bytes::from_static(b"ready"))).unwrap();
    assert_eq!(next(&mut body).await.unwrap().unwrap(), "ready");
    assert!(body.timer.is_none());
    drop(tx);
    assert!(next(&mut body).await.is_none());
    assert!(body.timer.is_none());
    // Kept waiting, it is timed as before.
    let (_tx, mut body) = fed(LIMITS, None);
    let denial = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(denial.reason, Reason::BodyTimeout);
    assert!(body.timer.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_body_in_time_passes_whole() {
    let (tx, mut body) = fed(LIMITS, None);
    tx.send(Ok(Bytes::from_static(b"hello "))).unwrap();
    tx.send(Ok(Bytes::from_static(b"world"))).unwrap();
    drop(tx);
    assert_eq!(next(&mut body).await.unwrap().unwrap(), "hello ");
    assert_eq!(next(&mut body).await.unwrap().unwrap(), "world");
    assert!(next(&mut body).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn too_large_declared_or_sent() {
    let (_tx, mut body) = fed(LIMITS, Some(1001));
    let d = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(d.reason, Reason::BodyTooLarge);
    assert!(next(&mut body).await.is_none(), "nothing after the fault");

    let (tx, mut body) = fed(LIMITS, None);
    tx.send(Ok(Bytes::from(vec![b'x'; 600]))).unwrap();
    tx.send(Ok(Bytes::from(vec![b'x'; 600]))).unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    let d = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(d.reason, Reason::BodyTooLarge);
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_cut_after_the_gap_limit() {
    let limits = BodyLimits {
        min_rate: 0,
        ..LIMITS
    };
    let (tx, mut body) = fed(limits, None);
    tx.send(Ok(Bytes::from_static(b"part"))).unwrap();
    assert!(next(&mut body).await.unwrap().is_ok());
    let start = Instant::now();
    let d = next(&mut body).await.unwrap().unwrap_err();
    assert_eq!(d.reason, Reason::BodyTimeout);
    assert!(d.detail.unwrap().contains("body_read_timeout"));
    assert_eq!(start.elapsed(), LIMITS.read_timeout);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_trickle_under_the_minimum_rate_is_cut_after_the_grace() {
    // One byte every 600ms never trips the 1s gap, but is 1.7 B/s
    // against a minimum of 100 B/s.
    let (tx, mut body) = fed(LIMITS, None);
    let feeder = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(600)).await;
            if tx.send(Ok(Bytes::from_static(b"x"))).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let denial = loop {
        match next(&mut body).await.unwrap() {
            Ok(_) => continue,
            Err(d) => break d,
        }
    };
    assert_eq!(denial.reason, Reason::BodyTimeout);
    assert!(denial.detail.unwrap().contains("min_body_rate"));
    // Not before the grace of one read_timeout.
    assert!(start.elapsed() >= LIMITS.read_timeout);
    assert!(start.elapsed() < 2 * LIMITS.read_timeout);
    feeder.abort();
}

#[tokio::test(start_paused = true)]
async fn time_the_device_takes_is_not_the_clients() {
    let (tx, mut body) = fed(LIMITS, None);
    for _ in 0..3 {
        tx.send(Ok(Bytes::from_static(b"x"))).unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        // The device is slow to read: the body is not polled meanwhile.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(tx);
    assert!(next(&mut body).await.is_none());
}

/// Sends `raw` to a real hyper HTTP/1.1 server and returns how the
/// request body's error is classified.
async fn hyper_body_fault(raw: Vec<u8>, then_close: bool) -> Denial {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let tx = tx.lock().unwrap().take();
        async move {
            let limits = BodyLimits {
                max_bytes: 1 << 20,
                read_timeout: Duration::from_secs(5),
                min_rate: 0,
            };
            let res = ClientBody::new(req.into_body(), limits).collect().await;
            let denial = match res {
                Ok(_) => Denial::new(Reason::GatewayShutdown),
                Err(e) => e.downcast::<ClientBodyError>().unwrap().0,
            };
            if let Some(tx) = tx {
                let _ = tx.send(denial);
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<Bytes>::new(),
            ))
        }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc),
    );
    client.write_all(&raw).await.unwrap();
    if then_close {
        drop(client);
    } else {
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
    }
    rx.await.unwrap()
}

#[tokio::test]
async fn hyper_body_errors_map_to_client_reasons() {
    const HEAD: &str = "POST /x HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunked = |rest: &str| format!("{HEAD}{rest}").into_bytes();
    let cases = [
        // A chunk size over u64.
        (
            chunked("fffffffffffffffff\r\n"),
            false,
            Reason::MalformedBody,
        ),
        // A bare LF ends the size line.
        (
            chunked("5\nhello\r\n0\r\n\r\n"),
            false,
            Reason::MalformedBody,
        ),
        // A chunk extension over hyper's 16 KiB.
        (
            chunked(&format!("5;{}", "e".repeat(17 * 1024))),
            false,
            Reason::MalformedBody,
        ),
        // More data than the chunk size.
        (
            chunked("3\r\nhello\r\n0\r\n\r\n"),
            false,
            Reason::MalformedBody,
        ),
        // Gone mid-body, chunked or with a length.
        (chunked("5\r\nhel"), true, Reason::ClientAborted),
        (
            b"POST /x HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\nonly part".to_vec(),
            true,
            Reason::ClientAborted,
        ),
    ];
    for (raw, close, want) in cases {
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned();
        let d = hyper_body_fault(raw, close).await;
        assert_eq!(d.reason, want, "{shown}: {d:?}");
    }
}

#[test]
fn byte_rates_parse() {
    assert_eq!(parse_byte_rate("0"), Ok(0));
    assert_eq!(parse_byte_rate("500B/s"), Ok(500));
    assert_eq!(parse_byte_rate("1KiB/s"), Ok(1024));
    assert_eq!(parse_byte_rate("2 KB/s"), Ok(2000));
    assert_eq!(parse_byte_rate("1MiB/s"), Ok(1 << 20));
    for bad in [
        "", "1KiB", "KiB/s", "1 kib/s", "-1B/s", "1.5KiB/s", "1KiB/min",
    ] {
        assert!(parse_byte_rate(bad).is_err(), "{bad:?}");
    }
}
