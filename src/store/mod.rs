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
//! measured exception: SQLite commits a batch of messages on a connection
//! of its own, without sqlx, on the committer's thread (`sqlite::Inserter`):
//! no hand-off per batch. Each backend keeps its own migrations folder for
//! its column types.

use crate::domain::{Body, ConversationId, Event, Message, Position, UserId};
use sqlx::{
    FromRow, PgPool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::{str::FromStr, time::Duration};

/// The database, whichever backend; cheap to clone (pools are handles).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(Sqlite),
    Postgres(PgPool),
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

/// [`with_pool!`] for a call that writes: SQLite's writer, in its turn
/// with the message inserter (see `Sqlite::turn`), whose checkpointer is
/// told after the call (see `Sqlite::checkpoint_often`).
macro_rules! with_writer {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite(sqlite) => {
                let $pool = &sqlite.write;
                let turn = sqlite.take_turn().await?;
                let result = $body;
                drop(turn);
                sqlite.wrote.notify_one();
                result
            }
            Store::Postgres($pool) => $body,
        }
    };
}

/// Takes the next stream position for a change, locking the head until the
/// transaction ends (see the module comment).
const NEXT_POSITION: &str =
    "UPDATE stream_head SET position = position + 1 WHERE id = 1 RETURNING position";

/// Whether user `$2` is a participant of conversation `$1` now.
const IS_PARTICIPANT: &str =
    "SELECT EXISTS (SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2)";

/// How long a SQLite connection waits for another's write to end.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free connection before reporting the
/// database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns [`MessageRow`] reads, as a literal for `concat!` (sqlx takes
/// only static SQL).
macro_rules! message_columns {
    () => {
        "position, conversation_id, user_id, content, created_at, edited_at, deleted, reply_to, system"
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
    edited_at: Option<i64>,
    deleted: i32,
    reply_to: Option<i64>,
    system: i32,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            position: Position(row.position),
            conversation_id: ConversationId::from_stored(row.conversation_id),
            user_id: UserId::from_stored(row.user_id),
            content: row.content,
            created_at_micros: row.created_at,
            edited_at_micros: row.edited_at,
            deleted: row.deleted != 0,
            reply_to: row.reply_to.map(Position),
            system: row.system != 0,
            reactions: Vec::new(),
        }
    }
}

#[derive(FromRow)]
struct ConversationRow {
    id: String,
    created_at: i64,
    creator_id: Option<String>,
}

/// The columns [`EventRow`] reads, as a literal for `concat!`: the event
/// `m`, and for a change to a message the message `t` as it now is.
macro_rules! event_columns {
    () => {
        "m.position, m.conversation_id, m.user_id, m.content, m.created_at, m.kind,
         m.edited_at, m.deleted, m.reply_to, m.target, m.changed_at, m.system,
         t.user_id AS t_user_id, t.content AS t_content, t.created_at AS t_created_at,
         t.edited_at AS t_edited_at, t.deleted AS t_deleted, t.reply_to AS t_reply_to,
         t.changed_at AS t_changed_at, t.system AS t_system"
    };
}

/// Events `m`, each with the message `t` it changes (if it is a change):
/// an edit's or a deletion's row holds nothing of the message, whose own
/// row is the only copy of its content.
macro_rules! events {
    () => {
        " FROM messages m LEFT JOIN messages t ON t.position = m.target "
    };
}

/// What a replay leaves out: an edit a later change superseded (the later
/// one carries the message as it now is, so a replay costs one copy of each
/// message, not one per edit), and the reactions of a deleted message.
/// Never in the feed's reads: those must hold every position.
macro_rules! current_changes {
    () => {
        " AND NOT (m.kind = 'edit' AND t.changed_at > m.position)
          AND NOT (m.kind = 'reaction' AND t.deleted <> 0) "
    };
}

