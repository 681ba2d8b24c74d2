//! In-process fan-out of committed messages to live subscriptions.
//!
//! Subscriptions are indexed by user, so delivering a message costs
//! O(recipients' subscriptions), never O(all connections).
//!
//! **Slow-subscriber policy.** Each subscription has a queue bounded by
//! count and by bytes (`hub/queue.rs`). The hub never waits for a
//! subscriber: it offers each message with `try_push`, and a subscription
//! whose queue is full is removed on the spot, its backlog freed at once.
//! Its receiver reports [`Closed::Lagged`] next, so the client reconnects
//! with the last id it saw and the replay fills the rest. A stuck reader
//! thus costs at most one full queue, only until it falls behind, and
//! never delays writers or other subscribers.
//!
//! The hub does not know where events come from, nor who should receive
//! them: the feed calls [`Hub::deliver`] in stream order, one event at a
//! time, with its recipients. A subscription wants either messages only
//! (`SubscribeMessages`, `/api/messages`) or every event (`SubscribeEvents`,
//! `/api/events`).

use crate::domain::{
    Event, UserId,
    moderation::{EndStreams, Ending},
};
use crate::metrics::counted;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

mod queue;

use queue::{Full, Pusher, Taken, Taker};

/// A committed event and the users it goes to, shared by every
/// subscription it is delivered to.
#[derive(Debug)]
pub struct Delivery {
    pub event: Event,
    pub recipients: Arc<[UserId]>,
    /// The event as a transport writes it (the SSE door keeps its JSON
    /// here), made by the first subscription that sends it and reused by the
    /// others: one serialization per fan-out, not per subscriber.
    pub encoded: OnceLock<String>,
}

impl Delivery {
    pub fn new(event: Event, recipients: Arc<[UserId]>) -> Arc<Self> {
        Arc::new(Self {
            event,
            recipients,
            encoded: OnceLock::new(),
        })
    }
}

/// What a subscription receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    Messages,
    Everything,
}

impl Wants {
    /// Whether a subscription that wants this receives `event`.
    pub fn accepts(self, event: &Event) -> bool {
        self == Wants::Everything || event.is_message()
    }
}

/// Why a subscription's queue ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Its queue filled up: the subscriber fell behind.
    Lagged,
    /// Moderation ended it ([`Hub::end_user`]).
    Ended(Ending),
}

/// The fan-out registry; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    queue_capacity: usize,
    queue_bytes: usize,
    lagged: AtomicU64,
}

#[derive(Default)]
struct Registry {
    by_user: HashMap<UserId, Vec<Slot>>,
    next_id: u64,
    count: usize,
}

struct Slot {
    id: u64,
    wants: Wants,
    queue: Pusher<Arc<Delivery>>,
    /// When the token the stream was opened with was issued, for
    /// revocations.
    issued_at: Option<u64>,
    /// Set, before the queue closes, when moderation ends the stream.
    ending: Arc<OnceLock<Ending>>,
}

/// Refusal to open a subscription past the per-user limit.
#[derive(Debug)]
pub struct TooManySubscriptions;

