//! The frame reader, the budget, and the guard over an in-memory pipe.

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings_flood(n: usize) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(HEADERS, 0x5, 1, b"hpack"));
    for _ in 0..n {
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    bytes
}

#[test]
fn frame_headers_are_found_across_any_split() {
    let mut bytes = frame(HEADERS, 0x4, 7, &[1; 40]);
    bytes.extend(frame(PING, 0, 0, &[2; 8]));
    bytes.extend(frame(DATA, 1, 7, &[3; 100]));
    for cut in 0..bytes.len() {
        let mut frames = Frames::default();
        let mut seen = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            frames.advance(part, |h| {
                seen.push((h.kind, h.len, h.stream));
                true
            });
        }
        assert_eq!(
            seen,
            [(HEADERS, 40, 7), (PING, 8, 0), (DATA, 100, 7)],
            "split at {cut}"
        );
        assert_eq!(frames.room(), None);
    }
}

#[test]
fn a_settings_flood_is_over_budget_after_the_burst() {
    let now = Instant::now();
    let mut inbound = Inbound::new(now);
    let one = frame(SETTINGS, 0, 0, &[]);
    for i in 0..BURST as usize {
        assert!(inbound.feed(&one, 0, now).is_none(), "frame {i}");
    }
    let (at, detail) = inbound.feed(&one, 0, now).expect("over budget");
    assert_eq!(at, 0);
    assert!(detail.contains("SETTINGS"), "{detail}");
    // The budget comes back with time: a steady trickle is fine.
    let later = now + Duration::from_secs(1);
    let mut inbound = Inbound::new(now);
    for _ in 0..BURST as usize {
        inbound.feed(&one, 0, now);
    }
    for _ in 0..RATE as usize {
        assert!(inbound.feed(&one, 0, later).is_none());
    }
}

#[test]
fn the_offending_frame_is_withheld_but_not_what_came_before() {
    let now = Instant::now();
    let mut inbound = Inbound::new(now);
    let mut bytes = Vec::new();
    for _ in 0..BURST as usize + 1 {
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
    }
    let (at, _) = inbound.feed(&bytes, 0, now).expect("over budget");
    assert_eq!(at, BURST as usize * 17);
}

#[test]
fn window_updates_are_free_while_data_flows() {
    let now = Instant::now();
    let mut inbound = Inbound::new(now);
    let wu = frame(WINDOW_UPDATE, 0, 1, &[0, 0, 64, 0]);
    // A long download: two WINDOW_UPDATEs per DATA frame sent never count.
    for sent in 0..100_000u64 {
        assert!(inbound.feed(&wu, sent, now).is_none());
        assert!(inbound.feed(&wu, sent, now).is_none());
    }
    assert_eq!(inbound.control, 0);
    // Without data, they are control frames like any other.
    let mut idle = Inbound::new(now);
    let over = (0..10_000).find(|_| idle.feed(&wu, 0, now).is_some());
    assert_eq!(over, Some(WINDOW_UPDATES_FREE as usize + BURST as usize));
}

#[test]
fn requests_data_and_end_stream_are_free() {
    let now = Instant::now();
    let mut inbound = Inbound::new(now);
    for id in (1..20_000u32).step_by(2) {
        let mut bytes = frame(HEADERS, 0x4, id, b"x");
        bytes.extend(frame(DATA, 0, id, b"body"));
        bytes.extend(frame(DATA, END_STREAM, id, b""));
        assert!(inbound.feed(&bytes, 0, now).is_none());
    }
    assert_eq!(inbound.last_stream, 19_999);
    assert_eq!(inbound.control, 0);
}

