//! Stream tickets redeemed once.

use super::Store;

impl Store {
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
}