/// Whether user `$1` saw the message a change `m` concerns (was a member
/// when it was sent): a change reaches only those, within their membership
/// ([`in_membership!`]) at the change.
macro_rules! saw_target {
    () => {
        " AND (m.target IS NULL OR EXISTS (SELECT 1 FROM memberships mt
             WHERE mt.conversation_id = m.conversation_id AND mt.user_id = $1
               AND m.target >= mt.joined_at AND (mt.left_at IS NULL OR m.target <= mt.left_at))) "
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
    edited_at: Option<i64>,
    deleted: i32,
    reply_to: Option<i64>,
    target: Option<i64>,
    t_user_id: Option<String>,
    t_content: Option<String>,
    t_created_at: Option<i64>,
    t_edited_at: Option<i64>,
    t_deleted: Option<i32>,
    t_reply_to: Option<i64>,
    changed_at: Option<i64>,
    t_changed_at: Option<i64>,
    system: i32,
    t_system: Option<i32>,
    /// Who had no open stream when a message was sent, as stored (only the
    /// firehose's read selects it).
    #[sqlx(default)]
    offline: Option<String>,
    /// The end of the reader's membership interval holding the event, when
    /// a replay reads it (`ms.left_at`): what changed after it is withheld.
    #[sqlx(default)]
    left_at: Option<i64>,
}

impl EventRow {
    /// A message's row as the message now is: edited, deleted, replying.
    fn message(self) -> Message {
        Message::from(MessageRow {
            position: self.position,
            conversation_id: self.conversation_id,
            user_id: self.user_id,
            content: self.content,
            created_at: self.created_at,
            edited_at: self.edited_at,
            deleted: self.deleted,
            reply_to: self.reply_to,
            system: self.system,
        })
    }
}

/// Whether a message last changed at `changed_at` may be shown as it now is
/// to a reader whose membership ended at `left_at`: not if it changed after
/// (they are told nothing committed after they left).
fn withheld(left_at: Option<i64>, changed_at: Option<i64>) -> bool {
    matches!((left_at, changed_at), (Some(left), Some(changed)) if changed > left)
}

impl From<EventRow> for Event {
    fn from(row: EventRow) -> Self {
        let conversation_id = ConversationId::from_stored(row.conversation_id);
        // The message a change concerns, as it now is (to a reader who has
        // left since it changed, a tombstone: its content is not theirs).
        let changed = || {
            let hidden = withheld(row.left_at, row.t_changed_at);
            Box::new(Message::from(MessageRow {
                position: row.target.unwrap_or_default(),
                conversation_id: conversation_id.as_str().to_owned(),
                user_id: row.t_user_id.clone().unwrap_or_default(),
                content: match hidden {
                    true => String::new(),
                    false => row.t_content.clone().unwrap_or_default(),
                },
                created_at: row.t_created_at.unwrap_or_default(),
                edited_at: row.t_edited_at.filter(|_| !hidden),
                deleted: row.t_deleted.unwrap_or_default() | i32::from(hidden),
                reply_to: row.t_reply_to,
                system: row.t_system.unwrap_or_default(),
            }))
        };
        let body = match row.kind.as_str() {
            "edit" => Body::Edited(changed()),
            "delete" => Body::Deleted(changed()),
            "message" => {
                let hidden = withheld(row.left_at, row.changed_at);
                Body::Message {
                    content: match hidden {
                        true => String::new(),
                        false => row.content,
                    },
                    reply_to: row.reply_to.map(Position),
                    edited_at_micros: row.edited_at.filter(|_| !hidden),
                    deleted: row.deleted != 0 || hidden,
                    system: row.system != 0,
                }
            }
            kind => Body::decode(kind, row.content, None),
        };
        Event {
            position: Position(row.position),
            conversation_id,
            user_id: UserId::from_stored(row.user_id),
            created_at_micros: row.created_at,
            body,
        }
    }
}

// After the macros above, which they use.
mod admin;
mod blocks;
mod cache;
mod changes;
mod conversations;
mod membership;
mod messages;
mod sqlite;
mod tickets;
pub mod webhooks;

pub use cache::{MemberLists, Participants};
pub use changes::MessageChange;
pub use conversations::Cursor;
pub use membership::ChangeRequest;
pub use messages::{NewMessage, Page, Refused};
use sqlite::Sqlite;

