//! Blocks: who refuses whom.

use super::{Store, kept_prepared, sorted};
use crate::{domain::UserId, error::Error};

impl Store {
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
                sql.build_query_scalar()
                    .persistent(kept_prepared(chunk.len() + 1))
                    .fetch_optional(pool)
                    .await?
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
                sql.build_query_scalar()
                    .persistent(kept_prepared(chunk.len() + 1))
                    .fetch_all(pool)
                    .await?
            });
            found.extend(ids);
        }
        Ok(sorted(found))
    }
}
