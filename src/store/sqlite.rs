//! SQLite's writers and readers, and the care of its files.

mod inserter;

use super::NewMessage;
pub(super) use inserter::Inserter;
use sqlx::SqlitePool;
use std::{sync::Arc, time::Duration};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long erasures wait to be done together: a storm of deletions costs
/// one truncation of the log a second, not one each.
const ERASE_EVERY: Duration = Duration::from_secs(1);

/// How long the log grows after a commit before what it holds is copied
/// into the database file, off the writer's path (see
/// [`Sqlite::checkpoint_often`]). Short: a checkpoint's writes and syncs
/// still slow the writer's own writes to the disk, and a small one slows
/// them least (measured at 2,000 messages/s, p99 / p99.9: 50 ms 1.9–4.1 /
/// 8–16 ms, 200 ms 3.3–5.6 / 14–19 ms, 1 s 4.0–5.0 / 51–52 ms).
const CHECKPOINT_AFTER: Duration = Duration::from_millis(50);

/// The writer's own checkpoint threshold, in pages (about 40 MB): SQLite's
/// default is 1,000, which makes the commit that crosses it copy the whole
/// log and sync both files while every send behind it waits. Here a
/// backstop: under steady writes a passive checkpoint seldom ends with
/// nothing left to copy, which is when the writer may start the log again,
/// and the backstop's checkpoint (little left to copy by then) does. At
/// 2,000 messages/s the log restarted every second or two; 2,000 pages
/// instead of 10,000 doubled the p99 (4.2 / 4.6 ms against 2.3 / 1.7).
pub(super) const WRITER_CHECKPOINT_PAGES: &str = "10000";

/// How often idle readers are closed (see [`Sqlite::close_idle_readers`]):
/// a burst's readers are gone within five seconds of its end, and their
/// memory is handed back to the system within a second of that
/// (`startup::memory`).
const CLOSE_IDLE_READERS_EVERY: Duration = Duration::from_secs(5);

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
    async fn erase_freed(&self, closing: CancellationToken) {
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

    /// Copies the log into the database file [`CHECKPOINT_AFTER`] a
    /// write, on the eraser's connection, until `closing`: a passive
    /// checkpoint, which neither waits for nor blocks the writer and
    /// readers, so sends do not pay for it (SQLite's own, now only the
    /// backstop, runs inside the commit that crossed its threshold). Once
    /// all of the log is in the file the writer starts it again from the
    /// top (see [`WRITER_CHECKPOINT_PAGES`]). Idle, it waits for a write.
    async fn checkpoint_often(&self, closing: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.wrote.notified() => {}
                _ = closing.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECKPOINT_AFTER) => {}
                _ = closing.cancelled() => return,
            }
            let passive = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)");
            if let Err(error) = passive.fetch_one(&self.eraser).await {
                tracing::debug!(%error, "the log was not copied into the file; again after the next write");
            }
        }
    }

    /// Every `every` until `closing`, closes the readers that sit idle. Each
    /// reader is a connection on a thread of its own, and glibc gives that
    /// thread an arena of its own: a burst of reads (a reconnect storm's
    /// replays, a call flood) opens all eight and scatters what they keep
    /// (page cache, prepared statements) over arenas that stay as large as
    /// the burst made them for as long as the reader lives. Closed, a
    /// reader frees all of it; the next read opens one again in about a
    /// millisecond. Measured (BENCHMARKS.md): keeping two readers open at
    /// rest left +14% to +19% of RSS after a hostile round, closing them all
    /// +8% to +12%. Only those idle when the period ends, so a busy pool is
    /// not emptied under its readers. Not sqlx's `idle_timeout`: its reaper
    /// runs once per timeout and stamps each connection it looks at as idle
    /// from then, so none is ever idle for longer than the timeout when it
    /// looks again.
    pub(super) async fn close_idle_readers(&self, every: Duration, closing: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = closing.cancelled() => return,
            }
            for _ in 0..self.read.num_idle() {
                let Some(reader) = self.read.try_acquire() else {
                    break;
                };
                if let Err(error) = reader.close().await {
                    tracing::debug!(%error, "an idle reader did not close cleanly");
                }
            }
        }
    }

    /// Tends SQLite's files and connections until `closing`: the log copied
    /// into the file soon after commits, emptied after deletions (both on
    /// the eraser's one connection, so they take turns), and the readers a
    /// burst opened closed again.
    pub(super) async fn tend(self, closing: CancellationToken) {
        tokio::join!(
            self.checkpoint_often(closing.clone()),
            self.erase_freed(closing.clone()),
            self.close_idle_readers(CLOSE_IDLE_READERS_EVERY, closing)
        );
    }

    /// A write's turn (see [`Sqlite::turn`]), or `PoolTimedOut` when none
    /// came in the time a call waits for a connection: the database is
    /// unavailable, and the caller hears it, as from a pool.
    pub(super) async fn take_turn(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, sqlx::Error> {
        tokio::time::timeout(super::ACQUIRE_TIMEOUT, self.turn.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)
    }

    /// Commits the batch on the inserter's connection, on the caller's
    /// thread (see [`Inserter::insert`]), in turn with every other write;
    /// returns the last position.
    pub(super) async fn insert_batch(&self, rows: &[&NewMessage]) -> Result<i64, sqlx::Error> {
        let _turn = self.take_turn().await?;
        let last = self.inserter.insert(rows)?;
        self.wrote.notify_one();
        Ok(last)
    }
}

