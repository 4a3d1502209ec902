//! The MLLP framer: `0x0B` payload `0x1C 0x0D`, push-style and bounded.
//!
//! [`Framer::feed`] takes whatever bytes arrived and stops at the first
//! event (a frame started, a frame is complete, an error), saying how many
//! bytes it consumed, so the caller can stop reading while it acts on a
//! message. A complete frame stays in the framer, byte-identical to the
//! wire, until the next `feed`. The buffer never holds more than
//! `max + 3` bytes (the payload cap plus the three frame bytes).
//!
//! Strict by design: between frames only the start byte is allowed (no
//! stray CR/LF keep-alives), and inside a frame neither `0x0B` nor a
//! `0x1C` that is not followed by `0x0D` is. Devices resynchronise on a
//! start byte in different ways, and a message moat checked must be the
//! message the device parses: one that could be read as two is refused.

use crate::controls::{Denial, Reason};

pub const START: u8 = 0x0B;
pub const END: u8 = 0x1C;
pub const CR: u8 = 0x0D;

/// The first allocation for a frame, and what an idle framer may keep:
/// most HL7 messages are a few KiB, and idle connections should be cheap.
const INITIAL: usize = 1024;
const KEEP: usize = 4 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A byte other than `0x0B` between frames.
    Stray(u8),
    /// `0x1C` followed by something other than `0x0D`.
    BadEnd(u8),
    /// `0x0B` inside a frame.
    NestedStart,
    /// The payload grew past the cap.
    TooLarge(usize),
}

impl FrameError {
    pub fn reason(self) -> Reason {
        match self {
            FrameError::TooLarge(_) => Reason::Hl7TooLarge,
            _ => Reason::Hl7Framing,
        }
    }

    /// Names bytes by value only: framing bytes are not message content.
    pub fn denial(self) -> Denial {
        let detail = match self {
            FrameError::Stray(b) => format!("byte 0x{b:02X} between MLLP frames"),
            FrameError::BadEnd(b) => format!("0x1C followed by 0x{b:02X}, not 0x0D"),
            FrameError::NestedStart => "start byte 0x0B inside an MLLP frame".to_string(),
            FrameError::TooLarge(max) => format!("message longer than {max} bytes"),
        };
        Denial::with_detail(self.reason(), detail)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A start byte: the frame timer starts.
    Start,
    /// A complete frame: [`Framer::frame`] and [`Framer::message`] until
    /// the next `feed`.
    Frame,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Between,
    Payload,
    /// Saw `0x1C`, expecting `0x0D`.
    End,
    Failed(FrameError),
}

pub struct Framer {
    max: usize,
    state: State,
    /// The current frame, start and end bytes included.
    buf: Vec<u8>,
    /// `buf` holds a complete frame, released at the next `feed`.
    ready: bool,
}

impl Framer {
    pub fn new(max: usize) -> Self {
        Framer {
            max,
            state: State::Between,
            buf: Vec::new(),
            ready: false,
        }
    }

    /// Whether a frame has started and not ended (the frame timer runs).
    pub fn in_frame(&self) -> bool {
        matches!(self.state, State::Payload | State::End)
    }

    /// The complete frame, as received.
    pub fn frame(&self) -> &[u8] {
        if self.ready {
            &self.buf
        } else {
            &[]
        }
    }

