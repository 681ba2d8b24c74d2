//! Webhooks: a real HTTP receiver on port 0 verifies every signature (the
//! Standard Webhooks scheme, computed here on its own) and records each
//! batch; herald must deliver every event after the webhook's creation, in
//! position order, at least once, retrying a failed batch as the same batch
//! under the same `webhook-id`, across a restart of herald itself.

use crate::support::{
    TestApp, TestDb, User, call, call_at, service_key, spawn_app, spawn_app_with,
};
use axum::{Router, extract::State, http::HeaderMap, routing::post};
use base64::Engine as _;
use herald::pb;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
};

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Receiver {
    secret: Mutex<String>,
    /// Each POST: its webhook-id and the ids of its events.
    batches: Mutex<Vec<(String, Vec<String>)>>,
    /// The status to answer; 0 means 200.
    answer: AtomicU16,
    /// Batches of more events than this are answered 413; 0: no limit.
    max_events: AtomicUsize,
    /// How long to wait before answering, in milliseconds.
    delay_ms: AtomicU64,
    bad_signatures: Mutex<usize>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let secret = receiver.secret.lock().unwrap().clone();
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    if header("webhook-signature") != expected {
        *receiver.bad_signatures.lock().unwrap() += 1;
        return axum::http::StatusCode::UNAUTHORIZED;
    }
    let delay = receiver.delay_ms.load(Ordering::Relaxed);
    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    let batch: serde_json::Value = serde_json::from_str(&body).unwrap();
    let max = receiver.max_events.load(Ordering::Relaxed);
    if max > 0 && batch["events"].as_array().unwrap().len() > max {
        receiver.batches.lock().unwrap().push((id, Vec::new()));
        return axum::http::StatusCode::PAYLOAD_TOO_LARGE;
    }
    let ids = batch["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    receiver.batches.lock().unwrap().push((id, ids));
    match receiver.answer.load(Ordering::Relaxed) {
        0 => axum::http::StatusCode::OK,
        code => axum::http::StatusCode::from_u16(code).unwrap(),
    }
}

/// Starts the receiver; returns its URL.
async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Registers a webhook at `receiver` (started here) for `kinds` (every
/// kind when empty); returns the webhook's id.
async fn register(app: &TestApp, key: &str, receiver: &Arc<Receiver>, kinds: &[&str]) -> String {
    let url = start_receiver(receiver.clone()).await;
    let body = serde_json::json!({ "url": url, "kinds": kinds });
    let (status, created) = call(app, key, Method::POST, "/api/admin/webhooks", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    *receiver.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_owned();
    created["id"].as_str().unwrap().to_owned()
}

/// The ids of the events `receiver` took (answered 2xx), in order, each
/// once (a retry's repeat left out).
fn taken(receiver: &Receiver) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (id, batch) in receiver.batches.lock().unwrap().iter() {
        if !batch.is_empty() && seen.insert(id.clone()) {
            ids.extend(batch.iter().cloned());
        }
    }
    ids
}

/// A server that may deliver to loopback, an `admin` key, and alice's
/// chat with bob: what most webhook tests start from.
async fn with_a_chat(db: &TestDb) -> (String, TestApp, User, String) {
    let key = service_key(&db.url, "hooks", "admin").await;
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let app = spawn_app_with(db, allow).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    (key, app, alice, chat)
}

/// A batch the endpoint refuses as too large (413) is halved, under a new
/// `webhook-id`, until the endpoint takes it; then delivery goes on, and
/// every event arrives once, in order.
async fn a_batch_too_large_for_the_endpoint_is_halved(db: TestDb) {
    let (key, app, alice, chat) = with_a_chat(&db).await;
    let receiver = Arc::new(Receiver::default());
    register(&app, &key, &receiver, &["message"]).await;
    // The endpoint takes one event at a time; eight are sent at once, so
    // batches of several come (and are refused) first.
    receiver.max_events.store(1, Ordering::Relaxed);
    let contents: Vec<String> = (0..8).map(|n| format!("m{n}")).collect();
    let sends = contents.iter().map(|content| alice.send(&chat, content));
    let mut sent: Vec<String> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|sent| sent.unwrap().id)
        .collect();
    sent.sort_by_key(|id| id.parse::<i64>().unwrap());
    let all = crate::support::eventually(|| async { taken(&receiver) == sent }).await;
    assert!(all, "every event once, in order: {:?}", taken(&receiver));
    let batches = receiver.batches.lock().unwrap().clone();
    let refused: Vec<&String> = batches
        .iter()
        .filter(|(_, ids)| ids.is_empty())
        .map(|(id, _)| id)
        .collect();
    assert!(!refused.is_empty(), "batches of several were refused first");
    for (_, ids) in &batches {
        assert!(ids.len() <= 1, "only single events taken: {ids:?}");
    }
    app.stop().await;
}

/// An endpoint that answers slowly delays only its own webhook: another
/// webhook's receiver gets each event at once, and herald stops without
/// waiting for the slow answer.
async fn a_slow_endpoint_delays_only_its_own_webhook(db: TestDb) {
    let (key, app, alice, chat) = with_a_chat(&db).await;
    let slow = Arc::new(Receiver::default());
    slow.delay_ms.store(60_000, Ordering::Relaxed);
    register(&app, &key, &slow, &[]).await;
    let healthy = Arc::new(Receiver::default());
    register(&app, &key, &healthy, &[]).await;
    for n in 0..3 {
        let id = alice.send(&chat, &format!("m{n}")).await.unwrap().id;
        let started = std::time::Instant::now();
        let arrived = crate::support::eventually(|| async { taken(&healthy).contains(&id) }).await;
        assert!(arrived);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "the healthy endpoint waited for the slow one ({:?})",
            started.elapsed()
        );
    }
    let stopping = std::time::Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(8),
        "a hanging delivery held the shutdown ({:?})",
        stopping.elapsed()
    );
}

