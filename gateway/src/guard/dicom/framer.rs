//! Framing of the data phase, while bytes pass through.
//!
//! [`Framer`] is the pure state machine: it sees every PDU and PDV header
//! (6 bytes each) and skips payloads by count, so its cost is per header,
//! never per byte. [`FramedClient`] applies it to the client's reads: a
//! header is released to the device only once it is whole and valid, so
//! at most 6 bytes are ever held back and a bad header never reaches the
//! device. [`PduBoundaries`] follows the device's PDUs (lengths only), so
//! moat knows whether an A-ABORT to the client would land between PDUs.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pdu::{self, PduHeader, Violation, HEADER_LEN, PDV_HEADER_LEN};

/// The accepted presentation context ids (a bit per id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextSet([u64; 4]);

impl ContextSet {
    pub fn insert(&mut self, id: u8) {
        self.0[(id >> 6) as usize] |= 1 << (id & 63);
    }
    pub fn contains(&self, id: u8) -> bool {
        self.0[(id >> 6) as usize] & (1 << (id & 63)) != 0
    }
}

impl FromIterator<u8> for ContextSet {
    fn from_iter<I: IntoIterator<Item = u8>>(ids: I) -> Self {
        let mut set = ContextSet::default();
        ids.into_iter().for_each(|id| set.insert(id));
        set
    }
}

/// Bits of a PDV's message control header: command/data, last fragment.
const MCH_BITS: u8 = 0b11;

/// Where the client's stream is, PDU by PDU.
#[derive(Debug, Clone)]
pub struct Framer {
    accepted: ContextSet,
    max_pdu_length: u32,
    /// Bytes to pass before the next header (a PDV's data, a 4-byte body).
    payload_left: u32,
    /// What is left of the current P-DATA-TF after that payload: while
    /// non-zero, the next header is a PDV's, otherwise a PDU's.
    pdata_left: u32,
}

/// How far [`Framer::scan`] got through a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The whole chunk may pass.
    All,
    /// The chunk may pass up to this offset, where a header begins that
    /// the chunk does not hold whole.
    UpTo(usize),
    /// The chunk may pass up to this offset, where a header is refused.
    Refused(usize, Violation),
}

impl Framer {
    pub fn new(accepted: ContextSet, max_pdu_length: u32) -> Self {
        Framer {
            accepted,
            max_pdu_length,
            payload_left: 0,
            pdata_left: 0,
        }
    }

    /// Whether everything seen so far ends exactly at the end of a PDU.
    pub fn at_pdu_boundary(&self) -> bool {
        self.payload_left == 0 && self.pdata_left == 0
    }

    /// Whether the next header is a PDV's (inside a P-DATA-TF).
    fn in_pdata(&self) -> bool {
        self.pdata_left > 0
    }

    /// Checks the header that comes next (a PDU's or a PDV's) and moves past it.
    pub fn header(&mut self, h: [u8; HEADER_LEN]) -> Result<(), Violation> {
        debug_assert_eq!(self.payload_left, 0);
        if self.in_pdata() {
            self.pdv_header(h)
        } else {
            self.pdu_header(h)
        }
    }

    fn pdu_header(&mut self, h: [u8; HEADER_LEN]) -> Result<(), Violation> {
        let PduHeader { kind, length } = PduHeader::from(h);
        match kind {
            pdu::P_DATA_TF => {
                if length > self.max_pdu_length {
                    return Err(Violation::too_large(
                        kind,
                        length,
                        self.max_pdu_length as usize,
                    ));
                }
                if (length as usize) < PDV_HEADER_LEN {
                    return Err(Violation::malformed(format!(
                        "P-DATA-TF of {length} bytes holds no PDV"
                    )));
                }
                self.pdata_left = length;
            }
            pdu::RELEASE_RQ | pdu::RELEASE_RP | pdu::ABORT => {
                if length != 4 {
                    return Err(Violation::malformed(format!(
                        "{} of {length} bytes, not 4",
                        pdu::type_name(kind)
                    )));
                }
                self.payload_left = 4;
            }
            k if pdu::is_known_type(k) => {
                return Err(Violation::unexpected(k, "after the association"))
            }
            k => return Err(Violation::unrecognized(k)),
        }
        Ok(())
    }

    fn pdv_header(&mut self, h: [u8; HEADER_LEN]) -> Result<(), Violation> {
        let item_len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let (context, mch) = (h[4], h[5]);
        // The item length counts the context id and the control header.
        if item_len < 2 || item_len as u64 + 4 > self.pdata_left as u64 {
            return Err(Violation::malformed(format!(
                "PDV of {item_len} bytes does not fit the {} left of its P-DATA-TF",
                self.pdata_left
            )));
        }
        if mch & !MCH_BITS != 0 {
            return Err(Violation::malformed(format!(
                "PDV message control header 0x{mch:02x}"
            )));
        }
        if !self.accepted.contains(context) {
            return Err(Violation::context(context));
        }
        self.pdata_left -= item_len + 4;
        self.payload_left = item_len - 2;
        Ok(())
    }

    /// A P-DATA-TF whose rest cannot hold another PDV header.
    fn check_room(&self) -> Result<(), Violation> {
        if self.in_pdata() && (self.pdata_left as usize) < PDV_HEADER_LEN {
            return Err(Violation::malformed(format!(
                "{} bytes left in a P-DATA-TF, too few for a PDV",
                self.pdata_left
            )));
        }
        Ok(())
    }

