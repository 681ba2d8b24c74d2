//! SQLite's message inserter: a connection of its own, driven on the
//! committer's own thread, that commits each batch of messages in place.
//!
//! Why not sqlx here, as everywhere else: sqlx drives each SQLite
//! connection from a worker thread and hands every result of every
//! statement back through a channel, each a wake-up of the caller's task,
//! and returns a pooled connection in a task of its own. For the one
//! statement herald runs most (a batch of messages, at every send) that
//! was the largest cost left per message (BENCHMARKS.md, "hand-offs per
//! message"). Here the committer steps the statements itself, prepared
//! once, on its thread: a batch costs no hand-off at all.
//!
//! Every other write keeps sqlx's writer: SQLite takes one writer at a
//! time, and the two take turns (`Sqlite::turn`).

use super::super::NewMessage;
use crate::domain::IdempotencyKey;
use rusqlite::{Connection, OpenFlags, params};
use sqlx::error::{DatabaseError, ErrorKind};
use std::{
    borrow::Cow,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

/// The inserter's connection; cheap to clone. `None` once closed.
#[derive(Clone, Debug)]
pub(in crate::store) struct Inserter {
    connection: Arc<Mutex<Option<Connection>>>,
}

impl Inserter {
    /// Opens `path` (migrated already) with the writer's settings.
    pub(in crate::store) fn open(path: &Path) -> Result<Self, sqlx::Error> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(database)?;
        connection
            .busy_handler(Some(retry_when_busy))
            .map_err(database)?;
        // As sqlx's writer (see `Store::connect`): WAL is the file's, the
        // rest is each connection's own.
        connection
            .execute_batch(&format!(
                "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA secure_delete = ON; PRAGMA wal_autocheckpoint = {};",
                super::WRITER_CHECKPOINT_PAGES
            ))
            .map_err(database)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(Some(connection))),
        })
    }

    /// Commits `rows` in one transaction at the next stream positions and
    /// returns the last; nothing of it stays on any error. Blocks the
    /// calling thread for the commit's time: its caller is the committer,
    /// which runs on a thread of its own for this (`Committer::start`).
    pub(in crate::store) fn insert(&self, rows: &[&NewMessage]) -> Result<i64, sqlx::Error> {
        let connection = self.lock();
        let connection = connection.as_ref().ok_or(sqlx::Error::PoolClosed)?;
        insert(connection, rows).map_err(database)
    }

    /// Closes the connection; a later insert fails.
    pub(in crate::store) fn close(&self) {
        if let Some(connection) = self.lock().take()
            && let Err((_, error)) = connection.close()
        {
            tracing::warn!(%error, "the inserter's connection did not close cleanly");
        }
    }

    /// The value of `pragma` on the inserter's connection.
    #[cfg(test)]
    pub(in crate::store) fn pragma(&self, pragma: &str) -> i64 {
        let connection = self.lock();
        let connection = connection.as_ref().expect("open");
        connection
            .query_row(&format!("PRAGMA {pragma}"), [], |row| row.get(0))
            .expect("a pragma with a value")
    }

    /// Whether a transaction is open on the inserter's connection.
    #[cfg(test)]
    pub(in crate::store) fn in_transaction(&self) -> bool {
        self.lock().as_ref().is_some_and(|c| !c.is_autocommit())
    }

    /// Opens a transaction and leaves it open, as a panic mid-batch would.
    #[cfg(test)]
    pub(in crate::store) fn begin(&self) {
        let connection = self.lock();
        let connection = connection.as_ref().expect("open");
        connection.execute_batch("BEGIN IMMEDIATE").expect("begun");
    }

    /// The connection, even after a panic while it was held (the next
    /// insert rolls back whatever that left open).
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// How long the inserter waits before its `attempt`th retry when another
/// connection holds SQLite's write lock, or `None` once it has waited about
/// as long as every other connection would (`BUSY_TIMEOUT`, 5 s). SQLite's
/// own handler sleeps a millisecond at the first retry; what meets the
/// inserter is mostly brief (a rollback sqlx runs just after its write gave
/// the turn back, a passive checkpoint's last step), so it retries within
/// tens of microseconds first: 50 retries 20 µs apart, 100 a millisecond
/// apart, then every 10 ms.
pub(super) fn busy_wait(attempt: i32) -> Option<Duration> {
    match attempt {
        0..50 => Some(Duration::from_micros(20)),
        50..150 => Some(Duration::from_millis(1)),
        150..640 => Some(Duration::from_millis(10)),
        _ => None,
    }
}

/// SQLite's busy handler for the inserter (see [`busy_wait`]).
fn retry_when_busy(attempt: i32) -> bool {
    match busy_wait(attempt) {
        Some(wait) => {
            std::thread::sleep(wait);
            true
        }
        None => false,
    }
}

/// The batch's transaction. Taking the positions first locks the head
/// until commit (see the store's module comment). On any error nothing
/// stays: a transaction still open is rolled back.
fn insert(connection: &Connection, rows: &[&NewMessage]) -> rusqlite::Result<i64> {
    if !connection.is_autocommit() {
        connection.execute_batch("ROLLBACK")?;
    }
    // Prepared once, as every statement here: no SQL is parsed per batch.
    connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let committed = insert_rows(connection, rows).and_then(|last| {
        connection.prepare_cached("COMMIT")?.execute([])?;
        Ok(last)
    });
    if committed.is_err() && !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    committed
}

/// The rows at the next positions, inside the batch's transaction; returns
/// the last position.
fn insert_rows(connection: &Connection, rows: &[&NewMessage]) -> rusqlite::Result<i64> {
    let count = rows.len() as i64;
    let last: i64 = connection
        .prepare_cached(
            "UPDATE stream_head SET position = position + ?1 WHERE id = 1 RETURNING position",
        )?
        .query_row([count], |row| row.get(0))?;
    let mut statement = connection.prepare_cached(
        "INSERT INTO messages (position, conversation_id, user_id, content, created_at, \
         client_message_id, reply_to, system, offline) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (index, row) in rows.iter().enumerate() {
        statement.execute(params![
            last - count + 1 + index as i64,
            row.conversation_id.as_str(),
            row.user_id.as_str(),
            row.content.as_str(),
            row.created_at_micros,
            row.key.as_ref().map(IdempotencyKey::as_str),
            row.reply_to.map(|position| position.0),
            i32::from(row.system),
            row.offline_json(),
        ])?;
    }
    Ok(last)
}

/// A refusal from SQLite, as sqlx reports its own, so that the store reads
/// both alike (`Refused::of`): the extended result code and its message.
#[derive(Debug)]
struct Refusal {
    code: i32,
    message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

impl DatabaseError for Refusal {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// `error` as sqlx's: SQLite's own refusals as database errors, anything
/// else (a value of the wrong type read back) as a protocol error.
fn database(error: rusqlite::Error) -> sqlx::Error {
    match error {
        rusqlite::Error::SqliteFailure(cause, message) => {
            sqlx::Error::Database(Box::new(Refusal {
                code: cause.extended_code,
                message: message.unwrap_or_else(|| cause.to_string()),
            }))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
