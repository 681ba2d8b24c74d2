//! Cross-node fan-out through an existing engine: how each node learns what
//! the others committed, so every node's hub sees every message.
//!
//! | broker | carries | default |
//! | --- | --- | --- |
//! | `local` | nothing: one node | with SQLite |
//! | `postgres` | LISTEN/NOTIFY of positions, sent by a trigger inside the inserting transaction | with PostgreSQL |
//! | `nats` | each committed event, published after commit (`--nats-url`) | never |
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
//!
//! **Signals** (typing, presence announcements) ride beside: the
//! `herald_signals` channel (a `pg_notify` through the pool, no table) or
//! the `<subject>.signals` subject. They carry the sending node's random
//! `origin`, so a node skips its own (PostgreSQL notifies the sender's
//! LISTEN connection too). Lost ones cost a stale indicator; nothing fills
//! their gaps.
//!
//! **Nor is either trusted for content.** Anything that can publish on the
//! NATS subject, or connect to the database, could otherwise inject a
//! message or a signal, and anything that can subscribe or LISTEN could
//! read them. So every NATS payload and every PostgreSQL signal is sealed
//! (`broker/seal.rs`): encrypted and authenticated under the cluster key
//! (`--cluster-key-file`, or derived from the shared `--jwt-secret`), with
//! a time and a per-node sequence that make a replay fail. What fails is
//! dropped and counted. A position from either broker is used only within
//! the range positions can take, and a PostgreSQL message notification
//! (sent by a trigger, so unsealed) is only a hint that the feed checks
//! against the database.

use super::seal::{Channel, Opener, Refused, Sealer};
use crate::metrics::counted;
use crate::{
    domain::{Body, ConversationId, Event, Position, UserId},
    startup::start::StartError,
    store::Store,
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::postgres::PgListener;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The PostgreSQL channel the `messages` trigger notifies (see migrations).
pub const CHANNEL: &str = "herald_messages";
/// The PostgreSQL channel of signals (typing), each notification one
/// signal as JSON; never written to a table.
pub const SIGNALS_CHANNEL: &str = "herald_signals";
/// Appended to the NATS subject for signals.
const SIGNALS_SUFFIX: &str = ".signals";

/// Which engine carries commits between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    Local,
    Postgres,
    Nats,
}

/// How to reach the broker.
#[derive(Clone, Debug, Default)]
pub struct BrokerConfig {
    /// `None` picks by database: PostgreSQL gets `postgres`, SQLite `local`.
    pub kind: Option<BrokerKind>,
    pub nats_url: Option<String>,
    pub nats_subject: String,
    /// The key that authenticates NATS payloads between herald nodes.
    pub cluster_key: Option<ClusterKey>,
    /// How herald proves itself to NATS, and checks NATS.
    pub nats_auth: NatsAuth,
}

/// NATS credentials and TLS; each is optional.
#[derive(Clone, Debug, Default)]
pub struct NatsAuth {
    /// A credentials file (JWT and NKey seed), as `nsc` writes it.
    pub creds: Option<std::path::PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A CA certificate (PEM) to verify the NATS server with; implies TLS.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Refuse a NATS server that does not speak TLS.
    pub tls_required: bool,
}

/// The key every node of a deployment shares to authenticate what it
/// publishes on NATS. Never printed.
#[derive(Clone)]
pub struct ClusterKey(Arc<[u8]>);

impl ClusterKey {
    pub fn new(key: &[u8]) -> Self {
        Self(key.into())
    }

    /// A cluster key derived from the HS256 secret every node shares.
    pub fn derived_from(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"herald cluster key v1");
        Self(mac.finalize().into_bytes().to_vec().into())
    }

    /// A 32-byte key for `label` and `data`: HMAC-SHA256 under this key.
    pub fn derive(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(b"\n");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// A key of this process's own, for a node that was given none: it
    /// can seal and open only its own signals.
    pub fn random() -> Self {
        Self::new(crate::domain::random_hex().as_bytes())
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(redacted)")
    }
}

