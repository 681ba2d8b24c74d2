//! Live delivery: who receives what, in which order, and resuming.

use crate::support::{
    PATIENCE, TestDb, code, contents, end_of, next_contents, next_message, numbered, page,
    spawn_app, spawn_app_with,
};
use herald::pb;
use std::time::Duration;
use tonic::Code;

async fn every_participant_receives_on_every_subscription_including_the_senders_other_one(
    db: TestDb,
) {
    let app = spawn_app(&db).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut alice_phone = alice.subscribe("").await.unwrap();
    let mut alice_laptop = alice.subscribe("").await.unwrap();
    let mut bobs = bob.subscribe("").await.unwrap();
    let mut carols = carol.subscribe("").await.unwrap();

    let sent = alice.send(&conversation.id, "hello").await.unwrap();

    assert_eq!(next_message(&mut alice_phone).await, sent);
    assert_eq!(next_message(&mut alice_laptop).await, sent);
    assert_eq!(next_message(&mut bobs).await, sent);
    // Carol is not a participant: the first thing she gets is her own message.
    let hers = carol.create_conversation(&["dave"]).await.unwrap();
    let for_carol = carol.send(&hers.id, "carol's").await.unwrap();
    assert_eq!(next_message(&mut carols).await, for_carol);
}

async fn a_group_message_reaches_every_member(db: TestDb) {
    let app = spawn_app(&db).await;
    let members = ["alice", "bob", "carol", "dave"];
    let mut users = Vec::new();
    for member in members {
        users.push(app.user(member).await);
    }
    let group = users[0].create_conversation(&members[1..]).await.unwrap();
    let mut streams = Vec::new();
    for user in &users {
        streams.push(user.subscribe("").await.unwrap());
    }

    let sent = users[2].send(&group.id, "hello, group").await.unwrap();

    for stream in &mut streams {
        assert_eq!(next_message(stream).await, sent);
    }
}

async fn concurrent_writers_are_delivered_once_in_the_order_history_shows(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let group = alice.create_conversation(&["bob", "carol"]).await.unwrap();
    let mut carols = app.user("carol").await.subscribe("").await.unwrap();

    async fn write(user: &crate::support::User, conversation_id: &str, prefix: &str) {
        for content in numbered(prefix, 1..=60) {
            user.send(conversation_id, &content).await.unwrap();
        }
    }
    tokio::join!(write(&alice, &group.id, "a"), write(&bob, &group.id, "b"));

    let received = next_contents(&mut carols, 120).await;
    let history = alice
        .messages(pb::ListMessagesRequest {
            page_size: 500,
            ..page(&group.id)
        })
        .await
        .unwrap();
    assert_eq!(received, contents(&history));
    let from_alice: Vec<&String> = received.iter().filter(|c| c.starts_with("a-")).collect();
    assert_eq!(from_alice, numbered("a", 1..=60).iter().collect::<Vec<_>>());
}

async fn resuming_after_an_id_replays_what_was_missed_then_goes_live(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut first = bob.subscribe("").await.unwrap();
    alice.send(&conversation.id, "m-1").await.unwrap();
    let seen = next_message(&mut first).await;
    drop(first);

    for content in numbered("m", 2..=5) {
        alice.send(&conversation.id, &content).await.unwrap();
    }
    let mut resumed = bob.subscribe(&seen.id).await.unwrap();
    alice.send(&conversation.id, "m-6").await.unwrap();

    assert_eq!(next_contents(&mut resumed, 5).await, numbered("m", 2..=6));
    alice.send(&conversation.id, "m-7").await.unwrap();
    assert_eq!(next_message(&mut resumed).await.content, "m-7");
}

async fn resuming_from_an_unknown_or_foreign_id_is_out_of_range(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let private = alice.create_conversation(&["carol"]).await.unwrap();
    let not_bobs = alice.send(&private.id, "not for bob").await.unwrap();

    assert_eq!(code(bob.subscribe("424242").await), Code::OutOfRange);
    assert_eq!(code(bob.subscribe("no-such-id").await), Code::OutOfRange);
    assert_eq!(code(bob.subscribe(&not_bobs.id).await), Code::OutOfRange);
    assert_eq!(
        code(bob.subscribe("bad\u{0}id").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(bob.subscribe(&"9".repeat(129)).await),
        Code::InvalidArgument
    );
}

async fn a_replay_longer_than_the_limit_is_out_of_range(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.replay_limit = 3).await;
    let alice = app.user("alice").await;
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let start = alice.send(&conversation.id, "start").await.unwrap();
    for content in numbered("m", 1..=3) {
        alice.send(&conversation.id, &content).await.unwrap();
    }

    let mut within = alice.subscribe(&start.id).await.unwrap();
    assert_eq!(next_contents(&mut within, 3).await, numbered("m", 1..=3));

    alice.send(&conversation.id, "m-4").await.unwrap();
    assert_eq!(
        alice.subscribe(&start.id).await.unwrap_err().code(),
        Code::OutOfRange
    );
}

