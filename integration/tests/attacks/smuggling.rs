//! HTTP/1.1 request smuggling: every framing two parsers can read
//! differently, checked at the device.
//!
//! Each variant hides `GET /smuggled` where a parser that disagrees with
//! moat about where the first request ends would see a second request.
//! `/smuggled` is denied by the service's rules, so a second request that
//! moat itself reads is refused (403) before the device. What must never
//! happen is the device reading a request moat did not: the device here
//! parses strictly (RFC 9112) and records each request line, and every
//! head moat sent it must carry one unambiguous framing (one
//! `Content-Length`, or `Transfer-Encoding: chunked` alone; no bare LF, no
//! folded or padded field names).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bystander;
use crate::support::*;

/// The request hidden in each variant.
const INNER: &str = "GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// A device that reads requests as a strict RFC 9112 server does and
/// answers each; it keeps every request head it read, per connection.
struct StrictDevice {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl StrictDevice {
    fn start() -> StrictDevice {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let all = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let all = all.clone();
                std::thread::spawn(move || serve_strictly(stream, &all));
            }
        });
        StrictDevice { addr, heads }
    }

    fn request_lines(&self) -> Vec<String> {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .map(|h| h.lines().next().unwrap_or_default().to_string())
            .collect()
    }
}

fn serve_strictly(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every complete request in the buffer.
        while let Some((head, used)) = next_request(&buf) {
            heads.lock().unwrap().push(head);
            buf.drain(..used);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .is_err()
            {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete request at the start of `buf`: its head and the bytes it
/// took, framed by `Transfer-Encoding: chunked` or `Content-Length` (else
/// no body). A head that is not strictly well formed is kept as it is so
/// that [`assert_unambiguous`] names it.
fn next_request(buf: &[u8]) -> Option<(String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let field = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect::<Vec<_>>()
    };
    let body = &buf[end..];
    let used = if field("transfer-encoding").is_empty() {
        let length: usize = field("content-length")
            .first()
            .map_or(0, |v| v.parse().unwrap_or(0));
        (body.len() >= length).then_some(length)?
    } else {
        chunked_length(body)?
    };
    Some((head, end + used))
}

/// The length of a complete chunked body at the start of `body`.
fn chunked_length(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers are expected from moat; the empty line ends it.
            return (body.len() >= at + 2 && &body[at..at + 2] == b"\r\n").then_some(at + 2);
        }
        if body.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// One framing only, in a head moat wrote.
fn assert_unambiguous(variant: &str, head: &str) {
    let lines: Vec<&str> = head.trim_end_matches("\r\n").split("\r\n").collect();
    assert!(
        !head.replace("\r\n", "").contains('\n') && !head.replace("\r\n", "").contains('\r'),
        "{variant}: a bare CR or LF reached the device: {head:?}"
    );
    let mut lengths = 0;
    let mut encodings = Vec::new();
    for line in &lines[1..] {
        assert!(
            !line.starts_with([' ', '\t']),
            "{variant}: a folded line reached the device: {head:?}"
        );
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{variant}: a line without a colon: {head:?}"));
        assert!(
            !name.ends_with([' ', '\t']),
            "{variant}: a padded field name reached the device: {head:?}"
        );
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            assert!(
                value.trim().bytes().all(|b| b.is_ascii_digit()),
                "{variant}: Content-Length {value:?} at the device"
            );
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            encodings.push(value.trim().to_ascii_lowercase());
        }
    }
    assert!(
        lengths <= 1,
        "{variant}: {lengths} Content-Length fields: {head:?}"
    );
    assert!(
        encodings.is_empty() || (encodings == ["chunked"] && lengths == 0),
        "{variant}: Transfer-Encoding {encodings:?} with {lengths} Content-Length: {head:?}"
    );
}

/// (name, the raw bytes one client sends on one connection).
fn variants() -> Vec<(&'static str, String)> {
    let post = |fields: &str, body: &str| {
        format!("POST /a HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n{body}")
    };
    // A chunked body that ends at once, followed by the hidden request: a
    // parser that reads Content-Length instead sees part of it as body.
    let after_chunked = format!("0\r\n\r\n{INNER}");
    let cl_of = |body: &str| body.len();
    // A body that is exactly the hidden request by Content-Length: a
    // parser that reads chunked (or ignores the length) sees a request.
    vec![
        (
            "CL then TE",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    cl_of(&after_chunked)
                ),
                &after_chunked,
            ),
        ),
        (
            "TE then CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                &after_chunked,
            ),
        ),
        (
            "TE xchunked",
            post(
                "Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
                &after_chunked,
            ),
        ),
        (
            "TE with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", &after_chunked),
        ),
        (
            "TE with a tab",
            post("Transfer-Encoding:\tchunked\r\n", &after_chunked),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &after_chunked),
        ),
        (
            "TE identity, chunked",
            post("Transfer-Encoding: identity, chunked\r\n", &after_chunked),
        ),
        (
            "TE twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &after_chunked,
            ),
        ),
        (
            "TE folded",
            post("Transfer-Encoding:\r\n chunked\r\n", &after_chunked),
        ),
        (
            "TE in capitals",
            post("Transfer-Encoding: CHUNKED\r\n", &after_chunked),
        ),
        (
            "TE with a NUL",
            post("Transfer-Encoding: chunked\0\r\n", &after_chunked),
        ),
        (
            "two different CLs",
            post(
                &format!("Content-Length: 0\r\nContent-Length: {}\r\n", INNER.len()),
                INNER,
            ),
        ),
        ("CL with a plus", post(&format!("Content-Length: +{}\r\n", INNER.len()), INNER)),
        (
            "CL as a list",
            post(
                &format!("Content-Length: {0}, {0}\r\n", INNER.len()),
                INNER,
            ),
        ),
        ("CL in hex", post("Content-Length: 0x2a\r\n", INNER)),
        (
            "CL with an inner space",
            post(&format!("Content-Length: 0 {}\r\n", INNER.len()), INNER),
        ),
        (
            "bare LF line ends",
            format!(
                "POST /a HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {}\n\n{INNER}",
                INNER.len()
            ),
        ),
        (
            "bare CR in a field",
            post(
                &format!("X-A: 1\rContent-Length: {}\r\n", INNER.len()),
                INNER,
            ),
        ),
        (
            "chunked last chunk ended by bare LF",
            post("Transfer-Encoding: chunked\r\n", &format!("0\n\n{INNER}")),
        ),
        (
            "chunk size with a bare LF",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("1\nx\r\n0\r\n\r\n{INNER}"),
            ),
        ),
        (
            "GET with a body",
            format!(
                "GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{INNER}",
                INNER.len()
            ),
        ),
        (
            "HTTP/1.0 with CL and keep-alive",
            format!(
                "POST /a HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{INNER}{INNER}",
                INNER.len()
            ),
        ),
        (
            "a pipelined second request",
            format!("GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n{INNER}"),
        ),
        (
            "an h2c upgrade",
            format!(
                "GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n{INNER}"
            ),
        ),
    ]
}

