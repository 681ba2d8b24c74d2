//! Webhooks: stored events POSTed to the application in position order,
//! batched, signed as Standard Webhooks sign them, at least once.
//!
//! **Exactly where it stopped.** Each webhook's row holds how far it was
//! delivered (`delivered_to`, moved only by a 2xx) and the batch in flight
//! (`batch_until`, written before the first attempt), so a retry, a
//! restart or another node sends the same batch under the same
//! `webhook-id`, and the next batch starts where the last one ended.
//! **One node at a time**: a node delivers a webhook only while it holds
//! its lease, taken in one statement; a node that dies loses it within
//! [`LEASE`]. **Never in the way of sends, nor of each other**: each
//! webhook is delivered by a task of its own, reading the database like
//! the firehose (a few such reads at once per node), with a timeout per
//! request and the response's body never read. It wakes with the feed only while a
//! webhook exists, then lets [`FILL`] pass before reading, so at chat rates
//! a batch carries tens of events and costs three small writes (lease,
//! batch, delivered) rather than three per handful of events.

use crate::{
    domain::{Position, now_micros},
    engine::firehose::{KINDS, Kinds, Stored},
    store::{Store, webhooks::WebhookRow},
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::{
    Client,
    connect::{HttpConnector, dns::Name},
};
use std::{
    collections::HashSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long a node's lease of a webhook lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(15);
/// How long one delivery may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most events in one batch.
const BATCH: i64 = 500;
/// Deliveries' database steps at once on a node.
const DATABASE_STEPS: usize = 4;
/// The most bytes of events in one batch (one event always goes): under
/// the 1 MiB request limit proxies commonly set (nginx's default).
const BATCH_BYTES: usize = 1_000_000;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often each node looks for work, whatever the feed says.
const TICK: Duration = Duration::from_secs(1);
/// How long a batch fills after the feed moves before it is read: at
/// 2,000 events/s, a full batch.
pub const FILL: Duration = Duration::from_millis(200);

type Https = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;
/// herald's outgoing HTTP client (webhooks, the publish hook).
pub type HttpsClient = Client<Https, Full<Bytes>>;

/// An HTTP and HTTPS client with the system's certificates (rustls, ring);
/// unless `allow_private`, it connects to no name that resolves to a
/// loopback or private address (see [`Resolver`]).
pub fn https_client(allow_private: bool) -> HttpsClient {
    // Small requests, answered at once: Nagle's delay would cost each one
    // a round of delayed acknowledgement.
    let mut http = HttpConnector::new_with_resolver(Resolver { allow_private });
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(roots) => roots,
        Err(error) => {
            tracing::warn!(%error, "no system certificates: HTTPS calls out will fail");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(rustls_empty_roots())
        }
    }
    .https_or_http()
    .enable_http1()
    .wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// Resolves a host name when the client connects, and refuses it if any
/// address is loopback, private or link-local (unless allowed): checking
/// the URL when a webhook is made is not enough, since a name may answer
/// with a public address then and with 127.0.0.1 at delivery (DNS
/// rebinding). Literal addresses never reach a resolver;
/// [`check_url`] refuses those before each delivery.
#[derive(Clone)]
pub struct Resolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            refuse_private(&addresses, allow_private)?;
            Ok(addresses.into_iter())
        })
    }
}

/// The resolver's decision: a name with any private answer is refused,
/// since the connector would try the others in turn.
fn refuse_private(addresses: &[SocketAddr], allow_private: bool) -> std::io::Result<()> {
    if !allow_private && addresses.iter().any(|address| is_private(address.ip())) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the host resolves to a loopback or private address",
        ));
    }
    Ok(())
}

/// Counts for `/metrics`.
#[derive(Default)]
pub struct WebhookCounts {
    pub delivered_events: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
}

