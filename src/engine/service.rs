//! The core every transport adapts: conversations, messages and
//! subscriptions, over the store, the feed and the hub. It knows nothing of
//! gRPC or HTTP; both fronts call these same functions, so they cannot drift.

use crate::{
    auth::{Claims, Guard},
    cluster::broker::{self, Broker, BrokerCounts},
    domain::{
        Body, Content, Conversation, ConversationId, Emoji, Event, IdempotencyKey, Message,
        Position, UserId, now_micros,
        rules::{self, Authority},
    },
    engine::commit::{Changing, Committed, Committer},
    engine::feed::Feed,
    engine::hook::{PublishHook, Verdict},
    engine::hub::{Hub, Wants},
    engine::limits::{Limits, RateLimiter, Tarpit, UserPermits},
    engine::moderation::Moderator,
    engine::presence::{Presence, Seen, Timing},
    engine::signals::Signals,
    engine::stream::{EventStream, ReplaySource},
    engine::webhooks::Webhooks,
    error::Error,
    metrics::Metrics,
    startup::{config::ServeConfig, start::StartError},
    store::{ChangeRequest, Cursor, MessageChange, NewMessage, Page, Participants, Store},
};
use prometheus_client::registry::Registry;
use std::{collections::BTreeSet, sync::Arc, time::Duration};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Page size of `ListMessages` and `ListConversations` when the client
/// sets none.
pub const DEFAULT_PAGE_SIZE: i32 = 50;
/// Bytes of an answer that one call of the call rate pays for.
pub const BYTES_PER_CALL: usize = 32 * 1024;
/// The largest page `ListMessages` and `ListConversations` return.
pub const MAX_PAGE_SIZE: i32 = 500;
/// Calls of the call rate that adding one user the caller shares no
/// conversation with costs, on top of the group's size (a known user costs
/// 1/50): five times as much.
pub const STRANGER_COST: f64 = 0.1;
/// Users one user may block.
pub const MAX_BLOCKS: usize = 10_000;

/// The messaging core; cheap to clone.
#[derive(Clone)]
pub struct Herald {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    participants: Participants,
    hub: Hub,
    feed: Feed,
    broker: BrokerCounts,
    committer: Committer,
    signals: Signals,
    presence: Presence,
    metrics: Metrics,
    limits: Limits,
    rate: RateLimiter,
    /// Expensive calls per user (see [`Herald::meter`]).
    calls: RateLimiter,
    /// Each user's share of the database.
    permits: UserPermits,
    /// Where refusals for going over a rate wait.
    tarpit: Tarpit,
    /// Database reads of resuming streams at once, across the node.
    replay_permits: Arc<Semaphore>,
    /// Messages per replay page: about `stream::REPLAY_PAGE_BYTES` of content.
    replay_page: usize,
    /// Streams end, the feed, presence and the broker stop.
    shutdown: CancellationToken,
    /// The committer and the typing relay stop (at [`Herald::close`]).
    closing: CancellationToken,
    /// Every task the core started, awaited at [`Herald::close`].
    tasks: TaskTracker,
    /// Bans, revocations and service keys on this node.
    moderator: Moderator,
    /// Admin calls per service key.
    admin_calls: RateLimiter,
    /// Webhook delivery on this node.
    webhooks: Webhooks,
    /// Firehose streams open on this node, per service key (see
    /// [`admin::FIREHOSES_PER_KEY`]); one entry per key that ever opened one.
    firehoses: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Semaphore>>>,
    /// The hook before commit, if configured.
    hook: Option<PublishHook>,
}

mod admin;

/// Where the broker hands what other nodes tell: their commits to the
/// feed, their typing to the relay, their users to presence.
struct Heard {
    feed: Feed,
    signals: Signals,
    presence: Presence,
    moderator: Moderator,
}

impl broker::Heard for Heard {
    fn head(&self, head: Position) {
        self.feed.head(head);
    }

    fn event(&self, event: Event) {
        self.feed.remote(event);
    }

    fn lost(&self) {
        self.feed.catch_up();
    }

    fn typing(&self, events: Vec<Event>) {
        for event in events {
            self.signals.remote(event);
        }
    }

    fn presence(
        &self,
        origin: Arc<str>,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        interval: Option<Duration>,
    ) {
        self.presence.remote(origin, online, offline, interval);
    }

