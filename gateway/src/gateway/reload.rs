//! Policy reloads: load → validate → compile → bind new listeners → publish.
//!
//! Any failure before the publish leaves the running policy in force, so a
//! policy is never partly applied. Reloads are serialised; every trigger
//! (file change, SIGHUP, `POST /reload`) takes this one path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ReloadOutcome, Runtime, ServiceKey, Trigger};
use crate::audit::Event;
use crate::policy::{self, ListenerId, Policy, Service};
use crate::proxy;

struct RunningListener {
    key: ServiceKey,
    bound: SocketAddr,
    stop: CancellationToken,
}

pub struct Reloader {
    config_path: PathBuf,
    runtime: Arc<Runtime>,
    policy_tx: watch::Sender<Arc<Policy>>,
    next_version: AtomicU64,
    listeners: Mutex<HashMap<ListenerId, RunningListener>>,
    serial: tokio::sync::Mutex<()>,
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
}

pub(super) fn bind(service: &Service, backlog: u32) -> Result<TcpListener> {
    proxy::accept::bind(service.listen, backlog).with_context(|| {
        format!(
            "{}/{}: cannot listen on {}",
            service.device.id, service.name, service.listen
        )
    })
}

impl Reloader {
    pub(super) fn new(
        config_path: PathBuf,
        runtime: Arc<Runtime>,
        policy_tx: watch::Sender<Arc<Policy>>,
        stop_accepting: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let version = policy_tx.borrow().version;
        Reloader {
            config_path,
            runtime,
            policy_tx,
            next_version: AtomicU64::new(version + 1),
            listeners: Mutex::new(HashMap::new()),
            serial: tokio::sync::Mutex::new(()),
            stop_accepting,
            tracker,
        }
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn current(&self) -> Arc<Policy> {
        self.policy_tx.borrow().clone()
    }

    pub fn bound(&self) -> Vec<(ServiceKey, SocketAddr)> {
        let listeners = self.listeners.lock().expect("listener map poisoned");
        listeners
            .values()
            .map(|l| (l.key.clone(), l.bound))
            .collect()
    }

    pub(super) fn start_listener(&self, service: &Service, listener: TcpListener) {
        let bound = listener
            .local_addr()
            .expect("bound listener has an address");
        let key = ServiceKey::of(service);
        let id = ListenerId::of(service);
        let stop = self.stop_accepting.child_token();
        tracing::info!(device = %key.device, service = %key.service, addr = %bound, "listening");
        self.runtime.audit.record(Event::ListenerStarted {
            device: key.device.clone(),
            service: key.service.clone(),
            listen: bound,
            tls: service.tls.is_some(),
        });
        self.tracker.spawn(proxy::tcp::accept_loop(
            listener,
            id.clone(),
            key.clone(),
            self.runtime.clone(),
            stop.clone(),
        ));
        let mut listeners = self.listeners.lock().expect("listener map poisoned");
        listeners.insert(id, RunningListener { key, bound, stop });
    }

    /// Runs one reload to completion and reports what happened.
    pub async fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let _serial = self.serial.lock().await;
        let old = self.current();
        let version = self.next_version.load(Ordering::Relaxed);
        let path = self.config_path.clone();
        let compiled = tokio::task::spawn_blocking(move || policy::load(&path, version))
            .await
            .expect("policy compile panicked");
        let new = match compiled {
            Ok(p) => p,
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                return self.reject(trigger, &old, errors);
            }
        };
        if new.content_hash != old.content_hash {
            let cut: Vec<String> = new
                .cut_short_sources(&old)
                .into_iter()
                .map(|(path, now, before)| {
                    format!(
                        "{}: holds only the first {now} of the {before} bytes it held: it looks cut short \
                         (still being written?); if its end was removed on purpose, change something \
                         before it too, such as a comment",
                        path.display()
                    )
                })
                .collect();
            if !cut.is_empty() {
                return self.reject(trigger, &old, cut);
            }
        }
        if new.content_hash == old.content_hash {
            tracing::debug!(?trigger, version = old.version, "reload: nothing changed");
            return ReloadOutcome::Unchanged {
                version: old.version,
            };
        }
        for (what, changed) in [
            ("gateway.audit_log", new.audit_log != old.audit_log),
            ("admin.listen", new.admin_listen != old.admin_listen),
            (
                "siem",
                new.siem.as_ref().map(|s| &s.fingerprint)
                    != old.siem.as_ref().map(|s| &s.fingerprint),
            ),
            // Listeners a reload starts use the new value at once.
            (
                "gateway.listen_backlog",
                new.listen_backlog != old.listen_backlog,
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed in the file; takes effect at the next restart"
                );
            }
        }

        // Bind what is new before publishing, so a busy port rejects the
        // whole reload instead of leaving a service half-applied.
        let (to_start, to_stop) = {
            let running = self.listeners.lock().expect("listener map poisoned");
            let wanted: HashMap<ListenerId, &Arc<Service>> = new
                .services
                .iter()
                .map(|s| (ListenerId::of(s), s))
                .collect();
            let to_start: Vec<Arc<Service>> = wanted
                .iter()
                .filter(|(id, _)| !running.contains_key(id))
                .map(|(_, s)| Arc::clone(s))
                .collect();
            let to_stop: Vec<ListenerId> = running
                .keys()
                .filter(|id| !wanted.contains_key(id))
                .cloned()
                .collect();
            (to_start, to_stop)
        };
        let mut bound = Vec::new();
        for service in &to_start {
            match bind(service, new.listen_backlog) {
                Ok(l) => bound.push((service.clone(), l)),
                Err(e) => return self.reject(trigger, &old, vec![format!("{e:#}")]),
            }
        }

        let changes = crate::policy::diff::PolicyDiff::between(&old, &new);
        let new = Arc::new(new);
        // Recorded before publishing, so it precedes any revocation it causes.
        tracing::info!(
            ?trigger,
            old = old.version,
            new = new.version,
            "policy reloaded"
        );
        self.runtime.audit.record(Event::ReloadApplied {
            trigger,
            old_version: old.version,
            new_version: new.version,
            old_hash: old.content_hash.clone(),
            new_hash: new.content_hash.clone(),
            changes: changes.clone(),
        });
        self.next_version.store(version + 1, Ordering::Relaxed);
        self.policy_tx.send_replace(new.clone());
        self.runtime.metrics.policy_version.set(new.version as i64);
        self.runtime.metrics.reload("applied");

        for (service, listener) in bound {
            self.start_listener(&service, listener);
        }
        let stopped: Vec<RunningListener> = {
            let mut running = self.listeners.lock().expect("listener map poisoned");
            to_stop.iter().filter_map(|id| running.remove(id)).collect()
        };
        for l in stopped {
            l.stop.cancel();
            tracing::info!(device = %l.key.device, service = %l.key.service, addr = %l.bound, "listener stopped");
            self.runtime.audit.record(Event::ListenerStopped {
                device: l.key.device.clone(),
                service: l.key.service.clone(),
                listen: l.bound,
            });
        }
        // Listeners kept across the reload may now serve a renamed service.
        {
            let mut running = self.listeners.lock().expect("listener map poisoned");
            for s in &new.services {
                if let Some(l) = running.get_mut(&ListenerId::of(s)) {
                    l.key = ServiceKey::of(s);
                }
            }
        }

        ReloadOutcome::Applied {
            old_version: old.version,
            new_version: new.version,
            changes,
        }
    }

    fn reject(&self, trigger: Trigger, old: &Policy, errors: Vec<String>) -> ReloadOutcome {
        for e in &errors {
            tracing::error!(?trigger, "reload rejected: {e}");
        }
        self.runtime.metrics.reload("rejected");
        self.runtime.audit.record(Event::ReloadRejected {
            trigger,
            version_in_force: old.version,
            errors: errors.clone(),
        });
        ReloadOutcome::Rejected {
            version: old.version,
            errors,
        }
    }
}

impl crate::runtime::PolicyControl for Reloader {
    fn reload(
        &self,
        trigger: Trigger,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ReloadOutcome> + Send + '_>> {
        Box::pin(Reloader::reload(self, trigger))
    }
}