/// The delivering half on this node; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    client: HttpsClient,
    /// This node's name on leases.
    owner: String,
    allow_private: bool,
    counts: WebhookCounts,
    /// Webhooks being delivered on this node now, one task each.
    in_flight: std::sync::Mutex<HashSet<String>>,
    /// Those tasks, waited for before the leases are given up.
    deliveries: TaskTracker,
    /// Database steps of deliveries at once: many webhooks waking together
    /// take a few places on the pools sends use, not one each.
    database: tokio::sync::Semaphore,
    shutdown: CancellationToken,
}

/// A webhook's place in [`Inner::in_flight`], given back when dropped.
struct InFlight<'a>(&'a Inner, &'a str);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(self.1);
    }
}

impl Webhooks {
    /// Starts delivering on `tasks` until `shutdown`: each tick, and each
    /// time this node's feed moves.
    pub fn start(
        store: Store,
        delivered: watch::Receiver<i64>,
        allow_private: bool,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let client = https_client(allow_private);
        let webhooks = Self {
            inner: Arc::new(Inner {
                store,
                client,
                owner: crate::domain::random_hex(),
                allow_private,
                counts: WebhookCounts::default(),
                in_flight: Default::default(),
                deliveries: TaskTracker::new(),
                database: tokio::sync::Semaphore::new(DATABASE_STEPS),
                shutdown,
            }),
        };
        tasks.spawn(webhooks.clone().run(delivered));
        webhooks
    }

