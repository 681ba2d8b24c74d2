//! Persistence with sqlx: SQLite (the embedded default) or PostgreSQL,
//! chosen from the database URL.
//!
//! **The stream position.** Every message gets a position from the single
//! `stream_head` row, incremented inside the inserting transaction. That row
//! lock is held until commit, so the next writer can take position `p + 1`
//! only after `p` is committed and visible: positions are gap-free and in
//! commit order. "Every message after position P" is therefore an exact
//! resume point, which a plain sequence or autoincrement is not (a value
//! taken earlier can commit later). The price is that message commits are
//! serialized per database, which SQLite does anyway; group commit (see
//! `commit`) makes each one carry every message queued meanwhile.
//!
//! Both backends run the same SQL (`$n` placeholders work on both), with one
//! measured exception: SQLite commits a batch as one multi-statement query
//! (`Sqlite::insert_batch`), one round trip instead of four. Each backend
//! keeps its own migrations folder for its column types.

use crate::{
    domain::{
        Body, Change, Conversation, ConversationId, Event, Message, Position, UserId, rules::Group,
    },
    error::Error,
};
use sqlx::{
    FromRow, PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// The database, whichever backend; cheap to clone (pools are handles).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(Sqlite),
    Postgres(PgPool),
}

impl Sqlite {
    /// The whole batch as one round trip to SQLite's worker thread: the
    /// transaction, the positions and the insert in one multi-statement
    /// query (sqlx binds each statement's parameters in turn). Each row's
    /// position is computed in SQL from the head just advanced, so nothing
    /// waits between statements. On any error the transaction is rolled
    /// back on the same connection before it goes back to the pool.
    /// Measured in BENCHMARKS.md against the four round trips it replaces.
    /// Its one caller, the committer task, never drops it half-way: a
    /// caller that could (a timeout, a `select!`) would return the writer
    /// to the pool inside the transaction sqlx does not know it began.
    async fn insert_batch(&self, rows: &[&NewMessage]) -> Result<i64, sqlx::Error> {
        let count = rows.len() as i64;
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "BEGIN IMMEDIATE; UPDATE stream_head SET position = position + ",
        );
        sql.push_bind(count).push(
            " WHERE id = 1 RETURNING position; INSERT INTO messages \
             (position, conversation_id, user_id, content, created_at, client_message_id) VALUES ",
        );
        for (index, row) in rows.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            // Our own integers, never client input.
            let below_head = count - 1 - index as i64;
            sql.push(format!(
                "((SELECT position FROM stream_head WHERE id = 1) - {below_head}, "
            ));
            sql.push_bind(row.conversation_id.as_str())
                .push(", ")
                .push_bind(row.user_id.as_str())
                .push(", ")
                .push_bind(row.content.as_str())
                .push(", ")
                .push_bind(row.created_at_micros)
                .push(", ")
                .push_bind(row.key.as_deref())
                .push(")");
        }
        sql.push("; COMMIT");
        let mut connection = self.write.acquire().await?;
        // Every statement must run: fetch_all, never a fetch that stops at
        // the first row.
        let result = sql
            .build_query_scalar::<i64>()
            .fetch_all(&mut *connection)
            .await;
        match result {
            Ok(heads) => heads.first().copied().ok_or(sqlx::Error::RowNotFound),
            Err(error) => {
                // Outside a transaction (BEGIN itself failed) this fails
                // too, harmlessly.
                let _ = sqlx::query("ROLLBACK").execute(&mut *connection).await;
                Err(error)
            }
        }
    }
}

/// SQLite as SQLite likes it: one connection writes, a few read. Writes
/// queue in the process instead of meeting as SQLITE_BUSY, and the writer
/// keeps its page cache warm (a pool hands out its connections in turn,
/// and each one's cache is stale after the others wrote: measured in
/// BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct Sqlite {
    read: SqlitePool,
    write: SqlitePool,
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds. The
/// body is compiled once per backend, so the same code serves both.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(sqlite) => {
                let $pool = &sqlite.read;
                $body
            }
            Store::Postgres($pool) => $body,
        }
    };
}

/// [`with_pool!`] for a call that writes: SQLite's one writer.
macro_rules! with_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(sqlite) => {
                let $pool = &sqlite.write;
                $body
            }
            Store::Postgres($pool) => $body,
        }
    };
}

