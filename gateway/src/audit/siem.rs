//! The SIEM sink: every audit line as an RFC 5424 syslog message over TLS
//! (RFC 5425), with a bounded queue and a disk spool for collector outages.
//!
//! Order and delivery: one ordered stream, at least once. While connected
//! and keeping up, lines wait in memory; while the collector is away (or
//! the memory queue is full) they go to the disk spool, and once anything
//! is spooled every new line goes behind it until the spool is drained.
//! Frames stay "in flight" until the collector's TCP stack acknowledged
//! them; a failed connection puts them back in front of the spool. The
//! collector may see a line twice (de-duplicate on `seq`), never miss one
//! short of a full spool, which drops loudly. docs/siem.md has the rest.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::ServerName;

use super::{Event, Msg};

mod link;
pub mod rfc5424;
pub mod spool;
#[cfg(test)]
mod tests;

use link::Link;
use spool::Spool;

/// `[siem]`, compiled.
#[derive(Debug)]
pub struct SiemPolicy {
    /// The collector's `host:port`.
    pub address: String,
    /// The name its certificate must carry.
    pub server_name: ServerName<'static>,
    /// Trusts only `ca`; presents the client certificate when configured.
    pub tls: Arc<rustls::ClientConfig>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub app_name: String,
    pub hostname: String,
    /// RFC 5424 facility number (local4 = 20).
    pub facility: u8,
    /// SHA-256 over the `[siem]` table's text and the CA, certificate and
    /// key files: tells a reload that the sink's settings changed (they
    /// take effect at the next restart).
    pub fingerprint: String,
}

/// Counters the admin plane copies into `moat_siem_*` at each scrape.
#[derive(Debug, Default)]
pub struct SiemStats {
    /// Acknowledged by the collector's TCP stack.
    pub sent: AtomicU64,
    pub spooled: AtomicU64,
    pub dropped: AtomicU64,
    /// 1 while a TLS connection to the collector is up.
    pub connected: AtomicU64,
    pub spool_bytes: AtomicU64,
}

/// Lines held in memory before spilling to the spool.
const MEMORY_FRAMES: usize = 16 * 1024;
const MEMORY_BYTES: usize = 32 << 20;
/// One write to the collector, at most (bytes).
const BATCH_BYTES: usize = 256 * 1024;
/// How long the stop sequence waits for the queue to drain.
const STOP_DRAIN: Duration = Duration::from_secs(2);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `siem_events_dropped` at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(1);
const DROP_EVENT: &str = "siem_events_dropped";

struct InFlight {
    frame: Arc<[u8]>,
    /// Where it came from in the spool, or `None` from memory.
    from: Option<(u64, u64)>,
    /// TLS offset at which it ends on the current connection, once written.
    end: Option<u64>,
}

struct State {
    memory: VecDeque<Arc<[u8]>>,
    memory_bytes: usize,
    spool: Spool,
    /// New lines go to the spool (behind what is there).
    spooling: bool,
    in_flight: VecDeque<InFlight>,
    /// Bumped when `in_flight` is taken away from the sink (a stop).
    epoch: u64,
    connected: bool,
    unreported_drops: u64,
    last_drop_report: Option<Instant>,
}

struct Shared {
    policy: Arc<SiemPolicy>,
    stats: Arc<SiemStats>,
    state: Mutex<State>,
    /// The sink waits here for lines.
    work: Condvar,
    /// The stop sequence waits here for the queue to drain.
    drained: Condvar,
    /// Where `siem_events_dropped` is recorded (weak: the sink must not
    /// keep the audit channel open).
    audit: Mutex<Option<tokio::sync::mpsc::WeakSender<Msg>>>,
}

/// The writer thread's handle on the sink.
pub struct SiemSink {
    shared: Arc<Shared>,
    procid: u32,
}

