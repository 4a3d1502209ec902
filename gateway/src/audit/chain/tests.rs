use std::io::{Cursor, Read, Seek, SeekFrom};

use super::*;

fn event(i: u64) -> Vec<u8> {
    format!(
        r#"{{"ts":"2026-12-02T20:00:00.{:03}Z","event":"connection_denied","conn_id":{i}}}"#,
        i % 1000
    )
    .into_bytes()
}

/// `n` sealed lines, each with its newline, from a new chain.
pub(crate) fn sealed_lines(n: u64) -> Vec<Vec<u8>> {
    let mut chain = Chain::fresh();
    (1..=n)
        .map(|i| {
            let mut line = event(i);
            chain.seal(&mut line);
            line.push(b'\n');
            line
        })
        .collect()
}

#[test]
fn seal_appends_seq_prev_and_the_hash_of_everything_before_it() {
    let mut chain = Chain::fresh();
    let mut line = br#"{"ts":"2026-12-02T20:00:00.000Z","event":"gateway_started"}"#.to_vec();
    assert_eq!(chain.seal(&mut line), 1);
    let text = String::from_utf8(line.clone()).unwrap();
    let covered = format!(
        r#"{{"ts":"2026-12-02T20:00:00.000Z","event":"gateway_started","seq":1,"prev":"{}""#,
        "0".repeat(64)
    );
    let hash = hex_digest(covered.as_bytes());
    assert_eq!(
        text,
        format!(
            r#"{covered},"hash":"{}"}}"#,
            std::str::from_utf8(&hash).unwrap()
        )
    );
    let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["event"], "gateway_started");

    let sealed = parse_sealed(&line).unwrap();
    assert_eq!(sealed.seq, 1);
    assert_eq!(sealed.prev, GENESIS);
    assert_eq!(sealed.hash, hash);
    assert!(sealed.hash_matches(&line));

    let mut second = event(2);
    assert_eq!(chain.seal(&mut second), 2);
    let s2 = parse_sealed(&second).unwrap();
    assert_eq!((s2.seq, s2.prev), (2, hash));
    assert_eq!(chain.last(), (2, &s2.hash));
}