/// Plays hyper: reads until an error, echoing a frame now and then.
async fn serve_guarded(io: tokio::io::DuplexStream) -> (io::Result<()>, Arc<Verdict>) {
    let (mut guard, verdict) = H2Guard::new(io);
    let mut buf = vec![0; 8192];
    let res = loop {
        match guard.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(_) => {
                if let Err(e) = guard.write_all(&frame(SETTINGS, 1, 0, b"")).await {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    (res, verdict)
}

#[tokio::test]
async fn a_flood_gets_goaway_enhance_your_calm_and_the_connection_ends() {
    let (client, server) = duplex(1 << 20);
    let server = tokio::spawn(serve_guarded(server));
    let (mut rd, mut wr) = tokio::io::split(client);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&settings_flood(5000)).await;
        wr
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    let (res, verdict) = server.await.unwrap();
    drop(writer.await);
    assert!(res.is_err());
    assert!(verdict.abuse().unwrap().contains("SETTINGS"));
    let goaway = goaway(1);
    assert!(got.ends_with(&goaway), "no GOAWAY at the end");
    // Everything before it is whole frames (the server's SETTINGS acks).
    assert_eq!((got.len() - goaway.len()) % 9, 0);
    assert_eq!(&goaway[9..17], &[0, 0, 0, 1, 0, 0, 0, 0xb]);
}

#[tokio::test]
async fn goaway_waits_for_the_outgoing_frame_in_progress() {
    let (mut client, server) = duplex(1 << 20);
    let (mut guard, _verdict) = H2Guard::new(server);
    client.write_all(PREFACE).await.unwrap();
    let mut buf = vec![0; 64];
    let n = guard.read(&mut buf).await.unwrap();
    assert_eq!(n, PREFACE.len());
    // hyper has written half a DATA frame when the flood is noticed.
    let data = frame(DATA, 0, 1, &[7; 100]);
    guard.write_all(&data[..50]).await.unwrap();
    client
        .write_all(&settings_flood(2000)[PREFACE.len()..])
        .await
        .unwrap();
    // Reads (as hyper's would) until they block: the flood is cut, but
    // nothing may go out before the rest of the DATA frame.
    let mut sink = vec![0; 1 << 16];
    let blocked = std::future::poll_fn(|cx| loop {
        let mut b = ReadBuf::new(&mut sink);
        match Pin::new(&mut guard).poll_read(cx, &mut b) {
            Poll::Pending => return Poll::Ready(true),
            Poll::Ready(Ok(())) if !b.filled().is_empty() => continue,
            Poll::Ready(_) => return Poll::Ready(false),
        }
    })
    .await;
    assert!(blocked);
    // The rest of that frame still goes out whole, then the GOAWAY.
    let mut rest = &data[50..];
    while !rest.is_empty() {
        let n = guard.write(rest).await.unwrap();
        rest = &rest[n..];
    }
    guard.flush().await.unwrap();
    drop(guard);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    let mut want = data.clone();
    want.extend(goaway(1));
    assert_eq!(got, want);
}

#[tokio::test]
async fn http1_passes_through_untouched() {
    let (mut client, server) = duplex(1 << 16);
    let (mut guard, verdict) = H2Guard::new(server);
    // Starts like the preface ("P"), then is not.
    let request = b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        guard.read_to_end(&mut got).await.unwrap();
        got
    });
    client.write_all(&request).await.unwrap();
    drop(client);
    assert_eq!(reader.await.unwrap(), request);
    assert!(verdict.abuse().is_none());
    assert!(!verdict.cut("x".into()), "no GOAWAY on HTTP/1");
}

#[tokio::test]
async fn a_cut_from_outside_sends_goaway_on_h2() {
    let (mut client, server) = duplex(1 << 16);
    let server = tokio::spawn(async move {
        let (mut guard, verdict) = H2Guard::new(server);
        // The preface and the HEADERS of stream 3.
        let mut buf = vec![0; PREFACE.len() + 10];
        guard.read_exact(&mut buf).await.unwrap();
        let v = verdict.clone();
        let reading = tokio::spawn(async move {
            let mut buf = vec![0; 64];
            loop {
                match guard.read(&mut buf).await {
                    Ok(n) if n > 0 => continue,
                    other => return other.map(|_| ()),
                }
            }
        });
        // Parked in a read when the cut comes.
        tokio::task::yield_now().await;
        assert!(v.cut("rapid reset".into()));
        reading.await.unwrap()
    });
    client.write_all(PREFACE).await.unwrap();
    client
        .write_all(&frame(HEADERS, 0x5, 3, b"h"))
        .await
        .unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, goaway(3));
    assert!(server.await.unwrap().is_err());
}
