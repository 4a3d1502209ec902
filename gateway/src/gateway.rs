//! The running gateway: binds every service's listener, owns the state that
//! outlives a policy, and shuts down gracefully.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, Event};
use crate::controls::ServiceState;
use crate::metrics::Metrics;
use crate::policy::{Policy, Service};
use crate::proxy;

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
}

impl Runtime {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The current policy's version of a service, if it still exists.
    pub fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        let policy = self.policy.borrow();
        policy
            .services
            .iter()
            .find(|s| s.device.id == key.device && s.name == key.service)
            .cloned()
    }

    /// State kept across reloads for a service.
    pub fn state(&self, key: &ServiceKey) -> Arc<ServiceState> {
        let mut states = self.states.lock().expect("state map poisoned");
        states.entry(key.clone()).or_default().clone()
    }
}

pub struct Gateway {
    pub runtime: Arc<Runtime>,
    policy_tx: watch::Sender<Arc<Policy>>,
    stop_accepting: CancellationToken,
    listeners: TaskTracker,
    /// Where each service actually listens (port 0 resolved).
    pub bound: Vec<(ServiceKey, SocketAddr)>,
    pub admin_addr: Option<SocketAddr>,
}

impl Gateway {
    /// Binds every listener of `policy` and starts serving.
    pub async fn start(policy: Policy, audit: Audit, metrics: Arc<Metrics>) -> Result<Gateway> {
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
        });
        let stop_accepting = CancellationToken::new();
        let listeners = TaskTracker::new();

        // Bind everything first so that a port clash fails the start before
        // any device is exposed.
        let mut sockets = Vec::new();
        for service in &policy.services {
            let listener = TcpListener::bind(service.listen).await.with_context(|| {
                format!(
                    "{}/{}: cannot listen on {}",
                    service.device.id, service.name, service.listen
                )
            })?;
            sockets.push((ServiceKey::of(service), listener, service.tls.is_some()));
        }
        let admin = match policy.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
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
        let mut bound = Vec::new();
        for (key, listener, tls) in sockets {
            let addr = listener.local_addr()?;
            tracing::info!(device = %key.device, service = %key.service, %addr, "listening");
            audit.record(Event::ListenerStarted {
                device: key.device.clone(),
                service: key.service.clone(),
                listen: addr,
                tls,
            });
            bound.push((key.clone(), addr));
            listeners.spawn(proxy::tcp::accept_loop(
                listener,
                key,
                runtime.clone(),
                stop_accepting.clone(),
            ));
        }
        let admin_addr = match admin {
            Some(l) => {
                let addr = l.local_addr()?;
                tracing::info!(%addr, "admin listening");
                listeners.spawn(crate::admin::serve(
                    l,
                    runtime.clone(),
                    stop_accepting.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Gateway {
            runtime,
            policy_tx,
            stop_accepting,
            listeners,
            bound,
            admin_addr,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy_tx.borrow().clone()
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
