//! The guarded relay over in-memory pipes: a fake device, a recorder.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::frame::{wrap, Event as FrameEvent, Framer};
use super::msh::{self, Seen};
use super::pump::Record;
use super::*;

#[derive(Debug, Clone, PartialEq)]
enum Rec {
    Message(Seen, Hl7Decision, Option<Reason>, Option<&'static str>),
    Violation(Reason),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Rec>>>);

impl Log {
    fn take(&self) -> Vec<Rec> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl Record for Log {
    fn message(&self, s: Seen, d: Hl7Decision, r: Option<Reason>, a: Option<&'static str>) {
        self.0.lock().unwrap().push(Rec::Message(s, d, r, a));
    }
    fn violation(&self, denial: &Denial) {
        self.0.lock().unwrap().push(Rec::Violation(denial.reason));
    }
}

fn policy() -> MllpPolicy {
    MllpPolicy {
        sending_applications: NameList::parse(["LAB"]).unwrap(),
        sending_facilities: NameList::Any,
        receiving_applications: NameList::Any,
        receiving_facilities: NameList::Any,
        message_types: vec![MessageTypeRule::parse("ORU^R01").unwrap()],
        max_message_bytes: 512,
        frame_timeout: Duration::from_secs(5),
    }
}

fn message(sender: &str, id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|{sender}|HOSP|MON|ICU|20240102030405||ORU^R01|{id}|P|2.5\rPID|1||4711^^^H\rOBX|1|NM|HR||72\r")
        .into_bytes()
}

/// Reads one MLLP frame (whole, framing included); `None` at EOF.
async fn read_frame(r: &mut (impl AsyncRead + Unpin), f: &mut Framer) -> Option<Vec<u8>> {
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        if let (_, Some(Ok(FrameEvent::Frame))) = f.feed(&byte) {
            return Some(f.frame().to_vec());
        }
    }
}

/// A device that answers every message with an AA after `delay`, and
/// keeps what it received.
fn device(mut io: DuplexStream, delay: Duration) -> tokio::task::JoinHandle<Vec<Vec<u8>>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut f = Framer::new(1 << 16);
        while let Some(frame) = read_frame(&mut io, &mut f).await {
            let m = msh::parse(&frame[1..frame.len() - 2]).unwrap();
            let id = String::from_utf8_lossy(m.field(10)).into_owned();
            got.push(frame);
            tokio::time::sleep(delay).await;
            let ack = format!(
                "MSH|^~\\&|MON|ICU|LAB|HOSP|20240102030406||ACK^R01^ACK|D{id}|P|2.5\rMSA|AA|{id}\r"
            );
            if io.write_all(&wrap(ack.as_bytes())).await.is_err() {
                break;
            }
        }
        got
    })
}

struct Run {
    client: DuplexStream,
    device: tokio::task::JoinHandle<Vec<Vec<u8>>>,
    relay: tokio::task::JoinHandle<RelayOutcome>,
    log: Log,
    stop: CancellationToken,
}

fn start(policy: MllpPolicy, delay: Duration, idle: Duration) -> Run {
    let (client, moat_client) = tokio::io::duplex(64 * 1024);
    let (moat_device, dev) = tokio::io::duplex(64 * 1024);
    let log = Log::default();
    let stop = CancellationToken::new();
    let (l, s) = (log.clone(), stop.clone());
    let relay = tokio::spawn(async move {
        guarded(
            &policy,
            moat_client,
            moat_device,
            Ends {
                idle_timeout: idle,
                stop: &s,
                revoked: std::future::pending(),
            },
            l,
        )
        .await
    });
    Run {
        client,
        device: device(dev, delay),
        relay,
        log,
        stop,
    }
}

/// MSA-1 and MSA-2 of an ACK frame, and whether moat wrote it.
fn msa(frame: &[u8]) -> (String, String, bool) {
    let text = std::str::from_utf8(&frame[1..frame.len() - 2]).unwrap();
    let msa = text.split('\r').find(|s| s.starts_with("MSA")).unwrap();
    let f: Vec<&str> = msa.split('|').collect();
    let from_moat = text.split('|').nth(9).unwrap().starts_with("MOAT");
    (f[1].to_string(), f[2].to_string(), from_moat)
}