/// A webhook whose kinds match nothing for a while moves its cursor over
/// what it does not want: its lag is 0, not the history since its last
/// match (which it would read again and again).
async fn a_webhook_skips_what_its_kinds_do_not_want(db: TestDb) {
    let (key, app, alice, chat) = with_a_chat(&db).await;
    let receiver = Arc::new(Receiver::default());
    register(&app, &key, &receiver, &["membership"]).await;
    let mut last = String::new();
    for n in 0..5 {
        last = alice.send(&chat, &format!("m{n}")).await.unwrap().id;
    }
    let skipped = crate::support::eventually(|| async {
        let (_, list) = call(&app, &key, Method::GET, "/api/admin/webhooks", None).await;
        let webhook = &list["webhooks"][0];
        webhook["deliveredToId"] == last.as_str() && webhook["lag"].as_str().unwrap_or("0") == "0"
    })
    .await;
    assert!(skipped, "the cursor passed the unwanted events");
    assert!(taken(&receiver).is_empty(), "none of them was sent");
    app.stop().await;
}

/// Creations at once cannot pass the cap of 100 webhooks.
async fn webhooks_created_at_once_keep_to_the_cap(db: TestDb) {
    let admin = service_key(&db.url, "hooks", "admin").await;
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let app = Arc::new(spawn_app_with(&db, allow).await);
    let mut creations = Vec::new();
    for _ in 0..120 {
        let (app, admin) = (app.clone(), admin.clone());
        creations.push(tokio::spawn(async move {
            let body = serde_json::json!({ "url": "http://127.0.0.1:9/hook" });
            call(
                &app,
                &admin,
                Method::POST,
                "/api/admin/webhooks",
                Some(body),
            )
            .await
            .0
        }));
    }
    let mut created = 0;
    for creation in creations {
        match creation.await.unwrap() {
            StatusCode::CREATED => created += 1,
            status => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
        }
    }
    assert_eq!(created, 100);
    let (_, list) = call(&app, &admin, Method::GET, "/api/admin/webhooks", None).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 100);
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

