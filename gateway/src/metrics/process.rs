//! What the moat process itself holds: memory, descriptors and tokio tasks,
//! set at each scrape. A leak under hostile clients or device faults shows
//! here first; the soak benchmark (`benches/soak.sh`) and the fault tests
//! read these gauges.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct ProcessMetrics {
    resident_bytes: Gauge<u64, AtomicU64>,
    open_fds: Gauge,
    tasks: Gauge,
}

impl ProcessMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProcessMetrics::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the moat process (Linux /proc/self/statm)",
            m.resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "File descriptors the moat process holds open",
            m.open_fds.clone(),
        );
        registry.register(
            "runtime_tasks",
            "Tokio tasks alive: one per connection, stream or background job",
            m.tasks.clone(),
        );
        m
    }

    /// Reads the figures now. Runs inside the runtime (the admin listener).
    pub fn refresh(&self) {
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            self.open_fds
                .set(dir.count().saturating_sub(1).try_into().unwrap_or(i64::MAX));
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let alive = handle.metrics().num_alive_tasks();
            self.tasks.set(alive.try_into().unwrap_or(i64::MAX));
        }
    }
}

/// Resident set size in bytes: the second field of `/proc/self/statm`,
/// in pages.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let rss = resident_bytes().expect("statm readable");
        assert!(rss > 1 << 20, "{rss}");
        let mut registry = Registry::default();
        let m = ProcessMetrics::register(&mut registry);
        m.refresh();
        // stdin, stdout, stderr at least.
        assert!(m.open_fds.get() >= 3, "{}", m.open_fds.get());
    }

    #[tokio::test]
    async fn tasks_are_counted_inside_the_runtime() {
        let mut registry = Registry::default();
        let m = ProcessMetrics::register(&mut registry);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
        });
        m.refresh();
        assert!(m.tasks.get() >= 1, "{}", m.tasks.get());
        tx.send(()).unwrap();
        task.await.unwrap();
    }
}
