//! Messages: the batch insert at the next positions, history, and what a
//! resuming stream missed, each within the reader's membership intervals.

use super::{EventRow, MessageRow, Store};
use crate::{
    domain::{Content, ConversationId, Event, IdempotencyKey, Message, Position, UserId},
    error::Error,
};

/// A message to commit, as parsed: the store never sees raw input.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub content: Content,
    /// The client's idempotency key, unique per user.
    pub key: Option<IdempotencyKey>,
    /// The message it answers, checked visible to the sender.
    pub reply_to: Option<Position>,
    /// Published by the application: its sender need not be a participant.
    pub system: bool,
    /// Participants with no open stream on any node as it was sent.
    pub offline: Vec<UserId>,
    pub created_at_micros: i64,
}

/// Why the database refused a batch of messages, typed here so that the
/// committer decides what to do without reading database errors.
#[derive(Debug)]
pub enum Refused {
    /// A sender was no participant when its message committed (removed,
    /// on any node, before its position): the insert's trigger refused it.
    NotParticipant,
    /// A sender's idempotency key was used before.
    KeyUsed,
    /// A row's data (a value the database cannot store, a constraint):
    /// the other rows, committed without it, may pass.
    Data(sqlx::Error),
    /// The database's own state (busy, locked, a serialization failure, a
    /// lost connection), which any retry would meet again.
    Database(sqlx::Error),
}

/// The message of the trigger that refuses a non-participant's message
/// (see the membership migration).
const NOT_A_PARTICIPANT: &str = "herald: the sender is not a participant";

impl Refused {
    fn of(error: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        let Some(database) = error.as_database_error() else {
            return Refused::Database(error);
        };
        if database.message().contains(NOT_A_PARTICIPANT) {
            return Refused::NotParticipant;
        }
        if database.is_unique_violation() {
            return Refused::KeyUsed;
        }
        if !matches!(database.kind(), ErrorKind::Other) {
            return Refused::Data(error); // foreign key, not null, check
        }
        let code = database.code().unwrap_or_default();
        let data = match code.parse::<i32>() {
            // SQLite: a constraint (a trigger's RAISE included), too big, mismatch.
            Ok(sqlite) => matches!(sqlite & 0xff, 18..=20),
            // PostgreSQL: data exceptions, integrity violations, raised in PL/pgSQL.
            Err(_) => code.starts_with("22") || code.starts_with("23") || code.starts_with("P0"),
        };
        match data {
            true => Refused::Data(error),
            false => Refused::Database(error),
        }
    }

    /// Whether one of the rows was refused, so that committing them apart
    /// lets the others in.
    pub fn by_a_row(&self) -> bool {
        !matches!(self, Refused::Database(_))
    }
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotParticipant => Error::PermissionDenied,
            Refused::KeyUsed => Error::invalid("client_message_id was already used"),
            Refused::Data(error) | Refused::Database(error) => Error::from(error),
        }
    }
}

/// Which page of a conversation's history to read.
#[derive(Clone, Copy, Debug)]
pub enum Page {
    /// The newest messages older than the position (the newest page for `None`).
    Before(Option<Position>),
    /// The oldest messages newer than the position.
    After(Position),
}

impl NewMessage {
    /// [`offline`](Self::offline) as stored: a JSON array, or nothing.
    pub(super) fn offline_json(&self) -> Option<String> {
        (!self.offline.is_empty()).then(|| {
            let ids: Vec<&str> = self.offline.iter().map(UserId::as_str).collect();
            serde_json::to_string(&ids).unwrap_or_default()
        })
    }
}

