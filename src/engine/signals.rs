//! Signals: events without a stream position. This module relays typing;
//! presence (`presence`) is a signal too and shares the broker's signal
//! channel, with state of its own. Signals are never stored, never
//! replayed, never ordered with messages, and a lost one costs nothing but
//! a stale indicator, so they skip the committer and the feed: the
//! sender's node hands one straight to its hub for the conversation's
//! other participants, and tells the other nodes through the broker, whose
//! nodes do the same.
//!
//! **Bounded.** At most one typing signal per user and conversation is
//! relayed every [`TYPING_EVERY`] per node; calls in between are accepted
//! and dropped. The node tells the others in batches, one broker message
//! per [`BATCH_WAIT`] at most (one `pg_notify` per signal queued sends
//! behind typing on the database pool). Signals waiting to go out, and
//! signals from other nodes, wait in bounded queues and are dropped when
//! one is full.

use crate::{
    cluster::broker::Publisher,
    domain::{Body, ConversationId, Event, UserId},
    engine::hub::{Delivery, Hub},
    engine::limits::PerUser,
    store::{Participants, Store},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// At most one typing signal per user and conversation this often.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);
/// Signals from other nodes waiting to be delivered here.
const REMOTE_QUEUE: usize = 4_096;
/// Signals of this node waiting to be told to the others.
const OUTBOX: usize = 4_096;
/// How long a typing signal waits for others to share its broker message.
pub const BATCH_WAIT: Duration = Duration::from_millis(20);
/// The most signals told in one batch (the broker splits it further by bytes).
const MAX_BATCH: usize = 512;

/// The signal relay; cheap to clone.
#[derive(Clone)]
pub struct Signals {
    inner: Arc<Inner>,
}

struct Inner {
    participants: Participants,
    store: Store,
    hub: Hub,
    /// When each (user, conversation) last had a typing signal relayed;
    /// stale entries are forgotten as the rate limiter forgets idle users.
    recent: Mutex<PerUser<Option<Instant>, (UserId, ConversationId)>>,
    remote: mpsc::Sender<Event>,
    outbox: mpsc::Sender<Event>,
}

impl Signals {
    /// Starts the relay of other nodes' signals and the batcher of this
    /// node's, on `tasks`; they run until `closing` or until every handle
    /// is dropped.
    pub fn start(
        participants: Participants,
        store: Store,
        hub: Hub,
        publisher: Publisher,
        closing: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (remote, mut queue) = mpsc::channel(REMOTE_QUEUE);
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        tasks.spawn(tell_others(outgoing, publisher, closing.clone()));
        let signals = Self {
            inner: Arc::new(Inner {
                participants,
                store,
                hub,
                recent: Mutex::default(),
                remote,
                outbox,
            }),
        };
        let relay = Arc::downgrade(&signals.inner);
        tasks.spawn(async move {
            while let Some(event) = until(&closing, queue.recv()).await.flatten() {
                let Some(inner) = relay.upgrade() else { return };
                let signals = Signals { inner };
                if let Err(error) = signals.deliver(&event).await {
                    tracing::debug!(%error, "a signal from another node was dropped");
                }
            }
        });
        signals
    }

    /// `user` types in `conversation` (a participant, checked by the
    /// caller): relayed to the others here and on every node, unless one
    /// was within [`TYPING_EVERY`].
    pub async fn typing(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<(), sqlx::Error> {
        if !self.first_in_window(user, conversation) {
            return Ok(());
        }
        let event = Event::signal(conversation.clone(), user.clone(), Body::Typing);
        self.deliver(&event).await?;
        // A full outbox drops it: a stale indicator elsewhere, no more.
        let _ = self.inner.outbox.try_send(event);
        Ok(())
    }

    /// A signal another node relayed; dropped when the queue is full.
    pub fn remote(&self, event: Event) {
        let _ = self.inner.remote.try_send(event);
    }

    /// Hands `event` to the hub for the conversation's participants other
    /// than its sender and those the sender blocks, if the sender is one as
    /// far as this node knows.
    async fn deliver(&self, event: &Event) -> Result<(), sqlx::Error> {
        let members = self.inner.participants.of(&event.conversation_id).await?;
        if members.binary_search(&event.user_id).is_err() {
            return Ok(());
        }
        // Read each time (at most one signal per user and conversation
        // every TYPING_EVERY, and a block must hold on every node at once),
        // and only among the members: a group's worth of index lookups,
        // however many users the sender blocks.
        let blocked = self
            .inner
            .store
            .blocked_among(&event.user_id, &members)
            .await?;
        let others: Arc<[UserId]> = members
            .iter()
            .filter(|member| **member != event.user_id && blocked.binary_search(member).is_err())
            .cloned()
            .collect();
        self.inner.hub.deliver(Delivery::new(event.clone(), others));
        Ok(())
    }

    /// Whether no typing signal of `user` in `conversation` was relayed
    /// within [`TYPING_EVERY`]; records this one if so.
    fn first_in_window(&self, user: &UserId, conversation: &ConversationId) -> bool {
        let now = Instant::now();
        let fresh =
            |at: &Option<Instant>| at.is_some_and(|at| now.duration_since(at) < TYPING_EVERY);
        let mut recent = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (user.clone(), conversation.clone());
        let last = recent.entry(&key, |at| !fresh(at), || None);
        if fresh(last) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Tells the other nodes of this node's signals, in batches: the first
/// waits up to [`BATCH_WAIT`] for others to join it. Ends when every
/// handle of the relay is dropped.
async fn tell_others(
    mut outgoing: mpsc::Receiver<Event>,
    publisher: Publisher,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = until(&closing, outgoing.recv()).await.flatten() {
        batch.push(first);
        let deadline = Instant::now() + BATCH_WAIT;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, outgoing.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        publisher.typing(&batch).await;
        batch.clear();
    }
}

/// `next`'s output, or `None` once `closing` is cancelled.
async fn until<T>(closing: &CancellationToken, next: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        output = next => Some(output),
        _ = closing.cancelled() => None,
    }
}