impl Hub {
    /// A hub whose subscriptions each queue at most `queue_capacity`
    /// events and `queue_bytes` bytes of them.
    pub fn new(queue_capacity: usize, queue_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::default(),
                queue_capacity: queue_capacity.max(1),
                queue_bytes: queue_bytes.max(1),
                lagged: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a live subscription for `user`, unless they already hold `limit`.
    pub fn subscribe(
        &self,
        user: &UserId,
        wants: Wants,
        limit: usize,
        issued_at: Option<u64>,
    ) -> Result<Subscription, TooManySubscriptions> {
        let (pusher, taker) = queue::queue(self.inner.queue_capacity, self.inner.queue_bytes);
        let ending = Arc::new(OnceLock::new());
        let mut registry = self.lock();
        if registry.by_user.get(user).map_or(0, Vec::len) >= limit {
            return Err(TooManySubscriptions);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.count += 1;
        registry
            .by_user
            .entry(user.clone())
            // Room for one: most users hold one stream, and a `Vec` would
            // start with room for four.
            .or_insert_with(|| Vec::with_capacity(1))
            .push(Slot {
                id,
                wants,
                queue: pusher,
                issued_at,
                ending: ending.clone(),
            });
        Ok(Subscription {
            queue: taker,
            ending,
            registration: Registration {
                hub: self.clone(),
                user: user.clone(),
                id,
            },
        })
    }

    /// Offers `delivery` to every subscription of its recipients that wants
    /// it, never waiting; returns how many queued it.
    pub fn deliver(&self, delivery: Arc<Delivery>) -> usize {
        // What one more queued event holds: the event, and the JSON the SSE
        // door keeps beside it (at most about twice the content, since
        // content has no control characters to escape).
        let bytes = 2 * delivery.event.approximate_bytes();
        let mut registry = self.lock();
        let mut removed = 0;
        let mut queued = 0;
        for user in delivery.recipients.iter() {
            let Some(slots) = registry.by_user.get_mut(user) else {
                continue;
            };
            let before = slots.len();
            // A full queue removes its slot: the lag policy above.
            slots.retain(|slot| {
                if !slot.wants.accepts(&delivery.event) {
                    return true;
                }
                match slot.queue.try_push(delivery.clone(), bytes) {
                    Ok(()) => {
                        queued += 1;
                        true
                    }
                    Err(Full) => false,
                }
            });
            removed += before - slots.len();
            if slots.is_empty() {
                registry.by_user.remove(user);
            }
        }
        registry.count -= removed;
        if removed > 0 {
            self.inner
                .lagged
                .fetch_add(removed as u64, Ordering::Relaxed);
            tracing::info!(removed, "dropped subscriptions that fell behind");
        }
        queued
    }

    /// Ends `user`'s subscriptions that `end` names (those opened with a
    /// token issued before its cut-off, or all): each is removed now, and
    /// its receiver reports [`Closed::Ended`] next, before anything still
    /// queued. Returns how many ended.
    pub fn end_user(&self, user: &UserId, end: &EndStreams) -> usize {
        let ended: Vec<Slot> = {
            let mut registry = self.lock();
            let Some(slots) = registry.by_user.get_mut(user) else {
                return 0;
            };
            let issued_before = |slot: &Slot| match end.issued_before {
                None => true,
                Some(before) => slot
                    .issued_at
                    .is_none_or(|at| i64::try_from(at).unwrap_or(i64::MAX) < before),
            };
            let (ended, kept): (Vec<Slot>, Vec<Slot>) =
                std::mem::take(slots).into_iter().partition(issued_before);
            *slots = kept;
            if slots.is_empty() {
                registry.by_user.remove(user);
            }
            registry.count -= ended.len();
            ended
        };
        for slot in &ended {
            let _ = slot.ending.set(end.ending.clone());
        }
        // Dropping the pushers closes the queues and wakes their receivers,
        // outside the lock.
        ended.len()
    }

    /// Open subscriptions, across all users.
    pub fn subscription_count(&self) -> usize {
        self.lock().count
    }

    /// Subscriptions dropped so far because they fell behind.
    /// Registers what the hub counts.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        counted(
            registry,
            "subscriptions_dropped_lagging",
            "Streams dropped because their queue filled",
            self.lagged_total(),
        );
    }

    pub fn lagged_total(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry holds no invariant a panicking holder could break
        // half-way, so a poisoned lock is still safe to use.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unregister(&self, user: &UserId, id: u64) {
        let mut registry = self.lock();
        let Some(slots) = registry.by_user.get_mut(user) else {
            return;
        };
        let before = slots.len();
        slots.retain(|slot| slot.id != id);
        let removed = before - slots.len();
        if slots.is_empty() {
            registry.by_user.remove(user);
        }
        registry.count -= removed;
    }
}

/// A live subscription: messages for its user, in stream order.
pub struct Subscription {
    queue: Taker<Arc<Delivery>>,
    ending: Arc<OnceLock<Ending>>,
    registration: Registration,
}

impl Subscription {
    /// The next message, or why there will be none.
    pub async fn recv(&mut self) -> Result<Arc<Delivery>, Closed> {
        let taken = self.queue.take().await;
        self.ended()?;
        taken.ok_or(Closed::Lagged)
    }

    /// The next message if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Arc<Delivery>, Closed>> {
        if let Err(ended) = self.ended() {
            return Some(Err(ended));
        }
        match self.queue.try_take() {
            Taken::Item(delivery) => Some(Ok(delivery)),
            Taken::Empty => None,
            Taken::Closed => Some(Err(Closed::Lagged)),
        }
    }

    /// Whether moderation ended the subscription: that comes before
    /// anything still queued.
    fn ended(&self) -> Result<(), Closed> {
        match self.ending.get() {
            Some(ending) => Err(Closed::Ended(ending.clone())),
            None => Ok(()),
        }
    }

    pub fn user(&self) -> &UserId {
        &self.registration.user
    }
}

