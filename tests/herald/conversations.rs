//! Creating, listing and reading conversations.

use crate::changes::delete;
use crate::support::{TestDb, code, spawn_app, spawn_app_with};
use tonic::Code;

async fn a_pair_is_found_or_created_from_either_side(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);

    let first = alice.create_conversation(&["bob"]).await.unwrap();
    let again = alice.create_conversation(&["bob", "alice"]).await.unwrap();
    let from_bob = bob.create_conversation(&["alice"]).await.unwrap();

    assert_eq!(first.participant_ids, ["alice", "bob"]);
    assert_eq!(again.id, first.id);
    assert_eq!(from_bob.id, first.id);
}

async fn a_group_is_always_new_and_includes_the_caller(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;

    let first = alice.create_conversation(&["carol", "bob"]).await.unwrap();
    let second = alice.create_conversation(&["bob", "carol"]).await.unwrap();

    assert_ne!(first.id, second.id);
    assert_eq!(first.participant_ids, ["alice", "bob", "carol"]);
    assert_eq!(first.unread_count, 0);
    assert!(first.last_message.is_none());
}

async fn a_conversation_needs_someone_else_and_valid_ids(db: TestDb) {
    let app = spawn_app_with(&db, |config| config.max_participants = 3).await;
    let alice = app.user("alice").await;

    for others in [&[][..], &["alice"], &[""], &["bad\nid"], &["b", "c", "d"]] {
        let status = alice.create_conversation(others).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{others:?}: {status:?}"
        );
    }
    let too_long = "x".repeat(129);
    let status = alice.create_conversation(&[&too_long]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn conversations_are_listed_most_recently_active_first(db: TestDb) {
    let app = spawn_app(&db).await;
    let alice = app.user("alice").await;
    let with_bob = alice.create_conversation(&["bob"]).await.unwrap();
    let with_carol = alice.create_conversation(&["carol"]).await.unwrap();
    let _with_dave = alice.create_conversation(&["dave"]).await.unwrap();
    alice.send(&with_carol.id, "first").await.unwrap();
    let newest = alice.send(&with_bob.id, "second").await.unwrap();

    let listed = alice.conversations().await.unwrap();

    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(&ids[..2], [with_bob.id.as_str(), with_carol.id.as_str()]);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].last_message.as_ref(), Some(&newest));
    let bob = app.user("bob").await;
    let bobs = bob.conversations().await.unwrap();
    assert_eq!(bobs.len(), 1, "bob sees only his own conversations");
}

async fn unread_counts_follow_the_read_mark_and_skip_own_messages(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let mut sent = Vec::new();
    for n in 1..=3 {
        sent.push(
            alice
                .send(&conversation.id, &format!("hi {n}"))
                .await
                .unwrap(),
        );
    }
    bob.send(&conversation.id, "bob's own").await.unwrap();
    assert_eq!(bob.conversations().await.unwrap()[0].unread_count, 3);
    assert_eq!(alice.conversations().await.unwrap()[0].unread_count, 1);

    let marked = bob.mark_read(&conversation.id, &sent[1].id).await.unwrap();
    assert_eq!(marked.unread_count, 1);
    let back = bob.mark_read(&conversation.id, &sent[0].id).await.unwrap();
    assert_eq!(back.unread_count, 1, "a read mark never moves back");
    assert_eq!(bob.conversations().await.unwrap()[0].unread_count, 1);
}

/// A count looks at the first thousand live messages after the read mark
/// (the reader's own among them), so listing costs the same however much
/// was left unread; a deleted message takes no place among them.
async fn an_unread_count_looks_at_a_thousand_messages_after_the_mark(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    bob.send(&conversation.id, "bob 1").await.unwrap();
    let own = bob.send(&conversation.id, "bob 2").await.unwrap();
    let mut sent = Vec::new();
    for n in 0..1003 {
        sent.push(alice.send(&conversation.id, &format!("{n}")).await.unwrap());
    }
    // bob's two, then 998 of alice's 1,003.
    assert_eq!(bob.conversations().await.unwrap()[0].unread_count, 998);
    for message in &sent[..3] {
        delete(&alice, &conversation.id, &message.id).await.unwrap();
    }
    assert_eq!(
        bob.conversations().await.unwrap()[0].unread_count,
        998,
        "deleted messages leave the window to the next ones"
    );

    let marked = bob.mark_read(&conversation.id, &own.id).await.unwrap();
    assert_eq!(marked.unread_count, 1000, "1,000 of alice's 1,000 left");
    let marked = bob.mark_read(&conversation.id, &sent[3].id).await.unwrap();
    assert_eq!(marked.unread_count, 999);
    assert_eq!(bob.conversations().await.unwrap()[0].unread_count, 999);
}

/// Each conversation of a listing has its own last message and count.
async fn each_listed_conversation_has_its_own_last_message_and_count(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, bob, carol) = (
        app.user("alice").await,
        app.user("bob").await,
        app.user("carol").await,
    );
    let with_bob = alice.create_conversation(&["bob"]).await.unwrap();
    let with_carol = alice.create_conversation(&["carol"]).await.unwrap();
    bob.send(&with_bob.id, "b1").await.unwrap();
    let from_bob = bob.send(&with_bob.id, "b2").await.unwrap();
    let from_carol = carol.send(&with_carol.id, "c1").await.unwrap();

    let listed = alice.conversations().await.unwrap();
    let seen: Vec<(&str, &str, i64)> = listed
        .iter()
        .map(|c| {
            let last = c.last_message.as_ref().map_or("", |m| m.id.as_str());
            (c.id.as_str(), last, c.unread_count)
        })
        .collect();
    assert_eq!(
        seen,
        [
            (with_carol.id.as_str(), from_carol.id.as_str(), 1),
            (with_bob.id.as_str(), from_bob.id.as_str(), 2),
        ]
    );
}

async fn mark_read_checks_its_ids(db: TestDb) {
    let app = spawn_app(&db).await;
    let (alice, carol) = (app.user("alice").await, app.user("carol").await);
    let conversation = alice.create_conversation(&["bob"]).await.unwrap();
    let other = alice.create_conversation(&["dave"]).await.unwrap();
    let elsewhere = alice.send(&other.id, "elsewhere").await.unwrap();

    assert_eq!(
        code(alice.mark_read(&conversation.id, "999999").await),
        Code::NotFound
    );
    assert_eq!(
        code(alice.mark_read(&conversation.id, &elsewhere.id).await),
        Code::NotFound
    );
    assert_eq!(
        code(alice.mark_read("nothing-here", "1").await),
        Code::NotFound
    );
    assert_eq!(
        code(alice.mark_read(&conversation.id, "").await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(carol.mark_read(&other.id, &elsewhere.id).await),
        Code::PermissionDenied
    );
}

on_every_backend!(
    a_pair_is_found_or_created_from_either_side,
    a_group_is_always_new_and_includes_the_caller,
    a_conversation_needs_someone_else_and_valid_ids,
    conversations_are_listed_most_recently_active_first,
    unread_counts_follow_the_read_mark_and_skip_own_messages,
    an_unread_count_looks_at_a_thousand_messages_after_the_mark,
    each_listed_conversation_has_its_own_last_message_and_count,
    mark_read_checks_its_ids,
);
