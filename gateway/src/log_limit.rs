//! Rate-limited log lines. A line that can repeat per connection or per
//! event (an accept that keeps failing, an audit file on a full disk) must
//! not flood stderr and the disk: each call site writes at most one line per
//! [`INTERVAL`], and that line says how many were suppressed before it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per call site in this period.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The state of one call site (the macros make one `static` per site).
pub struct LogLimit {
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines suppressed since the last one written)` when a line may
    /// be written now; `None` (and one more suppressed) otherwise.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

/// `tracing::warn!`, at most once per [`INTERVAL`] at this call site, with a
/// `suppressed` field counting the lines left out since the previous one.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit =
            $crate::log_limit::LogLimit::new($crate::log_limit::INTERVAL);
        if let Some(suppressed) = LIMIT.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// `tracing::error!`, limited like [`warn_limited!`].
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit =
            $crate::log_limit::LogLimit::new($crate::log_limit::INTERVAL);
        if let Some(suppressed) = LIMIT.check() {
            ::tracing::error!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests;
