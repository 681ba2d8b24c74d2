//! Conversations: creating them, and pages of them as a user sees them.

use super::{ConversationRow, MessageRow, Store, kept_prepared};
use crate::domain::{Conversation, ConversationId, Message, UserId};
use std::collections::HashMap;

impl Store {
    /// Creates a conversation of `participants` (sorted, distinct), members
    /// from position 0 on (it has no history yet), of which `caller` took
    /// part (created it) and the others not yet. With a `pair_key`, finds
    /// the existing conversation of that pair instead when there is one.
    /// Returns the id and whether it was created.
    pub async fn create_conversation(
        &self,
        participants: &[UserId],
        pair_key: Option<&str>,
        creator: Option<&UserId>,
        caller: &UserId,
        now_micros: i64,
    ) -> Result<(ConversationId, bool), sqlx::Error> {
        let id = ConversationId::generate();
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            // With a pair key, a concurrent creator of the same pair makes this
            // insert do nothing (after waiting for that creator's commit).
            let inserted = sqlx::query(
                "INSERT INTO conversations (id, pair_key, created_at, creator_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (pair_key) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(pair_key)
            .bind(now_micros)
            .bind(creator.map(UserId::as_str))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                let existing: String =
                    sqlx::query_scalar("SELECT id FROM conversations WHERE pair_key = $1")
                        .bind(pair_key)
                        .fetch_one(&mut *tx)
                        .await?;
                // Asking for the pair is taking part in it.
                sqlx::query("UPDATE participants SET took_part = 1
                             WHERE conversation_id = $1 AND user_id = $2 AND took_part = 0")
                    .bind(&existing)
                    .bind(caller.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok((ConversationId::from_stored(existing), false));
            }
            // One statement per thousand members, not one per member: a
            // large group holds the database's write lock briefly, and a
            // statement stays within SQLite's limit of bound values.
            for members in participants.chunks(1_000) {
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO participants (conversation_id, user_id, took_part) ",
                );
                insert.push_values(members, |mut values, user| {
                    let took_part = i32::from(user == caller);
                    values.push_bind(id.as_str()).push_bind(user.as_str()).push_bind(took_part);
                });
                let kept = kept_prepared(3 * members.len());
                insert.build().persistent(kept).execute(&mut *tx).await?;
                let mut intervals = sqlx::QueryBuilder::new(
                    "INSERT INTO memberships (conversation_id, user_id, joined_at) ",
                );
                intervals.push_values(members, |mut values, user| {
                    values.push_bind(id.as_str()).push_bind(user.as_str()).push_bind(0_i64);
                });
                intervals.build().persistent(kept).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok((id, true))
        })
    }

    /// `user`'s conversations after `after` (from the newest activity when
    /// `None`), most recently active first: at most `limit`, and fewer
    /// once they add up to about [`PAGE_BYTES`]. Returns where the next
    /// page starts, if there is one.
    pub async fn conversation_page(
        &self,
        user: &UserId,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<Cursor>), sqlx::Error> {
        let sql = concat!(
            "SELECT id, created_at, activity, creator_id FROM (",
            my_conversations!(),
            ") t WHERE CAST($3 AS BIGINT) IS NULL OR t.activity < $3 OR (t.activity = $3 AND t.id < $4)
             ORDER BY t.activity DESC, t.id DESC LIMIT $5"
        );
        let rows: Vec<ConversationRow> = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(user.as_str())
                .bind(None::<&str>)
                .bind(after.map(|cursor| cursor.activity))
                .bind(after.map(|cursor| cursor.id.as_str()))
                .bind(limit as i64 + 1)
                .fetch_all(pool)
                .await
        })?;
        let more = rows.len() > limit;
        let mut page = Vec::new();
        let mut bytes = 0;
        // A few conversations at a time, so a page of giant groups is cut
        // before it is all in memory.
        for chunk in rows.chunks(DETAIL_CHUNK).take(limit.div_ceil(DETAIL_CHUNK)) {
            for conversation in self.details(user, chunk).await? {
                let size = conversation.approximate_bytes();
                if page.len() == limit || (!page.is_empty() && bytes + size > PAGE_BYTES) {
                    let next = page.last().map(Cursor::of);
                    return Ok((page, next));
                }
                bytes += size;
                page.push(conversation);
            }
        }
        let next = more.then(|| page.last().map(Cursor::of)).flatten();
        Ok((page, next))
    }

    /// Conversation `id` as `user` sees it, if `user` is a participant.
    pub async fn conversation(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>, sqlx::Error> {
        let rows: Vec<ConversationRow> = with_pool!(self, pool => {
            sqlx::query_as(my_conversations!()).bind(user.as_str()).bind(id.as_str()).fetch_all(pool).await
        })?;
        Ok(self.details(user, &rows).await?.into_iter().next())
    }

    /// `rows` with their participants, last messages and unread counts.
    async fn details(
        &self,
        user: &UserId,
        rows: &[ConversationRow],
    ) -> Result<Vec<Conversation>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids = || rows.iter().map(|row| row.id.as_str());
        // Each conversation's members in one row, joined by
        // MEMBER_SEPARATOR (U+001F, character 31): a group of 1,000 was
        // 1,000 rows, each its own step, allocation and hand-off from
        // SQLite's thread, and listing giant groups cost milliseconds per
        // page (the hostile mix's call flood spent most of the node on them).
        let joined = match self {
            Store::Sqlite(_) => "group_concat(user_id, char(31))",
            Store::Postgres(_) => "string_agg(user_id, chr(31))",
        };
        // Built per backend inside `with_pool!`: a query builder is typed
        // by its database.
        let (members, last, unread): Details = with_pool!(self, pool => {
            let mut members = sqlx::QueryBuilder::new(format!(
                "SELECT conversation_id, {joined} FROM participants WHERE conversation_id IN "
            ));
            members.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            members.push(" GROUP BY conversation_id");
            // The newest message the viewer may see: from their joining on.
            // One look per conversation from its end (the largest position
            // is found from the index's end), not a pass over its history.
            let mut last = sqlx::QueryBuilder::new(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE position IN (SELECT (SELECT MAX(m.position) FROM messages m
                   WHERE m.conversation_id = p.conversation_id AND m.kind = 'message'
                     AND m.position >= p.joined_at)
                 FROM participants p WHERE p.user_id = "
            ));
            last.push_bind(user.as_str());
            last.push(" AND p.conversation_id IN ");
            last.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            last.push(")");
            // Others' among the first UNREAD_WINDOW live messages after the
            // read mark: a bounded walk of `messages_unread` (which holds
            // only live messages) per conversation.
            let mut unread = sqlx::QueryBuilder::new(format!(
                "SELECT p.conversation_id, (SELECT COUNT(*) FROM (SELECT m.user_id
                   FROM messages m WHERE m.conversation_id = p.conversation_id AND m.kind = 'message'
                     AND m.deleted = 0 AND m.position > p.last_read_position
                   ORDER BY m.position LIMIT {UNREAD_WINDOW}) w
                   WHERE w.user_id <> p.user_id)
                 FROM participants p WHERE p.user_id = "
            ));
            unread.push_bind(user.as_str());
            unread.push(" AND p.conversation_id IN ");
            unread.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            let kept = kept_prepared(rows.len() + 1);
            (
                members.build_query_as().persistent(kept).fetch_all(pool).await?,
                last.build_query_as().persistent(kept).fetch_all(pool).await?,
                unread.build_query_as().persistent(kept).fetch_all(pool).await?,
            )
        });
        let mut conversations = assemble(rows, members, last, unread);
        let mut last: Vec<Message> = conversations
            .iter_mut()
            .filter_map(|conversation| conversation.last_message.take())
            .collect();
        self.with_reactions(user, &mut last).await?;
        let mut last: HashMap<ConversationId, Message> = last
            .into_iter()
            .map(|message| (message.conversation_id.clone(), message))
            .collect();
        for conversation in &mut conversations {
            conversation.last_message = last.remove(&conversation.id);
        }
        Ok(conversations)
    }
}