/// Removes the subscription's slot when the subscription is dropped, so no
/// registry entry outlives its client.
struct Registration {
    hub: Hub,
    user: UserId,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Body, ConversationId, Position};

    fn user(name: &str) -> UserId {
        UserId::parse("user", name).unwrap()
    }

    fn delivery(position: i64, recipients: &[&str]) -> Arc<Delivery> {
        let event = Event {
            position: Position(position),
            conversation_id: ConversationId::generate(),
            user_id: user("alice"),
            created_at_micros: 0,
            body: Body::Message {
                content: "hi".into(),
                reply_to: None,
                edited_at_micros: None,
                deleted: false,
                system: false,
            },
        };
        Delivery::new(event, recipients.iter().map(|name| user(name)).collect())
    }

    #[tokio::test]
    async fn a_full_queue_ends_only_that_subscription_and_frees_its_backlog() {
        let hub = Hub::new(2, usize::MAX);
        let mut slow = hub
            .subscribe(&user("bob"), Wants::Messages, 10, None)
            .unwrap();
        let mut fast = hub
            .subscribe(&user("bob"), Wants::Messages, 10, None)
            .unwrap();
        for position in 1..=3 {
            hub.deliver(delivery(position, &["bob"]));
            if position < 3 {
                assert_eq!(
                    fast.recv().await.unwrap().event.position,
                    Position(position)
                );
            }
        }
        assert_eq!(slow.recv().await.unwrap_err(), Closed::Lagged);
        assert_eq!(fast.recv().await.unwrap().event.position, Position(3));
        assert_eq!(hub.lagged_total(), 1);
        assert_eq!(hub.subscription_count(), 1);
    }

    #[tokio::test]
    async fn only_recipients_receive_and_dropping_unregisters() {
        let hub = Hub::new(8, usize::MAX);
        let mut bob = hub
            .subscribe(&user("bob"), Wants::Messages, 10, None)
            .unwrap();
        let mut carol = hub
            .subscribe(&user("carol"), Wants::Messages, 10, None)
            .unwrap();
        assert_eq!(hub.deliver(delivery(1, &["alice", "bob"])), 1);
        assert_eq!(bob.recv().await.unwrap().event.position, Position(1));
        assert!(carol.try_recv().is_none(), "carol is not a recipient");
        assert_eq!(hub.subscription_count(), 2);
        drop(carol);
        drop(bob);
        assert_eq!(hub.subscription_count(), 0);
    }

    #[tokio::test]
    async fn a_message_stream_skips_other_events_and_an_event_stream_takes_them() {
        let hub = Hub::new(8, usize::MAX);
        let mut messages = hub
            .subscribe(&user("bob"), Wants::Messages, 10, None)
            .unwrap();
        let mut events = hub
            .subscribe(&user("bob"), Wants::Everything, 10, None)
            .unwrap();
        let mut read = delivery(1, &["bob"]);
        Arc::get_mut(&mut read).unwrap().event.body = Body::Read(Position(1));
        assert_eq!(hub.deliver(read), 1);
        assert_eq!(hub.deliver(delivery(2, &["bob"])), 2);
        assert_eq!(messages.recv().await.unwrap().event.position, Position(2));
        assert_eq!(events.recv().await.unwrap().event.position, Position(1));
        assert_eq!(events.recv().await.unwrap().event.position, Position(2));
    }

    #[tokio::test]
    async fn ending_a_user_ends_their_streams_before_what_is_queued_and_no_one_elses() {
        let hub = Hub::new(8, usize::MAX);
        let mut old = hub
            .subscribe(&user("bob"), Wants::Messages, 10, Some(10))
            .unwrap();
        let mut new = hub
            .subscribe(&user("bob"), Wants::Messages, 10, Some(20))
            .unwrap();
        let mut unsaid = hub
            .subscribe(&user("bob"), Wants::Messages, 10, None)
            .unwrap();
        let mut carol = hub
            .subscribe(&user("carol"), Wants::Messages, 10, None)
            .unwrap();
        hub.deliver(delivery(1, &["bob", "carol"]));
        let revoked = EndStreams {
            ending: Ending::Revoked,
            issued_before: Some(20),
        };
        assert_eq!(
            hub.end_user(&user("bob"), &revoked),
            2,
            "the older token's, and the one that does not say"
        );
        assert_eq!(
            old.recv().await.unwrap_err(),
            Closed::Ended(Ending::Revoked)
        );
        assert_eq!(
            unsaid.recv().await.unwrap_err(),
            Closed::Ended(Ending::Revoked)
        );
        assert_eq!(new.recv().await.unwrap().event.position, Position(1));
        let banned = EndStreams {
            ending: Ending::Banned("spam".into()),
            issued_before: None,
        };
        assert_eq!(hub.end_user(&user("bob"), &banned), 1);
        assert_eq!(
            new.try_recv().unwrap().unwrap_err(),
            Closed::Ended(Ending::Banned("spam".into()))
        );
        assert_eq!(carol.recv().await.unwrap().event.position, Position(1));
        assert_eq!(hub.subscription_count(), 1);
    }

    #[test]
    fn a_user_cannot_open_more_than_the_limit() {
        let hub = Hub::new(8, usize::MAX);
        let _first = hub
            .subscribe(&user("bob"), Wants::Messages, 1, None)
            .unwrap();
        assert!(
            hub.subscribe(&user("bob"), Wants::Messages, 1, None)
                .is_err()
        );
    }
}