/// What the broker link counts: times it was lost and caught up from the
/// database, and broker messages dropped as forged, malformed or replayed.
#[derive(Clone, Default)]
pub struct BrokerCounts {
    lost: Arc<AtomicU64>,
    forged: Arc<AtomicU64>,
    replayed: Arc<AtomicU64>,
}

impl BrokerCounts {
    /// Registers what the broker link counts.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let read = |count: &AtomicU64| count.load(Ordering::Relaxed);
        counted(
            registry,
            "broker_reconnects",
            "Times the cross-node broker link was lost and caught up",
            read(&self.lost),
        );
        counted(
            registry,
            "broker_forged",
            "Broker messages dropped: not sealed by a node of this deployment, or malformed",
            read(&self.forged),
        );
        counted(
            registry,
            "broker_replayed",
            "Broker payloads dropped because a node sealed them before: played again, or out of sequence",
            read(&self.replayed),
        );
    }

    fn forged_total(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }

    fn replayed_total(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a replayed payload; says whether to log it, as
    /// [`count_forged`](Self::count_forged).
    fn count_replayed(&self) -> bool {
        (self.replayed.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
    }

    /// Counts a dropped broker message; says whether to log it (the 1st,
    /// 2nd, 4th, 8th...), so a flood of forgeries cannot flood the log.
    fn count_forged(&self) -> bool {
        (self.forged.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
    }
}

/// The publishing half: tells other nodes about this node's commits.
/// (With PostgreSQL the trigger does that inside the transaction.)
#[derive(Clone)]
pub enum Publisher {
    Quiet,
    /// Messages need no publishing (the trigger notifies); signals are
    /// notified through the pool.
    Postgres {
        pool: sqlx::PgPool,
        sealer: Sealer,
    },
    Nats {
        client: async_nats::Client,
        subject: String,
        sealer: Sealer,
    },
}

/// An event as it travels over NATS: its columns as stored.
#[derive(Serialize, Deserialize)]
struct Wire {
    position: i64,
    conversation_id: String,
    user_id: String,
    content: String,
    created_at_micros: i64,
    /// Absent from nodes older than membership: a message.
    #[serde(default = "message_kind")]
    kind: String,
    /// The node that sent a signal, so it can skip its own (PostgreSQL
    /// notifies the sender's LISTEN connection too).
    #[serde(default)]
    origin: String,
    /// The message a message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<i64>,
    /// A message the application published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    system: bool,
}

impl Wire {
    fn of(event: &Event, origin: &str) -> Self {
        Wire {
            position: event.position.0,
            conversation_id: event.conversation_id.as_str().to_owned(),
            user_id: event.user_id.as_str().to_owned(),
            content: event.body.encode(),
            created_at_micros: event.created_at_micros,
            kind: event.body.kind().to_owned(),
            origin: origin.to_owned(),
            reply_to: match &event.body {
                Body::Message { reply_to, .. } => reply_to.map(|position| position.0),
                _ => None,
            },
            system: matches!(event.body, Body::Message { system: true, .. }),
        }
    }

    /// A signal's wire: no position, its content under `kind`.
    fn signal_of(kind: &str, content: &str, origin: &str) -> Self {
        Wire {
            position: 0,
            conversation_id: String::new(),
            user_id: String::new(),
            content: content.to_owned(),
            created_at_micros: crate::domain::now_micros(),
            kind: kind.to_owned(),
            origin: origin.to_owned(),
            reply_to: None,
            system: false,
        }
    }

    /// The signal this is, if it is one sent by another node.
    fn signal(self, me: &str) -> Option<Signal> {
        if self.position != 0 || self.origin == me {
            return None;
        }
        match self.kind.as_str() {
            "typings" => {
                let pairs: Vec<(String, String)> = serde_json::from_str(&self.content).ok()?;
                let events = pairs
                    .into_iter()
                    .filter_map(|(conversation, user)| {
                        let conversation =
                            ConversationId::parse("conversation", &conversation).ok()?;
                        let user = UserId::parse("user", &user).ok()?;
                        Some(Event::signal(conversation, user, Body::Typing))
                    })
                    .collect();
                Some(Signal::Typing(events))
            }
            "presence" => {
                let announce: Announce = serde_json::from_str(&self.content).ok()?;
                let ids = |ids: Vec<String>| {
                    ids.into_iter()
                        .filter_map(|id| UserId::parse("user", &id).ok())
                        .collect()
                };
                // A sealed node's word, but kept sane all the same.
                let interval = (announce.interval_ms > 0)
                    .then(|| Duration::from_millis(announce.interval_ms.clamp(100, 3_600_000)));
                Some(Signal::Presence {
                    origin: self.origin.into(),
                    online: ids(announce.online),
                    offline: ids(announce.offline),
                    interval,
                })
            }
            "moderation" => Some(Signal::Moderation(self.content.parse().ok()?)),
            _ => None,
        }
    }
}

/// A signal from another node.
enum Signal {
    /// Users typing in conversations, batched.
    Typing(Vec<Event>),
    /// A node's users that came (or are still) online there, and left.
    Presence {
        origin: Arc<str>,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        interval: Option<Duration>,
    },
    /// The moderation log grew up to this entry: read it now.
    Moderation(i64),
}

/// The content of a presence announcement.
#[derive(Serialize, Deserialize, Default)]
struct Announce {
    online: Vec<String>,
    offline: Vec<String>,
    /// How often the announcing node repeats itself (ms): its claims last
    /// by its pace, not the receiver's. Absent from older nodes.
    #[serde(default)]
    interval_ms: u64,
}

/// Bytes of ids per signal: PostgreSQL refuses a notification payload of
/// 8,000 bytes or more, and a sealed signal travels there as base64 (4/3 of
/// its bytes) of the wire and the seal's 65 bytes.
const SIGNAL_BYTES: usize = 4_000;

/// The bytes `text` takes as a JSON string inside a JSON string (the
/// signal's content travels inside its wire): a quote or a backslash
/// becomes four bytes; ids hold no control characters to escape.
fn embedded_len(text: &str) -> usize {
    let escaped: usize = text
        .bytes()
        .map(|byte| match byte {
            b'"' | b'\\' => 4,
            _ => 1,
        })
        .sum();
    escaped + 5
}

/// `items` in runs whose `bytes` add up to at most [`SIGNAL_BYTES`] each.
fn runs<T>(items: impl IntoIterator<Item = T>, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for item in items {
        let item_bytes = bytes(&item);
        match runs.last_mut() {
            Some(run) if size + item_bytes <= SIGNAL_BYTES => run.push(item),
            _ => {
                runs.push(vec![item]);
                size = 0;
            }
        }
        size += item_bytes;
    }
    runs
}

impl Sinks {
    fn signal(&self, signal: Signal) {
        match signal {
            Signal::Typing(events) => self.heard.typing(events),
            Signal::Presence {
                origin,
                online,
                offline,
                interval,
            } => self.heard.presence(origin, online, offline, interval),
            Signal::Moderation(seq) => self.heard.moderation(seq),
        }
    }
}

fn message_kind() -> String {
    "message".into()
}

impl Publisher {
    /// Publishes a committed event; a failure is logged, and other nodes
    /// fill the gap from the database.
    pub async fn publish(&self, event: &Event) {
        let Publisher::Nats {
            client,
            subject,
            sealer,
        } = self
        else {
            return;
        };
        let wire = Wire::of(event, sealer.origin());
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        let payload = sealer.seal(Channel::Events, subject, &json);
        if let Err(error) = client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(%error, position = event.position.0, "NATS publish failed; other nodes will read it from the database");
        }
    }
}

impl Publisher {
    /// Tells the other nodes which users are online here, and which left,
    /// in announcements small enough for any broker.
    pub async fn announce(&self, online: &[UserId], offline: &[UserId], interval: Duration) {
        if matches!(self, Publisher::Quiet) {
            return;
        }
        let all = online
            .iter()
            .map(|id| (true, id))
            .chain(offline.iter().map(|id| (false, id)));
        for run in runs(all, |(_, id)| embedded_len(id.as_str())) {
            let mut announce = Announce {
                interval_ms: interval.as_millis() as u64,
                ..Announce::default()
            };
            for (is_online, id) in run {
                match is_online {
                    true => announce.online.push(id.as_str().to_owned()),
                    false => announce.offline.push(id.as_str().to_owned()),
                }
            }
            let content = serde_json::to_string(&announce).unwrap_or_default();
            self.send_signal(|origin| Wire::signal_of("presence", &content, origin))
                .await;
        }
    }

    /// Tells the other nodes of typing signals made here, many to a
    /// notification: one `pg_notify` (or NATS publish) per batch, not per
    /// signal, so typing does not queue for the database pool.
    pub async fn typing(&self, events: &[Event]) {
        if matches!(self, Publisher::Quiet) {
            return;
        }
        let pairs = events
            .iter()
            .map(|event| (event.conversation_id.as_str(), event.user_id.as_str()));
        for run in runs(pairs, |(conversation, user)| {
            embedded_len(conversation) + embedded_len(user) + 2
        }) {
            let content = serde_json::to_string(&run).unwrap_or_default();
            self.send_signal(|origin| Wire::signal_of("typings", &content, origin))
                .await;
        }
    }

    /// Tells the other nodes that the moderation log grew up to `seq`, so
    /// they read it now instead of at their next refresh. Only a hint: the
    /// log in the database is what they apply.
    pub async fn moderation(&self, seq: i64) {
        let content = seq.to_string();
        self.send_signal(|origin| Wire::signal_of("moderation", &content, origin))
            .await;
    }

    /// Sends the wire `wire` makes for this node's origin on the signal
    /// channel.
    async fn send_signal(&self, wire: impl Fn(&str) -> Wire) {
        match self {
            Publisher::Quiet => {}
            Publisher::Postgres { pool, sealer } => {
                let wire = serde_json::to_vec(&wire(sealer.origin())).unwrap_or_default();
                let sealed = sealer.seal(Channel::Signals, SIGNALS_CHANNEL, &wire);
                // A notification's payload is text.
                let payload = base64::engine::general_purpose::STANDARD.encode(sealed);
                let notify = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(SIGNALS_CHANNEL)
                    .bind(payload)
                    .execute(pool)
                    .await;
                if let Err(error) = notify {
                    tracing::debug!(%error, "a signal was not notified");
                }
            }
            Publisher::Nats {
                client,
                subject,
                sealer,
            } => {
                let subject = format!("{subject}{SIGNALS_SUFFIX}");
                let wire = serde_json::to_vec(&wire(sealer.origin())).unwrap_or_default();
                let payload = sealer.seal(Channel::Signals, &subject, &wire);
                if let Err(error) = client.publish(subject, payload.into()).await {
                    tracing::debug!(%error, "a signal was not published");
                }
            }
        }
    }
}

/// A connected broker whose receiving half has not started yet.
pub struct Broker {
    publisher: Publisher,
    receiver: Receiver,
    counts: BrokerCounts,
    /// This node's name on the broker, random per process.
    origin: Arc<str>,
}

enum Receiver {
    Local,
    Postgres(PgListener, Opener),
    Nats {
        subscriber: async_nats::Subscriber,
        signals: async_nats::Subscriber,
        events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
        subject: String,
        opener: Opener,
    },
}

/// Where a broker hands what it hears from the other nodes. The node wires
/// its core in (the engine's feed, typing relay and presence tracker); the
/// broker knows none of them.
pub trait Heard: Send + Sync + 'static {
    /// Another node committed up to `head` (PostgreSQL's notification: a
    /// hint, which the feed checks against the database).
    fn head(&self, head: Position);
    /// Another node committed `event` (NATS carries it whole).
    fn event(&self, event: Event);
    /// The link was lost and is back: whatever it carried meanwhile must be
    /// read from the database.
    fn lost(&self);
    /// Users typing on another node.
    fn typing(&self, events: Vec<Event>);
    /// Another node's users that came (or are still) online there, and
    /// those that left; its claims last by its `interval`.
    fn presence(
        &self,
        origin: Arc<str>,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        interval: Option<Duration>,
    );
    /// Another node added to the moderation log, up to `seq`.
    fn moderation(&self, seq: i64);
}