/// How long a call waits for a free connection before reporting the
/// database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Conversations' current participants, cached and shared; cheap to
/// clone. Used to answer a sender quickly (the message insert checks
/// membership again inside its transaction, so a stale entry can never let
/// a removed member's message in) and to address typing signals, which are
/// best effort. The feed, which decides who receives what, keeps a
/// [`MemberLists`] of its own. This node's feed forgets an entry when it
/// passes a change to that conversation.
#[derive(Clone)]
pub struct Participants {
    store: Store,
    cache: Arc<Mutex<MemberLists>>,
}

impl Participants {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    /// The participants of `id`, sorted; empty when it does not exist.
    pub async fn of(&self, id: &ConversationId) -> Result<Arc<[UserId]>, sqlx::Error> {
        if let Some(found) = self.lock().get(id) {
            return Ok(found);
        }
        let found: Arc<[UserId]> = self.store.participants(id).await?.into();
        if !found.is_empty() {
            self.lock().insert(id.clone(), found.clone());
        }
        Ok(found)
    }

    /// Drops what is cached of `id`: its membership changed.
    pub fn forget(&self, id: &ConversationId) {
        self.lock().forget(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemberLists> {
        // A plain map: a panicking holder cannot leave it half-updated.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Member lists by conversation, bounded: the map starts over past
/// [`MEMBER_LIST_BYTES`], counted from the ids it holds, so a few giant
/// groups cannot make it grow without bound.
#[derive(Default)]
pub struct MemberLists {
    lists: HashMap<ConversationId, Arc<[UserId]>>,
    bytes: usize,
}

/// Bytes of ids cached before a [`MemberLists`] starts over.
const MEMBER_LIST_BYTES: usize = 64 * 1024 * 1024;

impl MemberLists {
    pub fn get(&self, id: &ConversationId) -> Option<Arc<[UserId]>> {
        self.lists.get(id).cloned()
    }

    pub fn insert(&mut self, id: ConversationId, members: Arc<[UserId]>) {
        // Each id's bytes, its String and the list's slot.
        let bytes = members
            .iter()
            .map(|user| user.as_str().len() + 48)
            .sum::<usize>()
            + id.as_str().len()
            + 64;
        if self.bytes + bytes > MEMBER_LIST_BYTES {
            *self = Self::default();
        }
        // A replaced list's bytes stay counted until the map starts over:
        // an overestimate, never an underestimate.
        self.bytes += bytes;
        self.lists.insert(id, members);
    }

    pub fn forget(&mut self, id: &ConversationId) {
        self.lists.remove(id);
    }
}

/// A message to commit.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub content: String,
    /// The client's idempotency key, unique per user.
    pub key: Option<String>,
    pub created_at_micros: i64,
}

/// Whether `error` is a unique-constraint violation (a reused idempotency key).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
}

/// Whether the database refused `error`'s statement for the data it
/// carried (a value it cannot store, a constraint, a trigger's refusal),
/// which retrying other rows without it can fix; not for the database's own
/// state (busy, locked, a serialization failure, a lost connection), which
/// any retry would meet again.
pub fn refused_for_its_data(error: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    let Some(error) = error.as_database_error() else {
        return false;
    };
    if !matches!(error.kind(), ErrorKind::Other) {
        return true; // unique, foreign key, not null, check
    }
    let code = error.code().unwrap_or_default();
    match code.parse::<i32>() {
        // SQLite: a constraint (a trigger's RAISE included), too big, mismatch.
        Ok(sqlite) => matches!(sqlite & 0xff, 18..=20),
        // PostgreSQL: data exceptions, integrity violations, raised in PL/pgSQL.
        Err(_) => code.starts_with("22") || code.starts_with("23") || code.starts_with("P0"),
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

/// The columns [`MessageRow`] reads, as a literal for `concat!` (sqlx takes
/// only static SQL).
macro_rules! message_columns {
    () => {
        "position, conversation_id, user_id, content, created_at"
    };
}

/// The caller's conversations (`$1`), or just one (`$2`) when it is not
/// NULL, each with its last activity: its newest message's time, else its
/// creation's.
macro_rules! my_conversations {
    () => {
        "SELECT c.id, c.created_at,
           COALESCE((SELECT m.created_at FROM messages m WHERE m.conversation_id = c.id
                     AND m.kind = 'message' AND m.position >= p.joined_at
                     ORDER BY m.position DESC LIMIT 1), c.created_at) AS activity,
           c.creator_id
         FROM participants p JOIN conversations c ON c.id = p.conversation_id
         WHERE p.user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR c.id = $2)"
    };
}

#[derive(FromRow)]
struct MessageRow {
    position: i64,
    conversation_id: String,
    user_id: String,
    content: String,
    created_at: i64,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            position: Position(row.position),
            conversation_id: ConversationId::from_stored(row.conversation_id),
            user_id: UserId::from_stored(row.user_id),
            content: row.content,
            created_at_micros: row.created_at,
        }
    }
}

#[derive(FromRow)]
struct ConversationRow {
    id: String,
    created_at: i64,
    creator_id: Option<String>,
}

/// The columns [`EventRow`] reads, as a literal for `concat!`.
macro_rules! event_columns {
    () => {
        "m.position, m.conversation_id, m.user_id, m.content, m.created_at, m.kind"
    };
}

/// Whether position `m.position` of conversation `m.conversation_id` falls
/// in one of user `$1`'s membership intervals (`ms`): the one visibility
/// rule of replay, history and resume points.
macro_rules! in_membership {
    () => {
        "JOIN memberships ms ON ms.conversation_id = m.conversation_id AND ms.user_id = $1
           AND m.position >= ms.joined_at AND (ms.left_at IS NULL OR m.position <= ms.left_at)"
    };
}

/// The position at which user `$1` first joined conversation `$2`: where
/// a page of their history stops scanning, so paging back past a late
/// join never reads the history before it.
macro_rules! first_join {
    () => {
        "(SELECT MIN(joined_at) FROM memberships WHERE conversation_id = $2 AND user_id = $1)"
    };
}

#[derive(FromRow)]
struct EventRow {
    position: i64,
    conversation_id: String,
    user_id: String,
    content: String,
    created_at: i64,
    kind: String,
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        Event {
            position: Position(row.position),
            conversation_id: ConversationId::from_stored(row.conversation_id),
            user_id: UserId::from_stored(row.user_id),
            created_at_micros: row.created_at,
            body: Body::decode(&row.kind, row.content),
        }
    }
}

