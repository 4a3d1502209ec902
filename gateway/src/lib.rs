//! moat: a gateway that puts compensating controls in front of legacy
//! medical devices. See `docs/architecture.md` for the map of this crate.
//!
//! config files ─► [`config`] (what the files say)
//!              ─► [`policy`] (what is enforced; immutable, compiled)
//!              ─► [`gateway`] (listeners, reloads, shutdown)
//!              ─► [`proxy`] data planes running the [`controls`] chain
//!                  (identity from [`auth`]), on the shared [`runtime`]
//!                  state, to devices through [`upstream`]
//!              ─► [`audit`] trail and [`metrics`] for every decision
//!
//! Dependencies point one way: `gateway` → `admin`, `proxy` → `runtime`
//! → `audit`, `metrics`, `controls`, `auth`, `policy`, `upstream`.
//! Nothing below `gateway` names it or `admin`; `runtime` names no data
//! plane.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod config;
pub mod controls;
pub mod demo;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod guard;
pub mod log_limit;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod signals;
pub mod tls;
pub mod upstream;
