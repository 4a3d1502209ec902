//! The hash chain that makes the audit trail tamper-evident: every line
//! carries `seq`, the `prev` line's hash and its own `hash`
//! (`docs/audit-chain.md` is the specification).
//!
//! A sealed line is the event's JSON object with three members appended:
//! `{...,"seq":N,"prev":"<64 hex>","hash":"<64 hex>"}`. `hash` is the
//! SHA-256 of the line's bytes from `{` through the closing quote of
//! `prev`'s value, so the suffix sits at fixed offsets from the end of
//! the line: readers find it without parsing the JSON, and nothing inside
//! an earlier field can be mistaken for it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest;

use crate::policy::AuditTarget;

/// `prev` of the first line of a brand-new chain (whose `seq` is 1).
pub(crate) const GENESIS: [u8; 64] = [b'0'; 64];

const HASH_KEY: &[u8] = b",\"hash\":\"";
const PREV_KEY: &[u8] = b",\"prev\":\"";
const SEQ_KEY: &[u8] = b",\"seq\":";
/// `,"hash":"<64 hex>"}`: what follows the hashed bytes.
pub(crate) const HASH_SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 2;

/// The head file's one record: `seq` (20 digits, zero-padded, so the
/// record has a fixed length and each rewrite overwrites the last) and
/// the hash of that line.
pub(crate) const HEAD_RECORD_LEN: usize = 20 + 1 + 64 + 1;

/// Where the chain's last `seq` and hash are kept beside an audit file.
pub(crate) fn head_path(audit: &Path) -> PathBuf {
    let mut name = audit.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// The chain members of a sealed line, found from its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub seq: u64,
    pub prev: [u8; 64],
    pub hash: [u8; 64],
    /// How many bytes of the line `hash` covers (`{` through `prev`).
    pub covered: usize,
}

impl Sealed {
    /// Whether `hash` is the SHA-256 of the bytes it covers.
    pub(crate) fn hash_matches(&self, line: &[u8]) -> bool {
        hex_digest(&line[..self.covered]) == self.hash
    }
}

/// Reads the chain members from the end of `line` (no newline). `None`
/// when the line does not end in exactly `,"seq":N,"prev":"<hex>",
/// "hash":"<hex>"}` (lowercase hex, `N` without leading zeros) or does
/// not start with `{`.
pub(crate) fn parse_sealed(line: &[u8]) -> Option<Sealed> {
    if line.first() != Some(&b'{') || !line.ends_with(b"\"}") {
        return None;
    }
    let covered = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let hash = hex_field(&line[covered + HASH_KEY.len()..line.len() - 2])?;
    if &line[covered..covered + HASH_KEY.len()] != HASH_KEY {
        return None;
    }
    let body = &line[..covered];
    let prev_start = body.len().checked_sub(PREV_KEY.len() + 64 + 1)?;
    if body[body.len() - 1] != b'"' || &body[prev_start..prev_start + PREV_KEY.len()] != PREV_KEY {
        return None;
    }
    let prev = hex_field(&body[prev_start + PREV_KEY.len()..body.len() - 1])?;
    let before_prev = &body[..prev_start];
    let digits = before_prev
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let seq_digits = &before_prev[before_prev.len() - digits..];
    let key_start = (before_prev.len() - digits).checked_sub(SEQ_KEY.len())?;
    // `key_start` 0 would put the key where the line's `{` must be.
    if key_start == 0 || &before_prev[key_start..key_start + SEQ_KEY.len()] != SEQ_KEY {
        return None;
    }
    if digits == 0 || digits > 20 || (digits > 1 && seq_digits[0] == b'0') {
        return None;
    }
    let seq = std::str::from_utf8(seq_digits).ok()?.parse().ok()?;
    Some(Sealed {
        seq,
        prev,
        hash,
        covered,
    })
}

fn hex_field(bytes: &[u8]) -> Option<[u8; 64]> {
    let hex: [u8; 64] = bytes.try_into().ok()?;
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(hex)
}

/// Lowercase hex SHA-256, on the stack.
pub(crate) fn hex_digest(bytes: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 64];
    for (i, b) in d.as_ref().iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    out
}

/// Parses a head file's record (`seq hash\n`).
pub(crate) fn parse_head(bytes: &[u8]) -> Option<(u64, [u8; 64])> {
    let line = bytes.strip_suffix(b"\n")?;
    let (seq, hash) = line.split_at(line.iter().position(|&b| b == b' ')?);
    if seq.is_empty() || !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seq = std::str::from_utf8(seq).ok()?.parse().ok()?;
    Some((seq, hex_field(&hash[1..])?))
}