    fn moderation(&self, _seq: i64) {
        self.moderator.nudge();
    }
}

impl Herald {
    /// Connects and migrates the database, connects the broker, and starts
    /// the core's parts on them. Streams end when `shutdown` is cancelled;
    /// [`close`](Self::close) then stops the rest.
    pub async fn start(
        config: &ServeConfig,
        guard: Arc<Guard>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let database_url = config.database_url();
        let store = Store::connect(&database_url)
            .await
            .map_err(StartError::Database)?;
        let broker = Broker::connect(&config.broker()?, &store, &database_url).await?;
        let publisher = broker.publisher();
        let broker_counts = broker.counts();
        let limits = config.limits();
        let tasks = TaskTracker::new();
        let closing = CancellationToken::new();
        let hub = Hub::new(limits.subscription_queue, limits.subscription_queue_bytes);
        let metrics = Metrics::default();
        let participants = Participants::new(store.clone());
        let feed = Feed::start(
            store.clone(),
            participants.clone(),
            hub.clone(),
            metrics.clone(),
            shutdown.clone(),
            &tasks,
        )
        .await
        .map_err(StartError::Database)?;
        let rate = RateLimiter::new(limits.messages_per_second, limits.message_burst);
        let signals = Signals::start(
            participants.clone(),
            store.clone(),
            hub.clone(),
            publisher.clone(),
            closing.clone(),
            &tasks,
        );
        let timing = Timing {
            grace: limits.presence_grace,
            interval: limits.presence_interval,
        };
        let presence = Presence::start(
            store.clone(),
            hub.clone(),
            publisher.clone(),
            timing,
            shutdown.clone(),
            &tasks,
        );
        let committer = Committer::start(
            store.clone(),
            feed.clone(),
            publisher.clone(),
            metrics.clone(),
            closing.clone(),
            &tasks,
        )
        .map_err(StartError::Thread)?;
        let moderator = Moderator::start(
            store.clone(),
            guard,
            hub.clone(),
            publisher.clone(),
            shutdown.clone(),
            &tasks,
        )
        .await
        .map_err(StartError::Database)?;
        let webhooks = Webhooks::start(
            store.clone(),
            feed.delivered(),
            config.webhook_allow_private,
            shutdown.clone(),
            &tasks,
        );
        let heard = Heard {
            feed: feed.clone(),
            signals: signals.clone(),
            presence: presence.clone(),
            moderator: moderator.clone(),
        };
        broker.start(Arc::new(heard), shutdown.clone(), &tasks);
        tasks.spawn(store.clone().tend(closing.clone()));
        let inner = Inner {
            store,
            participants,
            hub,
            committer,
            signals,
            presence,
            metrics,
            feed,
            broker: broker_counts,
            replay_permits: Arc::new(Semaphore::new(limits.replay_concurrency.max(1))),
            replay_page: crate::engine::stream::page_size(limits.max_content_bytes),
            calls: RateLimiter::new(limits.calls_per_second, limits.call_burst),
            // A backend speaks for many users: it may call as often as one
            // user may send.
            admin_calls: RateLimiter::new(limits.messages_per_second, limits.message_burst),
            moderator,
            webhooks,
            firehoses: Default::default(),

            hook: config.publish_hook()?,
            permits: UserPermits::new(limits.user_concurrency),
            tarpit: Tarpit::default(),
            limits,
            rate,
            shutdown,
            closing,
            tasks,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Ready to serve: not shutting down, and the database answers within
    /// `patience`.
    pub async fn ready(&self, patience: Duration) -> Result<(), Error> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        match tokio::time::timeout(patience, self.inner.store.head()).await {
            Ok(answer) => answer.map(|_| ()).map_err(Error::from),
            Err(_) => Err(Error::from(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Stops every task of the core and closes the database, once the doors
    /// have drained (no request is in flight any more): the feed and the
    /// presence tracker (which says goodbye to the other nodes) have been
    /// stopping since shutdown began; the committer and the typing relay
    /// stop now.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner.closing.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.store.close().await;
    }

    /// The limits the core was started with.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Registers what the core and its parts count: its own counters, the
    /// hub's, the feed's and the broker link's.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
        self.inner.hub.register_metrics(registry);
        self.inner.feed.register_metrics(registry);
        self.inner.broker.register_metrics(registry);
        let webhooks = self.inner.webhooks.counts();
        let count = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        crate::metrics::counted(
            registry,
            "webhook_events_delivered",
            "Events delivered to webhooks (a 2xx answered)",
            count(&webhooks.delivered_events),
        );
        crate::metrics::counted(
            registry,
            "webhook_batches_delivered",
            "Batches delivered to webhooks",
            count(&webhooks.batches),
        );
        crate::metrics::counted(
            registry,
            "webhook_failures",
            "Webhook deliveries that failed (retried later)",
            count(&webhooks.failures),
        );
    }

    /// Whether each of `user_ids` is online, for those who share a
    /// conversation with the caller (the others are left out).
    pub async fn get_presence(
        &self,
        caller: &UserId,
        user_ids: &[String],
    ) -> Result<Vec<(UserId, Option<Seen>)>, Error> {
        let users = self.asked_about(user_ids)?;
        let _metered = self.meter(caller, 1.0 + users.len() as f64 / 50.0).await?;
        let shared = self.inner.store.shared_with(caller, &users, true).await?;
        let asked: Vec<UserId> = users
            .into_iter()
            .filter(|user| shared.binary_search(user).is_ok())
            .collect();
        Ok(self.inner.presence.of(&asked))
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Meters an expensive call by `caller` costing `cost`: it waits for
    /// one of the user's few places at the database, held while the
    /// returned guard lives, and is refused there if the user is past their
    /// call rate. Every user thus gets their share of the pool, whatever
    /// one user sends at once.
    ///
    /// The rate is read once a place is had, not before: a call charged
    /// after the fact for a large answer ([`Self::charge_for_bytes`]) is
    /// then paid before the calls queued behind it are let in, so calls
    /// sent at once are admitted a few at a time (the user's places), not
    /// as many as the bucket held when they arrived.
    pub async fn meter(&self, caller: &UserId, cost: f64) -> Result<Metered, Error> {
        let place = self.inner.permits.acquire(caller).await;
        if !self.inner.calls.allow_n(caller, cost) {
            drop(place);
            return Err(self
                .over_rate("request rate limit reached; slow down")
                .await);
        }
        Ok(Metered { _place: place })
    }

    /// The refusal for going over a rate, answered late (see [`Tarpit`]).
    async fn over_rate(&self, message: &str) -> Error {
        self.inner.tarpit.hold().await;
        Error::ResourceExhausted(message.into())
    }

    /// Redeems the stream ticket in `claims`, if any: a ticket opens one
    /// stream, once, on any node.
    pub async fn redeem(&self, claims: &Claims) -> Result<(), Error> {
        let Some(ticket) = &claims.ticket else {
            return Ok(());
        };
        let now = now_micros() / 1_000_000;
        let expires_at = i64::try_from(ticket.expires_at).unwrap_or(i64::MAX);
        match ticket.id.is_empty() {
            false
                if self
                    .inner
                    .store
                    .redeem_ticket(&ticket.id, expires_at, now)
                    .await? =>
            {
                Ok(())
            }
            _ => {
                tracing::debug!("stream ticket refused: used before");
                Err(Error::Unauthenticated)
            }
        }
    }

    /// Creates a conversation of `caller` and `others`. A pair is
    /// found-or-created; returns whether it was created.
    pub async fn create_conversation(
        &self,
        caller: &UserId,
        others: &[String],
    ) -> Result<(Conversation, bool), Error> {
        let mut members = BTreeSet::from([caller.clone()]);
        for other in others {
            members.insert(UserId::parse("participant_ids", other)?);
        }
        if members.len() < 2 {
            return Err(Error::invalid(
                "a conversation needs at least one other participant",
            ));
        }
        rules::within_cap(members.len(), self.inner.limits.max_participants)?;
        // A group costs by its size: a thousand members is a heavy write.
        let _metered = self
            .meter(caller, 1.0 + members.len() as f64 / 50.0)
            .await?;
        let members: Vec<UserId> = members.into_iter().collect();
        let others: Vec<UserId> = members.iter().filter(|m| *m != caller).cloned().collect();
        self.may_add(caller, &others).await?;
        // User ids cannot contain control characters, so "\n" joins a pair
        // unambiguously.
        let pair_key = (members.len() == 2).then(|| format!("{}\n{}", members[0], members[1]));
        // A group has a creator, who may remove others; a pair has none.
        let creator = pair_key.is_none().then_some(caller);
        let (id, created) = self
            .inner
            .store
            .create_conversation(&members, pair_key.as_deref(), creator, caller, now_micros())
            .await?;
        Ok((self.conversation(caller, &id).await?, created))
    }

    /// A page of the caller's conversations, most recently active first,
    /// and the token of the next page (empty after the last).
    pub async fn list_conversations(
        &self,
        caller: &UserId,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Conversation>, String), Error> {
        let limit = page_limit(page_size)?;
        let after = match page_token.is_empty() {
            true => None,
            false => Some(parse_page_token(page_token)?),
        };
        let _metered = self.meter(caller, 1.0).await?;
        let (page, next) = self
            .inner
            .store
            .conversation_page(caller, after.as_ref(), limit as usize)
            .await?;
        self.charge_for_bytes(
            caller,
            page.iter().map(Conversation::approximate_bytes).sum(),
        );
        let next = next.map_or_else(String::new, |cursor| {
            format!("{}.{}", cursor.activity, cursor.id)
        });
        Ok((page, next))
    }

    /// Sends a message: checked here, then persisted and published by the
    /// committer (`commit`, the one place that does both).
    ///
    /// A non-empty `client_message_id` makes the call retry-safe: sending the
    /// same key again returns the original message, published once.
    pub async fn create_message(
        &self,
        caller: &UserId,
        conversation_id: &str,
        content: String,
        client_message_id: &str,
        reply_to_id: &str,
    ) -> Result<Message, Error> {
        // Every attempt counts, refused ones too: bad input is no way
        // around the rate.
        if !self.inner.rate.allow(caller) {
            return Err(self
                .over_rate("message rate limit reached; slow down")
                .await);
        }
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let content = Content::parse(content, self.inner.limits.max_content_bytes)?;
        let key = match client_message_id.is_empty() {
            true => None,
            false => Some(IdempotencyKey::parse(
                "client_message_id",
                client_message_id,
            )?),
        };
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        self.may_send(caller, &conversation_id).await?;
        let reply_to = match reply_to_id.is_empty() {
            true => None,
            false => Some(
                self.message_in(caller, &conversation_id, "reply_to_id", reply_to_id)
                    .await?,
            ),
        };
        // With a hook, what was stored may be its replacement: a retry is
        // the same message whatever its content.
        let sent = self.inner.hook.is_none().then_some(&content);
        if let Some(key) = &key
            && let Some(original) = self.inner.store.message_by_key(caller, key).await?
        {
            return same_message(original, &conversation_id, sent);
        }
        let content = self.hooked(&conversation_id, caller, content).await?;
        let sent = self.inner.hook.is_none().then_some(&content);
        let new = NewMessage {
            conversation_id: conversation_id.clone(),
            user_id: caller.clone(),
            content: content.clone(),
            key,
            reply_to,
            system: false,
            offline: self.offline_in(&conversation_id).await?,
            created_at_micros: now_micros(),
        };
        match self.inner.committer.commit(new).await? {
            Committed::New(message) => Ok(message),
            Committed::Existing(original) => same_message(original, &conversation_id, sent),
        }
    }

    /// `content` as the publish hook decides, if one is configured.
    async fn hooked(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        content: Content,
    ) -> Result<Content, Error> {
        let Some(hook) = &self.inner.hook else {
            return Ok(content);
        };
        let max = self.inner.limits.max_content_bytes;
        Ok(match hook.ask(conversation, user, &content, max).await? {
            Verdict::Allow => content,
            Verdict::Replace(replaced) => replaced,
        })
    }

    /// Replaces the content of the caller's message `message_id` (under
    /// the rules and the rate of sending): an `edit` event for those who saw
    /// it.
    pub async fn edit_message(
        &self,
        caller: &UserId,
        conversation_id: &str,
        message_id: &str,
        content: String,
    ) -> Result<Message, Error> {
        if !self.inner.rate.allow(caller) {
            return Err(self
                .over_rate("message rate limit reached; slow down")
                .await);
        }
        let content = Content::parse(content, self.inner.limits.max_content_bytes)?;
        let conversation = ConversationId::parse("conversation_id", conversation_id)?;
        let content = self.hooked(&conversation, caller, content).await?;
        let change = |message| MessageChange::Edit {
            message,
            content: content.clone(),
        };
        self.change_message(caller, conversation_id, message_id, change)
            .await
    }

    /// Deletes the caller's message `message_id`: its content erased, a
    /// tombstone left, a `delete` event for those who saw it.
    pub async fn delete_message(
        &self,
        caller: &UserId,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<Message, Error> {
        let _metered = self.meter(caller, 1.0).await?;
        let change = |message| MessageChange::Delete { message };
        self.change_message(caller, conversation_id, message_id, change)
            .await
    }

    /// Gives (`added`) or takes back the caller's reaction `emoji` to
    /// message `message_id`: a `reaction` event for those who saw it.
    pub async fn react(
        &self,
        caller: &UserId,
        conversation_id: &str,
        message_id: &str,
        emoji: &str,
        added: bool,
    ) -> Result<Message, Error> {
        let _metered = self.meter(caller, 1.0).await?;
        let emoji = Emoji::parse(emoji)?;
        let change = |message| MessageChange::React {
            message,
            emoji: emoji.clone(),
            added,
        };
        self.change_message(caller, conversation_id, message_id, change)
            .await
    }

    /// Commits the change `to` makes of message `message_id`, which the
    /// caller must see in `conversation_id`, and answers the message as the
    /// caller now sees it.
    async fn change_message(
        &self,
        caller: &UserId,
        conversation_id: &str,
        message_id: &str,
        to: impl FnOnce(Position) -> MessageChange,
    ) -> Result<Message, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let position = self
            .message_in(caller, &conversation_id, "message_id", message_id)
            .await?;
        let event = self
            .change(caller, Authority::Member, &conversation_id, to(position))
            .await?;
        // Every member who saw the message receives the change: the
        // caller's call rate pays for that fan-out by the group's size, as
        // for a membership change (an edit storm in a large group is slowed,
        // not only counted against the send rate).
        if event.is_some() {
            let members = self.inner.participants.of(&conversation_id).await?.len();
            self.inner.calls.charge(caller, members as f64 / 50.0);
        }
        let store = &self.inner.store;
        match event.map(|event| event.body) {
            // The commit read the message back: only its reactions are
            // missing (none on a tombstone, and no read then).
            Some(Body::Edited(message) | Body::Deleted(message)) => {
                let mut message = [*message];
                store.with_reactions(caller, &mut message).await?;
                let [message] = message;
                Ok(message)
            }
            _ => store
                .message(caller, &conversation_id, position)
                .await?
                .ok_or(Error::NotFound("message")),
        }
    }

    /// One page of a conversation's history, oldest first.
    pub async fn list_messages(
        &self,
        caller: &UserId,
        conversation_id: &str,
        page_size: i32,
        before_id: &str,
        after_id: &str,
    ) -> Result<Vec<Message>, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let limit = page_limit(page_size)?;
        let _metered = self.meter(caller, 1.0).await?;
        self.authorize(caller, &conversation_id).await?;
        let page = match (before_id.is_empty(), after_id.is_empty()) {
            (true, true) => Page::Before(None),
            (false, true) => Page::Before(Some(
                self.message_in(caller, &conversation_id, "before_id", before_id)
                    .await?,
            )),
            (true, false) => Page::After(
                self.message_in(caller, &conversation_id, "after_id", after_id)
                    .await?,
            ),
            (false, false) => return Err(Error::invalid("give before_id or after_id, not both")),
        };
        let store = &self.inner.store;
        let mut messages = store
            .messages(caller, &conversation_id, page, i64::from(limit))
            .await?;
        store.with_reactions(caller, &mut messages).await?;
        let reactions = |m: &Message| {
            m.reactions
                .iter()
                .map(|r| r.emoji.len() + 16)
                .sum::<usize>()
        };
        let bytes = messages
            .iter()
            .map(|m| m.content.len() + reactions(m) + 200);
        self.charge_for_bytes(caller, bytes.sum());
        Ok(messages)
    }

    /// Charges `caller`'s call rate for a large answer: one call per
    /// [`BYTES_PER_CALL`] beyond the first, so that listing giant
    /// conversations or long histories is paid for by its size.
    fn charge_for_bytes(&self, caller: &UserId, bytes: usize) {
        let extra = (bytes / BYTES_PER_CALL) as f64;
        if extra > 0.0 {
            self.inner.calls.charge(caller, extra);
        }
    }

    /// Moves the caller's read mark forward to `message_id`; every
    /// participant's event stream hears of it (a mark that does not move
    /// says nothing).
    pub async fn mark_read(
        &self,
        caller: &UserId,
        conversation_id: &str,
        message_id: &str,
    ) -> Result<Conversation, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let _metered = self.meter(caller, 1.0).await?;
        self.authorize(caller, &conversation_id).await?;
        let position = self
            .message_in(caller, &conversation_id, "message_id", message_id)
            .await?;
        self.change(
            caller,
            Authority::Member,
            &conversation_id,
            ChangeRequest::Read(position),
        )
        .await?;
        self.conversation(caller, &conversation_id).await
    }

    /// Tells the conversation's other participants that the caller is
    /// typing (coalesced: see `signals`). Every call counts against the
    /// caller's send rate, so typing cannot be flooded either.
    pub async fn set_typing(&self, caller: &UserId, conversation_id: &str) -> Result<(), Error> {
        if !self.inner.rate.allow(caller) {
            return Err(self
                .over_rate("message rate limit reached; slow down")
                .await);
        }
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        self.may_send(caller, &conversation_id).await?;
        self.inner
            .signals
            .typing(caller, &conversation_id)
            .await
            .map_err(Error::from)
    }

    /// Adds `user_ids` to a group the caller is in.
    pub async fn add_participants(
        &self,
        caller: &UserId,
        conversation_id: &str,
        user_ids: &[String],
    ) -> Result<Conversation, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let users = self.to_add(user_ids)?;
        // Costs by its size, like creating a group.
        let _metered = self.meter(caller, 1.0 + users.len() as f64 / 50.0).await?;
        self.may_add(caller, &users).await?;
        self.change(
            caller,
            Authority::Member,
            &conversation_id,
            ChangeRequest::Add(users),
        )
        .await?;
        self.conversation(caller, &conversation_id).await
    }

    /// Removes `user_id` from a group: the caller themselves (leaving), or
    /// anyone when the caller created it. A caller who left gets the group
    /// as it is after they left.
    pub async fn remove_participant(
        &self,
        caller: &UserId,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Conversation, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let user = UserId::parse("user_id", user_id)?;
        let _metered = self.meter(caller, 1.0).await?;
        let event = self
            .change(
                caller,
                Authority::Member,
                &conversation_id,
                ChangeRequest::Remove(user.clone()),
            )
            .await?;
        match event.map(|event| event.body) {
            Some(Body::Membership(change)) if &user == caller => Ok(Conversation {
                id: conversation_id,
                participant_ids: change.members,
                last_message: None,
                unread_count: 0,
                created_at_micros: change.conversation_created_at_micros,
                creator_id: change.creator,
            }),
            _ => self.conversation(caller, &conversation_id).await,
        }
    }

    /// The users a presence question names: at most a group's worth.
    fn asked_about(&self, user_ids: &[String]) -> Result<Vec<UserId>, Error> {
        let max = self.inner.limits.max_participants;
        if user_ids.len() > max {
            return Err(Error::invalid(format!("at most {max} user_ids")));
        }
        user_ids
            .iter()
            .map(|id| UserId::parse("user_ids", id))
            .collect()
    }

    /// The users an addition names: some, and (counted before parsing, so
    /// more than a group holds is refused unread) at most a group's worth.
    fn to_add(&self, user_ids: &[String]) -> Result<Vec<UserId>, Error> {
        if user_ids.is_empty() {
            return Err(Error::invalid("user_ids must not be empty"));
        }
        rules::within_cap(user_ids.len(), self.inner.limits.max_participants)?;
        user_ids
            .iter()
            .map(|id| UserId::parse("user_ids", id))
            .collect()
    }

    /// Whether `caller` may put `users` in a conversation: none of them
    /// blocks the caller, and the caller pays [`STRANGER_COST`] more of
    /// the call rate for each one they share no conversation with (adding
    /// strangers in bulk is how a spammer fills conversation lists).
    async fn may_add(&self, caller: &UserId, users: &[UserId]) -> Result<(), Error> {
        let store = &self.inner.store;
        if store.blocked_by_any(users, caller).await? {
            return Err(Error::Forbidden("a user you named has blocked you"));
        }
        let known = store.shared_with(caller, users, false).await?;
        let strangers = users
            .iter()
            .filter(|user| known.binary_search(user).is_err())
            .count();
        let cost = strangers as f64 * STRANGER_COST;
        if cost > 0.0 && !self.inner.calls.allow_n(caller, cost) {
            return Err(self
                .over_rate("adding users you share no conversation with is limited; slow down")
                .await);
        }
        Ok(())
    }

    /// Blocks `user_id` for the caller: they can no longer put the caller
    /// in a conversation, and hear none of the caller's presence or typing.
    pub async fn block_user(&self, caller: &UserId, user_id: &str) -> Result<(), Error> {
        let user = UserId::parse("user_id", user_id)?;
        if &user == caller {
            return Err(Error::invalid("you cannot block yourself"));
        }
        let _metered = self.meter(caller, 1.0).await?;
        self.inner
            .store
            .block(caller, &user, MAX_BLOCKS, now_micros())
            .await
    }

    /// Lifts the caller's block of `user_id`, if any.
    pub async fn unblock_user(&self, caller: &UserId, user_id: &str) -> Result<(), Error> {
        let user = UserId::parse("user_id", user_id)?;
        let _metered = self.meter(caller, 1.0).await?;
        Ok(self.inner.store.unblock(caller, &user).await?)
    }

    /// The users the caller blocks, sorted.
    pub async fn list_blocked(&self, caller: &UserId) -> Result<Vec<UserId>, Error> {
        let _metered = self.meter(caller, 1.0).await?;
        let blocked = self.inner.store.blocked_by(caller).await?;
        self.charge_for_bytes(caller, blocked.iter().map(|id| id.as_str().len() + 3).sum());
        Ok(blocked)
    }

    /// Commits a change through the committer, after which every node's
    /// feed applies it at its position.
    async fn change(
        &self,
        caller: &UserId,
        by: Authority,
        id: &ConversationId,
        request: impl Into<Changing>,
    ) -> Result<Option<Event>, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let max = self.inner.limits.max_participants;
        let event = self
            .inner
            .committer
            .change(id.clone(), caller.clone(), by, request.into(), max)
            .await?;
        // A change goes to every member with the whole member list: the
        // caller's call rate pays for that fan-out by the group's size, so
        // adding and removing someone over and over in a large group is
        // slowed like creating large groups is.
        if let Some(Body::Membership(change)) = event.as_ref().map(|event| &event.body) {
            let members = change.members.len() + change.removed.len();
            self.inner.calls.charge(caller, members as f64 / 50.0);
        }
        Ok(event)
    }