#[tokio::test(start_paused = true)]
async fn pipelined_messages_are_answered_in_order() {
    let mut run = start(
        policy(),
        Duration::from_millis(200),
        Duration::from_secs(60),
    );
    let (m1, m2, m3, m4) = (
        message("LAB", "M1"),
        message("RIS", "M2"),
        message("LAB", "M3"),
        message("EVIL", "M4"),
    );
    let mut all = Vec::new();
    for m in [&m1, &m2, &m3, &m4] {
        all.extend(wrap(m));
    }
    // One write, cut in odd places.
    for chunk in all.chunks(37) {
        run.client.write_all(chunk).await.unwrap();
    }
    let mut f = Framer::new(4096);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(msa(&read_frame(&mut run.client, &mut f).await.unwrap()));
    }
    let s = |c: &str, id: &str, moat: bool| (c.to_string(), id.to_string(), moat);
    assert_eq!(
        answers,
        [
            s("AA", "M1", false),
            s("AR", "M2", true),
            s("AA", "M3", false),
            s("AR", "M4", true)
        ]
    );
    run.client.shutdown().await.unwrap();
    assert!(read_frame(&mut run.client, &mut f).await.is_none());
    let outcome = run.relay.await.unwrap();
    assert_eq!(outcome.closed_by, ClosedBy::Client);
    assert_eq!(outcome.bytes_from_client, all.len() as u64);
    // The device saw exactly the allowed messages, byte-identical.
    assert_eq!(run.device.await.unwrap(), [wrap(&m1), wrap(&m3)]);
    let log = run.log.take();
    let decisions: Vec<_> = log
        .iter()
        .map(|r| match r {
            Rec::Message(seen, d, r, a) => (seen.control_id.clone(), *d, *r, *a),
            Rec::Violation(_) => panic!("{r:?}"),
        })
        .collect();
    assert_eq!(
        decisions,
        [
            ("M1".into(), Hl7Decision::Forwarded, None, None),
            (
                "M2".into(),
                Hl7Decision::Refused,
                Some(Reason::Hl7Sender),
                Some("AR")
            ),
            ("M3".into(), Hl7Decision::Forwarded, None, None),
            (
                "M4".into(),
                Hl7Decision::Refused,
                Some(Reason::Hl7Sender),
                Some("AR")
            ),
        ]
    );
    let Rec::Message(seen, ..) = &log[1] else {
        unreachable!()
    };
    assert_eq!(seen.sending_application, "RIS");
    assert_eq!(seen.message_type, "ORU^R01");
}

