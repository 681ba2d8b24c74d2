//! Webhooks as stored: where they post, their secret, how far each has been
//! delivered, the batch in flight, its failures and its lease.

use super::Store;

/// A webhook's row.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: String,
    pub url: String,
    pub secret: String,
    pub kinds: String,
    pub delivered_to: i64,
    pub batch_until: Option<i64>,
    pub failures: i32,
    pub last_error: String,
    pub deliveries: i64,
    pub disabled: i32,
}

const COLUMNS: &str = "id, url, secret, kinds, delivered_to, batch_until, failures,
    last_error, deliveries, disabled";

impl Store {
    /// Stores a new webhook, delivering what is committed after
    /// `row.delivered_to`, unless `max` webhooks exist already: false then.
    /// The count and the insert are one step (SQLite's one writer; a table
    /// lock on PostgreSQL), so creations at once cannot pass the cap.
    pub async fn create_webhook(
        &self,
        row: &WebhookRow,
        now_micros: i64,
        max: usize,
    ) -> Result<bool, sqlx::Error> {
        with_writer!(self, pool => {
            let mut tx = pool.begin().await?;
            if matches!(self, Store::Postgres(_)) {
                sqlx::query("LOCK TABLE webhooks IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let done = sqlx::query(
                "INSERT INTO webhooks (id, url, secret, kinds, delivered_to, created_at)
                 SELECT $1, $2, $3, $4, $5, $6
                 WHERE (SELECT COUNT(*) FROM webhooks) < $7",
            )
            .bind(&row.id)
            .bind(&row.url)
            .bind(&row.secret)
            .bind(&row.kinds)
            .bind(row.delivered_to)
            .bind(now_micros)
            .bind(max as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Every webhook, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<WebhookRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM webhooks ORDER BY created_at, id");
        with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).fetch_all(pool).await
        })
    }

    /// Deletes webhook `id`; whether there was one.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, sqlx::Error> {
        let deleted = with_writer!(self, pool => {
            sqlx::query("DELETE FROM webhooks WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(deleted == 1)
    }

    /// Takes (or keeps) the lease of webhook `id` for `owner` until
    /// `until`, if it is enabled, due at `now`, and no one else holds it:
    /// the row as leased, or `None`. One statement, so two nodes never
    /// both win.
    pub async fn lease_webhook(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<Option<WebhookRow>, sqlx::Error> {
        let sql = format!(
            "UPDATE webhooks SET lease_owner = $2, lease_until = $4
             WHERE id = $1 AND disabled = 0 AND next_attempt <= $3
               AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < $3)
             RETURNING {COLUMNS}"
        );
        with_writer!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(id)
                .bind(owner)
                .bind(now)
                .bind(until)
                .fetch_optional(pool)
                .await
        })
    }

    /// Gives up every lease `owner` holds (a node shutting down), so
    /// another node carries on at once.
    pub async fn release_webhooks(&self, owner: &str) -> Result<(), sqlx::Error> {
        with_writer!(self, pool => {
            sqlx::query("UPDATE webhooks SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = $1")
                .bind(owner)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// Records the batch in flight (up to `until`) of webhook `id`, so
    /// every retry sends the same one; false if `owner` no longer holds
    /// the lease.
    pub async fn webhook_batch(
        &self,
        id: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, sqlx::Error> {
        with_writer!(self, pool => {
            sqlx::query("UPDATE webhooks SET batch_until = $3 WHERE id = $1 AND lease_owner = $2")
                .bind(id)
                .bind(owner)
                .bind(until)
                .execute(pool)
                .await
                .map(|done| done.rows_affected() == 1)
        })
    }

    /// Webhook `id` took its batch: delivered up to `until`; false if
    /// `owner` no longer holds the lease (the cursor is then left to the
    /// node that does: at least once, never backwards).
    pub async fn webhook_delivered(
        &self,
        id: &str,
        owner: &str,
        until: i64,
        events: i64,
    ) -> Result<bool, sqlx::Error> {
        with_writer!(self, pool => {
            sqlx::query(
                "UPDATE webhooks SET delivered_to = $3, batch_until = NULL, failures = 0,
                    next_attempt = 0, last_error = '', deliveries = deliveries + $4
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(until)
            .bind(events)
            .execute(pool)
            .await
            .map(|done| done.rows_affected() == 1)
        })
    }

    /// Webhook `id` wants nothing up to `to` (its kinds matched no event):
    /// its cursor moves there without a delivery, so it never scans those
    /// events again and its lag says 0. Only with no batch in flight, and
    /// only forward.
    pub async fn webhook_skipped(&self, id: &str, owner: &str, to: i64) -> Result<(), sqlx::Error> {
        with_writer!(self, pool => {
            sqlx::query(
                "UPDATE webhooks SET delivered_to = $3
                 WHERE id = $1 AND lease_owner = $2 AND batch_until IS NULL AND delivered_to < $3",
            )
            .bind(id)
            .bind(owner)
            .bind(to)
            .execute(pool)
            .await
            .map(drop)
        })
    }

    /// Webhook `id` failed: tried again at `next_attempt`, or disabled;
    /// nothing if `owner` no longer holds the lease.
    pub async fn webhook_failed(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        next_attempt: i64,
        disable: bool,
    ) -> Result<(), sqlx::Error> {
        with_writer!(self, pool => {
            sqlx::query(
                "UPDATE webhooks SET failures = failures + 1, last_error = $2,
                                        next_attempt = $3, disabled = $4
                 WHERE id = $1 AND lease_owner = $5",
            )
            .bind(id)
            .bind(error)
            .bind(next_attempt)
                        .bind(i32::from(disable))
            .bind(owner)
            .execute(pool)
            .await
            .map(drop)
        })
    }
}