#[test]
fn parse_sealed_anchors_on_the_end_of_the_line() {
    let line = sealed_lines(1).remove(0);
    let line = &line[..line.len() - 1];
    assert!(parse_sealed(line).is_some());
    // Anything after the hash, uppercase hex, a leading zero in seq, or a
    // line that does not start with `{`: not a sealed line.
    let mut extra = line.to_vec();
    extra.insert(extra.len() - 1, b' ');
    assert!(parse_sealed(&extra).is_none());
    let mut upper = line.to_vec();
    let n = upper.len();
    upper[n - 66..n - 2].make_ascii_uppercase();
    assert_ne!(upper, line);
    assert!(parse_sealed(&upper).is_none());
    let zero = String::from_utf8(line.to_vec())
        .unwrap()
        .replace("\"seq\":1,", "\"seq\":01,");
    assert!(parse_sealed(zero.as_bytes()).is_none());
    assert!(parse_sealed(&line[1..]).is_none());
    assert!(parse_sealed(b"").is_none());
    assert!(parse_sealed(br#"{"seq":1}"#).is_none());
}

#[test]
fn head_records_have_a_fixed_length_and_read_back() {
    let hash = hex_digest(b"x");
    let r = head_record(7, &hash);
    assert_eq!(r.len(), HEAD_RECORD_LEN);
    assert_eq!(parse_head(&r), Some((7, hash)));
    assert_eq!(
        parse_head(&head_record(u64::MAX, &hash)),
        Some((u64::MAX, hash))
    );
    assert_eq!(parse_head(b"7 abc\n"), None);
    assert_eq!(parse_head(&r[..r.len() - 1]), None);
    assert_eq!(
        head_path(Path::new("/var/log/moat/audit.jsonl")),
        Path::new("/var/log/moat/audit.jsonl.head")
    );
}

fn tail_of(bytes: &[u8]) -> Tail {
    read_tail(&mut Cursor::new(bytes.to_vec())).unwrap()
}

fn last_of(line: &[u8]) -> LastLine {
    let s = parse_sealed(line.strip_suffix(b"\n").unwrap_or(line)).unwrap();
    LastLine::Sealed {
        seq: s.seq,
        hash: s.hash,
    }
}

#[test]
fn read_tail_finds_the_last_complete_line() {
    let lines = sealed_lines(3);
    let all = lines.concat();
    assert_eq!(
        tail_of(b""),
        Tail {
            last: LastLine::None,
            ends_mid_line: false
        }
    );
    assert_eq!(
        tail_of(&all),
        Tail {
            last: last_of(&lines[2]),
            ends_mid_line: false
        }
    );
    assert_eq!(tail_of(&lines[0]).last, last_of(&lines[0]));
    // Torn: the chain goes on from the line before the torn one.
    let mut torn = all.clone();
    torn.extend_from_slice(&lines[0][..40]);
    assert_eq!(
        tail_of(&torn),
        Tail {
            last: last_of(&lines[2]),
            ends_mid_line: true
        }
    );
    // Only the newline missing: the last line itself is whole.
    assert_eq!(
        tail_of(&all[..all.len() - 1]),
        Tail {
            last: last_of(&lines[2]),
            ends_mid_line: true
        }
    );
    // A torn line alone.
    assert_eq!(
        tail_of(&lines[0][..40]),
        Tail {
            last: LastLine::None,
            ends_mid_line: true
        }
    );
    // A line without chain members (before chaining, or not by moat).
    let mut foreign = all.clone();
    foreign.extend_from_slice(b"{\"ts\":\"x\",\"event\":\"gateway_started\"}\n");
    assert_eq!(tail_of(&foreign).last, LastLine::Unsealed);
}

/// Counts the bytes read.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn resume_reads_only_the_tail_of_a_large_file() {
    let lines = sealed_lines(20_000);
    let all = lines.concat();
    assert!(all.len() > 2 << 20);
    let mut file = Counting {
        inner: Cursor::new(all),
        read: 0,
    };
    let tail = read_tail(&mut file).unwrap();
    assert_eq!(tail.last, last_of(&lines[19_999]));
    assert!(file.read <= 8192, "read {} bytes", file.read);
}

#[test]
fn resume_goes_on_from_the_file_then_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let target = AuditTarget::File(path.clone());
    // Nothing yet: a new chain.
    let mut chain = Chain::resume(&target).unwrap();
    assert_eq!(chain.last(), (0, &GENESIS));
    assert!(!chain.take_needs_newline());
    // The writer creates the head file empty before its first batch.
    std::fs::write(head_path(&path), b"").unwrap();
    assert_eq!(Chain::resume(&target).unwrap().last(), (0, &GENESIS));

    let lines = sealed_lines(4);
    std::fs::write(&path, lines.concat()).unwrap();
    let mut chain = Chain::resume(&target).unwrap();
    let last = parse_sealed(lines[3].strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(chain.last(), (4, &last.hash));
    let mut next = event(5);
    assert_eq!(chain.seal(&mut next), 5);
    assert_eq!(parse_sealed(&next).unwrap().prev, last.hash);

    // Rotated away while moat was stopped: the head file carries on.
    std::fs::write(head_path(&path), head_record(4, &last.hash)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let chain = Chain::resume(&target).unwrap();
    assert_eq!(chain.last(), (4, &last.hash));
    std::fs::write(&path, b"").unwrap();
    assert_eq!(Chain::resume(&target).unwrap().last(), (4, &last.hash));

    // Lines removed from the end while moat was stopped: the head is
    // further on, and the chain goes on from it (the gap stays visible).
    std::fs::write(&path, lines[..2].concat()).unwrap();
    assert_eq!(Chain::resume(&target).unwrap().last(), (4, &last.hash));

    // A torn last line: a newline first, then on from the line before it.
    std::fs::remove_file(head_path(&path)).unwrap();
    let mut torn = lines[..3].concat();
    torn.extend_from_slice(&lines[3][..30]);
    std::fs::write(&path, torn).unwrap();
    let mut chain = Chain::resume(&target).unwrap();
    let third = parse_sealed(lines[2].strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(chain.last(), (3, &third.hash));
    assert!(chain.take_needs_newline());
    assert!(!chain.take_needs_newline());

    // A trail from before chaining: a new chain.
    std::fs::write(&path, b"{\"ts\":\"x\",\"event\":\"gateway_started\"}\n").unwrap();
    assert_eq!(Chain::resume(&target).unwrap().last(), (0, &GENESIS));

    // Stdout: a new chain, always.
    assert_eq!(
        Chain::resume(&AuditTarget::Stdout).unwrap().last(),
        (0, &GENESIS)
    );
}
