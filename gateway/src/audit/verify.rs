//! `moat audit verify FILE...`: checks the hash chain of audit files, given
//! oldest first, and reports the first line that was changed, removed or
//! reordered (`docs/audit-chain.md`).
//!
//! Streaming and textual: each line is read once, its chain members are
//! found at fixed offsets from its end (`chain::parse_sealed`) and its
//! hash recomputed over the bytes before them. No line is parsed as JSON,
//! except the rare one without chain members, to say what it is.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::chain::{self, Sealed, GENESIS};

/// A line longer than this is not moat's; reading stops there.
const MAX_LINE: u64 = 64 << 20;

pub fn run(files: &[PathBuf]) -> ExitCode {
    let report = check(files);
    for line in &report.summary {
        println!("{line}");
    }
    match report.outcome {
        Outcome::Intact => ExitCode::SUCCESS,
        Outcome::Broken(what) => {
            eprintln!("{what}");
            eprintln!("moat audit verify: the audit trail was altered, or is incomplete");
            ExitCode::from(1)
        }
        Outcome::Unreadable(what) => {
            eprintln!("moat audit verify: {what}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Intact,
    /// `FILE:LINE: what`: the first problem found.
    Broken(String),
    /// A file (or the head file) could not be read.
    Unreadable(String),
}

#[derive(Debug)]
pub(crate) struct Report {
    /// One line per file checked (and notes), in order.
    pub summary: Vec<String>,
    pub outcome: Outcome,
}

/// Checks `files` (oldest first) as one chain, then the last one against
/// its head file when there is one.
pub(crate) fn check(files: &[PathBuf]) -> Report {
    let mut v = Verifier::default();
    let outcome = v.check_all(files);
    Report {
        summary: v.summary,
        outcome,
    }
}

/// The last sealed line seen.
#[derive(Debug, Clone, Copy)]
struct Link {
    seq: u64,
    hash: [u8; 64],
    /// Index of its file in `Verifier::names`, and its line there.
    file: usize,
    line: u64,
}

/// How a file's first sealed line relates to what came before.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// `seq` 1 with the all-zero `prev`.
    NewChain,
    /// Goes on from the last line of the file before.
    Continues(u64),
    /// Goes on from a line not given (an earlier file).
    After(u64),
}

#[derive(Default)]
struct FileStats {
    lines: u64,
    first_seq: Option<u64>,
    start: Option<Start>,
    torn: u64,
    first_torn: u64,
}

/// A forward jump in `seq`, judged on the next line: reordered if a missing
/// `seq` comes next, else removed.
struct Jump {
    line: u64,
    from: u64,
    to: u64,
}

/// A line that may be torn (moat stopped mid-write): accepted if the next
/// sealed line goes on from the one before it.
struct MaybeTorn {
    file: usize,
    line: u64,
}

#[derive(Default)]
struct Verifier {
    summary: Vec<String>,
    /// The files, as given.
    names: Vec<String>,
    last: Option<Link>,
    torn: Option<MaybeTorn>,
}

enum Kind<'a> {
    Sealed(Sealed),
    /// Starts like an object but is not valid JSON: may be torn.
    Partial,
    /// Valid JSON without chain members.
    Unchained,
    NotJson(&'a str),
}

fn classify(line: &[u8]) -> Kind<'_> {
    if let Some(s) = chain::parse_sealed(line) {
        return Kind::Sealed(s);
    }
    if line.is_empty() {
        return Kind::NotJson("an empty line");
    }
    if line[0] != b'{' {
        return Kind::NotJson("not JSON");
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
        Ok(_) => Kind::Unchained,
        Err(_) => Kind::Partial,
    }
}

fn hex_str(hash: &[u8; 64]) -> &str {
    std::str::from_utf8(hash).unwrap_or("?")
}

fn missing(from: u64, to: u64) -> String {
    if from + 2 == to {
        format!("seq {} is missing", from + 1)
    } else {
        format!("seq {} to {} are missing", from + 1, to - 1)
    }
}

impl Verifier {
    fn check_all(&mut self, files: &[PathBuf]) -> Outcome {
        if files.is_empty() {
            return Outcome::Unreadable("no file given".into());
        }
        let last_file = files.last().expect("not empty");
        // Read the head before the file it describes: moat writes the head
        // after the lines, so what the file holds when read is at least
        // what the head says, even while moat is writing.
        let head_file = chain::head_path(last_file);
        let head = match std::fs::read(&head_file) {
            // moat creates it empty and fills it after its first batch.
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Outcome::Unreadable(format!("cannot read {}: {e}", head_file.display()))
            }
        };
        self.names = files.iter().map(|p| p.display().to_string()).collect();
        for (i, path) in files.iter().enumerate() {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) => {
                    return Outcome::Unreadable(format!("cannot read {}: {e}", path.display()))
                }
            };
            let reader = BufReader::with_capacity(1 << 20, file);
            let is_last = i + 1 == files.len();
            match self.check_file(i, reader, is_last) {
                Ok(Ok(())) => {}
                Ok(Err(broken)) => return Outcome::Broken(broken),
                Err(e) => {
                    return Outcome::Unreadable(format!("cannot read {}: {e}", path.display()))
                }
            }
        }
        match head {
            Some(bytes) => self.check_head(&head_file, &bytes),
            None => Outcome::Intact,
        }
    }

    /// Checks one file. `Ok(Err(problem))` on the first problem.
    fn check_file(
        &mut self,
        file: usize,
        mut reader: impl BufRead,
        is_last: bool,
    ) -> std::io::Result<Result<(), String>> {
        let names = std::mem::take(&mut self.names);
        let result = self.check_lines(&names, file, &mut reader, is_last);
        self.names = names;
        result
    }

    fn check_lines(
        &mut self,
        names: &[String],
        file: usize,
        reader: &mut impl BufRead,
        is_last: bool,
    ) -> std::io::Result<Result<(), String>> {
        let name = &names[file];
        let mut stats = FileStats::default();
        let mut buf = Vec::with_capacity(4096);
        let mut jump: Option<Jump> = None;
        let at = |line: u64| format!("{name}:{line}");
        let at_in = |file: usize, line: u64| format!("{}:{line}", names[file]);
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = reader.take(MAX_LINE).read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            stats.lines = line_no;
            let ended = buf.last() == Some(&b'\n');
            if ended {
                buf.pop();
            } else if n as u64 == MAX_LINE {
                return Ok(Err(format!(
                    "{}: not JSON: a line longer than {} MiB (not moat's)",
                    at(line_no),
                    MAX_LINE >> 20
                )));
            }
            let sealed = match classify(&buf) {
                Kind::Sealed(s) => s,
                Kind::Partial => {
                    if let Some(t) = &self.torn {
                        return Ok(Err(format!(
                            "{}: torn or changed: not a complete line, and the next line is not one either",
                            at_in(t.file, t.line)
                        )));
                    }
                    self.torn = Some(MaybeTorn {
                        file,
                        line: line_no,
                    });
                    continue;
                }
                Kind::Unchained => {
                    return Ok(Err(format!(
                        "{}: no chain fields (seq, prev, hash): written before chaining, or not by moat",
                        at(line_no)
                    )))
                }
                Kind::NotJson(what) => return Ok(Err(format!("{}: {what}", at(line_no)))),
            };
            if !sealed.hash_matches(&buf) {
                return Ok(Err(format!(
                    "{}: changed: the line's hash does not match its content (seq {})",
                    at(line_no),
                    sealed.seq
                )));
            }
            if !ended && is_last {
                return Ok(Err(format!(
                    "{}: torn last line: the file ends without a newline (moat stopped mid-write, or the file was cut)",
                    at(line_no)
                )));
            }
            if let Some(j) = jump.take() {
                return Ok(Err(if sealed.seq > j.from && sealed.seq < j.to {
                    format!(
                        "{}: reordered: seq {} comes before seq {} (line {})",
                        at(j.line),
                        j.to,
                        sealed.seq,
                        line_no
                    )
                } else {
                    format!(
                        "{}: removed: seq jumps from {} to {}: {}",
                        at(j.line),
                        j.from,
                        j.to,
                        missing(j.from, j.to)
                    )
                }));
            }
            let first_in_file = stats.first_seq.is_none();
            if let Some(t) = self.torn.take() {
                // With nothing before it, moat starts a new chain after a
                // torn line (`chain::Chain::resume`); anything else could
                // hide a first line made to look torn.
                let goes_on = match self.last {
                    Some(last) => sealed.seq == last.seq + 1 && sealed.prev == last.hash,
                    None => sealed.seq == 1 && sealed.prev == GENESIS,
                };
                if !goes_on {
                    return Ok(Err(format!(
                        "{}: torn or changed: not a complete line, and {} does not go on from the line before it",
                        at_in(t.file, t.line),
                        at(line_no)
                    )));
                }
                if t.file == file {
                    stats.torn += 1;
                    if stats.first_torn == 0 {
                        stats.first_torn = t.line;
                    }
                }
            }
            let new_chain = sealed.seq == 1 && sealed.prev == GENESIS;
            match self.last {
                None => {
                    stats.start = Some(if new_chain {
                        Start::NewChain
                    } else {
                        Start::After(sealed.seq.saturating_sub(1))
                    });
                }
                Some(last) if first_in_file && last.file != file => {
                    let prev_file = &names[last.file];
                    if sealed.seq == last.seq + 1 && sealed.prev == last.hash {
                        stats.start = Some(Start::Continues(last.seq));
                    } else {
                        let why = if new_chain {
                            "it starts a new chain (seq 1)".to_string()
                        } else if sealed.seq == last.seq + 1 {
                            format!(
                                "seq {} follows, but prev is not the hash of that file's last line",
                                sealed.seq
                            )
                        } else if sealed.seq > last.seq {
                            format!(
                                "this file starts at seq {}: {}",
                                sealed.seq,
                                missing(last.seq, sealed.seq)
                            )
                        } else {
                            format!(
                                "this file starts at seq {}: files out of order, or overlapping",
                                sealed.seq
                            )
                        };
                        return Ok(Err(format!(
                            "{}: does not continue the previous file {prev_file} (which ends at seq {}): {why}",
                            at(line_no),
                            last.seq
                        )));
                    }
                }
                Some(last) => {
                    if sealed.seq == last.seq + 1 {
                        if sealed.prev != last.hash {
                            return Ok(Err(format!(
                                "{}: does not follow the line before it (line {}, seq {}): prev is not that line's hash; \
                                 the chain was recomputed from here on, or a line was replaced",
                                at(line_no),
                                last.line,
                                last.seq
                            )));
                        }
                    } else if new_chain {
                        return Ok(Err(format!(
                            "{}: starts a new chain (seq 1) after seq {}: the lines before it cannot be checked against it",
                            at(line_no),
                            last.seq
                        )));
                    } else if sealed.seq > last.seq {
                        jump = Some(Jump {
                            line: line_no,
                            from: last.seq,
                            to: sealed.seq,
                        });
                    } else if sealed.seq == last.seq {
                        return Ok(Err(format!(
                            "{}: reordered: seq {} again (a duplicate of line {})",
                            at(line_no),
                            sealed.seq,
                            last.line
                        )));
                    } else {
                        return Ok(Err(format!(
                            "{}: reordered: seq {} comes after seq {} (line {})",
                            at(line_no),
                            sealed.seq,
                            last.seq,
                            last.line
                        )));
                    }
                }
            }
            if stats.first_seq.is_none() {
                stats.first_seq = Some(sealed.seq);
            }
            self.last = Some(Link {
                seq: sealed.seq,
                hash: sealed.hash,
                file,
                line: line_no,
            });
        }
        if let Some(j) = jump {
            return Ok(Err(format!(
                "{}: removed: seq jumps from {} to {}: {}",
                at(j.line),
                j.from,
                j.to,
                missing(j.from, j.to)
            )));
        }
        let mut summary = self.describe(name, &stats);
        if let Some(t) = &self.torn {
            if is_last {
                return Ok(Err(format!(
                    "{}: torn last line: an incomplete line (moat stopped mid-write, or the file was cut)",
                    at_in(t.file, t.line)
                )));
            }
            if t.file == file {
                // The next file's first line decides, as a next line would here.
                let _ = write!(
                    summary,
                    "; ends with an incomplete line (line {}), checked against the next file",
                    t.line
                );
            }
        }
        self.summary.push(summary);
        Ok(Ok(()))
    }

    fn describe(&self, name: &str, stats: &FileStats) -> String {
        let mut s = format!("{name}: {} lines", stats.lines);
        match (stats.first_seq, self.last) {
            (Some(first), Some(last)) => {
                let _ = write!(
                    s,
                    ", seq {first} to {}, last hash {}; ",
                    last.seq,
                    hex_str(&last.hash)
                );
                let _ = match stats.start {
                    Some(Start::NewChain) => write!(s, "starts a chain"),
                    Some(Start::Continues(seq)) => {
                        write!(s, "continues seq {seq} of the previous file")
                    }
                    Some(Start::After(seq)) => {
                        write!(s, "starts after seq {seq} (the earlier file was not given)")
                    }
                    None => Ok(()),
                };
            }
            _ => s.push_str(", no sealed line"),
        }
        if stats.torn > 0 {
            let _ = write!(
                s,
                "; {} torn line(s) (first at line {}: moat stopped mid-write, the chain goes on over it)",
                stats.torn, stats.first_torn
            );
        }
        s
    }

    /// Compares the end of the chain with the head file beside the last file.
    fn check_head(&mut self, head_file: &Path, bytes: &[u8]) -> Outcome {
        let Some((head_seq, head_hash)) = chain::parse_head(bytes) else {
            return Outcome::Broken(format!(
                "{}:1: changed: not a head file (expected `seq hash`)",
                head_file.display()
            ));
        };
        let Some(last) = self.last else {
            self.summary.push(format!(
                "{}: the chain is at seq {head_seq} (in an earlier file, not given or without lines)",
                head_file.display()
            ));
            return Outcome::Intact;
        };
        // The cut is after the chain's last line, wherever that is.
        let at = format!("{}:{}", self.names[last.file], last.line);
        if head_seq > last.seq {
            return Outcome::Broken(format!(
                "{at}: removed at the end: {} says the chain reached seq {head_seq}, the last line has seq {}: {}",
                head_file.display(),
                last.seq,
                missing(last.seq, head_seq + 1)
            ));
        }
        if head_seq == last.seq && head_hash != last.hash {
            return Outcome::Broken(format!(
                "{at}: changed: {} names another hash for seq {head_seq}: the end of the chain was rewritten",
                head_file.display()
            ));
        }
        if head_seq == last.seq {
            self.summary
                .push(format!("{}: agrees (seq {head_seq})", head_file.display()));
        } else {
            self.summary.push(format!(
                "{}: at seq {head_seq}, behind the last line (moat was writing, or stopped before updating it)",
                head_file.display()
            ));
        }
        Outcome::Intact
    }
}

#[cfg(test)]
mod tests;
