//! Rate limits and the in-flight cap that shield fragile devices, on
//! governor's GCRA limiters.
//!
//! The limiters live in [`super::ServiceState`], which outlives any one
//! policy: a reload that leaves a limit unchanged keeps its buckets, and a
//! changed limit gets a fresh limiter that applies from the next decision.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::{Denial, Principal, Reason};

/// A rate as ops write it: "20/s", "600/min", "5/h", optionally
/// "… burst 40". Without a burst, the whole count may arrive at once.
#[derive(Debug, Clone)]
pub struct RateSpec {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
    pub text: String,
}

/// Two specs are the same limit when they mean the same quota, however
/// written ("20/s" and "20/s burst 20"): a reload keeps their buckets.
impl PartialEq for RateSpec {
    fn eq(&self, other: &Self) -> bool {
        self.quota() == other.quota()
    }
}

impl Eq for RateSpec {}

impl RateSpec {
    pub fn parse(s: &str) -> Result<RateSpec, String> {
        let err =
            || format!("{s:?} is not a rate such as \"20/s\", \"600/min\" or \"20/s burst 40\"");
        let mut words = s.split_whitespace();
        let rate = words.next().ok_or_else(err)?;
        let (count, unit) = rate.split_once('/').ok_or_else(err)?;
        let count: NonZeroU32 = count.parse().map_err(|_| err())?;
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => count,
            (Some("burst"), Some(b), None) => b.parse().map_err(|_| err())?,
            _ => return Err(err()),
        };
        Ok(RateSpec {
            count,
            per,
            burst,
            text: s.trim().to_string(),
        })
    }

    pub fn quota(&self) -> Quota {
        let interval = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(interval)
            .expect("interval is not zero")
            .allow_burst(self.burst)
    }
}

/// The limits of one service, as compiled from its `[limits]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsPolicy {
    pub connections_per_client: Option<RateSpec>,
    pub requests_per_client: Option<RateSpec>,
    pub requests_per_identity: Option<RateSpec>,
    /// All clients together: new connections (TCP) or requests (HTTP).
    pub device_rate: Option<RateSpec>,
    /// HTTP requests at the device at once.
    pub max_in_flight: Option<u32>,
    /// Connections one client (IPv6: one /64) may hold at once: as
    /// configured, or by default a share of `max_connections`
    /// (`policy::compile::default_per_client`). `u32::MAX` (the `Default`,
    /// for tests) never binds.
    pub max_connections_per_client: u32,
    /// How long a request may wait for an in-flight slot before 503.
    pub queue_timeout: Duration,
}

impl Default for LimitsPolicy {
    fn default() -> Self {
        LimitsPolicy {
            connections_per_client: None,
            requests_per_client: None,
            requests_per_identity: None,
            device_rate: None,
            max_in_flight: None,
            max_connections_per_client: u32::MAX,
            queue_timeout: Duration::ZERO,
        }
    }
}

type Keyed<K, C> =
    RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter and the spec it was built from, so a reload can tell whether
/// to keep it.
struct Slot<L> {
    spec: RateSpec,
    limiter: Arc<L>,
}

/// The live limiters of one service.
pub struct Limiters<C: Clock = DefaultClock> {
    clock: C,
    policy: LimitsPolicy,
    conn_per_client: Option<Slot<Keyed<IpAddr, C>>>,
    req_per_client: Option<Slot<Keyed<IpAddr, C>>>,
    req_per_identity: Option<Slot<Keyed<Principal, C>>>,
    device: Option<Slot<Direct<C>>>,
    in_flight: Option<(u32, Arc<Semaphore>)>,
}

