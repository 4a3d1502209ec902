//! The state every data plane shares and that outlives a policy: the
//! policy in force (a watch), the audit trail, the metrics, per-service
//! limiter state, the device connection pools, and the identity store
//! (sessions, lockouts, used TOTP steps). The data planes (`proxy`) and
//! the admin plane depend on this module; it depends on neither, and
//! neither depends on `gateway`, which only builds and drives it.

pub mod clock;
pub mod grants;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use clock::Clock;
pub use store::{IdentityStore, MemoryStore};

use crate::audit::Audit;
use crate::auth::AuthRuntime;
use crate::controls::ServiceState;
use crate::metrics::Metrics;
use crate::policy::lifecycle::{ReloadOutcome, Trigger};
use crate::policy::{ListenerId, Policy, Service};
use crate::upstream::UpstreamClient;

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
    /// Sessions, lockouts and used TOTP steps: identity state that
    /// outlives a policy, with its own change signal.
    pub store: Arc<dyn IdentityStore>,
    /// The time sessions, codes and lockouts are judged by.
    pub clock: Clock,
    /// The password-hash worker cap and the per-source login rate.
    pub auth: AuthRuntime,
    next_conn_id: AtomicU64,
    states: Mutex<HashMap<ServiceKey, Arc<ServiceState>>>,
    /// Pooled clients to HTTP devices, kept across reloads while the
    /// upstream settings are unchanged (keep-alive survives a reload).
    http_clients: Mutex<HashMap<ServiceKey, (String, UpstreamClient)>>,
}

impl Runtime {
    pub fn new(
        policy: watch::Receiver<Arc<Policy>>,
        audit: Audit,
        metrics: Arc<Metrics>,
        store: Arc<dyn IdentityStore>,
        clock: Clock,
    ) -> Runtime {
        let auth = AuthRuntime::new(&policy.borrow());
        Runtime {
            policy,
            audit,
            metrics,
            hard_stop: CancellationToken::new(),
            connections: TaskTracker::new(),
            store,
            clock,
            auth,
            next_conn_id: AtomicU64::new(1),
            states: Mutex::new(HashMap::new()),
            http_clients: Mutex::new(HashMap::new()),
        }
    }

    /// The grants in force now, for [`crate::controls::authorize`].
    #[inline]
    pub fn grants(&self) -> crate::controls::Grants<'_> {
        crate::controls::Grants {
            lookup: &*self.store,
            now: self.clock.now(),
        }
    }

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
        self.store.collect_garbage(self.clock.now());
        self.auth.collect_garbage();
    }

    /// State kept across reloads for a service.
    pub fn state(&self, key: &ServiceKey) -> Arc<ServiceState> {
        let mut states = self.states.lock().expect("state map poisoned");
        states.entry(key.clone()).or_default().clone()
    }
}

/// What the admin plane may ask of the gateway that drives the runtime.
/// A trait so that the admin plane depends on this module, not on
/// `gateway` (which starts the admin plane).
pub trait PolicyControl: Send + Sync {
    fn reload(&self, trigger: Trigger) -> Pin<Box<dyn Future<Output = ReloadOutcome> + Send + '_>>;
}
