//! The attack suite (issue 16, point 3): every hostile client moat is known
//! to face, in one test target, against the real binary.
//!
//! Each module is one class of attack, run with a real tool where one
//! exists (slowhttptest, curl, nghttp) and raw sockets or raw h2 frames
//! where none does. What reached the device is checked at the device, and
//! each attack that could crowd others out shows that a well-behaved client
//! on another source address ([`bystander`]) is still served while the
//! attack is at full strength.
//!
//! | module | attacks |
//! |---|---|
//! | [`paths`] | deny rules against every common server's reading of a path |
//! | [`headers`] | override, forwarding and host headers |
//! | [`smuggling`] | HTTP/1.1 framing disagreements (CL/TE and friends), h2 downgrades |
//! | [`hostile_clients`] | slowhttptest in all three modes, stalled and malformed bodies |
//! | [`idle_connections`] | thousands of silent connections, half a TLS ClientHello |
//! | [`h2_floods`] | SETTINGS, PING, PRIORITY, WINDOW_UPDATE floods |
//! | [`h2_abuse`] | CONTINUATION, HPACK bombs, rapid reset, zero-window readers |
//!
//! Heavy attacks take [`heavy`], so that two of them never share the two
//! cores of a CI machine and one's load cannot fail the other's bystander.

#[path = "../support/mod.rs"]
mod support;

mod bystander;
mod h2_abuse;
mod h2_floods;
mod headers;
mod hostile_clients;
mod idle_connections;
mod paths;
mod smuggling;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held by every attack that loads the machine.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}