/// What [`Store::details`] reads: (conversation, members joined by
/// [`MEMBER_SEPARATOR`]) pairs, last messages, and (conversation, unread
/// count) pairs.
type Details = (Vec<(String, String)>, Vec<MessageRow>, Vec<(String, i64)>);

/// Where a page of conversations continues: after this activity and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub activity: i64,
    pub id: String,
}

impl Cursor {
    fn of(conversation: &Conversation) -> Self {
        Self {
            activity: conversation.activity_micros(),
            id: conversation.id.as_str().to_owned(),
        }
    }
}

/// About how many bytes of conversations one page holds, well below
/// gRPC's default 4 MiB message.
pub const PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Joins a conversation's member ids in one column (`char(31)` and
/// `chr(31)` in [`Store::details`]'s SQL): U+001F, a control character,
/// which ids refuse (`UserId::parse`).
const MEMBER_SEPARATOR: char = '\u{1f}';
/// Conversations whose details are read at once.
const DETAIL_CHUNK: usize = 10;
/// How many live messages after the read mark an unread count looks at:
/// the others' among them are counted, so a count stops at this many.
/// Counting walks an index, and unbounded it let a user's own messages,
/// never marked read, make each of their listings cost milliseconds per
/// thousand (a call flood of those starved the node). The caller's own
/// messages take places in the window (sending does not move the read
/// mark); deleted ones do not, so nobody hides later messages from others'
/// counts by sending and deleting a thousand.
pub const UNREAD_WINDOW: usize = 1000;

/// Joins the result sets of [`Store::details`], in the order of `rows`.
fn assemble(
    rows: &[ConversationRow],
    members: Vec<(String, String)>,
    last: Vec<MessageRow>,
    unread: Vec<(String, i64)>,
) -> Vec<Conversation> {
    let mut participants: HashMap<String, Vec<UserId>> = members
        .into_iter()
        .map(|(conversation, users)| {
            let users = users.split(MEMBER_SEPARATOR).map(UserId::from_stored);
            (conversation, users.collect())
        })
        .collect();
    let mut last: HashMap<String, Message> = last
        .into_iter()
        .map(|row| (row.conversation_id.clone(), Message::from(row)))
        .collect();
    let unread: HashMap<String, i64> = unread.into_iter().collect();
    rows.iter()
        .map(|row| {
            let mut participant_ids = participants.remove(&row.id).unwrap_or_default();
            participant_ids.sort();
            Conversation {
                participant_ids,
                last_message: last.remove(&row.id),
                unread_count: unread.get(&row.id).copied().unwrap_or(0),
                created_at_micros: row.created_at,
                creator_id: row.creator_id.clone().map(UserId::from_stored),
                id: ConversationId::from_stored(row.id.clone()),
            }
        })
        .collect()
}
