//! Webhooks: a real HTTP receiver on port 0 verifies every signature (the
//! Standard Webhooks scheme, computed here on its own) and records each
//! batch; herald must deliver every event after the webhook's creation, in
//! position order, at least once, retrying a failed batch as the same batch
//! under the same `webhook-id`, across a restart of herald itself.

use crate::support::{TestDb, call, service_key, spawn_app, spawn_app_with};
use axum::{Router, extract::State, http::HeaderMap, routing::post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU16, Ordering},
};

/// What the receiver saw and how it answers.
#[derive(Default)]
struct Receiver {
    secret: Mutex<String>,
    /// Each POST: its webhook-id and the ids of its events.
    batches: Mutex<Vec<(String, Vec<String>)>>,
    /// The status to answer; 0 means 200.
    answer: AtomicU16,
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
    let batch: serde_json::Value = serde_json::from_str(&body).unwrap();
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

/// Every event after the webhook's creation reaches the receiver in
/// position order; a batch answered 500 comes again whole under the same
/// `webhook-id`; herald restarted carries on where it stopped; a 410
/// disables the webhook.
async fn webhooks_deliver_every_event_in_order_through_failures_and_a_restart(db: TestDb) {
    let key = service_key(&db.url, "hooks", "admin").await;
    let allow = |config: &mut herald::ServeConfig| config.webhook_allow_private = true;
    let app = spawn_app_with(&db, allow).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
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

on_every_backend!(
    webhooks_deliver_every_event_in_order_through_failures_and_a_restart,
    webhooks_are_refused_for_private_addresses_and_other_scopes,
);
