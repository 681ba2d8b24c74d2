//! The application behind herald: service keys made by `herald key`, the
//! Admin service on both doors, and moderation that ends streams and
//! refuses calls. Each refusal and each effect, on both backends.

use crate::support::{
    SECRET, TestApp, TestDb, User, authorized, call, code, end_of, eventually, key_command, metric,
    next_event, next_message, open_sse, page, service_key, spawn_app,
};
use herald::pb::{self, event::Kind};
use reqwest::{Method, StatusCode};
use std::time::Duration;
use tonic::{Code, Request};

/// `body` with service key `key`.
fn keyed<T>(body: T, key: &str) -> Request<T> {
    authorized(body, &format!("Bearer {key}"))
}

/// A token for `user` issued at `iat` (seconds since the epoch; none when
/// `None`), valid for an hour: as an identity provider might mint it.
fn token_issued_at(user: &str, iat: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({ "sub": user, "exp": now + 3600 });
    if let Some(iat) = iat {
        claims["iat"] = iat.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn publish(
    app: &TestApp,
    key: &str,
    chat: &str,
    content: &str,
) -> Result<pb::Message, tonic::Status> {
    let body = pb::PublishRequest {
        conversation_id: chat.into(),
        content: content.into(),
        ..Default::default()
    };
    Ok(app
        .admin()
        .await
        .publish(keyed(body, key))
        .await?
        .into_inner())
}

async fn moderate(app: &TestApp, key: &str, user: &str, action: &str, reason: &str) {
    let mut admin = app.admin().await;
    let user_id = user.to_owned();
    let done = match action {
        "ban" => admin
            .ban_user(keyed(
                pb::BanUserRequest {
                    user_id,
                    until: None,
                    reason: reason.into(),
                },
                key,
            ))
            .await
            .map(drop),
        "unban" => admin
            .unban_user(keyed(pb::UnbanUserRequest { user_id }, key))
            .await
            .map(drop),
        "disconnect" => admin
            .disconnect_user(keyed(
                pb::DisconnectUserRequest {
                    user_id,
                    reason: reason.into(),
                },
                key,
            ))
            .await
            .map(drop),
        _ => admin
            .revoke_tokens(keyed(
                pb::RevokeTokensRequest {
                    user_id,
                    issued_before: None,
                },
                key,
            ))
            .await
            .map(drop),
    };
    done.unwrap_or_else(|status| panic!("{action} failed: {status:?}"));
}

/// Keys are made by the command line and shown once; the database keeps
/// only their hash. A key opens only the Admin service and a token only
/// Messenger; a key without the scope is refused with 403, an unknown or
/// revoked one like a bad token; a key in a query string is never read.
async fn service_keys_open_the_admin_service_only_with_their_scope(db: TestDb) {
    let publisher = service_key(&db.url, "backend", "publish").await;
    let reader = service_key(&db.url, "reports", "read").await;
    assert!(publisher.starts_with("hk_") && publisher.len() > 40);
    let listed = key_command(&db.url, &["list"]).await.unwrap();
    assert!(
        listed.contains("backend\tpublish") && listed.contains("reports\tread"),
        "{listed}"
    );
    assert!(
        !listed.contains(&publisher),
        "a key is shown once, never listed"
    );
    let taken = key_command(&db.url, &["create", "backend", "--scope", "read"]).await;
    assert!(
        taken.unwrap_err().contains("exists"),
        "names are not reused"
    );
    let bad_scope = key_command(&db.url, &["create", "other", "--scope", "root"]).await;
    assert!(bad_scope.unwrap_err().contains("unknown scope"));

    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    // The database holds no key, only hashes.
    let stored: Vec<String> = stored_hashes(&db).await;
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|hash| hash.len() == 64 && !hash.contains("hk_"))
    );

    assert!(publish(&app, &publisher, &chat, "hello").await.is_ok());
    let status = publish(&app, &reader, &chat, "hello").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("publish scope"), "{status:?}");
    // A user token is no key, and a key no token; unknown keys are bad tokens.
    let as_user = publish(&app, &app.token("alice"), &chat, "hello").await;
    assert_eq!(code(as_user), Code::Unauthenticated);
    let unknown = publish(&app, &format!("hk_{}", "A".repeat(43)), &chat, "x")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(unknown.message(), herald::UNAUTHENTICATED);
    let as_key = alice
        .client()
        .create_message(authorized(
            pb::CreateMessageRequest {
                conversation_id: chat.clone(),
                content: "x".into(),
                ..Default::default()
            },
            &format!("Bearer {publisher}"),
        ))
        .await;
    assert_eq!(code(as_key), Code::Unauthenticated);

    // REST: 403 for the scope, 401 for a token, and a key in the query
    // string is not even read.
    let path = format!("/api/admin/conversations/{chat}/messages");
    let body = || Some(serde_json::json!({ "content": "over REST" }));
    let (status, answer) = call(&app, &publisher, Method::POST, &path, body()).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["system"], true);
    let (status, _) = call(&app, &reader, Method::POST, &path, body()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(&app, &app.token("alice"), Method::POST, &path, body()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let in_query = reqwest::Client::new()
        .post(app.url(&format!("{path}?token={publisher}")))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(in_query.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, &publisher, Method::GET, "/api/conversations", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a key opens no user API");

    // Two publishes done; the refused ones are not actions.
    let done = metric(
        &app.http.to_string(),
        "herald_admin_actions_total{action=\"publish\"}",
    )
    .await;
    assert_eq!(done, 2.0);
    // Revoked from the command line, with no broker: refused within 2 s.
    key_command(&db.url, &["revoke", "backend"]).await.unwrap();
    let revoked = tokio::time::Instant::now();
    let refused = eventually(|| async {
        publish(&app, &publisher, &chat, "late")
            .await
            .map_err(|s| s.code())
            == Err(Code::Unauthenticated)
    })
    .await;
    assert!(
        refused && revoked.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        revoked.elapsed()
    );
    let listed = key_command(&db.url, &["list"]).await.unwrap();
    let line = listed
        .lines()
        .find(|line| line.starts_with("backend\t"))
        .unwrap();
    assert!(
        line.ends_with(" GMT"),
        "listed with the time it was revoked: {line}"
    );
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with("reports\t") && line.ends_with("\t-"))
    );
    app.stop().await;
}

