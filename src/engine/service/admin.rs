//! The Admin service's core: what the application's backend does through a
//! service key, each call checked for its scope, metered per key, logged
//! with the key's name (never the key) and counted by action. The effects
//! reuse the users' paths: a published message is committed like any other
//! (with `system` set, which no user can), a deletion is the same
//! `MessageChange::Delete` and tombstone as the author's, membership goes
//! through the same rules with [`Authority::Service`].

use super::{Herald, Metered, page_limit, same_message};
use crate::{
    auth::service::Service,
    domain::{
        Body, Content, Conversation, ConversationId, IdempotencyKey, Message, Position, UserId,
        moderation::{Action, Scope},
        now_micros,
        rules::Authority,
    },
    engine::commit::Committed,
    engine::firehose::{Firehose, Kinds},
    engine::presence::Seen,
    engine::webhooks::{self, webhook_kinds},
    error::Error,
    pb,
    store::webhooks::WebhookRow,
    store::{ChangeRequest, MessageChange, NewMessage, Page},
};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Firehose streams one service key may hold open on one node: a backend
/// needs one or a few; each is a task and a reader of the database.
pub const FIREHOSES_PER_KEY: usize = 16;
/// Webhooks in a deployment: each is a delivery loop on one node.
pub const MAX_WEBHOOKS: usize = 100;

/// The sender of a published message when the backend names none, and
/// the actor of the Admin service's membership changes and deletions.
pub const SYSTEM: &str = "system";

fn system() -> UserId {
    UserId::from_stored(SYSTEM.to_owned())
}

impl Herald {
    /// Lets `key` do `action`, which needs `scope`: refused without the
    /// scope, or past the key's call rate; then logged and counted.
    async fn admit(
        &self,
        key: &Service,
        scope: Scope,
        action: &'static str,
        target: &str,
    ) -> Result<Metered, Error> {
        key.allow(scope)?;
        // The rate limiter is keyed by user id: a key's own id cannot be a
        // user's, since user ids cannot hold a newline.
        let meter = UserId::from_stored(format!("key\n{}", key.name));
        if !self.inner.admin_calls.allow(&meter) {
            return Err(self
                .over_rate("this service key's call rate was reached; slow down")
                .await);
        }
        tracing::info!(key = %key.name, action, target, "admin action");
        self.inner.metrics.admin_action(action);
        Ok(Metered { _place: None })
    }

