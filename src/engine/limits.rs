//! Configurable limits, the per-user rate limiters and the per-user share
//! of the database.

use crate::domain::UserId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one user or request may use.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes of message content.
    pub max_content_bytes: usize,
    /// Participants of one conversation, the creator included.
    pub max_participants: usize,
    /// Open subscriptions (SSE and gRPC streams together) per user.
    pub max_subscriptions_per_user: usize,
    /// Messages a subscription may have queued before it is dropped as lagging.
    pub subscription_queue: usize,
    /// Bytes of events a subscription may have queued, likewise.
    pub subscription_queue_bytes: usize,
    /// Messages a user may send per second, sustained.
    pub messages_per_second: f64,
    /// Messages a user may send at once after being idle.
    pub message_burst: f64,
    /// The most missed messages a resuming subscription replays.
    pub replay_limit: usize,
    /// Replay reads at once across the node (each reads one page).
    pub replay_concurrency: usize,
    /// Expensive calls (creating conversations, listing, resuming,
    /// tickets) a user may make per second, sustained.
    pub calls_per_second: f64,
    /// Expensive calls a user may make at once after being idle.
    pub call_burst: f64,
    /// Database calls one user may have in flight at once; more wait.
    pub user_concurrency: usize,
    /// How long a user stays online after their last stream closes.
    pub presence_grace: std::time::Duration,
    /// How often nodes announce their online users to each other.
    pub presence_interval: std::time::Duration,
}

impl Limits {
    /// The largest request message a Messenger call can legitimately
    /// carry: a message of the largest content, or a group's worth of
    /// the longest ids, with room for the other fields. tonic refuses a
    /// larger one from its length prefix, before buffering any of it.
    pub fn largest_request(&self) -> usize {
        let ids = self.max_participants * (crate::domain::MAX_ID_BYTES + 3);
        self.max_content_bytes.max(ids) + REQUEST_OVERHEAD
    }
}

/// Bytes a request carries besides its content or ids: other fields,
/// their tags, an idempotency key.
const REQUEST_OVERHEAD: usize = 4 * 1024;

/// The largest request of the calls that need no token (health,
/// reflection): a service or symbol name.
pub const ANONYMOUS_REQUEST: usize = 4 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 16 * 1024,
            max_participants: 1_000,
            max_subscriptions_per_user: 100,
            subscription_queue: 1_024,
            subscription_queue_bytes: 4 * 1024 * 1024,
            messages_per_second: 2_000.0,
            message_burst: 2_000.0,
            replay_limit: 10_000,
            replay_concurrency: 4,
            calls_per_second: 100.0,
            call_burst: 200.0,
            user_concurrency: 4,
            presence_grace: std::time::Duration::from_secs(5),
            presence_interval: std::time::Duration::from_secs(10),
        }
    }
}

/// A token bucket per user.
///
/// Why not `governor`'s keyed limiter (considered for the maintainability
/// issue): its GCRA cannot express what the call meter needs, fractional
/// costs (a group of 120 costs 3.4 calls) and debt charged after the fact
/// for a large answer; its concurrent keyed store brings dashmap and a
/// fourth hashbrown major (deny.toml denies duplicate majors), and without
/// it the store is one mutex over a map, as here. The problem the issue
/// named, a scan of every bucket on each call past 10,000 users, is gone:
/// [`PerUser`] scans only after doubling. One uncontended lock per send
/// costs tens of nanoseconds against the ~100 µs a send costs (see
/// BENCHMARKS.md).
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<PerUser<Bucket>>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Users kept before idle ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// A map by user (or by a key of the user's, such as user and
/// conversation) that forgets idle entries once it holds many. The scan for
/// them runs only when the map has doubled since the last one, so a node
/// with more active users than [`PRUNE_ABOVE`] does not scan on every call.
pub(crate) struct PerUser<V, K = UserId> {
    map: HashMap<K, V>,
    prune_at: usize,
}

impl<V, K> Default for PerUser<V, K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            prune_at: PRUNE_ABOVE,
        }
    }
}

impl<V, K: std::hash::Hash + Eq + Clone> PerUser<V, K> {
    /// `key`'s entry, made by `new` if there is none; idle entries (those
    /// `idle` says are) are forgotten first when the map has grown.
    pub(crate) fn entry(
        &mut self,
        key: &K,
        idle: impl Fn(&V) -> bool,
        new: impl FnOnce() -> V,
    ) -> &mut V {
        if self.map.len() > self.prune_at {
            self.map.retain(|_, value| !idle(value));
            self.prune_at = (self.map.len() * 2).max(PRUNE_ABOVE);
        }
        self.map.entry(key.clone()).or_insert_with(new)
    }
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token from `user`'s bucket; false when it is empty.
    pub fn allow(&self, user: &UserId) -> bool {
        self.allow_n(user, 1.0)
    }

    /// Takes `cost` more tokens from `user`'s bucket for work found to be
    /// larger than paid for, down to one burst below empty: the user's
    /// next calls wait until it has refilled.
    pub fn charge(&self, user: &UserId, cost: f64) {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = buckets.map.get_mut(user) {
            bucket.tokens = (bucket.level(now, self.rate, self.burst) - cost).max(-self.burst);
            bucket.refilled = now;
        }
    }

