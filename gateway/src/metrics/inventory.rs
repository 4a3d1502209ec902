//! Gauges that describe what moat protects rather than what it did: the
//! device inventory and support status, certificate expiry, and the SIEM
//! sink. They are set from the policy in force and the clock at every
//! scrape ([`Metrics::refresh`](super::Metrics::refresh)), so a status
//! changes at midnight without a reload and a removed device disappears.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::audit::siem::SiemStats;
use crate::policy::{Policy, SupportStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceInfoLabels {
    pub device: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    pub location: String,
    pub owner: String,
    pub serial_number: String,
    pub udi: String,
    pub software_version: String,
    pub lifecycle: String,
    pub end_of_support: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SupportLabels {
    pub device: String,
    /// supported, ending_soon, past, unknown.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub device: String,
    pub service: String,
    /// The certificate file, as the policy names it.
    pub certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiemLabels {
    /// sent, spooled, dropped.
    pub outcome: &'static str,
}

/// A label value in the exposition formats' escaping. prometheus-client
/// 0.23 writes label values as they are, and these come from the policy
/// file (free text: a quote or a newline in a location would otherwise
/// end the sample, or forge another one).
pub fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

pub struct InventoryMetrics {
    device_info: Family<DeviceInfoLabels, Gauge>,
    end_of_support: Family<DeviceLabels, Gauge>,
    support_status: Family<SupportLabels, Gauge>,
    support_warning_seconds: Gauge,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    siem_events: Family<SiemLabels, Counter>,
    siem_connected: Gauge,
    siem_spool_bytes: Gauge,
}

impl InventoryMetrics {
    pub fn register(registry: &mut Registry) -> InventoryMetrics {
        let m = InventoryMetrics {
            device_info: Family::default(),
            end_of_support: Family::default(),
            support_status: Family::default(),
            support_warning_seconds: Gauge::default(),
            certificate_expiry: Family::default(),
            siem_events: Family::default(),
            siem_connected: Gauge::default(),
            siem_spool_bytes: Gauge::default(),
        };
        registry.register(
            "device_info",
            "The device inventory: 1 per device, its inventory fields as labels",
            m.device_info.clone(),
        );
        registry.register(
            "device_end_of_support_timestamp_seconds",
            "The maker's end of support of each device that records one (midnight UTC, Unix seconds)",
            m.end_of_support.clone(),
        );
        registry.register(
            "device_support_status",
            "1 for each device's current support status (supported, ending_soon, past, unknown), 0 for the others",
            m.support_status.clone(),
        );
        registry.register(
            "device_support_warning_seconds",
            "How long before its end of support a device counts as ending soon (gateway.support_warning_months, approximately)",
            m.support_warning_seconds.clone(),
        );
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each certificate a TLS service presents expires (Unix seconds)",
            m.certificate_expiry.clone(),
        );
        registry.register(
            "siem_events",
            "Audit events for the SIEM by outcome: sent to the collector, spooled to disk, dropped (spool full)",
            m.siem_events.clone(),
        );
        registry.register(
            "siem_connected",
            "1 while the TLS connection to the SIEM collector is up",
            m.siem_connected.clone(),
        );
        registry.register(
            "siem_spool_bytes",
            "Bytes of audit events waiting in the SIEM disk spool",
            m.siem_spool_bytes.clone(),
        );
        m
    }

    /// Sets every gauge from `policy` at `now` (Unix seconds).
    pub fn refresh(&self, policy: &Policy, now: u64, siem: Option<&SiemStats>) {
        self.device_info.clear();
        self.end_of_support.clear();
        self.support_status.clear();
        self.certificate_expiry.clear();
        for d in &policy.devices {
            self.device_info
                .get_or_create(&DeviceInfoLabels {
                    device: d.id.to_string(),
                    name: label_value(&d.name),
                    manufacturer: label_value(&d.manufacturer),
                    model: label_value(&d.model),
                    location: label_value(&d.location),
                    owner: label_value(&d.owner),
                    serial_number: label_value(&d.serial_number),
                    udi: label_value(&d.udi),
                    software_version: label_value(&d.software_version),
                    lifecycle: d.lifecycle.map_or("", |l| l.as_str()).to_string(),
                    end_of_support: d.end_of_support.clone().unwrap_or_default(),
                })
                .set(1);
            if let Some(t) = d.end_of_support_unix() {
                self.end_of_support
                    .get_or_create(&DeviceLabels {
                        device: d.id.to_string(),
                    })
                    .set(t);
            }
            let status = d.support_status(now);
            for s in SupportStatus::ALL {
                self.support_status
                    .get_or_create(&SupportLabels {
                        device: d.id.to_string(),
                        status: s.as_str(),
                    })
                    .set(i64::from(s == status));
            }
        }
        self.support_warning_seconds
            .set(i64::from(policy.support_warning_months) * 2_629_746);
        for s in &policy.services {
            let Some(tls) = &s.tls else { continue };
            for c in &tls.certificates {
                self.certificate_expiry
                    .get_or_create(&CertificateLabels {
                        device: s.device.id.to_string(),
                        service: s.name.to_string(),
                        certificate: label_value(&c.path.display().to_string()),
                    })
                    .set(c.not_after_unix);
            }
        }
        if let Some(stats) = siem {
            for (outcome, n) in [
                ("sent", &stats.sent),
                ("spooled", &stats.spooled),
                ("dropped", &stats.dropped),
            ] {
                self.siem_events
                    .get_or_create(&SiemLabels { outcome })
                    .inner()
                    .store(n.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            self.siem_connected
                .set(stats.connected.load(Ordering::Relaxed) as i64);
            self.siem_spool_bytes
                .set(stats.spool_bytes.load(Ordering::Relaxed) as i64);
        }
    }
}