impl SiemSink {
    /// Opens the spool (what an earlier run left is sent first) and starts
    /// the sink thread.
    pub fn start(policy: Arc<SiemPolicy>) -> std::io::Result<SiemSink> {
        let spool = Spool::open(&policy.spool_dir, policy.spool_max_bytes)?;
        let stats = Arc::new(SiemStats::default());
        stats.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        let state = State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            spooling: true,
            spool,
            in_flight: VecDeque::new(),
            epoch: 0,
            connected: false,
            unreported_drops: 0,
            last_drop_report: None,
        };
        let shared = Arc::new(Shared {
            policy,
            stats,
            state: Mutex::new(state),
            work: Condvar::new(),
            drained: Condvar::new(),
            audit: Mutex::new(None),
        });
        let sink = shared.clone();
        std::thread::Builder::new()
            .name("moat-siem".into())
            .spawn(move || sink.run())?;
        Ok(SiemSink {
            shared,
            procid: std::process::id(),
        })
    }

    pub fn stats(&self) -> Arc<SiemStats> {
        self.shared.stats.clone()
    }

    /// Where to record `siem_events_dropped`.
    pub(super) fn report_to(&self, audit: tokio::sync::mpsc::WeakSender<Msg>) {
        *lock(&self.shared.audit) = Some(audit);
    }

    /// Offers one sealed audit line (`{...}`, no newline) with its time and
    /// chain sequence number. Never waits on the network: into memory, or
    /// behind the spool.
    pub fn offer(&self, at: SystemTime, seq: u64, line: &[u8]) {
        let p = &self.shared.policy;
        let header = rfc5424::Header {
            facility: p.facility,
            hostname: &p.hostname,
            app_name: &p.app_name,
            procid: self.procid,
        };
        let frame: Arc<[u8]> = rfc5424::frame(&rfc5424::message(&header, at, seq, line)).into();
        let is_drop_report = rfc5424::Keys::parse(line).event() == DROP_EVENT;
        let mut st = self.shared.state();
        let fits = st.memory.len() < MEMORY_FRAMES && st.memory_bytes + frame.len() <= MEMORY_BYTES;
        if !st.spooling && fits {
            st.memory_bytes += frame.len();
            st.memory.push_back(frame);
            drop(st);
            self.shared.work.notify_one();
            return;
        }
        self.shared.spill(&mut st);
        self.shared.spool_frame(&mut st, &frame, is_drop_report);
        self.shared.report_drops(&mut st);
        drop(st);
        self.shared.work.notify_one();
    }

    /// The stop sequence's flush: up to 2 s for what is queued to reach the
    /// collector, then the rest goes to the spool (synced), so a restart
    /// sends it. The sink goes on afterwards, from the spool.
    pub fn flush(&self) {
        let deadline = Instant::now() + STOP_DRAIN;
        let mut st = self.shared.state();
        while st.connected && !(st.memory.is_empty() && st.in_flight.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .shared
                .drained
                .wait_timeout(st, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        self.shared.take_back_in_flight(&mut st);
        self.shared.spill(&mut st);
        self.shared.report_drops(&mut st);
        if let Err(e) = st.spool.sync() {
            crate::error_limited!(error = %e, "syncing the SIEM spool failed");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn gauge_spool(&self, st: &State) {
        self.stats
            .spool_bytes
            .store(st.spool.bytes(), Ordering::Relaxed);
    }

    /// Switches to spooling: whatever waits in memory goes first.
    fn spill(&self, st: &mut State) {
        st.spooling = true;
        while let Some(f) = st.memory.pop_front() {
            st.memory_bytes -= f.len();
            self.spool_frame(st, &f, false);
        }
    }

    fn spool_frame(&self, st: &mut State, frame: &[u8], is_drop_report: bool) {
        match st.spool.append(frame) {
            Ok(true) => {
                self.stats.spooled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                // A drop report dropped in turn is counted, not reported:
                // reporting it would loop through the sink.
                if !is_drop_report {
                    st.unreported_drops += 1;
                }
                crate::error_limited!(
                    spool_max_bytes = self.policy.spool_max_bytes,
                    spool = %self.policy.spool_dir.display(),
                    "SIEM spool full; audit events for the SIEM dropped (the audit file keeps them)"
                );
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !is_drop_report {
                    st.unreported_drops += 1;
                }
                crate::error_limited!(
                    error = %e,
                    spool = %self.policy.spool_dir.display(),
                    "writing the SIEM spool failed; audit events for the SIEM dropped"
                );
            }
        }
        self.gauge_spool(st);
    }

    /// Records `siem_events_dropped` in the trail, at most once a second.
    fn report_drops(&self, st: &mut State) {
        if st.unreported_drops == 0
            || st
                .last_drop_report
                .is_some_and(|t| t.elapsed() < DROP_REPORT_EVERY)
        {
            return;
        }
        let Some(tx) = lock(&self.audit).as_ref().and_then(|w| w.upgrade()) else {
            return;
        };
        let event = Event::SiemEventsDropped {
            count: st.unreported_drops,
            spool_max_bytes: self.policy.spool_max_bytes,
        };
        if tx
            .try_send(Msg::Record(SystemTime::now(), Box::new(event)))
            .is_ok()
        {
            st.unreported_drops = 0;
            st.last_drop_report = Some(Instant::now());
        }
    }

    /// Frames in flight go back in front of the spool (or, read from it,
    /// are read again).
    fn take_back_in_flight(&self, st: &mut State) {
        st.epoch += 1;
        let in_flight = std::mem::take(&mut st.in_flight);
        if let Some((segment, offset)) = in_flight.front().and_then(|f| f.from) {
            st.spool.rewind(segment, offset);
        } else if !in_flight.is_empty() {
            // From memory: the spool is empty or holds newer lines.
            let frames = in_flight.iter().map(|f| &f.frame[..]);
            if let Err(e) = st.spool.prepend(frames) {
                self.stats
                    .dropped
                    .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
                st.unreported_drops += in_flight.len() as u64;
                crate::error_limited!(error = %e, "writing the SIEM spool failed; audit events for the SIEM dropped");
            } else {
                self.stats
                    .spooled
                    .fetch_add(in_flight.len() as u64, Ordering::Relaxed);
            }
            self.gauge_spool(st);
        }
    }

    fn set_connected(&self, st: &mut State, up: bool) {
        st.connected = up;
        self.stats.connected.store(up as u64, Ordering::Relaxed);
    }

    /// Counts acknowledged frames as sent and lets go of them.
    fn settle(&self, st: &mut State, acked: u64) {
        let mut n = 0;
        while st
            .in_flight
            .front()
            .is_some_and(|f| f.end.is_some_and(|e| e <= acked))
        {
            st.in_flight.pop_front();
            n += 1;
        }
        if n > 0 {
            self.stats.sent.fetch_add(n, Ordering::Relaxed);
        }
        let oldest = st.in_flight.front().and_then(|f| f.from.map(|(s, _)| s));
        if let Err(e) = st.spool.release(oldest) {
            crate::warn_limited!(error = %e, "removing a sent SIEM spool segment failed");
        }
        self.gauge_spool(st);
    }

    /// The next frames to send, now in flight; empty when there is nothing.
    fn next_batch(&self, st: &mut State) -> Vec<Arc<[u8]>> {
        if st.spooling {
            match st.spool.read(BATCH_BYTES) {
                Ok(frames) if !frames.is_empty() => {
                    let out = frames.iter().map(|f| f.frame.clone()).collect();
                    st.in_flight.extend(frames.into_iter().map(|f| InFlight {
                        frame: f.frame,
                        from: Some((f.segment, f.offset)),
                        end: None,
                    }));
                    return out;
                }
                Ok(_) => {}
                Err(e) => {
                    crate::error_limited!(error = %e, "reading the SIEM spool failed");
                    return Vec::new();
                }
            }
            // Drained: back to memory once all of it is acknowledged.
            if st.in_flight.is_empty() && st.spool.all_read() {
                if let Err(e) = st.spool.release(None) {
                    crate::warn_limited!(error = %e, "removing a sent SIEM spool segment failed");
                }
                if st.spool.is_empty() {
                    st.spooling = false;
                }
                self.gauge_spool(st);
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            let Some(f) = st.memory.pop_front() else {
                break;
            };
            st.memory_bytes -= f.len();
            bytes += f.len();
            st.in_flight.push_back(InFlight {
                frame: f.clone(),
                from: None,
                end: None,
            });
            out.push(f);
        }
        out
    }

    fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let p = &self.policy;
            match Link::connect(&p.address, &p.server_name, &p.tls) {
                Err(why) => {
                    crate::warn_limited!(
                        collector = %p.address,
                        error = %why,
                        retry_in_ms = backoff.as_millis() as u64,
                        "SIEM collector unavailable; spooling audit events"
                    );
                    {
                        let mut st = self.state();
                        self.spill(&mut st);
                        self.report_drops(&mut st);
                    }
                    std::thread::sleep(jitter(backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Ok(link) => {
                    tracing::info!(collector = %p.address, via = %link.describe(), "SIEM collector connected");
                    backoff = BACKOFF_FIRST;
                    let why = self.serve(link);
                    crate::warn_limited!(
                        collector = %p.address,
                        error = %why,
                        "SIEM collector connection lost; spooling audit events"
                    );
                }
            }
        }
    }

    /// Sends until the connection fails; returns why.
    fn serve(&self, mut link: Link) -> String {
        {
            let mut st = self.state();
            self.set_connected(&mut st, true);
        }
        let why = loop {
            let (batch, epoch) = {
                let mut st = self.state();
                self.settle(&mut st, link.acked());
                self.report_drops(&mut st);
                let batch = self.next_batch(&mut st);
                if batch.is_empty() {
                    if st.memory.is_empty() && st.in_flight.is_empty() {
                        self.drained.notify_all();
                    }
                    // Short waits while acknowledgements are due.
                    let wait = if st.in_flight.is_empty() {
                        Duration::from_millis(200)
                    } else {
                        Duration::from_millis(5)
                    };
                    let (st, _) = self
                        .work
                        .wait_timeout(st, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    drop(st);
                    match link.check_closed(Duration::ZERO) {
                        Ok(None) => continue,
                        Ok(Some(why)) | Err(why) => break why,
                    }
                }
                (batch, st.epoch)
            };
            // The collector never talks: anything to read means it left,
            // and what we wrote now would be lost.
            match link.check_closed(Duration::ZERO) {
                Ok(None) => {}
                Ok(Some(why)) | Err(why) => break why,
            }
            match link.send(&batch) {
                Ok(ends) => {
                    let mut st = self.state();
                    if st.epoch == epoch {
                        let start = st.in_flight.len() - batch.len();
                        for (f, end) in st.in_flight.iter_mut().skip(start).zip(ends) {
                            f.end = Some(end);
                        }
                    }
                }
                Err(e) => break format!("sending failed: {e}"),
            }
        };
        let mut st = self.state();
        self.settle(&mut st, link.acked());
        self.set_connected(&mut st, false);
        self.take_back_in_flight(&mut st);
        self.spill(&mut st);
        drop(st);
        self.drained.notify_all();
        link.close();
        why
    }
}

/// `d` ± 25 %, so that many gateways do not reconnect in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = aws_lc_rs::rand::fill(&mut b).map_or(0.5, |()| u16::from_le_bytes(b) as f64 / 65535.0);
    d.mul_f64(0.75 + r / 2.0)
}
