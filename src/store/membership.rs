//! Membership: who is in a conversation now and at a position, who shares
//! one with whom, and changes committed at their own positions.

use super::{IS_PARTICIPANT, NEXT_POSITION, Store, sorted};
use crate::{
    domain::{
        Body, Change, ConversationId, Event, Position, UserId,
        rules::{Authority, Group},
    },
    error::Error,
};
use std::collections::HashMap;

/// A change to a conversation that [`Store::commit_change`] makes.
#[derive(Clone, Debug)]
pub enum ChangeRequest {
    Add(Vec<UserId>),
    Remove(UserId),
    Read(Position),
}

impl Store {
    /// The participants of a conversation, sorted; empty when it does not exist.
    pub async fn participants(&self, id: &ConversationId) -> Result<Vec<UserId>, sqlx::Error> {
        let sql = "SELECT user_id FROM participants WHERE conversation_id = $1";
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id.as_str()).fetch_all(pool).await
        })?;
        Ok(sorted(ids))
    }

    /// Whether `user` is a participant of conversation `id` now; `None`
    /// when there is no such conversation.
    pub async fn is_participant(
        &self,
        id: &ConversationId,
        user: &UserId,
    ) -> Result<Option<bool>, sqlx::Error> {
        let sql =
            "SELECT EXISTS (SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2)
                   FROM conversations WHERE id = $1";
        let found: Option<bool> = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id.as_str()).bind(user.as_str()).fetch_optional(pool).await
        })?;
        Ok(found)
    }

    /// For each of `users`, who hears of their presence: everyone else in a
    /// conversation the user took part in (created, sent or read in), less
    /// those the user blocks. One query for the batch; its cost is the sum
    /// of the sizes of their conversations.
    pub async fn sharers(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, Vec<UserId>>, sqlx::Error> {
        let mut found: HashMap<UserId, Vec<UserId>> = HashMap::new();
        for chunk in users.chunks(500) {
            let rows: Vec<(String, String)> = with_pool!(self, pool => {
                let mut sql = sqlx::QueryBuilder::new(
                    "SELECT DISTINCT mine.user_id, theirs.user_id FROM participants mine
                     JOIN participants theirs ON theirs.conversation_id = mine.conversation_id
                     AND theirs.user_id <> mine.user_id
                     WHERE mine.took_part = 1 AND NOT EXISTS (SELECT 1 FROM blocks b
                       WHERE b.blocker = mine.user_id AND b.blocked = theirs.user_id)
                     AND mine.user_id IN ",
                );
                sql.push_tuples(chunk, |mut tuple, user| {
                    tuple.push_bind(user.as_str());
                });
                sql.build_query_as().fetch_all(pool).await?
            });
            for (user, sharer) in rows {
                found
                    .entry(UserId::from_stored(user))
                    .or_default()
                    .push(UserId::from_stored(sharer));
            }
        }
        Ok(found)
    }

    /// Those of `users` who share a conversation with `caller` now (the
    /// caller counts when they are in any conversation). With `consent`,
    /// only through conversations they took part in, and not those who
    /// block the caller: whose presence the caller may see.
    pub async fn shared_with(
        &self,
        caller: &UserId,
        users: &[UserId],
        consent: bool,
    ) -> Result<Vec<UserId>, sqlx::Error> {
        let mut found = Vec::new();
        // A statement per thousand ids, within both backends' bound values.
        for chunk in users.chunks(1_000) {
            let ids: Vec<String> = with_pool!(self, pool => {
                let mut sql = sqlx::QueryBuilder::new(
                    "SELECT DISTINCT theirs.user_id FROM participants mine
                     JOIN participants theirs ON theirs.conversation_id = mine.conversation_id
                     WHERE mine.user_id = ",
                );
                sql.push_bind(caller.as_str());
                if consent {
                    sql.push(
                        " AND (theirs.took_part = 1 OR theirs.user_id = mine.user_id)
                          AND NOT EXISTS (SELECT 1 FROM blocks b
                            WHERE b.blocker = theirs.user_id AND b.blocked = mine.user_id)",
                    );
                }
                sql.push(" AND theirs.user_id IN ");
                sql.push_tuples(chunk, |mut tuple, user| {
                    tuple.push_bind(user.as_str());
                });
                sql.build_query_scalar().fetch_all(pool).await?
            });
            found.extend(ids);
        }
        let mut found = sorted(found);
        found.dedup();
        Ok(found)
    }

    /// [`members_at`](Self::members_at) of several conversations, each at
    /// its own position, in one query; a conversation with none is absent.
    pub async fn members_at_many(
        &self,
        at: &[(ConversationId, Position)],
    ) -> Result<HashMap<ConversationId, Vec<UserId>>, sqlx::Error> {
        let mut found: HashMap<ConversationId, Vec<String>> = HashMap::new();
        // Two bound values per conversation, well within both backends'
        // limits per statement.
        for chunk in at.chunks(500) {
            let rows: Vec<(String, String)> = with_pool!(self, pool => {
                // VALUES names its columns column1, column2 on both backends.
                let mut sql = sqlx::QueryBuilder::new(
                    "SELECT ms.conversation_id, ms.user_id FROM memberships ms JOIN (",
                );
                sql.push_values(chunk, |mut values, (id, position)| {
                    values.push_bind(id.as_str()).push_bind(position.0);
                });
                sql.push(
                    ") AS at ON ms.conversation_id = at.column1 AND ms.joined_at <= at.column2
                     AND (ms.left_at IS NULL OR ms.left_at >= at.column2)",
                );
                sql.build_query_as().fetch_all(pool).await?
            });
            for (conversation, user) in rows {
                found
                    .entry(ConversationId::from_stored(conversation))
                    .or_default()
                    .push(user);
            }
        }
        Ok(found
            .into_iter()
            .map(|(id, users)| (id, sorted(users)))
            .collect())
    }

    /// The members of a conversation as of `position`, sorted: those whose
    /// interval holds it (a change at `position` counts both the users it
    /// adds and those it removes). How the feed learns a conversation it
    /// has not cached.
    pub async fn members_at(
        &self,
        id: &ConversationId,
        position: Position,
    ) -> Result<Vec<UserId>, sqlx::Error> {
        let sql = "SELECT user_id FROM memberships WHERE conversation_id = $1
                   AND joined_at <= $2 AND (left_at IS NULL OR left_at >= $2)";
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id.as_str()).bind(position.0).fetch_all(pool).await
        })?;
        Ok(sorted(ids))
    }

    /// Makes `request` by `actor` to conversation `id` at the next stream
    /// position, in one transaction: the checks, the membership or read
    /// mark, and the event that tells every member. `Ok(None)` when it
    /// changes nothing (users already members, a read mark already past
    /// the message): the position is rolled back with the transaction.
    /// Refusals are the caller's answer: not found, not a participant, not
    /// the creator, not a group, over `max_members`.
    ///
    /// The head is locked first, so the checks see every change and
    /// message committed before this position, and none after.
    pub async fn commit_change(
        &self,
        id: &ConversationId,
        actor: &UserId,
        by: Authority,
        request: &ChangeRequest,
        max_members: usize,
        now_micros: i64,
    ) -> Result<Option<Event>, Error> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            let position: i64 = sqlx::query_scalar(NEXT_POSITION)
            .fetch_one(&mut *tx)
            .await?;
            let conversation: Option<(bool, Option<String>, i64)> = sqlx::query_as(
                "SELECT pair_key IS NOT NULL, creator_id, created_at FROM conversations WHERE id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((pair, creator, created_at)) = conversation else {
                return Err(Error::NotFound("conversation"));
            };
            // A receipt needs the reader's own row only; a membership change
            // needs the whole group (it carries the members after it).
            let mut members = match request {
                ChangeRequest::Read(_) => {
                    let member: bool = sqlx::query_scalar(IS_PARTICIPANT)
                    .bind(id.as_str())
                    .bind(actor.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    if !member {
                        return Err(Error::PermissionDenied);
                    }
                    Vec::new()
                }
                ChangeRequest::Add(_) | ChangeRequest::Remove(_) => {
                    let members: Vec<String> = sqlx::query_scalar(
                        "SELECT user_id FROM participants WHERE conversation_id = $1",
                    )
                    .bind(id.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
                    sorted(members)
                }
            };
            let creator = creator.map(UserId::from_stored);
            // The rules decide (`domain::rules`); the store writes.
            let group = Group {
                pair,
                creator: creator.as_ref(),
                members: &members,
            };
            let body = match request {
                ChangeRequest::Read(read) => {
                    // Reading is taking part (see `sharers`).
                    let moved = sqlx::query(
                        "UPDATE participants SET last_read_position = $3, took_part = 1
                         WHERE conversation_id = $1 AND user_id = $2 AND last_read_position < $3",
                    )
                    .bind(id.as_str())
                    .bind(actor.as_str())
                    .bind(read.0)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 0 {
                        return Ok(None);
                    }
                    Body::Read(*read)
                }
                ChangeRequest::Add(users) => {
                    let added = group.add(actor, users, max_members, by)?;
                    if added.is_empty() {
                        return Ok(None);
                    }
                    // New members see the conversation from this position:
                    // nothing before it counts as unread either.
                    for chunk in added.chunks(1_000) {
                        let mut current = sqlx::QueryBuilder::new(
                            "INSERT INTO participants (conversation_id, user_id, last_read_position, joined_at) ",
                        );
                        current.push_values(chunk, |mut values, user| {
                            values
                                .push_bind(id.as_str())
                                .push_bind(user.as_str())
                                .push_bind(position)
                                .push_bind(position);
                        });
                        current.build().execute(&mut *tx).await?;
                        let mut intervals = sqlx::QueryBuilder::new(
                            "INSERT INTO memberships (conversation_id, user_id, joined_at) ",
                        );
                        intervals.push_values(chunk, |mut values, user| {
                            values
                                .push_bind(id.as_str())
                                .push_bind(user.as_str())
                                .push_bind(position);
                        });
                        intervals.build().execute(&mut *tx).await?;
                    }
                    members.extend(added.iter().cloned());
                    members.sort();
                    Body::Membership(Change {
                        added,
                        removed: Vec::new(),
                        members,
                        creator,
                        conversation_created_at_micros: created_at,
                    })
                }
                ChangeRequest::Remove(user) => {
                    group.remove(actor, user, by)?;
                    members.retain(|member| member != user);
                    sqlx::query("DELETE FROM participants WHERE conversation_id = $1 AND user_id = $2")
                        .bind(id.as_str())
                        .bind(user.as_str())
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE memberships SET left_at = $3
                         WHERE conversation_id = $1 AND user_id = $2 AND left_at IS NULL",
                    )
                    .bind(id.as_str())
                    .bind(user.as_str())
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                    Body::Membership(Change {
                        added: Vec::new(),
                        removed: vec![user.clone()],
                        members,
                        creator,
                        conversation_created_at_micros: created_at,
                    })
                }
            };
            sqlx::query(
                "INSERT INTO messages (position, conversation_id, user_id, content, created_at, kind)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(position)
            .bind(id.as_str())
            .bind(actor.as_str())
            .bind(body.encode())
            .bind(now_micros)
            .bind(body.kind())
            .execute(&mut *tx)
            .await?;
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
}