/// Every reply status in what moat sent back on one connection.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[test]
fn no_framing_variant_smuggles_a_request_past_moat() {
    let device = StrictDevice::start();
    let ws = Workspace::new();
    let body = format!(
        "[[device]]\nid = \"pump\"\nname = \"infusion pump\"\n\n[[device.service]]\nname = \"ui\"\nprotocol = \"http\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\nallow = [\"127.0.0.1\", \"{}\"]\nplaintext = true\n[device.service.http]\n[[device.service.http.rule]]\naction = \"deny\"\npath = \"/smuggled\"\n",
        device.addr,
        bystander::SOURCE
    );
    let moat = Moat::start(&ws, &body, &["ui"]);
    let ui = moat.addr("ui");
    let mut table = Vec::new();
    for (variant, raw) in variants() {
        let before = device.request_lines().len();
        let mut s = connect_from("127.0.0.1", ui);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        // moat answers and keeps the connection open, or closes it: read
        // until it closes or falls silent.
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = s.read(&mut chunk) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        drop(s);
        let codes = statuses(&got);
        let lines = device.request_lines();
        let at_device = &lines[before..];
        table.push(format!(
            "{variant}: client saw {codes:?}, device saw {at_device:?}"
        ));
        for line in at_device {
            assert!(
                !line.contains("/smuggled"),
                "{variant}: the device read a request moat did not: {line}\n{}",
                table.join("\n")
            );
        }
        // Every head moat wrote has one framing.
        let heads = device.heads.lock().unwrap()[before..].to_vec();
        for head in &heads {
            assert_unambiguous(variant, head);
        }
        // The refused second request was moat's own reading, audited.
        if codes.contains(&403) {
            moat.wait_event("http_request", |e| {
                e["path"] == "/smuggled" && e["reason"] == "request_denied"
            });
        }
        // Whatever moat made of it, it answered.
        assert!(
            !codes.is_empty(),
            "{variant}: no answer\n{}",
            table.join("\n")
        );
        // Both framings at once: Transfer-Encoding wins, Content-Length
        // goes, and the connection closes after the answer (RFC 9112
        // §6.3), so nothing after the chunked body is ever read as a
        // request.
        if variant.starts_with("CL then TE") || variant.starts_with("TE then CL") {
            assert_eq!(codes, [200], "{variant}\n{}", table.join("\n"));
            assert_eq!(at_device, ["POST /a HTTP/1.1"], "{variant}");
            assert!(heads[0].contains("transfer-encoding: chunked"), "{heads:?}");
        }
    }
    eprintln!("{}", table.join("\n"));
    bystander::served("smuggling attempts", &ws, &format!("http://{ui}/"), 3);
}
