//! Changes to messages: edits, deletions and reactions, each an event at a
//! position of its own, committed like a membership change (the head
//! locked first, the rules asked, then the writes), and the reactions a
//! reader sees.
//!
//! **Erasure.** A message's row is the only copy of its content: an edit
//! overwrites it, a deletion empties it (and drops its reactions), and the
//! change's own row holds nothing of it (`target` names the message; a
//! reader joins it). On SQLite `secure_delete` overwrites the freed bytes
//! in the file, and the write-ahead log is emptied soon after (within a
//! second or so, off the committer's path).

use super::{IS_PARTICIPANT, MessageRow, NEXT_POSITION, Store};
use crate::{
    domain::{
        Body, Content, ConversationId, Emoji, Event, Message, Position, Reaction, UserId,
        rules::{Authority, Target},
    },
    error::Error,
};
use std::collections::HashMap;

/// A change to one message that [`Store::commit_message_change`] makes.
#[derive(Clone, Debug)]
pub enum MessageChange {
    Edit {
        message: Position,
        content: Content,
    },
    Delete {
        message: Position,
    },
    React {
        message: Position,
        emoji: Emoji,
        added: bool,
    },
}

impl MessageChange {
    fn message(&self) -> Position {
        match self {
            MessageChange::Edit { message, .. }
            | MessageChange::Delete { message }
            | MessageChange::React { message, .. } => *message,
        }
    }
}

impl Store {
    /// Makes `change` by `actor` to a message of conversation `id` at the
    /// next stream position, in one transaction; `Ok(None)` when it
    /// changes nothing (a reaction already given or never given, a
    /// deletion of a deleted message), the position then rolled back.
    /// Refusals: not a participant, no such message in `id`, and what
    /// `rules::Target` says.
    pub async fn commit_message_change(
        &self,
        id: &ConversationId,
        actor: &UserId,
        by: Authority,
        change: &MessageChange,
        now_micros: i64,
    ) -> Result<Option<Event>, Error> {
        let target = change.message();
        let committed = self
            .commit_message_change_in(id, actor, by, change, target, now_micros)
            .await;
        // The old page images of an edited or deleted message's row stay in
        // SQLite's write-ahead log until it is emptied (within a second or
        // so, off this path: `Sqlite::tend`).
        if let (Store::Sqlite(sqlite), Ok(Some(_))) = (self, &committed)
            && !matches!(change, MessageChange::React { .. })
        {
            sqlite.erase_soon();
        }
        committed
    }

