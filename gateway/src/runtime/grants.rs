//! Grants over their life: opened (audited, counted), and ended by one
//! path whatever the cause — expiry, the user or ops revoking them, or a
//! published policy in which the grant no longer holds (the user disabled,
//! removed or out of the service's groups; the service removed or changed).
//!
//! Ending a grant moves the identity store's change signal, so every live
//! connection re-checks at once ([`crate::proxy::tcp`]'s
//! `refused_by_change`): a `close` service cuts what the grant admitted.

use std::sync::Arc;
use std::time::Duration;

use super::Runtime;
use crate::audit::{ConnMeta, Event};
use crate::auth::grants::{Grant, GrantBinding, GrantEnd};
use crate::auth::AccessMode;
use crate::metrics::{GrantLabels, OutcomeLabels, ServiceLabels};
use crate::policy::{Policy, Service};
use crate::runtime::store::GrantRefused;

/// How often expiry is looked for: a grant ends at most this late, and
/// its connections are cut well within the 1 s the issue allows.
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Where a service leads: a grant opens this, not what the service is
/// changed to later.
pub fn target(service: &Service) -> String {
    format!("{} -> {}", service.listen, service.upstream)
}

/// Does `grant` still hold under `policy` at `now`? If not, why it ends.
pub fn why_it_ends(policy: &Policy, grant: &Grant, now: u64) -> Option<GrantEnd> {
    if grant.until <= now {
        return Some(GrantEnd::Expired);
    }
    let Some(service) = policy
        .services
        .iter()
        .find(|s| s.device.id == grant.device && s.name == grant.service)
    else {
        return Some(GrantEnd::PolicyChanged);
    };
    let AccessMode::Grant(rule) = &service.access_mode else {
        return Some(GrantEnd::PolicyChanged);
    };
    if target(service) != grant.target {
        return Some(GrantEnd::PolicyChanged);
    }
    if let GrantBinding::Certificate(_) = grant.binding {
        if !requires_client_certificates(service) {
            return Some(GrantEnd::PolicyChanged);
        }
    }
    let Some(user) = policy.auth.as_ref().and_then(|a| a.users.get(&grant.user)) else {
        return Some(GrantEnd::UserRemoved);
    };
    if user.disabled {
        return Some(GrantEnd::UserDisabled);
    }
    if !rule.who.admits(user) {
        return Some(GrantEnd::UserNotAuthorized);
    }
    None
}

/// Only where the handshake demands a verified certificate does a
/// certificate grant mean anything.
pub fn requires_client_certificates(service: &Service) -> bool {
    service.tls.as_ref().is_some_and(|t| {
        t.client_verifier.is_some()
            && t.client_cert == Some(crate::config::schema::ClientCertMode::Required)
    })
}

impl Runtime {
    /// Opens `grant` (asked for on the portal request `conn`): stored,
    /// audited, counted.
    pub fn open_grant(&self, grant: Grant, conn: &ConnMeta) -> Result<(), GrantRefused> {
        self.store.open_grant(grant.clone())?;
        let labels = ServiceLabels {
            device: grant.device.to_string(),
            service: grant.service.to_string(),
        };
        self.metrics.grants_open.get_or_create(&labels).inc();
        self.metrics
            .grants_opened
            .get_or_create(&GrantLabels {
                device: labels.device,
                service: labels.service,
                break_glass: if grant.break_glass { "true" } else { "false" },
            })
            .inc();
        tracing::info!(user = %grant.user, device = %grant.device, service = %grant.service, binding = %grant.binding, until = grant.until, "grant opened");
        self.audit.record(Event::GrantOpened {
            conn: conn.clone(),
            grant_id: grant.id,
            user: grant.user,
            granted_device: grant.device,
            granted_service: grant.service,
            binding: grant.binding,
            until: grant.until,
            break_glass: grant.break_glass,
        });
        Ok(())
    }

    /// Ends the grants `pick` chooses, with its reason; audited and
    /// counted. `by` names who asked (ops: the admin client).
    pub fn end_grants(
        &self,
        pick: &mut dyn FnMut(&Grant) -> Option<GrantEnd>,
        by: Option<&str>,
    ) -> Vec<(Grant, GrantEnd)> {
        let ended = self.store.end_grants(pick);
        for (grant, reason) in &ended {
            let labels = ServiceLabels {
                device: grant.device.to_string(),
                service: grant.service.to_string(),
            };
            self.metrics.grants_open.get_or_create(&labels).dec();
            self.metrics
                .grants_ended
                .get_or_create(&OutcomeLabels {
                    device: labels.device,
                    service: labels.service,
                    outcome: reason.as_str(),
                })
                .inc();
            tracing::info!(user = %grant.user, device = %grant.device, service = %grant.service, reason = reason.as_str(), "grant ended");
            self.audit.record(Event::GrantEnded {
                grant_id: grant.id,
                user: grant.user.clone(),
                device: grant.device.clone(),
                service: grant.service.clone(),
                binding: grant.binding,
                reason: *reason,
                by: by.map(str::to_string),
            });
        }
        ended
    }

    /// Ends every grant that no longer holds under the policy in force.
    pub fn end_lapsed_grants(&self) -> Vec<(Grant, GrantEnd)> {
        let policy = self.policy.borrow().clone();
        // Every break-glass service has its counter from the start, at 0:
        // an alert on its increase then sees the first use too.
        for s in &policy.services {
            if s.access_mode.takes_break_glass() {
                let _ = self.metrics.break_glass_used.get_or_create(&ServiceLabels {
                    device: s.device.id.to_string(),
                    service: s.name.to_string(),
                });
            }
        }
        let now = self.clock.now();
        self.end_grants(&mut |g| why_it_ends(&policy, g, now), None)
    }
}

/// Runs until the hard stop: ends grants as they expire, and right after
/// every published policy, those it no longer holds.
pub async fn keep(rt: Arc<Runtime>) {
    let mut policy = rt.policy.clone();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = rt.hard_stop.cancelled() => return,
            _ = tick.tick() => {}
            changed = policy.changed() => if changed.is_err() {
                return;
            },
        }
        rt.end_lapsed_grants();
    }
}

#[cfg(test)]
mod tests;
