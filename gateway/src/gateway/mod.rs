//! The running gateway: listeners, the state that outlives a policy, policy
//! reloads and graceful shutdown.

mod reload;
mod watcher;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use reload::{ReloadOutcome, Reloader, Trigger};

use crate::audit::{Audit, Event};
use crate::controls::ServiceState;
use crate::metrics::Metrics;
use crate::policy::{ListenerId, Policy, Service};
use crate::proxy::upstream::UpstreamClient;
use crate::signals::{Signal, Signals};

/// Identifies a service across policy versions: `device/service`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub device: Arc<str>,
    pub service: Arc<str>,
}

impl ServiceKey {
    pub fn of(s: &Service) -> Self {
        ServiceKey {
            device: s.device.id.clone(),
            service: s.name.clone(),
        }
    }
}

/// Shared by every listener and connection.
pub struct Runtime {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the grace period is over: live connections are cut.
    pub hard_stop: CancellationToken,
    pub connections: TaskTracker,
    next_conn_id: AtomicU64,
    states: Mutex<HashMap<ServiceKey, Arc<ServiceState>>>,
    /// Pooled clients to HTTP devices, kept across reloads while the
    /// upstream settings are unchanged (keep-alive survives a reload).
    http_clients: Mutex<HashMap<ServiceKey, (String, UpstreamClient)>>,
}

impl Runtime {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The current policy's service behind a listener, if it still has one.
    pub fn service(&self, id: &ListenerId) -> Option<Arc<Service>> {
        self.policy.borrow().service_for(id).cloned()
    }

    /// The pooled client for an HTTP service's device.
    pub fn http_client(&self, service: &Service) -> UpstreamClient {
        let fingerprint = UpstreamClient::fingerprint(service);
        let key = ServiceKey::of(service);
        let mut clients = self
            .http_clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((fp, client)) = clients.get(&key) {
            if *fp == fingerprint {
                return client.clone();
            }
        }
        // Building a client opens nothing (connections come per request),
        // so it is made under the lock: one pool per service and shape.
        let client = UpstreamClient::new(service);
        // The old pool's connections were made for what changed (another
        // address, pin or CA): close them rather than wait for them to idle out.
        if let Some((_, replaced)) = clients.insert(key, (fingerprint, client.clone())) {
            replaced.retire();
        }
        client
    }

    /// Forgets rate-limit state of clients idle for a replenish period,
    /// and closes device connections idle for too long.
    pub fn collect_garbage(&self) {
        let clients: Vec<UpstreamClient> = self
            .http_clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|(_, client)| client.clone())
            .collect();
        for client in clients {
            client.evict_idle();
        }
        let states: Vec<Arc<ServiceState>> = self
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for state in states {
            state.collect_garbage();
        }
    }

    /// State kept across reloads for a service.
    pub fn state(&self, key: &ServiceKey) -> Arc<ServiceState> {
        let mut states = self.states.lock().expect("state map poisoned");
        states.entry(key.clone()).or_default().clone()
    }
}

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
        let runtime = Arc::new(Runtime {
            policy: policy_rx,
            audit: audit.clone(),
            metrics: metrics.clone(),
            hard_stop: CancellationToken::new(),
            connections: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
            states: Mutex::new(HashMap::new()),
            http_clients: Mutex::new(HashMap::new()),
        });
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
        let admin_addr = match admin {
            Some(l) => {
                let addr = l.local_addr()?;
                tracing::info!(%addr, "admin listening");
                listeners.spawn(crate::admin::serve(
                    l,
                    runtime.clone(),
                    reloader.clone(),
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