async fn a_subscriber_that_falls_behind_is_ended_and_loses_nothing_on_resume(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.subscription_queue = 2).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut stalled = bob.subscribe("").await.unwrap();

    // More than HTTP/2 flow control and socket buffers hold, so the
    // subscription's own small queue fills while bob does not read.
    let sent = alice.send_bulky(&conversation.id, 400).await;

    let mut received = Vec::new();
    let ended = loop {
        match tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .expect("the stream moves")
        {
            Ok(Some(message)) => received.push(message.id),
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(received.len() < sent.len(), "bob fell behind");
    assert_eq!(app.herald.hub().lagged_total(), 1, "bob's one stream, once");

    let mut resumed = bob
        .subscribe(received.last().expect("some arrived"))
        .await
        .unwrap();
    for _ in received.len()..sent.len() {
        received.push(next_message(&mut resumed).await.id);
    }
    assert_eq!(received, sent);
}

async fn a_closed_subscription_leaves_no_registry_entry(db: TestDb) {
    let app = spawn_app(&db).await;
    let bob = app.user("bob").await;
    let stream = bob.subscribe("").await.unwrap();
    assert_eq!(app.herald.hub().subscription_count(), 1);

    drop(stream);

    app.wait_for_subscriptions(0).await;
}

async fn a_user_cannot_open_more_streams_than_the_limit(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.max_subscriptions_per_user = 2).await;
    let bob = app.user("bob").await;
    let _first = bob.subscribe("").await.unwrap();
    let _second = bob.subscribe("").await.unwrap();

    assert_eq!(
        bob.subscribe("").await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert!(app.user("carol").await.subscribe("").await.is_ok());
}

async fn a_stream_ends_when_its_token_expires(db: TestDb) {
    let app = spawn_app(&db).await;
    let minted = std::time::Instant::now();
    let token = app.token_for("bob", Duration::from_secs(1));
    let bob = crate::support::User::with_token(&app, token).await;
    let mut stream = bob.subscribe("").await.unwrap();

    let status = end_of(&mut stream, Duration::from_secs(20)).await;

    assert_eq!(status.code(), Code::Unauthenticated);
    // At `exp` (whole seconds, after minting) plus the 5 s leeway.
    assert!(
        minted.elapsed() >= Duration::from_secs(5),
        "{:?}",
        minted.elapsed()
    );
}

/// A local commit is delivered by the committer itself when the feed is
/// idle and knows the recipients (here: sends one at a time, after the
/// conversation's creation told the feed its members), and the stream sees
/// every message once, in order.
async fn local_commits_take_the_short_path_when_the_feed_is_idle(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let mut bobs = app.user("bob").await.subscribe("").await.unwrap();
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let contents = numbered("m", 1..=20);
    for content in &contents {
        alice.send(&chat.id, content).await.unwrap();
    }
    assert_eq!(next_contents(&mut bobs, 20).await, contents);
    let inline =
        crate::support::metric(&app.http.to_string(), "herald_feed_inline_messages_total").await;
    assert!(inline >= 1.0, "no commit took the short path");
}

on_every_backend!(
    local_commits_take_the_short_path_when_the_feed_is_idle,
    an_acknowledged_message_is_already_queued_for_every_live_subscription,
    every_participant_receives_on_every_subscription_including_the_senders_other_one,
    a_group_message_reaches_every_member,
    concurrent_writers_are_delivered_once_in_the_order_history_shows,
    resuming_after_an_id_replays_what_was_missed_then_goes_live,
    resuming_from_an_unknown_or_foreign_id_is_out_of_range,
    a_replay_longer_than_the_limit_is_out_of_range,
    a_subscriber_that_falls_behind_is_ended_and_loses_nothing_on_resume,
    a_closed_subscription_leaves_no_registry_entry,
    a_user_cannot_open_more_streams_than_the_limit,
    a_stream_ends_when_its_token_expires,
);

/// "Acknowledged" means committed and queued for every live subscription
/// of the node: a live-only stream opened just after the acknowledgement
/// never receives that message (it came before the stream), while other
/// writers keep the feed busy.
async fn an_acknowledged_message_is_already_queued_for_every_live_subscription(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let chat = alice.create_conversation(&["bob"]).await.unwrap();
    let busy = carol.create_conversation(&["dave"]).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, carol, busy) = (stop.clone(), carol, busy.id.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = carol.send(&busy, "load").await;
            }
        })
    };
    for round in 0..100 {
        let before = alice
            .send(&chat.id, &format!("before-{round}"))
            .await
            .unwrap();
        let mut live = bob.subscribe("").await.unwrap();
        let after = alice
            .send(&chat.id, &format!("after-{round}"))
            .await
            .unwrap();
        let first = next_message(&mut live).await;
        assert_eq!(
            first.id, after.id,
            "round {round}: {} was acknowledged before the stream opened",
            before.id
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    app.stop().await;
}
