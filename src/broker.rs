//! Cross-node fan-out through an existing engine: how each node learns what
//! the others committed, so every node's hub sees every message.
//!
//! | broker | carries | default |
//! | --- | --- | --- |
//! | `local` | nothing: one node | with SQLite |
//! | `postgres` | LISTEN/NOTIFY of positions, sent by a trigger inside the inserting transaction | with PostgreSQL |
//! | `nats` | each committed message, published after commit (`--nats-url`) | never |
//!
//! **Ordering and loss.** Neither engine is trusted for order or
//! completeness; the feed is. PostgreSQL delivers notifications in commit
//! order but drops them while a listener is disconnected, and caps payloads
//! near 8 KB, so a notification carries only the position and nodes read the
//! rows (one range query per burst; participants are cached). NATS carries
//! whole messages, so remote nodes need no read at all, but it does not order
//! publishers, and a publish can be lost with its connection. Because
//! positions are gap-free, the feed sees every hole and reads it from the
//! database; when a broker link comes back, the feed catches up from the
//! database head. Node A's own writers still report to A's feed directly;
//! what comes back through the broker is dropped as a duplicate.

use crate::{
    domain::{ConversationId, Message, Position, UserId},
    feed::Feed,
    hub::Delivery,
    store::Store,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The PostgreSQL channel the `messages` trigger notifies (see migrations).
pub const CHANNEL: &str = "herald_messages";

/// Which engine carries commits between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    Local,
    Postgres,
    Nats,
}

/// How to reach the broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `None` picks by database: PostgreSQL gets `postgres`, SQLite `local`.
    pub kind: Option<BrokerKind>,
    pub nats_url: Option<String>,
    pub nats_subject: String,
}

/// Times a broker link was lost and caught up from the database.
#[derive(Clone, Default)]
pub struct Reconnects(Arc<AtomicU64>);

impl Reconnects {
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The publishing half: tells other nodes about this node's commits.
/// (With PostgreSQL the trigger does that inside the transaction.)
#[derive(Clone)]
pub enum Publisher {
    Quiet,
    Nats {
        client: async_nats::Client,
        subject: String,
    },
}

/// A message as it travels over NATS.
#[derive(Serialize, Deserialize)]
struct Wire {
    position: i64,
    conversation_id: String,
    user_id: String,
    content: String,
    created_at_micros: i64,
}

impl Publisher {
    /// Publishes a committed message; a failure is logged, and other nodes
    /// fill the gap from the database.
    pub async fn published(&self, delivery: &Delivery) {
        let Publisher::Nats { client, subject } = self else {
            return;
        };
        let message = &delivery.message;
        let wire = Wire {
            position: message.position.0,
            conversation_id: message.conversation_id.as_str().to_owned(),
            user_id: message.user_id.as_str().to_owned(),
            content: message.content.clone(),
            created_at_micros: message.created_at_micros,
        };
        let payload = serde_json::to_vec(&wire).unwrap_or_default();
        if let Err(error) = client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(%error, position = message.position.0, "NATS publish failed; other nodes will read it from the database");
        }
    }
}

/// A connected broker whose receiving half has not started yet.
pub struct Broker {
    publisher: Publisher,
    receiver: Receiver,
    reconnects: Reconnects,
}

enum Receiver {
    Local,
    Postgres(PgListener),
    Nats(
        async_nats::Subscriber,
        tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    ),
}

