//! The chain of controls every listener runs before a client reaches a
//! device. Each control looks at what is known so far and either lets the
//! connection on or refuses it with a typed [`Reason`].
//!
//! The connection-level chain, in order, cheapest first and before any TLS
//! work: source allow/deny list, then the service's connection cap.
//! Controls that need the TLS session (client certificate) run after the
//! handshake, in [`crate::proxy`], and report through the same [`Denial`].

mod concurrency;
mod reason;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

pub use concurrency::{ConnectionSlot, ServiceState};
pub use reason::{Denial, Reason};

use crate::policy::{Service, SourceRefusal};

/// A connection that passed the connection-level chain. Holding it holds
/// one of the service's connection slots.
#[derive(Debug)]
pub struct Admitted {
    /// The allow entry that matched the source.
    pub matched: IpNet,
    pub slot: ConnectionSlot,
}

/// Runs the connection-level chain for a client of `service`.
pub fn admit_connection(
    service: &Service,
    state: &Arc<ServiceState>,
    client: IpAddr,
) -> Result<Admitted, Denial> {
    let matched = check_source(service, client)?;
    let slot = state.try_acquire(service.max_connections).ok_or_else(|| {
        Denial::with_detail(
            Reason::MaxConnections,
            format!("limit {}", service.max_connections),
        )
    })?;
    Ok(Admitted { matched, slot })
}

/// The source allow/deny control on its own; also used to re-check live
/// connections against a new policy.
#[inline]
pub fn check_source(service: &Service, client: IpAddr) -> Result<IpNet, Denial> {
    service
        .access
        .check(client)
        .map_err(|refusal| match refusal {
            SourceRefusal::Denylisted(entry) => {
                Denial::with_detail(Reason::Denylisted, format!("matched deny {entry}"))
            }
            SourceRefusal::NotAllowlisted => Denial::new(Reason::NotAllowlisted),
        })
}