    /// Opens the caller's stream of what `wants` asks for (messages, or
    /// every event), resuming after `after_id` if given.
    ///
    /// **No gap, no duplicate.** The live subscription is registered with
    /// the hub *before* the database is read for the replay. The hub only
    /// carries committed messages, in stream order, so everything below the
    /// first live message was committed before registration and is in the
    /// replay; everything after reaches the live queue. The two overlap at
    /// most, and the stream drops live messages at or below the last replayed
    /// position.
    pub async fn subscribe(
        &self,
        claims: &Claims,
        after_id: &str,
        wants: Wants,
    ) -> Result<EventStream, Error> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let resume = Resume::parse(after_id)?;
        let live = self
            .inner
            .hub
            .subscribe(
                &claims.user,
                wants,
                self.inner.limits.max_subscriptions_per_user,
                claims.issued_at,
            )
            .map_err(|_| {
                Error::ResourceExhausted("too many open subscriptions for this user".into())
            })?;
        // A ban or revocation applied between the token's check and the
        // registration found no stream to end: this one is refused now.
        self.inner.moderator.check(claims)?;
        let deadline = Instant::now() + claims.remaining();
        let mut stream = EventStream::new(
            live,
            deadline,
            self.inner.shutdown.clone(),
            self.inner.metrics.clone(),
            self.inner.presence.clone(),
        );
        let after = match resume {
            Resume::Live => return Ok(stream),
            Resume::After(position) => Some(position),
            Resume::Unknown => None,
        };
        let _metered = self.meter(&claims.user, 1.0).await?;
        self.inner.metrics.resumed();
        let source = ReplaySource {
            store: self.inner.store.clone(),
            user: claims.user.clone(),
            permits: self.inner.replay_permits.clone(),
            page_size: self.inner.replay_page,
            wants,
            metrics: self.inner.metrics.clone(),
        };
        stream
            .resume(source, after, self.inner.limits.replay_limit)
            .await?;
        Ok(stream)
    }

    /// The conversation as `caller` sees it.
    async fn conversation(
        &self,
        caller: &UserId,
        id: &ConversationId,
    ) -> Result<Conversation, Error> {
        self.inner
            .store
            .conversation(caller, id)
            .await?
            .ok_or(Error::NotFound("conversation"))
    }

    /// Whether `caller` is a participant of `id` now, read from the
    /// database: for calls that nothing checks later.
    async fn authorize(&self, caller: &UserId, id: &ConversationId) -> Result<(), Error> {
        match self.inner.store.is_participant(id, caller).await? {
            None => Err(Error::NotFound("conversation")),
            Some(false) => Err(Error::PermissionDenied),
            Some(true) => Ok(()),
        }
    }

    /// The participants of `id` with no open stream on any node now (as
    /// presence says, within its grace): whom the application may push a
    /// message to. From the cache and presence: no database read.
    async fn offline_in(&self, id: &ConversationId) -> Result<Vec<UserId>, Error> {
        let members = self.inner.participants.of(id).await?;
        Ok(self
            .inner
            .presence
            .of(&members)
            .into_iter()
            .filter(|(_, seen)| !seen.is_some_and(|seen| seen.online))
            .map(|(user, _)| user)
            .collect())
    }

    /// Whether `caller` may post in `id`, from the cache on the hot path: a
    /// stale yes (removed on another node a moment ago) is refused by the
    /// insert's own check, and a no is read again before it is answered.
    async fn may_send(&self, caller: &UserId, id: &ConversationId) -> Result<(), Error> {
        let participants = &self.inner.participants;
        if participants.of(id).await?.binary_search(caller).is_ok() {
            return Ok(());
        }
        participants.forget(id);
        self.authorize(caller, id).await
    }

    /// The position of message `id`, which must be in `conversation` and
    /// visible to `caller`: an id from before they joined is as unknown as
    /// one that never existed, so a cursor tells nothing of that history.
    async fn message_in(
        &self,
        caller: &UserId,
        conversation: &ConversationId,
        field: &str,
        id: &str,
    ) -> Result<Position, Error> {
        let position = Position::parse_id(field, id)?.ok_or(Error::NotFound("message"))?;
        match self
            .inner
            .store
            .visible_in(caller, conversation, position)
            .await?
        {
            true => Ok(position),
            false => Err(Error::NotFound("message")),
        }
    }
}