/// The head file's record for the line `seq` with `hash`.
pub(crate) fn head_record(seq: u64, hash: &[u8; 64]) -> [u8; HEAD_RECORD_LEN] {
    use std::io::Write;
    let mut out = [0u8; HEAD_RECORD_LEN];
    let mut w = &mut out[..];
    // Fits exactly: 20 digits hold any u64.
    let _ = write!(w, "{seq:020} ");
    let _ = w.write_all(hash);
    let _ = w.write_all(b"\n");
    out
}

/// The running end of a trail's hash chain: what the next line links to.
pub struct Chain {
    /// `seq` of the last line sealed (0 before the first line of a chain).
    last_seq: u64,
    last_hash: [u8; 64],
    /// The file ends in the middle of a line (moat stopped mid-write): the
    /// writer starts with a newline so that the torn line stands alone.
    ends_mid_line: bool,
}

/// What the end of an existing audit file says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Tail {
    pub last: LastLine,
    /// The file does not end with a newline.
    pub ends_mid_line: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LastLine {
    /// No complete line (an empty file, or only a torn one).
    None,
    Sealed {
        seq: u64,
        hash: [u8; 64],
    },
    /// A complete line without chain members (written before chaining,
    /// or not by moat).
    Unsealed,
}

/// Lines longer than this are not read back in full on resume; such a
/// line counts as unsealed (moat writes nothing near this size).
const MAX_TAIL: usize = 16 << 20;

/// The last line of `bytes`, if its start is in view (a line whose start
/// is not is too long to be moat's).
fn whole(bytes: &[u8], at_file_start: bool) -> Option<&[u8]> {
    match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => Some(&bytes[i + 1..]),
        None => at_file_start.then_some(bytes),
    }
}

/// Reads the last complete line (and a torn one after it) from the end of
/// `file`, backwards in growing chunks: never the whole file.
pub(crate) fn read_tail<R: Read + Seek>(file: &mut R) -> std::io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(Tail {
            last: LastLine::None,
            ends_mid_line: false,
        });
    }
    // `buf` holds the file's bytes from `start` to the end.
    let mut buf = Vec::new();
    let mut start = len;
    let mut chunk = 4096u64;
    loop {
        // Enough when two newlines are in view (the one before the last
        // complete line and the one ending it; a torn line after that
        // is cut by the second) or the start of the file is.
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines >= 2 || buf.len() > MAX_TAIL {
            break;
        }
        let n = chunk.min(start);
        start -= n;
        let mut more = vec![0u8; n as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut more)?;
        more.extend_from_slice(&buf);
        buf = more;
        chunk = (chunk * 2).min(1 << 20);
    }
    let ends_mid_line = buf.last() != Some(&b'\n');
    let body = if ends_mid_line {
        &buf[..]
    } else {
        &buf[..buf.len() - 1]
    };
    // `body` ends with the last line (complete, or torn); the line before
    // it ends at the newline before that.
    let (before, last) = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => (Some(&body[..i]), &body[i + 1..]),
        None => (None, body),
    };
    let complete = |line: &[u8]| match parse_sealed(line) {
        Some(s) => LastLine::Sealed {
            seq: s.seq,
            hash: s.hash,
        },
        None => LastLine::Unsealed,
    };
    let last_is_whole = before.is_some() || start == 0;
    let last = if !ends_mid_line {
        if last_is_whole {
            complete(last)
        } else {
            LastLine::Unsealed
        }
    } else if let Some(s) = parse_sealed(last).filter(|_| last_is_whole) {
        // Only the newline is missing: the line itself is whole.
        LastLine::Sealed {
            seq: s.seq,
            hash: s.hash,
        }
    } else {
        // A torn line: the chain goes on from the complete line before it.
        match before.map(|b| whole(b, start == 0)) {
            None => LastLine::None,
            Some(None) => LastLine::Unsealed,
            Some(Some(line)) => complete(line),
        }
    };
    Ok(Tail {
        last,
        ends_mid_line,
    })
}

impl Chain {
    /// A new chain: its first line links to the genesis hash.
    pub fn fresh() -> Chain {
        Chain {
            last_seq: 0,
            last_hash: GENESIS,
            ends_mid_line: false,
        }
    }

    /// A chain whose last line was `seq` with `hash`.
    #[cfg(test)]
    pub(super) fn fresh_at(seq: u64, hash: [u8; 64]) -> Chain {
        Chain {
            last_seq: seq,
            last_hash: hash,
            ends_mid_line: false,
        }
    }