    /// The complete frame's payload.
    pub fn message(&self) -> &[u8] {
        let f = self.frame();
        if f.len() >= 3 {
            &f[1..f.len() - 2]
        } else {
            &[]
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Consumes `input` up to the first event; returns the bytes consumed
    /// and the event, if any. After an error, every call returns it again.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Event, FrameError>>) {
        if let State::Failed(e) = self.state {
            return (0, Some(Err(e)));
        }
        if self.ready {
            self.ready = false;
            self.buf.clear();
            if self.buf.capacity() > KEEP {
                self.buf = Vec::new();
            }
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Between => {
                    let b = input[i];
                    i += 1;
                    if b != START {
                        return (i, Some(Err(self.fail(FrameError::Stray(b)))));
                    }
                    self.push(&[START]);
                    self.state = State::Payload;
                    return (i, Some(Ok(Event::Start)));
                }
                State::Payload => {
                    let rest = &input[i..];
                    let stop = rest.iter().position(|&b| b == END || b == START);
                    let take = stop.unwrap_or(rest.len());
                    // The payload so far is the buffer minus the start byte.
                    if self.buf.len() - 1 + take > self.max {
                        let max = self.max;
                        return (i + take, Some(Err(self.fail(FrameError::TooLarge(max)))));
                    }
                    self.push(&rest[..take]);
                    i += take;
                    if stop.is_some() {
                        let b = input[i];
                        i += 1;
                        if b == START {
                            return (i, Some(Err(self.fail(FrameError::NestedStart))));
                        }
                        self.push(&[END]);
                        self.state = State::End;
                    }
                }
                State::End => {
                    let b = input[i];
                    i += 1;
                    if b != CR {
                        return (i, Some(Err(self.fail(FrameError::BadEnd(b)))));
                    }
                    self.push(&[CR]);
                    self.state = State::Between;
                    self.ready = true;
                    return (i, Some(Ok(Event::Frame)));
                }
                State::Failed(e) => return (i, Some(Err(e))),
            }
        }
        (i, None)
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.state = State::Failed(e);
        // Nothing more will be read: give the memory back now.
        self.buf = Vec::new();
        e
    }

    /// Appends, growing geometrically but never past `max + 3` (callers
    /// have checked the length against the cap).
    fn push(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let target = need
                .max(self.buf.capacity().saturating_mul(2))
                .max(INITIAL)
                .min(self.max.saturating_add(3))
                .max(need);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }
}

/// Frames a payload (moat's own ACKs).
pub fn wrap(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[END, CR]);
    out
}

/// Frame ends in the device's answers, counted as they pass through raw:
/// where moat may put one of its own ACKs without cutting a frame.
#[derive(Debug, Default)]
pub struct Boundaries {
    in_frame: bool,
    saw_end: bool,
    /// Frames ended so far.
    pub ended: u64,
}

impl Boundaries {
    /// Not inside a device frame: an ACK may go in here.
    pub fn at_boundary(&self) -> bool {
        !self.in_frame
    }

    fn step(&mut self, b: u8) -> bool {
        let ended = self.saw_end && b == CR;
        self.saw_end = b == END;
        if ended {
            self.in_frame = false;
            self.ended += 1;
        } else if b == START {
            self.in_frame = true;
        }
        ended
    }

    /// Records bytes that passed to the client.
    pub fn pass(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }

