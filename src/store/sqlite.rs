//! SQLite's writer and readers, and its one-round-trip batch insert.

use super::NewMessage;
use crate::domain::IdempotencyKey;
use sqlx::SqlitePool;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long erasures wait to be done together: a storm of deletions costs
/// one truncation of the log a second, not one each.
const ERASE_EVERY: Duration = Duration::from_secs(1);

impl Sqlite {
    /// Asks for the log to be emptied soon: what a deletion or an edit
    /// removed from the file stays in SQLite's write-ahead log until then.
    pub(super) fn erase_soon(&self) {
        self.erase.notify_one();
    }

    /// Empties the log after each burst of deletions and edits, until
    /// `closing`: copies it into the file and truncates it. Off the
    /// committer's path, on a connection of its own that waits at most
    /// 100 ms for readers; a reader holding an older snapshot makes it try
    /// again a second later, until it is done.
    pub(super) async fn erase_freed(self, closing: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.erase.notified() => {}
                _ = closing.cancelled() => return,
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ERASE_EVERY) => {}
                    _ = closing.cancelled() => return,
                }
                let truncate =
                    sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)");
                match truncate.fetch_one(&self.eraser).await {
                    Ok((0, _, _)) => break,
                    Ok(_) => tracing::debug!("readers held the log; emptying it again in a second"),
                    Err(error) => tracing::debug!(%error, "the log was not emptied; trying again"),
                }
            }
        }
    }

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
    pub(super) async fn insert_batch(&self, rows: &[&NewMessage]) -> Result<i64, sqlx::Error> {
        let count = rows.len() as i64;
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "BEGIN IMMEDIATE; UPDATE stream_head SET position = position + ",
        );
        sql.push_bind(count).push(
            " WHERE id = 1 RETURNING position; INSERT INTO messages \
             (position, conversation_id, user_id, content, created_at, client_message_id, reply_to, system, offline) VALUES ",
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
                .push_bind(row.key.as_ref().map(IdempotencyKey::as_str))
                .push(", ")
                .push_bind(row.reply_to.map(|position| position.0))
                .push(", ")
                .push_bind(i32::from(row.system))
                .push(", ")
                .push_bind(row.offline_json())
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
    pub(super) read: SqlitePool,
    pub(super) write: SqlitePool,
    /// The log's truncation (see [`Sqlite::erase_freed`]).
    pub(super) eraser: SqlitePool,
    pub(super) erase: Arc<Notify>,
}

#[cfg(test)]
mod tests {
    use super::super::Store;

    /// Readers keep a small cache (WAL resets it after every commit), the
    /// writer SQLite's default.
    #[tokio::test]
    async fn readers_keep_a_small_page_cache_and_the_writer_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let Store::Sqlite(sqlite) = Store::connect(&url).await.unwrap() else {
            panic!("a sqlite: URL opens SQLite");
        };
        let cache = |pool: &sqlx::SqlitePool| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>("PRAGMA cache_size")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(cache(&sqlite.read).await, -256);
        assert_eq!(cache(&sqlite.eraser).await, -256);
        assert_eq!(cache(&sqlite.write).await, -2000);
    }
}
