//! What the application's backend changes: service keys, the moderation
//! log, and whole histories read without a membership boundary.

use super::{EventRow, Store};
use crate::{
    domain::{
        ConversationId, Event, Message, Position, UserId,
        moderation::{Action, Entry},
    },
    store::Page,
};

/// A service key as `herald key list` shows it (never the key or its hash).
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub name: String,
    pub scopes: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A row of the moderation log.
type LogRow = (i64, String, String, Option<i64>, Option<i64>, String);

impl Store {
    /// Stores a new key's hash under `name`; `false` when the name is taken
    /// (by an active or a revoked key: names are never reused, so logs that
    /// name a key stay unambiguous).
    pub async fn create_key(
        &self,
        name: &str,
        hash_hex: &str,
        scopes: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let inserted = with_writer!(self, pool => {
            sqlx::query(
                "INSERT INTO service_keys (name, hash, scopes, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(hash_hex)
            .bind(scopes)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(inserted == 1)
    }

    /// Every key, active or revoked, by name.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, sqlx::Error> {
        let rows: Vec<(String, String, i64, Option<i64>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, scopes, created_at, revoked_at FROM service_keys ORDER BY name",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(name, scopes, created_at, revoked_at)| KeyInfo {
                name,
                scopes,
                created_at,
                revoked_at,
            })
            .collect())
    }

    /// Revokes key `name`; `false` when there is no such active key.
    pub async fn revoke_key(&self, name: &str, now: i64) -> Result<bool, sqlx::Error> {
        let revoked = with_writer!(self, pool => {
            sqlx::query(
                "UPDATE service_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
            )
            .bind(name)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(revoked == 1)
    }

    /// The active keys: (name, hash in hexadecimal, scopes).
    pub async fn active_keys(&self) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, hash, scopes FROM service_keys WHERE revoked_at IS NULL",
            )
            .fetch_all(pool)
            .await
        })
    }

    /// Appends `action` on `user` by key `actor` to the moderation log;
    /// returns its `seq`. On PostgreSQL the table is locked until commit,
    /// so entries commit in `seq` order and a reader that saw one saw
    /// every earlier one (SQLite's one writer does that by itself).
    pub async fn moderate(
        &self,
        user: &UserId,
        action: &Action,
        actor: &str,
        now_micros: i64,
    ) -> Result<i64, sqlx::Error> {
        let (until, issued_before, reason) = match action {
            Action::Ban { until, reason } => (*until, None, reason.as_str()),
            Action::Unban => (None, None, ""),
            Action::Revoke { issued_before } => (None, Some(*issued_before), ""),
            Action::Disconnect { reason } => (None, None, reason.as_str()),
        };
        let insert = "INSERT INTO moderation
                (user_id, action, until_at, issued_before, reason, actor, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq";
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            if matches!(self, Store::Postgres(_)) {
                sqlx::query("LOCK TABLE moderation IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let seq: i64 = sqlx::query_scalar(insert)
                .bind(user.as_str())
                .bind(action.kind())
                .bind(until)
                .bind(issued_before)
                .bind(reason)
                .bind(actor)
                .bind(now_micros)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(seq)
        })
    }

    /// Up to `limit` entries of the moderation log after `seq`, in order.
    pub async fn moderation_after(&self, seq: i64, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
        let rows: Vec<LogRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT seq, user_id, action, until_at, issued_before, reason FROM moderation
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(seq)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(seq, user, action, until, issued_before, reason)| Entry {
                seq,
                user: UserId::from_stored(user),
                action: match action.as_str() {
                    "ban" => Action::Ban { until, reason },
                    "unban" => Action::Unban,
                    "revoke" => Action::Revoke {
                        issued_before: issued_before.unwrap_or(i64::MAX),
                    },
                    _ => Action::Disconnect { reason },
                },
            })
            .collect())
    }

    /// A page of conversation `id`'s whole history, oldest first: what the
    /// Admin service reads, with no membership boundary.
    pub async fn history(
        &self,
        id: &ConversationId,
        page: Page,
        limit: i64,
    ) -> Result<Vec<Message>, sqlx::Error> {
        let (sql, cursor, newest_first) = match page {
            Page::Before(before) => (
                concat!(
                    "SELECT ",
                    event_columns!(),
                    events!(),
                    " WHERE m.conversation_id = $1 AND m.kind = 'message' AND m.position < $2
                     ORDER BY m.position DESC LIMIT $3"
                ),
                before.map_or(i64::MAX, |p| p.0),
                true,
            ),
            Page::After(after) => (
                concat!(
                    "SELECT ",
                    event_columns!(),
                    events!(),
                    " WHERE m.conversation_id = $1 AND m.kind = 'message' AND m.position > $2
                     ORDER BY m.position ASC LIMIT $3"
                ),
                after.0,
                false,
            ),
        };
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(id.as_str())
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

    /// Up to `limit` stored events of every conversation after `after`, in
    /// position order, of the kinds `kinds` names (message, edit, delete,
    /// reaction, read, membership, in that order): the firehose's page.
    /// Messages and the messages changes concern read as they now are; a
    /// message comes with who had no open stream as it was sent.
    pub async fn events_after(
        &self,
        after: Position,
        limit: i64,
        kinds: [bool; 6],
    ) -> Result<Vec<(Event, Vec<String>)>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            event_columns!(),
            ", m.offline",
            events!(),
            " WHERE m.position > $1 AND (
                 (m.kind = 'message' AND $3 = 1) OR (m.kind = 'edit' AND $4 = 1)
              OR (m.kind = 'delete' AND $5 = 1) OR (m.kind = 'reaction' AND $6 = 1)
              OR (m.kind = 'read' AND $7 = 1) OR (m.kind = 'membership' AND $8 = 1))
             ORDER BY m.position LIMIT $2"
        );
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            let mut query = sqlx::query_as(sql).bind(after.0).bind(limit);
            for wanted in kinds {
                query = query.bind(i32::from(wanted));
            }
            query.fetch_all(pool).await
        })?;
        Ok(rows
            .into_iter()
            .map(|mut row| {
                let offline = row.offline.take().unwrap_or_default();
                let offline = serde_json::from_str(&offline).unwrap_or_default();
                (Event::from(row), offline)
            })
            .collect())
    }

    /// Whether message `position` is a message of conversation `id`.
    pub async fn is_message_of(
        &self,
        id: &ConversationId,
        position: Position,
    ) -> Result<bool, sqlx::Error> {
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages
                 WHERE position = $1 AND conversation_id = $2 AND kind = 'message'",
            )
            .bind(position.0)
            .bind(id.as_str())
            .fetch_one(pool)
            .await
        })?;
        Ok(count > 0)
    }
}