/// Clients are keyed by address; IPv6 clients by their /64, since one host
/// commonly holds a whole /64 and could otherwise dodge a per-client limit
/// (and fill memory) by hopping addresses.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl<C: Clock + Clone> Limiters<C> {
    /// Builds limiters for `policy`, keeping those of `previous` whose spec
    /// did not change.
    pub fn build(policy: &LimitsPolicy, previous: Option<&Limiters<C>>, clock: C) -> Self {
        fn keep<L>(
            spec: &Option<RateSpec>,
            old: Option<&Slot<L>>,
            make: impl FnOnce(Quota) -> L,
        ) -> Option<Slot<L>> {
            let spec = spec.as_ref()?;
            match old {
                Some(o) if o.spec == *spec => Some(Slot {
                    spec: spec.clone(),
                    limiter: o.limiter.clone(),
                }),
                _ => Some(Slot {
                    spec: spec.clone(),
                    limiter: Arc::new(make(spec.quota())),
                }),
            }
        }
        let c = &clock;
        Limiters {
            conn_per_client: keep(
                &policy.connections_per_client,
                previous.and_then(|p| p.conn_per_client.as_ref()),
                |q| RateLimiter::dashmap_with_clock(q, c.clone()),
            ),
            req_per_client: keep(
                &policy.requests_per_client,
                previous.and_then(|p| p.req_per_client.as_ref()),
                |q| RateLimiter::dashmap_with_clock(q, c.clone()),
            ),
            req_per_identity: keep(
                &policy.requests_per_identity,
                previous.and_then(|p| p.req_per_identity.as_ref()),
                |q| RateLimiter::dashmap_with_clock(q, c.clone()),
            ),
            device: keep(
                &policy.device_rate,
                previous.and_then(|p| p.device.as_ref()),
                |q| RateLimiter::direct_with_clock(q, c.clone()),
            ),
            in_flight: policy.max_in_flight.map(|n| {
                match previous.and_then(|p| p.in_flight.as_ref()) {
                    Some((size, sem)) => (n, resize(sem, *size, n)),
                    None => (n, Arc::new(Semaphore::new(n as usize))),
                }
            }),
            policy: policy.clone(),
            clock,
        }
    }

    pub fn policy(&self) -> &LimitsPolicy {
        &self.policy
    }

    fn denied(&self, reason: Reason, not_until: NotUntil<C::Instant>, what: &str) -> Denial {
        let wait = not_until.wait_time_from(self.clock.now());
        let mut d = Denial::with_detail(reason, what.to_string());
        // Whole seconds, rounded up, never 0: what Retry-After can say.
        d.retry_after = Some(
            Duration::from_secs(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                .max(Duration::from_secs(1)),
        );
        d
    }

    /// A new connection from `client`.
    pub fn check_connection(&self, client: IpAddr) -> Result<(), Denial> {
        if let Some(s) = &self.conn_per_client {
            s.limiter.check_key(&client_key(client)).map_err(|n| {
                self.denied(
                    Reason::RateLimitedClient,
                    n,
                    &format!("connections_per_client {}", s.spec.text),
                )
            })?;
        }
        Ok(())
    }

    /// One more unit of work for the device (a connection or a request).
    pub fn check_device(&self) -> Result<(), Denial> {
        if let Some(s) = &self.device {
            s.limiter.check().map_err(|n| {
                self.denied(
                    Reason::RateLimitedDevice,
                    n,
                    &format!("device_rate {}", s.spec.text),
                )
            })?;
        }
        Ok(())
    }

    /// One HTTP request from `client`, made by `principal` if known (the
    /// session's user, else the client certificate's identity).
    pub fn check_request(
        &self,
        client: IpAddr,
        principal: Option<&Principal>,
    ) -> Result<(), Denial> {
        self.check_client_request(client)?;
        self.check_principal_and_device(principal)
    }

    /// `requests_per_client` alone: on `mfa` services it runs before the
    /// portal and the session check, so that visitors without a session
    /// are held to it too.
    pub fn check_client_request(&self, client: IpAddr) -> Result<(), Denial> {
        if let Some(s) = &self.req_per_client {
            s.limiter.check_key(&client_key(client)).map_err(|n| {
                self.denied(
                    Reason::RateLimitedClient,
                    n,
                    &format!("requests_per_client {}", s.spec.text),
                )
            })?;
        }
        Ok(())
    }

    /// The rest of [`Self::check_request`]: the principal's rate, then
    /// the device's.
    pub fn check_principal_and_device(&self, principal: Option<&Principal>) -> Result<(), Denial> {
        if let (Some(s), Some(id)) = (&self.req_per_identity, principal) {
            s.limiter.check_key(id).map_err(|n| {
                self.denied(
                    Reason::RateLimitedIdentity,
                    n,
                    &format!("requests_per_identity {}", s.spec.text),
                )
            })?;
        }
        self.check_device()
    }

    /// The in-flight semaphore, if the service has a cap.
    pub fn in_flight(&self) -> Option<Arc<Semaphore>> {
        self.in_flight.as_ref().map(|(_, s)| s.clone())
    }

    /// Forgets clients whose buckets are full again, so memory follows the
    /// clients active within one replenish period, not all ever seen.
    pub fn collect_garbage(&self) {
        if let Some(s) = &self.conn_per_client {
            s.limiter.retain_recent();
            s.limiter.shrink_to_fit();
        }
        if let Some(s) = &self.req_per_client {
            s.limiter.retain_recent();
            s.limiter.shrink_to_fit();
        }
        if let Some(s) = &self.req_per_identity {
            s.limiter.retain_recent();
            s.limiter.shrink_to_fit();
        }
    }

    /// Clients and identities currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.conn_per_client.as_ref().map_or(0, |s| s.limiter.len())
            + self.req_per_client.as_ref().map_or(0, |s| s.limiter.len())
            + self
                .req_per_identity
                .as_ref()
                .map_or(0, |s| s.limiter.len())
    }
}

/// The same semaphore with `new` permits instead of `old`, so requests
/// already at the device keep counting against the new cap. Shrinking
/// takes the surplus permits as they come back and forgets them.
fn resize(sem: &Arc<Semaphore>, old: u32, new: u32) -> Arc<Semaphore> {
    if new > old {
        sem.add_permits((new - old) as usize);
    } else if new < old {
        let surplus = old - new;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let sem = sem.clone();
                rt.spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(surplus).await {
                        p.forget();
                    }
                });
            }
            // Outside a runtime (tooling): a fresh semaphore is all we can do.
            Err(_) => return Arc::new(Semaphore::new(new as usize)),
        }
    }
    sem.clone()
}

/// A token bucket owned by one connection: no key, no sharing, driven by
/// tokio's clock (so paused-time tests can step it). The per-connection
/// budgets use it: h2 control frames (`proxy::h2_guard`) and abandoned
/// requests (`proxy::http`). Limits keyed by client or shared by a service
/// use governor, above.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    /// Full, holding `burst` tokens, earning `per_second` back.
    pub fn new(now: tokio::time::Instant, burst: f64, per_second: f64) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            per_second,
            at: now,
        }
    }

    /// Takes one token at `now`; false when there is none.
    pub fn take(&mut self, now: tokio::time::Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests;
