//! The writer thread: serialises each event, seals it into the hash chain,
//! appends it to the audit file (or stdout) and offers it to the SIEM sink.
//! For a file it also keeps the head file (the chain's last `seq` and
//! hash) and follows rotations: a file renamed away or deleted is replaced
//! by a new one at the same path, and the chain goes on in it.

use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::chain::{self, Chain};
use super::siem::SiemSink;
use super::{Event, Line, Msg};
use crate::policy::AuditTarget;

/// How often, at most, the writer asks whether the path still names the
/// file it writes (one `stat` and one `fstat`).
const ROTATION_CHECK: Duration = Duration::from_secs(1);

enum Sink {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(s) => s.write(buf),
            Sink::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// An audit file and what the writer keeps beside it.
struct FileTarget {
    path: PathBuf,
    head: Head,
    /// The file's length as far as moat knows (to notice a truncation).
    expected_len: u64,
    last_check: Instant,
}

/// The head file: one fixed-length record, rewritten in place after each
/// batch, so the chain continues when the audit file is rotated away while
/// moat is stopped.
struct Head {
    path: PathBuf,
    file: std::fs::File,
    written_seq: u64,
}

impl Head {
    fn open(audit: &Path) -> std::io::Result<Head> {
        let path = chain::head_path(audit);
        let file = open_head(&path)?;
        Ok(Head {
            path,
            file,
            written_seq: 0,
        })
    }

    fn write(&mut self, seq: u64, hash: &[u8; 64]) {
        if seq == self.written_seq {
            return;
        }
        match self.file.write_all_at(&chain::head_record(seq, hash), 0) {
            Ok(()) => self.written_seq = seq,
            Err(e) => crate::error_limited!(
                error = %e,
                file = %self.path.display(),
                "writing the audit head file failed"
            ),
        }
    }

    /// Reopens the head file if its path no longer names it.
    fn follow(&mut self) {
        if !names(&self.path, &self.file) {
            match open_head(&self.path) {
                Ok(file) => {
                    self.file = file;
                    self.written_seq = 0;
                }
                Err(e) => crate::error_limited!(error = %e, "reopening the audit head file failed"),
            }
        }
    }
}

fn open_head(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
    opts.open(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open audit head file {}: {e}", path.display()),
        )
    })
}

/// Whether `path` names the open `file` (same device and inode).
fn names(path: &Path, file: &std::fs::File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
        _ => false,
    }
}

/// Where the trail is written.
pub(super) struct Output {
    out: BufWriter<Sink>,
    file: Option<FileTarget>,
}

impl Output {
    pub(super) fn open(target: &AuditTarget) -> std::io::Result<Output> {
        let (sink, file) = match target {
            AuditTarget::Stdout => (Sink::Stdout(std::io::stdout()), None),
            AuditTarget::File(path) => {
                let f = open_append(path)?;
                let expected_len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let target = FileTarget {
                    path: path.clone(),
                    head: Head::open(path)?,
                    expected_len,
                    last_check: Instant::now(),
                };
                (Sink::File(f), Some(target))
            }
        };
        Ok(Output {
            out: BufWriter::with_capacity(64 * 1024, sink),
            file,
        })
    }

    /// At most once a [`ROTATION_CHECK`]: if the path no longer names the
    /// open file (renamed away or deleted), opens a new one there and
    /// returns why. Called with the buffer flushed (between batches).
    fn follow_rotation(&mut self) -> Option<&'static str> {
        let target = self.file.as_mut()?;
        if target.last_check.elapsed() < ROTATION_CHECK {
            return None;
        }
        target.last_check = Instant::now();
        target.head.follow();
        let Sink::File(open) = self.out.get_ref() else {
            return None;
        };
        if names(&target.path, open) {
            // copytruncate: the file was copied and cut to zero in place.
            // Appending goes on at its new end, and the chain goes on from
            // the copy's last line.
            if let Ok(m) = open.metadata() {
                if m.len() < target.expected_len {
                    tracing::info!(
                        file = %target.path.display(),
                        "audit log truncated in place (copytruncate); appending to it"
                    );
                }
                target.expected_len = m.len();
            }
            return None;
        }
        let reason = match open.metadata() {
            Ok(m) if m.nlink() == 0 => "deleted",
            _ => "renamed",
        };
        match open_append(&target.path) {
            Ok(f) => {
                target.expected_len = f.metadata().map(|m| m.len()).unwrap_or(0);
                // The old buffer is empty: flushed at the end of the last batch.
                let _ = self.out.flush();
                self.out = BufWriter::with_capacity(64 * 1024, Sink::File(f));
                tracing::info!(file = %target.path.display(), reason, "audit log reopened");
                Some(reason)
            }
            Err(e) => {
                crate::error_limited!(error = %e, "reopening the audit log failed; writing on to the old file");
                None
            }
        }
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.out.write_all(line)?;
        if let Some(t) = &mut self.file {
            t.expected_len += line.len() as u64;
        }
        Ok(())
    }

    /// Flushes the batch, then records how far the chain got in the head
    /// file (after the lines, so the head never names a line not written).
    fn finish_batch(&mut self, chain: &Chain) -> std::io::Result<()> {
        let flushed = self.out.flush();
        if flushed.is_ok() {
            if let Some(t) = &mut self.file {
                let (seq, hash) = chain.last();
                t.head.write(seq, hash);
            }
        }
        flushed
    }
}