#[tokio::test(start_paused = true)]
async fn refusal_ack_bytes_reach_the_client() {
    let mut run = start(policy(), Duration::ZERO, Duration::from_secs(60));
    let m = b"MSH|^~\\&|RIS|H|MON|ICU|x||ORU^R01|C42|T|2.4|||AL|NE\r";
    run.client.write_all(&wrap(m)).await.unwrap();
    let mut f = Framer::new(4096);
    let ack = read_frame(&mut run.client, &mut f).await.unwrap();
    let text = std::str::from_utf8(&ack[1..ack.len() - 2]).unwrap();
    let (msh, msa) = text.split_once('\r').unwrap();
    let fields: Vec<&str> = msh.split('|').collect();
    assert_eq!(&fields[..6], ["MSH", "^~\\&", "MON", "ICU", "RIS", "H"]);
    assert_eq!(fields[6].len(), 14);
    assert!(fields[6].bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(&fields[7..9], ["", "ACK^R01^ACK"]);
    assert_eq!(fields[9].len(), 20);
    assert_eq!(&fields[10..], ["T", "2.4"]);
    assert_eq!(msa, "MSA|CR|C42|Message refused by moat (hl7_sender)\r");
    drop(run.client);
    assert_eq!(run.relay.await.unwrap().closed_by, ClosedBy::Client);
    assert!(run.device.await.unwrap().is_empty());
}

/// Sends `bytes` and expects the connection to end in a violation.
async fn violation(bytes: &[u8], want: Reason) -> (Vec<Rec>, Vec<Vec<u8>>) {
    let mut run = start(policy(), Duration::ZERO, Duration::from_secs(600));
    run.client.write_all(bytes).await.unwrap();
    let outcome = run.relay.await.unwrap();
    assert_eq!(outcome.closed_by, ClosedBy::GuardViolation, "{bytes:?}");
    assert!(outcome.error.is_some());
    let log = run.log.take();
    assert_eq!(log.last(), Some(&Rec::Violation(want)), "{bytes:?}");
    // The client side is closed.
    let mut rest = Vec::new();
    let _ = run.client.read_to_end(&mut rest).await;
    (log, run.device.await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn violations_close_the_connection() {
    let ok = wrap(&message("LAB", "OK1"));
    let cases: Vec<(Vec<u8>, Reason)> = vec![
        (b"\r\n".to_vec(), Reason::Hl7Framing),
        ([&ok[..], b"\n"].concat(), Reason::Hl7Framing),
        (b"\x0bMSH|^~\\&|LAB\x1c\n".to_vec(), Reason::Hl7Framing),
        (
            b"\x0bMSH|^~\\&|L\x0bMSH|^~\\&|LAB\x1c\r".to_vec(),
            Reason::Hl7Framing,
        ),
        (wrap(b"PID|1"), Reason::Hl7Malformed),
        (wrap(b"MSH|^^\\&|LAB"), Reason::Hl7Malformed),
        ([&b"\x0b"[..], &[b'x'; 513]].concat(), Reason::Hl7TooLarge),
    ];
    for (bytes, want) in cases {
        let (log, device) = violation(&bytes, want).await;
        // Only the complete, allowed message before the error got through.
        let forwarded = log
            .iter()
            .filter(|r| matches!(r, Rec::Message(_, Hl7Decision::Forwarded, ..)))
            .count();
        assert_eq!(device.len(), forwarded);
    }
}

#[tokio::test(start_paused = true)]
async fn unfinished_frames_time_out() {
    let (_, device) = violation(b"\x0bMSH|^~\\&|LAB", Reason::Hl7Timeout).await;
    assert!(device.is_empty());
}

#[tokio::test(start_paused = true)]
async fn client_closing_inside_a_frame_is_a_framing_error() {
    let mut run = start(policy(), Duration::ZERO, Duration::from_secs(600));
    run.client.write_all(b"\x0bMSH|^~\\&|LAB").await.unwrap();
    run.client.shutdown().await.unwrap();
    let outcome = run.relay.await.unwrap();
    assert_eq!(outcome.closed_by, ClosedBy::GuardViolation);
    assert_eq!(run.log.take(), [Rec::Violation(Reason::Hl7Framing)]);
}

#[tokio::test(start_paused = true)]
async fn idle_and_stop() {
    let run = start(policy(), Duration::ZERO, Duration::from_secs(3));
    let outcome = run.relay.await.unwrap();
    assert_eq!(outcome.closed_by, ClosedBy::IdleTimeout);
    drop(run.client);

    let run = start(policy(), Duration::ZERO, Duration::from_secs(600));
    run.stop.cancel();
    assert_eq!(run.relay.await.unwrap().closed_by, ClosedBy::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn many_refusals_wait_for_a_slow_device() {
    let run = start(policy(), Duration::from_secs(2), Duration::from_secs(600));
    let mut all = wrap(&message("LAB", "A0"));
    let n = MAX_PENDING_ACKS + 10;
    for i in 1..=n {
        all.extend(wrap(&message("RIS", &format!("R{i}"))));
    }
    all.extend(wrap(&message("LAB", "A1")));
    let (mut rd, mut wr) = tokio::io::split(run.client);
    let writer = tokio::spawn(async move { wr.write_all(&all).await.map(|_| wr) });
    let mut f = Framer::new(4096);
    let mut ids = Vec::new();
    for _ in 0..n + 2 {
        ids.push(msa(&read_frame(&mut rd, &mut f).await.unwrap()).1);
    }
    let mut want = vec!["A0".to_string()];
    want.extend((1..=n).map(|i| format!("R{i}")));
    want.push("A1".into());
    assert_eq!(ids, want);
    let mut wr = writer.await.unwrap().unwrap();
    wr.shutdown().await.unwrap();
    assert_eq!(run.relay.await.unwrap().closed_by, ClosedBy::Client);
    assert_eq!(run.device.await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn device_closing_flushes_waiting_acks() {
    // A device that takes one message and leaves without answering.
    let (mut client, moat_client) = tokio::io::duplex(4096);
    let (moat_device, mut dev) = tokio::io::duplex(4096);
    let log = Log::default();
    let stop = CancellationToken::new();
    let p = policy();
    let relay = guarded(
        &p,
        moat_client,
        moat_device,
        Ends {
            idle_timeout: Duration::from_secs(600),
            stop: &stop,
            revoked: std::future::pending(),
        },
        log.clone(),
    );
    let peer = async {
        let mut all = wrap(&message("LAB", "A0"));
        all.extend(wrap(&message("RIS", "R1")));
        client.write_all(&all).await.unwrap();
        let mut f = Framer::new(4096);
        assert!(read_frame(&mut dev, &mut f).await.is_some());
        drop(dev);
        let ack = read_frame(&mut client, &mut Framer::new(4096))
            .await
            .unwrap();
        assert_eq!(msa(&ack).1, "R1");
        assert!(read_frame(&mut client, &mut f).await.is_none());
    };
    let (outcome, ()) = tokio::join!(relay, peer);
    assert_eq!(outcome.closed_by, ClosedBy::Upstream);
}

#[tokio::test(start_paused = true)]
async fn revocation_cuts_the_connection() {
    let (_client, moat_client) = tokio::io::duplex(4096);
    let (moat_device, _dev) = tokio::io::duplex(4096);
    let stop = CancellationToken::new();
    let revoked = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Denial::new(Reason::NotAllowlisted)
    };
    let p = policy();
    let outcome = guarded(
        &p,
        moat_client,
        moat_device,
        Ends {
            idle_timeout: Duration::from_secs(600),
            stop: &stop,
            revoked,
        },
        Log::default(),
    )
    .await;
    assert_eq!(outcome.closed_by, ClosedBy::Revoked);
    assert_eq!(
        outcome.revoked.map(|d| d.reason),
        Some(Reason::NotAllowlisted)
    );
}
