//! Per-service connection cap. The count lives in [`ServiceState`], which
//! outlives any one policy so that a reload neither resets nor leaks it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use governor::clock::DefaultClock;

use super::rate::{Limiters, LimitsPolicy};

/// Runtime state of a service that must survive policy swaps: its
/// connection count and its rate limiters.
#[derive(Default)]
pub struct ServiceState {
    active: AtomicU32,
    limiters: RwLock<Option<Arc<Limiters>>>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("active", &self.active())
            .finish()
    }
}

impl ServiceState {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The limiters for `policy`: those in use when it matches, else new
    /// ones that keep every unchanged limiter (and so its buckets).
    pub fn limiters(&self, policy: &LimitsPolicy) -> Arc<Limiters> {
        if let Some(l) = self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            if l.policy() == policy {
                return l.clone();
            }
        }
        let mut slot = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_ref() {
            Some(l) if l.policy() == policy => l.clone(),
            previous => {
                let fresh = Arc::new(Limiters::build(
                    policy,
                    previous.map(|p| &**p),
                    DefaultClock::default(),
                ));
                *slot = Some(fresh.clone());
                fresh
            }
        }
    }

    /// Drops idle per-client state (see [`Limiters::collect_garbage`]).
    pub fn collect_garbage(&self) {
        if let Some(l) = self
            .limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            l.collect_garbage();
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Takes a slot if fewer than `limit` are held. Refuses at once, never
    /// queues: a fragile device should not see a burst released later.
    pub fn try_acquire(self: &Arc<Self>, limit: u32) -> Option<ConnectionSlot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(self.clone()))
    }
}

/// One held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<ServiceState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_holds_and_slots_are_released_on_drop() {
        let state = ServiceState::new();
        let a = state.try_acquire(2).unwrap();
        let _b = state.try_acquire(2).unwrap();
        assert!(state.try_acquire(2).is_none());
        assert_eq!(state.active(), 2);
        drop(a);
        assert!(state.try_acquire(2).is_some());
    }
}
