//! The writer thread: serialises each event, seals it into the hash chain,
//! appends it to the audit file (or stdout) and offers it to the SIEM sink.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::chain::Chain;
use super::siem::SiemSink;
use super::{Line, Msg};
use crate::policy::AuditTarget;

/// Where the trail is written.
pub(super) struct Output {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl Output {
    pub(super) fn open(target: &AuditTarget) -> std::io::Result<Output> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(open_append(path)?),
        };
        Ok(Output {
            out: BufWriter::with_capacity(64 * 1024, out),
        })
    }
}

pub(super) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
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
}

impl Writer {
    pub(super) fn new(
        output: Output,
        chain: Chain,
        siem: Option<SiemSink>,
        lost: Arc<AtomicU64>,
    ) -> Writer {
        Writer {
            output,
            chain,
            siem,
            lost,
        }
    }

    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut line = Vec::with_capacity(512);
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            // Drain whatever is queued, then flush once.
            while let Some(msg) = next {
                match msg {
                    Msg::Record(at, event) => {
                        line.clear();
                        let record = Line {
                            ts: humantime::format_rfc3339_millis(at).to_string(),
                            event: &event,
                        };
                        if serde_json::to_writer(&mut line, &record).is_ok() {
                            let seq = self.chain.seal(&mut line);
                            if let Some(siem) = &self.siem {
                                siem.offer(at, seq, &line);
                            }
                            line.push(b'\n');
                            if let Err(e) = self.output.out.write_all(&line) {
                                // Counted with the queue drops: the record is lost either way.
                                self.lost.fetch_add(1, Ordering::Relaxed);
                                crate::error_limited!(error = %e, "writing audit trail failed");
                            }
                        }
                    }
                    Msg::Flush(done) => {
                        let _ = self.output.out.flush();
                        // The stop sequence: the SIEM gets 2 s, then spools.
                        if let Some(siem) = &self.siem {
                            siem.flush();
                        }
                        let _ = done.send(());
                    }
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = self.output.out.flush() {
                crate::error_limited!(error = %e, "flushing audit trail failed");
            }
        }
    }
}