    /// Continues the chain from the last line of an existing trail, or
    /// from its head file when the file is missing or empty (rotated away
    /// while moat was stopped).
    pub(super) fn resume(target: &AuditTarget) -> std::io::Result<Chain> {
        let AuditTarget::File(path) = target else {
            return Ok(Chain::fresh());
        };
        let tail = match std::fs::File::open(path) {
            Ok(mut f) => read_tail(&mut f).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot read the end of audit log {}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Tail {
                last: LastLine::None,
                ends_mid_line: false,
            },
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                ))
            }
        };
        let head_file = head_path(path);
        let head = match std::fs::read(&head_file) {
            // Created empty by the writer before its first batch.
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => {
                let head = parse_head(&bytes);
                if head.is_none() {
                    tracing::warn!(
                        file = %head_file.display(),
                        "audit head file is not `seq hash`; ignoring it"
                    );
                }
                head
            }
            Err(_) => None,
        };
        let mut chain = Chain::decide(&tail, head, path);
        chain.ends_mid_line = tail.ends_mid_line;
        Ok(chain)
    }

    /// Where to go on from, given the file's last line and the head file.
    fn decide(tail: &Tail, head: Option<(u64, [u8; 64])>, path: &Path) -> Chain {
        let at = |seq, hash| Chain {
            last_seq: seq,
            last_hash: hash,
            ends_mid_line: false,
        };
        if tail.ends_mid_line {
            tracing::warn!(
                file = %path.display(),
                "audit log ends in the middle of a line (moat stopped mid-write); \
                 starting on a new line, the torn line stays as it is"
            );
        }
        match (&tail.last, head) {
            (LastLine::Sealed { seq, hash }, Some((head_seq, head_hash)))
                if head_seq > *seq || (head_seq == *seq && head_hash != *hash) =>
            {
                // The trail lost lines at its end, or its last line was
                // rewritten, while moat was stopped: going on from the head
                // leaves the gap visible to `moat audit verify`.
                tracing::error!(
                    file = %path.display(),
                    last_seq = seq,
                    head_seq,
                    "audit log ends before its head file says it did; continuing from the head file"
                );
                at(head_seq, head_hash)
            }
            (LastLine::Sealed { seq, hash }, _) => at(*seq, *hash),
            (LastLine::None, Some((seq, hash))) => at(seq, hash),
            (LastLine::None, None) => Chain::fresh(),
            (LastLine::Unsealed, head) => {
                tracing::warn!(
                    file = %path.display(),
                    "the audit log's last line has no chain fields (written before chaining, \
                     or not by moat); {}",
                    if head.is_some() { "continuing from the head file" } else { "starting a new chain" }
                );
                head.map_or_else(Chain::fresh, |(seq, hash)| at(seq, hash))
            }
        }
    }

    /// Whether the file ended mid-line, so a newline must come first.
    pub(super) fn take_needs_newline(&mut self) -> bool {
        std::mem::take(&mut self.ends_mid_line)
    }

    /// `seq` and hash of the last line sealed (0 and [`GENESIS`] before any).
    pub(super) fn last(&self) -> (u64, &[u8; 64]) {
        (self.last_seq, &self.last_hash)
    }

    /// Where the chain ends now, to go back to with [`Chain::rewind`].
    pub(super) fn mark(&self) -> (u64, [u8; 64]) {
        (self.last_seq, self.last_hash)
    }

    /// Forgets the lines sealed since `mark`: they were never written, so
    /// the next line links to the last one that was, and the file stays
    /// verifiable across a loss (which the writer reports in the trail).
    pub(super) fn rewind(&mut self, mark: (u64, [u8; 64])) {
        (self.last_seq, self.last_hash) = mark;
    }

    /// Seals one serialised event (`{...}`, no newline) into the chain and
    /// returns its sequence number.
    pub fn seal(&mut self, line: &mut Vec<u8>) -> u64 {
        use std::io::Write;
        debug_assert_eq!(line.last(), Some(&b'}'));
        line.pop();
        let seq = self.last_seq + 1;
        if line.len() > 1 {
            line.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(line, "\"seq\":{seq}");
        line.extend_from_slice(PREV_KEY);
        line.extend_from_slice(&self.last_hash);
        line.push(b'"');
        let hash = hex_digest(line);
        line.extend_from_slice(HASH_KEY);
        line.extend_from_slice(&hash);
        line.extend_from_slice(b"\"}");
        self.last_seq = seq;
        self.last_hash = hash;
        seq
    }
}

#[cfg(test)]
pub(super) mod tests;