    /// How many of `bytes` may pass before an ACK that waits for `ended
    /// >= after` goes in: up to the end of the frame that gets there.
    pub fn until(&self, bytes: &[u8], after: u64) -> usize {
        if self.ended >= after && self.at_boundary() {
            return 0;
        }
        let mut probe = Boundaries {
            in_frame: self.in_frame,
            saw_end: self.saw_end,
            ended: self.ended,
        };
        for (i, &b) in bytes.iter().enumerate() {
            if probe.step(b) && probe.ended >= after {
                return i + 1;
            }
        }
        bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds everything, collecting (event, frame) until the end or an error.
    fn run(f: &mut Framer, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<FrameError>) {
        let mut frames = Vec::new();
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let (n, ev) = f.feed(rest);
                assert!(n <= rest.len());
                rest = &rest[n..];
                match ev {
                    Some(Ok(Event::Frame)) => frames.push(f.frame().to_vec()),
                    Some(Ok(Event::Start)) | None => {}
                    Some(Err(e)) => return (frames, Some(e)),
                }
            }
        }
        (frames, None)
    }

    #[test]
    fn frames_come_out_whole() {
        let mut f = Framer::new(100);
        let (frames, err) = run(&mut f, &[b"\x0bMSH|a\x1c\r\x0bMSH", b"|b\x1c", b"\r"]);
        assert_eq!(err, None);
        assert_eq!(
            frames,
            [b"\x0bMSH|a\x1c\r".to_vec(), b"\x0bMSH|b\x1c\r".to_vec()]
        );
        assert!(!f.in_frame());
    }

    #[test]
    fn message_is_the_payload() {
        let mut f = Framer::new(100);
        assert_eq!(f.feed(b"\x0b"), (1, Some(Ok(Event::Start))));
        assert!(f.in_frame());
        assert_eq!(f.feed(b"MSH\x1c\rX"), (5, Some(Ok(Event::Frame))));
        assert_eq!(f.message(), b"MSH");
        // Released by the next feed.
        assert_eq!(f.feed(b"\x0b").1, Some(Ok(Event::Start)));
        assert_eq!(f.message(), b"");
    }

    #[test]
    fn strict_framing() {
        for (input, want) in [
            (&b"\r"[..], FrameError::Stray(b'\r')),
            (b"\x0bA\x1c\r\n", FrameError::Stray(b'\n')),
            (b"MSH", FrameError::Stray(b'M')),
            (b"\x0bMSH\x1cX", FrameError::BadEnd(b'X')),
            (b"\x0bMSH\x1c\x1c", FrameError::BadEnd(0x1c)),
            (b"\x0bMSH\x0bMSH\x1c\r", FrameError::NestedStart),
        ] {
            let mut f = Framer::new(100);
            assert_eq!(run(&mut f, &[input]).1, Some(want), "{input:?}");
            assert_eq!(want.denial().reason, Reason::Hl7Framing);
            // Stays failed.
            assert_eq!(f.feed(b"\x0b"), (0, Some(Err(want))));
        }
    }

    #[test]
    fn cap_is_exact() {
        let mut f = Framer::new(4);
        assert_eq!(run(&mut f, &[b"\x0b1234\x1c\r"]).0.len(), 1);
        let mut f = Framer::new(4);
        let (_, err) = run(&mut f, &[b"\x0b1234", b"5"]);
        assert_eq!(err, Some(FrameError::TooLarge(4)));
        assert_eq!(err.unwrap().denial().reason, Reason::Hl7TooLarge);
    }

    #[test]
    fn memory_is_given_back() {
        let mut f = Framer::new(1 << 20);
        let big = [b'x'; 100_000];
        run(&mut f, &[b"\x0b", &big, b"\x1c\r"]);
        assert!(f.capacity() >= 100_003);
        f.feed(b"");
        assert_eq!(f.capacity(), 0);
    }

    #[test]
    fn device_boundaries() {
        let mut b = Boundaries::default();
        assert!(b.at_boundary());
        assert_eq!(b.until(b"\x0bA\x1c\r\x0bB\x1c\r", 0), 0);
        assert_eq!(b.until(b"\x0bA\x1c\r\x0bB\x1c\r", 1), 4);
        assert_eq!(b.until(b"\x0bA\x1c\r\x0bB\x1c\r", 2), 8);
        assert_eq!(b.until(b"\x0bA\x1c\r\x0bB", 3), 6);
        b.pass(b"\x0bA\x1c");
        assert!(!b.at_boundary());
        // Already enough frames, but inside one: wait for its end.
        assert_eq!(b.until(b"\r\x0b", 0), 1);
        b.pass(b"\r");
        assert!(b.at_boundary() && b.ended == 1);
    }

    /// Splits `data` at the given points.
    fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            out.push(data[last..c].to_vec());
            last = c;
        }
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_overflow(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
            max in 0usize..300,
        ) {
            let mut f = Framer::new(max);
            for chunk in chunked(&data, &cuts) {
                let mut rest = &chunk[..];
                loop {
                    let (n, ev) = f.feed(rest);
                    prop_assert!(n <= rest.len());
                    prop_assert!(f.capacity() <= max + 3);
                    prop_assert!(f.frame().len() <= max + 3);
                    rest = &rest[n..];
                    if matches!(ev, Some(Err(_))) || rest.is_empty() { break; }
                }
            }
        }

        #[test]
        fn valid_frames_survive_any_chunking(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("frame bytes", |b| *b != START && *b != END), 0..200),
                1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..32),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| wrap(p)).collect();
            let mut f = Framer::new(200);
            let chunks = chunked(&stream, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            let (frames, err) = run(&mut f, &refs);
            prop_assert_eq!(err, None);
            let want: Vec<Vec<u8>> = payloads.iter().map(|p| wrap(p)).collect();
            prop_assert_eq!(frames, want);
        }

        #[test]
        fn boundaries_match_the_framer(
            payloads in proptest::collection::vec(
                proptest::collection::vec(any::<u8>().prop_filter("frame bytes", |b| *b != START && *b != END), 0..50),
                0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| wrap(p)).collect();
            let mut b = Boundaries::default();
            for c in chunked(&stream, &cuts) { b.pass(&c); }
            prop_assert_eq!(b.ended, payloads.len() as u64);
            prop_assert!(b.at_boundary());
        }
    }
}