/// What a broker's receiving half hands on, and its own node's name to
/// skip its own signals.
struct Sinks {
    heard: Arc<dyn Heard>,
    origin: Arc<str>,
}

impl Broker {
    /// Connects to the configured broker.
    pub async fn connect(
        config: &BrokerConfig,
        store: &Store,
        database_url: &str,
    ) -> Result<Self, StartError> {
        let kind = config.kind.unwrap_or(match store {
            Store::Postgres(_) => BrokerKind::Postgres,
            Store::Sqlite(_) => BrokerKind::Local,
        });
        let counts = BrokerCounts::default();
        let origin: Arc<str> = crate::domain::random_hex().into();
        let (publisher, receiver) = match kind {
            BrokerKind::Local => (Publisher::Quiet, Receiver::Local),
            BrokerKind::Postgres => {
                let Store::Postgres(pool) = store else {
                    return Err(StartError::config(
                        "the postgres broker needs a postgres:// database",
                    ));
                };
                // Signals are sealed like NATS's: any role that can connect
                // can NOTIFY and LISTEN on a channel.
                let key = config.cluster_key.clone().unwrap_or_else(|| {
                    tracing::warn!(
                        "no --jwt-secret or --cluster-key-file: this node's presence and typing reach no other node"
                    );
                    ClusterKey::random()
                });
                let publisher = Publisher::Postgres {
                    pool: pool.clone(),
                    sealer: Sealer::new(&key, origin.clone()),
                };
                let listener = listen(store, database_url).await?;
                (
                    publisher,
                    Receiver::Postgres(listener, Opener::new(&key, origin.clone(), true)),
                )
            }
            BrokerKind::Nats => {
                let url = config
                    .nats_url
                    .as_deref()
                    .ok_or_else(|| StartError::config("the nats broker needs --nats-url"))?;
                let key = config.cluster_key.clone().ok_or_else(|| StartError::config(
                    "the nats broker needs a cluster key: --cluster-key-file, or a --jwt-secret that every node shares",
                ))?;
                let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
                let client = nats_options(&config.nats_auth)
                    .await?
                    .name("herald")
                    .no_echo()
                    .retry_on_initial_connect()
                    .event_callback(move |event| {
                        let _ = events.send(event);
                        async {}
                    })
                    .connect(url)
                    .await
                    .map_err(|error| StartError::Broker {
                        what: "NATS",
                        source: Box::new(error),
                    })?;
                let subscribe = |subject: String| {
                    let client = client.clone();
                    async move {
                        client
                            .subscribe(subject)
                            .await
                            .map_err(|error| StartError::Broker {
                                what: "NATS (subscribe)",
                                source: Box::new(error),
                            })
                    }
                };
                let subscriber = subscribe(config.nats_subject.clone()).await?;
                let signals = subscribe(format!("{}{SIGNALS_SUFFIX}", config.nats_subject)).await?;
                let publisher = Publisher::Nats {
                    client,
                    subject: config.nats_subject.clone(),
                    sealer: Sealer::new(&key, origin.clone()),
                };
                let receiver = Receiver::Nats {
                    subscriber,
                    signals,
                    events: events_rx,
                    subject: config.nats_subject.clone(),
                    // no_echo: this node's own payloads never come back,
                    // unless someone plays them back.
                    opener: Opener::new(&key, origin.clone(), false),
                };
                (publisher, receiver)
            }
        };
        tracing::info!(broker = ?kind, "cross-node broker ready");
        Ok(Self {
            publisher,
            receiver,
            counts,
            origin,
        })
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// What the broker link counts: losses, forgeries, replays.
    pub fn counts(&self) -> BrokerCounts {
        self.counts.clone()
    }

    /// Starts handing what other nodes tell to `heard`, until `shutdown`,
    /// on a task of `tasks`.
    pub fn start(self, heard: Arc<dyn Heard>, shutdown: CancellationToken, tasks: &TaskTracker) {
        let counts = self.counts;
        let sinks = Sinks {
            heard,
            origin: self.origin,
        };
        match self.receiver {
            Receiver::Local => {}
            Receiver::Postgres(listener, opener) => drop(tasks.spawn(receive_notifications(
                listener, opener, sinks, counts, shutdown,
            ))),
            Receiver::Nats {
                subscriber,
                signals,
                events,
                subject,
                opener,
            } => {
                let trusted = Trusted { subject, opener };
                let subscribers = (subscriber, signals);
                drop(tasks.spawn(receive_nats(
                    subscribers,
                    events,
                    trusted,
                    sinks,
                    counts,
                    shutdown,
                )));
            }
        }
    }
}

/// A LISTEN connection of its own, named so operators (and tests) can find it.
async fn listen(store: &Store, database_url: &str) -> Result<PgListener, StartError> {
    let Store::Postgres(_) = store else {
        return Err(StartError::config(
            "the postgres broker needs a postgres:// database",
        ));
    };
    let cannot_listen = |error: sqlx::Error| StartError::Broker {
        what: "PostgreSQL (LISTEN)",
        source: Box::new(error),
    };
    let options: sqlx::postgres::PgConnectOptions = database_url.parse().map_err(cannot_listen)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.application_name("herald-listener"));
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(cannot_listen)?;
    listener
        .listen_all([CHANNEL, SIGNALS_CHANNEL])
        .await
        .map_err(cannot_listen)?;
    Ok(listener)
}

