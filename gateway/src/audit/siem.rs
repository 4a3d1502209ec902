//! The SIEM sink: every audit line as an RFC 5424 syslog message over TLS
//! (RFC 5425), with a bounded queue and a disk spool for collector outages.
//! (Skeleton: issue 14 fills it in.)

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

/// `[siem]`, compiled.
#[derive(Debug)]
pub struct SiemPolicy {
    /// The collector's `host:port`.
    pub address: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub app_name: String,
    pub hostname: String,
    /// RFC 5424 facility number (local4 = 20).
    pub facility: u8,
}

/// Counters the admin plane copies into `moat_siem_*` at each scrape.
#[derive(Debug, Default)]
pub struct SiemStats {
    pub sent: AtomicU64,
    pub spooled: AtomicU64,
    pub dropped: AtomicU64,
    /// 1 while a TLS connection to the collector is up.
    pub connected: AtomicU64,
    pub spool_bytes: AtomicU64,
}

/// The writer thread's handle on the sink.
pub struct SiemSink {
    stats: Arc<SiemStats>,
}

impl SiemSink {
    pub fn start(policy: Arc<SiemPolicy>) -> std::io::Result<SiemSink> {
        let _ = policy;
        Ok(SiemSink {
            stats: Arc::new(SiemStats::default()),
        })
    }

    pub fn stats(&self) -> Arc<SiemStats> {
        self.stats.clone()
    }

    /// Offers one sealed audit line (`{...}`, no newline) with its time and
    /// chain sequence number. Never blocks the writer.
    pub fn offer(&self, at: SystemTime, seq: u64, line: &[u8]) {
        let _ = (at, seq, line);
    }
}
