//! What the operator can ask of a running moat through signals.

pub enum Signal {
    /// SIGHUP: reload the policy.
    Reload,
    /// SIGTERM or SIGINT (Ctrl-C): drain and stop.
    Shutdown,
}

#[cfg(unix)]
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// Installs the handlers. From here on SIGHUP no longer kills moat.
    pub fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            hup: signal(SignalKind::hangup()).expect("installing SIGHUP handler"),
            term: signal(SignalKind::terminate()).expect("installing SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("installing SIGINT handler"),
        }
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => {
                tracing::info!("SIGHUP received: reloading");
                Signal::Reload
            }
            _ = self.term.recv() => {
                tracing::info!("SIGTERM received");
                Signal::Shutdown
            }
            _ = self.int.recv() => {
                tracing::info!("SIGINT received");
                Signal::Shutdown
            }
        }
    }
}

#[cfg(unix)]
impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}