    /// Whether `url` may be a webhook: http or https, a host that does not
    /// resolve to loopback, private, link-local or unspecified addresses
    /// (unless `--webhook-allow-private`).
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        check_url(url, self.inner.allow_private).await
    }

    pub fn counts(&self) -> &WebhookCounts {
        &self.inner.counts
    }

    async fn run(self, mut delivered: watch::Receiver<i64>) {
        self.work(&mut delivered).await;
        // Stopping: every delivery ends (each sees the shutdown), then the
        // leases go, so another node may carry on at once, not after them.
        let deliveries = &self.inner.deliveries;
        deliveries.close();
        deliveries.wait().await;
        if let Err(error) = self.inner.store.release_webhooks(&self.inner.owner).await {
            tracing::warn!(%error, "webhook leases could not be given up");
        }
    }

    async fn work(&self, delivered: &mut watch::Receiver<i64>) {
        let shutdown = &self.inner.shutdown;
        // With no webhook enabled, only the tick looks (a new one starts
        // within it); the feed's moves are not worth a read each.
        let mut listening = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                changed = delivered.changed(), if listening => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(FILL) => {}
                    }
                }
            }
            let webhooks = match self.inner.store.webhooks().await {
                Ok(webhooks) => webhooks,
                Err(error) => {
                    tracing::warn!(%error, "webhooks could not be read");
                    continue;
                }
            };
            listening = webhooks.iter().any(|webhook| webhook.disabled == 0);
            // Committed and readable up to here, before any delivery reads.
            let readable = *delivered.borrow_and_update();
            for webhook in webhooks.into_iter().filter(|webhook| webhook.disabled == 0) {
                self.deliver_apart(webhook.id, readable);
            }
        }
    }

    /// Delivers webhook `id` on a task of its own unless one already is:
    /// a slow or dead endpoint delays only its own webhook.
    fn deliver_apart(&self, id: String, readable: i64) {
        let inner = &self.inner;
        let fresh = inner
            .in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.clone());
        if !fresh {
            return;
        }
        let this = self.clone();
        inner.deliveries.spawn(async move {
            // Taken off the set however the delivery ends.
            let _in_flight = InFlight(&this.inner, &id);
            if let Err(error) = this.deliver(&id, readable).await {
                tracing::warn!(%error, webhook = %id, "webhook delivery failed to run");
            }
        });
    }

    /// Delivers webhook `id`'s batches under one lease: full batches one
    /// after another while the lease has half its time left, then back to
    /// waiting for the feed. `readable`: every event up to it is committed.
    async fn deliver(&self, id: &str, readable: i64) -> Result<(), sqlx::Error> {
        let store = &self.inner.store;
        let owner = &self.inner.owner;
        let shutdown = &self.inner.shutdown;
        // Held for the database steps, given back while the request is out.
        let mut permit = self.database_place().await;
        let now = now_micros();
        let lease_until = now + LEASE.as_micros() as i64;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let Some(mut webhook) = store.lease_webhook(id, owner, now, lease_until).await? else {
            return Ok(());
        };
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let kinds = Kinds::parse(&webhook_kinds(&webhook.kinds)).unwrap_or(Kinds([true; 6]));
            let after = Position(webhook.delivered_to);
            let mut events = store.events_after(after, BATCH, kinds.0).await?;
            let retry = webhook.batch_until.is_some();
            match webhook.batch_until {
                Some(until) => events.retain(|(event, _)| event.position.0 <= until),
                None if events.is_empty() => {
                    // Nothing wanted up to what was readable: never scan
                    // it again.
                    return store.webhook_skipped(id, owner, readable).await;
                }
                None => {}
            }
            let mut bodies = events_json(events);
            let read = bodies.len();
            if !retry {
                keep_within(&mut bodies, BATCH_BYTES);
            }
            let Some(&(last, _)) = bodies.last() else {
                return Ok(());
            };
            // Cut by bytes, or a full page: more is waiting.
            let more = bodies.len() < read || read as i64 == BATCH;
            let batch_until = webhook.batch_until.unwrap_or(last);
            if !retry && !store.webhook_batch(id, owner, batch_until).await? {
                return Ok(()); // the lease was lost
            }
            let message_id = format!("msg_{id}_{batch_until}");
            let count = bodies.len() as i64;
            let positions: Vec<i64> = bodies.iter().map(|(position, _)| *position).collect();
            let body = batch_body(bodies);
            drop(permit);
            let posted = tokio::select! {
                // Stopping: the batch stays fixed and goes again, same id.
                _ = shutdown.cancelled() => return Ok(()),
                posted = self.post(&webhook, &message_id, body) => posted,
            };
            permit = self.database_place().await;
            let half_lease = lease_until - LEASE.as_micros() as i64 / 2;
            match posted {
                Ok(()) => {
                    let kept = store
                        .webhook_delivered(id, owner, batch_until, count)
                        .await?;
                    let counts = &self.inner.counts;
                    counts.batches.fetch_add(1, Ordering::Relaxed);
                    counts
                        .delivered_events
                        .fetch_add(count as u64, Ordering::Relaxed);
                    // Back to waiting when this was all there was (a retry
                    // may have been overtaken by more).
                    if !kept || !(more || retry) || now_micros() > half_lease {
                        return Ok(());
                    }
                    webhook.delivered_to = batch_until;
                    webhook.batch_until = None;
                    webhook.failures = 0;
                }
                Err(failure) => {
                    self.inner.counts.failures.fetch_add(1, Ordering::Relaxed);
                    let next = now_micros() + backoff(webhook.failures).as_micros() as i64;
                    let gone = failure.gone;
                    if gone {
                        tracing::warn!(webhook = %id, "the endpoint answered 410: webhook disabled");
                    }
                    store
                        .webhook_failed(id, owner, &failure.error, next, gone)
                        .await?;
                    // Too large for the endpoint (413: it took none of it):
                    // the first half goes at once, under its own id, down
                    // to one event.
                    if failure.too_large && positions.len() > 1 && now_micros() < half_lease {
                        let half = positions[positions.len() / 2 - 1];
                        if store.webhook_batch(id, owner, half).await? {
                            webhook.batch_until = Some(half);
                            webhook.failures += 1;
                            continue;
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A place for a delivery's database steps (see [`DATABASE_STEPS`]).
    async fn database_place(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.inner.database.acquire().await.ok()
    }

    /// POSTs one signed batch; a 2xx is success.
    async fn post(&self, webhook: &WebhookRow, id: &str, body: String) -> Result<(), Failure> {
        check_url(&webhook.url, self.inner.allow_private)
            .await
            .map_err(Failure::error)?;
        let timestamp = now_micros() / 1_000_000;
        let signature = sign(&webhook.secret, id, timestamp, &body).map_err(Failure::error)?;
        let request = hyper::Request::post(&webhook.url)
            .header("content-type", "application/json")
            .header("user-agent", "herald-webhooks")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| Failure::error(error.to_string()))?;
        let answer =
            tokio::time::timeout(REQUEST_TIMEOUT, self.inner.client.request(request)).await;
        // The body is never read: a huge or endless answer costs nothing.
        let status = match answer {
            Err(_) => return Err(Failure::error("timed out".into())),
            Ok(Err(error)) => return Err(Failure::error(error.to_string())),
            Ok(Ok(response)) => response.status(),
        };
        match status.as_u16() {
            200..=299 => Ok(()),
            410 => Err(Failure {
                gone: true,
                ..Failure::error("410 Gone".into())
            }),
            413 => Err(Failure {
                too_large: true,
                ..Failure::error("answered 413".into())
            }),
            code => Err(Failure::error(format!("answered {code}"))),
        }
    }
}

/// Why a delivery failed, and whether the endpoint said it is gone.
struct Failure {
    error: String,
    gone: bool,
    /// The endpoint refused the batch as too large (413): try a smaller
    /// one. A timeout is not that: the endpoint may have taken the batch,
    /// which then goes again whole under its id.
    too_large: bool,
}

impl Failure {
    fn error(error: String) -> Self {
        Self {
            error,
            gone: false,
            too_large: false,
        }
    }
}

fn rustls_empty_roots() -> tokio_rustls::rustls::ClientConfig {
    tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
    .with_no_client_auth()
}

/// A webhook's kinds as stored (comma-separated; empty: all).
pub fn webhook_kinds(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|kind| KINDS.contains(kind))
        .map(str::to_owned)
        .collect()
}

/// `{"events": [...]}`, each event as on the firehose.
/// Each event's position and JSON, as the firehose gives it.
fn events_json(events: Vec<(crate::domain::Event, Vec<String>)>) -> Vec<(i64, String)> {
    events
        .into_iter()
        .map(|(event, offline)| {
            let position = event.position.0;
            let stored = Stored { event, offline };
            let json = serde_json::to_string(&stored.to_pb()).unwrap_or_default();
            (position, json)
        })
        .collect()
}

/// Keeps the first events of `events` whose JSON fits in `bytes`, and at
/// least one.
fn keep_within(events: &mut Vec<(i64, String)>, bytes: usize) {
    let mut total = 0;
    let fits = events
        .iter()
        .take_while(|(_, json)| {
            total += json.len() + 1;
            total <= bytes
        })
        .count();
    events.truncate(fits.max(1));
}

/// The request's body: `{"events": [...]}`.
fn batch_body(events: Vec<(i64, String)>) -> String {
    let mut body = String::from("{\"events\":[");
    for (index, (_, json)) in events.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    body.push_str("]}");
    body
}

/// How long to wait after the `failures`-th failure in a row: doubling
/// from a second up to [`MAX_BACKOFF`], with up to half of it as jitter, so
/// many webhooks failing together do not retry together.
fn backoff(failures: i32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.clamp(0, 9)).min(MAX_BACKOFF);
    let mut random = [0u8; 2];
    let _ = getrandom::fill(&mut random);
    let jitter = f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX) / 2.0;
    base.mul_f64(1.0 - jitter)
}