    /// Publishes `content` in any conversation as a system message from
    /// `sender_id` (default [`SYSTEM`]), who need not be a participant.
    pub async fn publish(
        &self,
        key: &Service,
        conversation_id: &str,
        content: String,
        sender_id: &str,
        client_message_id: &str,
    ) -> Result<Message, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let sender = match sender_id.is_empty() {
            true => system(),
            false => UserId::parse("sender_id", sender_id)?,
        };
        let content = Content::parse(content, self.inner.limits.max_content_bytes)?;
        let key_id = match client_message_id.is_empty() {
            true => None,
            false => {
                Some(IdempotencyKey::parse("client_message_id", client_message_id)?.published())
            }
        };
        let _metered = self
            .admit(key, Scope::Publish, "publish", conversation_id.as_str())
            .await?;
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let store = &self.inner.store;
        if store
            .is_participant(&conversation_id, &sender)
            .await?
            .is_none()
        {
            return Err(Error::NotFound("conversation"));
        }
        if let Some(idempotency) = &key_id
            && let Some(original) = store.message_by_key(&sender, idempotency).await?
        {
            return same_message(original, &conversation_id, Some(&content));
        }
        let new = NewMessage {
            conversation_id: conversation_id.clone(),
            user_id: sender,
            content: content.clone(),
            key: key_id,
            reply_to: None,
            system: true,
            offline: self.offline_in(&conversation_id).await?,
            created_at_micros: now_micros(),
        };
        match self.inner.committer.commit(new).await? {
            Committed::New(message) => Ok(message),
            Committed::Existing(original) => {
                same_message(original, &conversation_id, Some(&content))
            }
        }
    }

    /// Creates a conversation on behalf of `creator_id`, under the users'
    /// rules (a pair is found-or-created; blocks hold).
    pub async fn create_conversation_for(
        &self,
        key: &Service,
        creator_id: &str,
        participant_ids: &[String],
    ) -> Result<(Conversation, bool), Error> {
        let creator = UserId::parse("creator_id", creator_id)?;
        let _metered = self
            .admit(key, Scope::Manage, "create_conversation", creator.as_str())
            .await?;
        self.create_conversation(&creator, participant_ids).await
    }

    /// Adds `user_ids` to any group.
    pub async fn add_participants_as_service(
        &self,
        key: &Service,
        conversation_id: &str,
        user_ids: &[String],
    ) -> Result<Conversation, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let users = self.to_add(user_ids)?;
        let _metered = self
            .admit(
                key,
                Scope::Manage,
                "add_participants",
                conversation_id.as_str(),
            )
            .await?;
        let event = self
            .change(
                &system(),
                Authority::Service,
                &conversation_id,
                ChangeRequest::Add(users),
            )
            .await?;
        self.as_service(&conversation_id, event.map(|event| event.body))
            .await
    }

    /// Removes `user_id` from any group, without the creator rule.
    pub async fn remove_participant_as_service(
        &self,
        key: &Service,
        conversation_id: &str,
        user_id: &str,
    ) -> Result<Conversation, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let user = UserId::parse("user_id", user_id)?;
        let _metered = self
            .admit(
                key,
                Scope::Manage,
                "remove_participant",
                conversation_id.as_str(),
            )
            .await?;
        let event = self
            .change(
                &system(),
                Authority::Service,
                &conversation_id,
                ChangeRequest::Remove(user),
            )
            .await?;
        self.as_service(&conversation_id, event.map(|event| event.body))
            .await
    }

    /// Deletes any message: the author's tombstone and `delete` event.
    pub async fn delete_message_as_service(
        &self,
        key: &Service,
        conversation_id: &str,
        message_id: &str,
        reason: &str,
    ) -> Result<Message, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let position =
            Position::parse_id("message_id", message_id)?.ok_or(Error::NotFound("message"))?;
        let _metered = self
            .admit(key, Scope::Moderate, "delete_message", &position.id())
            .await?;
        check_reason(reason)?;
        if !reason.is_empty() {
            tracing::info!(key = %key.name, reason, "admin deletion's reason");
        }
        let change = MessageChange::Delete { message: position };
        let event = self
            .change(&system(), Authority::Service, &conversation_id, change)
            .await?;
        match event.map(|event| event.body) {
            Some(Body::Deleted(message)) => Ok(*message),
            // Deleted before: the tombstone as it is.
            _ => self
                .inner
                .store
                .message(&system(), &conversation_id, position)
                .await?
                .ok_or(Error::NotFound("message")),
        }
    }

    /// Bans, unbans, disconnects or revokes the tokens of `user_id`, on
    /// every node (see `engine::moderation`).
    pub async fn moderate(
        &self,
        key: &Service,
        user_id: &str,
        action: Action,
    ) -> Result<(), Error> {
        let user = UserId::parse("user_id", user_id)?;
        if let Action::Ban {
            until: Some(until), ..
        } = &action
            && *until <= now_micros() / 1_000_000
        {
            return Err(Error::invalid("until must be in the future"));
        }
        let reason = match &action {
            Action::Ban { reason, .. } | Action::Disconnect { reason } => reason.as_str(),
            _ => "",
        };
        check_reason(reason)?;
        let _metered = self
            .admit(key, Scope::Moderate, action.kind(), user.as_str())
            .await?;
        self.inner.moderator.act(&user, &action, &key.name).await
    }

    /// A page of any conversation's whole history.
    pub async fn list_messages_as_service(
        &self,
        key: &Service,
        conversation_id: &str,
        page_size: i32,
        before_id: &str,
        after_id: &str,
    ) -> Result<Vec<Message>, Error> {
        let conversation_id = ConversationId::parse("conversation_id", conversation_id)?;
        let limit = page_limit(page_size)?;
        let cursor = |field, id| Position::parse_id(field, id)?.ok_or(Error::NotFound("message"));
        let page = match (before_id.is_empty(), after_id.is_empty()) {
            (true, true) => Page::Before(None),
            (false, true) => Page::Before(Some(cursor("before_id", before_id)?)),
            (true, false) => Page::After(cursor("after_id", after_id)?),
            (false, false) => return Err(Error::invalid("give before_id or after_id, not both")),
        };
        let _metered = self
            .admit(key, Scope::Read, "list_messages", conversation_id.as_str())
            .await?;
        let store = &self.inner.store;
        if store
            .is_participant(&conversation_id, &system())
            .await?
            .is_none()
        {
            return Err(Error::NotFound("conversation"));
        }
        for position in [page_cursor(page)].into_iter().flatten() {
            if !store.is_message_of(&conversation_id, position).await? {
                return Err(Error::NotFound("message"));
            }
        }
        let mut messages = store
            .history(&conversation_id, page, i64::from(limit))
            .await?;
        store.with_reactions(&system(), &mut messages).await?;
        Ok(messages)
    }

    /// Anyone's presence.
    pub async fn presence_as_service(
        &self,
        key: &Service,
        user_ids: &[String],
    ) -> Result<Vec<(UserId, Option<Seen>)>, Error> {
        let users = self.asked_about(user_ids)?;
        let _metered = self.admit(key, Scope::Read, "get_presence", "").await?;
        Ok(self.inner.presence.of(&users))
    }

    /// The firehose after `after_id` (from the start when empty), of the
    /// `kinds` asked for (every kind when none).
    pub async fn subscribe_all(
        &self,
        key: &Service,
        after_id: &str,
        kinds: &[String],
    ) -> Result<Firehose, Error> {
        let kinds = Kinds::parse(kinds)?;
        let after = match after_id.is_empty() {
            true => Position(0),
            false => Position::parse_id("after_id", after_id)?
                .ok_or_else(|| Error::invalid("after_id is not an event id herald issued"))?,
        };
        let _metered = self.admit(key, Scope::Read, "subscribe_all", "").await?;
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        // An id past the newest event is none herald issued here (a
        // database restored from an older backup, another deployment's
        // id): following it would skip events silently.
        if after > self.inner.store.head().await? {
            return Err(Error::ResumeImpossible(
                "after_id is past the newest event".into(),
            ));
        }
        let slots = {
            let mut open = self
                .inner
                .firehoses
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            open.entry(key.name.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(FIREHOSES_PER_KEY)))
                .clone()
        };
        let slot = slots.try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "at most {FIREHOSES_PER_KEY} firehose streams per service key on a node"
            ))
        })?;
        Ok(Firehose::new(
            self.inner.store.clone(),
            after,
            kinds,
            self.inner.replay_page,
            self.inner.replay_permits.clone(),
            self.inner.feed.delivered(),
            self.inner.shutdown.clone(),
        )
        .holding(slot))
    }

    /// Registers a webhook for `url`, delivering what is committed from
    /// now on; its answer holds the secret, once.
    pub async fn create_webhook(
        &self,
        key: &Service,
        url: &str,
        kinds: &[String],
    ) -> Result<pb::Webhook, Error> {
        Kinds::parse(kinds)?;
        if url.len() > 2048 {
            return Err(Error::invalid("url must be at most 2048 bytes"));
        }
        let _metered = self.admit(key, Scope::Admin, "create_webhook", url).await?;
        self.inner
            .webhooks
            .check_url(url)
            .await
            .map_err(Error::invalid)?;
        let store = &self.inner.store;
        let row = WebhookRow {
            id: crate::domain::random_hex(),
            url: url.to_owned(),
            secret: webhooks::new_secret(),
            kinds: kinds.join(","),
            delivered_to: store.head().await?.0,
            batch_until: None,
            failures: 0,
            last_error: String::new(),
            deliveries: 0,
            disabled: 0,
        };
        if !store
            .create_webhook(&row, now_micros(), MAX_WEBHOOKS)
            .await?
        {
            return Err(Error::ResourceExhausted(format!(
                "at most {MAX_WEBHOOKS} webhooks; delete one first"
            )));
        }
        let head = row.delivered_to;
        Ok(webhook(row, head))
    }

    /// Every webhook, with its progress (never its secret).
    pub async fn list_webhooks(&self, key: &Service) -> Result<Vec<pb::Webhook>, Error> {
        let _metered = self.admit(key, Scope::Admin, "list_webhooks", "").await?;
        let store = &self.inner.store;
        let head = store.head().await?.0;
        Ok(store
            .webhooks()
            .await?
            .into_iter()
            .map(|row| {
                let mut shown = webhook(row, head);
                shown.secret = String::new();
                shown
            })
            .collect())
    }

    /// Removes webhook `id`.
    pub async fn delete_webhook(&self, key: &Service, id: &str) -> Result<(), Error> {
        let _metered = self.admit(key, Scope::Admin, "delete_webhook", id).await?;
        match self.inner.store.delete_webhook(id).await? {
            true => Ok(()),
            false => Err(Error::NotFound("webhook")),
        }
    }

    /// A group as the application sees it (no reader: nothing unread),
    /// after a change that made `body` (or none).
    async fn as_service(
        &self,
        id: &ConversationId,
        body: Option<Body>,
    ) -> Result<Conversation, Error> {
        if let Some(Body::Membership(change)) = body
            && change.members.is_empty()
        {
            return Ok(Conversation {
                id: id.clone(),
                participant_ids: Vec::new(),
                last_message: None,
                unread_count: 0,
                created_at_micros: change.conversation_created_at_micros,
                creator_id: change.creator,
            });
        }
        // Seen by any member, less what is theirs alone.
        let members = self.inner.store.participants(id).await?;
        let Some(member) = members.first() else {
            return Err(Error::NotFound("conversation"));
        };
        let mut conversation = self.conversation(member, id).await?;
        conversation.unread_count = 0;
        Ok(conversation)
    }
}

/// A moderator's reason: logged, and told to the user's streams.
fn check_reason(reason: &str) -> Result<(), Error> {
    match reason.len() > 1024 || reason.chars().any(char::is_control) {
        true => Err(Error::invalid(
            "reason must be at most 1024 bytes, without control characters",
        )),
        false => Ok(()),
    }
}

/// A webhook's row as the Admin service shows it, secret included (the
/// caller clears it except on create), its lag counted up to `head`.
fn webhook(row: WebhookRow, head: i64) -> pb::Webhook {
    pb::Webhook {
        id: row.id,
        url: row.url,
        kinds: webhook_kinds(&row.kinds),
        secret: row.secret,
        delivered_to_id: match row.delivered_to {
            0 => String::new(),
            position => Position(position).id(),
        },
        lag: (head - row.delivered_to).max(0),
        deliveries: row.deliveries,
        failures: row.failures,
        last_error: row.last_error,
        disabled: row.disabled != 0,
    }
}

/// The message a page starts from, if any.
fn page_cursor(page: Page) -> Option<Position> {
    match page {
        Page::Before(before) => before,
        Page::After(after) => Some(after),
    }
}