/// A message sent before under the same idempotency key, if it is the same
/// message.
fn same_message(
    original: Message,
    conversation_id: &ConversationId,
    content: Option<&Content>,
) -> Result<Message, Error> {
    // Edited or deleted since, it is still the message that key sent.
    let changed = original.edited_at_micros.is_some() || original.deleted;
    let same = changed || content.is_none_or(|content| original.content == content.as_str());
    match original.conversation_id == *conversation_id && same {
        true => Ok(original),
        false => Err(Error::invalid(
            "client_message_id was already used for a different message",
        )),
    }
}

/// The page size a client asked for: the default when unset, clamped.
fn page_limit(page_size: i32) -> Result<i32, Error> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(Error::invalid("page_size must not be negative")),
        size => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

/// A `page_token` that herald issued: `<activity>.<conversation id>`.
fn parse_page_token(token: &str) -> Result<Cursor, Error> {
    let invalid = || Error::invalid("page_token is not one herald issued");
    let (activity, id) = token.split_once('.').ok_or_else(invalid)?;
    let activity = activity.parse().map_err(|_| invalid())?;
    let id = ConversationId::parse("page_token", id).map_err(|_| invalid())?;
    Ok(Cursor {
        activity,
        id: id.as_str().to_owned(),
    })
}

/// A user's place at the database for one call, given back when dropped.
pub struct Metered {
    _place: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Where a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Live, from now: no resume point.
    Live,
    /// After this position.
    After(Position),
    /// After an id herald could have issued but that names nothing.
    Unknown,
}

impl Resume {
    /// The resume point a client gave (`after_id`, `Last-Event-ID`).
    fn parse(after_id: &str) -> Result<Self, Error> {
        if after_id.is_empty() {
            return Ok(Resume::Live);
        }
        Ok(match Position::parse_id("after_id", after_id)? {
            Some(position) => Resume::After(position),
            None => Resume::Unknown,
        })
    }
}