/// A new webhook secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the secret's bytes.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, String> {
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "the webhook secret is not base64".to_owned())?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)
        .map_err(|_| "the webhook secret is unusable".to_owned())?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!("v1,{signature}"))
}

/// See [`Webhooks::check_url`].
pub async fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "url is not a URL".to_owned())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("url must be http or https".into());
    }
    let host = uri.host().ok_or("url has no host")?;
    if allow_private {
        return Ok(());
    }
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| "url's host does not resolve".to_owned())?
        .map(|address| address.ip())
        .collect();
    if addresses.is_empty() || addresses.iter().any(|ip| is_private(*ip)) {
        return Err(
            "url resolves to a loopback or private address (--webhook-allow-private allows it)"
                .into(),
        );
    }
    Ok(())
}

/// Whether `ip` is anything but a public unicast address: loopback,
/// private, shared, link-local, "this network", documentation and
/// benchmarking ranges, reserved, multicast; in IPv6 also unique and
/// site-local, and an IPv4 address carried inside (mapped, compatible,
/// NAT64, 6to4) is judged as IPv4.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0 // this network, 0.0.0.0/8
                || a == 100 && (b & 0xc0) == 64 // shared, 100.64/10
                || a == 192 && b == 0 && (c == 0 || c == 2) // 192.0.0/24, 192.0.2/24
                || a == 198 && (b & 0xfe) == 18 // benchmarking, 198.18/15
                || a == 198 && b == 51 && c == 100 // documentation
                || a == 203 && b == 0 && c == 113 // documentation
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let embedded = |high: usize| {
                let [x, y] = [segments[high], segments[high + 1]];
                std::net::Ipv4Addr::new((x >> 8) as u8, x as u8, (y >> 8) as u8, y as u8)
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local
                || (segments[0] & 0xffc0) == 0xfe80 // link local
                || (segments[0] & 0xffc0) == 0xfec0 // site local
                || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                                || segments[0] == 0x2001 && segments[1] == 0 // Teredo
                // IPv4-compatible ::a.b.c.d, SIIT ::ffff:0:a.b.c.d, NAT64
                // 64:ff9b::a.b.c.d and the local-use 64:ff9b:1::/48
                || (segments[..6] == [0; 6]
                    || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
                    || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    || segments[..3] == [0x64, 0xff9b, 1])
                    && is_private(IpAddr::V4(embedded(6)))
                || segments[0] == 0x2002 && is_private(IpAddr::V4(embedded(1))) // 6to4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, id, 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[tokio::test]
    async fn private_and_loopback_urls_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9/hook",
            "http://10.1.2.3/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest",
            "http://localhost/hook",
            "http://[::ffff:127.0.0.1]:9/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://[fd00::1]/hook",
            "http://[fe80::1]/hook",
            "http://100.64.0.1/hook",
            "http://0.0.0.0/hook",
            "http://255.255.255.255/hook",
            "http://0.0.0.1/hook",
            "http://192.0.2.2/hook",
            "http://198.18.0.1/hook",
            "http://240.0.0.1/hook",
            "http://224.0.0.1/hook",
            "http://[::127.0.0.1]/hook",
            "http://[64:ff9b::a9fe:a9fe]/hook",
            "http://[2002:a9fe:a9fe::]/hook",
            "http://[fec0::1]/hook",
            "http://[ff02::1]/hook",
            "http://[64:ff9b:1::a00:1]/hook",
            "http://[::ffff:0:a00:1]/hook",
            "http://[2001::1]/hook",
        ] {
            assert!(check_url(url, false).await.is_err(), "{url}");
        }
        assert!(check_url("http://93.184.216.34/hook", false).await.is_ok());
        assert!(
            check_url("http://[2606:2800:220:1::1]/hook", false)
                .await
                .is_ok()
        );
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
        assert!(check_url("ftp://example.com/", true).await.is_err());
    }

    /// A name that resolves to loopback is refused when the client
    /// connects, not only when the URL is checked: a server on
    /// 127.0.0.1, reached as `localhost`, is never sent the request.
    #[tokio::test]
    async fn the_client_connects_to_no_private_address_by_name() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                // The whole request (head, empty body) before the answer.
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    let mut buffer = [0u8; 1024];
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let call = |allow_private: bool| async move {
            let request = hyper::Request::post(format!("http://localhost:{port}/hook"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            https_client(allow_private).request(request).await
        };
        let refused = call(false).await.expect_err("localhost is loopback");
        assert!(
            format!("{refused:?}").contains("private address"),
            "{refused:?}"
        );
        assert_eq!(call(true).await.unwrap().status(), 204, "unless allowed");
    }

    /// A batch keeps to its byte budget, and always carries one event.
    #[test]
    fn a_batch_keeps_within_its_bytes() {
        let events = |sizes: &[usize]| -> Vec<(i64, String)> {
            sizes
                .iter()
                .zip(1..)
                .map(|(size, position)| (position, "x".repeat(*size)))
                .collect()
        };
        let mut batch = events(&[400, 400, 400]);
        keep_within(&mut batch, 1_000);
        assert_eq!(batch.len(), 2);
        let mut huge = events(&[5_000, 10]);
        keep_within(&mut huge, 1_000);
        assert_eq!(huge.len(), 1, "one event always goes");
        assert_eq!(batch_body(events(&[1, 1])), r#"{"events":[x,x]}"#);
    }

    /// Any private answer refuses the name (the connector would fall back
    /// to it); public answers alone pass.
    #[test]
    fn a_name_with_any_private_answer_is_refused() {
        let address = |text: &str| text.parse::<SocketAddr>().unwrap();
        let public = [
            address("93.184.216.34:0"),
            address("[2606:2800:220:1::1]:0"),
        ];
        assert!(refuse_private(&public, false).is_ok());
        let mixed = [address("93.184.216.34:0"), address("127.0.0.1:0")];
        assert!(refuse_private(&mixed, false).is_err());
        assert!(refuse_private(&mixed, true).is_ok());
        let mapped = [address("[::ffff:192.168.1.1]:0")];
        assert!(refuse_private(&mapped, false).is_err());
    }

    /// The delivering half's own client is the guarded one unless the
    /// server allows private addresses.
    #[tokio::test]
    async fn the_delivery_client_follows_the_servers_setting() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store = Store::connect(&url).await.unwrap();
        let (_feed, delivered) = watch::channel(0);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let webhooks = Webhooks::start(store, delivered, false, shutdown.clone(), &tasks);
        let request = hyper::Request::post("http://localhost:9/hook")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let refused = webhooks.inner.client.request(request).await.unwrap_err();
        assert!(
            format!("{refused:?}").contains("private address"),
            "{refused:?}"
        );
        shutdown.cancel();
    }

    /// A node whose lease lapsed and was taken (it paused longer than
    /// [`LEASE`]) can neither fix a batch nor move the cursor: the node
    /// that holds the lease decides both.
    #[tokio::test]
    async fn a_node_that_lost_its_lease_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store = Store::connect(&url).await.unwrap();
        let row = WebhookRow {
            id: "wh_1".into(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: new_secret(),
            kinds: String::new(),
            delivered_to: 10,
            batch_until: None,
            failures: 0,
            last_error: String::new(),
            deliveries: 0,
            disabled: 0,
        };
        assert!(store.create_webhook(&row, 0, 100).await.unwrap());
        let lease = |owner: &'static str, now: i64| {
            let store = store.clone();
            async move {
                store
                    .lease_webhook("wh_1", owner, now, now + 15)
                    .await
                    .unwrap()
            }
        };
        assert!(lease("a", 1).await.is_some());
        assert!(lease("b", 2).await.is_none(), "a holds it");
        assert!(lease("b", 17).await.is_some(), "a's lease lapsed");
        assert!(!store.webhook_batch("wh_1", "a", 20).await.unwrap());
        assert!(!store.webhook_delivered("wh_1", "a", 20, 5).await.unwrap());
        store
            .webhook_failed("wh_1", "a", "gone", 0, true)
            .await
            .unwrap();
        let kept = lease("b", 18).await.expect("not disabled by a");
        assert_eq!((kept.delivered_to, kept.batch_until), (10, None));
        assert!(store.webhook_batch("wh_1", "b", 12).await.unwrap());
        assert!(store.webhook_delivered("wh_1", "b", 12, 2).await.unwrap());
        let moved = lease("b", 19).await.unwrap();
        assert_eq!((moved.delivered_to, moved.deliveries), (12, 2));
    }
}
