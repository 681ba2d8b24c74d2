//! herald's integration tests: each starts a real server on port 0 over a
//! real database and talks to it with real clients. Tests taking a `TestDb`
//! run twice, on SQLite and on PostgreSQL (the latter only when
//! `HERALD_TEST_DATABASE_URL` is set; otherwise they say they were skipped).

/// Generates, for each listed `async fn test(db: TestDb)`, one test on
/// SQLite and one on PostgreSQL.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::support::Backend::Sqlite;
                    if let Some(db) = crate::support::TestDb::new(backend).await {
                        super::$test(db).await
                    }
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::support::Backend::Postgres;
                    if let Some(db) = crate::support::TestDb::new(backend).await {
                        super::$test(db).await
                    }
                }
            )*
        }
    };
}

mod admin;
mod auth;
mod bench;
mod browser;
mod changes;
mod cluster;
mod consent;
mod conversations;
mod delivery;
mod examples;
mod firehose;
mod guarantees;
mod hook;
mod hostile;
mod identity;
mod lifecycle;
mod lockout;
mod logs;
mod membership;
mod messages;
mod metrics;
mod openapi;
mod presence;
mod readme;
mod rest;
mod sse;
mod support;
mod tls;
mod typing;
mod webhooks;