async fn receive_notifications(
    mut listener: PgListener,
    opener: Opener,
    sinks: Sinks,
    counts: BrokerCounts,
    shutdown: CancellationToken,
) {
    let heard = &*sinks.heard;
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) if notification.channel() == SIGNALS_CHANNEL => {
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(notification.payload())
                    .unwrap_or_default();
                let signal = unseal(
                    &opener,
                    Channel::Signals,
                    SIGNALS_CHANNEL,
                    &payload,
                    &counts,
                )
                .and_then(|wire| wire.signal(&sinks.origin));
                if let Some(signal) = signal {
                    sinks.signal(signal);
                }
            }
            Ok(Some(notification)) => match notification.payload().parse::<i64>() {
                Ok(position) if position > 0 => heard.head(Position(position)),
                _ => {
                    if counts.count_forged() {
                        tracing::warn!(
                            dropped = counts.forged_total(),
                            "ignoring a notification that is not a position"
                        );
                    }
                }
            },
            // The connection was lost; the next try_recv reconnects and
            // LISTENs again. Whatever was notified meanwhile is lost, so the
            // feed reads it from the database.
            Ok(None) => lost_link(
                heard,
                &counts,
                "the LISTEN connection was lost; reconnecting",
            ),
            Err(error) => {
                lost_link(heard, &counts, &format!("LISTEN failed: {error}; retrying"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The wire in `payload` if a node of this deployment sealed it for
/// `channel` on `subject`, fresh and in sequence (see `seal`); what is
/// refused is counted, and logged sparingly. The wire's origin is the one
/// the seal proves.
fn unseal(
    opener: &Opener,
    channel: Channel,
    subject: &str,
    payload: &[u8],
    counts: &BrokerCounts,
) -> Option<Wire> {
    let refused = match opener.open(channel, subject, payload) {
        Ok(opened) => {
            let mut wire: Wire = serde_json::from_slice(&opened.message).ok()?;
            wire.origin = opened.origin.to_string();
            return Some(wire);
        }
        Err(refused) => refused,
    };
    let log = match refused {
        Refused::Forged => counts.count_forged(),
        Refused::Replayed => counts.count_replayed(),
        Refused::Own => false,
    };
    if log {
        tracing::warn!(
            forged = counts.forged_total(),
            replayed = counts.replayed_total(),
            ?channel,
            "ignoring broker payloads that no node of this deployment sealed, or sealed before"
        );
    }
    None
}

/// What a NATS payload must be sealed for to be believed.
struct Trusted {
    subject: String,
    opener: Opener,
}

impl Trusted {
    /// The event in `payload`, if a herald node of this deployment sent it.
    fn open(&self, payload: &[u8], counts: &BrokerCounts) -> Option<Event> {
        let wire = unseal(
            &self.opener,
            Channel::Events,
            &self.subject,
            payload,
            counts,
        )?;
        (wire.position > 0).then(|| wire.into())
    }

    /// The signal in `payload`, if a herald node of this deployment (other
    /// than `me`) sent it on the signals subject.
    fn open_signal(&self, payload: &[u8], me: &str, counts: &BrokerCounts) -> Option<Signal> {
        let subject = format!("{}{SIGNALS_SUFFIX}", self.subject);
        unseal(&self.opener, Channel::Signals, &subject, payload, counts)?.signal(me)
    }
}

async fn receive_nats(
    (mut subscriber, mut signals): (async_nats::Subscriber, async_nats::Subscriber),
    mut events: tokio::sync::mpsc::UnboundedReceiver<async_nats::Event>,
    trusted: Trusted,
    sinks: Sinks,
    counts: BrokerCounts,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    let heard = &*sinks.heard;
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
                    lost_link(heard, &counts, "NATS reconnected; catching up from the database");
                }
                other => tracing::info!(event = %other, "NATS event"),
            },
            message = subscriber.next() => match message {
                Some(message) => {
                    if let Some(event) = trusted.open(&message.payload, &counts) {
                        heard.event(event);
                    }
                }
                None => return,
            },
            Some(message) = signals.next() => {
                if let Some(signal) = trusted.open_signal(&message.payload, &sinks.origin, &counts) {
                    sinks.signal(signal);
                }
            }
        }
    }
}

