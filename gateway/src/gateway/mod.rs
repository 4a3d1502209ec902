//! The running gateway: listeners, the state that outlives a policy, policy
//! reloads and graceful shutdown.

mod reload;
mod watcher;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::policy::lifecycle::{ReloadOutcome, Trigger};
pub use crate::runtime::{Runtime, ServiceKey};
pub use reload::Reloader;

use crate::audit::{Audit, Event};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::runtime::{Clock, MemoryStore};
use crate::signals::{Signal, Signals};

pub struct Gateway {
    pub runtime: Arc<Runtime>,
    pub reloader: Arc<Reloader>,
    stop_accepting: CancellationToken,
    listeners: TaskTracker,
    pub admin_addr: Option<SocketAddr>,
}

impl Gateway {
    /// Binds every listener of `policy` (read from `config_path`, which is
    /// also what reloads re-read) and starts serving.
    pub async fn start(
        config_path: PathBuf,
        policy: Policy,
        audit: Audit,
        metrics: Arc<Metrics>,
    ) -> Result<Gateway> {
        let policy = Arc::new(policy);
        metrics.policy_version.set(policy.version as i64);
        let (policy_tx, policy_rx) = watch::channel(policy.clone());
        let runtime = Arc::new(Runtime::new(
            policy_rx,
            audit.clone(),
            metrics.clone(),
            Arc::new(MemoryStore::new()),
            Clock::from_env(),
        ));
        let stop_accepting = CancellationToken::new();
        let listeners = TaskTracker::new();

        // Bind everything first so that a port clash fails the start before
        // any device is exposed.
        let mut sockets = Vec::new();
        for service in &policy.services {
            sockets.push((
                service.clone(),
                reload::bind(service, policy.listen_backlog)?,
            ));
        }
        let admin = match policy.admin_listen {
            Some(addr) => Some(
                crate::proxy::accept::bind(addr, policy.listen_backlog)
                    .with_context(|| format!("admin: cannot listen on {addr}"))?,
            ),
            None => None,
        };

        audit.record(Event::GatewayStarted {
            moat_version: env!("CARGO_PKG_VERSION"),
            policy_version: policy.version,
            policy_hash: policy.content_hash.clone(),
            services: policy.services.len(),
        });
        let reloader = Arc::new(Reloader::new(
            config_path,
            runtime.clone(),
            policy_tx,
            stop_accepting.clone(),
            listeners.clone(),
        ));
        for (service, listener) in sockets {
            reloader.start_listener(&service, listener);
        }
        // Per-client limiter state is bounded by the clients active within
        // one replenish period: sweep the rest regularly.
        {
            let (rt, stop) = (runtime.clone(), stop_accepting.clone());
            listeners.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => rt.collect_garbage(),
                    }
                }
            });
        }
        // Grants end on time and when a policy no longer holds them, also
        // during the shutdown grace (so not among the listeners, which
        // shutdown waits for); it ends with the hard stop or the policy.
        tokio::spawn(crate::runtime::grants::keep(runtime.clone()));
        let admin_addr = match admin {
            Some(l) => {
                let addr = l.local_addr()?;
                tracing::info!(%addr, "admin listening");
                listeners.spawn(crate::admin::serve(
                    l,
                    runtime.clone(),
                    reloader.clone() as Arc<dyn crate::runtime::PolicyControl>,
                    stop_accepting.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Gateway {
            runtime,
            reloader,
            stop_accepting,
            listeners,
            admin_addr,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.runtime.policy.borrow().clone()
    }

    /// Where each service actually listens (port 0 resolved).
    pub fn bound(&self) -> Vec<(ServiceKey, SocketAddr)> {
        self.reloader.bound()
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP and whenever a
    /// file the policy was built from changes; then shuts down gracefully.
    pub async fn serve_until_shutdown(self) {
        let mut signals = Signals::new();
        let watcher = watcher::spawn(self.reloader.clone(), self.stop_accepting.clone());
        while let Signal::Reload = signals.next().await {
            self.reloader.reload(Trigger::Signal).await;
        }
        if let Some(w) = watcher {
            w.abort();
        }
        let grace = self.policy().shutdown_grace;
        self.shutdown(grace).await;
    }

    /// Stops accepting, lets live connections finish for up to `grace`,
    /// then cuts the rest. Every step is audited.
    pub async fn shutdown(self, grace: Duration) {
        let rt = &self.runtime;
        self.stop_accepting.cancel();
        self.listeners.close();
        self.listeners.wait().await;
        rt.connections.close();
        let active = rt.connections.len();
        tracing::info!(active, grace = ?grace, "shutting down");
        rt.audit.record(Event::GatewayStopping {
            grace_ms: grace.as_millis() as u64,
            active_connections: active,
        });
        let mut cut = 0;
        if tokio::time::timeout(grace, rt.connections.wait())
            .await
            .is_err()
        {
            cut = rt.connections.len();
            rt.hard_stop.cancel();
            rt.connections.wait().await;
        }
        rt.audit.record(Event::GatewayStopped {
            cut_connections: cut,
        });
        rt.audit.flush().await;
    }
}
