//! The wall clock that sessions, TOTP codes and lockouts are judged by.
//!
//! Tests of a real `moat` process need to move time (a lockout ending, a
//! session idling out, the next TOTP step) without waiting for it. When
//! `MOAT_TEST_CLOCK_FILE` names a file, the clock reads the Unix time from
//! it (decimal seconds) on every call; moat warns loudly at start when
//! this is set. Never set it in production: whoever writes the file
//! decides what time it is for every session and code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub const TEST_CLOCK_ENV: &str = "MOAT_TEST_CLOCK_FILE";

#[derive(Clone, Debug, Default)]
pub struct Clock {
    file: Option<Arc<PathBuf>>,
}

impl Clock {
    /// The system clock, unless the test clock is asked for.
    pub fn from_env() -> Clock {
        match std::env::var_os(TEST_CLOCK_ENV) {
            Some(path) => {
                tracing::warn!(
                    file = %PathBuf::from(&path).display(),
                    "{TEST_CLOCK_ENV} is set: sessions, TOTP codes and lockouts follow the time in that file (tests only)"
                );
                Clock::from_file(path.into())
            }
            None => Clock::system(),
        }
    }

    pub fn system() -> Clock {
        Clock { file: None }
    }

    pub fn from_file(path: PathBuf) -> Clock {
        Clock {
            file: Some(Arc::new(path)),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        if let Some(path) = &self.file {
            // A missing or unreadable file falls back to the system time.
            if let Some(t) = std::fs::read_to_string(&**path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                return t;
            }
        }
        coarse_now().unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        })
    }
}

/// Whole seconds from the kernel's coarse realtime clock: a few ns
/// instead of tens (it is read at every accept of a grant service, and
/// per request of an `mfa` one), exact to a few milliseconds.
fn coarse_now() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    (rc == 0).then(|| u64::try_from(ts.tv_sec).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_clock_follows_its_file_and_falls_back_to_the_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("now");
        let clock = Clock::from_file(path.clone());
        assert!(clock.now() > 1_700_000_000);
        std::fs::write(&path, "1000\n").unwrap();
        assert_eq!(clock.now(), 1000);
        std::fs::write(&path, "2000").unwrap();
        assert_eq!(clock.now(), 2000);
    }
}