/// A change to a conversation that [`Store::commit_change`] makes.
#[derive(Clone, Debug)]
pub enum ChangeRequest {
    Add(Vec<UserId>),
    Remove(UserId),
    Read(Position),
}

/// The message of the trigger that refuses a non-participant's message
/// (see the membership migration).
const NOT_A_PARTICIPANT: &str = "herald: the sender is not a participant";

/// Whether the database refused a message because its sender is not a
/// participant when it commits.
pub fn is_not_participant(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.message().contains(NOT_A_PARTICIPANT))
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and migrates.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        let store = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Store::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.clone())
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&write).await?;
            let read = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Store::Sqlite(Sqlite { read, write })
        } else {
            return Err(sqlx::Error::Configuration(
                "the database URL must start with sqlite: or postgres:".into(),
            ));
        };
        Ok(store)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        with_writer!(self, pool => pool.close().await);
        with_pool!(self, pool => pool.close().await)
    }

    /// The position of the newest committed message (0 when there is none).
    pub async fn head(&self) -> Result<Position, sqlx::Error> {
        let sql = "SELECT position FROM stream_head WHERE id = 1";
        let position: i64 =
            with_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(Position(position))
    }

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
                insert.build().execute(&mut *tx).await?;
                let mut intervals = sqlx::QueryBuilder::new(
                    "INSERT INTO memberships (conversation_id, user_id, joined_at) ",
                );
                intervals.push_values(members, |mut values, user| {
                    values.push_bind(id.as_str()).push_bind(user.as_str()).push_bind(0_i64);
                });
                intervals.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok((id, true))
        })
    }

    /// Commits `rows` in one transaction at the next stream positions, in
    /// order: one commit (and one wait for the disk) for the whole batch.
    /// Fails whole, with every position rolled back, on any error — a
    /// unique violation of an idempotency key included.
    pub async fn insert_batch(&self, rows: &[&NewMessage]) -> Result<Vec<Message>, sqlx::Error> {
        let count = rows.len() as i64;
        let last = match self {
            Store::Sqlite(sqlite) => sqlite.insert_batch(rows).await?,
            Store::Postgres(_) => self.insert_batch_in_steps(rows).await?,
        };
        let first = last - count + 1;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(index, row)| Message {
                position: Position(first + index as i64),
                conversation_id: row.conversation_id.clone(),
                user_id: row.user_id.clone(),
                content: row.content.clone(),
                created_at_micros: row.created_at_micros,
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
                "INSERT INTO messages (position, conversation_id, user_id, content, created_at, client_message_id) ",
            );
            insert.push_values(rows.iter().enumerate(), |mut values, (index, row)| {
                values
                    .push_bind(last - count + 1 + index as i64)
                    .push_bind(row.conversation_id.as_str())
                    .push_bind(row.user_id.as_str())
                    .push_bind(row.content.as_str())
                    .push_bind(row.created_at_micros)
                    .push_bind(row.key.as_deref());
            });
            insert.build().execute(&mut *tx).await?;
            tx.commit().await?;
            last
        });
        Ok(last)
    }

    /// Records stream ticket `id` as used; false when it was used before.
    /// Tickets expired for a minute are forgotten on the way.
    pub async fn redeem_ticket(
        &self,
        id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let forget = "DELETE FROM redeemed_tickets WHERE expires_at < $1";
        let redeem = "INSERT INTO redeemed_tickets (id, expires_at) VALUES ($1, $2)
                      ON CONFLICT (id) DO NOTHING";
        let inserted = with_writer!(self, pool => {
            sqlx::query(forget).bind(now - 60).execute(pool).await?;
            sqlx::query(redeem).bind(id).bind(expires_at).execute(pool).await?.rows_affected()
        });
        Ok(inserted == 1)
    }

    /// The message `user_id` sent with idempotency key `key`, if any.
    pub async fn message_by_key(
        &self,
        user_id: &UserId,
        key: &str,
    ) -> Result<Option<Message>, sqlx::Error> {
        let sql = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE user_id = $1 AND client_message_id = $2"
        );
        let row: Option<MessageRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(user_id.as_str()).bind(key).fetch_optional(pool).await
        })?;
        Ok(row.map(Message::from))
    }

    /// Blocks `blocked` for `blocker` (a no-op when already blocked),
    /// unless `blocker` already blocks `max` users.
    pub async fn block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        max: usize,
        now_micros: i64,
    ) -> Result<(), Error> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blocks WHERE blocker = $1")
                .bind(blocker.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if count >= max as i64 {
                return Err(Error::FailedPrecondition(format!(
                    "a user blocks at most {max} users"
                )));
            }
            sqlx::query(
                "INSERT INTO blocks (blocker, blocked, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (blocker, blocked) DO NOTHING",
            )
            .bind(blocker.as_str())
            .bind(blocked.as_str())
            .bind(now_micros)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Lifts `blocker`'s block of `blocked`, if there is one.
    pub async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> Result<(), sqlx::Error> {
        let sql = "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2";
        with_writer!(self, pool => {
            sqlx::query(sql).bind(blocker.as_str()).bind(blocked.as_str()).execute(pool).await?;
        });
        Ok(())
    }

    /// The users `blocker` blocks, sorted.
    pub async fn blocked_by(&self, blocker: &UserId) -> Result<Vec<UserId>, sqlx::Error> {
        let sql = "SELECT blocked FROM blocks WHERE blocker = $1";
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(blocker.as_str()).fetch_all(pool).await
        })?;
        Ok(sorted(ids))
    }

    /// Whether any of `users` blocks `user`.
    pub async fn blocked_by_any(
        &self,
        users: &[UserId],
        user: &UserId,
    ) -> Result<bool, sqlx::Error> {
        // A statement per thousand ids, within both backends' bound values.
        for chunk in users.chunks(1_000) {
            let found: Option<String> = with_pool!(self, pool => {
                let mut sql =
                    sqlx::QueryBuilder::new("SELECT blocker FROM blocks WHERE blocked = ");
                sql.push_bind(user.as_str()).push(" AND blocker IN ");
                sql.push_tuples(chunk, |mut tuple, user| {
                    tuple.push_bind(user.as_str());
                });
                sql.push(" LIMIT 1");
                sql.build_query_scalar().fetch_optional(pool).await?
            });
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Those of `users` whom `blocker` blocks, sorted.
    pub async fn blocked_among(
        &self,
        blocker: &UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>, sqlx::Error> {
        let mut found = Vec::new();
        for chunk in users.chunks(1_000) {
            let ids: Vec<String> = with_pool!(self, pool => {
                let mut sql =
                    sqlx::QueryBuilder::new("SELECT blocked FROM blocks WHERE blocker = ");
                sql.push_bind(blocker.as_str()).push(" AND blocked IN ");
                sql.push_tuples(chunk, |mut tuple, user| {
                    tuple.push_bind(user.as_str());
                });
                sql.build_query_scalar().fetch_all(pool).await?
            });
            found.extend(ids);
        }
        Ok(sorted(found))
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
                    " FROM messages m ",
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
                    " FROM messages m ",
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
        let mut messages: Vec<Message> = rows
            .into_iter()
            .filter_map(|row| Event::from(row).message())
            .collect();
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
            " FROM messages m ",
            in_membership!(),
            " WHERE m.position > $2 AND (m.kind = 'message' OR $4 = 1)
             ORDER BY m.position LIMIT $3"
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
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages m ",
            in_membership!(),
            " WHERE m.position > $2 AND (m.kind = 'message' OR $4 = 1) LIMIT $3) AS missed"
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
            " WHERE m.position = $2"
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
            " FROM messages m WHERE m.position >= $1 AND m.position < $2 ORDER BY m.position"
        );
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(from.0).bind(to.0).fetch_all(pool).await
        })?;
        Ok(rows.into_iter().map(Event::from).collect())
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
        request: &ChangeRequest,
        max_members: usize,
        now_micros: i64,
    ) -> Result<Option<Event>, Error> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            let position: i64 = sqlx::query_scalar(
                "UPDATE stream_head SET position = position + 1 WHERE id = 1 RETURNING position",
            )
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
                    let member: bool = sqlx::query_scalar(
                        "SELECT EXISTS (SELECT 1 FROM participants
                         WHERE conversation_id = $1 AND user_id = $2)",
                    )
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
                    let added = group.add(actor, users, max_members)?;
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
                    group.remove(actor, user)?;
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
        // Built per backend inside `with_pool!`: a query builder is typed
        // by its database.
        let (members, last, unread): Details = with_pool!(self, pool => {
            let mut members = sqlx::QueryBuilder::new(
                "SELECT conversation_id, user_id FROM participants WHERE conversation_id IN ",
            );
            members.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            // The newest message the viewer may see: from their joining on.
            let mut last = sqlx::QueryBuilder::new(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE position IN (SELECT MAX(m.position) FROM messages m
                  JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = "
            ));
            last.push_bind(user.as_str());
            last.push(" WHERE m.kind = 'message' AND m.position >= p.joined_at AND m.conversation_id IN ");
            last.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            last.push(" GROUP BY m.conversation_id)");
            let mut unread = sqlx::QueryBuilder::new(
                "SELECT m.conversation_id, COUNT(*) FROM messages m
                 JOIN participants p ON p.conversation_id = m.conversation_id AND p.user_id = ",
            );
            unread.push_bind(user.as_str());
            unread.push(
                " WHERE m.position > p.last_read_position AND m.user_id <> p.user_id
                  AND m.kind = 'message' AND m.conversation_id IN ",
            );
            unread.push_tuples(ids(), |mut tuple, id| {
                tuple.push_bind(id);
            });
            unread.push(" GROUP BY m.conversation_id");
            (
                members.build_query_as().fetch_all(pool).await?,
                last.build_query_as().fetch_all(pool).await?,
                unread.build_query_as().fetch_all(pool).await?,
            )
        });
        Ok(assemble(rows, members, last, unread))
    }
}

/// What [`Store::details`] reads: (conversation, member) pairs, last
/// messages, and (conversation, unread count) pairs.
type Details = (Vec<(String, String)>, Vec<MessageRow>, Vec<(String, i64)>);

/// Stored user ids, sorted here rather than in SQL, so both backends agree
/// whatever their collation.
fn sorted(ids: Vec<String>) -> Vec<UserId> {
    let mut ids: Vec<UserId> = ids.into_iter().map(UserId::from_stored).collect();
    ids.sort();
    ids
}

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
/// Conversations whose details are read at once.
const DETAIL_CHUNK: usize = 10;

/// Joins the result sets of [`Store::details`], in the order of `rows`.
fn assemble(
    rows: &[ConversationRow],
    members: Vec<(String, String)>,
    last: Vec<MessageRow>,
    unread: Vec<(String, i64)>,
) -> Vec<Conversation> {
    let mut participants: HashMap<String, Vec<UserId>> = HashMap::new();
    for (conversation, user) in members {
        participants
            .entry(conversation)
            .or_default()
            .push(UserId::from_stored(user));
    }
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
