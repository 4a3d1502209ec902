use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::*;
use crate::controls::Reason;
use crate::guard::dicom::testutil::{self as t};

const MAX: u32 = 4096;

fn framer() -> Framer {
    Framer::new([1u8, 3].into_iter().collect(), MAX)
}

fn scan_all(bytes: &[u8]) -> Scan {
    framer().scan(bytes)
}

fn refused(bytes: &[u8]) -> (usize, Violation) {
    match scan_all(bytes) {
        Scan::Refused(at, v) => (at, v),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn context_set() {
    let s: ContextSet = [1u8, 3, 255].into_iter().collect();
    assert!(s.contains(1) && s.contains(3) && s.contains(255));
    assert!(!s.contains(0) && !s.contains(5) && !s.contains(129));
}

#[test]
fn data_phase_pdus_pass() {
    let stream = [
        t::pdata(&[(1, 0b01, b"command"), (3, 0b10, b"data...")]),
        t::pdata(&[(3, 0b00, b""), (3, 0b10, &[7; 100])]),
        t::pdu(0x05, &[0; 4]),
        t::pdu(0x06, &[0; 4]),
        t::pdu(0x07, &[0, 0, 0, 0]),
    ]
    .concat();
    let mut f = framer();
    assert_eq!(f.scan(&stream), Scan::All);
    assert!(f.at_pdu_boundary());
}

#[test]
fn pdu_headers_are_checked() {
    let (at, v) = refused(&[t::pdata(&[(1, 0, b"x")]), t::pdu(0x01, &[0; 70])].concat());
    assert_eq!(at, 13);
    assert_eq!(v.reason, Reason::DicomUnexpectedPdu);
    assert_eq!(v.abort_reason, 2);
    for kind in [0x02, 0x03] {
        assert_eq!(
            refused(&t::pdu(kind, &[0; 4])).1.reason,
            Reason::DicomUnexpectedPdu
        );
    }
    for kind in [0x00, 0x08, 0x42, 0xff] {
        let v = refused(&t::pdu(kind, &[0; 4])).1;
        assert_eq!((v.reason, v.abort_reason), (Reason::DicomMalformed, 1));
    }
    for kind in [0x05, 0x06, 0x07] {
        for len in [0usize, 3, 5, 100] {
            let v = refused(&t::pdu(kind, &vec![0; len])).1;
            assert_eq!((v.reason, v.abort_reason), (Reason::DicomMalformed, 6));
        }
    }
    // The cap is on the PDU length field.
    let big = t::pdata(&[(1, 0, &vec![0; MAX as usize - 6])]);
    assert_eq!(scan_all(&big), Scan::All);
    let v = refused(&t::pdata(&[(1, 0, &vec![0; MAX as usize - 5])])).1;
    assert_eq!((v.reason, v.abort_reason), (Reason::DicomPduTooLarge, 6));
    // Refused on the header alone, before any body arrives.
    let v = refused(&[0x04, 0, 0xff, 0xff, 0xff, 0xff]).1;
    assert_eq!(v.reason, Reason::DicomPduTooLarge);
    assert_eq!(
        refused(&t::pdu(0x04, &[0; 5])).1.reason,
        Reason::DicomMalformed
    );
}

#[test]
fn pdv_headers_are_checked() {
    // Context 5 was not accepted.
    let (at, v) = refused(&t::pdata(&[(1, 0, b"ok"), (5, 0, b"no")]));
    assert_eq!((at, v.reason), (14, Reason::DicomPresentationContext));
    // Control header bits beyond command/last.
    let v = refused(&t::pdata(&[(1, 0b100, b"x")])).1;
    assert_eq!(v.reason, Reason::DicomMalformed);
    // Item length 0 or 1, or longer than the PDU.
    for item_len in [0u32, 1, 100] {
        let mut body = item_len.to_be_bytes().to_vec();
        body.extend_from_slice(&[1, 0, 0, 0]);
        let v = refused(&t::pdu(0x04, &body)).1;
        assert_eq!(v.reason, Reason::DicomMalformed, "{item_len}");
    }
    // PDVs that leave 1..5 bytes of their PDU: cannot hold another PDV.
    for spare in 1..6usize {
        let mut p = t::pdata(&[(1, 0, b"abc")]);
        p.extend(vec![0; spare]);
        let len = (p.len() - 6) as u32;
        p[2..6].copy_from_slice(&len.to_be_bytes());
        let (at, v) = refused(&p);
        assert_eq!((at, v.reason), (6 + 9, Reason::DicomMalformed), "{spare}");
    }
}

/// Reads from `data` in the sizes of `chunks` (cycled), like a socket.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<usize>,
    next: usize,
}

impl Chunked {
    fn new(data: Vec<u8>, chunks: Vec<usize>) -> Self {
        Chunked {
            data,
            pos: 0,
            chunks,
            next: 0,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = self.chunks[self.next % self.chunks.len()].max(1);
        self.next += 1;
        let n = want.min(buf.remaining()).min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads the framed stream to its end or its violation with reads of
/// `buf_len` bytes; what came out, and the violation.
async fn drain(
    data: Vec<u8>,
    chunks: Vec<usize>,
    buf_len: usize,
) -> (Vec<u8>, Option<Violation>, usize) {
    let mut framed = FramedClient::new(Chunked::new(data, chunks), framer());
    let mut out = Vec::new();
    let mut max_held = 0;
    let mut buf = vec![0; buf_len];
    loop {
        let r = framed.read(&mut buf).await;
        max_held = max_held.max(framed.held_len());
        match r {
            Ok(0) => return (out, None, max_held),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                return (out, framed.violation().cloned(), max_held);
            }
        }
    }
}

#[tokio::test]
async fn a_bad_header_never_reaches_the_device() {
    let good = t::pdata(&[(1, 0, b"hello")]);
    let bad = t::pdata(&[(5, 0, b"world")]);
    let bad_pdu = t::pdu(0x01, &[0; 68]);
    for chunk in [1, 2, 5, 6, 7, 1000] {
        let stream = [good.clone(), bad_pdu.clone()].concat();
        let (out, v, held) = drain(stream, vec![chunk], 1024).await;
        assert_eq!(out, good, "chunk {chunk}");
        assert_eq!(v.unwrap().reason, Reason::DicomUnexpectedPdu);
        assert!(held <= 6);
    }
    for chunk in [1, 2, 5, 6, 7, 13, 1000] {
        let stream = [good.clone(), bad.clone()].concat();
        let (out, v, held) = drain(stream, vec![chunk], 1024).await;
        // The second PDU's header is fine; its PDV's is not.
        assert_eq!(out, [&good[..], &bad[..6]].concat(), "chunk {chunk}");
        assert_eq!(v.unwrap().reason, Reason::DicomPresentationContext);
        assert!(held <= 6);
    }
    // A bad PDV inside a good PDU header: the PDU header went out, the PDV
    // header did not, and the device is not between PDUs.
    let mut framed = FramedClient::new(Chunked::new(bad.clone(), vec![3]), framer());
    let mut out = Vec::new();
    assert!(framed.read_to_end(&mut out).await.is_err());
    assert_eq!(out, bad[..6]);
    assert!(!framed.device_at_pdu_boundary());
}

#[tokio::test]
async fn tiny_reader_buffers_still_get_whole_headers_checked() {
    let stream = [t::pdata(&[(1, 3, b"abc")]), t::pdu(0x05, &[0; 4])].concat();
    for buf_len in 1..8 {
        let (out, v, _) = drain(stream.clone(), vec![1, 4, 2], buf_len).await;
        assert_eq!((out, v), (stream.clone(), None), "buf {buf_len}");
    }
}

#[tokio::test]
async fn eof_inside_a_header_releases_nothing_of_it() {
    let mut stream = t::pdata(&[(1, 0, b"x")]);
    stream.extend_from_slice(&[0x04, 0, 0]);
    let (out, v, _) = drain(stream.clone(), vec![2], 64).await;
    assert_eq!((out, v), (stream[..stream.len() - 3].to_vec(), None));
}

#[test]
fn device_pdu_boundaries_are_followed() {
    let mut b = PduBoundaries::new(());
    assert!(b.is_boundary(0));
    let a = t::pdu(0x04, &[0; 10]);
    let c = t::pdu(0x07, &[0; 4]);
    b.follow(&a[..3]);
    assert!(b.is_boundary(0) && !b.is_boundary(3));
    b.follow(&a[3..]);
    b.follow(&c[..8]);
    assert!(b.is_boundary(16) && !b.is_boundary(20) && !b.is_boundary(24));
    b.follow(&c[8..]);
    assert!(b.is_boundary(26) && b.is_boundary(16) && !b.is_boundary(25));
}

fn pdv() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
    (
        prop::sample::select(vec![1u8, 3]),
        0u8..4,
        prop::collection::vec(any::<u8>(), 0..300),
    )
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let pdu = prop_oneof![
        4 => prop::collection::vec(pdv(), 1..4).prop_map(|pdvs| {
            let pdvs: Vec<(u8, u8, &[u8])> = pdvs.iter().map(|(c, m, d)| (*c, *m, &d[..])).collect();
            t::pdata(&pdvs)
        }),
        1 => prop::sample::select(vec![0x05u8, 0x06, 0x07]).prop_map(|k| t::pdu(k, &[0; 4])),
    ];
    prop::collection::vec(pdu, 0..8).prop_map(|pdus| pdus.concat())
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..40, 1..10)
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #[test]
    fn well_formed_streams_pass_byte_identical(
        data in stream(),
        chunks in chunks(),
        buf_len in prop_oneof![1usize..16, Just(1024), Just(65536)],
    ) {
        let (out, v, held) = run(drain(data.clone(), chunks, buf_len));
        prop_assert_eq!(v, None);
        prop_assert_eq!(out, data);
        prop_assert!(held <= 6);
    }

    /// Anything in any chunking: no panic, at most 6 bytes held, what came
    /// out is a prefix of the input, and it is what one scan of the whole
    /// input lets through.
    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            (stream(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut s, i, b)| {
                if !s.is_empty() { let i = i.index(s.len()); s[i] = b; }
                s
            }),
        ],
        chunks in chunks(),
        buf_len in prop_oneof![1usize..16, Just(1024)],
    ) {
        let (out, v, held) = run(drain(data.clone(), chunks, buf_len));
        prop_assert!(held <= 6);
        prop_assert!(data.starts_with(&out));
        let passed = match framer().scan(&data) {
            Scan::All => data.len(),
            Scan::UpTo(n) | Scan::Refused(n, _) => n,
        };
        prop_assert_eq!(out.len(), passed);
        prop_assert_eq!(v.is_some(), matches!(framer().scan(&data), Scan::Refused(..)));
    }
}