    /// Takes `cost` tokens from `user`'s bucket; false when it has fewer.
    pub fn allow_n(&self, user: &UserId, cost: f64) -> bool {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (rate, burst) = (self.rate, self.burst);
        let bucket = buckets.entry(
            user,
            |bucket| bucket.level(now, rate, burst) >= burst,
            || Bucket {
                tokens: burst,
                refilled: now,
            },
        );
        bucket.tokens = bucket.level(now, self.rate, self.burst);
        bucket.refilled = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// Requests one user may have in flight at once, across both doors and
/// every connection: with a request message bounded per call and a body
/// timeout, what one token can make the node hold is bounded too.
pub const REQUESTS_PER_USER: usize = 64;

/// Each user's requests in flight; cheap to clone.
#[derive(Clone, Default)]
pub struct InFlight {
    users: Arc<Mutex<HashMap<UserId, usize>>>,
}

/// One request's place among its user's, until dropped.
pub struct InFlightSlot {
    owner: InFlight,
    user: UserId,
}

impl std::fmt::Debug for InFlightSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlightSlot")
    }
}

impl InFlight {
    /// A place for one more request of `user`, unless they hold
    /// [`REQUESTS_PER_USER`] already.
    pub fn enter(&self, user: &UserId) -> Option<InFlightSlot> {
        let mut users = self.lock();
        let count = users.entry(user.clone()).or_default();
        if *count >= REQUESTS_PER_USER {
            return None;
        }
        *count += 1;
        Some(InFlightSlot {
            owner: self.clone(),
            user: user.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, usize>> {
        // Counts only: a panicking holder leaves nothing half-done.
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut users = self.owner.lock();
        if let Some(count) = users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// Each user's share of the database: at most a few calls in flight at
/// once, so one user's parallel reads queue behind each other instead of
/// taking the whole pool from everyone else.
pub struct UserPermits {
    per_user: usize,
    users: Mutex<PerUser<Arc<Semaphore>>>,
}

impl UserPermits {
    pub fn new(per_user: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            users: Mutex::default(),
        }
    }

    /// Waits for one of `user`'s places; the place is held until the
    /// returned permit is dropped. (`None` would mean a closed semaphore,
    /// which these never are.)
    pub async fn acquire(&self, user: &UserId) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut users = self
                .users
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Only the map holds an idle user's semaphore.
            let idle = |semaphore: &Arc<Semaphore>| Arc::strong_count(semaphore) == 1;
            let per_user = self.per_user;
            users
                .entry(user, idle, || Arc::new(Semaphore::new(per_user)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }
}

/// Refusals for going over a rate are answered a moment late: a client
/// that asks again as soon as it is refused (most do) is slowed to a few
/// calls a second per open request, instead of costing the server a
/// refusal per microsecond. At most [`TARPIT_SLOTS`] refusals wait at once,
/// across the node, so the waiting itself stays bounded; past that they
/// are answered at once.
pub struct Tarpit {
    slots: Semaphore,
}

/// Refusals held back at once, across the node.
pub const TARPIT_SLOTS: usize = 4_096;
/// How long a refusal is held back.
pub const TARPIT_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for Tarpit {
    fn default() -> Self {
        Self {
            slots: Semaphore::new(TARPIT_SLOTS),
        }
    }
}

impl Tarpit {
    /// Waits [`TARPIT_DELAY`] if a slot is free.
    pub async fn hold(&self) {
        if let Ok(_slot) = self.slots.try_acquire() {
            tokio::time::sleep(TARPIT_DELAY).await;
        }
    }
}

impl Bucket {
    fn level(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_users_are_forgotten_once_many_and_not_scanned_for_on_every_call() {
        let mut users: PerUser<bool> = PerUser::default();
        let user = |n: usize| UserId::parse("user", &format!("u{n}")).unwrap();
        // Every other user is busy (true), the rest idle.
        for n in 0..=PRUNE_ABOVE {
            users.entry(&user(n), |busy| !busy, || n % 2 == 0);
        }
        users.entry(&user(PRUNE_ABOVE + 1), |busy| !busy, || true);
        assert_eq!(users.map.len(), PRUNE_ABOVE / 2 + 2, "the idle are gone");
        // 5,001 kept: the next scan waits until the map has doubled.
        assert_eq!(users.prune_at, 2 * (PRUNE_ABOVE / 2 + 1));
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_requests_and_gets_each_place_back() {
        let in_flight = InFlight::default();
        let alice = UserId::parse("user", "alice").unwrap();
        let bob = UserId::parse("user", "bob").unwrap();
        let held: Vec<_> = (0..REQUESTS_PER_USER)
            .map(|_| in_flight.enter(&alice).unwrap())
            .collect();
        assert!(in_flight.enter(&alice).is_none());
        assert!(in_flight.enter(&bob).is_some(), "others are not affected");
        drop(held);
        assert!(in_flight.enter(&alice).is_some());
        assert_eq!(in_flight.lock().len(), 0, "an idle user is forgotten");
    }

    #[test]
    fn a_user_past_the_burst_is_refused_and_others_are_not() {
        let limiter = RateLimiter::new(0.0, 3.0);
        let alice = UserId::parse("user", "alice").unwrap();
        let bob = UserId::parse("user", "bob").unwrap();
        assert!((0..3).all(|_| limiter.allow(&alice)));
        assert!(!limiter.allow(&alice));
        assert!(limiter.allow(&bob));
    }
}
