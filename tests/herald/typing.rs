//! Typing: a signal to the conversation's other participants, on their
//! event streams only, at most one per user and conversation every 2 s,
//! never stored and never replayed.

use crate::support::{TestDb, code, next_event, next_message, spawn_app};
use herald::pb::{self, event::Kind};
use tonic::Code;

on_every_backend!(
    typing_reaches_the_others_once_per_window_and_is_never_replayed,
    typing_is_relayed_again_after_the_window_and_never_after_a_removal,
);

async fn typing_reaches_the_others_once_per_window_and_is_never_replayed(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob, carol, mallory) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
        app.user("mallory").await,
    );
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut alices = alice.events("").await.unwrap();
    let mut bobs = bob.events("").await.unwrap();
    let mut carols_messages = carol.subscribe("").await.unwrap();
    let mut carols_sse = app
        .events_request(&app.token("carol"))
        .send()
        .await
        .unwrap();
    let before = alice.send(&group.id, "before").await.unwrap();
    for stream in [&mut alices, &mut bobs] {
        assert_eq!(next_event(stream).await.id, before.id);
    }
    assert_eq!(next_message(&mut carols_messages).await.id, before.id);

    // Three calls within the window: one signal, over gRPC and REST alike.
    let typing = |user: &crate::support::User| {
        let body = pb::SetTypingRequest {
            conversation_id: group.id.clone(),
        };
        let request = user.request(body);
        let mut client = user.client();
        async move { client.set_typing(request).await.map(|_| ()) }
    };
    typing(&alice).await.unwrap();
    typing(&alice).await.unwrap();
    let rest = reqwest::Client::new()
        .post(app.url(&format!("/api/conversations/{}/typing", group.id)))
        .bearer_auth(app.token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 204);
    let after = alice.send(&group.id, "after").await.unwrap();

    let signal = next_event(&mut bobs).await;
    assert_eq!(signal.id, "", "a signal has no position");
    let Some(Kind::Typing(typing_event)) = &signal.kind else {
        panic!("expected typing, got {signal:?}");
    };
    assert_eq!(
        (
            typing_event.conversation_id.as_str(),
            typing_event.user_id.as_str()
        ),
        (group.id.as_str(), "alice")
    );
    assert_eq!(
        next_event(&mut bobs).await.id,
        after.id,
        "coalesced: one signal"
    );
    // Not the sender's own streams, not message streams.
    assert_eq!(next_event(&mut alices).await.id, after.id);
    assert_eq!(next_message(&mut carols_messages).await.id, after.id);
    // SSE, as sent: a named event without an id line, so the client's
    // resume point stays on the message before it.
    let mut text = String::new();
    while !text.contains(&format!("id: {}\n", after.id)) {
        let chunk = tokio::time::timeout(crate::support::PATIENCE, carols_sse.chunk())
            .await
            .expect("SSE bytes in time")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Presence (alice's and bob's streams opened) is tested on its own.
    let blocks: Vec<&str> = text
        .split("\n\n")
        .filter(|b| b.contains("data:") && !b.starts_with("event: presence"))
        .collect();
    assert_eq!(blocks.len(), 3, "{text}");
    assert!(
        blocks[0].starts_with(&format!("id: {}\n", before.id)),
        "{text}"
    );
    let Some(json) = blocks[1].strip_prefix("event: typing\ndata: ") else {
        panic!("expected a typing event without an id: {text}");
    };
    let data: pb::Typing = serde_json::from_str(json).unwrap();
    assert_eq!(data.user_id, "alice");
    assert!(
        blocks[2].starts_with(&format!("id: {}\n", after.id)),
        "{text}"
    );

    // Never replayed: resuming from before the signal finds the message only.
    let mut resumed = bob.events(&before.id).await.unwrap();
    assert_eq!(next_event(&mut resumed).await.id, after.id);

    // Only participants type; a conversation that does not exist is not found.
    assert_eq!(code(typing(&mallory).await), Code::PermissionDenied);
    let nowhere = pb::SetTypingRequest {
        conversation_id: "0123456789abcdef0123456789abcdef".into(),
    };
    assert_eq!(
        code(alice.client().set_typing(alice.request(nowhere)).await),
        Code::NotFound
    );
}

/// The window ends: a user still typing after it is relayed again. And a
/// removal ends typing at once: the node's cache of who is in the group is
/// dropped when the change is delivered.
async fn typing_is_relayed_again_after_the_window_and_never_after_a_removal(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut alices = alice.events("").await.unwrap();
    let typing = || {
        let body = pb::SetTypingRequest {
            conversation_id: group.id.clone(),
        };
        let request = bob.request(body);
        let mut client = bob.client();
        async move { client.set_typing(request).await }
    };
    typing().await.unwrap();
    assert!(matches!(
        next_event(&mut alices).await.kind,
        Some(Kind::Typing(_))
    ));
    tokio::time::sleep(herald_typing_window() + std::time::Duration::from_millis(200)).await;
    typing().await.unwrap();
    let again = next_event(&mut alices).await;
    assert!(
        matches!(again.kind, Some(Kind::Typing(_))),
        "relayed again: {again:?}"
    );
    // alice removes bob; once the change reached her stream, the node has
    // delivered it, and bob's typing is refused.
    alice.remove(&group.id, "bob").await.unwrap();
    let change = next_event(&mut alices).await;
    assert!(
        matches!(change.kind, Some(Kind::Membership(_))),
        "{change:?}"
    );
    assert_eq!(code(typing().await), Code::PermissionDenied);
    app.stop().await;
}

/// The typing window (`signals::TYPING_EVERY`): 2 s.
fn herald_typing_window() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}
