//! Per-service connection cap. The count lives in [`ServiceState`], which
//! outlives any one policy so that a reload neither resets nor leaks it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use std::time::Duration;

use governor::clock::DefaultClock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rate::{Limiters, LimitsPolicy};

/// Runtime state of a service that must survive policy swaps: its
/// connection count and its rate limiters.
#[derive(Default)]
pub struct ServiceState {
    active: AtomicU32,
    /// Woken when a connection slot is released, for connections queueing.
    freed: tokio::sync::Notify,
    /// Connections held per client (see `limits.max_connections_per_client`).
    per_client: std::sync::Mutex<std::collections::HashMap<IpAddr, u32>>,
    limiters: RwLock<Option<Arc<Limiters>>>,
    /// Connections still in their TLS handshake, oldest first: a full
    /// service sheds the oldest stalled one for a new client
    /// ([`ServiceState::shed_stalled_handshake`]).
    unfinished: std::sync::Mutex<std::collections::VecDeque<Unfinished>>,
    next_unfinished: std::sync::atomic::AtomicU64,
}

struct Unfinished {
    id: u64,
    since: Instant,
    shed: CancellationToken,
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

    /// Marks a connection as in its TLS handshake until the guard drops;
    /// the guard's [`Handshaking::shed`] resolves if the connection is
    /// shed for a newer one.
    pub fn handshake_started(self: &Arc<Self>) -> Handshaking {
        let id = self.next_unfinished.fetch_add(1, Ordering::Relaxed);
        let shed = CancellationToken::new();
        let since = Instant::now();
        self.unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Unfinished {
                id,
                since,
                shed: shed.clone(),
            });
        Handshaking {
            state: self.clone(),
            id,
            since,
            shed,
        }
    }

    /// At the connection cap: sheds the oldest connection whose handshake
    /// has lasted `stalled_after` or more (it sent nothing, or half a
    /// ClientHello), so that silent connections from many addresses cannot
    /// hold every slot until `handshake_timeout`. Returns whether one was
    /// shed; its slot comes free as its task ends.
    pub fn shed_stalled_handshake(&self, stalled_after: Duration) -> bool {
        let unfinished = self
            .unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Shed ones leave the queue when their task drops the guard.
        let Some(oldest) = unfinished.iter().find(|u| !u.shed.is_cancelled()) else {
            return false;
        };
        if oldest.since.elapsed() < stalled_after {
            return false;
        }
        oldest.shed.cancel();
        true
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Waits up to `wait` for a slot to come free.
    pub async fn acquire_within(
        self: &Arc<Self>,
        limit: u32,
        wait: std::time::Duration,
    ) -> Option<ConnectionSlot> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.try_acquire(limit) {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Takes a slot if fewer than `limit` are held. Refuses at once, never
    /// queues: a fragile device should not see a burst released later.
    pub fn try_acquire(self: &Arc<Self>, limit: u32) -> Option<ConnectionSlot> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                state: self.clone(),
                client: None,
            })
    }

    /// Attaches a client's share to a slot: refused (the slot is returned)
    /// when `client` already holds `per_client` connections.
    pub fn hold_for_client(
        &self,
        mut slot: ConnectionSlot,
        client: IpAddr,
        per_client: u32,
    ) -> Option<ConnectionSlot> {
        let mut held = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(client).or_insert(0);
        if *n >= per_client {
            return None;
        }
        *n += 1;
        slot.client = Some(client);
        Some(slot)
    }
}

/// A connection in its TLS handshake, registered with its service.
pub struct Handshaking {
    state: Arc<ServiceState>,
    id: u64,
    since: Instant,
    shed: CancellationToken,
}

impl Handshaking {
    /// Resolves when the service sheds this handshake for a newer client.
    pub async fn shed(&self) {
        self.shed.cancelled().await
    }

    /// How long the handshake has lasted.
    pub fn age(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut unfinished = self
            .state
            .unfinished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Nearly always at or near the front: handshakes end in order.
        if let Some(i) = unfinished.iter().position(|u| u.id == self.id) {
            unfinished.remove(i);
        }
    }
}

/// How long a handshake must have lasted before a full service may shed
/// it for a new client: a quarter of `handshake_timeout`, between 250 ms
/// and 2 s. A real client's handshake takes milliseconds, even on a busy
/// clinical Wi-Fi.
pub fn stalled_after(handshake_timeout: Duration) -> Duration {
    (handshake_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
}

/// One held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    state: Arc<ServiceState>,
    /// Set when the slot also counts against a per-client limit.
    client: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            let mut held = self
                .state
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let std::collections::hash_map::Entry::Occupied(mut e) = held.entry(client) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.state.active.fetch_sub(1, Ordering::AcqRel);
        self.state.freed.notify_one();
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

    #[tokio::test(start_paused = true)]
    async fn a_full_service_sheds_only_a_stalled_handshake_and_the_oldest_first() {
        let state = ServiceState::new();
        let old = state.handshake_started();
        tokio::time::advance(Duration::from_millis(10)).await;
        let young = state.handshake_started();
        // Too young to shed, however full the service.
        assert!(!state.shed_stalled_handshake(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(state.shed_stalled_handshake(Duration::from_secs(1)));
        tokio::time::timeout(Duration::from_millis(1), old.shed())
            .await
            .expect("the oldest is shed");
        assert!(tokio::time::timeout(Duration::from_millis(1), young.shed())
            .await
            .is_err());
        // The shed one is not shed twice: the next is the younger.
        assert!(state.shed_stalled_handshake(Duration::from_secs(1)));
        drop(old);
        young.shed().await;
        drop(young);
        assert!(!state.shed_stalled_handshake(Duration::ZERO));
        assert!(state.unfinished.lock().unwrap().is_empty());
    }

    #[test]
    fn stalled_after_is_a_quarter_of_the_handshake_timeout_within_bounds() {
        assert_eq!(
            stalled_after(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            stalled_after(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            stalled_after(Duration::from_millis(100)),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn per_client_share_is_released_with_the_slot() {
        let state = ServiceState::new();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = state
            .hold_for_client(state.try_acquire(10).unwrap(), a, 1)
            .unwrap();
        assert!(state
            .hold_for_client(state.try_acquire(10).unwrap(), a, 1)
            .is_none());
        assert_eq!(state.active(), 1, "the refused slot went back");
        drop(first);
        assert!(state
            .hold_for_client(state.try_acquire(10).unwrap(), a, 1)
            .is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_connection_gets_the_next_free_slot_or_gives_up() {
        let state = ServiceState::new();
        let held = state.try_acquire(1).unwrap();
        // Nothing frees up: shed after the wait.
        let wait = std::time::Duration::from_millis(100);
        assert!(state.acquire_within(1, wait).await.is_none());
        // A slot freed while waiting is taken.
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { state.acquire_within(1, wait).await.is_some() })
        };
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