    /// Goes through a chunk of the client's stream: skips payloads, checks
    /// every header it holds whole.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(chunk.len() - pos);
                pos += n;
                self.payload_left -= n as u32;
                continue;
            }
            if let Err(v) = self.check_room() {
                return Scan::Refused(pos, v);
            }
            let Some(h) = chunk.get(pos..pos + HEADER_LEN) else {
                return Scan::UpTo(pos);
            };
            let h: [u8; HEADER_LEN] = h.try_into().expect("6 bytes");
            if let Err(v) = self.header(h) {
                return Scan::Refused(pos, v);
            }
            pos += HEADER_LEN;
        }
        // A P-DATA-TF whose last PDV ended early is refused before any
        // more of it is read.
        match self.check_room() {
            Err(v) if self.payload_left == 0 => Scan::Refused(chunk.len(), v),
            _ => Scan::All,
        }
    }
}

/// The client's side of the data phase: reads pass through the
/// [`Framer`]; writes go straight to the client.
pub struct FramedClient<S> {
    inner: S,
    framer: Framer,
    /// A header split across reads: its first bytes, not yet released.
    held: [u8; HEADER_LEN],
    held_len: usize,
    /// The held header was checked: `held[released..held_len]` may go out.
    held_checked: bool,
    released: usize,
    /// Found after bytes before it were handed out: reported on the next read.
    deferred: Option<Violation>,
    /// The violation that ended the relay.
    violation: Option<Violation>,
}

impl<S> FramedClient<S> {
    pub fn new(inner: S, framer: Framer) -> Self {
        FramedClient {
            inner,
            framer,
            held: [0; HEADER_LEN],
            held_len: 0,
            held_checked: false,
            released: 0,
            deferred: None,
            violation: None,
        }
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// Whether the device has been sent whole PDUs only.
    pub fn device_at_pdu_boundary(&self) -> bool {
        self.framer.at_pdu_boundary() && self.held_len == 0
    }

    #[cfg(test)]
    pub fn held_len(&self) -> usize {
        self.held_len
    }

    fn fail(&mut self, v: Violation) -> Poll<io::Result<()>> {
        let err = io::Error::new(io::ErrorKind::InvalidData, v.detail.clone());
        self.violation = Some(v);
        Poll::Ready(Err(err))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramedClient<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(v) = this.deferred.take() {
            return this.fail(v);
        }
        if this.violation.is_some() {
            return Poll::Ready(Err(io::ErrorKind::InvalidData.into()));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.held_checked {
                let rest = &this.held[this.released..this.held_len];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.released += n;
                if this.released == this.held_len {
                    (this.held_len, this.released, this.held_checked) = (0, 0, false);
                }
                return Poll::Ready(Ok(()));
            }
            if this.held_len > 0 {
                // Complete the split header, reading no further than it.
                let mut rest = ReadBuf::new(&mut this.held[this.held_len..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rest))?;
                let n = rest.filled().len();
                if n == 0 {
                    // EOF inside a header: the device never sees its start.
                    return Poll::Ready(Ok(()));
                }
                this.held_len += n;
                if this.held_len == HEADER_LEN {
                    if let Err(v) = this.framer.header(this.held) {
                        return this.fail(v);
                    }
                    this.held_checked = true;
                }
                continue;
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let chunk = &buf.filled()[start..];
            if chunk.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match this.framer.scan(chunk) {
                Scan::All => return Poll::Ready(Ok(())),
                Scan::UpTo(ok) => {
                    let tail = &chunk[ok..];
                    this.held[..tail.len()].copy_from_slice(tail);
                    this.held_len = tail.len();
                    buf.set_filled(start + ok);
                    if ok > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Scan::Refused(ok, v) => {
                    buf.set_filled(start + ok);
                    if ok == 0 {
                        return this.fail(v);
                    }
                    this.deferred = Some(v);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramedClient<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The device's side of the data phase: reads follow its PDU lengths (not
/// checked: the device is trusted), writes go straight to it.
pub struct PduBoundaries<S> {
    inner: S,
    /// Bytes read from the device so far.
    read: u64,
    /// Where the last PDU whose header was read whole starts.
    last_start: u64,
    /// Where the next PDU starts.
    next_start: u64,
    header: [u8; HEADER_LEN],
    header_len: usize,
}

impl<S> PduBoundaries<S> {
    pub fn new(inner: S) -> Self {
        PduBoundaries {
            inner,
            read: 0,
            last_start: 0,
            next_start: 0,
            header: [0; HEADER_LEN],
            header_len: 0,
        }
    }

    /// Whether the first `written` bytes read end exactly between PDUs.
    pub fn is_boundary(&self, written: u64) -> bool {
        written == self.last_start || written == self.next_start
    }

    fn follow(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.read < self.next_start {
                let n = (self.next_start - self.read).min(chunk.len() as u64) as usize;
                chunk = &chunk[n..];
                self.read += n as u64;
                continue;
            }
            let n = (HEADER_LEN - self.header_len).min(chunk.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&chunk[..n]);
            self.header_len += n;
            chunk = &chunk[n..];
            self.read += n as u64;
            if self.header_len == HEADER_LEN {
                let length = PduHeader::from(self.header).length;
                self.last_start = self.next_start;
                self.next_start += (HEADER_LEN as u64) + length as u64;
                self.header_len = 0;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PduBoundaries<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.follow(&buf.filled()[start..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PduBoundaries<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