/// SQLite as SQLite likes it: one writer at a time, a few readers. Writes
/// take turns in the process rather than in SQLite's busy handler; messages
/// are written by the inserter's connection, every other write by sqlx's
/// writer (one connection, not a pool of them that would hand out each in
/// turn, each one's cache stale after the others wrote: measured in
/// BENCHMARKS.md). What still meets a writer inside SQLite (the eraser's
/// checkpoints; a rollback sqlx runs after the turn was given back) costs
/// the inserter microseconds, not SQLite's millisecond sleeps (see
/// `inserter::busy_wait`).
#[derive(Clone, Debug)]
pub struct Sqlite {
    pub(super) read: SqlitePool,
    pub(super) write: SqlitePool,
    /// Batches of messages, on a connection of their own.
    pub(super) inserter: Inserter,
    /// Held for each write, by the inserter or on `write`: SQLite takes one
    /// writer at a time, and a second that meets the first sleeps in its
    /// busy handler (1 ms, then longer), where a lock queues in order.
    /// Needed for correctness too: a transaction on `write` that reads
    /// before it writes cannot write at all once the inserter committed
    /// in between (SQLITE_BUSY_SNAPSHOT, which no busy handler retries).
    pub(super) turn: Arc<tokio::sync::Mutex<()>>,
    /// The log's checkpoints and truncation (see [`Sqlite::tend`]).
    pub(super) eraser: SqlitePool,
    pub(super) erase: Arc<Notify>,
    /// Told after each batch of messages and each other write.
    pub(super) wrote: Arc<Notify>,
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::Sqlite;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    async fn open(dir: &tempfile::TempDir) -> Sqlite {
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let Store::Sqlite(sqlite) = Store::connect(&url).await.unwrap() else {
            panic!("a sqlite: URL opens SQLite");
        };
        sqlite
    }

    /// A store in `dir` with a conversation of alice alone, and a message
    /// of hers to it, not yet sent.
    async fn alice_alone(dir: &tempfile::TempDir) -> (Store, Sqlite, crate::store::NewMessage) {
        use crate::domain::{Content, UserId};
        let sqlite = open(dir).await;
        let store = Store::Sqlite(sqlite.clone());
        let alice = UserId::parse("user", "alice").unwrap();
        let (id, _) = store
            .create_conversation(std::slice::from_ref(&alice), None, None, &alice, 1)
            .await
            .unwrap();
        let message = crate::store::NewMessage {
            conversation_id: id,
            user_id: alice,
            content: Content::parse("hi".into(), 100).unwrap(),
            key: None,
            reply_to: None,
            system: false,
            offline: Vec::new(),
            created_at_micros: 2,
        };
        (store, sqlite, message)
    }

    /// A burst of reads opens every reader; once idle they are all closed,
    /// while a reader in use stays open, and the next read opens one again.
    #[tokio::test]
    async fn idle_readers_are_closed_and_readers_in_use_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = open(&dir).await;
        let closing = CancellationToken::new();
        let tending = tokio::spawn({
            let (sqlite, closing) = (sqlite.clone(), closing.clone());
            async move {
                sqlite
                    .close_idle_readers(Duration::from_millis(20), closing)
                    .await
            }
        });
        let settled = |open: usize| {
            let sqlite = sqlite.clone();
            async move {
                for _ in 0..250 {
                    if sqlite.read.size() as usize == open {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sqlite.read.size() as usize
            }
        };
        for burst in 0..2 {
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(sqlite.read.acquire().await.unwrap());
            }
            assert_eq!(sqlite.read.size(), 8, "burst {burst} opened every reader");
            let in_use = held.split_off(6);
            drop(held);
            assert_eq!(settled(2).await, 2, "the six idle readers closed");
            drop(in_use);
            assert_eq!(settled(0).await, 0, "then the last two, once idle");
        }
        let head = sqlx::query_scalar::<_, i64>("SELECT position FROM stream_head")
            .fetch_one(&sqlite.read)
            .await
            .unwrap();
        assert_eq!(head, 0, "a read opens a reader again");
        closing.cancel();
        tending.await.unwrap();
    }