impl Store {
    /// Commits `rows` in one transaction at the next stream positions, in
    /// order: one commit (and one wait for the disk) for the whole batch.
    /// Fails whole, with every position rolled back, on any refusal. On
    /// SQLite it blocks the calling thread for the commit: only the
    /// committer, on its own thread, calls it (`Committer::start`).
    pub async fn insert_batch(&self, rows: &[&NewMessage]) -> Result<Vec<Message>, Refused> {
        let count = rows.len() as i64;
        let last = match self {
            Store::Sqlite(sqlite) => sqlite.insert_batch(rows).await,
            Store::Postgres(_) => self.insert_batch_in_steps(rows).await,
        }
        .map_err(Refused::of)?;
        let first = last - count + 1;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(index, row)| Message {
                position: Position(first + index as i64),
                conversation_id: row.conversation_id.clone(),
                user_id: row.user_id.clone(),
                content: row.content.as_str().to_owned(),
                created_at_micros: row.created_at_micros,
                reply_to: row.reply_to,
                system: row.system,
                ..Message::default()
            })
            .collect())
    }

    /// [`insert_batch`](Self::insert_batch) as four round trips (begin, take
    /// the positions, insert, commit); returns the last position.
    async fn insert_batch_in_steps(&self, rows: &[&NewMessage]) -> Result<i64, sqlx::Error> {
        let count = rows.len() as i64;
        let last: i64 = with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            // Taking the positions first locks `stream_head` until commit: see
            // the module comment.
            let last: i64 = sqlx::query_scalar(
                "UPDATE stream_head SET position = position + $1 WHERE id = 1 RETURNING position",
            )
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO messages (position, conversation_id, user_id, content, created_at, client_message_id, reply_to, system, offline) ",
            );
            insert.push_values(rows.iter().enumerate(), |mut values, (index, row)| {
                values
                    .push_bind(last - count + 1 + index as i64)
                    .push_bind(row.conversation_id.as_str())
                    .push_bind(row.user_id.as_str())
                    .push_bind(row.content.as_str())
                    .push_bind(row.created_at_micros)
                    .push_bind(row.key.as_ref().map(IdempotencyKey::as_str))
                    .push_bind(row.reply_to.map(|position| position.0))
                                        .push_bind(i32::from(row.system))
                    .push_bind(row.offline_json());
            });
            insert.build().execute(&mut *tx).await?;
            tx.commit().await?;
            last
        });
        Ok(last)
    }

    /// The message `user_id` sent with idempotency key `key`, if any.
    pub async fn message_by_key(
        &self,
        user_id: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Option<Message>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE user_id = $1 AND client_message_id = $2"
        );
        let row: Option<MessageRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(user_id.as_str()).bind(key.as_str()).fetch_optional(pool).await
        })?;
        Ok(row.map(Message::from))
    }

    /// Whether message `position` is in `conversation` and `user` may see
    /// it (committed while they were a member): a cursor names one of the
    /// caller's own messages, or nothing.
    pub async fn visible_in(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        position: Position,
    ) -> Result<bool, sqlx::Error> {
        let sql = concat!(
            "SELECT COUNT(*) FROM messages m ",
            in_membership!(),
            " WHERE m.position = $2 AND m.conversation_id = $3 AND m.kind = 'message'"
        );
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(user.as_str())
                .bind(position.0)
                .bind(conversation.as_str())
                .fetch_one(pool)
                .await
        })?;
        Ok(count > 0)
    }

    /// One page of a conversation's messages that `viewer` may see (those
    /// committed while a member), oldest first.
    pub async fn messages(
        &self,
        viewer: &UserId,
        conversation_id: &ConversationId,
        page: Page,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let (sql, cursor, newest_first) = match page {
            Page::Before(before) => (
                concat!(
                    "SELECT ",
                    event_columns!(),
                    events!(),
                    in_membership!(),
                    " WHERE m.conversation_id = $2 AND m.kind = 'message'
                     AND m.position < $3 AND m.position >= ",
                    first_join!(),
                    " ORDER BY m.position DESC LIMIT $4"
                ),
                before.map_or(i64::MAX, |p| p.0),
                true,
            ),
            Page::After(after) => (
                concat!(
                    "SELECT ",
                    event_columns!(),
                    events!(),
                    in_membership!(),
                    " WHERE m.conversation_id = $2 AND m.kind = 'message'
                     AND m.position > $3 AND m.position >= ",
                    first_join!(),
                    " ORDER BY m.position ASC LIMIT $4"
                ),
                after.0,
                false,
            ),
        };
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(viewer.as_str())
                .bind(conversation_id.as_str())
                .bind(cursor)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        let mut messages: Vec<Message> = rows.into_iter().map(EventRow::message).collect();
        if newest_first {
            messages.reverse();
        }
        Ok(messages)
    }

    /// Up to `limit` events of `user`'s conversations after `after`, in
    /// stream order, each within the user's membership: what a resuming
    /// subscriber missed. Only messages unless `everything`.
    pub async fn missed(
        &self,
        user: &UserId,
        after: Position,
        limit: i64,
        everything: bool,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            ", ms.left_at",
            events!(),
            in_membership!(),
            " WHERE m.position > $2 AND (m.kind = 'message' OR $4 = 1)",
            saw_target!(),
            current_changes!(),
            " ORDER BY m.position LIMIT $3"
        );
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(user.as_str())
                .bind(after.0)
                .bind(limit)
                .bind(i64::from(everything))
                .fetch_all(pool)
                .await
        })?;
        Ok(rows.into_iter().map(Event::from).collect())
    }

    /// How many events [`missed`](Self::missed) would find after `after`,
    /// counting no further than `limit`.
    pub async fn missed_count(
        &self,
        user: &UserId,
        after: Position,
        limit: usize,
        everything: bool,
    ) -> Result<usize, sqlx::Error> {
        let sql = concat!(
            "SELECT COUNT(*) FROM (SELECT 1",
            events!(),
            in_membership!(),
            " WHERE m.position > $2 AND (m.kind = 'message' OR $4 = 1)",
            saw_target!(),
            current_changes!(),
            " LIMIT $3) AS missed"
        );
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql)
                .bind(user.as_str())
                .bind(after.0)
                .bind(limit as i64)
                .bind(i64::from(everything))
                .fetch_one(pool)
                .await
        })?;
        Ok(count.max(0) as usize)
    }

    /// Whether the event at `position` exists and `user` may see it: a
    /// resume point must be one of the user's own.
    pub async fn visible(&self, user: &UserId, position: Position) -> Result<bool, sqlx::Error> {
        let sql = concat!(
            "SELECT COUNT(*) FROM messages m ",
            in_membership!(),
            " WHERE m.position = $2",
            saw_target!()
        );
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(user.as_str()).bind(position.0).fetch_one(pool).await
        })?;
        Ok(count > 0)
    }

    /// Committed events at positions `from..to`: how the feed fills a gap.
    pub async fn events_between(
        &self,
        from: Position,
        to: Position,
    ) -> Result<Vec<Event>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            events!(),
            "WHERE m.position >= $1 AND m.position < $2 ORDER BY m.position"
        );
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(from.0).bind(to.0).fetch_all(pool).await
        })?;
        Ok(rows.into_iter().map(Event::from).collect())
    }
}