pub(super) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o640);
    opts.open(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot open audit log {}: {e}", path.display()),
        )
    })
}

pub(super) struct Writer {
    output: Output,
    chain: Chain,
    siem: Option<SiemSink>,
    /// Records lost on the way to the file (counted with the queue drops).
    lost: Arc<AtomicU64>,
    /// Whether the last write and flush reached the file (read by the
    /// `on_audit_failure = "refuse"` gate and the metrics).
    writable: Arc<AtomicBool>,
    /// Records not written since the file last took one, reported in the
    /// first line that is.
    unwritten: Option<Unwritten>,
    line: Vec<u8>,
}

struct Unwritten {
    count: u64,
    first: SystemTime,
    last: SystemTime,
    error: String,
}

impl Writer {
    pub(super) fn new(
        output: Output,
        chain: Chain,
        siem: Option<SiemSink>,
        lost: Arc<AtomicU64>,
        writable: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            output,
            chain,
            siem,
            lost,
            writable,
            unwritten: None,
            line: Vec::with_capacity(512),
        }
    }

    /// The end of a batch: everything buffered goes to the file. On a
    /// failure the unwritten bytes stay buffered (whole lines, in order)
    /// and go out with a later batch once the file takes them again.
    fn finish_batch(&mut self) {
        match self.output.finish_batch(&self.chain) {
            // Writable again once the loss, if any, is on record too.
            Ok(()) => self
                .writable
                .store(self.unwritten.is_none(), Ordering::Relaxed),
            Err(e) => {
                self.writable.store(false, Ordering::Relaxed);
                crate::error_limited!(error = %e, "flushing audit trail failed");
            }
        }
    }

    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        if self.chain.take_needs_newline() {
            // The file ends in a torn line: ours start on a line of their own.
            if let Err(e) = self.output.write_line(b"\n") {
                crate::error_limited!(error = %e, "writing audit trail failed");
            }
        }
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            let mut checked = false;
            // Drain whatever is queued, then flush once.
            while let Some(msg) = next {
                match msg {
                    Msg::Record(at, event) => {
                        if !checked {
                            checked = true;
                            if let Some(reason) = self.output.follow_rotation() {
                                let reopened = Event::AuditFileReopened { reason };
                                self.emit(SystemTime::now(), &reopened);
                            }
                        }
                        self.emit(at, &event);
                    }
                    Msg::Retry => {
                        // Nothing new to write while the disk is full: try
                        // the loss report, then whatever is still buffered.
                        let _ = self.report_loss();
                    }
                    Msg::Flush(done) => {
                        self.finish_batch();
                        // The stop sequence: the SIEM gets 2 s, then spools.
                        if let Some(siem) = &self.siem {
                            siem.flush();
                        }
                        let _ = done.send(());
                    }
                }
                next = rx.try_recv().ok();
            }
            self.finish_batch();
        }
    }

    /// Writes one event, after the report of any loss before it.
    fn emit(&mut self, at: SystemTime, event: &Event) {
        let written = self
            .report_loss()
            .and_then(|()| self.write_event(at, event));
        if let Err(e) = written {
            self.lose(at, e);
        }
    }

    /// Writes the `audit_records_lost` line for the records lost since the
    /// file last took one, if any. It is also the probe that tells when a
    /// full disk has room again.
    fn report_loss(&mut self) -> std::io::Result<()> {
        let Some(u) = &self.unwritten else {
            return Ok(());
        };
        let report = Event::AuditRecordsLost {
            count: u.count,
            first_lost: rfc3339(u.first),
            last_lost: rfc3339(u.last),
            error: u.error.clone(),
        };
        let count = u.count;
        self.write_event(SystemTime::now(), &report)?;
        self.unwritten = None;
        tracing::warn!(
            count,
            "audit trail writable again; the loss is recorded in it"
        );
        Ok(())
    }

    /// Serialises, seals and writes one event, then offers it to the SIEM.
    /// A line the file would not take is taken back out of the chain, so
    /// the chain only ever links lines that are in the file.
    fn write_event(&mut self, at: SystemTime, event: &Event) -> std::io::Result<()> {
        let line = &mut self.line;
        line.clear();
        let record = Line {
            ts: rfc3339(at),
            event,
        };
        if serde_json::to_writer(&mut *line, &record).is_err() {
            return Ok(());
        }
        let mark = self.chain.mark();
        let seq = self.chain.seal(line);
        line.push(b'\n');
        if let Err(e) = self.output.write_line(line) {
            self.chain.rewind(mark);
            return Err(e);
        }
        if let Some(siem) = &self.siem {
            siem.offer(at, seq, &line[..line.len() - 1]);
        }
        Ok(())
    }

    /// One record the file would not take: counted (with the queue drops:
    /// it is lost either way), logged at a bounded rate, and remembered for
    /// the report that the next written line carries.
    fn lose(&mut self, at: SystemTime, e: std::io::Error) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.writable.store(false, Ordering::Relaxed);
        crate::error_limited!(error = %e, "writing audit trail failed; the record is lost");
        let u = self.unwritten.get_or_insert_with(|| Unwritten {
            count: 0,
            first: at,
            last: at,
            error: String::new(),
        });
        u.count += 1;
        u.last = at;
        u.error = e.to_string();
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