impl Broker {
    /// Connects to the configured broker.
    pub async fn connect(
        config: &BrokerConfig,
        store: &Store,
        database_url: &str,
    ) -> Result<Self, String> {
        let kind = config.kind.unwrap_or(match store {
            Store::Postgres(_) => BrokerKind::Postgres,
            Store::Sqlite(_) => BrokerKind::Local,
        });
        let reconnects = Reconnects::default();
        let (publisher, receiver) = match kind {
            BrokerKind::Local => (Publisher::Quiet, Receiver::Local),
            BrokerKind::Postgres => (
                Publisher::Quiet,
                Receiver::Postgres(listen(store, database_url).await?),
            ),
            BrokerKind::Nats => {
                let url = config
                    .nats_url
                    .as_deref()
                    .ok_or("the nats broker needs --nats-url")?;
                let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
                let client = async_nats::ConnectOptions::new()
                    .name("herald")
                    .no_echo()
                    .retry_on_initial_connect()
                    .event_callback(move |event| {
                        let _ = events.send(event);
                        async {}
                    })
                    .connect(url)
                    .await
                    .map_err(|error| format!("cannot connect to NATS at {url}: {error}"))?;
                let subscriber = client
                    .subscribe(config.nats_subject.clone())
                    .await
                    .map_err(|error| format!("cannot subscribe to NATS: {error}"))?;
                let publisher = Publisher::Nats {
                    client,
                    subject: config.nats_subject.clone(),
                };
                (publisher, Receiver::Nats(subscriber, events_rx))
            }
        };
        tracing::info!(broker = ?kind, "cross-node broker ready");
        Ok(Self {
            publisher,
            receiver,
            reconnects,
        })
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    pub fn reconnects(&self) -> Reconnects {
        self.reconnects.clone()
    }

    /// Starts reporting other nodes' commits to `feed` until `shutdown`.
    pub fn start(self, feed: Feed, shutdown: CancellationToken) -> JoinHandle<()> {
        let reconnects = self.reconnects;
        match self.receiver {
            Receiver::Local => tokio::spawn(async {}),
            Receiver::Postgres(listener) => {
                tokio::spawn(receive_notifications(listener, feed, reconnects, shutdown))
            }
            Receiver::Nats(subscriber, events) => {
                tokio::spawn(receive_nats(subscriber, events, feed, reconnects, shutdown))
            }
        }
    }
}

/// A LISTEN connection of its own, named so operators (and tests) can find it.
async fn listen(store: &Store, database_url: &str) -> Result<PgListener, String> {
    let Store::Postgres(_) = store else {
        return Err("the postgres broker needs a postgres:// database".into());
    };
    let options: sqlx::postgres::PgConnectOptions = database_url
        .parse()
        .map_err(|error| format!("bad database URL: {error}"))?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.application_name("herald-listener"));
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(|error| format!("cannot LISTEN on PostgreSQL: {error}"))?;
    listener
        .listen(CHANNEL)
        .await
        .map_err(|error| format!("cannot LISTEN on PostgreSQL: {error}"))?;
    Ok(listener)
}

async fn receive_notifications(
    mut listener: PgListener,
    feed: Feed,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => match notification.payload().parse::<i64>() {
                Ok(position) => feed.head(Position(position)),
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignoring a foreign notification"
                ),
            },
            // The connection was lost; the next try_recv reconnects and
            // LISTENs again. Whatever was notified meanwhile is lost, so the
            // feed reads it from the database.
            Ok(None) => lost_link(
                &feed,
                &reconnects,
                "the LISTEN connection was lost; reconnecting",
            ),
            Err(error) => {
                lost_link(
                    &feed,
                    &reconnects,
                    &format!("LISTEN failed: {error}; retrying"),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn receive_nats(
    mut subscriber: async_nats::Subscriber,
    mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    feed: Feed,
    reconnects: Reconnects,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    let mut was_lost = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(event) = events.recv() => match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting");
                    was_lost = true;
                }
                async_nats::Event::Connected if was_lost => {
                    was_lost = false;
                    lost_link(&feed, &reconnects, "NATS reconnected; catching up from the database");
                }
                other => tracing::info!(event = %other, "NATS event"),
            },
            message = subscriber.next() => match message {
                Some(message) => match serde_json::from_slice::<Wire>(&message.payload) {
                    Ok(wire) => feed.remote(wire.into()),
                    Err(error) => tracing::warn!(%error, "ignoring a malformed NATS message"),
                },
                None => return,
            },
        }
    }
}

fn lost_link(feed: &Feed, reconnects: &Reconnects, what: &str) {
    tracing::warn!("{what}");
    reconnects.count();
    feed.catch_up();
}

impl From<Wire> for Message {
    fn from(wire: Wire) -> Self {
        Message {
            position: Position(wire.position),
            conversation_id: ConversationId::from_stored(wire.conversation_id),
            user_id: UserId::from_stored(wire.user_id),
            content: wire.content,
            created_at_micros: wire.created_at_micros,
        }
    }
}
