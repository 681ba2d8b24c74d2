//! Moderation and service keys on every node: the log in the database is
//! the truth; each node folds it into the [`Guard`] that `auth` checks in
//! memory, and ends the streams each new entry names, exactly once.
//!
//! **Within 2 s everywhere.** The node that takes an action applies it
//! before answering, then tells the others on the broker's signal channel
//! (a hint: they read the log itself). Each node also reads the log and the
//! active keys every [`REFRESH`], so a lost signal, a broker outage or a
//! key revoked from the command line (which has no broker) still takes
//! effect within that. A node that starts reads the whole log before it
//! serves, so it refuses a user banned before it started.

use crate::{
    auth::{
        Claims, Guard,
        service::{KeyRing, StoredKey, parse_hash_hex},
    },
    cluster::broker::Publisher,
    domain::{
        UserId,
        moderation::{Action, Refusal, Scopes},
        now_micros,
    },
    engine::hub::Hub,
    error::Error,
    store::Store,
};
use std::{sync::Arc, time::Duration};
use tokio::sync::{Mutex, Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often each node reads the log and the keys, whatever it hears.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Log entries read per query.
const PAGE: i64 = 1_000;

/// Applies the moderation log and the service keys on this node; cheap to
/// clone.
#[derive(Clone)]
pub struct Moderator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    guard: Arc<Guard>,
    hub: Hub,
    publisher: Publisher,
    nudge: Notify,
    /// One refresh at a time: entries are applied in order.
    refreshing: Mutex<()>,
}

impl Moderator {
    /// Reads the keys and the whole log into `guard`, then keeps them up to
    /// date on `tasks` until `shutdown`.
    pub async fn start(
        store: Store,
        guard: Arc<Guard>,
        hub: Hub,
        publisher: Publisher,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, sqlx::Error> {
        let moderator = Self {
            inner: Arc::new(Inner {
                store,
                guard,
                hub,
                publisher,
                nudge: Notify::new(),
                refreshing: Mutex::new(()),
            }),
        };
        moderator.refresh().await?;
        tasks.spawn(moderator.clone().run(shutdown));
        Ok(moderator)
    }

    /// Whether `claims` are refused now: a ban or a revocation applied
    /// since they were verified.
    pub fn check(&self, claims: &Claims) -> Result<(), Error> {
        match self.inner.guard.refuses(&claims.user, claims.issued_at) {
            None => Ok(()),
            Some(Refusal::Banned(reason)) => Err(Error::Banned(reason)),
            Some(Refusal::Revoked) => Err(Error::Unauthenticated),
        }
    }

    /// Another node added to the log: read it now.
    pub fn nudge(&self) {
        self.inner.nudge.notify_one();
    }

    /// Records `action` on `user` by key `actor`, applies it here (the
    /// user's streams on this node have ended when this returns), and tells
    /// the other nodes.
    pub async fn act(&self, user: &UserId, action: &Action, actor: &str) -> Result<(), Error> {
        let seq = self
            .inner
            .store
            .moderate(user, action, actor, now_micros())
            .await?;
        self.refresh().await?;
        self.inner.publisher.moderation(seq).await;
        Ok(())
    }

    async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
                _ = self.inner.nudge.notified() => {}
            }
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "moderation and keys could not be read; retrying");
            }
        }
    }

    /// Reads the active keys and the log's new entries, and applies them.
    async fn refresh(&self) -> Result<(), sqlx::Error> {
        let inner = &self.inner;
        let _one = inner.refreshing.lock().await;
        let keys = inner.store.active_keys().await?;
        let ring = KeyRing::new(
            keys.into_iter()
                .filter_map(|(name, hash, scopes)| {
                    Some(StoredKey {
                        name: name.into(),
                        hash: parse_hash_hex(&hash)?,
                        scopes: Scopes::parse(&scopes).ok()?,
                    })
                })
                .collect(),
        );
        *inner
            .guard
            .keys
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = ring;
        loop {
            let seq = inner
                .guard
                .standing
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .seq;
            let entries = inner.store.moderation_after(seq, PAGE).await?;
            let mut ends = Vec::new();
            {
                let mut standing = inner
                    .guard
                    .standing
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                for entry in &entries {
                    if let Some(end) = standing.apply(entry) {
                        ends.push((entry.user.clone(), end));
                    }
                }
            }
            for (user, end) in ends {
                let ended = inner.hub.end_user(&user, &end);
                if ended > 0 {
                    tracing::info!(ended, reason = %end.ending.reason(), "streams ended by moderation");
                }
            }
            if (entries.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }
}
