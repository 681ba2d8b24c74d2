//! The firehose for the application's backend: every stored event of every
//! conversation, in position order, exactly once; resumable from any id;
//! filtered by kind; never dropped for being slow. On both doors and both
//! backends.

use crate::support::{
    TestApp, TestDb, authorized, call, open_sse, service_key, spawn_app, spawn_app_with,
};
use herald::pb::{self, event::Kind};
use reqwest::{Method, StatusCode};
use tonic::{Code, Streaming};

fn keyed<T>(body: T, key: &str) -> tonic::Request<T> {
    authorized(body, &format!("Bearer {key}"))
}

async fn firehose(
    app: &TestApp,
    key: &str,
    after_id: &str,
    kinds: &[&str],
) -> Result<Streaming<pb::Event>, tonic::Status> {
    let body = pb::SubscribeAllRequest {
        after_id: after_id.into(),
        kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
    };
    Ok(app
        .admin()
        .await
        .subscribe_all(keyed(body, key))
        .await?
        .into_inner())
}

/// Reads `stream` up to and including event `last`; returns each event's
/// id and kind, in order.
async fn read_until(stream: &mut Streaming<pb::Event>, last: &str) -> Vec<(String, &'static str)> {
    let mut seen = Vec::new();
    loop {
        let event = crate::support::next_event(stream).await;
        let kind = match event.kind {
            Some(Kind::Message(_)) => "message",
            Some(Kind::Edited(_)) => "edit",
            Some(Kind::Deleted(_)) => "delete",
            Some(Kind::Reaction(_)) => "reaction",
            Some(Kind::Read(_)) => "read",
            Some(Kind::Membership(_)) => "membership",
            other => panic!("not a stored event: {other:?}"),
        };
        let done = event.id == last;
        seen.push((event.id, kind));
        if done {
            return seen;
        }
    }
}

/// Four writers send, edit, react, read and change a group's members
/// while a firehose reads live: it equals a firehose read afterwards from
/// the start, id for id, in increasing order, and its messages are every
/// conversation's history; resumed from the middle it gives exactly the
/// rest; `kinds` keeps exactly those kinds.
async fn the_firehose_is_every_event_once_in_order_and_resumes_exactly(db: TestDb) {
    let key = service_key(&db.url, "indexer", "read").await;
    let app = spawn_app(&db).await;
    let mut live = firehose(&app, &key, "", &[]).await.unwrap();
    let alice = app.user("alice").await;
    let group = alice
        .create_conversation(&["bob", "carol", "dave"])
        .await
        .unwrap()
        .id;
    let mut writers = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let user = app.user(name).await;
        let group = group.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..25 {
                let sent = user.send(&group, &format!("{name} {n}")).await.unwrap();
                if n % 5 == 0 {
                    let edit = pb::EditMessageRequest {
                        conversation_id: group.clone(),
                        message_id: sent.id.clone(),
                        content: format!("{name} {n} (edited)"),
                    };
                    user.client()
                        .edit_message(user.request(edit))
                        .await
                        .unwrap();
                    let react = pb::ReactRequest {
                        conversation_id: group.clone(),
                        message_id: sent.id.clone(),
                        emoji: "👍".into(),
                    };
                    user.client().react(user.request(react)).await.unwrap();
                    user.mark_read(&group, &sent.id).await.unwrap();
                }
            }
        }));
    }
    for round in 0..3 {
        let guest = format!("guest-{round}");
        alice.add(&group, &[guest.as_str()]).await.unwrap();
        alice.remove(&group, &guest).await.unwrap();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let pair = alice.create_conversation(&["erin"]).await.unwrap().id;
    let last = alice.send(&pair, "the end").await.unwrap().id;

    let read_live = read_until(&mut live, &last).await;
    let mut from_start = firehose(&app, &key, "", &[]).await.unwrap();
    let stored = read_until(&mut from_start, &last).await;
    assert_eq!(read_live, stored, "live is what is stored, once, in order");
    let positions: Vec<i64> = stored.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
    for kind in ["message", "edit", "reaction", "read", "membership"] {
        assert!(stored.iter().any(|(_, k)| *k == kind), "no {kind} event");
    }
    // Its messages are the histories of both conversations, id for id.
    let mut history = Vec::new();
    for chat in [&group, &pair] {
        let body = pb::ListMessagesRequest {
            conversation_id: chat.to_string(),
            page_size: 500,
            ..Default::default()
        };
        let page = app
            .admin()
            .await
            .list_messages(keyed(body, &key))
            .await
            .unwrap();
        history.extend(page.into_inner().messages.into_iter().map(|m| m.id));
    }
    history.sort_by_key(|id| id.parse::<i64>().unwrap());
    let messages: Vec<String> = stored
        .iter()
        .filter(|(_, kind)| *kind == "message")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(messages, history);

    let middle = stored.len() / 2;
    let mut resumed = firehose(&app, &key, &stored[middle].0, &[]).await.unwrap();
    assert_eq!(read_until(&mut resumed, &last).await, stored[middle + 1..]);
    let mut edits_and_membership = firehose(&app, &key, "", &["edit", "membership"])
        .await
        .unwrap();
    let wanted: Vec<(String, &str)> = stored
        .iter()
        .filter(|(_, kind)| ["edit", "membership"].contains(kind))
        .cloned()
        .collect();
    let last_wanted = &wanted.last().unwrap().0;
    assert_eq!(
        read_until(&mut edits_and_membership, last_wanted).await,
        wanted
    );
    app.stop().await;
}