/// Every event after the webhook's creation reaches the receiver in
/// position order; a batch answered 500 comes again whole under the same
/// `webhook-id`; herald restarted carries on where it stopped; a 410
/// disables the webhook.
async fn webhooks_deliver_every_event_in_order_through_failures_and_a_restart(db: TestDb) {
    let (key, app, alice, chat) = with_a_chat(&db).await;
    alice.send(&chat, "before the webhook").await.unwrap();
    let receiver = Arc::new(Receiver::default());
    let url = start_receiver(receiver.clone()).await;
    let (status, created) = call(
        &app,
        &key,
        Method::POST,
        "/api/admin/webhooks",
        Some(serde_json::json!({ "url": url })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    *receiver.secret.lock().unwrap() = secret;

    // Failing first: the same batch comes again.
    receiver.answer.store(500, Ordering::Relaxed);
    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(alice.send(&chat, &format!("m{n}")).await.unwrap().id);
    }
    let retried =
        crate::support::eventually(|| async { receiver.batches.lock().unwrap().len() >= 2 }).await;
    assert!(retried, "a failed batch is retried");
    receiver.answer.store(0, Ordering::Relaxed);
    for n in 5..10 {
        sent.push(alice.send(&chat, &format!("m{n}")).await.unwrap().id);
    }
    let last = sent.last().unwrap().clone();
    let arrived = |last: String| {
        let receiver = receiver.clone();
        async move {
            crate::support::eventually(|| async {
                receiver
                    .batches
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(_, ids)| ids.contains(&last))
            })
            .await
        }
    };
    assert!(arrived(last.clone()).await);
    app.stop().await;

    // herald restarted: it carries on where it stopped.
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let app = spawn_app_with(&db, allow).await;
    let alice = app.user("alice").await;
    for n in 10..15 {
        sent.push(alice.send(&chat, &format!("m{n}")).await.unwrap().id);
    }
    assert!(arrived(sent.last().unwrap().clone()).await);

    let batches = receiver.batches.lock().unwrap().clone();
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    // The first two posts were one batch, under one id.
    assert_eq!(batches[0], batches[1], "a retry is the same batch");
    // Delivered once each (retries aside), in order, nothing before the
    // webhook and nothing missing.
    let mut delivered: Vec<String> = Vec::new();
    let mut last_id = String::new();
    for (id, ids) in &batches {
        if *id == last_id {
            continue;
        }
        last_id = id.clone();
        delivered.extend(ids.iter().cloned());
    }
    assert_eq!(delivered, sent);

    // ListWebhooks shows the progress; a 410 disables it.
    let (status, listed) = call(&app, &key, Method::GET, "/api/admin/webhooks", None).await;
    assert_eq!(status, StatusCode::OK);
    let webhook = &listed["webhooks"][0];
    assert_eq!(webhook["deliveredToId"], sent.last().unwrap().as_str());
    assert_eq!(webhook["deliveries"], "15");
    assert!(webhook.get("secret").is_none(), "the secret is shown once");
    receiver.answer.store(410, Ordering::Relaxed);
    alice.send(&chat, "gone").await.unwrap();
    let disabled = crate::support::eventually(|| async {
        let (_, listed) = call(&app, &key, Method::GET, "/api/admin/webhooks", None).await;
        listed["webhooks"][0]["disabled"] == true
    })
    .await;
    assert!(disabled);
    let id = webhook["id"].as_str().unwrap();
    let path = format!("/api/admin/webhooks/{id}");
    assert_eq!(
        call(&app, &key, Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&app, &key, Method::DELETE, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

/// A webhook to loopback or a private address is refused unless the
/// server allows it, and managing webhooks needs the `admin` scope.
async fn webhooks_are_refused_for_private_addresses_and_other_scopes(db: TestDb) {
    let admin = service_key(&db.url, "hooks", "admin").await;
    let reader = service_key(&db.url, "reader", "read,moderate,manage,publish").await;
    let app = spawn_app(&db).await;
    let body = || Some(serde_json::json!({ "url": "http://127.0.0.1:9/hook" }));
    let (status, answer) = call(&app, &admin, Method::POST, "/api/admin/webhooks", body()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("private"),
        "{answer}"
    );
    let (status, _) = call(&app, &reader, Method::POST, "/api/admin/webhooks", body()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, &reader, Method::GET, "/api/admin/webhooks", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let ftp = Some(serde_json::json!({ "url": "ftp://example.com/" }));
    let (status, _) = call(&app, &admin, Method::POST, "/api/admin/webhooks", ftp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

/// A receiver on a fixed port that can be killed and started again.
struct Endpoint {
    receiver: Arc<Receiver>,
    listener_addr: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    async fn start(receiver: Arc<Receiver>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener_addr = listener.local_addr().unwrap();
        let mut endpoint = Self {
            receiver,
            listener_addr,
            task: None,
        };
        endpoint.serve(listener);
        endpoint
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.listener_addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.receiver.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Kills the receiver: connections are refused until it is back.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.listener_addr)
            .await
            .unwrap();
        self.serve(listener);
    }
}

/// Four writers send 2,000 messages with edits and membership changes while the
/// receiver is killed and started again twice and herald is restarted
/// once: every stored event after the webhook's creation arrives, in
/// position order, and a duplicate is only ever a retry of a whole batch
/// under its own `webhook-id`.
async fn webhooks_lose_nothing_when_the_receiver_and_herald_go_away(db: TestDb) {
    let key = service_key(&db.url, "hooks", "admin,read").await;
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let mut app = spawn_app_with(&db, allow).await;
    let receiver = Arc::new(Receiver::default());
    let mut endpoint = Endpoint::start(receiver.clone()).await;
    let (status, created) = call(
        &app,
        &key,
        Method::POST,
        "/api/admin/webhooks",
        Some(serde_json::json!({ "url": endpoint.url() })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    *receiver.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_owned();
    let alice = app.user("alice").await;
    let group = alice
        .create_conversation(&["bob", "carol", "dave"])
        .await
        .unwrap()
        .id;
    for phase in 0..3 {
        let mut writers = Vec::new();
        for name in ["alice", "bob", "carol", "dave"] {
            let user = app.user(name).await;
            let group = group.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..167 {
                    let sent = user
                        .send(&group, &format!("{name} {phase}.{n}"))
                        .await
                        .unwrap();
                    if n % 10 == 0 {
                        let edit = pb::EditMessageRequest {
                            conversation_id: group.clone(),
                            message_id: sent.id,
                            content: format!("{name} {phase}.{n} (edited)"),
                        };
                        user.client()
                            .edit_message(user.request(edit))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        let guest = format!("guest-{phase}");
        let alice = app.user("alice").await;
        alice.add(&group, &[guest.as_str()]).await.unwrap();
        match phase {
            0 | 1 => endpoint.kill().await,
            _ => {}
        }
        for writer in writers {
            writer.await.unwrap();
        }
        alice.remove(&group, &guest).await.unwrap();
        if phase < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            endpoint.restart().await;
        }
        if phase == 1 {
            app.stop().await;
            app = spawn_app_with(&db, allow).await;
        }
    }
    // What was stored after the webhook's creation, from the firehose.
    let alice = app.user("alice").await;
    let last = alice.send(&group, "the end").await.unwrap().id;
    let after = created["deliveredToId"].as_str().unwrap_or("");
    let body = pb::SubscribeAllRequest {
        after_id: after.into(),
        kinds: Vec::new(),
    };
    let mut all = app
        .admin()
        .await
        .subscribe_all(crate::support::authorized(body, &format!("Bearer {key}")))
        .await
        .unwrap()
        .into_inner();
    let mut stored = Vec::new();
    loop {
        let event = crate::support::next_event(&mut all).await;
        stored.push(event.id.clone());
        if event.id == last {
            break;
        }
    }
    let arrived = crate::support::eventually(|| async {
        receiver
            .batches
            .lock()
            .unwrap()
            .iter()
            .any(|(_, ids)| ids.contains(&last))
    })
    .await;
    assert!(arrived, "the last event arrives");
    let batches = receiver.batches.lock().unwrap().clone();
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    let mut delivered: Vec<String> = Vec::new();
    let mut by_id: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (id, ids) in &batches {
        match by_id.get(id) {
            Some(before) => assert_eq!(before, ids, "a retry is the same batch"),
            None => {
                by_id.insert(id.clone(), ids.clone());
                delivered.extend(ids.iter().cloned());
            }
        }
    }
    assert_eq!(delivered, stored, "every event, once, in order");
    // The cursor moved once per batch taken: its count is every event once
    // (a batch sent again after it was taken would count twice).
    let counted = crate::support::eventually(|| async {
        let (_, list) = call(&app, &key, Method::GET, "/api/admin/webhooks", None).await;
        // An int64, a string in JSON.
        list["webhooks"][0]["deliveries"]
            .as_str()
            .and_then(|n| n.parse().ok())
            == Some(stored.len())
    })
    .await;
    assert!(counted, "deliveries counts each event once");
    app.stop().await;
}

/// A deployment holds at most 100 webhooks (each is a delivery loop):
/// the 101st is refused with 429 until one is deleted.
async fn a_deployment_holds_at_most_a_hundred_webhooks(db: TestDb) {
    let admin = service_key(&db.url, "hooks", "admin").await;
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let app = spawn_app_with(&db, allow).await;
    let body = || Some(serde_json::json!({ "url": "http://127.0.0.1:9/hook" }));
    let path = "/api/admin/webhooks";
    let mut ids = Vec::new();
    for _ in 0..100 {
        let (status, webhook) = call(&app, &admin, Method::POST, path, body()).await;
        assert_eq!(status, StatusCode::CREATED, "{webhook}");
        ids.push(webhook["id"].as_str().unwrap().to_owned());
    }
    let (status, refused) = call(&app, &admin, Method::POST, path, body()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        refused["error"].as_str().unwrap().contains("100 webhooks"),
        "{refused}"
    );
    let one = format!("{path}/{}", ids[0]);
    let (status, _) = call(&app, &admin, Method::DELETE, &one, None).await;
    assert!(status.is_success(), "{status}");
    let (status, _) = call(&app, &admin, Method::POST, path, body()).await;
    assert_eq!(status, StatusCode::CREATED, "a place again");
    app.stop().await;
}

on_every_backend!(
    a_batch_too_large_for_the_endpoint_is_halved,
    a_slow_endpoint_delays_only_its_own_webhook,
    a_webhook_skips_what_its_kinds_do_not_want,
    webhooks_created_at_once_keep_to_the_cap,
    a_deployment_holds_at_most_a_hundred_webhooks,
    webhooks_deliver_every_event_in_order_through_failures_and_a_restart,
    webhooks_are_refused_for_private_addresses_and_other_scopes,
    webhooks_lose_nothing_when_the_receiver_and_herald_go_away,
);

/// Two nodes on PostgreSQL share a webhook: when a node dies without a
/// goodbye (SIGKILL, its lease left held), the other takes over once the
/// lease lapses, and nothing is lost or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_over_a_dead_nodes_webhook() {
    use crate::support::{Process, mint};
    const JWT: &str = "webhook-cluster-secret-0123456789abcdef0123456789";
    let Some(db) = TestDb::new(crate::support::Backend::Postgres).await else {
        return;
    };
    let key = service_key(&db.url, "hooks", "admin").await;
    let node = || {
        Process::serve_on(&db.url, |command| {
            command.args(["--jwt-secret", JWT, "--webhook-allow-private"]);
        })
    };
    let mut first = node().await;
    let mut second = node().await;
    let receiver = Arc::new(Receiver::default());
    let url = start_receiver(receiver.clone()).await;
    let hook = serde_json::json!({ "url": url, "kinds": ["message"] });
    let (_, created) = call_at(
        &first.http,
        &key,
        Method::POST,
        "/api/admin/webhooks",
        Some(hook),
    )
    .await;
    *receiver.secret.lock().unwrap() = created["secret"].as_str().unwrap().to_owned();
    let pair = serde_json::json!({ "participantIds": ["bob"] });
    let alice = mint(JWT, "alice");
    let (_, chat) = call_at(
        &first.http,
        &alice,
        Method::POST,
        "/api/conversations",
        Some(pair),
    )
    .await;
    let chat = chat["id"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    let messages = format!("/api/conversations/{chat}/messages");
    let send = |node: &Process, content: String| {
        let (http, body) = (node.http.clone(), serde_json::json!({ "content": content }));
        let (alice, messages) = (&alice, &messages);
        async move {
            let (_, message) = call_at(&http, alice, Method::POST, messages, Some(body)).await;
            message["id"].as_str().unwrap().to_owned()
        }
    };
    let arrived = |last: String| {
        let receiver = receiver.clone();
        async move {
            crate::support::eventually(|| async {
                let batches = receiver.batches.lock().unwrap();
                batches.iter().any(|(_, ids)| ids.contains(&last))
            })
            .await
        }
    };
    // Each node in turn dies while the other lives: whichever delivered,
    // one of the two deaths is the deliverer's.
    for round in 0..2 {
        for n in 0..10 {
            sent.push(send(&first, format!("{round}.{n}")).await);
        }
        assert!(arrived(sent.last().unwrap().clone()).await, "round {round}");
        first.child.start_kill().unwrap();
        let _ = first.child.wait().await;
        for n in 10..20 {
            sent.push(send(&second, format!("{round}.{n}")).await);
        }
        assert!(
            arrived(sent.last().unwrap().clone()).await,
            "round {round}, taken over"
        );
        first = node().await;
        std::mem::swap(&mut first, &mut second);
    }
    let batches = receiver.batches.lock().unwrap().clone();
    let mut delivered = Vec::new();
    let mut by_id: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (id, ids) in batches {
        match by_id.get(&id) {
            Some(before) => assert_eq!(*before, ids, "a retry is the same batch"),
            None => {
                delivered.extend(ids.iter().cloned());
                by_id.insert(id, ids);
            }
        }
    }
    assert_eq!(delivered, sent);
    for node in [first, second] {
        node.terminate().await;
    }
}
