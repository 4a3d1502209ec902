//! Prometheus metrics, served on the admin listener at `/metrics`.
//! Denials are labelled with the same [`Reason`] names as the audit trail.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::controls::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub device: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub device: String,
    pub service: String,
    /// "allowed" or a denial reason.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub device: String,
    pub service: String,
    /// "from_client" or "to_client".
    pub direction: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Family<OutcomeLabels, Counter>,
    pub active: Family<ServiceLabels, Gauge>,
    pub bytes: Family<ByteLabels, Counter>,
    pub audit_dropped: Counter<u64, AtomicU64>,
    pub policy_version: Gauge,
    pub reloads: Family<ReloadLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// "applied" or "rejected".
    pub result: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("moat");
        let connections = Family::<OutcomeLabels, Counter>::default();
        let active = Family::<ServiceLabels, Gauge>::default();
        let bytes = Family::<ByteLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let policy_version = Gauge::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections by outcome (allowed or denial reason)",
            connections.clone(),
        );
        registry.register(
            "connections_active",
            "Connections currently proxied",
            active.clone(),
        );
        registry.register("bytes", "Bytes proxied", bytes.clone());
        registry.register(
            "audit_dropped",
            "Audit events dropped because the queue was full",
            audit_dropped.clone(),
        );
        registry.register(
            "policy_version",
            "Version of the policy in force",
            policy_version.clone(),
        );
        registry.register("reloads", "Policy reloads by result", reloads.clone());
        registry.register(
            "http_requests",
            "HTTP requests by outcome (allowed or denial reason)",
            requests.clone(),
        );
        Metrics {
            registry,
            connections,
            active,
            bytes,
            audit_dropped,
            policy_version,
            reloads,
            requests,
        }
    }

    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts a connection: allowed, or refused for a reason.
    pub fn outcome(&self, device: &str, service: &str, outcome: Result<(), Reason>) {
        self.outcome_counter(&self.connections, device, service, outcome)
            .inc();
    }

    /// The HTTP request counter for one outcome of a service.
    pub fn request_counter(
        &self,
        device: &str,
        service: &str,
        outcome: Result<(), Reason>,
    ) -> Counter {
        self.outcome_counter(&self.requests, device, service, outcome)
    }

    fn outcome_counter(
        &self,
        family: &Family<OutcomeLabels, Counter>,
        device: &str,
        service: &str,
        outcome: Result<(), Reason>,
    ) -> Counter {
        let outcome = match outcome {
            Ok(()) => "allowed",
            Err(r) => r.as_str(),
        };
        family
            .get_or_create(&OutcomeLabels {
                device: device.to_string(),
                service: service.to_string(),
                outcome,
            })
            .clone()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