    /// A batch of messages commits whole at the next positions, in order,
    /// or nothing of it does, and no transaction stays open after a
    /// refusal; SQLite's refusals on the inserter's connection read as
    /// they do on sqlx's (`Refused::of`).
    #[tokio::test]
    async fn a_batch_commits_whole_at_the_next_positions_or_not_at_all() {
        use crate::domain::{Content, ConversationId, IdempotencyKey, UserId};
        use crate::store::{NewMessage, Refused};
        let dir = tempfile::tempdir().unwrap();
        let sqlite = open(&dir).await;
        let store = Store::Sqlite(sqlite.clone());
        let user = |name: &str| UserId::parse("user", name).unwrap();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let (id, _) = store
            .create_conversation(&[alice.clone(), bob.clone()], None, None, &alice, 1)
            .await
            .unwrap();
        let message = |from: &UserId, text: &str, key: Option<&str>| NewMessage {
            conversation_id: id.clone(),
            user_id: from.clone(),
            content: Content::parse(text.to_owned(), 100).unwrap(),
            key: key.map(|key| IdempotencyKey::parse("key", key).unwrap()),
            reply_to: None,
            system: false,
            offline: Vec::new(),
            created_at_micros: 2,
        };
        let stored = || async {
            sqlx::query_as::<_, (i64, String, String)>(
                "SELECT position, user_id, content FROM messages WHERE kind = 'message' ORDER BY position",
            )
            .fetch_all(&sqlite.read)
            .await
            .unwrap()
        };
        let head = || async {
            sqlx::query_scalar::<_, i64>("SELECT position FROM stream_head")
                .fetch_one(&sqlite.read)
                .await
                .unwrap()
        };
        let start = head().await;
        let batch = [
            message(&alice, "one", Some("k1")),
            message(&bob, "two", None),
            message(&alice, "three", None),
        ];
        let committed = store
            .insert_batch(&batch.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let answered: Vec<(i64, String, String)> = committed
            .iter()
            .map(|m| {
                (
                    m.position.0,
                    m.user_id.as_str().to_owned(),
                    m.content.clone(),
                )
            })
            .collect();
        let expected: Vec<(i64, String, String)> =
            [("alice", "one"), ("bob", "two"), ("alice", "three")]
                .iter()
                .enumerate()
                .map(|(n, (user, text))| {
                    (start + 1 + n as i64, (*user).to_owned(), (*text).to_owned())
                })
                .collect();
        assert_eq!(
            answered, expected,
            "answered at the next positions, in order"
        );
        assert_eq!(stored().await, expected, "stored as answered");

        let reused = [
            message(&bob, "four", None),
            message(&alice, "five", Some("k1")),
        ];
        let refused = store.insert_batch(&reused.iter().collect::<Vec<_>>()).await;
        assert!(matches!(refused, Err(Refused::KeyUsed)), "{refused:?}");
        assert!(!sqlite.inserter.in_transaction(), "rolled back at once");
        let stranger = [message(&bob, "six", None), message(&carol, "seven", None)];
        let refused = store
            .insert_batch(&stranger.iter().collect::<Vec<_>>())
            .await;
        assert!(
            matches!(refused, Err(Refused::NotParticipant)),
            "{refused:?}"
        );
        assert!(!sqlite.inserter.in_transaction());
        // A row the database cannot hold (a system message to no
        // conversation: a foreign key) is the row's, not the database's.
        let nowhere = NewMessage {
            conversation_id: ConversationId::parse("id", "nowhere").unwrap(),
            system: true,
            ..message(&bob, "eight", None)
        };
        let refused = store
            .insert_batch(&[&message(&bob, "nine", None), &nowhere])
            .await;
        assert!(
            matches!(&refused, Err(refusal @ Refused::Data(_)) if refusal.by_a_row()),
            "{refused:?}"
        );
        assert!(!sqlite.inserter.in_transaction());
        assert_eq!(head().await, start + 3, "no position was taken");
        assert_eq!(stored().await, expected, "nothing of them stayed");

        // A transaction left open (by a panic mid-batch) is no obstacle.
        sqlite.inserter.begin();
        let next = store
            .insert_batch(&[&message(&bob, "ten", None)])
            .await
            .unwrap();
        assert_eq!(next[0].position.0, start + 4, "the inserter goes on");
    }

    /// Closing the store closes every connection, the inserter's too: the
    /// last to close copies the log into the file and removes it.
    #[tokio::test]
    async fn closing_the_store_closes_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, message) = alice_alone(&dir).await;
        store.insert_batch(&[&message]).await.unwrap();
        let log = dir.path().join("herald.db-wal");
        assert!(log.exists());
        store.close().await;
        assert!(!log.exists(), "every connection closed");
    }

    /// Every write waits for its turn: messages on the inserter and every
    /// other write on sqlx's writer alike, so none meets another inside
    /// SQLite (see `Sqlite::turn`).
    #[tokio::test]
    async fn writes_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let (store, sqlite, message) = alice_alone(&dir).await;
        let alice = message.user_id.clone();
        let turn = sqlite.turn.clone().lock_owned().await;
        let insert = tokio::spawn({
            let store = store.clone();
            async move { store.insert_batch(&[&message]).await.is_ok() }
        });
        let create = tokio::spawn({
            let store = store.clone();
            async move {
                let users = [alice.clone()];
                store
                    .create_conversation(&users, None, None, &alice, 3)
                    .await
                    .is_ok()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!insert.is_finished(), "the insert waits for its turn");
        assert!(!create.is_finished(), "so does any other write");
        drop(turn);
        assert!(insert.await.unwrap());
        assert!(create.await.unwrap());
    }

    /// herald's SQLite is a file: a URL for a database in memory (which
    /// the inserter's connection would not share) is refused, plainly.
    #[tokio::test]
    async fn a_sqlite_url_must_name_a_file() {
        let urls = [
            "sqlite::memory:",
            "sqlite://herald.db?mode=memory",
            "sqlite://herald.db?vfs=unix-dotfile",
        ];
        for url in urls {
            let refused = Store::connect(url).await;
            assert!(
                matches!(&refused, Err(sqlx::Error::Configuration(why)) if why.to_string().contains("must name a file")),
                "{url}: {refused:?}"
            );
        }
    }

    /// A statement for a long list (its length chosen by the caller) is
    /// prepared for each use; one for a short list stays prepared.
    #[tokio::test]
    async fn statements_for_long_lists_are_not_kept_prepared() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = open(&dir).await;
        let store = Store::Sqlite(sqlite.clone());
        let alice = crate::domain::UserId::parse("user", "alice").unwrap();
        let users = |count: usize| {
            (0..count)
                .map(|n| crate::domain::UserId::parse("user", &format!("u{n}")).unwrap())
                .collect::<Vec<_>>()
        };
        // Every reader at once, so none is left out of the count, once each
        // is back in the pool (sqlx returns them in a task of its own).
        let prepared = || async {
            for _ in 0..1_000 {
                if sqlite.read.num_idle() >= sqlite.read.size() as usize {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut held = Vec::new();
            for _ in 0..sqlite.read.size() {
                held.push(sqlite.read.acquire().await.unwrap());
            }
            held.iter_mut()
                .map(|reader| reader.cached_statements_size())
                .sum::<usize>()
        };
        let before = prepared().await;
        for count in 100..110 {
            store.blocked_among(&alice, &users(count)).await.unwrap();
        }
        assert_eq!(prepared().await, before, "ten long lists kept nothing");
        for count in [1, 2, crate::engine::service::DEFAULT_PAGE_SIZE as usize] {
            store.blocked_among(&alice, &users(count)).await.unwrap();
        }
        assert_eq!(
            prepared().await,
            before + 3,
            "short ones, up to a default page, are kept"
        );
    }

    /// Readers keep a small cache (WAL resets it after every commit), the
    /// writer SQLite's default; the writers leave checkpoints to the
    /// checkpointer.
    #[tokio::test]
    async fn how_each_sqlite_connection_is_set_up() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = open(&dir).await;
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
        let threshold = sqlx::query_scalar::<_, i64>("PRAGMA wal_autocheckpoint")
            .fetch_one(&sqlite.write)
            .await
            .unwrap();
        assert_eq!(
            threshold, 10_000,
            "the writer's own checkpoint is a backstop"
        );
        // The inserter writes most: the writer's settings, as sqlx's.
        let inserter = |pragma| sqlite.inserter.pragma(pragma);
        assert_eq!(inserter("wal_autocheckpoint"), 10_000);
        assert_eq!(
            inserter("synchronous"),
            1,
            "NORMAL: WAL's commit, no sync each"
        );
        assert_eq!(inserter("foreign_keys"), 1);
        assert_eq!(inserter("secure_delete"), 1);
        let waited: std::time::Duration = (0..).map_while(super::inserter::busy_wait).sum();
        assert!(
            waited.abs_diff(super::super::BUSY_TIMEOUT) < std::time::Duration::from_millis(200),
            "a busy inserter waits as long as the others: {waited:?}"
        );
        assert!(super::inserter::busy_wait(0).unwrap() < std::time::Duration::from_millis(1));
    }
}