/// The page cache of each SQLite reader and of the eraser, as SQLite's
/// `cache_size` (negative: KiB): 64 pages of 4 KiB. The writers keep
/// SQLite's default (2 MiB): the inserter's stays warm while only messages
/// are written (in WAL mode a connection drops its cache at its first
/// transaction after another connection's commit, so each of the two
/// writers starts cold after the other wrote).
const SMALL_CACHE: &str = "-256";

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
                .busy_timeout(BUSY_TIMEOUT)
                // A deleted message's content is overwritten in the file,
                // not only unlinked from the table (see `changes`).
                .pragma("secure_delete", "on")
                .foreign_keys(true);
            // The inserter opens the file by its name: a database that is
            // not a plain file (in memory, another VFS) would be two.
            let name = options.get_filename().to_string_lossy();
            if name.starts_with("file:") || ["mode=memory", "vfs="].iter().any(|o| url.contains(o))
            {
                return Err(sqlx::Error::Configuration(
                    "a SQLite database URL must name a file (sqlite://FILE)".into(),
                ));
            }
            // No ping before each acquire (sqlx's default): an in-process
            // connection cannot have hung up, and the ping is a round trip
            // to the connection's thread and back, per commit and per read.
            let write = SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(
                    options
                        .clone()
                        .pragma("wal_autocheckpoint", sqlite::WRITER_CHECKPOINT_PAGES),
                )
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&write).await?;
            let inserter = sqlite::Inserter::open(options.get_filename())?;
            // The log's truncation after a deletion waits for readers only
            // briefly, and tries again later, on a connection of its own.
            let eraser = SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(
                    options
                        .clone()
                        .busy_timeout(Duration::from_millis(100))
                        .pragma("cache_size", SMALL_CACHE),
                );
            // A reader's page cache is small: in WAL mode a connection drops
            // its whole cache when it begins reading after any commit, so
            // under chat load a large one is never warm, and at rest eight
            // of them would each keep their own copy of the same pages
            // (2 MiB each by default; the kernel's page cache holds one).
            let read = SqlitePoolOptions::new()
                .test_before_acquire(false)
                .max_connections(8)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.pragma("cache_size", SMALL_CACHE))
                .await?;
            Store::Sqlite(Sqlite {
                read,
                write,
                inserter,
                turn: Default::default(),
                eraser,
                erase: Default::default(),
                wrote: Default::default(),
            })
        } else {
            return Err(sqlx::Error::Configuration(
                "the database URL must start with sqlite: or postgres:".into(),
            ));
        };
        Ok(store)
    }

    /// Tends SQLite until `closing`: copies its write-ahead log into the
    /// file off the writer's path, keeps what edits and deletions remove
    /// out of the database's files, and closes the readers a burst opened.
    /// PostgreSQL has nothing to do here (its checkpoints are its own;
    /// VACUUM reclaims dead rows; its pool's connections are few and
    /// shared).
    pub async fn tend(self, closing: tokio_util::sync::CancellationToken) {
        if let Store::Sqlite(sqlite) = self {
            sqlite.tend(closing).await;
        }
    }

    /// Whether committing messages blocks the committer's thread (SQLite's
    /// inserter does), so that it needs a thread of its own.
    pub fn commits_in_place(&self) -> bool {
        matches!(self, Store::Sqlite(_))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            // The committer has stopped (`Herald::close` waits for it), so
            // the inserter's connection is free.
            Store::Sqlite(sqlite) => {
                sqlite.eraser.close().await;
                sqlite.inserter.close();
                sqlite.write.close().await;
                sqlite.read.close().await;
            }
            Store::Postgres(pool) => pool.close().await,
        }
    }

    /// The position of the newest committed message (0 when there is none).
    pub async fn head(&self) -> Result<Position, sqlx::Error> {
        let sql = "SELECT position FROM stream_head WHERE id = 1";
        let position: i64 =
            with_pool!(self, pool => sqlx::query_scalar(sql).fetch_one(pool).await)?;
        Ok(Position(position))
    }
}

/// How many bound values a statement built for a list may have and still
/// stay prepared on its connection for the next use: a default page's (50
/// ids and the viewer) with room to spare.
const KEPT_PREPARED_VALUES: usize = 64;

/// Whether a statement built for a list of `values` bound values stays
/// prepared on its connection. sqlx keeps up to 100 prepared statements per
/// connection, one per distinct text, and a statement for hundreds of
/// values is tens to hundreds of KiB: a caller who chooses the count (a
/// page size, a group's size) could otherwise fill each connection's cache
/// with the largest ones, for good. Up to [`KEPT_PREPARED_VALUES`] they
/// are kept; larger ones are prepared for each use.
fn kept_prepared(values: usize) -> bool {
    values <= KEPT_PREPARED_VALUES
}

/// Stored user ids, sorted here rather than in SQL, so both backends agree
/// whatever their collation.
fn sorted(ids: Vec<String>) -> Vec<UserId> {
    let mut ids: Vec<UserId> = ids.into_iter().map(UserId::from_stored).collect();
    ids.sort();
    ids
}