/// A reader that reads nothing while far more events than a stream's
/// queue holds are committed is not dropped: it then reads every one.
async fn a_slow_firehose_reader_is_never_dropped(db: TestDb) {
    let key = service_key(&db.url, "slow", "read").await;
    let app = spawn_app_with(&db, |config| config.subscription_queue = 16).await;
    let mut slow = firehose(&app, &key, "", &["message"]).await.unwrap();
    let alice = app.user("alice").await;
    let chat = alice.create_conversation(&["bob"]).await.unwrap().id;
    let sent = alice.send_bulky(&chat, 300).await;
    let read = read_until(&mut slow, sent.last().unwrap()).await;
    assert_eq!(read.len(), 300);
    app.stop().await;
}

/// `GET /api/admin/events`: the same events as Server-Sent Events, named as
/// on `/api/events`, resumed after `Last-Event-ID`, filtered by `kinds`;
/// refused without the `read` scope, to a token, and without the
/// EventSource `Accept`.
async fn the_firehose_over_sse(db: TestDb) {
    let key = service_key(&db.url, "indexer", "read").await;
    let publisher = service_key(&db.url, "shop", "publish").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let group = alice
        .create_conversation(&["bob", "carol"])
        .await
        .unwrap()
        .id;
    let first = alice.send(&group, "one").await.unwrap();
    alice.remove(&group, "carol").await.unwrap();
    let second = alice.send(&group, "two").await.unwrap();
    let request = reqwest::Client::new()
        .get(app.url("/api/admin/events?kinds=message,membership"))
        .header("accept", "text/event-stream")
        .header("last-event-id", &first.id)
        .bearer_auth(&key);
    let mut events = open_sse(request).await;
    let membership = events.next_event().await.unwrap();
    assert_eq!(membership.event, "membership");
    let change: serde_json::Value = serde_json::from_str(&membership.data).unwrap();
    assert_eq!(change["removedIds"], serde_json::json!(["carol"]));
    assert_eq!(events.next_message().await.id, second.id);
    let third = alice.send(&group, "three").await.unwrap();
    assert_eq!(events.next_message().await.id, third.id, "then live");

    let path = "/api/admin/events";
    let sse = |bearer: &str| {
        reqwest::Client::new()
            .get(app.url(path))
            .header("accept", "text/event-stream")
            .bearer_auth(bearer)
            .send()
    };
    assert_eq!(
        sse(&publisher).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        sse(&app.token("alice")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = call(&app, &key, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);
    let typing = firehose(&app, &key, "", &["typing"]).await;
    assert_eq!(crate::support::code(typing), Code::InvalidArgument);
    let bad = firehose(&app, &key, "not-an-id", &[]).await;
    assert_eq!(crate::support::code(bad), Code::InvalidArgument);
    // An id past the newest event would skip whatever comes up to it.
    let ahead = (third.id.parse::<i64>().unwrap() + 1000).to_string();
    let future = firehose(&app, &key, &ahead, &[]).await;
    assert_eq!(crate::support::code(future), Code::OutOfRange);
    let request = reqwest::Client::new()
        .get(app.url(path))
        .header("accept", "text/event-stream")
        .header("last-event-id", &ahead)
        .bearer_auth(&key);
    assert_eq!(
        request.send().await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    app.stop().await;
}

/// A message on the firehose lists the participants with no open stream
/// when it was sent (on gRPC, and in the SSE data): whom to push to.
async fn a_message_names_its_offline_recipients(db: TestDb) {
    let key = service_key(&db.url, "push", "read").await;
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let group = alice
        .create_conversation(&["bob", "carol"])
        .await
        .unwrap()
        .id;
    let _online = app.user("bob").await.subscribe("").await.unwrap();
    app.wait_for_subscriptions(1).await;
    let sent = alice.send(&group, "who is here?").await.unwrap();
    let mut hose = firehose(&app, &key, "", &["message"]).await.unwrap();
    let event = crate::support::next_event(&mut hose).await;
    assert_eq!(event.id, sent.id);
    assert_eq!(
        event.offline_recipients,
        ["alice", "carol"],
        "bob has a stream open"
    );
    let request = reqwest::Client::new()
        .get(app.url("/api/admin/events?kinds=message"))
        .header("accept", "text/event-stream")
        .bearer_auth(&key);
    let mut events = open_sse(request).await;
    let first = events.next_event().await.unwrap();
    let data: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["id"], sent.id.as_str());
    assert_eq!(
        data["offlineRecipients"],
        serde_json::json!(["alice", "carol"])
    );
    app.stop().await;
}

/// One key holds at most 16 firehose streams on a node, on both doors
/// together (each is a task and a reader of the database); another key is
/// not affected, and a stream that ends gives its place back.
async fn a_key_holds_at_most_sixteen_firehoses(db: TestDb) {
    let key = service_key(&db.url, "greedy", "read").await;
    let other = service_key(&db.url, "other", "read").await;
    let app = spawn_app(&db).await;
    let mut open = Vec::new();
    for _ in 0..15 {
        open.push(firehose(&app, &key, "", &[]).await.unwrap());
    }
    let sse = || {
        reqwest::Client::new()
            .get(app.url("/api/admin/events"))
            .header("accept", "text/event-stream")
            .bearer_auth(&key)
            .send()
    };
    let sixteenth = sse().await.unwrap();
    assert_eq!(sixteenth.status(), StatusCode::OK);
    let refused = firehose(&app, &key, "", &[]).await;
    assert_eq!(crate::support::code(refused), Code::ResourceExhausted);
    assert_eq!(sse().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(firehose(&app, &other, "", &[]).await.is_ok(), "per key");
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match firehose(&app, &key, "", &[]).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status}"),
        }
    }
    drop(sixteenth);
    app.stop().await;
}

on_every_backend!(
    a_key_holds_at_most_sixteen_firehoses,
    a_message_names_its_offline_recipients,
    the_firehose_is_every_event_once_in_order_and_resumes_exactly,
    a_slow_firehose_reader_is_never_dropped,
    the_firehose_over_sse,
);
