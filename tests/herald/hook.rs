//! The hook before commit: a real hook on port 0, which verifies every
//! signature, answers allow, deny or replace, or fails (an error status,
//! an answer that is not its JSON, a replacement herald cannot store, too
//! slow); what each means on both doors, under both failure policies.

use crate::support::{TestDb, call, code};
use axum::{Router, extract::State, http::HeaderMap, routing::post};
use base64::Engine as _;
use herald::pb;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tonic::Code;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The hook: what it was asked, and what it answers.
#[derive(Default)]
struct Hook {
    asked: Mutex<Vec<serde_json::Value>>,
    /// (status, body, delay)
    answer: Mutex<(u16, String, Duration)>,
    bad_signatures: Mutex<usize>,
}

impl Hook {
    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned(), Duration::ZERO);
    }

    fn slow(&self, delay: Duration) {
        self.answer.lock().unwrap().2 = delay;
    }
}

async fn ask(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if header("webhook-signature") != format!("v1,{expected}") {
        *hook.bad_signatures.lock().unwrap() += 1;
    }
    hook.asked
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap());
    let (status, answer, delay) = hook.answer.lock().unwrap().clone();
    tokio::time::sleep(delay).await;
    (axum::http::StatusCode::from_u16(status).unwrap(), answer)
}

async fn start_hook() -> (Arc<Hook>, String) {
    let hook = Arc::new(Hook::default());
    hook.answer(200, r#"{"action": "allow"}"#);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hook", post(ask))
        .with_state(hook.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hook, url)
}

async fn hooked_app(url: &str, failure: herald::HookFailure) -> (crate::support::TestApp, TestDb) {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let url = url.to_owned();
    let app = crate::support::spawn_app_with(&db, move |config| {
        config.publish_hook = Some(url);
        config.publish_hook_secret = Some(SECRET.into());
        config.publish_hook_timeout = Duration::from_millis(300);
        config.publish_hook_failure = failure;
    })
    .await;
    (app, db)
}

/// Allow, deny (its reason reaching the sender on both doors) and replace
/// (for sends and edits); every call signed; under the `closed` policy a
/// failing or slow hook refuses the send with UNAVAILABLE / 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_allows_denies_and_replaces_and_a_failure_refuses_the_send() {
    let (hook, url) = start_hook().await;
    let (app, _db) = hooked_app(&url, herald::HookFailure::Closed).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let token = app.token("alice");
    let rest = format!("/api/conversations/{chat}/messages");

    let sent = alice.send(&chat, "hello").await.unwrap();
    assert_eq!(sent.content, "hello");
    let asked = hook.asked.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        asked,
        serde_json::json!({ "conversationId": chat, "userId": "alice", "content": "hello" })
    );

    hook.answer(200, r#"{"action": "deny", "reason": "no links, please"}"#);
    let denied = alice.send(&chat, "http://spam").await.unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (Code::PermissionDenied, "no links, please")
    );
    let body = Some(serde_json::json!({ "content": "http://spam" }));
    let (status, answer) = call(&app, &token, Method::POST, &rest, body).await;
    assert_eq!(
        (status, answer["error"].clone()),
        (StatusCode::FORBIDDEN, "no links, please".into())
    );

    hook.answer(200, r#"{"action": "replace", "content": "h*llo"}"#);
    assert_eq!(alice.send(&chat, "hell0").await.unwrap().content, "h*llo");
    let edit = pb::EditMessageRequest {
        conversation_id: chat.clone(),
        message_id: sent.id.clone(),
        content: "hello, edited".into(),
    };
    let edited = alice
        .client()
        .edit_message(alice.request(edit))
        .await
        .unwrap();
    assert_eq!(
        edited.into_inner().content,
        "h*llo",
        "an edit is hooked too"
    );

    for (status, answer) in [
        (200, r#"{"action": "replace", "content": "nul \u0000"}"#),
        (200, "not json"),
        (200, r#"{"action": "shrug"}"#),
        (500, r#"{"action": "allow"}"#),
    ] {
        hook.answer(status, answer);
        let failed = alice.send(&chat, "x").await.unwrap_err();
        assert_eq!(failed.code(), Code::Unavailable, "{answer}");
        let body = Some(serde_json::json!({ "content": "x" }));
        let (status, _) = call(&app, &token, Method::POST, &rest, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    }
    hook.answer(200, r#"{"action": "allow"}"#);
    hook.slow(Duration::from_secs(2));
    let started = std::time::Instant::now();
    assert_eq!(code(alice.send(&chat, "slow").await), Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the timeout, not the hook, decides"
    );

    // Nothing refused was stored.
    let history = alice.messages(crate::support::page(&chat)).await.unwrap();
    assert_eq!(crate::support::contents(&history), ["h*llo", "h*llo"]);
    assert_eq!(*hook.bad_signatures.lock().unwrap(), 0);
    app.stop().await;
}

/// Under the `open` policy a failing or slow hook lets the send through as
/// it was; a deny still denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_hook_lets_sends_through_when_it_fails() {
    let (hook, url) = start_hook().await;
    let (app, _db) = hooked_app(&url, herald::HookFailure::Open).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    hook.answer(500, "");
    assert_eq!(
        alice.send(&chat, "through").await.unwrap().content,
        "through"
    );
    hook.answer(200, r#"{"action": "allow"}"#);
    hook.slow(Duration::from_secs(2));
    assert_eq!(alice.send(&chat, "slow").await.unwrap().content, "slow");
    hook.answer(200, r#"{"action": "deny", "reason": "no"}"#);
    assert_eq!(
        code(alice.send(&chat, "denied").await),
        Code::PermissionDenied
    );
    app.stop().await;
}
