//! moat: a gateway that puts compensating controls in front of legacy
//! medical devices. See `docs/architecture.md` for the map of this crate.
//!
//! config files ─► [`config`] (what the files say)
//!              ─► [`policy`] (what is enforced; immutable, compiled)
//!              ─► [`gateway`] (listeners, runtime state, shutdown)
//!              ─► [`proxy`] data planes running the [`controls`] chain
//!              ─► [`audit`] trail and [`metrics`] for every decision

pub mod admin;
pub mod audit;
pub mod certs;
pub mod config;
pub mod controls;
pub mod demo;
pub mod gateway;
pub mod log_limit;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod signals;
pub mod tls;