async fn stored_hashes(db: &TestDb) -> Vec<String> {
    let sql = "SELECT hash FROM service_keys";
    if db.url.starts_with("sqlite:") {
        let mut connection = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
            .await
            .unwrap();
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    }
}

/// A published message is `system`, from `system` or the named sender
/// (who need not be a participant), delivered and stored like any other;
/// what a user sends is never `system`, whatever the body says.
async fn published_messages_are_system_messages_no_user_can_fake(db: TestDb) {
    let key = service_key(&db.url, "backend", "publish,moderate").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let before = alice.send(&chat, "before the notice").await.unwrap();
    let mut stream = bob.subscribe("").await.unwrap();
    let mut events = bob.events("").await.unwrap();

    let shipped = publish(&app, &key, &chat, "your order shipped")
        .await
        .unwrap();
    assert!(shipped.system);
    assert_eq!(shipped.user_id, "system");
    assert_eq!(next_message(&mut stream).await, shipped);
    let body = pb::PublishRequest {
        conversation_id: chat.clone(),
        content: "from the shop".into(),
        sender_id: "shop-bot".into(),
        client_message_id: "order-1".into(),
    };
    let mut admin = app.admin().await;
    let bot = admin
        .publish(keyed(body.clone(), &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((bot.user_id.as_str(), bot.system), ("shop-bot", true));
    let again = admin.publish(keyed(body, &key)).await.unwrap().into_inner();
    assert_eq!(again.id, bot.id, "the idempotency key holds");
    // A user's keys are theirs: the same key and content from alice, then
    // published as from alice, are two messages.
    let mine = pb::CreateMessageRequest {
        conversation_id: chat.clone(),
        content: "same words".into(),
        client_message_id: "shared-key".into(),
        ..Default::default()
    };
    let hers = alice
        .client()
        .create_message(alice.request(mine))
        .await
        .unwrap()
        .into_inner();
    let published = pb::PublishRequest {
        conversation_id: chat.clone(),
        content: "same words".into(),
        sender_id: "alice".into(),
        client_message_id: "shared-key".into(),
    };
    let notice = admin
        .publish(keyed(published, &key))
        .await
        .unwrap()
        .into_inner();
    assert!(notice.system && notice.id != hers.id, "{notice:?}");
    assert_eq!(next_message(&mut stream).await.id, bot.id);
    assert_eq!(next_message(&mut stream).await.id, hers.id);
    assert_eq!(next_message(&mut stream).await.id, notice.id);

    let (status, sent) = call(
        &app,
        &app.token("alice"),
        Method::POST,
        &format!("/api/conversations/{chat}/messages"),
        Some(serde_json::json!({ "content": "I am the system", "system": true })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        sent["system"],
        serde_json::Value::Null,
        "false is left out of the JSON"
    );
    let history = bob.messages(page(&chat)).await.unwrap();
    let flags: Vec<(String, bool)> = history
        .iter()
        .map(|m| (m.content.clone(), m.system))
        .collect();
    assert_eq!(
        flags,
        [
            ("before the notice".to_owned(), false),
            ("your order shipped".to_owned(), true),
            ("from the shop".to_owned(), true),
            ("same words".to_owned(), false),
            ("same words".to_owned(), true),
            ("I am the system".to_owned(), false)
        ]
    );
    // Replayed from the database, still a system message.
    let mut resumed = bob.subscribe(&before.id).await.unwrap();
    let replayed = next_message(&mut resumed).await;
    assert_eq!(
        (replayed.id.as_str(), replayed.system),
        (shipped.id.as_str(), true)
    );
    // Named as its sender, alice is not its author: she cannot change it.
    let as_alice = pb::PublishRequest {
        conversation_id: chat.clone(),
        content: "signed alice, by the shop".into(),
        sender_id: "alice".into(),
        client_message_id: String::new(),
    };
    let signed = admin
        .publish(keyed(as_alice, &key))
        .await
        .unwrap()
        .into_inner();
    let edit = pb::EditMessageRequest {
        conversation_id: chat.clone(),
        message_id: signed.id.clone(),
        content: "my words now".into(),
    };
    let refused = alice
        .client()
        .edit_message(alice.request(edit))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let delete = pb::DeleteMessageRequest {
        conversation_id: chat.clone(),
        message_id: signed.id.clone(),
    };
    let refused = alice.client().delete_message(alice.request(delete)).await;
    assert_eq!(code(refused), Code::PermissionDenied);
    // A moderator's deletion of a system message keeps it one.
    let delete = pb::AdminDeleteMessageRequest {
        conversation_id: chat.clone(),
        message_id: shipped.id.clone(),
        reason: String::new(),
    };
    admin.delete_message(keyed(delete, &key)).await.unwrap();
    let deleted = loop {
        if let Some(Kind::Deleted(message)) = next_event(&mut events).await.kind {
            break message;
        }
    };
    assert_eq!(
        (deleted.id.as_str(), deleted.system, deleted.deleted),
        (shipped.id.as_str(), true, true)
    );
    // Not into a conversation that does not exist, and content rules hold.
    let missing = publish(&app, &key, herald::ConversationId::generate().as_str(), "x").await;
    assert_eq!(code(missing), Code::NotFound);
    assert_eq!(
        code(publish(&app, &key, &chat, "").await),
        Code::InvalidArgument
    );
    app.stop().await;
}

/// `manage`: a conversation on a user's behalf, and members added and
/// removed by no member and without the creator rule; a pair stays a pair.
async fn managers_change_any_group_without_the_creator_rule(db: TestDb) {
    let key = service_key(&db.url, "support", "manage").await;
    let app = spawn_app(&db).await;
    let carol = app.user("carol").await;
    let mut events = carol.events("").await.unwrap();
    let mut admin = app.admin().await;
    let created = admin
        .create_conversation(keyed(
            pb::AdminCreateConversationRequest {
                creator_id: "alice".into(),
                participant_ids: vec!["bob".into(), "carol".into()],
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.creator_id, "alice");
    assert_eq!(created.participant_ids, ["alice", "bob", "carol"]);
    let removed = admin
        .remove_participant(keyed(
            pb::RemoveParticipantRequest {
                conversation_id: created.id.clone(),
                user_id: "bob".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.participant_ids, ["alice", "carol"]);
    let path = format!("/api/admin/conversations/{}/participants", created.id);
    let (status, added) = call(
        &app,
        &key,
        Method::POST,
        &path,
        Some(serde_json::json!({ "userIds": ["dave"] })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(
        added["participantIds"],
        serde_json::json!(["alice", "carol", "dave"])
    );
    // carol hears both changes, made by the application.
    for expected in [("", "bob"), ("dave", "")] {
        match next_event(&mut events).await.kind {
            Some(Kind::Membership(change)) => {
                assert_eq!(change.actor_id, "system");
                assert_eq!(change.added_ids.concat(), expected.0);
                assert_eq!(change.removed_ids.concat(), expected.1);
            }
            other => panic!("expected a membership change, got {other:?}"),
        }
    }
    let pair = carol.create_conversation(&["erin"]).await.unwrap().id;
    let refused = admin
        .add_participants(keyed(
            pb::AddParticipantsRequest {
                conversation_id: pair,
                user_ids: vec!["frank".into()],
            },
            &key,
        ))
        .await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    app.stop().await;
}

/// `moderate`: any message deleted with the author's tombstone and
/// `delete` event, its content gone from the database itself.
async fn moderators_delete_any_message_and_its_content_leaves_the_database(db: TestDb) {
    let key = service_key(&db.url, "mods", "moderate").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let secret = "abusive-words-that-must-go-0123456789";
    let sent = alice
        .send(&chat, &format!("{}{secret}", "x".repeat(6_000)))
        .await
        .unwrap();
    for n in 0..10 {
        alice.send(&chat, &format!("filler {n}")).await.unwrap();
    }
    let mut events = bob.events("").await.unwrap();
    let path = format!(
        "/api/admin/conversations/{chat}/messages/{}?reason=abuse",
        sent.id
    );
    let (status, tombstone) = call(&app, &key, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{tombstone}");
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["userId"], "alice", "still alice's message");
    match next_event(&mut events).await.kind {
        Some(Kind::Deleted(message)) => {
            assert_eq!(message.id, sent.id);
            assert!(message.deleted && message.content.is_empty());
        }
        other => panic!("expected a delete event, got {other:?}"),
    }
    // Again: the same tombstone, no second event.
    let (status, again) = call(&app, &key, Method::DELETE, &path, None).await;
    assert_eq!(
        (status, again["id"].clone()),
        (StatusCode::OK, tombstone["id"].clone())
    );
    let after = alice.send(&chat, "after").await.unwrap();
    match next_event(&mut events).await.kind {
        Some(Kind::Message(message)) => assert_eq!(message.id, after.id, "no second delete event"),
        other => panic!("expected the next message, got {other:?}"),
    }
    // A message of another conversation is none of this one's.
    let other = alice.create_conversation(&["carol"]).await.unwrap().id;
    let elsewhere = format!("/api/admin/conversations/{other}/messages/{}", after.id);
    assert_eq!(
        call(&app, &key, Method::DELETE, &elsewhere, None).await.0,
        StatusCode::NOT_FOUND
    );
    let long = format!("{path}&reason={}", "x".repeat(1025));
    assert_eq!(
        call(&app, &key, Method::DELETE, &long, None).await.0,
        StatusCode::BAD_REQUEST
    );
    let unknown = format!("/api/admin/conversations/{chat}/messages/999999999");
    assert_eq!(
        call(&app, &key, Method::DELETE, &unknown, None).await.0,
        StatusCode::NOT_FOUND
    );
    let rows: i64 = {
        let sql = "SELECT COUNT(*) FROM messages WHERE content LIKE $1";
        let pattern = format!("%{secret}%");
        if db.url.starts_with("sqlite:") {
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::query_scalar(sql)
                .bind(pattern)
                .fetch_one(&mut c)
                .await
                .unwrap()
        } else {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::query_scalar(sql)
                .bind(pattern)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    };
    assert_eq!(rows, 0);
    if let Some(dir) = &db._dir {
        let holds = |file: &str| {
            let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
            bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes())
        };
        let erased = eventually(|| async { !holds("herald.db") && !holds("herald.db-wal") }).await;
        assert!(erased, "the file or its log still holds the content");
    }
    app.stop().await;
}

/// A ban ends the user's streams at once (SSE with a last `disconnect`
/// event, gRPC with PERMISSION_DENIED) and refuses every call, naming
/// the ban, until it is lifted.
async fn a_ban_ends_streams_and_refuses_every_call_until_lifted(db: TestDb) {
    let key = service_key(&db.url, "mods", "moderate").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let mut sse = open_sse(app.events_request(&app.token("bob"))).await;
    let mut grpc = bob.subscribe("").await.unwrap();
    let carol_chat = alice.create_conversation(&["carol"]).await.unwrap().id;
    let mut carols = app.user("carol").await.subscribe("").await.unwrap();
    app.wait_for_subscriptions(3).await;

    moderate(&app, &key, "bob", "ban", "spam").await;
    let last = sse.next_event().await.expect("a last event");
    assert_eq!(last.event, "disconnect");
    assert!(last.id.is_empty(), "no id: it moves no resume point");
    let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data["reason"], "banned: spam");
    assert!(sse.next_event().await.is_none(), "and the stream ends");
    let status = end_of(&mut grpc, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("banned: spam"), "{status:?}");

    let refused = bob.send(&chat, "still here?").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("banned"), "{refused:?}");
    let (status, answer) = call(
        &app,
        &app.token("bob"),
        Method::GET,
        "/api/conversations",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        answer["error"].as_str().unwrap().contains("spam"),
        "{answer}"
    );
    assert_eq!(code(bob.subscribe("").await), Code::PermissionDenied);
    // carol's stream goes on.
    let to_carol = alice
        .send(&carol_chat, "carol is still here")
        .await
        .unwrap();
    assert_eq!(next_message(&mut carols).await.id, to_carol.id);
    app.wait_for_subscriptions(1).await;

    // A ban that ends in the past is no ban; lifting it lets bob back.
    let path = "/api/admin/users/bob/ban";
    let past = serde_json::json!({ "until": "2020-01-01T00:00:00Z" });
    assert_eq!(
        call(&app, &key, Method::PUT, path, Some(past)).await.0,
        StatusCode::BAD_REQUEST
    );
    for reason in ["line\nbreak".to_owned(), "x".repeat(1025)] {
        let body = serde_json::json!({ "reason": reason });
        let (status, _) = call(
            &app,
            &key,
            Method::PUT,
            "/api/admin/users/dave/ban",
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let longest = serde_json::json!({ "reason": "x".repeat(1024) });
    let (status, _) = call(
        &app,
        &key,
        Method::PUT,
        "/api/admin/users/dave/ban",
        Some(longest),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        call(&app, &key, Method::DELETE, path, None).await.0,
        StatusCode::NO_CONTENT
    );
    bob.send(&chat, "back").await.unwrap();
    // A timed ban ends by itself.
    let until = serde_json::json!({ "until": rfc3339(now_seconds() + 2), "reason": "cool down" });
    assert_eq!(
        call(&app, &key, Method::PUT, path, Some(until)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(code(bob.send(&chat, "now?").await), Code::PermissionDenied);
    assert!(eventually(|| async { bob.send(&chat, "later").await.is_ok() }).await);
    // Counted by action, refusals not: bob twice, dave once; one unban.
    let http = app.http.to_string();
    assert_eq!(
        metric(&http, "herald_admin_actions_total{action=\"ban\"}").await,
        3.0
    );
    assert_eq!(
        metric(&http, "herald_admin_actions_total{action=\"unban\"}").await,
        1.0
    );
    app.stop().await;
}

fn rfc3339(seconds: u64) -> String {
    herald::pb::Timestamp {
        seconds: seconds as i64,
        nanos: 0,
    }
    .to_rfc3339()
}

/// A revocation refuses the user's tokens issued before it (and those
/// that do not say when) and ends the streams they opened; newer tokens
/// work. A disconnection ends streams only.
async fn revocation_and_disconnection_end_streams_and_newer_tokens_work(db: TestDb) {
    let key = service_key(&db.url, "mods", "moderate").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let old = token_issued_at("bob", Some(now_seconds() - 60));
    let no_iat = token_issued_at("bob", None);
    let mut old_sse = open_sse(app.sse_request(&old)).await;
    let old_user = User::with_token(&app, old.clone()).await;
    let mut old_grpc = old_user.subscribe("").await.unwrap();
    // Issued "later" than the revocation to come (within the leeway for
    // a clock ahead): its stream must survive it.
    let fresh = User::with_token(&app, token_issued_at("bob", Some(now_seconds() + 4))).await;
    // Issued by herald just before the revocation, in the same second.
    let same_second = User::with_token(&app, app.token("bob")).await;
    let mut fresh_grpc = fresh.subscribe("").await.unwrap();
    app.wait_for_subscriptions(3).await;
    // A stream ticket carries the time its session was issued.
    let ticket = |token: String| {
        let app = &app;
        async move {
            let (status, issued) =
                call(app, &token, Method::POST, "/api/stream-tickets", None).await;
            assert_eq!(status, StatusCode::CREATED);
            issued["ticket"].as_str().unwrap().to_owned()
        }
    };
    let old_ticket = ticket(old.clone()).await;

    moderate(&app, &key, "bob", "revoke", "").await;
    assert_eq!(
        code(same_second.send(&chat, "x").await),
        Code::Unauthenticated,
        "revoked though issued this second"
    );
    let far_future =
        User::with_token(&app, token_issued_at("bob", Some(now_seconds() + 100))).await;
    assert_eq!(
        code(far_future.send(&chat, "x").await),
        Code::Unauthenticated,
        "issued in the future"
    );
    let last = old_sse.next_event().await.expect("a last event");
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("disconnect", r#"{"reason":"token revoked"}"#)
    );
    assert_eq!(
        end_of(&mut old_grpc, Duration::from_secs(5)).await.code(),
        Code::Unauthenticated
    );
    let refused = old_user.send(&chat, "x").await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::Unauthenticated, herald::UNAUTHENTICATED)
    );
    assert_eq!(
        code(User::with_token(&app, no_iat).await.send(&chat, "x").await),
        Code::Unauthenticated
    );
    let sent = fresh.send(&chat, "new token, new session").await.unwrap();
    assert_eq!(
        next_message(&mut fresh_grpc).await.id,
        sent.id,
        "a newer token's stream goes on"
    );
    let opened = |ticket: String| {
        let url = app.url(&format!("/api/messages?token={ticket}"));
        reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .send()
    };
    assert_eq!(
        opened(old_ticket).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh_ticket = ticket(token_issued_at("bob", Some(now_seconds() + 1))).await;
    assert_eq!(opened(fresh_ticket).await.unwrap().status(), StatusCode::OK);

    drop(fresh_grpc);
    app.wait_for_subscriptions(0).await;
    let mut sse = open_sse(app.events_request(&app.token("alice"))).await;
    let mut grpc = alice.subscribe("").await.unwrap();
    app.wait_for_subscriptions(2).await;
    let (status, _) = call(
        &app,
        &key,
        Method::POST,
        "/api/admin/users/alice/disconnect",
        Some(serde_json::json!({ "reason": "maintenance" })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let last = sse.next_event().await.expect("a last event");
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("disconnect", r#"{"reason":"disconnected: maintenance"}"#)
    );
    let status = end_of(&mut grpc, Duration::from_secs(5)).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "disconnected: maintenance")
    );
    // She may come back at once.
    alice.send(&chat, "still welcome").await.unwrap();
    let mut again = alice.subscribe("").await.unwrap();
    fresh.send(&chat, "hello again").await.unwrap();
    assert_eq!(next_message(&mut again).await.content, "hello again");
    app.stop().await;
}

/// `read`: any conversation's whole history, by page, and anyone's
/// presence, with no membership.
async fn readers_see_any_history_and_anyones_presence(db: TestDb) {
    let key = service_key(&db.url, "analytics", "read").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice
        .create_conversation(&["bob", "carol"])
        .await
        .unwrap()
        .id;
    for n in 1..=5 {
        alice.send(&chat, &format!("m{n}")).await.unwrap();
    }
    alice.remove(&chat, "carol").await.unwrap();
    let _online = alice.subscribe("").await.unwrap();
    app.wait_for_subscriptions(1).await;
    let mut admin = app.admin().await;
    let newest = admin
        .list_messages(keyed(
            pb::ListMessagesRequest {
                page_size: 2,
                ..page(&chat)
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(crate::support::contents(&newest), ["m4", "m5"]);
    let older = admin
        .list_messages(keyed(
            pb::ListMessagesRequest {
                page_size: 10,
                before_id: newest[0].id.clone(),
                ..page(&chat)
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(crate::support::contents(&older), ["m1", "m2", "m3"]);
    let unknown = admin
        .list_messages(keyed(
            page(herald::ConversationId::generate().as_str()),
            &key,
        ))
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let (status, presence) = call(
        &app,
        &key,
        Method::GET,
        "/api/admin/presence?userIds=alice,zed",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(presence["presences"][0]["userId"], "alice");
    assert_eq!(presence["presences"][0]["online"], true);
    assert_eq!(presence["presences"][1]["userId"], "zed");
    // read is not moderate.
    let ban = admin
        .ban_user(keyed(
            pb::BanUserRequest {
                user_id: "bob".into(),
                ..Default::default()
            },
            &key,
        ))
        .await;
    assert_eq!(code(ban), Code::PermissionDenied);
    app.stop().await;
}

on_every_backend!(
    service_keys_open_the_admin_service_only_with_their_scope,
    published_messages_are_system_messages_no_user_can_fake,
    managers_change_any_group_without_the_creator_rule,
    moderators_delete_any_message_and_its_content_leaves_the_database,
    a_ban_ends_streams_and_refuses_every_call_until_lifted,
    revocation_and_disconnection_end_streams_and_newer_tokens_work,
    readers_see_any_history_and_anyones_presence,
    every_operation_needs_its_scope,
);

/// Each key is metered on its own: one key over its rate is refused
/// (RESOURCE_EXHAUSTED) while another key goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_key_is_metered_on_its_own() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let busy = service_key(&db.url, "busy", "publish").await;
    let calm = service_key(&db.url, "calm", "publish").await;
    let app = crate::support::spawn_app_with(&db, |config| {
        config.rate_limit = 0.01;
        config.rate_burst = 2.0;
    })
    .await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    for n in 0..2 {
        publish(&app, &busy, &chat, &format!("notice {n}"))
            .await
            .unwrap();
    }
    let over = publish(&app, &busy, &chat, "one too many").await;
    assert_eq!(code(over), Code::ResourceExhausted);
    publish(&app, &calm, &chat, "another key's").await.unwrap();
    app.stop().await;
}

/// A ban of a user with thousands of open streams on a node ends them all
/// within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ends_thousands_of_streams_at_once() {
    let db = TestDb::new(crate::support::Backend::Sqlite).await.unwrap();
    let key = service_key(&db.url, "mods", "moderate").await;
    let app = crate::support::spawn_app_with(&db, |config| {
        config.max_subscriptions_per_user = 3_000;
    })
    .await;
    let bearer = format!("Bearer {}", app.token("bob"));
    let mut streams = Vec::new();
    // Nine connections: each takes at most its HTTP/2 stream limit (256).
    for _ in 0..9 {
        let mut client = pb::messenger_client::MessengerClient::new(app.channel().await);
        for _ in 0..240 {
            let request = authorized(pb::SubscribeMessagesRequest::default(), &bearer);
            streams.push(
                client
                    .subscribe_messages(request)
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
    }
    app.wait_for_subscriptions(2_160).await;
    let started = tokio::time::Instant::now();
    moderate(&app, &key, "bob", "ban", "flood").await;
    for stream in &mut streams {
        assert_eq!(
            end_of(stream, Duration::from_secs(5)).await.code(),
            Code::PermissionDenied
        );
    }
    let took = started.elapsed();
    eprintln!("a ban ended 2,160 streams in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    app.wait_for_subscriptions(0).await;
    app.stop().await;
}

/// Every Admin operation needs its one scope: a key with only that scope
/// may, a key with every other scope (but `admin`) may not, and is told
/// which scope it lacks.
async fn every_operation_needs_its_scope(db: TestDb) {
    let scopes = ["publish", "manage", "moderate", "read"];
    let mut only = Vec::new();
    let mut all_but = Vec::new();
    for scope in scopes {
        only.push(service_key(&db.url, &format!("only-{scope}"), scope).await);
        let others: Vec<&str> = scopes.iter().copied().filter(|s| *s != scope).collect();
        all_but.push(service_key(&db.url, &format!("not-{scope}"), &others.join(",")).await);
    }
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let group = alice
        .create_conversation(&["bob", "carol"])
        .await
        .unwrap()
        .id;
    let sent = alice.send(&chat, "to delete").await.unwrap();
    // (scope, method, path, body, the status it answers when allowed)
    let operations = [
        (
            "publish",
            Method::POST,
            format!("/api/admin/conversations/{chat}/messages"),
            Some(serde_json::json!({ "content": "x" })),
            StatusCode::CREATED,
        ),
        (
            "manage",
            Method::POST,
            "/api/admin/conversations".to_owned(),
            Some(serde_json::json!({ "creatorId": "alice", "participantIds": ["bob", "erin"] })),
            StatusCode::CREATED,
        ),
        (
            "manage",
            Method::POST,
            format!("/api/admin/conversations/{group}/participants"),
            Some(serde_json::json!({ "userIds": ["dave"] })),
            StatusCode::OK,
        ),
        (
            "manage",
            Method::DELETE,
            format!("/api/admin/conversations/{group}/participants/dave"),
            None,
            StatusCode::OK,
        ),
        (
            "moderate",
            Method::DELETE,
            format!("/api/admin/conversations/{chat}/messages/{}", sent.id),
            None,
            StatusCode::OK,
        ),
        (
            "moderate",
            Method::PUT,
            "/api/admin/users/zed/ban".to_owned(),
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            "moderate",
            Method::DELETE,
            "/api/admin/users/zed/ban".to_owned(),
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            "moderate",
            Method::POST,
            "/api/admin/users/zed/disconnect".to_owned(),
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            "moderate",
            Method::POST,
            "/api/admin/users/zed/revoke".to_owned(),
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            "read",
            Method::GET,
            format!("/api/admin/conversations/{chat}/messages"),
            None,
            StatusCode::OK,
        ),
        (
            "read",
            Method::GET,
            "/api/admin/presence?userIds=alice".to_owned(),
            None,
            StatusCode::OK,
        ),
    ];
    for (scope, method, path, body, allowed) in operations {
        let at = scopes.iter().position(|s| *s == scope).unwrap();
        let (status, answer) = call(&app, &all_but[at], method.clone(), &path, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} without {scope}"
        );
        let error = answer["error"].as_str().unwrap();
        assert_eq!(error, format!("this service key lacks the {scope} scope"));
        let (status, answer) = call(&app, &only[at], method.clone(), &path, body).await;
        assert_eq!(status, allowed, "{method} {path} with {scope}: {answer}");
    }
    app.stop().await;
}