    async fn commit_message_change_in(
        &self,
        id: &ConversationId,
        actor: &UserId,
        by: Authority,
        change: &MessageChange,
        target: Position,
        now_micros: i64,
    ) -> Result<Option<Event>, Error> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            let position: i64 = sqlx::query_scalar(NEXT_POSITION)
            .fetch_one(&mut *tx)
            .await?;
            // The application (a service key) needs no membership.
            if by == Authority::Member {
                let member: bool = sqlx::query_scalar(IS_PARTICIPANT)
                .bind(id.as_str())
                .bind(actor.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if !member {
                    return Err(Error::PermissionDenied);
                }
            }
            let found: Option<(String, i32, i32)> = sqlx::query_as(
                "SELECT user_id, deleted, system FROM messages
                 WHERE position = $1 AND conversation_id = $2 AND kind = 'message'",
            )
            .bind(target.0)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((author, deleted, system)) = found else {
                return Err(Error::NotFound("message"));
            };
            let author = UserId::from_stored(author);
            // The rules decide (`domain::rules`); the store writes.
            let rules = Target {
                author: &author,
                deleted: deleted != 0,
                system: system != 0,
            };
            let content = match change {
                MessageChange::Edit { content, .. } => {
                    rules.edit(actor)?;
                    sqlx::query(
                        "UPDATE messages SET content = $2, edited_at = $3, changed_at = $4
                         WHERE position = $1",
                    )
                        .bind(target.0)
                        .bind(content.as_str())
                        .bind(now_micros)
                        .bind(position)
                        .execute(&mut *tx)
                        .await?;
                    String::new()
                }
                MessageChange::Delete { .. } => {
                    if !rules.delete(actor, by)? {
                        return Ok(None);
                    }
                    sqlx::query(
                        "UPDATE messages SET content = '', deleted = 1, changed_at = $2
                         WHERE position = $1",
                    )
                        .bind(target.0)
                        .bind(position)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM reactions WHERE message_position = $1")
                        .bind(target.0)
                        .execute(&mut *tx)
                        .await?;
                    String::new()
                }
                MessageChange::React { emoji, added: true, .. } => {
                    // (distinct emoji, whether this one is among them,
                    // whether the actor gave it already)
                    let (distinct, given, mine): (i64, i64, i64) = sqlx::query_as(
                        "SELECT COUNT(DISTINCT emoji),
                                CAST(COALESCE(MAX(CASE WHEN emoji = $2 THEN 1 ELSE 0 END), 0) AS BIGINT),
                                CAST(COALESCE(MAX(CASE WHEN emoji = $2 AND user_id = $3 THEN 1 ELSE 0 END), 0) AS BIGINT)
                         FROM reactions WHERE message_position = $1",
                    )
                    .bind(target.0)
                    .bind(emoji.as_str())
                    .bind(actor.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    if mine != 0 {
                        return Ok(None);
                    }
                    rules.react(given == 0, distinct as usize)?;
                    sqlx::query(
                        "INSERT INTO reactions (message_position, emoji, user_id, created_at)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(target.0)
                    .bind(emoji.as_str())
                    .bind(actor.as_str())
                    .bind(now_micros)
                    .execute(&mut *tx)
                    .await?;
                    // Reacting is taking part (see `sharers`).
                    sqlx::query(
                        "UPDATE participants SET took_part = 1
                         WHERE conversation_id = $1 AND user_id = $2 AND took_part = 0",
                    )
                    .bind(id.as_str())
                    .bind(actor.as_str())
                    .execute(&mut *tx)
                    .await?;
                    reaction(target, emoji, true).encode()
                }
                MessageChange::React { emoji, added: false, .. } => {
                    let taken = sqlx::query(
                        "DELETE FROM reactions
                         WHERE message_position = $1 AND emoji = $2 AND user_id = $3",
                    )
                    .bind(target.0)
                    .bind(emoji.as_str())
                    .bind(actor.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if taken == 0 {
                        return Ok(None);
                    }
                    reaction(target, emoji, false).encode()
                }
            };
            let kind = match change {
                MessageChange::Edit { .. } => "edit",
                MessageChange::Delete { .. } => "delete",
                MessageChange::React { .. } => "reaction",
            };
            sqlx::query(
                "INSERT INTO messages (position, conversation_id, user_id, content, created_at, kind, target)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(position)
            .bind(id.as_str())
            .bind(actor.as_str())
            .bind(content.as_str())
            .bind(now_micros)
            .bind(kind)
            .bind(target.0)
            .execute(&mut *tx)
            .await?;
            let body = match change {
                MessageChange::React { emoji, added, .. } => reaction(target, emoji, *added),
                _ => {
                    let row: MessageRow = sqlx::query_as(concat!(
                        "SELECT ",
                        message_columns!(),
                        " FROM messages WHERE position = $1"
                    ))
                    .bind(target.0)
                    .fetch_one(&mut *tx)
                    .await?;
                    let message = Box::new(Message::from(row));
                    match change {
                        MessageChange::Edit { .. } => Body::Edited(message),
                        _ => Body::Deleted(message),
                    }
                }
            };
            tx.commit().await?;
            Ok(Some(Event {
                position: Position(position),
                conversation_id: id.clone(),
                user_id: actor.clone(),
                created_at_micros: now_micros,
                body,
            }))
        })
    }

    /// The reactions to each of `messages` as `viewer` sees them, by emoji
    /// in the order they were first given.
    pub async fn reactions(
        &self,
        viewer: &UserId,
        messages: &[Position],
    ) -> Result<HashMap<Position, Vec<Reaction>>, sqlx::Error> {
        let mut found: HashMap<Position, Vec<Reaction>> = HashMap::new();
        if messages.is_empty() {
            return Ok(found);
        }
        let rows: Vec<(i64, String, i64, i64)> = with_pool!(self, pool => {
            let mut sql = sqlx::QueryBuilder::new(
                "SELECT message_position, emoji, COUNT(*),
                        CAST(MAX(CASE WHEN user_id = ",
            );
            sql.push_bind(viewer.as_str());
            sql.push(" THEN 1 ELSE 0 END) AS BIGINT) FROM reactions WHERE message_position IN ");
            sql.push_tuples(messages, |mut tuple, position| {
                tuple.push_bind(position.0);
            });
            sql.push(" GROUP BY message_position, emoji ORDER BY message_position, MIN(created_at), emoji");
            sql.build_query_as()
                .persistent(super::kept_prepared(messages.len() + 1))
                .fetch_all(pool)
                .await?
        });
        for (message, emoji, count, mine) in rows {
            found.entry(Position(message)).or_default().push(Reaction {
                emoji,
                count: i32::try_from(count).unwrap_or(i32::MAX),
                mine: mine != 0,
            });
        }
        Ok(found)
    }

    /// Fills in the reactions of `messages` as `viewer` sees them.
    pub async fn with_reactions(
        &self,
        viewer: &UserId,
        messages: &mut [Message],
    ) -> Result<(), sqlx::Error> {
        let positions: Vec<Position> = messages
            .iter()
            .filter(|message| !message.deleted)
            .map(|message| message.position)
            .collect();
        let mut found = self.reactions(viewer, &positions).await?;
        for message in messages {
            message.reactions = found.remove(&message.position).unwrap_or_default();
        }
        Ok(())
    }

    /// Message `position` of `conversation` as `viewer` sees it, with its
    /// reactions; `None` unless it is a message there.
    pub async fn message(
        &self,
        viewer: &UserId,
        conversation: &ConversationId,
        position: Position,
    ) -> Result<Option<Message>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE position = $1 AND conversation_id = $2 AND kind = 'message'"
        );
        let row: Option<MessageRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(position.0).bind(conversation.as_str()).fetch_optional(pool).await
        })?;
        let Some(row) = row else { return Ok(None) };
        let mut message = [Message::from(row)];
        self.with_reactions(viewer, &mut message).await?;
        let [message] = message;
        Ok(Some(message))
    }
}

/// A reaction event's body.
fn reaction(message: Position, emoji: &Emoji, added: bool) -> Body {
    Body::Reaction {
        message,
        emoji: emoji.as_str().to_owned(),
        added,
    }
}