/// NATS connection options with the configured credentials and TLS.
async fn nats_options(auth: &NatsAuth) -> Result<async_nats::ConnectOptions, StartError> {
    let mut options = match &auth.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|error| StartError::read(path, error))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &auth.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if auth.tls_required {
        options = options.require_tls(true);
    }
    Ok(options)
}

fn lost_link(heard: &dyn Heard, counts: &BrokerCounts, what: &str) {
    tracing::warn!("{what}");
    counts.count();
    heard.lost();
}

impl From<Wire> for Event {
    fn from(wire: Wire) -> Self {
        let mut body = Body::decode(&wire.kind, wire.content, wire.reply_to.map(Position));
        if let Body::Message { system, .. } = &mut body {
            *system = wire.system;
        }
        Event {
            position: Position(wire.position),
            conversation_id: ConversationId::from_stored(wire.conversation_id),
            user_id: UserId::from_stored(wire.user_id),
            created_at_micros: wire.created_at_micros,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_fits_a_postgresql_notification_once_sealed() {
        // The longest ids, and the hardest to embed: quotes and backslashes.
        let longest = |n: usize| {
            let id = format!("{n}{}", "\"\\".repeat(64));
            UserId::parse("user", &id[..128]).unwrap()
        };
        let users: Vec<UserId> = (0..2_000).map(longest).collect();
        let conversation = ConversationId::generate();
        let sealer = Sealer::new(
            &ClusterKey::new(&[1; 32]),
            crate::domain::random_hex().into(),
        );
        let notified = |wire: Wire| {
            let json = serde_json::to_vec(&wire).unwrap();
            let sealed = sealer.seal(Channel::Signals, SIGNALS_CHANNEL, &json);
            base64::engine::general_purpose::STANDARD
                .encode(sealed)
                .len()
        };
        let mut announced = 0;
        for run in runs(users.iter().map(|id| (true, id)), |(_, id)| {
            embedded_len(id.as_str())
        }) {
            announced += run.len();
            let announce = Announce {
                online: run.iter().map(|(_, id)| id.to_string()).collect(),
                offline: Vec::new(),
                interval_ms: 10_000,
            };
            let content = serde_json::to_string(&announce).unwrap();
            let bytes = notified(Wire::signal_of("presence", &content, sealer.origin()));
            assert!(bytes < 8_000, "{bytes} bytes");
        }
        assert_eq!(announced, users.len(), "nobody is left out");
        let pairs = users
            .iter()
            .map(|user| (conversation.as_str(), user.as_str()));
        let mut told = 0;
        for run in runs(pairs, |(c, u)| embedded_len(c) + embedded_len(u) + 2) {
            told += run.len();
            let content = serde_json::to_string(&run).unwrap();
            let bytes = notified(Wire::signal_of("typings", &content, sealer.origin()));
            assert!(bytes < 8_000, "{bytes} bytes");
        }
        assert_eq!(told, users.len());
    }
}
